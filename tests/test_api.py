"""The asyncio API over the in-memory transport, with real SQLite stores in a temporary directory."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.core import channel_id
from streams.errors import (
    AdmissionRefused,
    BadPassphrase,
    BrokenResourceError,
    ClosedResourceError,
    RejectReason,
    StorageError,
    StreamsTimeoutError,
)
from streams.events import BranchClosed, GapDetected, Rejected, SubscriberRefused
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Kind, decode_frame

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


AUTHOR, P1, P2, STRANGER = ident(1), ident(2), ident(3), ident(4)


async def make_author(tmp: Path, hub: MemoryHub, options: StoreOptions = FAST) -> Author:
    return await Author.create(tmp / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                               AllowList.of([P1.did, P2.did]), store_options=options)


async def make_sub(tmp: Path, hub: MemoryHub, who: Identity, name: str, author: Author) -> Subscriber:
    return await Subscriber.create(tmp / f"{name}.db", who, AUTHOR.did, author.channel, PW,
                                   hub.subscriber_endpoint(name), store_options=FAST)


async def test_subscribe_publish_both_ways_and_segregation(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    s2 = await make_sub(tmp_path, hub, P2, "p2", author)
    b1 = await s1.subscribe(timeout=5)
    b2 = await s2.subscribe(timeout=5)
    assert b1 != b2
    assert author.branch_of(P1.did) == b1
    await s1.publish(b1, b"payment 1 from provider 1")
    await s2.publish(b2, b"payment 1 from provider 2")
    got = {(await author.next_message(timeout=5)).payload for _ in range(2)}
    assert got == {b"payment 1 from provider 1", b"payment 1 from provider 2"}
    await author.publish(b1, b"alert for p1 only")
    m = await s1.next_message(timeout=5)
    assert (m.payload, m.publisher_did, m.signed) == (b"alert for p1 only", AUTHOR.did, True)
    with pytest.raises(Exception, match="no message"):
        await s2.next_message(timeout=0.3)
    # p2 saw p1's ciphertext on the (broadcast) memory network but got nothing readable from it
    assert any(dst == "p2" and decode_frame(d).kind is Kind.PACKET for _src, dst, d in hub.tap)
    for x in (s1, s2, author):
        await x.close()


async def test_unlisted_did_is_refused(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s = await make_sub(tmp_path, hub, STRANGER, "x", author)
    with pytest.raises(AdmissionRefused) as ei:
        await s.subscribe(timeout=5)
    assert ei.value.reason is RejectReason.REFUSED
    assert author.branch_of(STRANGER.did) is None
    await s.close()
    await author.close()


async def test_restart_resumes_and_replay_after_restart_rejected(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    for i in range(3):
        await author.publish(b1, b"m%d" % i)
    got = [(await s1.next_message(timeout=5)).payload for _ in range(3)]
    assert got == [b"m0", b"m1", b"m2"]
    recorded = [d for src, dst, d in hub.tap if src == "author" and dst == "p1" and decode_frame(d).kind is Kind.PACKET]
    await s1.close()
    await author.close()

    # Both sides restart from their SQLite files.
    hub2 = MemoryHub()
    author = await Author.open(tmp_path / "author.db", PW, hub2.author_endpoint(), AllowList.of([P1.did]),
                               store_options=FAST)
    s1 = await Subscriber.open(tmp_path / "p1.db", PW, hub2.subscriber_endpoint("p1"), store_options=FAST)
    assert [b.id for b in s1.branches()] == [b1]
    seq = await author.publish(b1, b"after restart")
    assert seq == 4
    m = await s1.next_message(timeout=5)
    assert (m.payload, m.seq) == (b"after restart", 4)
    # The attacker replays every recorded frame of the first session: all rejected as replays.
    for d in recorded:
        hub2.inject("p1", d)
    await asyncio.sleep(0.2)
    rej = [e for e in s1.pending_events() if isinstance(e, Rejected)]
    # (a catch-up fetch answered after the live message may add one more harmless duplicate)
    assert {r.reason for r in rej} == {RejectReason.REPLAY}
    assert len(rej) >= len(recorded)
    with pytest.raises(Exception, match="no message"):
        await s1.next_message(timeout=0.2)
    await s1.close()
    await author.close()


async def test_offline_subscriber_catches_up_from_retained_log(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    await author.publish(b1, b"first")
    assert (await s1.next_message(timeout=5)).payload == b"first"
    await s1.close()
    for i in range(20):  # published while p1 is offline: nobody receives them
        await author.publish(b1, b"missed %d" % i)
    s1 = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST)
    got = [(await s1.next_message(timeout=5)).payload for _ in range(20)]
    assert got == [b"missed %d" % i for i in range(20)]
    await s1.close()
    await author.close()


async def _lost_then_one_arrives(hub: MemoryHub, author: Author, s1: Subscriber, b1: bytes, lost: int) -> None:
    """``lost`` messages published while p1's endpoint drops what reaches it, then one that arrives: p1 gets
    all of them, in order (the gap is filled)."""
    ep = hub._subs["p1"]
    ep.closed = True
    for i in range(lost):
        await author.publish(b1, b"lost %d" % i)
    ep.closed = False
    await author.publish(b1, b"arrives")
    got = [(await s1.next_message(timeout=5)).payload for _ in range(lost + 1)]
    assert got == [b"lost %d" % i for i in range(lost)] + [b"arrives"]


async def test_gap_is_detected_and_filled(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    # Drop messages 1..3 on the way to p1 (a lossy network), then let 4 through.
    await _lost_then_one_arrives(hub, author, s1, b1, 3)
    assert any(isinstance(e, GapDetected) for e in s1.pending_events())
    await s1.close()
    await author.close()


async def test_tail_loss_detected_by_head_notice(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    author.heartbeat_ms = 50
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    ep = hub._subs["p1"]
    ep.closed = True
    await author.publish(b1, b"last message, lost")
    ep.closed = False
    m = await s1.next_message(timeout=5)
    assert m.payload == b"last message, lost"
    await s1.close()
    await author.close()


async def test_revocation_closes_branch_both_sides(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    await author.revoke(b1)
    for _ in range(50):
        evs = s1.pending_events()
        if any(isinstance(e, BranchClosed) for e in evs):
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("no BranchClosed")
    with pytest.raises(ClosedResourceError):
        await s1.publish(b1, b"x")
    with pytest.raises(ClosedResourceError):
        await author.publish(b1, b"x")
    await s1.close()
    await author.close()


async def test_wrong_passphrase_and_secrets_encrypted_at_rest(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    await s1.subscribe(timeout=5)
    await s1.close()
    await author.close()
    with pytest.raises(BadPassphrase):
        await Author.open(tmp_path / "author.db", "wrong", hub.author_endpoint(), AllowList(), store_options=FAST)
    raw = (tmp_path / "author.db").read_bytes() + (tmp_path / "author.db-wal").read_bytes() \
        if (tmp_path / "author.db-wal").exists() else (tmp_path / "author.db").read_bytes()
    assert AUTHOR.export_seed() not in raw
    assert AUTHOR.export_seed().hex().encode() not in raw


async def test_storage_failure_is_typed_and_nothing_acknowledged(tmp_path: Path) -> None:
    hub = MemoryHub()
    # Without the commit journal (a journaled commit takes no SQLite lock; its failures, a full disk among them:
    # test_commit_journal.py, test_disk_faults.py).
    author = await make_author(tmp_path, hub, dataclasses.replace(FAST, journal=False))
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    await author.publish(b1, b"ok")
    # Another process holds the write lock: the commit cannot happen (like a full or read-only disk).
    other = sqlite3.connect(tmp_path / "author.db", timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    author.store._conn.execute("PRAGMA busy_timeout=10")
    with pytest.raises(StorageError):
        await author.publish(b1, b"not acknowledged")
    other.rollback()
    other.close()
    with pytest.raises(ClosedResourceError):
        await author.publish(b1, b"after failure")
    await asyncio.sleep(0.05)
    await s1.close()
    await author.close()
    # Reopen: the failed message never reached disk; the chain continues at seq 2.
    hub2 = MemoryHub()
    author = await Author.open(tmp_path / "author.db", PW, hub2.author_endpoint(), AllowList.of([P1.did]),
                               store_options=FAST)
    assert await author.publish(b1, b"resumed") == 2
    await author.close()


async def test_a_failing_transport_closes_the_party_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A transport's bug (here: recv raises after a while) must not leave a party that silently stopped
    # receiving: it is logged, the party closes, and the application's next call raises with the cause.
    from streams.api import MemoryTransport

    class Flaky(MemoryTransport):
        calls = 0

        async def recv(self) -> list[tuple[bytes, object]]:
            Flaky.calls += 1
            if Flaky.calls > 3:
                raise RuntimeError("transport bug")
            return await super().recv()

    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    flaky = Flaky(hub, "p1")
    hub._subs["p1"] = flaky
    s1 = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW, flaky,
                                 store_options=FAST)
    with caplog.at_level("ERROR", logger="streams"):
        b1 = await s1.subscribe(timeout=5)
        for i in range(5):
            await author.publish(b1, b"m%d" % i)
        got = []
        err: ClosedResourceError | None = None
        while err is None:
            try:
                got.append((await s1.next_message(timeout=5)).payload)
            except ClosedResourceError as exc:
                err = exc
    assert isinstance(err.__cause__, RuntimeError)
    assert any("receive loop failed" in r.getMessage() and "transport bug" in r.getMessage()
               for r in caplog.records)
    assert got == [b"m%d" % i for i in range(len(got))]  # what arrived before, in order
    with pytest.raises(ClosedResourceError):
        await s1.publish(b1, b"after")
    await s1.close()
    await author.close()


async def test_an_expired_challenge_is_not_a_final_refusal(tmp_path: Path) -> None:
    # The author's clock jumps past the challenge's lifetime while the SUBSCRIBE is on its way (a slow host):
    # the author refuses that challenge (BAD_CHALLENGE), and subscribe() starts over with a fresh one instead of
    # raising AdmissionRefused.  A refusal by the policy stays final.
    from streams.core import CoreConfig
    from streams.errors import AdmissionRefused as Refusal

    clock = [1_700_000_000_000]
    jumped: list[bool] = []

    class SlowHub(MemoryHub):
        def _route(self, src: str, out: object) -> None:
            data = out.data  # type: ignore[attr-defined]
            if src != "author" and decode_frame(data).kind is Kind.SUBSCRIBE and not jumped:
                jumped.append(True)
                clock[0] += 60_001  # past challenge_ttl_ms
            super()._route(src, out)  # type: ignore[arg-type]

    hub = SlowHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST, clock=lambda: clock[0],
                                 config=CoreConfig(challenge_ttl_ms=60_000))
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5, retry=0.5)
    assert jumped == [True]
    refused = [e for e in author.pending_events() if isinstance(e, SubscriberRefused)]
    assert len(refused) == 1 and "expired" in refused[0].reason  # the first attempt was refused, and retried
    await author.publish(b1, b"hello")
    assert (await s1.next_message(timeout=5)).payload == b"hello"
    s2 = await make_sub(tmp_path, hub, P2, "p2", author)  # not on the allow list: final
    with pytest.raises(Refusal):
        await s2.subscribe(timeout=5, retry=0.5)
    await s2.close()
    await s1.close()
    await author.close()


async def test_a_member_whose_hello_the_previous_run_answered_subscribes_after_the_restart(tmp_path: Path) -> None:
    """SPEC 8.3: the author's challenge key is drawn anew at every start, so a challenge of the run before a
    restart fails its MAC after it.  The member's SUBSCRIBE, held on the way (a slow path) until the author has
    restarted on the same store, is refused there (BAD_CHALLENGE) -- and the member is still admitted: subscribe()
    asks again, with a challenge of the new run.  (The ZeroMQ case: test_zmq_attacks.py,
    test_a_subscriber_whose_author_restarted_between_its_hello_and_its_subscribe_is_admitted.)"""
    from streams.errors import RejectReason

    held: list[bytes] = []

    class HoldingHub(MemoryHub):
        def _route(self, src: str, out: object) -> None:
            data = out.data  # type: ignore[attr-defined]
            if src == "p1" and not held and decode_frame(data).kind is Kind.SUBSCRIBE:
                held.append(data)  # the first SUBSCRIBE: held back
                return
            super()._route(src, out)  # type: ignore[arg-type]

    hub = HoldingHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    subscribing = asyncio.create_task(s1.subscribe(timeout=30, retry=60))  # (no HELLO again but after a refusal)
    try:
        for _ in range(3000):  # until the SUBSCRIBE answering the first run's challenge is held
            if held:
                break
            await asyncio.sleep(0.01)
        assert held, "no SUBSCRIBE was sent"
        await author.close()
        author = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), AllowList.of([P1.did, P2.did]),
                                   store_options=FAST)
        hub.inject("author", held[0], peer="p1")  # it reaches the new run
        branch = await subscribing
        refusals = [decode_frame(d).head for src, dst, d in hub.tap
                    if src == "author" and dst == "p1" and decode_frame(d).kind is Kind.REFUSE]
        assert [(r.request, RejectReason(r.reason)) for r in refusals] == \
            [(decode_frame(held[0]).hash, RejectReason.BAD_CHALLENGE)]  # type: ignore[union-attr]
        assert author.branch_of(P1.did) == branch
        await author.publish(branch, b"after the restart")
        assert (await s1.next_message(timeout=10)).payload == b"after the restart"
    finally:
        subscribing.cancel()
        await s1.close()
        await author.close()


async def test_resubscribe_after_subscribed_completes(tmp_path: Path) -> None:
    """A subscriber that subscribes again (e.g. it is unsure its grant arrived) gets its existing branch back."""
    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    assert await s1.subscribe(timeout=5) == b1
    assert len(author.branches()) == 1
    await s1.close()
    await author.close()


async def test_catch_up_fetches_window_after_window_without_waiting_for_timers(tmp_path: Path) -> None:
    """A subscriber that missed many windows' worth catches up at once: each FETCH reply carries the
    publisher's head, and the next window is asked for as soon as one is in (not at the retry timer)."""
    from streams.core import CoreConfig

    cfg = CoreConfig(max_fetch=64, fetch_retry_ms=600_000)
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST, config=cfg)
    author.heartbeat_ms = 600_000  # no HEAD notices from the timer either
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    await s1.close()
    for i in range(300):  # almost five windows, published while p1 is away
        await author.publish(b1, b"%d" % i)
    s1 = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                               config=cfg)
    s1.heartbeat_ms = 600_000
    got = [(await s1.next_message(timeout=5)).seq for _ in range(300)]
    assert got == list(range(1, 301))
    await s1.close()
    await author.close()


