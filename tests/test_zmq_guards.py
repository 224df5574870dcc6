"""Guards of the author endpoint (brokerless/endpoints.py) that a mutation-testing review found unexercised: each
test here plays the attack or the bad input one guard is there for, and fails when that guard is weakened.

Over real ZeroMQ sockets on loopback where a peer's behaviour is the point (a raw DEALER plays the hostile or
well-behaved peer); as calls on a real endpoint's public bookkeeping hooks (``penalize``, ``learn_routes``, which
the :class:`streams.api.Author` driver calls) where the guard is about the driver's hints.  Nothing depends on
timing except deadlines for things that must happen; the token-bucket tests use a refill rate so low that no token
comes back during a test, so that the counts are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable

import zmq
import zmq.asyncio

from brokerless import AuthorEndpoint, EndpointConfig
from brokerless.endpoints import _PONG_LEN, PING, PONG, _now_ms
from streams.core import Outgoing
from streams.wire import Packet, encode_frame
from tests.test_zmq_budget import _drain
from tests.test_zmq_credit import HELLO, credit, frame, index, until
from tests.test_zmq_credit import RawPeer as _RawPeer

#: A per-peer budget that refills one token in 1,000 s: within a test, a peer has exactly its burst of tokens.
NO_REFILL = 0.001


def malformed_count(aep: AuthorEndpoint, n: int) -> Callable[[], bool]:
    return lambda: aep.stats.malformed == n


class RawPeer(_RawPeer):
    """A raw DEALER (an attacker, or a well-behaved client), as test_zmq_credit's; also lists the PONGs it got."""

    def pongs(self) -> list[bytes]:
        return [f for f in self.frames if f[:1] == PONG]


@contextlib.asynccontextmanager
async def author(cfg: EndpointConfig) -> AsyncIterator[tuple[AuthorEndpoint, zmq.asyncio.Context]]:
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    try:
        yield aep, ctx
    finally:
        ctx.destroy(linger=0)
        await aep.close()


# -- E01: a ZeroMQ message that is not [routing id, one part] --------------------------------------------------------


async def test_a_two_part_message_is_counted_malformed_and_the_endpoint_keeps_serving_others() -> None:
    """Attack: any peer that can connect sends ONE two-part ZeroMQ message (DEALER ``send_multipart([a, b])``), so
    the author's ROUTER reads three parts.  Pins the ``len(parts) != 2`` guard of ``_on_message``: the message is
    counted malformed and dropped; without it, unpacking ``rid, data`` raises in the reader task, the endpoint dies
    and every well-behaved peer (and the driver) is cut off."""
    async with author(EndpointConfig(heartbeat_ms=100)) as (aep, ctx):
        evil, good = RawPeer(ctx, aep.addresses[0]), RawPeer(ctx, aep.addresses[0])
        try:
            aep.send_many([])  # starts the endpoint's reader (a driver would, with its first recv)
            await evil.sock.send_multipart([HELLO, b"second part"])
            await until(lambda: aep.stats.frames_in == 1, "the two-part message read")
            # A well-behaved peer is still served: its PING gets its session PONG and a reply ...
            await good.sock.send(PING)
            await until(lambda: len(good.pongs()) == 2, "the good peer's PONGs")
            assert all(len(p) == _PONG_LEN for p in good.pongs())
            # ... and its frames reach the driver, whose recv() works.
            await good.sock.send(HELLO)
            batch = await asyncio.wait_for(aep.recv(), 10)
            assert [d for d, _ in batch] == [HELLO]
            assert batch[0][1] in aep.peers()
            # The two-part message was counted malformed and dropped before any record was made: no session PONG
            # went back to its sender, and only the good peer has a record.
            assert aep.stats.malformed == 1 and aep.stats.frames_in == 3
            assert aep.peers() == [batch[0][1]] and evil.frames == []
        finally:
            await evil.close()
            await good.close()


# -- E09: the inbox bound --------------------------------------------------------------------------------------------


