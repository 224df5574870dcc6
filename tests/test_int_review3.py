"""Third review of a9eb16b..int (rev9)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from streams.errors import LedgerError
from streams.ledger import EmbeddedLedger


def test_an_append_after_a_hand_inserted_row_at_a_negative_position_is_a_ledger_error(tmp_path: Path) -> None:
    """672e795 makes an append after a row put by hand at the last position a LedgerError (the anchoring task
    retries on LedgerError and "must never die on it").  A well-typed row INSERTed by hand at a negative
    position into an empty ledger (or as its only rows) makes the next position negative too: ``entry_hash``
    packs it as ``>Q`` and ``struct.error`` escapes ``append`` -- every later append, for good."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("INSERT INTO entries VALUES (-5, x'01', x'00', 0, zeroblob(32), zeroblob(32))")
    db.commit()
    db.close()
    try:
        with pytest.raises(LedgerError):
            ledger.append(b"t", b"d")
    finally:
        ledger.close()
