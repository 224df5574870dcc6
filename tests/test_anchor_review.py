"""Attacks on anchoring (THREATS 7) found in review: each test failed before its fix.

Real SQLite stores and ledgers in a temporary directory, the in-memory transport, real PyNaCl."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

import msgpack
import pytest

from streams.anchor import ANCHOR_TAG, ChainHead, build_epoch
from streams.api import Author, Clock, MemoryHub, Subscriber
from streams.audit import audit_store
from streams.core import CoreConfig
from streams.errors import LedgerError, LocalProtocolError, RejectReason, VerificationError
from streams.events import Anchored, Rejected
from streams.ledger import AnchorStatus, EmbeddedLedger
from streams.ledger.anchoring import PendingAnchor, confirm, verify_anchored
from streams.policy import AllowList
from streams.wire import Kind, decode_frame
from tests.test_anchoring_integration import (
    AUTHOR,
    CFG,
    FAST,
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


# --- anchor proofs after a member's restart ---------------------------------------------------------------------


def _proofs_to(hub: MemoryHub, name: str) -> list[bytes]:
    return [d for src, dst, d in hub.tap
            if src == "author" and dst == name and decode_frame(d).kind is Kind.ANCHOR_PROOF]


async def _two_epochs_anchored(tmp_path: Path, hub: MemoryHub, ledger: EmbeddedLedger
                               ) -> tuple[Author, Subscriber, bytes, bytes]:
    """An author and member P1 (grant syncs never skipped); the author's chain anchored at seq 1, then at seq 2,
    both proofs applied by the member.  Returns the old (seq 1) ANCHOR_PROOF frame as a relay saw it."""
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST, ledger=ledger, anchor_config=CFG,
                                 config=CoreConfig(grant_sync_interval_ms=0))
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    col = Collect(s1)
    b1 = await s1.subscribe(timeout=5)
    for seq in (1, 2):
        await author.publish(b1, b"alert %d" % seq)
        await s1.next_message(timeout=5)
        await wait_for(lambda seq=seq: any(e.seq == seq for e in col.of(Anchored)), what=f"seq {seq} anchored")
    (old,) = [d for d in _proofs_to(hub, "p1") if decode_frame(d).head.seq == 1]
    return author, s1, b1, old


async def test_a_replayed_older_anchor_proof_after_a_restart_is_a_replay(tmp_path: Path) -> None:
    """SPEC 13.5: a proof below the head a member holds as anchored is a REPLAY.  The member holds it durably
    (``anchor_heads``), but after a restart its core started from 0: a relay replaying an old proof made it
    report ``Anchored`` for an old head again and moved its stored latest anchored head back."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub = MemoryHub()
    author, s1, b1, old = await _two_epochs_anchored(tmp_path, hub, ledger)
    await author.close()  # the author is away: only the relay speaks
    await s1.close()
    s1 = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                               ledger=ledger)
    col = Collect(s1)
    try:
        hub.inject("p1", old)
        await wait_for(lambda: bool(col.of(Rejected) or col.of(Anchored)), what="the replayed proof handled")
        assert col.of(Anchored) == []
        assert [(r.reason, r.seq) for r in col.of(Rejected)] == [(RejectReason.REPLAY, 1)]
        assert [(r.branch, r.publisher, r.seq) for r in s1.store.anchored_heads()] == [(b1, 0, 2)]
    finally:
        await s1.close()
        ledger.close()


