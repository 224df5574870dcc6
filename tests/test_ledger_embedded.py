"""The embedded SQLite ledger: interface, concurrent appends from several processes, tamper detection."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from streams.errors import ClosedResourceError, LocalProtocolError
from streams.ledger import EmbeddedLedger, Ledger, UnknownAnchor
from streams.ledger.embedded import entry_hash


class Clock:
    """A settable clock: tests never read the system time."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


def _filled(path: Path, n: int = 6) -> list[str]:
    clock = Clock()
    with EmbeddedLedger(path, clock=clock) as led:
        ids = []
        for i in range(n):
            clock.now += 10
            ids.append(led.append(b"streams.anchor.v1", b"payload %d" % i))
        assert led.verify().ok
    return ids


def _tamper(path: Path, *sql: str) -> None:
    # An attacker with the file: drop the guard triggers, then edit rows directly.
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("DROP TRIGGER entries_no_delete")
    for s in sql:
        db.execute(s)
    db.commit()
    db.close()


def test_append_status_read(path: Path) -> None:
    clock = Clock(5000)
    with EmbeddedLedger(path, clock=clock) as led:
        assert isinstance(led, Ledger)
        a = led.append(b"t", b"one")
        clock.now = 4000  # the clock went backwards: the row keeps the chain's time order
        b = led.append(b"t2", b"")
        assert (a, b) == ("1", "2")
        st = led.status(a)
        assert (st.confirmed, st.timestamp_ms, st.ref) == (True, 5000, 1)
        assert led.status(b).timestamp_ms == 5000
        assert led.read(b) == (b"t2", b"")
        first = entry_hash(1, b"t", b"one", 5000, bytes(32))
        assert led.head() == (2, entry_hash(2, b"t2", b"", 5000, first))
        with pytest.raises(UnknownAnchor):
            led.status("3")
        with pytest.raises(UnknownAnchor):
            led.read("x")
        with pytest.raises(LocalProtocolError):
            led.append(b"t", b"x" * ((1 << 20) + 1))
    with pytest.raises(ClosedResourceError):
        led.append(b"t", b"")
    # reopening finds every row: committed means durable
    with EmbeddedLedger(path) as again:
        assert again.read(a) == (b"t", b"one")
        assert again.verify().size == 2


def test_sqlite_refuses_update_and_delete_through_the_triggers(path: Path) -> None:
    _filled(path, 2)
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE entries SET data = x'00' WHERE position = 1")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("DELETE FROM entries WHERE position = 2")
    db.close()


@pytest.mark.parametrize(
    ("sql", "bad"),
    [
        (["UPDATE entries SET data = x'deadbeef' WHERE position = 3"], 3),
        (["UPDATE entries SET tag = x'00' WHERE position = 1"], 1),
        (["UPDATE entries SET timestamp_ms = timestamp_ms + 1 WHERE position = 4"], 4),
        (["UPDATE entries SET entry_hash = zeroblob(32) WHERE position = 2"], 2),  # stored hash edited: row 2
        (["DELETE FROM entries WHERE position = 3"], 3),
        (["INSERT INTO entries VALUES (9, x'00', x'00', 0, zeroblob(32), zeroblob(32))"], 7),
        # renumber 4.. up by one and insert a forged row at 4 chained to row 3's real hash
        (["UPDATE entries SET position = position + 100 WHERE position >= 4",
          "UPDATE entries SET position = position - 99 WHERE position >= 100",
          "INSERT INTO entries SELECT 4, x'61', x'62', timestamp_ms, entry_hash, zeroblob(32)"
          " FROM entries WHERE position = 3"], 4),
    ],
    ids=["data", "tag", "timestamp", "hash", "delete-middle", "insert-gap", "insert-renumber"],
)
def test_tampering_is_found_at_the_first_bad_position(path: Path, sql: list[str], bad: int) -> None:
    _filled(path)
    _tamper(path, *sql)
    with EmbeddedLedger(path) as led:
        report = led.verify()
    assert not report.ok
    assert report.bad_position == bad
    assert report.size == bad - 1
    assert report.reason


def test_forged_row_with_a_correct_hash_breaks_the_next_link(path: Path) -> None:
    # The attacker recomputes row 3's entry_hash after editing it: row 4's prev_hash no longer matches.
    _filled(path)
    db = sqlite3.connect(path)
    ts, prev = db.execute("SELECT timestamp_ms, prev_hash FROM entries WHERE position = 3").fetchone()
    db.close()
    forged = entry_hash(3, b"streams.anchor.v1", b"forged", ts, prev)
    _tamper(path, f"UPDATE entries SET data = x'{b'forged'.hex()}', entry_hash = x'{forged.hex()}'"
            " WHERE position = 3")
    with EmbeddedLedger(path) as led:
        report = led.verify()
    assert (report.ok, report.bad_position) == (False, 4)
    assert "prev_hash" in (report.reason or "")


def test_truncation_is_found_against_a_remembered_head(path: Path) -> None:
    _filled(path)
    with EmbeddedLedger(path) as led:
        head = led.head()
    _tamper(path, "DELETE FROM entries WHERE position >= 5")
    with EmbeddedLedger(path) as led:
        assert led.verify().ok  # a shorter chain is self-consistent ...
        report = led.verify(expected=head)  # ... but not the one the auditor remembered
        assert (report.ok, report.bad_position) == (False, 5)
        assert not led.verify(expected=(3, bytes(32))).ok
        assert led.verify(expected=(4, led.head()[1])).ok


def test_the_head_of_an_empty_ledger_verifies_as_expected_head(path: Path) -> None:
    """``head()`` of an empty ledger is ``(0, zeros)``, documented as a head to remember and pass back to
    ``verify(expected=...)``: it names the empty prefix, which every intact chain has -- it used to be reported
    as a broken chain forever (no row at position 0)."""
    with EmbeddedLedger(path) as led:
        empty = led.head()
        assert empty == (0, bytes(32))
        assert led.verify(expected=empty).ok
        led.append(b"t", b"x")
        assert led.verify(expected=empty).ok
        assert not led.verify(expected=(0, bytes([1]) * 32)).ok


def _appender(path: str, name: str, count: int) -> None:
    with EmbeddedLedger(path) as led:
        for i in range(count):
            led.append(b"mp", f"{name}:{i}".encode())


def test_several_processes_append_without_losing_a_position(path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_appender, args=(str(path), name, 150)) for name in ("a", "b")]
    for p in procs:
        p.start()
    _appender(str(path), "parent", 50)  # and this process at the same time
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with EmbeddedLedger(path) as led:
        report = led.verify()
        assert report.ok
        assert report.size == 350
        datas = {led.read(str(i))[1] for i in range(1, 351)}
    expect = {f"{n}:{i}".encode() for n, c in (("a", 150), ("b", 150), ("parent", 50)) for i in range(c)}
    assert datas == expect