async def test_a_flood_of_member_frames_while_the_driver_is_busy_is_dropped_at_the_inbox_bound() -> None:
    """Attack: a peer floods well-formed member-kind frames (PACKETs: not charged to any budget, judged later by
    the core) while the driver is busy and does not call recv().  Pins the ``_inbox_full()`` drop in ``_on_data``:
    the inbox -- the only bound between ZeroMQ's pipe and the driver -- holds at most ``inbox`` frames and the rest
    are counted in ``inbox_dropped``; without it the inbox grows by every frame of the flood."""
    cfg = EndpointConfig(inbox=64, heartbeat_ms=200)
    n = 3000
    async with author(cfg) as (aep, ctx):
        evil = RawPeer(ctx, aep.addresses[0])
        try:
            packet = encode_frame(Packet(os.urandom(32), os.urandom(16), 1, 1, os.urandom(32), 0, os.urandom(24)),
                                  os.urandom(200), None).raw
            await evil.sock.send(packet)
            first = await asyncio.wait_for(aep.recv(), 10)  # the driver takes one batch, then is busy
            assert [d for d, _ in first] == [packet]
            for _ in range(n):
                await evil.sock.send(packet)
            await until(lambda: aep.stats.frames_in == n + 1, "the whole flood read", timeout=60)
            assert aep.stats.malformed == 0 and aep.stats.over_budget == 0  # well-formed, and never charged
            assert aep.stats.inbox_dropped >= n - cfg.inbox
            # The driver comes back: it finds at most `inbox` frames, and every other frame was counted dropped.
            got = await _drain(aep)
            assert len(got) <= cfg.inbox
            assert len(got) + aep.stats.inbox_dropped == n
            assert set(got) == {packet}
        finally:
            await evil.close()


# -- E11: per_peer_malformed is bounded ------------------------------------------------------------------------------


async def test_a_churn_of_connections_sending_garbage_keeps_per_peer_malformed_bounded() -> None:
    """Attack: an unauthenticated peer opens connection after connection, each sending one garbage frame.  Records
    are evicted at ``max_peers``; pins the bound on ``stats.per_peer_malformed`` in ``_malformed`` (at most
    ``max_peers`` entries, the oldest dropped): without it that dict grows by one entry per connection ever made."""
    cfg = EndpointConfig(max_peers=4, heartbeat_ms=200, handshake_hold_ms=0)
    n = 60
    async with author(cfg) as (aep, ctx):
        aep.send_many([])  # starts the endpoint's reader
        last = b""
        for i in range(n):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(aep.addresses[0])
            await s.send(b"garbage that is not a frame")
            await until(malformed_count(aep, i + 1), "the garbage frame counted")
            last = aep.peers()[-1]
            s.close(linger=0)
        assert aep.stats.malformed == n
        assert len(aep.stats.per_peer_malformed) <= cfg.max_peers
        assert aep.stats.per_peer_malformed[last] == 1  # the newest offender is the one kept
        assert aep.stats.peers_evicted >= n - cfg.max_peers


# -- E13/E14: suspension ---------------------------------------------------------------------------------------------


async def test_a_peer_is_suspended_at_exactly_failures_to_suspend_failed_frames() -> None:
    """Bad input: a peer whose frames failed the core's signature/AEAD checks (the driver reports them through
    ``penalize``).  Pins ``peer.failures >= cfg.failures_to_suspend`` (SPEC 10.3): with one failure fewer the
    peer is still served; at exactly ``failures_to_suspend`` it is suspended and its next frame is dropped unread
    -- with the guard weakened to ``>``, it would get one more failed frame in before it is."""
    cfg = EndpointConfig(failures_to_suspend=3, suspend_ms=600_000)
    async with author(cfg) as (aep, ctx):
        peer = RawPeer(ctx, aep.addresses[0])
        try:
            aep.send_many([])
            await peer.sock.send(PING)
            await until(lambda: len(peer.pongs()) == 2, "the session PONG and the reply")
            (rid,) = aep.peers()
            aep.penalize([(rid, cfg.failures_to_suspend - 1)])
            assert aep.stats.peers_suspended == 0
            await peer.sock.send(PING)  # still served
            await until(lambda: len(peer.pongs()) == 3, "a reply while below the threshold")
            aep.penalize([(rid, 1)])  # exactly failures_to_suspend in all
            assert aep.stats.peers_suspended == 1
            await peer.sock.send(HELLO)
            await until(lambda: aep.stats.suspended_dropped == 1, "the suspended peer's frame dropped")
            assert aep.stats.frames_in == 3 and len(peer.pongs()) == 3
            assert await _drain(aep, 0.2) == []  # nothing of the suspended peer reached the driver
        finally:
            await peer.close()