async def test_a_catch_up_is_not_reported_as_a_gap_but_a_loss_on_a_live_connection_still_is(tmp_path: Path) -> None:
    """The answer to a catch-up starts with the publisher's HEAD: every reconnect reported a GapDetected for what
    it missed while away (every `tail --events` began with a `gap` line that filled at once).  A catch-up --
    of one window or of several -- reports none now; a loss on a live connection still does."""
    from streams.core import CoreConfig
    from streams.events import GapDetected

    cfg = CoreConfig(max_fetch=8)
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST, config=cfg)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    for n in (5, 20):  # one window, then several (max_fetch 8)
        await s1.close()
        for i in range(n):
            await author.publish(b1, b"away %d" % i)
        s1 = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                                   config=cfg)
        got = [(await s1.next_message(timeout=5)).payload for _ in range(n)]
        assert got == [b"away %d" % i for i in range(n)]
        assert [e for e in s1.pending_events() if isinstance(e, GapDetected)] == []
    # A catch-up of several windows while the author goes on publishing: live frames land between windows.
    await s1.close()
    for i in range(30):
        await author.publish(b1, b"away again %d" % i)
    s1 = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST,
                               config=cfg)
    for i in range(10):
        await author.publish(b1, b"live %d" % i)
        await asyncio.sleep(0.002)
    got = [(await s1.next_message(timeout=5)).payload for _ in range(40)]
    assert got == [b"away again %d" % i for i in range(30)] + [b"live %d" % i for i in range(10)]
    assert [e for e in s1.pending_events() if isinstance(e, GapDetected)] == []
    # Live now: two messages lost on the way, the next comes through -- that is a gap.
    await _lost_then_one_arrives(hub, author, s1, b1, 2)
    gaps = [e for e in s1.pending_events() if isinstance(e, GapDetected)]
    assert [(g.expected_seq, g.received_seq) for g in gaps] == [(66, 68)]
    await s1.close()
    await author.close()