async def test_the_latest_proof_sent_again_after_a_restart_is_no_event(tmp_path: Path) -> None:
    """SPEC 13.5: a proof for the head a member already holds as anchored is ignored (no event).  A member that
    restarts asks for a grant sync, and the author sends it the latest proofs again: they used to be reported
    as ``Anchored`` a second time, at every restart."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub = MemoryHub()
    author, s1, _b1, old = await _two_epochs_anchored(tmp_path, hub, ledger)
    await s1.close()
    sent = len(_proofs_to(hub, "p1"))
    s1 = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                               ledger=ledger)
    col = Collect(s1)
    try:
        await wait_for(lambda: len(_proofs_to(hub, "p1")) > sent, what="the latest proof sent again")
        hub.inject("p1", old)  # behind it in the member's queue of ledger checks: a marker that it was handled
        await wait_for(lambda: bool(col.of(Rejected)), what="the proofs handled")
        assert col.of(Anchored) == []
        assert [(r.reason, r.seq) for r in col.of(Rejected)] == [(RejectReason.REPLAY, 1)]
    finally:
        await s1.close()
        await author.close()
        ledger.close()


# --- a raw row in the shared embedded ledger -------------------------------------------------------------------


async def test_a_raw_ledger_row_of_another_type_does_not_stop_an_author(tmp_path: Path) -> None:
    """The embedded ledger is one SQLite file shared by the parties of a host, and its triggers refuse UPDATE and
    DELETE but not INSERT: any process that can write the file can add a row under the anchor tag whose ``data``
    is TEXT (or an INTEGER, which ``bytes()`` turned into that many zero bytes).  Listing the channel's
    checkpoints skips what does not decode -- but ``scan`` raised TypeError on such a row, so ``Author.open``
    with that ledger failed (for every author of the host, for good: the row cannot be deleted) and the audit
    crashed."""
    lpath = tmp_path / "ledger.db"
    ledger = EmbeddedLedger(lpath)
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    col = Collect(s1)
    b1 = await s1.subscribe(timeout=5)
    await author.publish(b1, b"alert")
    await wait_for(lambda: bool(col.of(Anchored)), what="anchored")
    await s1.close()
    await author.close()
    db = sqlite3.connect(lpath)
    (n,) = db.execute("SELECT max(position) FROM entries").fetchone()
    db.execute("INSERT INTO entries VALUES (?, ?, 'not bytes', 0, zeroblob(32), zeroblob(32))", (n + 1, ANCHOR_TAG))
    db.commit()
    db.close()
    author = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                               store_options=FAST, ledger=ledger, anchor_config=CFG)
    try:
        assert author.anchoring is not None and author.anchoring.refused is None
    finally:
        await author.close()
    rep = audit_store(tmp_path / "author.db", PW, ledger)
    assert rep.ok, rep.summary()
    # Read by its id, such a row is a damaged ledger entry (LedgerError, which every caller handles), not a
    # TypeError -- nor an allocation of as many bytes as an INTEGER says.
    db = sqlite3.connect(lpath)
    db.execute("INSERT INTO entries VALUES (?, ?, ?, 0, zeroblob(32), zeroblob(32))", (n + 2, ANCHOR_TAG, 1 << 40))
    db.commit()
    db.close()
    for anchor_id in (str(n + 1), str(n + 2)):
        with pytest.raises(LedgerError):
            ledger.read(anchor_id)
        with pytest.raises(LedgerError):
            ledger.status(anchor_id)
    ledger.close()


# --- replayed anchor proofs must not buy ledger reads -----------------------------------------------------------


class _CountingLedger(EmbeddedLedger):
    """The real embedded ledger, counting the reads the subscriber's ledger check makes (each one an HTTP round
    trip to a node with IOTA)."""

    reads = 0

    def read(self, anchor_id: str) -> tuple[bytes, bytes]:
        self.reads += 1
        return super().read(anchor_id)


async def test_replays_of_an_applied_anchor_proof_cost_no_ledger_read(tmp_path: Path) -> None:
    """THREATS 8 (bounded cost of hostile input): a relay that replays an anchor proof the member already applied
    made it queue a ledger check per copy (the queue to the check is unbounded, and the core's claim cap is
    drained at every commit) before finding it was a replay.  Such a proof is answered from the chain's anchor
    cursor at once: no event for the head it holds, REPLAY below it -- and no ledger read."""
    lpath = tmp_path / "ledger.db"
    a_ledger = EmbeddedLedger(lpath)
    s_ledger = _CountingLedger(lpath)
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, a_ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=s_ledger)
    col = Collect(s1)
    try:
        b1 = await s1.subscribe(timeout=5)
        for seq in (1, 2):
            await author.publish(b1, b"alert %d" % seq)
            await s1.next_message(timeout=5)
            await wait_for(lambda seq=seq: any(e.seq == seq for e in col.of(Anchored)), what=f"seq {seq} anchored")
        proofs = {decode_frame(d).head.seq: d for d in _proofs_to(hub, "p1")}
        before = s_ledger.reads
        for _ in range(50):
            hub.inject("p1", proofs[2])  # the head it holds as anchored
        hub.inject("p1", proofs[1])  # below it: a REPLAY, the marker that the 50 were handled
        await wait_for(lambda: bool(col.of(Rejected)), what="the replays handled")
        assert [(r.reason, r.seq) for r in col.of(Rejected)] == [(RejectReason.REPLAY, 1)]
        assert [e.seq for e in col.of(Anchored)] == [1, 2]
        assert s_ledger.reads == before
    finally:
        await s1.close()
        await author.close()
        a_ledger.close()
        s_ledger.close()


class _GatedLedger(_CountingLedger):
    """The real embedded ledger whose reads wait for the test to open the gate (an IOTA node answering slowly)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def read(self, anchor_id: str) -> tuple[bytes, bytes]:
        self.waiting.set()
        self.gate.wait(30)
        return super().read(anchor_id)


