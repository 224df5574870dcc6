"""Anchoring wired into the protocol: proofs to members, ledger outages, crashes, forks, state loss, audit.

Real SQLite stores and ledgers in a temporary directory, the in-memory transport, real PyNaCl; the crash test
kills an author process with SIGKILL."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from streams import _crypto
from streams._state import BranchState
from streams.anchor import ANCHOR_TAG, EpochCheckpoint, ForkEvidence, build_epoch, check_fork
from streams.api import AnchorConfig, Author, MemoryHub, StoreOptions, Subscriber
from streams.audit import audit_store
from streams.cli import main as cli_main
from streams.core import CoreConfig
from streams.errors import (
    ClosedResourceError,
    LedgerError,
    LocalProtocolError,
    RejectReason,
    StreamsTimeoutError,
    VerificationError,
)
from streams.events import (
    Anchored,
    EpochAnchored,
    Event,
    FetchRequested,
    ForkDetected,
    GapDetected,
    LedgerStatus,
    MessageReceived,
    Rejected,
)
from streams.identity import Identity
from streams.ledger import EmbeddedLedger
from streams.policy import AllowList
from streams.store import Store
from streams.wire import Kind, Packet, Permission, decode_frame, encode_frame, encode_head
from tests.corenet import Net, ident

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
CFG = AnchorConfig(epoch_interval_ms=40, retry_min_ms=20, retry_max_ms=100, confirm_poll_ms=20)
AUTHOR, P1, P2, AUD = ident(1), ident(2), ident(3), ident(5)
ROOT = Path(__file__).resolve().parent.parent


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Collect:
    """Everything a party reported, kept across polls."""

    def __init__(self, party: Author | Subscriber) -> None:
        self.party, self.events = party, []  # type: ignore[var-annotated]

    def poll(self) -> list[Event]:
        self.events.extend(self.party.pending_events())
        return self.events

    def of(self, cls: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.poll() if isinstance(e, cls)]


async def make_author(tmp: Path, hub: MemoryHub, ledger: EmbeddedLedger | None,
                      policy: AllowList | None = None) -> Author:
    return await Author.create(tmp / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                               policy or AllowList.of([P1.did, P2.did]), store_options=FAST, ledger=ledger,
                               anchor_config=CFG)


async def make_sub(path: Path, hub: MemoryHub, who: Identity, name: str, author: Author,
                   ledger: EmbeddedLedger | None = None) -> Subscriber:
    return await Subscriber.create(path, who, AUTHOR.did, author.channel, PW, hub.subscriber_endpoint(name),
                                   store_options=FAST, ledger=ledger)


def ledger_rows(path: Path) -> list[tuple[bytes, bytes]]:
    db = sqlite3.connect(path)
    try:
        return [(bytes(t), bytes(d)) for t, d in db.execute("SELECT tag, data FROM entries ORDER BY position")]
    finally:
        db.close()


# --- core level ----------------------------------------------------------------------------------------------


def test_anchor_proofs_between_cores_verify_and_attacks_are_rejected() -> None:
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    b0, b1 = net.author.branch_of(ident(10).did), net.author.branch_of(ident(11).did)
    assert b0 is not None and b1 is not None
    for i in range(3):
        net.author.publish(b0, b"alert %d" % i, net.now)
    net.pump_author()
    heads = net.author.anchor_heads([(b0, 0), (b1, 0), (b0, 1)])
    assert [(h.branch, h.publisher, h.seq) for h, _ in heads] == [(b0, 0, 3)]  # only chains that have a message
    head, key_epoch = heads[0]
    epoch = build_epoch(net.author.channel, [head], None, net.now, AUTHOR.sign)
    # The ledger payload names no branch and reveals no head (THREATS 1).
    assert b0 not in epoch.payload and head.hash not in epoch.payload  # (a 1-leaf root is the blinded leaf)

    def proof_frame(seq: int, h: bytes, index: int = 0) -> bytes:
        p = epoch.proofs[(b0, 0)]
        net.author.anchor_proof(b0, 0, seq, h, key_epoch, epoch.checkpoint, "7",
                                type(p)(p.epoch, index, p.tree_size, p.path))
        (out,) = net.author.data_to_send()
        return out.data

    good = proof_frame(3, head.hash)
    assert net.to_sub("s1", good) == []  # someone else's branch: ignored, no state
    assert net.to_sub("s0", good) == [Anchored(b0, 0, 3, 0, "7", False, False)]
    # The same proof again (re-sent with a grant sync, or replayed) changes nothing and is no event.
    assert net.to_sub("s0", good) == []
    # A head the tree does not contain, signed by the author all the same: not anchored.
    (bad,) = net.to_sub("s0", proof_frame(3, bytes(32)))
    assert isinstance(bad, Rejected) and bad.reason is RejectReason.NOT_ANCHORED
    # A flipped bit anywhere breaks the signature.
    raw = bytearray(good)
    raw[-70] ^= 1
    (forged,) = net.to_sub("s0", bytes(raw))
    assert isinstance(forged, Rejected) and forged.reason in (RejectReason.BAD_SIGNATURE, RejectReason.MALFORMED)


def test_an_anchored_head_ahead_of_the_member_is_a_gap_and_is_fetched() -> None:
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    net.author.publish(b0, b"one", net.now)
    net.pump_author()
    for i in range(3):  # lost on the way to s0
        net.author.publish(b0, b"lost %d" % i, net.now)
    net.author.take_changes()
    net.author.data_to_send()
    (head, ke), = net.author.anchor_heads([(b0, 0)])
    epoch = build_epoch(net.author.channel, [head], None, net.now, AUTHOR.sign)
    net.author.anchor_proof(b0, 0, head.seq, head.hash, ke, epoch.checkpoint, "1", epoch.proofs[(b0, 0)])
    (out,) = net.author.data_to_send()
    evs = net.to_sub("s0", out.data)
    assert GapDetected(b0, 0, 2, 5) in evs
    assert not [e for e in evs if isinstance(e, Anchored)]  # not before we hold the message it names
    assert any(k for s, d in net.wire if s == "s0" and decode_frame(d).kind is Kind.FETCH for k in [1])


def test_an_anchored_head_ahead_of_a_member_catching_up_is_no_gap() -> None:
    """After a reconnect the member's catch-up FETCH is out (from its cursor): an anchor proof that arrives
    before the publisher's answer names messages that FETCH is bringing, not a gap (as a HEAD then does not,
    SPEC 10.1 step 7).  It is applied once they are in."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    sub = net.subs["s0"]
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    net.author.publish(b0, b"one", net.now)
    net.pump_author()
    for i in range(3):  # published while s0 was away
        net.author.publish(b0, b"while away %d" % i, net.now)
    net.author.take_changes()
    missed = [o.data for o in net.author.data_to_send()]
    sub.catch_up(net.now)  # s0 is back: its catch-up FETCH goes out
    sub.take_changes()
    assert [decode_frame(o.data).kind for o in sub.data_to_send()].count(Kind.FETCH) >= 1
    (head, ke), = net.author.anchor_heads([(b0, 0)])
    epoch = build_epoch(net.author.channel, [head], None, net.now, AUTHOR.sign)
    net.author.anchor_proof(b0, 0, head.seq, head.hash, ke, epoch.checkpoint, "1", epoch.proofs[(b0, 0)])
    (proof,) = net.author.data_to_send()
    evs = net.to_sub("s0", proof.data)  # before the FETCH's answer
    assert not [e for e in evs if isinstance(e, (GapDetected, Anchored))]
    evs = [e for d in missed for e in net.to_sub("s0", d)]  # the answer
    assert [e.payload for e in evs if isinstance(e, MessageReceived)] == [b"while away %d" % i for i in range(3)]
    assert not [e for e in evs if isinstance(e, GapDetected)]
    assert [(e.seq, e.restored) for e in evs if isinstance(e, Anchored)] == [(4, False)]