async def test_a_group_opened_while_away_is_caught_up_but_a_loss_in_a_group_on_a_live_connection_is_a_gap(
        tmp_path: Path) -> None:
    """A group opened and published to while p2 was away: its first grant comes in the answer to the grant sync
    of p2's catch-up, and the author's HEAD answering the group's own grant sync was reported as a gap (from seq
    1) that filled at once.  What the catch-up fetches is no gap now -- but a hostile network that drops group
    PACKETs on a live connection is still reported: once the group is caught up, and in a group opened while p2
    is connected (its first grant came live: no catch-up was going on)."""
    from streams.core import CoreConfig

    class DroppingHub(MemoryHub):
        """Drops the next ``drop[(endpoint, branch)]`` PACKETs of that branch on their way to that endpoint."""

        def __init__(self) -> None:
            super().__init__()
            self.drop: dict[tuple[str, bytes], int] = {}

        def inject(self, to: str, data: bytes, peer: str = "attacker") -> None:
            f = decode_frame(data)
            key = (to, f.head.branch) if f.kind is Kind.PACKET else None
            if key is not None and self.drop.get(key, 0) > 0:
                self.drop[key] -= 1
                return
            super().inject(to, data, peer)

    async def until(pred: Callable[[], bool], what: str) -> None:
        for _ in range(1000):
            if pred():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    def gaps(events: list[object]) -> list[tuple[bytes, int, int, int]]:
        return [(e.branch, e.publisher, e.expected_seq, e.received_seq) for e in events if isinstance(e, GapDetected)]

    cfg = CoreConfig(max_fetch=4)
    hub = DroppingHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did, P2.did]), store_options=FAST, config=cfg)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    s2 = await make_sub(tmp_path, hub, P2, "p2", author)
    try:
        await s1.subscribe(timeout=5)
        await s2.subscribe(timeout=5)
        await s2.close()
        group = await author.open_group([P1.did, P2.did])
        for i in range(6):  # two windows of max_fetch
            await author.publish(group, b"away %d" % i)
        s2 = await Subscriber.open(tmp_path / "p2.db", PW, hub.subscriber_endpoint("p2 again"), store_options=FAST,
                                   config=cfg)
        got = [(await s2.next_message(timeout=5)).payload for _ in range(6)]
        assert got == [b"away %d" % i for i in range(6)]
        events: list[object] = list(s2.pending_events())
        assert gaps(events) == []
        # Live now: the network drops two of the group's PACKETs to p2, the next comes through -- that is a gap.
        hub.drop[("p2 again", group)] = 2
        for i in range(3):
            await author.publish(group, b"live %d" % i)
        got = [(await s2.next_message(timeout=5)).payload for _ in range(3)]
        assert got == [b"live %d" % i for i in range(3)]
        events += s2.pending_events()
        assert gaps(events) == [(group, 0, 7, 9)]
        # A group opened while p2 is connected, its first PACKET dropped on the way to p2: a gap too.
        second = await author.open_group([P1.did, P2.did])
        await until(lambda: any(b.id == second for b in s2.branches()), "p2 to hold the second group")
        hub.drop[("p2 again", second)] = 1
        for i in range(2):
            await author.publish(second, b"second %d" % i)
        got = [(await s2.next_message(timeout=5)).payload for _ in range(2)]
        assert got == [b"second 0", b"second 1"]
        events += s2.pending_events()
        assert gaps(events) == [(group, 0, 7, 9), (second, 0, 1, 2)]
    finally:
        await s2.close()
        await s1.close()
        await author.close()


