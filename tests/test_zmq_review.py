"""Attacks on the ZeroMQ endpoints from a cold review (SPEC 14, THREATS 8): each test failed before its fix.

Real sockets on tcp loopback; the relay below is an in-process ROUTER/DEALER pair that passes everything and, told
to, injects a message towards the subscriber -- the on-path relay of THREATS "Network and relays are untrusted".
Nothing here depends on timing except deadlines for things that must happen."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from brokerless.endpoints import _PONG_LEN, BUNDLE, BUNDLE_OK, CREDIT, PING, PONG
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig, Outgoing
from streams.errors import LocalProtocolError
from streams.events import BranchClosed, Rejected
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Fetch, Hello, Kind, decode_frame, encode_frame

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
CORE = CoreConfig(fetch_retry_ms=200)
AUTHOR, P1, P2 = (Identity.from_seed(bytes([n]) * 32) for n in (0x01, 0x0A, 0x0B))

HELLO = encode_frame(Hello(b"c" * 32)).raw  # a well-formed frame: reaches the author's inbox with its routing id


def frame(i: int) -> bytes:
    """A data frame as the endpoints see it (they never decode author -> subscriber traffic): numbered."""
    return b"\x95" + i.to_bytes(4, "big") + b"p" * 59


def index(data: bytes) -> int:
    return int.from_bytes(data[1:5], "big")


def unbundle(data: bytes) -> list[bytes]:
    """The frames of a BUNDLE (SPEC 14.1), parsed here independently of the endpoint's own code."""
    out, off = [], 1
    while off < len(data):
        (n,) = struct.unpack_from(">I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


async def until(pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timeout waiting for {what}"
        await asyncio.sleep(0.005)


class Relay:
    """An on-path hop: a ROUTER front for subscribers, one DEALER to the author for each.  It passes every message
    unchanged (unless :meth:`passes` says to drop it), records the author's PONGs, and sends what :meth:`inject` is
    given to the (first) subscriber."""

    def passes(self, data: bytes, up: bool) -> bool:
        """Whether to pass ``data`` on (``up``: subscriber -> author); a subclass drops what it says no to."""
        return True

    def __init__(self, ctx: zmq.asyncio.Context, author_addr: str) -> None:
        self.ctx, self.author_addr = ctx, author_addr
        self.front = ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.bind("tcp://127.0.0.1:0")
        self.address = self.front.getsockopt(zmq.LAST_ENDPOINT).decode()  # type: ignore[union-attr]
        self.backs: dict[bytes, zmq.asyncio.Socket] = {}
        self.pongs: list[bytes] = []
        self.down = 0  #: messages sent to subscribers, injected ones included
        self.task = asyncio.create_task(self._run())

    async def inject(self, data: bytes) -> None:
        self.down += 1
        await self.front.send_multipart([next(iter(self.backs)), data])

    async def inject_up(self, data: bytes) -> None:
        """Send ``data`` to the author on the (first) subscriber's connection, as if the subscriber had."""
        await next(iter(self.backs.values())).send(data)

    async def _run(self) -> None:
        poller = zmq.asyncio.Poller()
        poller.register(self.front, zmq.POLLIN)
        owner: dict[zmq.asyncio.Socket, bytes] = {}
        while True:
            for sock, _ in await poller.poll():
                while True:
                    try:
                        parts = await sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if sock is self.front:
                        rid, data = parts
                        back = self.backs.get(rid)
                        if back is None:
                            back = self.backs[rid] = self.ctx.socket(zmq.DEALER)
                            back.setsockopt(zmq.LINGER, 0)
                            back.connect(self.author_addr)
                            owner[back] = rid
                            poller.register(back, zmq.POLLIN)
                        if self.passes(data, True):
                            await back.send(data)
                    else:
                        (data,) = parts
                        if data[:1] == PONG:
                            self.pongs.append(data)
                        if self.passes(data, False):
                            self.down += 1
                            await self.front.send_multipart([owner[sock], data])

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        for s in (self.front, *self.backs.values()):
            s.close(linger=0)


async def _read(sep: SubscriberEndpoint, got: list[bytes]) -> None:
    while True:
        for data, _ in await sep.recv():
            got += unbundle(data) if data[:1] == BUNDLE else [data]


async def test_one_forged_pong_does_not_stall_the_subscriber_for_good() -> None:
    """A relay injects ONE PONG of another session (the author's instance id, any 8 bytes) into a live connection.
    The subscriber adopts it and reports credit for it; the author answers with its own session's PONG, and the
    subscriber adopts that again -- counting its frames from zero, while the author's record of the session has
    long counted more taken.  The author then took every report of that session for an old one ("moves
    nothing"): once it had sent the window, the connection stayed shut for good -- PONGs kept it alive, so it
    never reconnected, and the FETCH answers that would fill the hole wait for credit too."""
    cfg = EndpointConfig(heartbeat_ms=100, liveness=50, credit_window=16)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    relay = Relay(ctx, aep.addresses[0])
    sep = SubscriberEndpoint(relay.address, cfg)
    got: list[bytes] = []
    reader: asyncio.Task[None] | None = None
    try:
        await sep.send(Outgoing(HELLO))
        data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]
        assert data == HELLO and isinstance(rid, bytes)
        reader = asyncio.create_task(_read(sep, got))
        await until(lambda: rid in aep.in_flight(), "the subscriber's first CREDIT")
        aep.send_many([Outgoing(frame(i), rid) for i in range(100)])  # more than a window: the author counts them
        await until(lambda: len(got) == 100 and aep.in_flight().get(rid) == 0, "the first 100, reported taken")
        real = sep.session
        assert real is not None and relay.pongs
        forged = relay.pongs[-1][:9] + b"F" * 8 + relay.pongs[-1][17:]  # the author's instance, another session
        stale = aep.stats.credit_stale
        await relay.inject(forged)
        # The subscriber reports for the forged session; the author answers with a PONG of its own, re-adopted.
        await until(lambda: aep.stats.credit_stale > stale and sep.session not in (None, b"F" * 8),
                    "the subscriber to adopt the author's session again")
        aep.send_many([Outgoing(frame(100 + i), rid) for i in range(100)])
        await until(lambda: len(got) == 200, "the next 100 frames", timeout=20)
        assert [index(f) for f in got] == list(range(200))
        assert aep.stats.credit_renewals >= 1 and sep.session not in (real, b"F" * 8)  # a new session, both count
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await sep.close()
        await relay.close()
        ctx.term()
        await aep.close()


async def test_a_stranger_that_stops_reading_does_not_stall_the_authors_drain(tmp_path: Path) -> None:
    """``Author.drain()`` (no branch: "everyone") paces a producer to its readers.  A stranger -- no member, no
    credential -- connects, reads its session PONG, reports a window of one frame, sends a HELLO and never reads
    again, only PINGs to stay alive.  The author's answer to the HELLO (ANNOUNCE, CHALLENGE) used up that window,
    and drain() waited for this peer as for a reader: for as long as it stayed connected, the producer published
    nothing more, to anyone (THREATS 8)."""
    cfg = EndpointConfig(heartbeat_ms=100, liveness=30)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    author = await Author.create(tmp_path / "a.db", AUTHOR, "monitor", PW, aep, AllowList.of([P1.did]),
                                 store_options=FAST, config=CORE)
    sep = SubscriberEndpoint(aep.addresses[0], cfg)
    sub = await Subscriber.create(tmp_path / "s.db", P1, AUTHOR.did, author.channel, PW, sep, store_options=FAST,
                                  config=CORE)
    ctx = zmq.asyncio.Context()
    stranger = ctx.socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    keepalive: asyncio.Task[None] | None = None
    try:
        branch = await sub.subscribe(timeout=10)
        stranger.connect(aep.addresses[0])
        await stranger.send(PING)
        pong = await asyncio.wait_for(stranger.recv(), 10)
        assert pong[:1] == PONG and len(pong) == _PONG_LEN
        await stranger.send(CREDIT + pong[9:17] + struct.pack(">QQI", 0, 0, 1))
        await stranger.send(encode_frame(Hello(author.channel)).raw)
        await until(lambda: any(q > 0 for q in aep.queue_sizes().values()), "the answer to wait for its credit")

        async def ping() -> None:
            while True:
                await stranger.send(PING)
                await asyncio.sleep(0.1)

        keepalive = asyncio.create_task(ping())
        for i in range(3):
            await author.publish(branch, b"alert %d" % i)
            await asyncio.wait_for(author.drain(), 15)  # the subscriber reads: the producer goes on
        got = [(await asyncio.wait_for(sub.next_message(), 15)).payload for _ in range(3)]
        assert got == [b"alert %d" % i for i in range(3)]
        await asyncio.wait_for(author.drain(branch), 15)
    finally:
        if keepalive is not None:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        stranger.close(linger=0)
        ctx.term()
        await sub.close()
        await author.close()


async def test_a_forged_bundle_ok_does_not_make_the_author_drop_what_the_subscriber_sends() -> None:
    """The author answers a subscriber's BUNDLE_OK once per session with the most it takes (64 KiB at most).  A relay
    that injects one more BUNDLE_OK claiming far more made the subscriber bundle up to its own limit (256 KiB):
    every BUNDLE over the author's limit is dropped whole as malformed, so from then on everything the subscriber
    sent in one go (a publish_many, the answers to the author's FETCHes) was lost on the way, for as long as the
    session lasted -- with the relay passing everything else honestly."""
    cfg = EndpointConfig(heartbeat_ms=1000, liveness=30)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    relay = Relay(ctx, aep.addresses[0])
    sep = SubscriberEndpoint(relay.address, cfg)
    try:
        await sep.send(Outgoing(HELLO))
        data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]
        assert data == HELLO and isinstance(rid, bytes)
        st = aep.stats
        # Wait for the author's answer to the subscriber's BUNDLE_OK: two frames then travel as one BUNDLE.
        while st.bundles_in == 0:
            sep.send_many([Outgoing(HELLO), Outgoing(HELLO)])
            await until(lambda: st.frames_in >= 3, "the frames")
            await asyncio.sleep(0.05)
        await relay.inject(BUNDLE_OK + struct.pack(">I", 1 << 20))
        await until(lambda: sep.stats.frames_in >= relay.down, "the forged BUNDLE_OK to be read")
        bundles, malformed = st.bundles_in, st.malformed
        sep.send_many([Outgoing(HELLO)] * 2000)  # 96 KiB of frames: over what the author takes in one BUNDLE
        await until(lambda: st.bundles_in >= bundles + 2 or st.malformed > malformed, "the frames to arrive")
        assert st.malformed == malformed, "a BUNDLE over the author's limit, dropped whole"
        await until(lambda: st.bundles_in >= bundles + 2, "the frames, in BUNDLEs the author takes")
    finally:
        await sep.close()
        await relay.close()
        ctx.term()
        await aep.close()