def _restore_proof(net: Net, branch: bytes) -> bytes:
    """The author's restore proof of its chain's current head in ``branch`` (as ``send_restore`` sends it)."""
    (head, ke), = net.author.anchor_heads([(branch, 0)])
    epoch = build_epoch(net.author.channel, [head], None, net.now, AUTHOR.sign)
    net.author.anchor_proof(branch, 0, head.seq, head.hash, ke, epoch.checkpoint, "1", epoch.proofs[(branch, 0)],
                            restore=True)
    (out,) = net.author.data_to_send()
    return out.data


def test_a_restore_proof_skips_nothing_for_a_member_that_kept_its_state() -> None:
    """SPEC 13.5: a restore proof moves a cursor only on a branch the current handshake's GRANT created (the
    member held nothing of it: it lost its state).  A member whose store is intact but that has not received the
    author's messages yet (it was away, or they were dropped) and subscribes again (a renewed credential:
    ``streams subscribe`` again) gets the re-sent grant, which it holds, and a restore proof: that is a head ahead
    of its cursor, as any proof -- a gap, fetched -- not a reason to skip messages 1..3."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    for i in range(3):  # published while s0 is away
        net.author.publish(b0, b"while away %d" % i, net.now)
    net.author.take_changes()
    log = {i + 1: o.data for i, o in enumerate(net.author.data_to_send())}  # the author's retained log
    start, mark = len(net.events["s0"]), len(net.events["author"])
    net.subscribe("s0")  # re-subscription of a member that kept its store (same branch, same grant)
    net.to_sub("s0", _restore_proof(net, b0))
    for f in [e for e in net.events["author"][mark:] if isinstance(e, FetchRequested)]:  # the driver's part
        for seq in range(f.from_seq, f.to_seq + 1):
            net.to_sub("s0", log[seq])
    ev = net.events["s0"][start:]
    assert GapDetected(b0, 0, 1, 4) in ev
    assert [e.seq for e in ev if isinstance(e, MessageReceived)] == [1, 2, 3]
    assert [(e.seq, e.restored) for e in ev if isinstance(e, Anchored)] == [(3, False)]


def test_a_member_that_lost_its_state_restarts_at_the_restore_proof_of_its_handshake_only() -> None:
    """A member that lost its state subscribes again: the re-sent grant creates its branch, and the restore proof
    that follows starts its cursor at the anchored head (the old messages replayed to it are REPLAY).  Once it
    holds the branch, a later handshake's restore proof is a head like any other: fetched up to, not jumped to."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    for i in range(3):
        net.author.publish(b0, b"before %d" % i, net.now)
    net.author.take_changes()
    old = [o.data for o in net.author.data_to_send()]
    for d in old:
        net.to_sub("s0", d)
    net.add_sub("s0", ident(10))  # the member loses everything but its identity
    net.subscribe("s0")
    assert net.to_sub("s0", _restore_proof(net, b0)) == [Anchored(b0, 0, 3, 0, "1", False, True)]
    assert {r.reason for d in old for r in net.to_sub("s0", d) if isinstance(r, Rejected)} == {RejectReason.REPLAY}
    # It keeps its state now; more is published while it is away, and it subscribes again.
    net.author.publish(b0, b"while away", net.now)
    net.author.take_changes()
    net.author.data_to_send()
    start = len(net.events["s0"])
    net.subscribe("s0")
    net.to_sub("s0", _restore_proof(net, b0))
    ev = net.events["s0"][start:]
    assert GapDetected(b0, 0, 4, 5) in ev and not [e for e in ev if isinstance(e, Anchored)]
    assert net.subs["s0"].chain_head(b0, 0)[0] == 4


