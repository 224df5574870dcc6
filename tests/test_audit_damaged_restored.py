"""``audit_store`` on a member store whose restored chain holds a damaged message at or below its restore point.

Real SQLite stores and an embedded ledger, the in-memory transport."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from streams.audit import audit_store
from streams.events import Anchored
from streams.ledger import EmbeddedLedger


async def test_audit_reports_a_damaged_row_below_a_restore_flag_instead_of_failing(tmp_path: Path) -> None:
    """Whoever can write the store file deletes the tail of a member's own chain (4..6, anchored at 6), sets the
    anchored head's ``restored`` flag, and garbles message 1.  The audit reports what it finds in the store as
    findings: the garbled row and the altered flag.  Since ``log_page`` checks each frame against its row's hash
    (for redelivery), the audit's look for rows below the restore point raised StorageError instead, and the
    auditor got no report at all."""
    from streams.api import MemoryHub
    from tests.test_anchoring_integration import P1, PW, Collect, make_author, make_sub, wait_for

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
    db = sqlite3.connect(tmp_path / "p1.db")
    db.execute("UPDATE anchor_heads SET restored = 1 WHERE branch = ? AND publisher = 1", (branch,))
    db.execute("DELETE FROM log WHERE branch = ? AND publisher = 1 AND seq >= 4", (branch,))
    (h3,) = db.execute("SELECT hash FROM log WHERE branch = ? AND publisher = 1 AND seq = 3", (branch,)).fetchone()
    db.execute("UPDATE chains SET next_seq = 4, head = ? WHERE branch = ? AND publisher = 1", (h3, branch))
    db.execute("UPDATE log SET frame = ? WHERE branch = ? AND publisher = 1 AND seq = 1", (b"garbled", branch))
    db.commit()
    db.close()
    try:
        rep = audit_store(tmp_path / "p1.db", PW, ledger)
    finally:
        ledger.close()
    errors = [f.reason for f in rep.findings if f.severity == "error"]
    assert any(f.severity == "error" and f.seq == 1 and "altered" in f.reason for f in rep.findings), rep.summary()
    assert any("restore flag altered" in r for r in errors), rep.summary()
