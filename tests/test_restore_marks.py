"""Restore marks (SPEC 13.5): the audit takes a restore proof as the start of a member's log of a chain only with
the member's own signature over it, never on the strength of a flag or a row anyone who can write the store file
sets.  Real SQLite stores and an embedded ledger, the in-memory transport."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from streams.api import MemoryHub
from streams.audit import AuditReport, audit_store
from streams.events import Anchored
from streams.ledger import EmbeddedLedger
from tests.test_anchoring_integration import P1, PW, Collect, make_author, make_sub, wait_for


def _errors(rep: AuditReport) -> list[str]:
    return [f.reason for f in rep.findings if f.severity == "error"]


def _tamper(path: Path, *edits: tuple[str, tuple[object, ...]]) -> None:
    db = sqlite3.connect(path)
    for sql, args in edits:
        db.execute(sql, args)
    db.commit()
    db.close()


async def test_a_restore_flag_set_by_hand_does_not_pass_a_deleted_chain_off_as_a_restart(tmp_path: Path) -> None:
    """An honest member published 1..6, anchored at 6; it never lost its state.  Whoever can write its store file
    deletes its whole own chain, flags the anchored head restored and copies it into ``anchor_restores`` (a
    genuine, author-signed proof): to the audit that looked like a member that restarted its chain at 6 after
    losing its state -- a clean audit of a store whose every message of its own was deleted."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    try:
        branch = await s.subscribe(timeout=5)
        col = Collect(s)
        await s.publish_many(branch, [b"own %d" % i for i in range(6)])
        await s.wait_acknowledged(branch, 6, timeout=5)
        await wait_for(lambda: any(e.publisher == 1 and e.seq == 6 for e in col.of(Anchored)), what="anchored 6")
    finally:
        await s.close()
        await author.close()
    try:
        assert not _errors(audit_store(tmp_path / "p1.db", PW, ledger))
        _tamper(tmp_path / "p1.db",
                ("DELETE FROM log WHERE branch = ? AND publisher = 1", (branch,)),
                ("UPDATE anchor_heads SET restored = 1 WHERE branch = ? AND publisher = 1", (branch,)),
                ("INSERT INTO anchor_restores SELECT * FROM anchor_heads WHERE branch = ? AND publisher = 1",
                 (branch,)))
        errors = _errors(audit_store(tmp_path / "p1.db", PW, ledger))
        assert any("messages 1..6 are missing" in r for r in errors), errors
        assert any("without this party's restore mark" in r for r in errors), errors
    finally:
        ledger.close()


async def test_a_member_that_lost_its_state_audits_clean_and_an_altered_restore_mark_does_not(
        tmp_path: Path) -> None:
    """A member that lost its store re-subscribes and restarts at the anchored heads (its log starts there): it
    marks both restore proofs, and its audit passes.  A mark altered in the file, or one of another chain put in
    its place, verifies no more: the chain is read from its genesis again, and its missing start is reported."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    new = tmp_path / "p1-new.db"
    try:
        b1 = await s1.subscribe(timeout=5)
        for i in range(5):
            await author.publish(b1, b"alert %d" % i)
        await s1.publish(b1, b"report 1")
        await s1.publish(b1, b"report 2")
        col = Collect(s1)
        await wait_for(lambda: {(e.publisher, e.seq) for e in col.of(Anchored)} >= {(0, 5), (1, 2)}, what="anchored")
        await s1.close()
        os.remove(tmp_path / "p1.db")
        s1 = await make_sub(new, hub, P1, "p1", author, ledger=ledger)
        col = Collect(s1)
        assert await s1.subscribe(timeout=5) == b1
        await wait_for(lambda: {(e.publisher, e.seq) for e in col.of(Anchored) if e.restored} == {(0, 5), (1, 2)},
                       what="restored heads")
    finally:
        await s1.close()
        await author.close()
    try:
        db = sqlite3.connect(new)
        assert sorted(db.execute("SELECT publisher, seq FROM restore_marks").fetchall()) == [(0, 5), (1, 2)]
        db.close()
        rep = audit_store(new, PW, ledger)
        assert rep.ok, rep.summary()
        shutil.copyfile(new, tmp_path / "clean.db")

        _tamper(new, ("UPDATE restore_marks SET mark = zeroblob(64) WHERE publisher = 0", ()))
        errors = _errors(audit_store(new, PW, ledger))
        assert any("messages 1..5 are missing" in r for r in errors), errors
        assert any("without this party's restore mark" in r for r in errors), errors

        shutil.copyfile(tmp_path / "clean.db", new)
        _tamper(new, ("UPDATE restore_marks SET mark = (SELECT mark FROM restore_marks WHERE publisher = 1) "
                       "WHERE publisher = 0", ()))
        errors = _errors(audit_store(new, PW, ledger))
        assert any("messages 1..5 are missing" in r for r in errors), errors
    finally:
        ledger.close()
