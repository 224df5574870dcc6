"""An author store restored from an older copy (``streams backup``) against a ledger that moved on.

Real SQLite stores, a real embedded ledger and the real backup, over the in-memory transport (the transport plays
no part): the audit of the stale copy fails (the ledger holds epochs it does not), its anchoring service refuses
to write a second history, and a second signed checkpoint for an epoch on the ledger fails the audit of stores
that hold the first."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streams.anchor import ANCHOR_TAG, EpochCheckpoint
from streams.api import Author, MemoryHub
from streams.audit import audit_store
from streams.errors import LedgerConflict
from streams.events import Anchored
from streams.identity import Identity
from streams.ledger import EmbeddedLedger
from streams.policy import AllowList
from streams.store import Store, backup
from tests.test_anchoring_integration import (
    AUTHOR,
    CFG,
    FAST,
    P1,
    PW,
    Collect,
    ident,
    ledger_rows,
    make_author,
    make_sub,
    wait_for,
)


def _checkpoints(lpath: Path) -> dict[int, set[bytes]]:
    out: dict[int, set[bytes]] = {}
    for tag, data in ledger_rows(lpath):
        if tag == ANCHOR_TAG:
            cp = EpochCheckpoint.decode(data)
            out.setdefault(cp.epoch, set()).add(cp.digest)
    return out


def _last_epoch(path: Path) -> int:
    st = Store.open(path, PW, durable=False)
    try:
        last = st.anchor_last()
        assert last is not None
        return last.epoch
    finally:
        st.close()


async def test_an_author_restored_from_an_older_copy_neither_anchors_nor_audits_clean(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lpath = tmp_path / "ledger.db"
    ledger = EmbeddedLedger(lpath)
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    b1 = await s1.subscribe(timeout=5)
    try:
        for i in range(3):
            await author.publish(b1, b"alert %d" % i)
        assert author.anchoring is not None
        await wait_for(lambda: author.anchoring is not None and author.anchoring.pending == 0
                       and author.anchoring.ledger_writes > 0, what="anchored")
        backup(tmp_path / "author.db", tmp_path / "author.bak")
        col = Collect(s1)
        for i in range(3):
            await author.publish(b1, b"later alert %d" % i)
            await s1.next_message(timeout=5)
        await wait_for(lambda: author.anchoring is not None and author.anchoring.pending == 0
                       and any(e.seq == 6 for e in col.of(Anchored)), what="anchored after the backup")
    finally:
        await s1.close()
        await author.close()
    assert _last_epoch(tmp_path / "author.db") > _last_epoch(tmp_path / "author.bak")
    before = _checkpoints(lpath)

    # The audit: the live store passes, the copy is behind the ledger (it passes without a ledger).
    assert audit_store(tmp_path / "author.db", PW, ledger).ok
    assert audit_store(tmp_path / "author.bak", PW, None).ok
    rep = audit_store(tmp_path / "author.bak", PW, ledger)
    assert not rep.ok and any("behind" in f.reason for f in rep.findings), rep.summary()

    # The author restarted from the copy with its ledger: refused at open, loudly, and nothing is written or
    # published -- it used to re-sign positions members hold (forks) and cut a second checkpoint for an epoch.
    hub = MemoryHub()
    with caplog.at_level(logging.ERROR, logger="streams.anchoring"), pytest.raises(LedgerConflict, match="behind"):
        await Author.open(tmp_path / "author.bak", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                          store_options=FAST, ledger=ledger, anchor_config=CFG)
    assert _checkpoints(lpath) == before
    assert not [d for src, _dst, d in hub.tap if src == "author" and b"from the stale copy" in d]
    assert any(r.levelno == logging.ERROR and "anchoring refused" in r.getMessage() for r in caplog.records)

    # Opened without the ledger (to read it, say), it runs; if its anchoring finds the conflict later (here: the
    # ledger given again, its check done by the running service), publishing stops with the same error.
    stale = await Author.open(tmp_path / "author.bak", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                              store_options=FAST)
    try:
        stale._refuse_publishing(LedgerConflict("the ledger is ahead of this store"))
        with pytest.raises(LedgerConflict, match="ahead"):
            await stale.publish(b1, b"from the stale copy")
        with pytest.raises(LedgerConflict):
            await stale.publish_many(b1, [b"nor these"])
    finally:
        await stale.close()
    assert audit_store(tmp_path / "author.db", PW, ledger).ok
    ledger.close()


async def test_a_second_signed_checkpoint_for_an_epoch_fails_the_audit(tmp_path: Path) -> None:
    lpath = tmp_path / "ledger.db"
    ledger = EmbeddedLedger(lpath)
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    b1 = await s1.subscribe(timeout=5)
    try:
        await author.publish(b1, b"alert")
        await s1.next_message(timeout=5)
        col = Collect(s1)
        await wait_for(lambda: bool(col.of(Anchored)), what="anchored")
        epoch = col.of(Anchored)[-1].epoch
    finally:
        await s1.close()
        await author.close()
    for name in ("author", "p1"):
        assert audit_store(tmp_path / f"{name}.db", PW, ledger).ok
    cps = [EpochCheckpoint.decode(d) for t, d in ledger_rows(lpath) if t == ANCHOR_TAG]
    cp = next(c for c in cps if c.epoch == epoch)

    def signed(by: Identity, **change: object) -> bytes:
        fields = {f: getattr(cp, f) for f in ("channel", "epoch", "tree_size", "root", "prev", "timestamp_ms")}
        fields.update(change)
        unsigned = EpochCheckpoint(**fields)  # type: ignore[arg-type]
        return EpochCheckpoint(**fields, sig=by.sign(unsigned.digest)).encode()  # type: ignore[arg-type]

    # Anyone can write to a ledger: checkpoints not signed by the author are ignored.
    ledger.append(ANCHOR_TAG, signed(ident(9), root=bytes(32)))
    ledger.append(ANCHOR_TAG, signed(ident(9), epoch=epoch + 50))
    for name in ("author", "p1"):
        assert audit_store(tmp_path / f"{name}.db", PW, ledger).ok
    # The author signed another checkpoint for that epoch (as a store restored from an older copy would).
    ledger.append(ANCHOR_TAG, signed(AUTHOR, root=bytes(32)))
    for name in ("author", "p1"):
        rep = audit_store(tmp_path / f"{name}.db", PW, ledger)
        assert not rep.ok and any("another signed checkpoint" in f.reason for f in rep.findings), rep.summary()
    ledger.close()