async def test_the_suspension_map_holds_at_most_max_peers_entries() -> None:
    """Attack: many peers (new connections are free) each earn a suspension.  Pins the bound on the suspension map
    in ``penalize`` (at most ``max_peers`` entries, the oldest suspension dropped first): without it, it holds one
    entry per offender ever seen -- unbounded author memory from unauthenticated peers."""
    cfg = EndpointConfig(max_peers=4, failures_to_suspend=3, handshake_hold_ms=0)
    async with author(cfg) as (aep, _):
        rids = [os.urandom(5) for _ in range(50)]
        for r in rids:
            aep._touch(r, _now_ms())  # a record, as a frame from that peer makes one
            aep.penalize([(r, cfg.failures_to_suspend + 1)])
        assert aep.stats.peers_suspended == len(rids)
        assert len(aep._suspended) <= cfg.max_peers
        assert list(aep._suspended) == rids[-cfg.max_peers:]  # the most recent suspensions are kept


# -- E15/E16/E17: the route table ------------------------------------------------------------------------------------


async def test_a_branch_routes_to_at_most_peers_per_branch_peers() -> None:
    """Attack: one member opens many connections and sends a verified member frame on each, so the core hints a
    route for every one (``learn_routes``).  Pins the ``peers_per_branch`` bound in ``_learn``: the branch maps
    only the most recent ``peers_per_branch`` of them; without it, every connection a member opens is routed."""
    cfg = EndpointConfig(max_peers=16, peers_per_branch=2, handshake_hold_ms=0)
    async with author(cfg) as (aep, _):
        branch = os.urandom(16)
        rids = [os.urandom(5) for _ in range(6)]
        for r in rids:
            aep._touch(r, _now_ms())
            aep.learn_routes([(branch, r, True)])
        assert aep.routes(branch) == rids[-cfg.peers_per_branch:]


async def test_the_route_table_holds_at_most_max_branches_branches() -> None:
    """Bad input: the core hints routes for more branches than ``max_branches`` (a member of many branches, or
    many members).  Pins the eviction in ``_learn``: the route table holds at most ``max_branches`` branches, the
    least recently used evicted; without it, one entry per branch ever learned."""
    cfg = EndpointConfig(max_branches=3, handshake_hold_ms=0)
    async with author(cfg) as (aep, _):
        rid = os.urandom(5)
        aep._touch(rid, _now_ms())
        branches = [os.urandom(16) for _ in range(20)]
        for b in branches:
            aep.learn_routes([(b, rid, True)])
        routed = [b for b in branches if aep.routes(b)]
        assert routed == branches[-cfg.max_branches:]
        assert len(aep._routes) <= cfg.max_branches


async def test_no_route_is_learned_for_a_peer_without_a_record() -> None:
    """Bad input: the core's route hint names a peer whose record was evicted or expired between the core's
    verification and the hint.  Pins ``rid in self._peers`` in ``learn_routes``: no route is made; without it, a
    route to a rid with no record is made, which ``_forget`` (going by the records' branches) never removes."""
    async with author(EndpointConfig(handshake_hold_ms=0)) as (aep, _):
        live, gone = os.urandom(5), os.urandom(5)
        aep._touch(live, _now_ms())
        branch = os.urandom(16)
        aep.learn_routes([(branch, gone, True)])
        assert aep.routes(branch) == []
        aep.learn_routes([(branch, live, True)])  # a live peer is routed as usual
        assert aep.routes(branch) == [live]


# -- E19: CREDIT's consumed is capped by what was sent ---------------------------------------------------------------


