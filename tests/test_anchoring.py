"""Epoch -> ledger -> receipt on the embedded ledger: one write per epoch, receipts only once confirmed."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from streams.anchor import ANCHOR_TAG, ChainHead, EpochCheckpoint, build_epoch
from streams.errors import DecodeError, VerificationError
from streams.identity import Identity
from streams.ledger import EmbeddedLedger
from streams.ledger.anchoring import confirm, publish, verify_anchored

AUTHOR = Identity.from_seed(bytes([5]) * 32)
CHANNEL = bytes([1]) * 32


def _heads(n: int) -> list[ChainHead]:
    def h(i: int, t: bytes, size: int) -> bytes:
        return hashlib.sha256(t + i.to_bytes(4, "big")).digest()[:size]

    return [ChainHead(h(i, b"b", 16), 0, i + 1, h(i, b"h", 32), h(i // 10, b"k", 32)) for i in range(n)]


def test_one_write_per_epoch_and_every_head_verifies(tmp_path: Path) -> None:
    heads = _heads(300)
    with EmbeddedLedger(tmp_path / "l.db", clock=lambda: 42) as led:
        epoch = build_epoch(CHANNEL, heads, None, 42, AUTHOR.sign)
        pending = publish(led, epoch)
        assert led.size() == 1  # 300 heads, one ledger write
        receipt = confirm(led, pending)
        assert receipt is not None
        assert (receipt.epoch, receipt.ref, receipt.timestamp_ms) == (0, 1, 42)
        assert receipt.checkpoint_digest == epoch.checkpoint.digest
        for h in heads[::37]:
            r = verify_anchored(led, pending.anchor_id, h, epoch.proofs[(h.branch, h.publisher)],
                                AUTHOR.sign_public, expected=epoch.checkpoint)
            assert r == receipt
        # a head that is not in the epoch does not verify against the anchored checkpoint
        stranger = _heads(301)[300]
        with pytest.raises(VerificationError):
            verify_anchored(led, pending.anchor_id, stranger, epoch.proofs[(heads[0].branch, 0)],
                            AUTHOR.sign_public)
        # the next epoch is a second write linked to the first
        e1 = build_epoch(CHANNEL, heads[:3], epoch.checkpoint, 50, AUTHOR.sign)
        assert confirm(led, publish(led, e1)) is not None
        assert led.size() == 2
        assert led.verify().ok


def test_a_substituted_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    heads = _heads(4)
    epoch = build_epoch(CHANNEL, heads, None, 1, AUTHOR.sign)
    with EmbeddedLedger(path) as led:
        pending = publish(led, epoch)
        led.append(b"other", b"not a checkpoint")
    # someone with the file swaps in another validly signed checkpoint (say, of a forked history)
    other = build_epoch(CHANNEL, _heads(5), None, 1, AUTHOR.sign)
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("UPDATE entries SET data = ? WHERE position = 1", (other.payload,))
    db.commit()
    db.close()
    with EmbeddedLedger(path) as led:
        with pytest.raises(VerificationError):
            confirm(led, pending)
        proof = epoch.proofs[(heads[0].branch, 0)]
        with pytest.raises(VerificationError):
            verify_anchored(led, pending.anchor_id, heads[0], proof, AUTHOR.sign_public)
        with pytest.raises(VerificationError):  # not an anchor at all
            verify_anchored(led, "2", heads[0], epoch.proofs[(heads[0].branch, 0)], AUTHOR.sign_public)
        assert led.verify().bad_position == 1  # and the chain shows the edit
        assert led.read("1") == (ANCHOR_TAG, other.payload)
        assert EpochCheckpoint.decode(other.payload) != epoch.checkpoint
        with pytest.raises(DecodeError):
            EpochCheckpoint.decode(b"not a checkpoint")