# --- forks -----------------------------------------------------------------------------------------------------


async def test_two_signed_messages_at_one_position_are_a_fork(tmp_path: Path) -> None:
    hub, author, s1, b1 = await _three_alerts_read(tmp_path)
    sent = [d for src, dst, d in hub.tap if src == "author" and dst == "p1" and decode_frame(d).kind is Kind.PACKET]
    col = Collect(s1)
    # 1. An identical duplicate: the cheap REPLAY path, no fork.
    hub.inject("p1", sent[1])
    await wait_for(lambda: bool(col.of(Rejected)), what="replay rejection")
    assert col.of(Rejected)[0].reason is RejectReason.REPLAY and col.of(Rejected)[0].frame is None
    # 2. A different message at seq 2 that the author really signed (it equivocates): a fork.
    first = decode_frame(sent[0])
    key = author._core._branches[b1].keys[(0, 0)]
    head = Packet(author.channel, b1, 0, 2, first.hash, 0, os.urandom(24))
    head_raw = encode_head(head)
    body = _crypto.aead_encrypt(key, head.nonce, bytes((1, Kind.PACKET)) + head_raw, b"another story")
    other = encode_frame(head, body, AUTHOR.sign)
    # 3. The same, but not signed by the author: nothing provable, stays a replay.
    forged = encode_frame(head, body, P2.sign)
    hub.inject("p1", forged.raw)
    hub.inject("p1", other.raw)
    await wait_for(lambda: bool(col.of(ForkDetected)), what="fork")
    (fork,) = col.of(ForkDetected)
    assert (fork.branch, fork.publisher, fork.seq) == (b1, 0, 2)
    assert check_fork(fork.evidence, AUTHOR.sign_public) == (author.channel, b1, 0, 2)
    assert {fork.evidence.frame_a, fork.evidence.frame_b} == {sent[1], other.raw}
    assert [r.reason for r in col.of(Rejected)] == [RejectReason.REPLAY, RejectReason.REPLAY, RejectReason.FORK]
    # Kept as evidence across restarts, reported once per position.
    hub.inject("p1", other.raw)
    await asyncio.sleep(0.1)
    assert len(col.of(ForkDetected)) == 1
    assert len(s1.forks()) == 1
    # The accepted history is unchanged: the fork did not replace message 2.
    assert s1.store.log_entry(b1, 0, 2) == (decode_frame(sent[1]).hash, sent[1])
    await s1.close()
    await author.close()


async def _three_alerts_read(tmp_path: Path) -> tuple[MemoryHub, Author, Subscriber, bytes]:
    """The author and P1 over the in-memory hub; three alerts on P1's branch, read by P1.  Returns (hub, author,
    P1, its branch)."""
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, None)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    for i in range(3):
        await author.publish(b1, b"alert %d" % i)
    for _ in range(3):
        await s1.next_message(timeout=5)
    return hub, author, s1, b1


async def test_a_signed_head_naming_another_message_is_kept_as_fork_evidence(tmp_path: Path) -> None:
    """The author's signed HEAD naming another hash at a position the member accepted (SPEC 13.6): reported as
    ForkDetected, the HEAD and the logged message as evidence that anyone holding the author's key can check."""
    from streams.wire import HeadNotice

    hub, author, s1, b1 = await _three_alerts_read(tmp_path)
    col = Collect(s1)
    lie = encode_frame(HeadNotice(author.channel, b1, 0, 2, b"\x07" * 32, 0), b"", AUTHOR.sign).raw
    hub.inject("p1", lie)
    await wait_for(lambda: bool(col.of(ForkDetected)), what="fork")
    (fork,) = col.of(ForkDetected)
    assert (fork.branch, fork.publisher, fork.seq) == (b1, 0, 2)
    assert check_fork(fork.evidence, AUTHOR.sign_public) == (author.channel, b1, 0, 2)
    logged = s1.store.log_entry(b1, 0, 2)
    assert logged is not None and {fork.evidence.frame_a, fork.evidence.frame_b} == {logged[1], lie}
    await s1.close()
    await author.close()


async def test_a_signed_revoke_naming_another_final_message_is_kept_as_fork_evidence(tmp_path: Path) -> None:
    """The author's signed REVOKE whose final head is the member's head but names another message (SPEC 8.8): the
    author's word against its own chain, like a HEAD's -- refused FORK, closing nothing, and reported as
    ForkDetected with the REVOKE and the logged message as evidence anyone holding the author's key can check;
    once per position, however often the author's grant syncs repeat it."""
    from streams.wire import Revoke

    hub, author, s1, b1 = await _three_alerts_read(tmp_path)
    col = Collect(s1)
    epoch, _, _, _ = s1._core.branch_info(b1)
    grant_hash = s1._core._branches[b1].grant_hash
    lie = encode_frame(Revoke(author.channel, b1, epoch, grant_hash, 3, b"\x07" * 32), b"", AUTHOR.sign).raw
    hub.inject("p1", lie)
    await wait_for(lambda: bool(col.of(ForkDetected)), what="fork")
    (fork,) = col.of(ForkDetected)
    assert (fork.branch, fork.publisher, fork.seq) == (b1, 0, 3)
    assert check_fork(fork.evidence, AUTHOR.sign_public) == (author.channel, b1, 0, 3)
    logged = s1.store.log_entry(b1, 0, 3)
    assert logged is not None and {fork.evidence.frame_a, fork.evidence.frame_b} == {logged[1], lie}
    assert len(s1.forks()) == 1 and s1._core.branch_state(b1) is BranchState.OPEN
    hub.inject("p1", lie)
    await wait_for(lambda: len(col.of(Rejected)) == 2, what="second refusal")
    assert len(col.of(ForkDetected)) == 1
    # A REVOKE of an empty chain (last_seq 0) claims no message: never evidence.
    with pytest.raises(VerificationError):
        check_fork(ForkEvidence(encode_frame(Revoke(author.channel, b1, epoch, grant_hash, 0, b"\x07" * 32), b"",
                                             AUTHOR.sign).raw, logged[1]), AUTHOR.sign_public)
    await s1.close()
    await author.close()


