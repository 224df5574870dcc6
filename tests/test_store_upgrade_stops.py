"""The upgrade of a real store of the version before publishing stops were bound (``main`` at ``b1f7765``:
``tests/fixtures/stops_before_binding/make.py``), not one rewritten to look like it: a member store stopped by a
ChainConflict, its stop row unbound, no ``stops`` metadata row, its ``check`` sealed the way of then.  Real SQLite
files, real PyNaCl."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from streams.audit import audit_store
from streams.store import Store
from tests.test_stale_member import PW
from tests.test_store_tamper_round3 import _attack, _publish_stopped, _records_refused

FIXTURE = Path(__file__).parent / "fixtures" / "stops_before_binding"


def _meta(path: Path, *keys: str) -> dict[str, bytes]:
    with sqlite3.connect(path) as c:
        rows = {k: bytes(v) for k, v in c.execute("SELECT k, v FROM meta") if k in keys}
    c.close()
    return rows


def _stops(path: Path) -> list[tuple[bytes, int, int]]:
    with sqlite3.connect(path) as c:
        rows = [(bytes(b), p, s) for b, p, s in c.execute("SELECT branch, publisher, seq FROM chain_conflicts")]
    c.close()
    return rows


async def test_a_stopped_store_of_the_previous_version_keeps_its_stop_and_is_bound_once(tmp_path: Path) -> None:
    """``streams audit`` (the first open by this version) reports the stop, not an altered record, and binds it:
    the ``stops`` row is written and ``check`` sealed anew, once (a second open writes neither again).  The party
    keeps the stop (publishing is refused); from then on the stop row deleted -- with the ``stops`` row too, so
    the store would look written before -- is refused as an altered record."""
    path = tmp_path / "p1.db"
    shutil.copyfile(FIXTURE / "p1.db", path)
    branch = bytes.fromhex((FIXTURE / "branch").read_text())
    assert "stops" not in _meta(path, "stops") and "check" in _meta(path, "check")  # (the version before's)
    stop = _stops(path)
    assert stop == [(branch, 1, 6)]

    report = audit_store(path, PW, None)
    assert not report.ok
    found = [(f.branch, f.publisher, f.seq) for f in report.findings if f.severity == "error"]
    assert found == [(branch.hex(), 1, 6)], report.summary()
    bound = _meta(path, "stops", "check")
    assert set(bound) == {"stops", "check"}
    Store.open(path, PW, durable=False).close()
    assert _meta(path, "stops", "check") == bound  # bound once: not sealed again at a later open

    await _publish_stopped(path, PW, branch)
    assert _stops(path) == stop

    _attack(path, ("DELETE FROM chain_conflicts", ()), ("DELETE FROM meta WHERE k = 'stops'", ()))
    _records_refused(path, PW, f"{branch.hex()} .*was altered")