async def test_a_forged_bundle_ok_does_not_make_the_author_send_bundles_the_subscriber_drops() -> None:
    """The mirror image: a subscriber that takes BUNDLEs of at most 4 KiB says so once per session; a relay that
    injects one more BUNDLE_OK on its connection, claiming 1 MiB, made the author bundle for it up to its own limit
    (256 KiB).  The subscriber drops every BUNDLE over what it takes whole, so whatever the author sent it together
    -- a commit's frames, the answers to its FETCHes, which would fill the hole -- was lost for as long as the
    author's record of it lasted."""
    cfg = EndpointConfig(heartbeat_ms=1000, liveness=30)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    relay = Relay(ctx, aep.addresses[0])
    sep = SubscriberEndpoint(relay.address, EndpointConfig(heartbeat_ms=1000, liveness=30, bundle_bytes=4096))
    got: list[bytes] = []
    reader: asyncio.Task[None] | None = None
    try:
        await sep.send(Outgoing(HELLO))
        data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]
        assert data == HELLO and isinstance(rid, bytes)
        reader = asyncio.create_task(_read(sep, got))
        await until(lambda: rid in aep.in_flight(), "the subscriber's first CREDIT (after its BUNDLE_OK)")
        aep.send_many([Outgoing(frame(i), rid) for i in range(2)])
        await until(lambda: len(got) == 2, "two frames")
        assert aep.stats.bundles == 1  # in one BUNDLE: the author has the subscriber's BUNDLE_OK
        stats = aep.stats
        malformed = stats.malformed
        await relay.inject_up(BUNDLE_OK + struct.pack(">I", 1 << 20))
        await relay.inject_up(b"\xff")  # garbage, counted when read: the forged BUNDLE_OK was read before it
        await until(lambda: stats.malformed > malformed, "the forged BUNDLE_OK to be read")
        aep.send_many([Outgoing(frame(2 + i), rid) for i in range(200)])  # 13 KiB
        await until(lambda: len(got) == 202 or sep.stats.malformed > 0, "the frames")
        assert sep.stats.malformed == 0, "a BUNDLE over what the subscriber takes, dropped whole"
        assert [index(f) for f in got] == list(range(202))
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await sep.close()
        await relay.close()
        ctx.term()
        await aep.close()