async def test_two_signed_messages_at_a_held_position_are_a_fork(tmp_path: Path) -> None:
    """The same fork, while the first message waits in the hold buffer (a gap before it): the second is refused
    FORK, and the driver checks and keeps both frames as evidence (``ForkDetected``, ``forks()``), once."""
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, None)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    await author.publish(b1, b"alert 0")
    await s1.next_message(timeout=5)
    key = author._core._branches[b1].keys[(0, 0)]
    frames = []
    for text in (b"one story", b"another story"):  # the author signs two messages at seq 5 (4 is missing)
        head = Packet(author.channel, b1, 0, 5, os.urandom(32), 0, os.urandom(24))
        body = _crypto.aead_encrypt(key, head.nonce, bytes((1, Kind.PACKET)) + encode_head(head), text)
        frames.append(encode_frame(head, body, AUTHOR.sign).raw)
    col = Collect(s1)
    for raw in (*frames, frames[1]):
        hub.inject("p1", raw)
    await wait_for(lambda: len(col.of(Rejected)) >= 2, what="fork rejections")
    (fork,) = col.of(ForkDetected)
    assert (fork.branch, fork.publisher, fork.seq) == (b1, 0, 5)
    assert {fork.evidence.frame_a, fork.evidence.frame_b} == set(frames)
    assert check_fork(fork.evidence, AUTHOR.sign_public) == (author.channel, b1, 0, 5)
    assert [r.reason for r in col.of(Rejected)][:2] == [RejectReason.FORK, RejectReason.FORK]
    assert all(r.frame is None and r.held is None for r in col.of(Rejected))
    assert len(s1.forks()) == 1
    await s1.close()
    await author.close()


# --- outages and crashes -----------------------------------------------------------------------------------------


async def test_ledger_outage_queues_durably_and_resumes_without_losing_an_anchor(tmp_path: Path) -> None:
    lpath = tmp_path / "ledger.db"
    a_ledger = EmbeddedLedger(lpath, busy_timeout_ms=30)
    s_ledger = EmbeddedLedger(lpath)
    blocker = sqlite3.connect(lpath, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the ledger is unavailable for writing
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, a_ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=s_ledger)
    col = Collect(s1)
    try:
        b1 = await s1.subscribe(timeout=5)
        for i in range(20):
            await author.publish(b1, b"alert %d" % i)
        await s1.publish(b1, b"report")
        # Publishing never waits for the ledger: all of it completed while the ledger is still locked.
        assert blocker.in_transaction
        for _ in range(20):
            await s1.next_message(timeout=5)
        svc = author.anchoring
        assert svc is not None
        await wait_for(lambda: svc.pending >= 1 and svc.last_error is not None, what="queued epoch")
        await asyncio.sleep(0.3)  # several retries while down
        # The author's application hears of the outage once (not once per retry), and of no epoch yet.
        down = author.pending_events()
        assert [(e.available, e.queued >= 1) for e in down if isinstance(e, LedgerStatus)] == [(False, True)]
        assert "LedgerError" in next(e for e in down if isinstance(e, LedgerStatus)).error
        assert not [e for e in down if isinstance(e, EpochAnchored)]
        # Nothing says "anchored" before the ledger write is confirmed (THREATS 7).
        assert not col.of(Anchored)
        assert not any(decode_frame(d).kind is Kind.ANCHOR_PROOF for _s, _d, d in hub.tap)
        assert author.store.anchored_heads() == []
        queued = author.store.anchors(pending_only=True)
        assert queued and all(r.state == "built" for r in queued)
        assert len(queued) <= CFG.max_unwritten  # moved chains accumulate instead of one epoch per interval
        blocker.execute("ROLLBACK")  # the ledger is back
        await wait_for(lambda: {(e.publisher, e.seq) for e in col.of(Anchored)} >= {(0, 20), (1, 1)},
                       what="anchored heads after recovery")
        await wait_for(lambda: svc.pending == 0, what="queue drained")
        assert all(e.ledger_verified for e in col.of(Anchored))
        rows = author.store.anchors()
        assert all(r.state == "confirmed" for r in rows)
        up = author.pending_events()  # then that it is back, and each epoch as the ledger confirmed it
        assert [e.available for e in up if isinstance(e, LedgerStatus)] == [True]
        assert [(e.epoch, e.anchor_id, e.heads) for e in up if isinstance(e, EpochAnchored)] == [
            (r.epoch, r.anchor_id, len(r.heads)) for r in rows]
        on_ledger = ledger_rows(lpath)
        assert len(on_ledger) == len(rows) == svc.ledger_writes  # one write per epoch
        prev = None
        for (tag, data), row in zip(on_ledger, rows, strict=True):
            cp = EpochCheckpoint.decode(data)
            assert tag == ANCHOR_TAG and data == row.checkpoint
            cp.verify_follows(prev)  # checkpoints chain
            prev = cp
        assert a_ledger.verify().ok
    finally:
        blocker.close()
        await s1.close()
        await author.close()
        a_ledger.close()
        s_ledger.close()


class _Outage:
    """The real embedded ledger behind a switch: while ``down``, every call raises :class:`LedgerError`, as a
    ledger that does not answer does (an embedded ledger's reads cannot be made to fail for real: WAL readers
    are never blocked)."""

    def __init__(self, inner: EmbeddedLedger) -> None:
        self.inner, self.down = inner, True

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if not callable(attr) or name == "close":
            return attr

        def call(*args: object, **kwargs: object) -> object:
            if self.down:
                raise LedgerError("ledger down (the test's switch)")
            return attr(*args, **kwargs)

        return call