async def test_a_group_opened_while_away_is_caught_up_also_when_the_members_own_branch_was_re_keyed(
        tmp_path: Path) -> None:
    """The answer to the catch-up's grant sync on p2's own branch starts with that branch's GRANTs p2 missed
    (here a permission change), and the group's first GRANT comes after them: applying them (which asks the
    branch again) must not end the catch-up, or the group's history is reported as a gap."""
    from streams.policy import Permission

    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    s2 = await make_sub(tmp_path, hub, P2, "p2", author)
    try:
        await s1.subscribe(timeout=5)
        own = await s2.subscribe(timeout=5)
        await s2.close()
        await author.set_permission(own, Permission.READ)
        group = await author.open_group([P1.did, P2.did])
        await author.publish(group, b"to the group")
        await author.publish(own, b"to p2")
        s2 = await Subscriber.open(tmp_path / "p2.db", PW, hub.subscriber_endpoint("p2 again"), store_options=FAST)
        got = sorted([(await s2.next_message(timeout=5)).payload for _ in range(2)])
        assert got == [b"to p2", b"to the group"]
        assert [(b.epoch, b.permission) for b in s2.branches() if b.id == own] == [(1, Permission.READ)]
        assert [e for e in s2.pending_events() if isinstance(e, GapDetected)] == []
    finally:
        await s2.close()
        await s1.close()
        await author.close()


