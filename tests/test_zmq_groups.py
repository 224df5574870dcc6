"""Grants and revocations over the real ZeroMQ endpoints (SPEC 9.5, 14.2): group branches reach their members,
and a member that was offline across re-keys or a revocation learns them when it comes back.

The endpoints route a branch's frames only to the peers they learned for it, so these are the paths that the
in-memory hub (which hands every frame to everyone) cannot show.  Parties run in this process on tcp loopback,
with real SQLite stores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig
from streams.errors import ClosedResourceError, StreamsTimeoutError
from streams.events import BranchClosed, Event, Granted, Rejected
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Fetch, Kind, Permission, decode_frame, encode_frame

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
CORE = CoreConfig(fetch_retry_ms=200)
EP = EndpointConfig(heartbeat_ms=200, reconnect_min_ms=50, reconnect_max_ms=400)
AUTHOR = Identity.from_seed(b"\x01" * 32)
P1, P2, P3 = (Identity.from_seed(bytes([n]) * 32) for n in (0x0A, 0x0B, 0x0C))


async def until(pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timeout waiting for {what}"
        await asyncio.sleep(0.01)


class Parties:
    def __init__(self, tmp: Path, author: Author, addr: str) -> None:
        self.tmp, self.author, self.addr = tmp, author, addr
        self.subs: dict[str, Subscriber] = {}
        self.seen: dict[str, list[Event]] = {}

    def events(self, who: Identity) -> list[Event]:
        """Every event ``who``'s subscriber reported so far (taken from it and kept here)."""
        seen = self.seen.setdefault(who.did, [])
        seen += self.subs[who.did].pending_events()
        return seen

    async def join(self, who: Identity) -> tuple[Subscriber, bytes]:
        """A new subscriber for ``who``, subscribed: (it, its own branch)."""
        s = await Subscriber.create(self.tmp / f"{who.did[-6:]}.db", who, AUTHOR.did, self.author.channel, PW,
                                    SubscriberEndpoint(self.addr, EP), config=CORE, store_options=FAST)
        self.subs[who.did] = s
        return s, await s.subscribe(timeout=10)

    async def leave(self, who: Identity) -> None:
        await self.subs.pop(who.did).close()

    async def back(self, who: Identity) -> Subscriber:
        s = await Subscriber.open(self.tmp / f"{who.did[-6:]}.db", PW, SubscriberEndpoint(self.addr, EP),
                                  config=CORE, store_options=FAST)
        self.subs[who.did] = s
        return s


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Parties]:
    ep = AuthorEndpoint("tcp://127.0.0.1:0", EP)
    author = await Author.create(tmp_path / "author.db", AUTHOR, "groups", PW, ep,
                                 AllowList.of([P1.did, P2.did, P3.did]), config=CORE, store_options=FAST)
    parties = Parties(tmp_path, author, ep.addresses[0])
    try:
        yield parties
    finally:
        for s in parties.subs.values():
            await s.close()
        await author.close()


async def payloads(s: Subscriber, branch: bytes, n: int) -> list[bytes]:
    """The next ``n`` payloads ``s`` gets on ``branch`` (others are skipped), each checked to be the author's."""
    out: list[bytes] = []
    while len(out) < n:
        m = await s.next_message(timeout=15)
        if m.branch == branch:
            assert m.publisher == 0 and m.publisher_did == AUTHOR.did and m.signed
            out.append(m.payload)
    return out


