"""Attacks on anchoring (THREATS 7) found in review: each test failed before its fix.

Real SQLite stores and ledgers in a temporary directory, the in-memory transport, real PyNaCl."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from streams.audit import audit_store
from streams.ledger import EmbeddedLedger
from tests.test_anchoring_integration import PW, _channel_for_audit


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