async def test_a_live_loss_in_a_group_opened_while_the_catch_ups_grant_sync_is_unanswered_is_reported(
        tmp_path: Path) -> None:
    """A hostile relay keeps p2's catch-up grant sync unanswered (it drops the GRANTs of p2's own branch): a group
    the author opens meanwhile, live, is taken for one opened while p2 was away, and gets a catch-up window --
    what a frame of it reveals missing is not reported while that window is unanswered.  The relay then drops
    the group's first PACKET and every HEAD of the group, live or fetched: its second PACKET was held, the fetch
    of the first never answered, and no gap was ever reported (the window's retries did not count once a held
    frame made it a gap fill).  The window is given up after its retries now, and what it kept quiet is
    reported; once the relay lets the fetch through, both messages come, in order."""
    from streams.core import CoreConfig

    class Relay(MemoryHub):
        def __init__(self) -> None:
            super().__init__()
            self.to = ""
            self.own = b""
            self.group = b""
            self.dropped: list[tuple[Kind, bytes, int]] = []
            self.passed: list[tuple[Kind, bytes, int]] = []

        def inject(self, to: str, data: bytes, peer: str = "attacker") -> None:
            if to == self.to:
                f = decode_frame(data)
                branch = getattr(f.head, "branch", b"")
                seq = getattr(f.head, "seq", 0)
                if (f.kind is Kind.GRANT and branch == self.own) or (branch == self.group and (
                        f.kind is Kind.HEAD or (f.kind is Kind.PACKET and seq == 1))):
                    self.dropped.append((f.kind, branch, seq))
                    return
                self.passed.append((f.kind, branch, seq))
            super().inject(to, data, peer)

    async def until(pred: Callable[[], bool], what: str) -> None:
        for _ in range(1000):
            if pred():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    # Fetches retried quickly; the grant sync's retries far apart, so that its wait (the catch-up's mark) stays
    # up through the test without a race.
    cfg = CoreConfig(fetch_retry_ms=100, grant_sync_interval_ms=60_000)
    hub = Relay()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did, P2.did]), store_options=FAST, config=cfg)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    s2 = await make_sub(tmp_path, hub, P2, "p2", author)
    try:
        await s1.subscribe(timeout=5)
        hub.own = await s2.subscribe(timeout=5)
        await s2.close()
        hub.to = "p2 again"
        s2 = await Subscriber.open(tmp_path / "p2.db", PW, hub.subscriber_endpoint("p2 again"), store_options=FAST,
                                   config=cfg)
        await until(lambda: (Kind.GRANT, hub.own, 0) in hub.dropped, "the catch-up sync's answer to be dropped")
        hub.group = group = await author.open_group([P1.did, P2.did])
        await until(lambda: any(b.id == group for b in s2.branches()), "p2 to hold the group")
        await author.publish(group, b"first")
        await author.publish(group, b"second")
        await until(lambda: (Kind.PACKET, group, 2) in hub.passed, "the second PACKET to reach p2")
        events: list[object] = []

        def gap() -> bool:
            events.extend(s2.pending_events())
            return any(isinstance(e, GapDetected) and e.branch == group for e in events)

        await until(gap, "the gap to be reported")
        assert [(e.publisher, e.expected_seq, e.received_seq) for e in events
                if isinstance(e, GapDetected) and e.branch == group] == [(0, 1, 2)]
        hub.group = b""  # the relay lets the group through: the fetch goes on, and is answered
        got = [(await s2.next_message(timeout=5)).payload for _ in range(2)]
        assert got == [b"first", b"second"]
    finally:
        await s2.close()
        await s1.close()
        await author.close()