async def test_a_member_removed_while_offline_is_not_routed_the_groups_frames_when_it_comes_back(
        tmp_path: Path) -> None:
    """SPEC 14.2: the peers of a member removed from a group are forgotten for the group.  One that was offline
    across its removal asks on when it comes back (its catch-up's FETCH of the group); the author answers it --
    the grants through the one that removed it, which close the group on its side -- and the endpoint took every
    reply that names both a peer and a branch for a grant to a member: it routed the group to that connection
    again.  From then on every frame of the group went to the removed member as well: sizes and timing of a
    group it no longer belongs to (undecryptable), and a connection of its that stops reading holds up the
    producer's drain(group) for the members."""
    cfg = EndpointConfig(heartbeat_ms=200, reconnect_min_ms=50, reconnect_max_ms=400)
    ep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    author = await Author.create(tmp_path / "a.db", AUTHOR, "groups", PW, ep, AllowList.of([P1.did, P2.did]),
                                 config=CORE, store_options=FAST)
    subs: list[Subscriber] = []

    async def join(who: Identity) -> tuple[Subscriber, bytes]:
        s = await Subscriber.create(tmp_path / f"{who.did[-6:]}.db", who, AUTHOR.did, author.channel, PW,
                                    SubscriberEndpoint(ep.addresses[0], cfg), config=CORE, store_options=FAST)
        subs.append(s)
        return s, await s.subscribe(timeout=10)

    try:
        s1, own1 = await join(P1)
        s2, _ = await join(P2)
        group = await author.open_group([P1.did, P2.did])
        await author.publish(group, b"to both")
        for s in (s1, s2):
            m = await s.next_message(timeout=15)
            assert (m.branch, m.payload) == (group, b"to both")
        subs.remove(s1)
        await s1.close()
        await author.remove_member(group, P1.did)  # while P1 is offline
        s1 = await Subscriber.open(tmp_path / f"{P1.did[-6:]}.db", PW, SubscriberEndpoint(ep.addresses[0], cfg),
                                   config=CORE, store_options=FAST)
        subs.append(s1)
        seen: list[object] = []

        def closed() -> bool:
            seen.extend(s1.pending_events())
            return any(isinstance(e, BranchClosed) and e.branch == group for e in seen)

        await until(closed, "P1 to learn it was removed")
        await until(lambda: bool(ep.routes(own1)), "P1's new connection to be routed on its own branch")
        (rid1,) = ep.routes(own1)
        for i in range(3):
            await author.publish(group, b"P2 only %d" % i)
        got = []
        while len(got) < 3:
            m = await s2.next_message(timeout=15)
            if m.branch == group:
                got.append(m.payload)
        assert got == [b"P2 only %d" % i for i in range(3)]
        assert rid1 not in ep.routes(group)
        await asyncio.sleep(0.3)  # frames sent to P1 at the same time would be in by now
        seen.extend(s1.pending_events())
        assert not [e for e in seen if isinstance(e, Rejected) and e.branch == group and e.seq]
    finally:
        for s in subs:
            await s.close()
        await author.close()