async def test_a_group_reaches_its_members_also_one_that_subscribes_after_it_opened(net: Parties) -> None:
    s1, _ = await net.join(P1)
    s2, _ = await net.join(P2)
    group = await net.author.open_group([P1.did, P2.did, P3.did])
    for i in range(3):
        await net.author.publish(group, b"broadcast %d" % i)
    # The group's grant went along each connected member's own branch; the messages follow once the member
    # asked for them (its first frames naming the group teach the author's endpoint the route).
    assert await payloads(s1, group, 3) == [b"broadcast 0", b"broadcast 1", b"broadcast 2"]
    assert await payloads(s2, group, 3) == [b"broadcast 0", b"broadcast 1", b"broadcast 2"]
    # P3 subscribes only now: its grant sync brings the group, and the group's messages so far.
    s3, _ = await net.join(P3)
    assert await payloads(s3, group, 3) == [b"broadcast 0", b"broadcast 1", b"broadcast 2"]
    assert any(isinstance(e, Granted) and e.branch == group for e in net.events(P3))
    # Live from now on, to all three; and they acknowledge it (on their disks).
    seq = await net.author.publish(group, b"live")
    for s in (s1, s2, s3):
        assert await payloads(s, group, 1) == [b"live"]
    await net.author.wait_acknowledged(group, seq, timeout=15)
    assert [b.epoch for b in s3.branches() if b.id == group] == [0]


async def test_a_member_offline_across_two_rekeys_gets_every_message_and_the_current_keys(net: Parties) -> None:
    s1, branch = await net.join(P1)
    await net.author.publish(branch, b"epoch 0")
    assert await payloads(s1, branch, 1) == [b"epoch 0"]
    await net.leave(P1)
    await net.author.set_permission(branch, Permission.READ)  # epoch 1
    await net.author.publish(branch, b"epoch 1")
    await net.author.set_permission(branch, Permission.READ_WRITE)  # epoch 2
    await net.author.publish(branch, b"epoch 2")
    s1 = await net.back(P1)
    # Grant sync: both grants, in order (each extends the one before), then the messages under their keys.
    assert await payloads(s1, branch, 2) == [b"epoch 1", b"epoch 2"]
    [info] = [b for b in s1.branches() if b.id == branch]
    assert (info.epoch, info.permission, info.open) == (2, Permission.READ_WRITE, True)
    assert [e.epoch for e in net.events(P1) if isinstance(e, Granted)] == [1, 2]
    # It may write again, under the epoch-2 key, and the author takes it.
    seq = await s1.publish(branch, b"writes again")
    await s1.wait_acknowledged(branch, seq, timeout=15)
    got = await net.author.next_message(timeout=15)
    assert (got.branch, got.payload, got.publisher_did) == (branch, b"writes again", P1.did)


async def test_a_group_member_offline_across_a_removal_keeps_reading_and_the_removed_one_reads_nothing(
        net: Parties) -> None:
    s1, _ = await net.join(P1)
    s2, _ = await net.join(P2)
    group = await net.author.open_group([P1.did, P2.did])
    await net.author.publish(group, b"to both")
    assert await payloads(s1, group, 1) == [b"to both"]
    assert await payloads(s2, group, 1) == [b"to both"]
    await net.leave(P2)
    await net.author.remove_member(group, P1.did)  # re-key: epoch 1, P2 only
    await net.author.publish(group, b"after the removal")
    s2 = await net.back(P2)
    assert await payloads(s2, group, 1) == [b"after the removal"]
    assert [b.epoch for b in s2.branches() if b.id == group] == [1]
    # The removed member holds no key of epoch 1, and its peer is no longer routed the group's frames: nothing
    # of it is delivered (a packet that reached it anyway would be refused: see the next tests).
    with pytest.raises(StreamsTimeoutError):
        await s1.next_message(timeout=0.3)


async def test_a_subscriber_revoked_while_offline_learns_it_when_it_comes_back(net: Parties) -> None:
    s1, branch = await net.join(P1)
    await net.leave(P1)
    await net.author.revoke(branch)
    s1 = await net.back(P1)
    await until(lambda: not next(b for b in s1.branches() if b.id == branch).open, "the branch to close")
    assert any(isinstance(e, BranchClosed) and e.branch == branch for e in net.events(P1))
    with pytest.raises(ClosedResourceError):
        await s1.publish(branch, b"too late")