async def test_grant_and_evidence_live_on_disk_and_still_serve_resubscription_and_recheck(tmp_path: Path) -> None:
    """The author keeps neither grant frames nor credentials in memory (idle branches stay small), yet a
    re-subscription gets its grant and a revoked credential still cuts its subscriber off -- after a restart too."""
    from datetime import UTC, datetime, timedelta

    from streams.credentials import (
        CredentialPolicy,
        StatusList,
        StatusListSource,
        issue_credential,
        issue_status_list_credential,
        present,
    )

    issuer, url, t0 = ident(9), "https://issuer.example/sl", datetime(2026, 1, 1, tzinfo=UTC)
    bits, lists = StatusList(), StatusListSource()
    lists.publish(issue_status_list_credential(issuer, url, bits, valid_from=t0))
    policy = CredentialPolicy("ProviderCredential", frozenset({issuer.did}), status_lists=lists)
    cred = issue_credential(issuer, P1.did, ["ProviderCredential"], {}, valid_from=t0, status=(url, 1), created=t0)
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(), policy,
                                 store_options=FAST)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)

    def presenter(nonce: bytes, channel: bytes) -> bytes:
        return present(P1, cred, challenge=nonce, domain=channel, created=t0 + timedelta(days=1))

    b1 = await s1.subscribe(timeout=5, presenter=presenter)
    held = author._core._branches[b1]
    assert held.grant_frame is None and held.evidence is None  # on disk only
    assert await s1.subscribe(timeout=5, presenter=presenter) == b1  # the grant came back from the store
    await author.close()
    author = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), policy, store_options=FAST)
    assert await author.recheck_admissions() == []
    bits.set(1)
    lists.publish(issue_status_list_credential(issuer, url, bits, valid_from=t0))
    assert await author.recheck_admissions() == [b1]
    # The author's application hears of it (nobody asked for this revocation): one BranchClosed, by "recheck".
    assert [(e.branch, e.by) for e in author.pending_events() if isinstance(e, BranchClosed)] == [(b1, "recheck")]
    with pytest.raises(ClosedResourceError):
        await author.publish(b1, b"no more")
    await s1.close()
    await author.close()


async def test_recheck_admissions_revokes_whom_a_replaced_policy_no_longer_admits(tmp_path: Path) -> None:
    """A DID taken off the allow-list (or denied) by a replaced policy keeps its branch until the author asks:
    ``recheck_admissions`` then revokes it, takes it out of its groups (re-keyed without it), and leaves the
    others alone.  (The periodic re-check only re-checks credentials.)"""
    from streams.policy import AllOf, DenyList

    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    s2 = await make_sub(tmp_path, hub, P2, "p2", author)
    b1, b2 = await s1.subscribe(timeout=5), await s2.subscribe(timeout=5)
    group = await author.open_group([P1.did, P2.did])
    author.policy = AllowList.of([P2.did])
    assert author.branch_of(P1.did) == b1  # admission changed; membership not yet
    assert await author.recheck_admissions() == [b1]
    assert [(e.branch, e.by, e.reason) for e in author.pending_events() if isinstance(e, BranchClosed)] == [
        (b1, "recheck", "the policy no longer admits the subscriber's DID")]
    [g] = [b for b in author.branches() if b.id == group]
    assert (g.epoch, g.members) == (1, (AUTHOR.did, P2.did))
    with pytest.raises(ClosedResourceError):
        await author.publish(b1, b"no more")
    author.policy = AllOf((AllowList.of([P1.did, P2.did]), DenyList(frozenset({P2.did}))))  # deny wins
    assert await author.recheck_admissions() == [b2, group]  # (P2 was the group's last member: it closed)
    assert [(e.branch, e.by, e.reason) for e in author.pending_events() if isinstance(e, BranchClosed)] == [
        (b2, "recheck", "the policy no longer admits the subscriber's DID"),
        (group, "recheck", "its last member was cut off: the policy no longer admits the subscriber's DID")]
    for x in (s1, s2, author):
        await x.close()


async def test_an_allow_listed_subscriber_taken_off_the_list_is_revoked_though_a_credential_rule_remains(
        tmp_path: Path) -> None:
    """Under "an allow-list or a credential" (AnyOf), a DID taken off the allow-list could still be admitted --
    with a credential, which it never presented.  Admitted on its DID alone, it is re-checked on its DID alone:
    refused, so revoked.  ``revoke_subscriber`` cuts one off by hand: its branch and its groups."""
    from streams.credentials import CredentialPolicy
    from streams.policy import AnyOf

    creds = CredentialPolicy("ProviderCredential", frozenset({ident(9).did}))
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AnyOf((AllowList.of([P1.did, P2.did]), creds)), store_options=FAST)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    s2 = await make_sub(tmp_path, hub, P2, "p2", author)
    b1, b2 = await s1.subscribe(timeout=5), await s2.subscribe(timeout=5)
    group = await author.open_group([P1.did, P2.did])
    author.policy = AnyOf((AllowList.of([P2.did]), creds))
    assert await author.recheck_admissions() == [b1]
    assert await author.revoke_subscriber(P2.did) == [b2, group]
    assert [b.id for b in author.branches() if b.open] == []
    for x in (s1, s2, author):
        await x.close()