async def test_a_credit_claiming_more_taken_than_sent_opens_no_more_than_its_window() -> None:
    """Attack: the subscriber itself (or an on-path relay, which sees the session) sends a CREDIT of the right
    session claiming ``consumed = 10**9`` when nothing was sent.  Pins ``taken = min(consumed, sent)`` in
    ``_on_credit``: the report frees nothing more, so the author still sends at most one window; without the cap
    ``consumed`` jumps ahead of ``sent`` and the credit window is gone (every queued frame goes out at once)."""
    cfg = EndpointConfig(heartbeat_ms=100, credit_window_max=20)
    async with author(cfg) as (aep, ctx):
        victim = RawPeer(ctx, aep.addresses[0])
        try:
            aep.send_many([])
            await victim.sock.send(PING)
            await until(lambda: bool(victim.sessions()), "the session PONG")
            session = victim.sessions()[0]
            (rid,) = aep.peers()
            await victim.sock.send(credit(session, 10**9, 10**9, 8))
            await until(lambda: rid in aep.in_flight(), "the CREDIT accepted")
            assert aep.stats.credits == 1 and aep.in_flight()[rid] == 0
            aep.send_many([Outgoing(frame(i), rid) for i in range(50)])
            # Flushed synchronously: one window of 8 handed to ZeroMQ, the rest queued for credit.
            assert aep.in_flight()[rid] == 8 and aep.queue_sizes()[rid] == 42
            await until(lambda: len(victim.data()) == 8, "one window of 8")
            # A genuine report opens exactly what it says.
            await victim.sock.send(credit(session, 8, 8, 8))
            await until(lambda: len(victim.data()) == 16, "the next window")
            assert aep.in_flight()[rid] == 8 and aep.queue_sizes()[rid] == 34
            assert [index(d) for d in victim.data()] == list(range(16))
        finally:
            await victim.close()


# -- E25/E26: PING and stale CREDIT are charged to the peer's budget -------------------------------------------------


async def test_a_ping_flood_is_answered_only_within_the_peers_budget() -> None:
    """Attack: reflection -- a peer floods 1-byte PINGs, each of which would buy a 29-byte PONG and a send.  Pins
    the budget charge on PING in ``_on_message``: at most ``inbound_burst`` replies (no token comes back during
    the test), the rest counted ``over_budget``; without it every PING of the flood is answered."""
    cfg = EndpointConfig(inbound_budget=NO_REFILL, inbound_burst=5)
    n = 1000
    async with author(cfg) as (aep, ctx):
        evil = RawPeer(ctx, aep.addresses[0])
        try:
            aep.send_many([])
            for _ in range(n):
                await evil.sock.send(PING)
            await until(lambda: aep.stats.frames_in == n, "the flood read")
            assert aep.stats.over_budget == n - cfg.inbound_burst
            # The record's session PONG plus one reply per token of the burst: all that was ever sent.
            assert aep.stats.frames_out + aep.stats.send_dropped == 1 + cfg.inbound_burst
            await until(lambda: len(evil.pongs()) == 1 + cfg.inbound_burst, "the PONGs")
            # The flood did not cost the endpoint: another peer is served.
            good = RawPeer(ctx, aep.addresses[0])
            try:
                await good.sock.send(PING)
                await until(lambda: len(good.pongs()) == 2, "the other peer's PONGs")
            finally:
                await good.close()
            assert len(evil.pongs()) == 1 + cfg.inbound_burst
        finally:
            await evil.close()


async def test_a_flood_of_stale_session_credits_is_answered_only_within_the_peers_budget() -> None:
    """Attack: a peer floods CREDITs of a forged (or stale) session; each is answered with a PONG carrying the
    current session (so that a subscriber whose PONG was lost adopts it).  Pins the budget charge on a stale CREDIT
    in ``_on_credit``: at most ``inbound_burst`` such PONGs, the rest counted ``over_budget``; without it, one PONG
    per forged CREDIT (reflection)."""
    cfg = EndpointConfig(inbound_budget=NO_REFILL, inbound_burst=5)
    n = 1000
    async with author(cfg) as (aep, ctx):
        evil = RawPeer(ctx, aep.addresses[0])
        try:
            aep.send_many([])
            forged = credit(os.urandom(8), 0, 0, 10)
            for _ in range(n):
                await evil.sock.send(forged)
            await until(lambda: aep.stats.frames_in == n, "the flood read")
            assert aep.stats.credit_stale == n and aep.stats.credits == 0
            assert aep.stats.over_budget == n - cfg.inbound_burst
            assert aep.stats.frames_out + aep.stats.send_dropped == 1 + cfg.inbound_burst
            await until(lambda: len(evil.pongs()) == 1 + cfg.inbound_burst, "the PONGs")
            (rid,) = aep.peers()
            assert rid not in aep.in_flight()  # and no forged CREDIT opened a window
            assert set(evil.sessions()) == {aep.session_of(rid)}
        finally:
            await evil.close()

