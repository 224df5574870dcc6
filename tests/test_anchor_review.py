"""Attacks on anchoring (THREATS 7) found in review: each test failed before its fix.

Real SQLite stores and ledgers in a temporary directory, the in-memory transport, real PyNaCl."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import msgpack
import pytest

from streams.anchor import ANCHOR_TAG, ChainHead, build_epoch
from streams.api import MemoryHub
from streams.audit import audit_store
from streams.errors import RejectReason, VerificationError
from streams.events import Anchored, Rejected
from streams.ledger import EmbeddedLedger
from streams.ledger.anchoring import PendingAnchor, confirm, verify_anchored
from tests.test_anchoring_integration import (
    AUTHOR,
    P1,
    PW,
    Collect,
    _channel_for_audit,
    make_author,
    make_sub,
    wait_for,
)


def _copy_store(src: Path, dst: Path) -> sqlite3.Connection:
    """A consistent copy of a closed store (``sqlite3`` backup), opened for tampering."""
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{dst}{suffix}").exists():
            os.remove(f"{dst}{suffix}")
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    s.backup(d)
    s.close()
    return d


# --- audit: an author store that hides a truncated history behind "not confirmed yet" ------------------------


async def test_author_audit_catches_a_truncated_chain_behind_anchor_rows_set_back_to_built(tmp_path: Path) -> None:
    """Someone with the author's store file drops the tail of the author's chain (messages 4..6, already
    anchored and confirmed on the ledger) and sets the cursor back, then marks the anchor rows ``built``.  The
    checkpoints stay byte-identical to the ledger's, so the ledger listing finds no conflict; the audit must
    still bind the stored heads to the signed roots and to the log, whatever the rows' state."""
    lpath, b1 = await _channel_for_audit(tmp_path)
    with EmbeddedLedger(lpath) as ledger:
        assert audit_store(tmp_path / "author.db", PW, ledger).ok
        db = _copy_store(tmp_path / "author.db", tmp_path / "t.db")
        head3 = bytes(db.execute("SELECT hash FROM log WHERE branch = ? AND publisher = 0 AND seq = 3",
                                 (b1,)).fetchone()[0])
        db.execute("DELETE FROM log WHERE branch = ? AND publisher = 0 AND seq > 3", (b1,))
        db.execute("UPDATE chains SET next_seq = 4, head = ?, covered = 3 WHERE branch = ? AND publisher = 0",
                   (head3, b1))
        db.execute("UPDATE anchors SET state = 'built', anchor_id = NULL")
        db.commit()
        db.close()
        rep = audit_store(tmp_path / "t.db", PW, ledger)
        assert not rep.ok, rep.summary()
        assert any("not in the log" in f.reason for f in rep.findings if f.severity == "error"), rep.summary()


async def test_author_audit_catches_a_truncated_chain_behind_anchor_rows_without_heads(tmp_path: Path) -> None:
    """The same cut, hidden another way: the rows stay ``confirmed`` but their ``heads`` column (a plain list
    next to the leaves, not signed) is emptied.  The leaves still give the signed root, so only a count check
    can tell that heads were dropped: every leaf must have its head."""
    lpath, b1 = await _channel_for_audit(tmp_path)
    with EmbeddedLedger(lpath) as ledger:
        db = _copy_store(tmp_path / "author.db", tmp_path / "t.db")
        head3 = bytes(db.execute("SELECT hash FROM log WHERE branch = ? AND publisher = 0 AND seq = 3",
                                 (b1,)).fetchone()[0])
        db.execute("DELETE FROM log WHERE branch = ? AND publisher = 0 AND seq > 3", (b1,))
        db.execute("UPDATE chains SET next_seq = 4, head = ?, covered = 3 WHERE branch = ? AND publisher = 0",
                   (head3, b1))
        db.execute("UPDATE anchors SET heads = ?", (msgpack.packb([]),))
        db.commit()
        db.close()
        rep = audit_store(tmp_path / "t.db", PW, ledger)
        assert not rep.ok, rep.summary()


# --- a ledger entry under the anchor tag that is not a checkpoint ----------------------------------------------


def _garbage_at_1(path: Path) -> EmbeddedLedger:
    """A real embedded ledger whose entry 1 carries the anchor tag but no checkpoint (a damaged or edited row,
    or anyone's write: a ledger is open to all)."""
    led = EmbeddedLedger(path)
    assert led.append(ANCHOR_TAG, b"\x98 not a checkpoint") == "1"
    return led


def test_a_ledger_entry_that_is_no_checkpoint_is_a_verification_failure(tmp_path: Path) -> None:
    """``confirm`` and ``verify_anchored`` promise :class:`VerificationError` when the ledger holds something
    else than the checkpoint under the anchor id; an undecodable entry must not escape as another exception
    (the anchoring service and the subscriber's ledger check handle VerificationError only)."""
    head = ChainHead(bytes(16), 0, 1, bytes(32), bytes(32))
    epoch = build_epoch(bytes(32), [head], None, 1, AUTHOR.sign)
    with _garbage_at_1(tmp_path / "l.db") as led:
        with pytest.raises(VerificationError):
            confirm(led, PendingAnchor("1", epoch.checkpoint))
        with pytest.raises(VerificationError):
            verify_anchored(led, "1", head, epoch.proofs[(head.branch, 0)], AUTHOR.sign_public, epoch.checkpoint)


async def test_a_subscriber_keeps_checking_proofs_after_a_ledger_entry_that_is_no_checkpoint(
        tmp_path: Path) -> None:
    """The subscriber reads each proof's checkpoint back from its ledger.  Where its ledger holds garbage under
    the proof's anchor id, the proof is refused (NOT_ANCHORED) and the ledger check goes on -- it used to die on
    the DecodeError, silently: no proof was ever checked or reported again in that run."""
    a_ledger = EmbeddedLedger(tmp_path / "author-ledger.db")
    s_ledger = _garbage_at_1(tmp_path / "sub-ledger.db")
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, a_ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=s_ledger)
    col = Collect(s1)
    try:
        b1 = await s1.subscribe(timeout=5)
        await author.publish(b1, b"alert")
        await s1.next_message(timeout=5)
        (task,) = [t for t in asyncio.all_tasks() if t.get_name() == f"streams-anchor-{s1.did[-8:]}"]
        await wait_for(lambda: task.done() or bool(col.of(Rejected)), what="the proof checked")
        assert not task.done(), task.exception()
        (rej,) = col.of(Rejected)
        assert rej.reason is RejectReason.NOT_ANCHORED and (rej.branch, rej.publisher, rej.seq) == (b1, 0, 1)
        assert not col.of(Anchored)
    finally:
        await s1.close()
        await author.close()
        a_ledger.close()
        s_ledger.close()