async def test_a_ledger_down_at_start_with_nothing_to_anchor_is_reported_back_when_it_answers(
        tmp_path: Path) -> None:
    """The first look at the ledger failing was reported (`LedgerStatus(available=False)`), but its recovery
    was not when no epoch was queued yet: the application heard 'unavailable' and nothing after, and a later
    outage went unreported too (``last_error`` stayed set)."""
    ledger = _Outage(EmbeddedLedger(tmp_path / "ledger.db"))
    author = await make_author(tmp_path, MemoryHub(), ledger)  # type: ignore[arg-type]
    seen: list[Event] = []

    def status() -> list[bool]:
        seen.extend(author.pending_events())
        return [e.available for e in seen if isinstance(e, LedgerStatus)]

    try:
        await wait_for(lambda: status() == [False], what="the outage reported")
        ledger.down = False
        await wait_for(lambda: status() == [False, True], what="the recovery reported")
        svc = author.anchoring
        assert svc is not None and svc.last_error is None and svc.pending == 0
        b = await author.open_branch(P1.did)
        ledger.down = True
        await author.publish(b, b"an alert while the ledger is down again")
        await wait_for(lambda: status() == [False, True, False], what="the second outage reported")
    finally:
        await author.close()
        ledger.inner.close()


CRASHER = textwrap.dedent("""
    import asyncio, sys
    from streams.api import AnchorConfig, Author, MemoryHub, StoreOptions
    from streams.identity import Identity
    from streams.ledger import EmbeddedLedger
    from streams.policy import AllowList

    async def main() -> None:
        me, p1 = Identity.from_seed(bytes([1]) * 32), Identity.from_seed(bytes([2]) * 32)
        ledger = EmbeddedLedger(sys.argv[2], busy_timeout_ms=30)
        cfg = AnchorConfig(epoch_interval_ms=30, retry_min_ms=20, retry_max_ms=50)
        a = await Author.create(sys.argv[1], me, "fraud-monitor", "pw", MemoryHub().author_endpoint(),
                                AllowList.of([p1.did]), store_options=StoreOptions(False, 1, 8192), ledger=ledger,
                                anchor_config=cfg)
        b = await a.open_branch(p1.did)
        for i in range(7):
            await a.publish(b, b"alert %d" % i)
        while a.anchoring.pending < 1 or a.anchoring.last_error is None:
            await asyncio.sleep(0.01)
        print(b.hex(), flush=True)
        await asyncio.sleep(120)

    asyncio.run(main())
""")