async def test_copies_of_a_proof_in_flight_cost_one_ledger_read(tmp_path: Path) -> None:
    """While the member's ledger check of a fresh proof is under way (a slow node), a relay replays that proof:
    every copy passed the core's checks (not applied yet) and was queued for a ledger read of its own, without
    bound.  A copy of a claim already waiting for, or under, its check adds nothing."""
    lpath = tmp_path / "ledger.db"
    a_ledger = EmbeddedLedger(lpath)
    s_ledger = _GatedLedger(lpath)
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, a_ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=s_ledger)
    col = Collect(s1)
    try:
        b1 = await s1.subscribe(timeout=5)
        await author.publish(b1, b"alert")
        await s1.next_message(timeout=5)
        await wait_for(s_ledger.waiting.is_set, what="the ledger check under way")
        (proof,) = _proofs_to(hub, "p1")
        (packet,) = [d for s, t, d in hub.tap if s == "author" and t == "p1" and decode_frame(d).kind is Kind.PACKET]
        for _ in range(50):
            hub.inject("p1", proof)
        hub.inject("p1", packet)  # a REPLAY of the message: the marker that the 50 copies went through the core
        await wait_for(lambda: bool(col.of(Rejected)), what="the copies handled by the core")
        s_ledger.gate.set()
        await wait_for(lambda: bool(col.of(Anchored)), what="the proof applied")
        await author.publish(b1, b"next")  # its proof, checked after whatever copies were queued
        await wait_for(lambda: any(e.seq == 2 for e in col.of(Anchored)), what="the next proof applied")
        assert [e.seq for e in col.of(Anchored)] == [1, 2]
        assert s_ledger.reads == 2  # one per proof, none per copy
    finally:
        s_ledger.gate.set()
        await s1.close()
        await author.close()
        a_ledger.close()
        s_ledger.close()


class _AskedLedger(EmbeddedLedger):
    """The real embedded ledger, counting the status questions per anchor id."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked: dict[str, int] = {}

    def status(self, anchor_id: str) -> AnchorStatus:
        self.asked[anchor_id] = self.asked.get(anchor_id, 0) + 1
        return super().status(anchor_id)


async def test_a_proof_its_ledger_does_not_know_does_not_hold_up_the_next(tmp_path: Path) -> None:
    """The member retries a proof whose anchor id its ledger does not know (UnknownAnchor: a node that lags, or
    pruned an old block, re-sent with the latest proofs of an idle chain).  Its retries held up every later proof
    of every chain, for good: the checks form one queue.  Retrying one proof must let the others through."""
    l1, l2 = tmp_path / "ledger.db", tmp_path / "member-ledger.db"
    a_ledger = EmbeddedLedger(l1)
    s_ledger = _AskedLedger(l2)  # knows nothing of epoch 0; given epoch 1's entry below
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, a_ledger)
    anch = author.anchoring
    assert anch is not None
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=s_ledger)
    col = Collect(s1)
    try:
        b1 = await s1.subscribe(timeout=5)
        await author.publish(b1, b"alert 1")
        await s1.next_message(timeout=5)
        await wait_for(lambda: s_ledger.asked.get("1", 0) >= 2, what="the unknown anchor retried")
        await author.publish(b1, b"alert 2")
        await s1.next_message(timeout=5)
        await wait_for(lambda: anch.ledger_writes >= 2 and not anch.pending, what="epoch 1 confirmed")
        db = sqlite3.connect(l2)
        db.execute("ATTACH ? AS a", (str(l1),))
        db.execute("INSERT INTO entries SELECT * FROM a.entries WHERE position = 2")
        db.commit()
        db.close()
        await wait_for(lambda: len(_proofs_to(hub, "p1")) >= 2, what="the second proof sent")
        asked = s_ledger.asked["1"]
        await wait_for(lambda: s_ledger.asked["1"] >= asked + 2, timeout=30, what="two more tries of the first")
        assert s_ledger.asked.get("2", 0) >= 1, s_ledger.asked
        await wait_for(lambda: any(e.seq == 2 for e in col.of(Anchored)), what="the second proof applied")
        assert [e.seq for e in col.of(Anchored)] == [2]
    finally:
        await s1.close()
        await author.close()
        a_ledger.close()
        s_ledger.close()


async def test_member_audit_catches_a_truncated_chain_behind_a_restored_flag(tmp_path: Path) -> None:
    """A member's latest anchored head is checked against its log unless the record says the chain was restored
    there (its log then starts after it).  That flag is a plain column: set on the record of a chain whose
    anchored tail was deleted (cursor set back), it hid the cut.  A restored chain holds nothing at or below
    the head it restarted at, so a log that does contradicts the flag."""
    lpath, b1 = await _channel_for_audit(tmp_path)
    with EmbeddedLedger(lpath) as ledger:
        assert audit_store(tmp_path / "p1.db", PW, ledger).ok
        db = _copy_store(tmp_path / "p1.db", tmp_path / "t.db")
        assert db.execute("SELECT seq FROM anchor_heads WHERE branch = ? AND publisher = 0", (b1,)).fetchone() == (6,)
        head3 = bytes(db.execute("SELECT hash FROM log WHERE branch = ? AND publisher = 0 AND seq = 3",
                                 (b1,)).fetchone()[0])
        db.execute("DELETE FROM log WHERE branch = ? AND publisher = 0 AND seq > 3", (b1,))
        db.execute("UPDATE chains SET next_seq = 4, head = ?, covered = 3 WHERE branch = ? AND publisher = 0",
                   (head3, b1))
        db.execute("UPDATE delivered SET seq = min(seq, 3) WHERE branch = ? AND publisher = 0", (b1,))
        db.execute("UPDATE anchor_heads SET restored = 1 WHERE branch = ? AND publisher = 0", (b1,))
        db.commit()
        db.close()
        rep = audit_store(tmp_path / "t.db", PW, ledger)
        assert not rep.ok, rep.summary()


# --- the bounded wait for a lagging ledger (anchor_wait) --------------------------------------------------------


async def _member_on(tmp_path: Path, s_ledger: EmbeddedLedger, anchor_wait: float, clock: Clock | None = None
                     ) -> tuple[Author, Subscriber, EmbeddedLedger, Collect]:
    """An author anchoring on its ledger (``ledger.db``) and member P1 checking the proofs on ``s_ledger`` with
    ``anchor_wait``; returns once the member has the author's first message (its proof follows)."""
    a_ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, a_ledger)
    s1 = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                 hub.subscriber_endpoint("p1"), store_options=FAST, ledger=s_ledger, clock=clock,
                                 anchor_wait=anchor_wait)
    col = Collect(s1)
    b1 = await s1.subscribe(timeout=5)
    await author.publish(b1, b"alert")
    await s1.next_message(timeout=5)
    return author, s1, a_ledger, col