async def test_every_connection_of_a_member_removed_from_a_group_is_forgotten_for_it(tmp_path: Path) -> None:
    """The author forgets the peers of a member removed from a group (SPEC 14.2) from its record of the peers each
    member's verified FETCHes came from -- which keeps the latest 4 (reconnects leave dead routing ids behind).
    A member that opens a fifth connection and FETCHes the group on each (signed, bound to that connection: each
    teaches a route) kept the oldest routed after its removal: that connection went on getting every frame of
    the group -- and, not reading, held up the producer's drain(group) for the members left."""
    cfg = EndpointConfig(heartbeat_ms=200, liveness=30)
    ep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    author = await Author.create(tmp_path / "a.db", AUTHOR, "groups", PW, ep, AllowList.of([P1.did, P2.did]),
                                 config=CORE, store_options=FAST)
    subs: list[Subscriber] = []
    ctx = zmq.asyncio.Context()
    socks: list[zmq.asyncio.Socket] = []
    try:
        for who in (P1, P2):
            s = await Subscriber.create(tmp_path / f"{who.did[-6:]}.db", who, AUTHOR.did, author.channel, PW,
                                        SubscriberEndpoint(ep.addresses[0], cfg), config=CORE, store_options=FAST)
            subs.append(s)
            await s.subscribe(timeout=10)
        group = await author.open_group([P1.did, P2.did])  # P1 is member 1
        await author.publish(group, b"to both")
        for s in subs:
            assert (await s.next_message(timeout=15)).payload == b"to both"
        routed = len(ep.routes(group))
        for _ in range(5):  # P1's own extra connections
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.connect(ep.addresses[0])
            socks.append(d)
            await d.send(PING)
            pong = await asyncio.wait_for(d.recv(), 10)
            assert pong[:1] == PONG
            await d.send(encode_frame(Fetch(author.channel, group, 0, 1, 1, 1), pong[9:17], P1.sign).raw)
            while (await asyncio.wait_for(d.recv(), 10))[:1] != b"\x95":  # the answer: verified, routed
                pass
        assert len(ep.routes(group)) > routed
        await author.remove_member(group, P1.did)
        await until(lambda: len(ep.routes(group)) == routed - 1, "P1's peers to be forgotten for the group")
        for d in socks:  # what reached them so far
            while await d.poll(0):
                await d.recv()
        for i in range(3):
            await author.publish(group, b"P2 only %d" % i)
        p2 = subs[1]
        got = []
        while len(got) < 3:
            m = await p2.next_message(timeout=15)
            if m.branch == group:
                got.append(m.payload)
        assert got == [b"P2 only %d" % i for i in range(3)]
        await asyncio.sleep(0.3)  # frames sent to P1's connections at the same time would be in by now
        late = []  # packets after the one each FETCH asked for (seq 1): the group's, after the removal
        for d in socks:
            while await d.poll(0):
                data = await d.recv()
                if data[:1] == b"\x95":
                    f = decode_frame(data)
                    if f.kind is Kind.PACKET and f.head.seq > 1:
                        late.append(f.head.seq)
        assert not late, late
    finally:
        for d in socks:
            d.close(linger=0)
        ctx.term()
        for s in subs:
            await s.close()
        await author.close()