async def test_a_policy_that_raises_during_a_recheck_revokes_nobody(tmp_path: Path) -> None:
    """Every decision comes before any revocation: a policy that raises for one subscriber leaves the others'
    branches open, rather than some closed and unreported."""
    from streams.policy import Decision, SubscriptionRequest

    class Flaky:
        def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
            if request.did == P2.did:
                raise RuntimeError("policy backend down")
            return Decision.refuse("not any more")

    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    s2 = await make_sub(tmp_path, hub, P2, "p2", author)
    await s1.subscribe(timeout=5)
    await s2.subscribe(timeout=5)
    author.policy = Flaky()
    with pytest.raises(RuntimeError, match="backend down"):
        await author.recheck_admissions()
    assert all(b.open for b in author.branches())
    for x in (s1, s2, author):
        await x.close()


async def test_recheck_admissions_takes_group_members_without_a_branch_of_their_own_off_the_group(
        tmp_path: Path) -> None:
    """A group member whose own branch is gone (revoked earlier) or who never had one (a group the author filled
    itself) is judged on its DID alone too: taken off the allow-list, it leaves the group (re-keyed)."""
    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    b1 = await s1.subscribe(timeout=5)
    group = await author.open_group([P1.did, P2.did, STRANGER.did])
    await author.revoke(b1)  # P1's own branch only: it stays in the group
    author.policy = AllowList.of([STRANGER.did])
    assert await author.recheck_admissions() == []  # no branch closed: the group lives on
    [g] = [b for b in author.branches() if b.id == group]
    assert (g.open, g.members) == (True, (AUTHOR.did, STRANGER.did))
    await s1.close()
    await author.close()


async def test_a_subscribe_that_timed_out_does_not_answer_a_late_challenge(tmp_path: Path) -> None:
    """A subscribe() that gave up (timed out; a cancelled one alike) must not go on with the handshake: a late
    CHALLENGE -- its HELLO held up on the way -- ran the application's presenter after the call had returned and
    sent a SUBSCRIBE the author admitted, a membership the application had given up on."""
    hub = MemoryHub()
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did,
                                  channel_id(AUTHOR.sign_public, "fraud-monitor"), PW, hub.subscriber_endpoint("p1"),
                                  store_options=FAST)
    calls: list[bytes] = []

    def presenter(nonce: bytes, channel: bytes) -> bytes:
        calls.append(nonce)
        return b""

    with pytest.raises(StreamsTimeoutError):  # nobody at the author's end yet: the HELLO is held up
        await sub.subscribe(timeout=0.2, retry=30, presenter=presenter)
    hello = next(d for src, _dst, d in hub.tap if src == "p1")
    author = await make_author(tmp_path, hub)
    hub.inject("author", hello, "p1")  # the held-up HELLO arrives: the author challenges
    for _ in range(1000):
        if any(src == "author" and decode_frame(d).kind is Kind.CHALLENGE for src, _dst, d in hub.tap):
            break
        await asyncio.sleep(0.01)
    for _ in range(1000):  # until the subscriber handled the challenge (refused it, or answered it)
        if calls or [e for e in sub.pending_events() if isinstance(e, Rejected)]:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the late challenge was never handled")
    assert calls == []
    assert not any(src == "p1" and decode_frame(d).kind is Kind.SUBSCRIBE for src, _dst, d in hub.tap)
    await sub.close()
    await author.close()



async def test_routes_wait_for_the_frames_a_cancelled_sender_handed_off(tmp_path: Path) -> None:
    """A transport with ``learn_routes`` but no ``send_many`` is sent one frame at a time.  A revoke cancelled
    while its REVOKE was on the way handed the rest to a task of the party; a publish meanwhile sent its own frame
    and then handed the transport every routing hint the core held -- the revoked branch's "forget its peers"
    among them -- before the REVOKE went out: a routing transport would then no longer deliver the REVOKE to the
    members it closes (SPEC 14.2: routes are applied after the frames they may concern)."""
    from streams.api import MemoryTransport, Outgoing

    class SlowRouting:
        """The author's endpoint: one send at a time (no send_many), routes learned, REVOKEs held at a gate."""

        def __init__(self, inner: MemoryTransport) -> None:
            self.inner = inner
            self.log: list[tuple[str, object]] = []
            self.gate = asyncio.Event()
            self.gate.set()
            self.held = asyncio.Event()

        async def send(self, out: Outgoing) -> None:
            kind = decode_frame(out.data).kind
            if kind is Kind.REVOKE and not self.gate.is_set():
                self.held.set()
                await self.gate.wait()
            self.log.append(("send", (kind, out.branch)))
            await self.inner.send(out)

        async def recv(self) -> list[tuple[bytes, object]]:
            return await self.inner.recv()

        async def close(self) -> None:
            await self.inner.close()

        def learn_routes(self, hints: list[tuple[bytes, object, bool]]) -> None:
            self.log.append(("routes", hints))

    hub = MemoryHub()
    t = SlowRouting(hub.author_endpoint())
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, t,
                                 AllowList.of([P1.did, P2.did]), store_options=FAST)
    s1 = await make_sub(tmp_path, hub, P1, "p1", author)
    s2 = await make_sub(tmp_path, hub, P2, "p2", author)
    b1 = await s1.subscribe(timeout=5)
    b2 = await s2.subscribe(timeout=5)
    t.gate.clear()
    revoking = asyncio.create_task(author.revoke(b1))
    await asyncio.wait_for(t.held.wait(), 10)
    revoking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await revoking
    await author.publish(b2, b"after the revoke")  # its frame goes out while the REVOKE is still held
    t.gate.set()
    for _ in range(1000):
        if ("send", (Kind.REVOKE, b1)) in t.log:
            break
        await asyncio.sleep(0.01)
    revoke_sent = t.log.index(("send", (Kind.REVOKE, b1)))
    forgets = [i for i, (what, x) in enumerate(t.log)
               if what == "routes" and isinstance(x, list) and any(h[0] == b1 and not h[2] for h in x)]
    assert forgets, "the revoked branch's routes were never forgotten"
    assert forgets[0] > revoke_sent, f"routes forgotten before the REVOKE went out: {t.log}"
    await s1.close()
    await s2.close()
    await author.close()