async def _member_asking(tmp_path: Path, offset: list[int], anchor_wait: float
                         ) -> tuple[Author, Subscriber, EmbeddedLedger, _AskedLedger, Collect]:
    """The member on another ledger that knows none of the author's (a node that lags), its clock wall-clock time
    plus ``offset[0]`` ms; returns once the member asked about the proof."""
    s_ledger = _AskedLedger(tmp_path / "member-ledger.db")
    author, s1, a_ledger, col = await _member_on(tmp_path, s_ledger, anchor_wait,
                                                 clock=lambda: int(time.time() * 1000) + offset[0])
    await wait_for(lambda: s_ledger.asked.get("1", 0) >= 1, what="the member asked its ledger")
    return author, s1, a_ledger, s_ledger, col


async def test_a_wall_clock_jump_forward_does_not_cut_the_wait_short(tmp_path: Path) -> None:
    """The wait for a lagging ledger was measured on the party's clock (wall-clock time): a clock stepped forward
    (NTP, a VM resumed) made the member report NOT_ANCHORED at its next question, long before ``anchor_wait``."""
    offset = [0]
    author, s1, a_ledger, s_ledger, col = await _member_asking(tmp_path, offset, anchor_wait=60.0)
    try:
        offset[0] = 3_600_000  # one hour forward
        asked = s_ledger.asked["1"]
        await wait_for(lambda: s_ledger.asked["1"] >= asked + 2 or bool(col.of(Rejected)),
                       what="two more questions (or a verdict)")
        assert not col.of(Rejected), col.of(Rejected)
    finally:
        await s1.close()
        await author.close()
        a_ledger.close()
        s_ledger.close()


async def test_a_wall_clock_jump_backward_does_not_stretch_the_wait(tmp_path: Path) -> None:
    """The same clock stepped back by an hour made the member wait an hour longer than ``anchor_wait`` before its
    verdict (set back by a year: a year)."""
    offset = [0]
    author, s1, a_ledger, s_ledger, col = await _member_asking(tmp_path, offset, anchor_wait=1.0)
    try:
        offset[0] = -3_600_000  # one hour back
        await wait_for(lambda: bool(col.of(Rejected)), timeout=15, what="the verdict after the wait")
        assert [r.reason for r in col.of(Rejected)] == [RejectReason.NOT_ANCHORED]
    finally:
        await s1.close()
        await author.close()
        a_ledger.close()
        s_ledger.close()