async def test_a_tcp_port_libzmq_would_read_as_another_is_refused() -> None:
    """libzmq reads a tcp port with ``strtol`` and takes it modulo 65536: a sign, a leading space or trailing junk
    bound another port than the one written (``:-1`` bound 65535, ``:+99999`` 34463, ``:5555x`` 5555) without a
    word, and a connect to ``:5555x`` went to 5555.  Only digits up to 65535 (or ``*`` to bind any) are taken."""
    for port in ("-1", "+99999", " 99999", "99999x", "5555x", "1e5", "\u0665\u0665\u0665\u0665", "65536"):
        address = f"tcp://127.0.0.1:{port}"
        with pytest.raises(LocalProtocolError, match="port"):
            await AuthorEndpoint(address).close()
        with pytest.raises(LocalProtocolError, match="port"):
            await SubscriberEndpoint(address).close()
    for port in ("*", "0"):  # still taken: any port
        await AuthorEndpoint(f"tcp://127.0.0.1:{port}").close()
    await SubscriberEndpoint("tcp://127.0.0.1:65535").close()  # the bound (a connect waits for a listener)


async def test_a_bracketed_ipv6_source_address_without_a_port_is_still_taken() -> None:
    """A connect may name its source address (``tcp://SOURCE;ADDRESS:PORT``), and libzmq takes a source without a
    port.  The port check read an IPv6 source in brackets, ``[::1]``, as host ``[:`` with port ``1]`` and refused
    the address as "port '1]' is not a number"; libzmq itself takes it.  Junk after a port is still refused."""
    await SubscriberEndpoint("tcp://[::1];[::1]:5555").close()
    await SubscriberEndpoint("tcp://[fe80::1%lo];[::1]:5555").close()
    with pytest.raises(LocalProtocolError, match="port"):
        await SubscriberEndpoint("tcp://[::1];[::1]:5555x").close()
    with pytest.raises(LocalProtocolError, match="port"):
        await SubscriberEndpoint("tcp://[::1]:-1;[::1]:5555").close()


