"""The store's commit journal (``StoreOptions(journal=True)``, the store module doc): a publish is durable once its
record is appended, the records reach the database in batches, and a party killed with records in the journal
gets them applied when it opens the store again -- not twice, not past a record cut short or altered, never a
statement the file names outside the fixed list.  Real processes, ``kill -9``, real SQLite files."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import streams.store as store_module
from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.core import ChainRecord, Changes, LogRecord
from streams.errors import LocalProtocolError, StorageError
from streams.identity import Identity
from streams.policy import AllowList
from streams.store import (
    _J_HEAD,
    _J_LOG,
    J_APPLY_RECORDS,
    J_APPLY_SOON,
    J_INLINE_MAX,
    Store,
    _j_parse,
    _j_record,
    backup,
)
from streams.wire import decode_frame

HERE = Path(__file__).resolve().parent
PW = "pw"


def _new_store(db: Path, *, durable: bool = True, journal: bool = True) -> Store:
    """A new author store at ``db`` (a cheap KDF), journaling unless asked not to; not locked."""
    return Store.create(db, Identity.generate(), PW, role="author", channel=b"\0" * 32,
                        author_did=Identity.generate().did, opslimit=1, memlimit=8192, durable=durable,
                        journal=journal)


def _killed_after(db: Path, count: int, payload: int = 100) -> None:
    """Run tests/crash_party.py (a durable store) with the journal on until it acknowledged ``count`` publishes of
    ``payload`` bytes, then kill -9 it."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), CRASH_JOURNAL="1", CRASH_HOLD="1",
               CRASH_PAYLOAD=str(payload))
    p = subprocess.Popen([sys.executable, str(HERE / "crash_party.py"), str(db), str(count)],
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    try:
        for line in p.stdout:
            if line.startswith("HELD"):
                break
        else:
            pytest.fail("the party exited before holding")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()


def _raw_seqs(db: Path) -> list[int]:
    """The log's seqs as a reader that does not lock the store sees them (SQLite alone)."""
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT seq FROM log WHERE publisher = 0 ORDER BY seq").fetchall()
    c.close()
    return [r[0] for r in rows]


def _party_view(db: Path) -> tuple[list[int], int]:
    """(logged seqs, the chain's next seq) as a party opening the store sees them (lock: the journal applied)."""
    store = Store.open(db, PW)
    try:
        store.lock()
        [branch] = [b.id for b in store.load_branches()]
        [chain] = [c for c in store.load_chains() if c.publisher == 0]
        frames = [decode_frame(f) for f in store.log_range(branch, 0, 1, 10**9)]
        prev = frames[0].head.prev if frames else None
        for f in frames:
            assert f.head.prev == prev, "hash links broken"
            prev = f.hash
        if frames:
            assert chain.head == prev
        return [f.head.seq for f in frames], chain.next_seq
    finally:
        store.close()


N = J_APPLY_RECORDS // 2  # fewer than a batch: every one of them still in the journal when the party dies


def test_a_killed_partys_acknowledged_publishes_are_in_the_journal_and_applied_at_its_next_open(
        tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    _killed_after(db, N)
    journal = Path(f"{db}-commits")
    assert journal.stat().st_size > 0 and journal.stat().st_mode & 0o777 == 0o600
    assert _raw_seqs(db) == [], "a hot commit went to SQLite, not to the journal"
    assert _party_view(db) == (list(range(1, N + 1)), N + 1)
    assert journal.stat().st_size == 0  # applied, emptied
    assert _raw_seqs(db) == list(range(1, N + 1))
    # and the chain goes on from there after a second crash
    _killed_after(db, N)
    assert _party_view(db) == (list(range(1, 2 * N + 1)), 2 * N + 1)


def test_records_already_applied_are_not_applied_again(tmp_path: Path) -> None:
    """A crash between the applying transaction and the journal's truncate leaves applied records in it: they must
    not move the chain's cursor back when the store is opened again, after later commits."""
    db = tmp_path / "a.db"
    _killed_after(db, N)
    stale = tmp_path / "stale-commits"
    shutil.copyfile(f"{db}-commits", stale)
    assert _party_view(db)[1] == N + 1  # applied (records 1..N of the journal)
    _killed_after(db, N)  # N more, journaled after them
    assert _party_view(db)[1] == 2 * N + 1
    shutil.copyfile(stale, f"{db}-commits")  # the applied records back, as if never truncated
    assert _party_view(db) == (list(range(1, 2 * N + 1)), 2 * N + 1)


def test_a_record_cut_short_ends_the_journal_and_is_logged(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "a.db"
    _killed_after(db, N)
    journal = Path(f"{db}-commits")
    whole = journal.read_bytes()
    cut = _j_record(10**6, msgpack.packb([[3, []]]))[:-1]  # its last byte never written
    journal.write_bytes(whole + cut)
    with caplog.at_level(logging.WARNING, logger="streams.store"):
        assert _party_view(db) == (list(range(1, N + 1)), N + 1)
    assert any(f"{len(cut)} bytes after its last whole record were dropped" in r.getMessage() for r in caplog.records)


def test_an_altered_record_ends_the_journal_there(tmp_path: Path) -> None:
    """One bit flipped in the payload of record k: records 1..k-1 are applied, k and after are not (as a WAL's
    frames after a bad checksum) -- the party's chain resumes after k-1, with no hole."""
    db = tmp_path / "a.db"
    _killed_after(db, N)
    journal = Path(f"{db}-commits")
    data = bytearray(journal.read_bytes())
    pos, k = 0, 0
    while k < 4:  # the 5th record's payload
        length = _J_HEAD.unpack_from(data, pos)[0]
        pos += _J_HEAD.size + length
        k += 1
    data[pos + _J_HEAD.size] ^= 1
    journal.write_bytes(bytes(data))
    seqs, next_seq = _party_view(db)
    assert seqs == list(range(1, len(seqs) + 1)) and next_seq == len(seqs) + 1 and 0 < len(seqs) < N


@pytest.mark.parametrize("ops", [[[99, []]], [[-1, [[b"\xee" * 32, 0, 99]]]], [["DROP TABLE log", []]], [[0]],
                                 "not a list"],
                         ids=["index out of range", "negative index", "sql text", "no rows", "not a list"])
def test_a_record_naming_no_known_statement_is_not_run(tmp_path: Path, ops: object) -> None:
    """Whoever writes the file can compute the digest (it is a checksum, not a MAC: the rows it carries are the
    database's unauthenticated ones), but a record is a statement index and rows: anything else ends the journal
    there, unexecuted."""
    db = tmp_path / "a.db"
    _killed_after(db, N)
    journal = Path(f"{db}-commits")
    data = journal.read_bytes()
    records = []
    pos = 0
    while pos < len(data):
        length, seq, _ = _J_HEAD.unpack_from(data, pos)
        records.append(seq)
        pos += _J_HEAD.size + length
    journal.write_bytes(data + _j_record(records[-1] + 1, msgpack.packb(ops)))
    assert _party_view(db) == (list(range(1, N + 1)), N + 1)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM sqlite_master WHERE name = 'log'").fetchone() == (1,)
        assert c.execute("SELECT count(*) FROM delivered WHERE branch = ?", (b"\xee" * 32,)).fetchone() == (0,)
    c.close()


@pytest.mark.parametrize(("gone", "durable"), [(0, True), (1, False)], ids=["first-durable", "second-not-durable"])
def test_a_hole_in_the_sequence_is_refused(tmp_path: Path, gone: int, durable: bool) -> None:
    """A hole before the journal's first record, in a durable store (no power loss makes one there), or between
    two of its records, in any store (one file's records follow each other: a mark comes only after an apply
    emptied it), is damage: refused."""
    db = tmp_path / "a.db"
    _killed_after(db, N)
    journal = Path(f"{db}-commits")
    data = journal.read_bytes()
    at = [0]
    for _ in range(2):
        at.append(at[-1] + _J_HEAD.size + _J_HEAD.unpack_from(data, at[-1])[0])
    seq = _J_HEAD.unpack_from(data, 0)[1] + gone
    journal.write_bytes(data[:at[gone]] + data[at[gone + 1]:])  # one record gone, the next ones kept
    store = Store.open(db, PW, durable=durable)
    try:
        with pytest.raises(StorageError, match=f"is damaged: record {seq + 1} follows {seq - 1}"):
            store.lock()
    finally:
        store.close()


def test_a_backup_of_a_killed_partys_store_holds_its_journaled_publishes(tmp_path: Path) -> None:
    """backup() copies the journal's records the database does not hold into the copy (it runs beside a party,
    without the lock: it cannot apply them to the store itself)."""
    db = tmp_path / "a.db"
    _killed_after(db, N)
    result = backup(db, tmp_path / "copy.db")
    assert _raw_seqs(result.path) == list(range(1, N + 1))
    assert not Path(f"{result.path}-commits").exists()
    assert _party_view(result.path) == (list(range(1, N + 1)), N + 1)
    assert _party_view(db) == (list(range(1, N + 1)), N + 1)  # the store itself untouched by the backup


# --- through the asyncio API, in one process --------------------------------------------------------------------

FAST_J = StoreOptions(durable=False, opslimit=1, memlimit=8192, journal=True)


async def _quiet_author(db: Path, members: int = 1, options: StoreOptions = FAST_J) -> tuple[Author, list[Identity]]:
    """An author on ``db`` (in-memory network) admitting ``members`` new identities, whose heartbeat does not apply
    its journal during the test."""
    ids = [Identity.generate() for _ in range(members)]
    author = await Author.create(db, Identity.generate(), "c", PW, MemoryHub().author_endpoint(),
                                 AllowList.of([i.did for i in ids]), store_options=options)
    author.heartbeat_ms = 3_600_000
    return author, ids


async def test_both_parties_journal_and_readers_that_do_not_lock_see_the_records_once_applied(
        tmp_path: Path) -> None:
    """Author and subscriber with the journal on: messages flow, the subscriber's received log and delivery
    cursors go through its journal too; a reader that does not lock (SQLite alone: ``streams status``) sees them
    once applied -- by ``Store.apply_journal``, a batch's worth, or close -- and a reopened subscriber does not
    hand out again what it marked delivered."""
    hub = MemoryHub()
    member = Identity.generate()
    author = await Author.create(tmp_path / "a.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([member.did]), store_options=FAST_J)
    sub = await Subscriber.create(tmp_path / "m.db", member, author.did, author.channel, PW,
                                  hub.subscriber_endpoint("m"), store_options=FAST_J)
    author.heartbeat_ms = 3_600_000  # (its heartbeat applies the journal: not during this test's first checks)
    try:
        branch = await sub.subscribe(timeout=10)
        seqs = [await author.publish(branch, b"m%d" % n) for n in range(5)]
        got = [(await sub.next_message(timeout=10)).payload for _ in range(5)]
        assert got == [b"m%d" % n for n in range(5)]
        assert _raw_seqs(tmp_path / "a.db") == []  # journaled, not applied yet
        assert Path(f"{tmp_path / 'a.db'}-commits").stat().st_size > 0
        author.store.apply_journal()
        assert _raw_seqs(tmp_path / "a.db") == seqs
        assert Path(f"{tmp_path / 'a.db'}-commits").stat().st_size == 0
        for n in range(J_APPLY_SOON):  # a batch's worth applies itself, in the loop's next turn
            await author.publish(branch, b"more %d" % n)
        await asyncio.sleep(0)
        assert len(_raw_seqs(tmp_path / "a.db")) == len(seqs) + J_APPLY_SOON
    finally:
        await sub.close()
        await author.close()
    with sqlite3.connect(tmp_path / "m.db") as c:  # the subscriber's log and cursor, applied at its close
        assert c.execute("SELECT count(*) FROM log").fetchone()[0] >= 5
        assert c.execute("SELECT count(*) FROM delivered").fetchone()[0] == 1
    c.close()
    assert Path(f"{tmp_path / 'm.db'}-commits").stat().st_size == 0
    hub2 = MemoryHub()
    sub = await Subscriber.open(tmp_path / "m.db", PW, hub2.subscriber_endpoint("m"), store_options=FAST_J)
    try:
        # the first four were marked delivered (through the journal); the fifth, the last handed out, may come
        # again (at least once), then the batch the application never took
        first = (await sub.next_message(timeout=10)).payload
        assert first in (b"m4", b"more 0"), first
    finally:
        await sub.close()


def test_a_commit_journal_that_is_a_symlink_is_refused_at_create(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    os.symlink(target, tmp_path / "a.db-commits")
    with pytest.raises(LocalProtocolError, match=r"a\.db-commits is not a regular file"):
        _new_store(tmp_path / "a.db")
    assert target.read_bytes() == b"keep"



async def test_a_locked_party_reads_what_it_journaled_and_a_direct_commit_comes_after_it(tmp_path: Path) -> None:
    """Everything that reads or writes the database in the party sees the journaled commits first: the log read
    for a fetch, and a commit that cannot be journaled (a branch opened) -- which must not overtake them."""
    hub = MemoryHub()
    member, other = Identity.generate(), Identity.generate()
    author = await Author.create(tmp_path / "a.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([member.did, other.did]), store_options=FAST_J)
    author.heartbeat_ms = 3_600_000
    try:
        branch = await author.open_branch(member.did)
        seqs = [await author.publish(branch, b"m%d" % n) for n in range(3)]
        assert _raw_seqs(tmp_path / "a.db") == []
        assert [decode_frame(f).head.seq for f in author.store.log_range(branch, 0, 1, 10**9)] == seqs
        assert _raw_seqs(tmp_path / "a.db") == seqs  # (the read applied them)
        more = [await author.publish(branch, b"n%d" % n) for n in range(3)]
        assert _raw_seqs(tmp_path / "a.db") == seqs
        await author.open_branch(other.did)  # a direct commit: the journaled ones reach the database first
        assert _raw_seqs(tmp_path / "a.db") == seqs + more
        with sqlite3.connect(tmp_path / "a.db") as c:
            assert c.execute("SELECT count(*) FROM branches").fetchone() == (2,)
        c.close()
    finally:
        await author.close()


async def test_the_heartbeat_applies_a_quiet_partys_journal(tmp_path: Path) -> None:
    hub = MemoryHub()
    member = Identity.generate()
    author = await Author.create(tmp_path / "a.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([member.did]), store_options=FAST_J)
    author.heartbeat_ms = 50
    try:
        branch = await author.open_branch(member.did)
        seq = await author.publish(branch, b"quiet after this")
        for _ in range(100):
            if _raw_seqs(tmp_path / "a.db") == [seq]:
                break
            await asyncio.sleep(0.05)
        assert _raw_seqs(tmp_path / "a.db") == [seq]
    finally:
        await author.close()


def test_after_a_failed_append_no_record_is_appended_until_the_store_is_opened_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a failed append left is unknown (its cut-back can fail too): a later record appended after it, with
    the next sequence number or the same, would be lost behind the damage or refused at the replay -- so every
    later hot commit fails, and the next open applies what was acknowledged before the failure."""
    db = tmp_path / "a.db"
    store = _new_store(db)
    store.commit(Changes(nonces=[(b"a" * 16, 10**12)]))

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])  # a part of it, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    good = store_module._write_all
    monkeypatch.setattr(store_module, "_write_all", full)
    with pytest.raises(StorageError, match="the disk is full"):
        store.commit(Changes(nonces=[(b"b" * 16, 10**12)]))
    monkeypatch.setattr(store_module, "_write_all", good)
    with pytest.raises(StorageError, match=r"an earlier write of .* failed"):
        store.commit(Changes(nonces=[(b"c" * 16, 10**12)]))
    store._j_pending.clear()  # (as a kill -9 now: nothing applied at close)
    store.close()
    store = Store.open(db, PW)
    try:
        store.lock()
        assert sorted(n for n, _ in store.load_nonces(0)) == [b"a" * 16]
    finally:
        store.close()


def test_a_lock_whose_replay_fails_is_not_held(tmp_path: Path) -> None:
    """A second lock() must replay again (a party that went on without the journal's records would sign their
    sequence numbers again), so a failed replay lets the lock go."""
    db = tmp_path / "a.db"
    _killed_after(db, N)
    journal = Path(f"{db}-commits")
    data = journal.read_bytes()
    length, seq, _ = _J_HEAD.unpack_from(data, 0)
    journal.write_bytes(data[_J_HEAD.size + length:])  # its first record gone: refused
    store = Store.open(db, PW)
    try:
        for _ in range(2):
            with pytest.raises(StorageError, match=f"record {seq + 1} follows {seq - 1}"):
                store.lock()
    finally:
        store.close()
    journal.write_bytes(data)
    assert _party_view(db) == (list(range(1, N + 1)), N + 1)


def test_a_sequence_number_beyond_sqlite_integers_ends_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    _killed_after(db, N)
    journal = Path(f"{db}-commits")
    journal.write_bytes(journal.read_bytes() + _j_record(2**64 - 1, msgpack.packb([[4, [[b"x" * 16, 1]]]])))
    assert _party_view(db) == (list(range(1, N + 1)), N + 1)


def test_when_applies_keep_failing_the_next_commit_fails_instead_of_acknowledging_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An apply that fails after a batch's append is logged (that commit is durable and acknowledged); the next
    hot commit tries it first and fails with it, before it appends: the journal and what it holds in memory stay
    bounded by about a batch, and nothing is acknowledged that could not be applied."""
    db = tmp_path / "a.db"
    store = _new_store(db)

    def broken(*_a: object, **_k: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store_module, "_j_exec", broken)
    with caplog.at_level(logging.WARNING, logger="streams.store"):
        for n in range(J_APPLY_RECORDS):  # the last one's apply fails: logged
            store.commit(Changes(nonces=[(n.to_bytes(16, "big"), 10**12)]))
    assert any("database or disk is full" in r.getMessage() for r in caplog.records)
    size = Path(f"{db}-commits").stat().st_size
    with pytest.raises(StorageError, match="database or disk is full"):
        store.commit(Changes(nonces=[(b"x" * 16, 10**12)]))
    assert Path(f"{db}-commits").stat().st_size == size  # nothing appended
    assert store._j_records == J_APPLY_RECORDS
    monkeypatch.undo()
    store.close()  # (applies them now)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM nonces").fetchone() == (J_APPLY_RECORDS,)
    c.close()


def test_a_journal_beside_a_restored_copy_is_refused_and_backup_will_not_write_beside_one(tmp_path: Path) -> None:
    """A copy made by backup() holds no journal: one found beside it (left by the store it replaces, or another)
    is not its own -- opening refuses, as for a -wal; and backup() refuses a destination that has one."""
    db = tmp_path / "a.db"
    _killed_after(db, N)
    Path(f"{tmp_path / 'new.db'}-commits").write_bytes(b"")
    with pytest.raises(LocalProtocolError, match=r"new\.db-commits already exists"):
        backup(db, tmp_path / "new.db")
    copy = backup(db, tmp_path / "copy.db").path
    shutil.copyfile(f"{db}-commits", f"{copy}-commits")
    with pytest.raises(StorageError, match=r"copy\.db-commits is not this database's"):
        Store.open(copy, PW)


def _disk_trace(monkeypatch: pytest.MonkeyPatch, conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """What reaches the disk, in order, from this thread and the party's sync thread (streams._syncer): the
    statements ``conn`` runs (SQLite's own trace), and each ``fdatasync`` and ``ftruncate`` with the file it went
    to (the real calls, recorded on the way)."""
    events: list[tuple[str, str]] = []
    main = threading.get_ident()
    conn.set_trace_callback(lambda sql: events.append(("sql", sql)))
    real_sync, real_trunc = os.fdatasync, os.ftruncate

    def sync(fd: int) -> None:
        if threading.get_ident() == main or threading.current_thread().name.startswith("streams-sync"):
            # (not the checkpointer's thread)
            events.append(("fdatasync", os.readlink(f"/proc/self/fd/{fd}")))
        real_sync(fd)

    def trunc(fd: int, length: int) -> None:
        events.append(("ftruncate", os.readlink(f"/proc/self/fd/{fd}")))
        real_trunc(fd, length)

    monkeypatch.setattr(os, "fdatasync", sync)
    monkeypatch.setattr(os, "ftruncate", trunc)
    return events


async def test_a_write_transaction_of_a_journaling_party_takes_a_journal_sequence_number(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    author, [member, other] = await _quiet_author(db, 2)
    try:
        branch = await author.open_branch(member.did)
        await author.publish(branch, b"one")
        [(one, _)] = _j_parse(Path(f"{db}-commits").read_bytes())[0]
        await author.open_branch(other.did)  # applies that record, then a transaction of its own: the next seq
        await author.publish(branch, b"two")
        with sqlite3.connect(db) as c:
            assert c.execute("SELECT seq FROM journal").fetchone() == (one + 1,)
        c.close()
        records, _ = _j_parse(Path(f"{db}-commits").read_bytes())
        assert [seq for seq, _ in records] == [one + 2]
    finally:
        await author.close()


@pytest.mark.parametrize("durable", [False, True], ids=["not-durable", "durable"])
async def test_a_commit_a_power_loss_took_from_the_database_shows_as_a_hole_before_the_journals_records(
        tmp_path: Path, durable: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Without ``durable`` nothing is synced: a power loss can take a transaction from the database (here: the
    one that opened a second branch) and keep the journal's later records (publishes on that branch).  Replayed
    over the older database, they would name a branch it does not have; the sequence number the transaction took
    shows the hole instead: a store without ``durable`` drops those records (its newest commits are lost, as at
    synchronous=NORMAL), a durable one refuses to open (no power loss makes a hole there)."""
    db, snap = tmp_path / "a.db", tmp_path / "snap.db"
    author, [member, other] = await _quiet_author(db, 2)
    try:
        first = await author.open_branch(member.did)
        await author.publish(first, b"kept")
        author.store.apply_journal()
        backup(db, snap)  # the database as the power loss leaves it: before the second branch
        second = await author.open_branch(other.did)
        await author.publish_many(second, [b"lost 1", b"lost 2"])
        journal = Path(f"{db}-commits").read_bytes()  # ... and the journal as it leaves it: with these records
        [(lost, _)] = _j_parse(journal)[0]
    finally:
        await author.close()
    Store.open(snap, PW).close()  # (a copy opened once: a journal beside it is then taken as its own)
    Path(f"{snap}-commits").write_bytes(journal)
    store = Store.open(snap, PW, durable=durable)
    try:
        if durable:
            with pytest.raises(StorageError, match=f"is damaged: record {lost} follows {lost - 2}"):
                store.lock()
            return
        with caplog.at_level(logging.WARNING, logger="streams.store"):
            store.lock()
        assert any("the database lost its newest commits" in r.getMessage() for r in caplog.records)
        assert [b.id for b in store.load_branches()] == [first]
        assert {c.branch for c in store.load_chains()} == {first}
        assert [decode_frame(f).body for f in store.log_range(first, 0, 1, 10**9)] != []
        assert Path(f"{snap}-commits").stat().st_size == 0
    finally:
        store.close()
    # The dropped records' sequence numbers stay used: the same journal, found again (a second power loss that
    # kept the database's later commits but lost the emptying), is behind what the database holds.
    Path(f"{snap}-commits").write_bytes(journal)
    store = Store.open(snap, PW, durable=False, journal=True)
    try:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="streams.store"):
            store.lock()
        assert not caplog.records
        assert [b.id for b in store.load_branches()] == [first]
    finally:
        store.close()


def test_what_a_party_wrote_before_it_journaled_is_covered_by_the_hole_check(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A run without the journal (or of an older version) marks nothing; a journaling party's lock() takes a mark
    first, so a power loss that takes that run's commits from the database and keeps the journaling party's records
    still leaves a hole: not records applied over a log that misses the commits before them."""
    db, snap = tmp_path / "a.db", tmp_path / "snap.db"
    branch = b"B" * 16

    def rec(seq: int) -> LogRecord:
        return LogRecord(branch, 1, seq, bytes([seq]) * 32, b"\x92" + bytes([seq]) * 10)

    def cursor(n: int) -> ChainRecord:
        return ChainRecord(branch, 1, n, bytes([n - 1]) * 32)

    store = _new_store(db, durable=False, journal=False)
    store.lock()
    store.commit(Changes(chains=[cursor(2)], log=[rec(1)]))
    store.close()
    backup(db, snap)  # what the power loss leaves of the database
    store = Store.open(db, PW, durable=False)
    store.lock()
    store.commit(Changes(chains=[cursor(4)], log=[rec(2), rec(3)]))  # without the journal: no mark
    store.close()
    store = Store.open(db, PW, durable=False, journal=True)
    store.lock()
    store.commit(Changes(chains=[cursor(5)], log=[rec(4)]))  # journaled
    journal = Path(f"{db}-commits").read_bytes()
    store.close()
    Store.open(snap, PW).close()
    Path(f"{snap}-commits").write_bytes(journal)
    store = Store.open(snap, PW, durable=False)
    try:
        with caplog.at_level(logging.WARNING, logger="streams.store"):
            store.lock()
        assert any("the database lost its newest commits" in r.getMessage() for r in caplog.records)
        assert [r[0] for r in store._q("SELECT seq FROM log ORDER BY seq")] == [1]
        assert [c.next_seq for c in store.load_chains()] == [2]
    finally:
        store.close()


async def test_status_of_a_running_party_shows_its_journal_and_what_the_database_holds(tmp_path: Path) -> None:
    from streams._cli.channel import _status_text, status_doc

    db = tmp_path / "a.db"
    author, [member] = await _quiet_author(db)
    try:
        branch = await author.open_branch(member.did)
        for n in range(3):
            await author.publish(branch, b"%d" % n)

        def status() -> dict[str, object]:
            reader = Store.open(db, PW)  # (as `streams status` does: no lock, no replay)
            try:
                return status_doc(reader)
            finally:
                reader.close()

        before = status()
        assert before["retained_messages"] == 0 and before["files"]["commits"] > 0  # type: ignore[index]
        assert "-commits: commits its party has not applied" in _status_text(before)
        author.store.apply_journal()
        after = status()
        assert after["retained_messages"] == 3 and after["files"]["commits"] == 0  # type: ignore[index]
        assert "not applied" not in _status_text(after)
    finally:
        await author.close()


# --- frames carried in the record ------------------------------------------------------------------------------


def _journaled_frames(db: Path) -> list[bytes]:
    """The frames the journal's log rows carry themselves (not a frame file reference)."""
    records, _ = _j_parse(Path(f"{db}-commits").read_bytes())
    return [r[4] for _, ops in records for op, rows in ops if op == _J_LOG for r in rows if r[4][:1] != b"\xc1"]


async def test_a_small_commits_frames_travel_in_its_record_and_reach_the_frame_file_at_the_apply(
        tmp_path: Path) -> None:
    db, frames = tmp_path / "a.db", tmp_path / "a.db-frames"
    author, [member] = await _quiet_author(db)
    try:
        branch = await author.open_branch(member.did)
        payloads = [b"%d" % n + b"f" * 2048 for n in range(5)]  # each frame over FRAME_FILE_MIN
        seqs = [await author.publish(branch, p) for p in payloads]
        assert not frames.exists() or frames.stat().st_size == 0  # one append each: the journal's
        carried = _journaled_frames(db)
        assert len(carried) == 5 and all(len(f) > 2048 for f in carried)
        # One larger than J_INLINE_MAX goes to the frame file at its commit, as without the journal.
        [big_seq] = await author.publish_many(branch, [b"b" * (J_INLINE_MAX + 1)])
        written = frames.stat().st_size
        assert written > J_INLINE_MAX and len(_journaled_frames(db)) == 5
        author.store.apply_journal()  # the five go to the frame file, after the large one
        assert frames.stat().st_size == written + sum(len(f) for f in carried)
        with sqlite3.connect(db) as c:
            refs = c.execute("SELECT count(*) FROM log WHERE substr(frame, 1, 1) = x'c1'").fetchone()[0]
        c.close()
        assert refs == 6  # every row names its frame in the file
        got = [decode_frame(f) for f in author.store.log_range(branch, 0, 1, 10**9)]
        assert [f.head.seq for f in got] == [*seqs, big_seq]
    finally:
        await author.close()


def test_a_killed_partys_frames_carried_in_its_records_are_applied_at_its_next_open(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    _killed_after(db, N, payload=8192)  # (a durable store: frames of DURABLE_FILE_MIN and more for the file)
    assert not Path(f"{db}-frames").exists() or Path(f"{db}-frames").stat().st_size == 0
    assert len(_journaled_frames(db)) == N
    seqs, next_seq = _party_view(db)  # (its hash links and the chain's head checked)
    assert seqs == list(range(1, N + 1)) and next_seq == N + 1
    store = Store.open(db, PW)
    try:
        [branch] = [b.id for b in store.load_branches()]
        assert [len(decode_frame(f).body) for f in store.log_range(branch, 0, 1, 10**9)] == [8192 + 16] * N
    finally:
        store.close()


async def test_a_durable_party_syncs_once_per_publish_of_a_large_frame(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Its frame travels in the journal's record: one append, one fdatasync -- not one for the frame file too.
    db = tmp_path / "a.db"
    author, [member] = await _quiet_author(db, options=StoreOptions(durable=True, opslimit=1, memlimit=8192,
                                                                    journal=True))
    try:
        branch = await author.open_branch(member.did)
        events = _disk_trace(monkeypatch, author.store._db)
        for n in range(4):
            await author.publish(branch, b"%d" % n + b"f" * 8192)
        assert [e for e in events if e[0] == "fdatasync"] == [("fdatasync", f"{db}-commits")] * 4
    finally:
        await author.close()


def test_a_lock_whose_mark_fails_is_not_held_and_the_next_lock_marks(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "a.db"
    _killed_after(db, N)  # (its records are replayed by the lock below, then the mark fails)
    store = Store.open(db, PW, durable=False, journal=True)
    try:
        real = Store._wtx

        @contextlib.contextmanager
        def failing(self: Store) -> Iterator[None]:
            raise sqlite3.OperationalError("disk I/O error")
            yield  # (a generator)

        monkeypatch.setattr(Store, "_wtx", failing)
        with pytest.raises(StorageError, match="disk I/O error"):
            store.lock()
        other = Store.open(db, PW)
        try:
            other.lock()  # not held by the failed lock()
        finally:
            other.close()
        monkeypatch.setattr(Store, "_wtx", real)
        applied = store._j_applied()
        store.lock()
        assert store._j_applied() == applied + 1  # marked this time
        assert store._fds.count(store._j_fd) <= 1
    finally:
        store.close()
    assert _party_view(db) == (list(range(1, N + 1)), N + 1)


def test_old_records_then_a_hole_in_one_journal_file_are_damage_not_a_power_loss(tmp_path: Path) -> None:
    # New records are written from the start of an emptied file: one that holds applied records, then a hole, then
    # newer ones, was not left by a power loss -- refused, not dropped, even without durable.
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        data = b"".join(_j_record(seq, msgpack.packb([])) for seq in (5, 6, 8, 9))
        with pytest.raises(StorageError, match="is damaged: record 8 follows 6"):
            store_module._j_apply_new(conn, data, 6, tmp_path / "x.db-commits", lossy=True)
        # the same without old records: the hole a power loss leaves (dropped, their numbers used)
        data = b"".join(_j_record(seq, msgpack.packb([])) for seq in (8, 9))
        assert store_module._j_apply_new(conn, data, 6, tmp_path / "x.db-commits", lossy=True)[:2] == (9, 0)
        assert conn.execute("SELECT seq FROM journal").fetchone() == (9,)
    finally:
        conn.close()


@pytest.mark.parametrize("cut", [False, True])
def test_an_apply_keeps_the_order_of_the_records_statements(tmp_path: Path, cut: bool) -> None:
    """The apply runs each statement's rows of all its records in one go where that changes nothing (no record
    cuts or drops log rows): the first message stored at a position stays, the last cursor and nonce expiry win.
    A record that cuts the log is applied in order: the rows it cut are gone, the ones written after it stay."""
    db, branch = tmp_path / "a.db", b"B" * 16

    def rec(seq: int, tag: bytes) -> LogRecord:
        return LogRecord(branch, 1, seq, bytes([seq]) * 32, b"\x92" + tag * 10)

    def cursor(n: int) -> ChainRecord:
        return ChainRecord(branch, 1, n, bytes([n - 1]) * 32)

    store = _new_store(db, durable=False)
    store.lock()
    try:
        store.commit(Changes(chains=[cursor(4)], log=[rec(1, b"a"), rec(2, b"a"), rec(3, b"a")],
                             nonces=[(b"n" * 16, 100)]))
        store.commit(Changes(chains=[cursor(2)], log_cut=[(branch, 1, 1)]) if cut
                     else Changes(chains=[cursor(5)], log=[rec(2, b"b"), rec(4, b"b")], nonces=[(b"n" * 16, 200)]))
        store.commit(Changes(chains=[cursor(3 if cut else 6)], log=[rec(2, b"c")], nonces=[(b"n" * 16, 300)]))
        assert store._j_pending  # (all three are in the journal, not yet in the database)
        store.apply_journal()
        rows = {seq: frame[1:2] for seq, frame in store._q("SELECT seq, frame FROM log ORDER BY seq")}
        assert rows == ({1: b"a", 2: b"c"} if cut else {1: b"a", 2: b"a", 3: b"a", 4: b"b"})
        assert [c.next_seq for c in store.load_chains()] == [3 if cut else 6]
        assert store._q("SELECT expires_ms FROM nonces") == [(300,)]
    finally:
        store.close()


def test_the_apply_runs_a_statements_rows_together_only_where_no_record_cuts_the_log() -> None:
    ops = [(0, [("c", 1)]), (3, [("l", 1)]), (0, [("c", 2)]), (5, [("d", 1)]), (3, [("l", 2), ("l", 3)])]
    assert store_module._j_merged(ops) == [(0, [("c", 1), ("c", 2)]), (3, [("l", 1), ("l", 2), ("l", 3)]),
                                           (5, [("d", 1)])]
    for cutting in (1, 2):
        with_cut = [*ops[:2], (cutting, [("x", 1)]), *ops[2:]]
        assert store_module._j_merged(with_cut) == with_cut
    assert ops[0] == (0, [("c", 1)])  # (the records' own rows are left as they were)


def test_the_apply_writes_only_the_last_of_a_replaces_rows_of_one_key() -> None:
    """A chain's cursor, a nonce and a delivery cursor replaced by every commit: of the rows an apply runs together,
    the last of each key alone is written (the table holds nothing else after them); the log's INSERT OR IGNORE
    keeps every row (its first of a key wins), and rows the statement does not write as they are (another width,
    another type) are left for the database to judge."""
    b1, b2, n1, n2 = b"1" * 16, b"2" * 16, b"n" * 16, b"m" * 16

    def cursor(b: bytes, seq: int) -> tuple[bytes, int, int, bytes, int]:
        return (b, 1, seq, bytes([seq]) * 32, 0)

    ops: list[tuple[int, list[Any]]] = []
    for seq in range(1, 5):
        ops += [(0, [cursor(b1, seq)] + ([cursor(b2, seq)] if seq % 2 else [])),
                (3, [(b1, 1, seq, b"h" * 32, b"\x92f")]), (4, [(n1 if seq < 3 else n2, seq)]), (5, [(b1, 1, seq)])]
    merged = dict(store_module._j_merged(ops))
    assert merged[0] == [cursor(b1, 4), cursor(b2, 3)]
    assert merged[4] == [(n1, 2), (n2, 4)]
    assert merged[5] == [(b1, 1, 4)]
    assert merged[3] == [(b1, 1, seq, b"h" * 32, b"\x92f") for seq in range(1, 5)]
    # Rows a journal's msgpack gives (lists) are taken as tuples are.
    assert store_module._j_merged([(0, [list(cursor(b1, 1))]), (0, [list(cursor(b1, 2))])]) == [
        (0, [list(cursor(b1, 2))])]
    for odd in ([b1, 1, 1, b"h" * 32, {"x": 1}], [b1, 1, 1, b"h" * 32], [b1, 1, 1, b"h" * 32, None],
                [b1, True, 1, b"h" * 32, 0], "not a row"):
        rows = [odd, cursor(b1, 2)]
        assert store_module._j_merged([(0, rows[:1]), (0, rows[1:])]) == [(0, rows)]


def test_an_apply_of_per_message_commits_replaces_each_cursor_once(tmp_path: Path) -> None:
    """The per-message API's commits, one message each: the apply writes every log row and delivery and each
    chain's last cursor -- one REPLACE per key (counted by SQLite's trace), not one per commit."""
    db, branch = tmp_path / "a.db", b"B" * 16
    store = _new_store(db, durable=False)
    store.lock()
    try:
        for seq in range(1, 41):
            store.commit(Changes(chains=[ChainRecord(branch, 1, seq + 1, bytes([seq]) * 32)],
                                 log=[LogRecord(branch, 1, seq, bytes([seq]) * 32, b"\x92" + b"p" * 20)]),
                         {(branch, 1): seq})
        assert store._j_records == 40
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        try:
            store.apply_journal()
        finally:
            store._db.set_trace_callback(None)
        assert sum(st.startswith("INSERT OR REPLACE INTO chains") for st in statements) == 1
        assert sum(st.startswith("INSERT OR REPLACE INTO delivered") for st in statements) == 1
        assert store._q("SELECT count(*), min(seq), max(seq) FROM log") == [(40, 1, 40)]
        assert [(c.next_seq, c.head) for c in store.load_chains()] == [(41, bytes([40]) * 32)]
        assert store._q("SELECT seq FROM delivered") == [(40,)]
    finally:
        store.close()


@pytest.mark.parametrize("value", [{"covered": 0}, 2**63], ids=["map", "beyond_int64"])
def test_a_replayed_replace_the_database_refuses_fails_though_a_later_row_replaces_it(
        tmp_path: Path, value: object) -> None:
    """A journal's rows are untrusted: a chain cursor with a value the database cannot bind (a map; an integer
    msgpack carries and SQLite does not), followed by a good row of the same key, still fails the replay (it is not
    dropped as replaced), and nothing of it is written."""
    db, branch = tmp_path / "a.db", b"B" * 16
    _new_store(db, durable=False).close()
    with contextlib.closing(sqlite3.connect(db)) as c:
        applied = store_module._j_applied(c)
    bad, good = [branch, 1, 2, b"h" * 32, value], [branch, 1, 3, b"g" * 32, 0]
    Path(f"{db}-commits").write_bytes(_j_record(applied + 1, msgpack.packb([[0, [bad]]]))
                                      + _j_record(applied + 2, msgpack.packb([[0, [good]]])))
    store = Store.open(db, PW, durable=False)
    try:
        with pytest.raises(StorageError, match="cannot apply"):
            store.lock()
        assert store._q("SELECT count(*) FROM chains") == [(0,)]
    finally:
        store.close()


def test_an_apply_of_many_rows_writes_each_as_it_would_alone(tmp_path: Path) -> None:
    """Rows go to the database many to a statement (store._j_run): the first message at a position stays, the last
    nonce expiry wins, a remainder that fills no whole statement is written too."""
    db, branch = tmp_path / "a.db", b"B" * 16

    def rec(seq: int, tag: bytes) -> LogRecord:
        return LogRecord(branch, 1, seq, bytes([seq % 256]) * 32, b"\x92" + tag * 10)

    store = _new_store(db, durable=False)
    store.lock()
    try:
        nonces = [n.to_bytes(16, "big") for n in range(70)]
        store.commit(Changes(log=[rec(s, b"a") for s in range(1, 101)], nonces=[(n, 100) for n in nonces]))
        store.commit(Changes(chains=[ChainRecord(branch, 1, 181, b"h" * 32)],
                             log=[rec(s, b"b") for s in range(50, 181)], nonces=[(n, 200) for n in nonces[5:]]))
        store.apply_journal()
        rows = store._q("SELECT branch, publisher, seq, hash, frame FROM log ORDER BY seq")
        assert [tuple(r) for r in rows] == [tuple(rec(s, b"a" if s <= 100 else b"b")) for s in range(1, 181)]
        assert sorted(store._q("SELECT nonce, expires_ms FROM nonces")) == sorted(
            [(n, 100) for n in nonces[:5]] + [(n, 200) for n in nonces[5:]])
        assert [c.next_seq for c in store.load_chains()] == [181]
    finally:
        store.close()


def test_rows_of_the_wrong_width_fail_as_they_would_alone_and_shift_nothing() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("CREATE TABLE log (branch BLOB NOT NULL, publisher INTEGER NOT NULL, seq INTEGER NOT NULL, "
                     "hash BLOB NOT NULL, frame BLOB NOT NULL, PRIMARY KEY (branch, publisher, seq))")
        good = [(b"B" * 16, 1, s, b"h" * 32, b"\x92f") for s in range(1, 131)]
        # As many values as two statements' rows (a short row and a long one among them): the rows before the
        # short one are written, then it fails -- nothing is written shifted into other columns.
        bad = [*good[:10], (b"B" * 16, 1, 11, b"h" * 32), (b"B" * 16, 1, 12, b"h" * 32, b"\x92f", 9), *good[12:128]]
        with pytest.raises(sqlite3.ProgrammingError):
            store_module._j_run(conn, _J_LOG, bad)
        assert conn.execute("SELECT count(*), max(seq) FROM log").fetchone() == (10, 10)
        store_module._j_run(conn, _J_LOG, good)
        assert conn.execute("SELECT count(*), min(seq), max(seq) FROM log").fetchone() == (130, 1, 130)
        assert conn.execute("SELECT count(*) FROM log WHERE publisher != 1 OR length(hash) != 32").fetchone() == (0,)
    finally:
        conn.close()


def test_a_replayed_row_that_is_a_map_is_refused_among_many(tmp_path: Path) -> None:
    """A journal's rows are untrusted (its digest is a checksum): a map among enough rows to go many to a
    statement fails the replay as it would alone -- its keys are never written as a row."""
    db = tmp_path / "a.db"
    _new_store(db, durable=False).close()
    with contextlib.closing(sqlite3.connect(db)) as c:
        applied = store_module._j_applied(c)
    rows: list[object] = [[n.to_bytes(16, "big"), 10**12] for n in range(70)]
    rows[3] = {"nonce": 1, "expires": 2}
    Path(f"{db}-commits").write_bytes(_j_record(applied + 1, msgpack.packb([[4, rows]])))
    store = Store.open(db, PW, durable=False)
    try:
        with pytest.raises(StorageError, match="cannot apply"):
            store.lock()
        assert store._q("SELECT count(*) FROM nonces") == [(0,)]
    finally:
        store.close()


def test_a_durable_stores_small_frames_left_in_its_records_reach_the_frame_file_at_the_apply(
        tmp_path: Path) -> None:
    """A durable commit spills a large frame at once but keeps frames under DURABLE_FILE_MIN in its record when it
    has fewer than DURABLE_FILE_BATCH of them: the apply, with enough of them, moves them to the frame file."""
    db, branch = tmp_path / "a.db", b"B" * 16
    store = _new_store(db)
    store.lock()
    try:
        seq = 1
        for _ in range(2):
            log = [LogRecord(branch, 1, seq, b"h" * 32, b"\x92" + b"x" * (J_INLINE_MAX + 1))]
            log += [LogRecord(branch, 1, seq + k, b"h" * 32, b"\x92" + b"y" * 2000) for k in range(1, 5)]
            seq += 5
            store.commit(Changes(chains=[ChainRecord(branch, 1, seq, b"h" * 32)], log=log))
        assert store._j_records == 2  # (both in the journal, not yet in the database)
        store.apply_journal()
        assert [n for (n,) in store._q("SELECT length(frame) FROM log ORDER BY seq")] == [13] * 10  # references
        assert Path(f"{db}-frames").stat().st_size == 2 * (J_INLINE_MAX + 2) + 8 * 2001
    finally:
        store.close()


async def test_a_party_applies_its_journal_between_messages_not_in_the_commit_that_must(tmp_path: Path) -> None:
    """From J_APPLY_SOON records on, each party applies its journal in the loop's turn after a commit's frames went
    out (the author) or its messages were handed to the application (the subscriber): a commit never reaches
    J_APPLY_RECORDS and applies inside itself, on its messages' path.  (Heartbeats, which also apply, are off.)"""
    hub, member = MemoryHub(), Identity.generate()
    author = await Author.create(tmp_path / "a.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([member.did]), store_options=FAST_J)
    sub = await Subscriber.create(tmp_path / "s.db", member, author.did, author.channel, PW,
                                  hub.subscriber_endpoint("m"), store_options=FAST_J)
    author.heartbeat_ms = sub.heartbeat_ms = 3_600_000
    try:
        branch = await sub.subscribe(timeout=10)
        most = {"author": 0, "subscriber": 0}
        for i in range(2 * J_APPLY_RECORDS):
            await author.publish(branch, b"%d" % i)
            assert (await sub.next_message(timeout=10)).payload == b"%d" % i
            for _ in range(3):
                await asyncio.sleep(0)
            for name, party in (("author", author), ("subscriber", sub)):
                most[name] = max(most[name], party.store.journal_pending)
        assert most == {"author": J_APPLY_SOON - 1, "subscriber": J_APPLY_SOON - 1}
    finally:
        await sub.close()
        await author.close()


async def test_an_apply_between_messages_that_fails_is_not_retried_after_every_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A failed apply is logged and left to the heartbeat's (or the commit at J_APPLY_RECORDS): a write lock held
    elsewhere would otherwise stall the loop for its busy timeout at every message.  Once the journal was applied
    otherwise, the party applies between messages again."""
    author, [member] = await _quiet_author(tmp_path / "a.db")
    real, tries = store_module._j_exec, []

    def failing(conn: sqlite3.Connection, ops: list[tuple[int, list[object]]], last: int) -> None:
        tries.append(last)
        raise sqlite3.OperationalError("disk I/O error (injected)")

    try:
        branch = await author.open_branch(member.did)
        author.store.apply_journal()
        monkeypatch.setattr(store_module, "_j_exec", failing)
        with caplog.at_level(logging.WARNING, logger="streams"):
            for n in range(J_APPLY_RECORDS - 1):  # (the commit that reaches J_APPLY_RECORDS would apply itself)
                await author.publish(branch, b"%d" % n)
                for _ in range(3):
                    await asyncio.sleep(0)
        assert len(tries) == 1 and author.store.journal_pending == J_APPLY_RECORDS - 1
        assert sum("injected" in r.getMessage() for r in caplog.records) == 1
        monkeypatch.setattr(store_module, "_j_exec", real)
        author.store.apply_journal()  # (as the heartbeat's would)
        monkeypatch.setattr(store_module, "_j_exec", failing)
        for n in range(J_APPLY_SOON):
            await author.publish(branch, b"again %d" % n)
            for _ in range(3):
                await asyncio.sleep(0)
        assert len(tries) == 2  # between messages again, once
    finally:
        monkeypatch.setattr(store_module, "_j_exec", real)
        await author.close()


@pytest.mark.parametrize("which", ["journal", "frames"])
def test_a_durable_stores_new_side_file_is_named_on_disk_before_a_commit_is_acknowledged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    """The journal and the frame file are made at their first write; in a durable store their directory is synced
    then (a power loss must not take the name of a file that acknowledged commits point into).  If that sync fails,
    the commit fails and the next one syncs again -- the file is not kept as if its name were on disk."""
    db, branch = tmp_path / "a.db", b"B" * 16
    store = _new_store(db, journal=which == "journal")
    store.lock()
    synced: list[Path] = []
    fail = [True]
    real = store_module._fsync_path

    def fsync_path(path: Path) -> None:
        synced.append(path)
        if fail[0]:
            fail[0] = False
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr(store_module, "_fsync_path", fsync_path)

    def changes(seq: int) -> Changes:
        if which == "journal":
            return Changes(nonces=[(bytes([seq]) * 16, 100)])
        return Changes(chains=[ChainRecord(branch, 1, seq + 1, b"h" * 32)],
                       log=[LogRecord(branch, 1, seq, b"h" * 32, b"\x92" + b"x" * store_module.DURABLE_FILE_MIN)])

    try:
        with pytest.raises(StorageError, match="Input/output error"):
            store.commit(changes(1))
        assert synced == [tmp_path]
        store.commit(changes(1))
        store.commit(changes(2))
        assert synced == [tmp_path, tmp_path]  # synced again, then once for the open file
        assert Path(f"{db}{'-commits' if which == 'journal' else '-frames'}").exists()
    finally:
        store.close()
