"""``audit_store`` against a member that rewrites its own history (mutation testing: the audit's hash-link check).

Real SQLite stores, real signatures and AEAD, the in-memory transport."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from streams import _crypto
from streams.api import MemoryHub
from streams.audit import audit_store
from streams.wire import VERSION, Kind, Packet, encode_frame, encode_head
from tests.test_anchoring_integration import P1, PW, make_author, make_sub


def rewrite_message(path: Path, channel: bytes, branch: bytes, key: bytes, seq: int) -> None:
    """Member P1 replaces message ``seq`` of its own chain in its store by another one it signs and encrypts
    properly (its chain key ``key``), linked to the message before, and fixes the row's hash."""
    db = sqlite3.connect(path)
    try:
        (before,) = db.execute("SELECT hash FROM log WHERE branch = ? AND publisher = 1 AND seq = ?",
                               (branch, seq - 1)).fetchone()
        head = Packet(channel, branch, 1, seq, bytes(before), 0, b"\7" * 24)
        body = _crypto.aead_encrypt(key, head.nonce, bytes((VERSION, Kind.PACKET)) + encode_head(head),
                                    b"rewritten")
        forged = encode_frame(head, body, P1.sign)
        db.execute("UPDATE log SET frame = ?, hash = ? WHERE branch = ? AND publisher = 1 AND seq = ?",
                   (forged.raw, forged.hash, branch, seq))
        db.commit()
    finally:
        db.close()


async def test_audit_finds_a_message_replaced_by_a_validly_signed_and_encrypted_one(tmp_path: Path) -> None:
    """The member that holds its chain's key and its DID's signing key replaces message 3 of its own chain, in its
    store, by another message 3 that it signs and encrypts properly, linked to message 2, and updates the row's
    hash (THREATS 7: history rewritten after the fact).  Every row still decodes, hashes to its stored hash,
    authenticates and verifies; only the hash link of message 4, which names the original message 3, shows the
    substitution.  The audit must report it.  (Kills the mutant whose audit skips the link check.)"""
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, None)
    s = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author)
    try:
        branch = await s.subscribe(timeout=5)
        await s.publish_many(branch, [b"own %d" % i for i in range(6)])
        await s.wait_acknowledged(branch, 6, timeout=5)
        key = s._core._branches[branch].keys[(0, 1)]  # the member's own chain key: what it holds anyway
        channel = author.channel
    finally:
        await s.close()
        await author.close()
    assert audit_store(tmp_path / "p1.db", PW, None).ok
    rewrite_message(tmp_path / "p1.db", channel, branch, key, 3)
    rep = audit_store(tmp_path / "p1.db", PW, None)
    assert not rep.ok, rep.summary()
    assert [(f.seq, "hash link" in f.reason) for f in rep.findings if f.severity == "error"] == [(4, True)], \
        rep.summary()