class _FlakyLedger(_AskedLedger):
    """The member's ledger (knowing none of the author's writes), down while ``down`` is set (a node restarting):
    ``answers`` counts the questions it answered."""

    down = False
    answers = 0

    def status(self, anchor_id: str) -> AnchorStatus:
        if self.down:
            raise LedgerError("node down")
        self.answers += 1
        return super().status(anchor_id)


async def test_an_outage_of_the_members_ledger_does_not_use_up_the_wait(tmp_path: Path) -> None:
    """'An outage is no verdict': yet the wait for a lagging ledger ran on while the ledger was down, so a node
    that restarted (down for longer than ``anchor_wait``, then syncing: the lag this wait is for) got the head
    reported NOT_ANCHORED at its very first answer after the outage, without being asked again."""
    s_ledger = _FlakyLedger(tmp_path / "member-ledger.db")
    author, s1, a_ledger, col = await _member_on(tmp_path, s_ledger, anchor_wait=1.5)
    try:
        await wait_for(lambda: s_ledger.answers >= 1, what="the member asked its ledger")
        s_ledger.down = True
        await asyncio.sleep(2.5)  # longer than anchor_wait
        answers = s_ledger.answers
        s_ledger.down = False
        await wait_for(lambda: s_ledger.answers > answers or bool(col.of(Rejected)), timeout=15,
                       what="an answer after the outage (or a verdict)")
        assert not col.of(Rejected), col.of(Rejected)
        await wait_for(lambda: bool(col.of(Rejected)), timeout=20, what="the verdict once the wait is used up")
        assert [r.reason for r in col.of(Rejected)] == [RejectReason.NOT_ANCHORED]
        assert s_ledger.answers >= answers + 2
    finally:
        await s1.close()
        await author.close()
        a_ledger.close()
        s_ledger.close()


class _UnconfirmedLedger(EmbeddedLedger):
    """The author's embedded ledger seen through a node that holds every write but confirms none (one that has
    not seen the milestones)."""

    def status(self, anchor_id: str) -> AnchorStatus:
        super().status(anchor_id)
        return AnchorStatus(False, None, None)


async def test_the_verdict_on_a_checkpoint_never_confirmed_says_what_happened(tmp_path: Path) -> None:
    """The verdict after the wait for a checkpoint our ledger holds but never confirmed read 'not on the ledger:
    ... the checkpoint is on the ledger but not confirmed: not anchored yet' -- it is on the ledger, and after
    the wait it is a verdict, not a 'yet'."""
    s_ledger = _UnconfirmedLedger(tmp_path / "ledger.db")  # the author's ledger, through a node that confirms none
    author, s1, a_ledger, col = await _member_on(tmp_path, s_ledger, anchor_wait=0.5)
    try:
        await wait_for(lambda: bool(col.of(Rejected)), what="the verdict after the wait")
        (r,) = col.of(Rejected)
        assert r.reason is RejectReason.NOT_ANCHORED
        assert "not confirmed" in r.detail and "s of asking" in r.detail, r.detail
        assert "not on the ledger" not in r.detail and "yet" not in r.detail, r.detail
    finally:
        await s1.close()
        await author.close()
        a_ledger.close()
        s_ledger.close()


async def test_a_bad_anchor_wait_closes_the_transport_as_any_failed_create_or_open_does(tmp_path: Path) -> None:
    """The transport passed to ``Subscriber.create/open`` is the subscriber's from then on, and a failed
    create/open closes it (an abandoned ZeroMQ endpoint keeps its socket).  An ``anchor_wait`` refused up front
    raised before that cleanup: the transport stayed open.  Nothing is written either way."""
    hub = MemoryHub()
    t = hub.subscriber_endpoint("p1")
    with pytest.raises(LocalProtocolError, match="anchor_wait"):
        await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, b"\x01" * 32, PW, t, store_options=FAST,
                                anchor_wait=0)
    assert t.closed
    assert list(tmp_path.iterdir()) == []
    s1 = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, b"\x01" * 32, PW,
                                 hub.subscriber_endpoint("p1"), store_options=FAST)
    await s1.close()
    t = hub.subscriber_endpoint("p1")
    with pytest.raises(LocalProtocolError, match="anchor_wait"):
        await Subscriber.open(tmp_path / "p1.db", PW, t, store_options=FAST, anchor_wait=-1.0)
    assert t.closed