async def test_limits_forged_into_one_pong_do_not_outlast_a_few_heartbeats_of_a_busy_stream() -> None:
    """A relay injects one PONG of the current session with the author's limits forged to a window of one frame:
    the subscriber then reports a window of 1 (a CREDIT per frame, a frame per round trip: 11x slower on loopback).
    It PINGed only when idle, so while frames kept flowing no PONG came to restore the author's real limits -- one
    injected frame slowed the stream for as long as it lasted.  It now PINGs every few heartbeats, busy or not."""
    cfg = EndpointConfig(heartbeat_ms=100, liveness=5)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    relay = Relay(ctx, aep.addresses[0])
    sep = SubscriberEndpoint(relay.address, cfg)
    tasks: list[asyncio.Task[None]] = []
    try:
        await sep.send(Outgoing(HELLO))
        _data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]

        async def subscriber_driver() -> None:
            while True:
                await sep.recv()

        async def author_driver() -> None:
            while True:
                await aep.recv()

        async def stream() -> None:  # never quiet for a heartbeat
            i = 0
            while True:
                aep.send_many([Outgoing(frame(i + k), rid) for k in range(20)])
                i += 20
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(f()) for f in (subscriber_driver, author_driver, stream)]
        end = time.monotonic() + 10
        while sep.author_limits is None or sep.session is None:
            assert time.monotonic() < end, "no PONG with the author's limits"
            await asyncio.sleep(0.01)
        real = sep.author_limits
        await relay.inject(PONG + sep.author_instance + sep.session + struct.pack(">IQ", 1, 0))
        end = time.monotonic() + 5
        while sep.author_limits == real:
            assert time.monotonic() < end, "the forged PONG never arrived"
            await asyncio.sleep(0.001)
        assert sep.author_limits == (1, 0)
        forged_at = time.monotonic()
        while sep.author_limits != real:
            assert time.monotonic() - forged_at < 2.0, "forged limits outlasted 20 heartbeats of a busy stream"
            await asyncio.sleep(0.01)
        assert sep.stats.frames_in > 0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sep.close()
        await relay.close()
        ctx.term()
        await aep.close()