async def test_kill_9_during_an_outage_loses_no_anchor(tmp_path: Path) -> None:
    lpath, spath = tmp_path / "ledger.db", tmp_path / "author.db"
    EmbeddedLedger(lpath).close()
    blocker = sqlite3.connect(lpath, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    proc = subprocess.Popen([sys.executable, str(script), str(spath), str(lpath)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        branch = bytes.fromhex(line.strip())
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    blocker.execute("ROLLBACK")
    blocker.close()
    assert ledger_rows(lpath) == []  # nothing reached the ledger before the crash
    st = Store.open(spath, "pw", durable=False)
    assert st.anchors(pending_only=True)  # ... but the epoch was queued on disk
    st.close()
    ledger = EmbeddedLedger(lpath)
    author = await Author.open(spath, "pw", MemoryHub().author_endpoint(), AllowList.of([P1.did]),
                               store_options=FAST, ledger=ledger, anchor_config=CFG)
    try:
        svc = author.anchoring
        assert svc is not None
        await wait_for(lambda: svc.pending == 0 and (h := svc.anchored_head(branch, 0)) is not None and h.seq == 7,
                       what="resumed anchoring")
        rows = author.store.anchors()
        assert rows[0].epoch == 0 and all(r.state == "confirmed" for r in rows)
        cps = [EpochCheckpoint.decode(d) for _t, d in ledger_rows(lpath)]
        assert cps[0].encode() == rows[0].checkpoint  # the very epoch queued before the crash
        for a, b in itertools.pairwise(cps):
            b.verify_follows(a)  # chained across the restart
    finally:
        await author.close()
        ledger.close()


# --- state loss ---------------------------------------------------------------------------------------------------


async def test_a_member_that_lost_its_state_restarts_at_the_anchored_head(tmp_path: Path) -> None:
    lpath = tmp_path / "ledger.db"
    ledger = EmbeddedLedger(lpath)
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    b1 = await s1.subscribe(timeout=5)
    for i in range(5):
        await author.publish(b1, b"alert %d" % i)
    await s1.publish(b1, b"report 1")
    await s1.publish(b1, b"report 2")
    for _ in range(5):
        await s1.next_message(timeout=5)
    col = Collect(s1)
    await wait_for(lambda: {(e.publisher, e.seq) for e in col.of(Anchored)} >= {(0, 5), (1, 2)}, what="anchored")
    old = [d for src, dst, d in hub.tap if src == "author" and dst == "p1" and decode_frame(d).kind is Kind.PACKET]
    assert len(old) == 5
    await s1.close()
    os.remove(tmp_path / "p1.db")  # the member loses everything but its identity
    fresh = await make_sub(tmp_path / "p1-new.db", hub, P1, "p1", author, ledger=ledger)
    col = Collect(fresh)
    try:
        assert await fresh.subscribe(timeout=5) == b1
        await wait_for(lambda: {(e.publisher, e.seq) for e in col.of(Anchored) if e.restored} == {(0, 5), (1, 2)},
                       what="restored heads")
        assert all(e.ledger_verified for e in col.of(Anchored))
        for frame in old:  # an attacker replays the old messages to the amnesiac member
            hub.inject("p1", frame)
        await wait_for(lambda: len([e for e in col.of(Rejected) if e.reason is RejectReason.REPLAY]) >= 5,
                       what="replays rejected")
        with pytest.raises(Exception, match="no message"):
            await fresh.next_message(timeout=0.2)
        # New messages after the anchored head are accepted; its own chain continues without a fork.
        await author.publish(b1, b"alert 6")
        m = await fresh.next_message(timeout=5)
        assert (m.seq, m.payload) == (6, b"alert 6")
        assert await fresh.publish(b1, b"report 3") == 3
        got = await author.next_message(timeout=5)
        while got.payload != b"report 3":
            got = await author.next_message(timeout=5)
        assert got.seq == 3 and author.forks() == []
        assert not [e for e in col.of(MessageReceived)]
    finally:
        await fresh.close()
        await author.close()
        ledger.close()


async def test_a_restored_member_store_still_audits_after_later_epochs(tmp_path: Path) -> None:
    """Where a restored chain starts outlives the restore proof's row in anchor_heads (the next epoch's proof
    replaces it): the audit of the member's new store passes before *and* after later epochs, and that start
    is itself checked (a forged or deleted record fails the audit)."""
    lpath = tmp_path / "ledger.db"
    ledger = EmbeddedLedger(lpath)
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    b1 = await s1.subscribe(timeout=5)
    for i in range(5):
        await author.publish(b1, b"alert %d" % i)
    await s1.publish(b1, b"report 1")
    await s1.publish(b1, b"report 2")
    col = Collect(s1)
    await wait_for(lambda: {(e.publisher, e.seq) for e in col.of(Anchored)} >= {(0, 5), (1, 2)}, what="anchored")
    await s1.close()
    os.remove(tmp_path / "p1.db")
    new = tmp_path / "p1-new.db"
    fresh = await make_sub(new, hub, P1, "p1", author, ledger=ledger)
    col = Collect(fresh)
    try:
        assert await fresh.subscribe(timeout=5) == b1
        await wait_for(lambda: {(e.publisher, e.seq) for e in col.of(Anchored) if e.restored} == {(0, 5), (1, 2)},
                       what="restored heads")
        with EmbeddedLedger(lpath) as led:
            rep = audit_store(new, PW, led)  # right after the restore: this always passed
        assert rep.ok, rep.summary()
        for i in range(3):
            await author.publish(b1, b"alert %d" % (i + 6))
            await fresh.next_message(timeout=5)
        assert await fresh.publish(b1, b"report 3") == 3
        await wait_for(lambda: {(e.publisher, e.seq) for e in col.of(Anchored) if not e.restored} >= {(0, 8), (1, 3)},
                       what="later epochs")
    finally:
        await fresh.close()
        await author.close()
        ledger.close()
    db = sqlite3.connect(new)
    assert db.execute("SELECT count(*) FROM anchor_heads WHERE restored = 1").fetchone()[0] == 0  # replaced
    db.close()
    with EmbeddedLedger(lpath) as led:
        rep = audit_store(new, PW, led)
        assert rep.ok, rep.summary()
        assert rep.messages == 4 and rep.anchored_heads == 4  # 2 latest heads, 2 restore starts

        def tampered(*edits: tuple[str, tuple[object, ...]]) -> list[str]:
            path = tmp_path / f"t{len(os.listdir(tmp_path))}.db"
            src, dst = sqlite3.connect(new), sqlite3.connect(path)
            src.backup(dst)
            src.close()
            for sql, args in edits:
                dst.execute(sql, args)
            dst.commit()
            dst.close()
            r = audit_store(path, PW, led)
            assert not r.ok
            return [f.reason for f in r.findings if f.severity == "error"]

        # Without the record of where it starts, the log looks truncated at its start.
        found = tampered(("DELETE FROM anchor_restores", ()))
        assert any("missing" in r for r in found), found
        # A forged start hiding a deleted message links up but does not verify against the checkpoint.
        db = sqlite3.connect(new)
        h6 = bytes(db.execute("SELECT hash FROM log WHERE publisher = 0 AND seq = 6").fetchone()[0])
        db.close()
        found = tampered(("DELETE FROM log WHERE publisher = 0 AND seq = 6", ()),
                         ("UPDATE anchor_restores SET seq = 6, hash = ? WHERE publisher = 0", (h6,)))
        assert any("does not verify" in r for r in found), found
        # (Nor is it taken for a start: the member's restore mark is of the head it restarted at, 5.)
        assert any("without this party's restore mark" in r for r in found), found
        assert any("messages 1..6 are missing" in r for r in found), found


# --- audit -----------------------------------------------------------------------------------------------------


async def _channel_for_audit(tmp: Path) -> tuple[Path, bytes]:
    lpath = tmp / "ledger.db"
    ledger = EmbeddedLedger(lpath)
    hub = MemoryHub()
    pol = AllowList({P1.did: Permission.READ_WRITE, AUD.did: Permission.AUDIT})
    author = await make_author(tmp, hub, ledger, pol)
    s1 = await make_sub(tmp / "p1.db", hub, P1, "p1", author, ledger=ledger)
    aud = await make_sub(tmp / "aud.db", hub, AUD, "aud", author, ledger=ledger)
    b1 = await s1.subscribe(timeout=5)
    ba = await aud.subscribe(timeout=5)
    for i in range(6):
        await author.publish(b1, b"alert %d" % i)
        await author.publish(ba, b"audit copy %d" % i)
    await s1.publish(b1, b"report")
    for _ in range(6):
        await s1.next_message(timeout=5)
        await aud.next_message(timeout=5)
    with pytest.raises(LocalProtocolError):  # an auditor reads and verifies, never publishes
        await aud.publish(ba, b"nope")
    cs, ca = Collect(s1), Collect(aud)
    await wait_for(lambda: any(e.seq == 6 for e in cs.of(Anchored)) and any(e.seq == 6 for e in ca.of(Anchored)),
                   what="anchored")
    await wait_for(lambda: author.anchoring is not None and author.anchoring.pending == 0, what="drained")
    for x in (s1, aud, author):
        await x.close()
    ledger.close()
    return lpath, b1


async def test_audit_passes_on_clean_stores_and_finds_edits_deletions_insertions(tmp_path: Path) -> None:
    lpath, b1 = await _channel_for_audit(tmp_path)
    with EmbeddedLedger(lpath) as ledger:
        for name in ("author", "p1", "aud"):
            report = audit_store(tmp_path / f"{name}.db", PW, ledger)
            assert report.ok, report.summary()
            assert report.messages >= 6 and report.signatures >= 6 and report.anchored_heads >= 1
        rep = audit_store(tmp_path / "aud.db", PW, ledger)
        assert rep.role == "subscriber" and rep.chains == 1  # the auditor's branch: the author's chain

        def tampered(sql: str, args: tuple[object, ...]) -> list[str]:
            path = tmp_path / "t.db"
            for suffix in ("", "-wal", "-shm"):
                if (tmp_path / f"t.db{suffix}").exists():
                    os.remove(tmp_path / f"t.db{suffix}")
            src = sqlite3.connect(tmp_path / "p1.db")
            dst = sqlite3.connect(path)
            src.backup(dst)
            src.close()
            dst.execute(sql, args)
            dst.commit()
            dst.close()
            r = audit_store(path, PW, ledger)
            assert not r.ok
            return [f.reason for f in r.findings if f.severity == "error"]

        db = sqlite3.connect(tmp_path / "p1.db")
        frame3 = bytes(db.execute("SELECT frame FROM log WHERE branch = ? AND publisher = 0 AND seq = 3",
                                  (b1,)).fetchone()[0])
        db.close()
        edited = bytearray(frame3)
        edited[-80] ^= 1  # a byte of the ciphertext
        found = tampered("UPDATE log SET frame = ? WHERE branch = ? AND publisher = 0 AND seq = 3",
                         (bytes(edited), b1))
        assert any("altered" in r for r in found), found
        found = tampered("DELETE FROM log WHERE branch = ? AND publisher = 0 AND seq = 4", (b1,))
        assert any("missing" in r for r in found), found
        found = tampered("DELETE FROM log WHERE branch = ? AND publisher = 0 AND seq = 6", (b1,))
        assert any("missing" in r or "not in the log" in r for r in found), found
        found = tampered("INSERT INTO log VALUES (?, 0, 7, ?, ?)", (b1, decode_frame(frame3).hash, frame3))
        assert any("inserted" in r for r in found), found
        found = tampered("UPDATE log SET hash = ? WHERE branch = ? AND publisher = 0 AND seq = 2", (bytes(32), b1))
        assert any("altered" in r for r in found), found


async def test_audit_cli_exit_status_and_ledger_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    lpath, _b1 = await _channel_for_audit(tmp_path)
    monkeypatch.setenv("STREAMS_PASSPHRASE", PW)
    store = ["--store", str(tmp_path / "author.db"), "--passphrase-env", "STREAMS_PASSPHRASE"]
    assert cli_main(["audit", *store, "--ledger", f"sqlite:{lpath}", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["role"] == "author" and doc["ledger_checked"] is True
    # Someone rewrites the ledger row of epoch 0 with another validly signed checkpoint: the audit fails.
    db = sqlite3.connect(lpath)
    data = bytes(db.execute("SELECT data FROM entries WHERE position = 1").fetchone()[0])
    cp = EpochCheckpoint.decode(data)
    other = EpochCheckpoint(cp.channel, cp.epoch, cp.tree_size, bytes(32), cp.prev, cp.timestamp_ms)
    other = EpochCheckpoint(*[getattr(other, f) for f in ("channel", "epoch", "tree_size", "root", "prev",
                                                          "timestamp_ms")], AUTHOR.sign(other.digest))
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("UPDATE entries SET data = ? WHERE position = 1", (other.encode(),))
    db.commit()
    db.close()
    assert cli_main(["audit", *store, "--ledger", f"sqlite:{lpath}"]) == 1
    assert "does not hold this checkpoint" in capsys.readouterr().out
    # The audit could not run: exit 2, one line on stderr, and with --json (global or the command's) an error
    # document on stdout -- as every other command.
    monkeypatch.setenv("STREAMS_PASSPHRASE", "not-the-passphrase-8d1f")
    assert cli_main(["--json", "audit", *store]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["type"] == "BadPassphrase" and "Traceback" not in err
    assert "8d1f" not in out + err
    monkeypatch.setenv("STREAMS_PASSPHRASE", PW)
    assert cli_main(["audit", "--json", *store, "--ledger", "sqlite:" + str(tmp_path / "no-ledger.db")]) == 2
    assert "no embedded ledger" in json.loads(capsys.readouterr().out)["error"]
    # No passphrase source and stdin not a terminal: a usage error, not a prompt (or a traceback).
    assert cli_main(["audit", "--store", str(tmp_path / "author.db")]) == 2
    assert "no passphrase" in capsys.readouterr().err


def test_anchor_rows_keep_heads_in_leaf_order(tmp_path: Path) -> None:
    """The anchors table stores heads in sorted-leaf order, so a row alone rebuilds every proof."""
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    chains = []
    for name in ("s0", "s1"):
        b = net.author.branch_of(net.subs[name].identity.did)
        assert b is not None
        net.author.publish(b, b"x", net.now)
        chains.append((b, 0))
    net.pump_author()
    from streams.anchoring_service import _build

    row, tree = _build(net.author, net.author.anchor_heads(chains), None, net.now)
    assert row.leaves == sorted(row.leaves) and tree.root == EpochCheckpoint.decode(row.checkpoint).root
    assert msgpack.unpackb(row.checkpoint)[0] == 1


async def test_a_member_away_when_its_proof_was_sent_gets_it_when_it_comes_back(tmp_path: Path) -> None:
    """Proofs are sent once, at confirmation; a member that was offline then gets the latest ones again with its
    grant sync when it restarts -- not only once its chains move again.  And proofs it already holds, sent again,
    are no event."""
    lpath = tmp_path / "ledger.db"
    ledger = EmbeddedLedger(lpath)
    hub = MemoryHub()
    # The in-memory hub names a peer the same across its reconnects (ZeroMQ gives each connection a new routing
    # id): no grant sync interval (and so no copy window, which is at most half of it), or the reopened member's
    # sync within a second of its first (the same bytes) would be skipped.
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did, P2.did]), store_options=FAST, ledger=ledger,
                                 anchor_config=CFG, config=CoreConfig(grant_sync_interval_ms=0))
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=ledger)
    try:
        b1 = await s1.subscribe(timeout=5)
        for i in range(3):
            await author.publish(b1, b"alert %d" % i)
        for _ in range(3):
            await s1.next_message(timeout=5)
        await s1.close()  # away before the epoch is cut and confirmed
        anch = author.anchoring
        assert anch is not None
        await wait_for(lambda: not anch.pending and anch.ledger_writes >= 1, what="the epoch confirmed")
        s1 = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                   ledger=ledger)
        col = Collect(s1)
        await wait_for(lambda: [(e.publisher, e.seq) for e in col.of(Anchored)] == [(0, 3)], what="the proof")
        assert all(e.ledger_verified and not e.restored for e in col.of(Anchored))
        # A reconnect asks again: the same proof comes back, and is neither an event nor a rejection.
        def proofs_sent() -> int:
            return sum(1 for src, dst, d in hub.tap
                       if src == "author" and dst == "p1" and decode_frame(d).kind is Kind.ANCHOR_PROOF)
        before = proofs_sent()
        await s1._resync()
        await wait_for(lambda: proofs_sent() > before, what="the proof sent again")
        await asyncio.sleep(0.3)  # its checks (the ledger read included) run; they must add nothing
        assert [(e.publisher, e.seq) for e in col.of(Anchored)] == [(0, 3)] and col.of(Rejected) == []
    finally:
        await s1.close()
        await author.close()
        ledger.close()


async def test_a_members_ledger_closed_under_it_closes_the_party_loudly_rather_than_leave_it_unchecked(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The member's ledger check runs in a task of its own.  A ledger closed under the party (the application
    closed it first) made that task die with ClosedResourceError, silently: the party went on receiving, and
    every anchor proof from then on waited for a check that never came -- no Anchored, no rejection, no error.
    Like its receive and timer loops, the party now closes, and says why."""
    lpath = tmp_path / "ledger.db"
    a_ledger, s_ledger = EmbeddedLedger(lpath), EmbeddedLedger(lpath)
    hub = MemoryHub()
    author = await make_author(tmp_path, hub, a_ledger)
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author, ledger=s_ledger)
    col = Collect(s1)
    try:
        b1 = await s1.subscribe(timeout=5)
        s_ledger.close()
        await author.publish(b1, b"alert")
        await s1.next_message(timeout=5)
        deadline = time.monotonic() + 10
        with caplog.at_level("WARNING", logger="streams"):
            while True:  # the application's next call is how it learns
                try:
                    await s1.next_message(timeout=0.2)
                except ClosedResourceError:
                    break
                except StreamsTimeoutError:
                    assert time.monotonic() < deadline, "the member never closed: its proofs wait unchecked"
        assert not col.of(Anchored)
        assert any("ledger" in r.getMessage() and "closing" in r.getMessage() for r in caplog.records), \
            [r.getMessage() for r in caplog.records]
    finally:
        await s1.close()
        await author.close()
        a_ledger.close()


async def test_an_epoch_anchors_each_head_as_committed_not_as_a_publish_not_yet_committed_moved_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch's cut read the core's current heads, which a publish waiting for its group commit has already
    moved (sealed and signed, not committed): had that commit failed, the ledger would hold a head the store never
    had -- contradicted by the next message at that seq.  It anchors the heads as committed (the driver's note of
    each commit), whatever the core holds meanwhile."""
    import streams.anchoring_service as anchoring_service

    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST, ledger=ledger,
                                 anchor_config=AnchorConfig(epoch_interval_ms=3_600_000))
    s1 = await make_sub(tmp_path / "p1.db", hub, P1, "p1", author)
    try:
        b1 = await s1.subscribe(timeout=5)
        for i in range(2):
            await author.publish(b1, b"alert %d" % i)
        (committed,) = [c for c in author.store.load_chains() if (c.branch, c.publisher) == (b1, 0)]
        assert committed.next_seq == 3
        svc = author.anchoring
        assert svc is not None
        built: list[list[tuple[object, int]]] = []
        real = anchoring_service._build

        def build(core: object, heads: list[tuple[object, int]], *rest: object) -> object:
            built.append(heads)
            return real(core, heads, *rest)  # type: ignore[arg-type]

        monkeypatch.setattr(anchoring_service, "_build", build)
        author._core.publish(b1, b"sealed, its commit still to come", author._clock())
        await svc._cut(author._clock())  # (no await before the cut reads the heads: the commit cannot come first)
        (heads,) = built
        assert [(h.seq, h.hash) for h, _ke in heads if (h.branch, h.publisher) == (b1, 0)] == [  # type: ignore[attr-defined]
            (2, committed.head)]
    finally:
        await s1.close()
        await author.close()
        ledger.close()