async def test_forged_frames_neither_evict_members_nor_receive_a_groups_traffic(net: Parties) -> None:
    """An outsider who knows a group's id (it is in the clear on the wire) sends FETCHes naming it from many
    connections, signed by a key that is no member's.  The author's endpoint maps routes only from what the core
    verified: the members keep receiving, and the outsider gets nothing of the group."""
    s1, _ = await net.join(P1)
    s2, _ = await net.join(P2)
    group = await net.author.open_group([P1.did, P2.did])
    await net.author.publish(group, b"before")
    for s in (s1, s2):
        assert await payloads(s, group, 1) == [b"before"]
    mallory = Identity.from_seed(b"\x66" * 32)
    ctx = zmq.asyncio.Context()
    socks = []
    try:
        for _ in range(20):
            d = ctx.socket(zmq.DEALER)
            d.connect(net.addr)
            socks.append(d)
            await d.send(encode_frame(Fetch(net.author.channel, group, 0, 1, 1, 1), b"", mallory.sign).raw)
        await until(lambda: net.author._transport.stats.frames_in >= 20, "the forged frames")  # type: ignore[attr-defined]
        for i in range(3):
            await net.author.publish(group, b"after %d" % i)
        for s in (s1, s2):
            assert await payloads(s, group, 3) == [b"after 0", b"after 1", b"after 2"]
        got: list[Kind] = []
        for d in socks:
            while await d.poll(0):
                data = await d.recv()
                if data[:1] == b"\x95":
                    got.append(decode_frame(data).kind)
        assert Kind.PACKET not in got and Kind.HEAD not in got and Kind.GRANT not in got, got
    finally:
        for d in socks:
            d.close(0)
        ctx.term()


async def test_every_member_of_a_group_larger_than_eight_gets_every_message(tmp_path: Path) -> None:
    """Routes per branch used to be capped at 8 (least recently seen evicted), so a larger group's members
    pushed each other out; here, with every member fetching at once, the old code happened to recover them all by
    gap fill (idle members were seen stuck), so this is a regression check of a group beyond 8, not a reproduction."""
    members = [Identity.from_seed(bytes([0x20 + i]) * 32) for i in range(12)]
    ep = AuthorEndpoint("tcp://127.0.0.1:0", EP)
    author = await Author.create(tmp_path / "author.db", AUTHOR, "big", PW, ep,
                                 AllowList.of([m.did for m in members]), config=CORE, store_options=FAST)
    subs = []
    try:
        for m in members:
            s = await Subscriber.create(tmp_path / f"{m.did[-6:]}.db", m, AUTHOR.did, author.channel, PW,
                                        SubscriberEndpoint(ep.addresses[0], EP), config=CORE, store_options=FAST)
            subs.append(s)
            await s.subscribe(timeout=10)
        group = await author.open_group([m.did for m in members])
        for i in range(5):
            await author.publish(group, b"to all %d" % i)
        for s in subs:
            assert await payloads(s, group, 5) == [b"to all %d" % i for i in range(5)]
    finally:
        for s in subs:
            await s.close()
        await author.close()


async def test_a_removed_member_no_longer_receives_the_groups_packets(net: Parties) -> None:
    s1, _ = await net.join(P1)
    s2, _ = await net.join(P2)
    group = await net.author.open_group([P1.did, P2.did])
    await net.author.publish(group, b"to both")
    for s in (s1, s2):
        assert await payloads(s, group, 1) == [b"to both"]
    await net.author.remove_member(group, P1.did)
    for i in range(3):
        await net.author.publish(group, b"P2 only %d" % i)
    assert await payloads(s2, group, 3) == [b"P2 only 0", b"P2 only 1", b"P2 only 2"]
    await asyncio.sleep(0.3)  # frames sent to P1 at the same time would be in by now
    # Its peer was forgotten for the group: its packets, even undecryptable, no longer reach it.
    assert not [e for e in net.events(P1) if isinstance(e, Rejected) and e.branch == group and e.seq]
    with pytest.raises(StreamsTimeoutError):
        await s1.next_message(timeout=0.2)