async def test_iterating_a_party_that_failed_raises_the_failure_not_a_quiet_end(tmp_path: Path) -> None:
    """README: ``ClosedResourceError`` is a party closed by you, ``BrokenResourceError`` one that failed under you
    (the cause chained).  ``async for msg in party`` (and over ``events()``) ended quietly when a background task
    died -- to the application, the same as its own close: the failure was only in the log, and visible through
    another call (``next_message``).  Now the iteration yields what was queued, then raises BrokenResourceError
    with the failure as its cause; a party closed by its application still ends its iterations quietly."""
    from streams.api import MemoryTransport

    class Flaky(MemoryTransport):
        fail = False

        async def recv(self) -> list[tuple[bytes, object]]:
            if self.fail:
                raise RuntimeError("transport bug")
            return await super().recv()

    hub = MemoryHub()
    author = await make_author(tmp_path, hub)
    flaky = Flaky(hub, "p1")
    hub._subs["p1"] = flaky
    s1 = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW, flaky, store_options=FAST)
    s2 = await make_sub(tmp_path, hub, P2, "p2", author)
    b1 = await s1.subscribe(timeout=5)
    await s2.subscribe(timeout=5)
    flaky.fail = True
    await author.publish(b1, b"last")  # its batch is received; the next recv fails
    got: list[bytes] = []

    async def read_all() -> None:
        async for m in s1:
            got.append(m.payload)

    async def drain_events() -> None:
        async for _ev in s1.events():
            pass

    async with asyncio.timeout(30):
        with pytest.raises(BrokenResourceError) as failed:
            await read_all()
        with pytest.raises(BrokenResourceError) as failed_events:
            await drain_events()
    assert got == [b"last"]
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert isinstance(failed_events.value.__cause__, RuntimeError)
    await s2.close()  # closed by its application: the iterations end quietly
    async with asyncio.timeout(30):
        assert [m async for m in s2] == []
        async for _ev in s2.events():
            pass
    await s1.close()
    await author.close()


@pytest.mark.parametrize("mode", ["each", "amortized"])
async def test_messages_accepted_before_the_read_right_was_taken_come_again_after_a_restart(
        tmp_path: Path, mode: str) -> None:
    """A subscriber accepted (and acknowledged: the author was told they are on its disk) messages the
    application had not taken, then a re-key took its right to read the branch away: the core keeps no cursor of
    a chain it may not read, and a restart redelivered only the chains the core loaded -- those messages were
    never handed out.  Redelivery goes by the store's cursors now, with what a signature covered of them (an
    amortized chain's checkpoint: they come again as signed, as they were accepted)."""
    from streams.core import CoreConfig, SigningMode
    from streams.policy import Permission

    hub = MemoryHub()
    config = CoreConfig(signing=SigningMode.EACH if mode == "each" else SigningMode.AMORTIZED, checkpoint_every=3)
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST, config=config)
    sub = await make_sub(tmp_path, hub, P1, "p1", author)
    try:
        branch = await sub.subscribe(timeout=5)
        seqs = [await author.publish(branch, b"alert %d" % i) for i in range(3)]
        await author.wait_acknowledged(branch, seqs[-1], timeout=5)
        await author.set_permission(branch, Permission.WRITE)
        for _ in range(500):
            if [b.permission for b in sub.branches()] == [Permission.WRITE]:
                break
            await asyncio.sleep(0.01)
        assert [b.permission for b in sub.branches()] == [Permission.WRITE]
        await sub.close()  # (none of the three taken by the application)
        sub = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1 again"), store_options=FAST)
        got = [await sub.next_message(timeout=5) for _ in range(3)]
        assert [(m.seq, m.payload, m.signed) for m in got] == [(s, b"alert %d" % i, True) for i, s in enumerate(seqs)]
        with pytest.raises(StreamsTimeoutError):
            await sub.next_message(timeout=0.3)
    finally:
        await sub.close()
        await author.close()
