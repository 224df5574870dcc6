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

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig
from streams.errors import ClosedResourceError, StreamsTimeoutError
from streams.events import BranchClosed, Event, Granted, Rejected
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Permission

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
    # The removed member holds no key of epoch 1: the new packet reaches it (the relay of ciphertext it may
    # still be routed) and is refused; nothing is delivered.
    await until(lambda: any(isinstance(e, Rejected) and e.branch == group and e.seq == 2 for e in net.events(P1)),
                "the removed member to refuse the new packet")
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
