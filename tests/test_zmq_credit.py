"""Credit-based flow control author -> subscriber (SPEC 14.4, THREATS 8), over real ZeroMQ sockets on loopback.

A subscriber endpoint reports, per session of the author's record of it, how many data frames arrived and how
many its driver took; the author sends a data frame only while ``sent - consumed < window``.  These tests stall
a subscriber, attack the credits with a raw DEALER (forged, stale, replayed, malformed), drop frames on the way
through a relay, restart the author under a subscriber, and check that peers which never send a CREDIT get an
initial window and no more, and that the bytes in flight to a peer are bounded whatever window it asks for.
Nothing here depends on timing except deadlines for things that must happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from brokerless.endpoints import _CREDIT_LEN, _PONG_LEN, BUNDLE, CREDIT, PING, PONG
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig, Outgoing
from streams.errors import ClosedResourceError
from streams.events import GapDetected, MessageReceived
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Hello, encode_frame

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
CORE = CoreConfig(fetch_retry_ms=200)
AUTHOR, P1 = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x0a" * 32)
HELLO = encode_frame(Hello(b"c" * 32)).raw  # a well-formed frame: reaches the author's inbox with its routing id


def frame(i: int) -> bytes:
    """A data frame as the endpoints see it (they never decode author -> subscriber traffic): numbered."""
    return b"\x95" + i.to_bytes(4, "big") + b"p" * 59


def index(data: bytes) -> int:
    return int.from_bytes(data[1:5], "big")


def credit(session: bytes, received: int, consumed: int, window: int) -> bytes:
    return CREDIT + session + struct.pack(">QQI", received, consumed, window)


async def until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timeout waiting for {what}"
        await asyncio.sleep(0.005)


async def connect_subscriber(aep: AuthorEndpoint, cfg: EndpointConfig) -> tuple[SubscriberEndpoint, bytes]:
    """A SubscriberEndpoint that has made itself known (the author's routing id for it) and opted in."""
    sep = SubscriberEndpoint(aep.addresses[0], cfg)
    await sep.send(Outgoing(HELLO))
    data, rid = (await aep.recv())[0]
    assert data == HELLO and isinstance(rid, bytes)
    await until(lambda: rid in aep.in_flight(), "the subscriber's first CREDIT")
    return sep, rid


async def test_a_subscriber_that_does_not_read_is_sent_one_window_then_everything_kept_arrives_in_order() -> None:
    cfg = EndpointConfig(credit_window=2000)
    window, n = cfg.credit_window, 20_000
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    sep, rid = await connect_subscriber(aep, cfg)
    peak = {"in_flight": 0, "inbox": 0}

    def sample() -> None:
        peak["in_flight"] = max(peak["in_flight"], aep.in_flight().get(rid, 0))
        peak["inbox"] = max(peak["inbox"], sep.inbox_size())

    try:
        for lo in range(0, n, 500):
            # Paced so that no frame is dropped merely because ZeroMQ's pipe was full for a moment: between
            # chunks the queue drains to the pipe, or waits for credit.
            await until(lambda: aep.queue_sizes()[rid] == 0 or aep.in_flight()[rid] == window, "a flushed queue")
            aep.send_many([Outgoing(frame(i), rid) for i in range(lo, lo + 500)])
            sample()
        # The driver never called recv: exactly one window crossed the wire -- not the 10k inbox, not the HWM --
        # and the bounded queue holds the next frames; the rest was dropped and counted.
        await until(lambda: sep.received == window, "one window delivered")
        sample()
        assert sep.received == window and sep.inbox_size() == window
        assert sep.stats.frames_in - sep.received <= 3  # plus the session PONG(s)
        assert aep.in_flight()[rid] == window
        queued = aep.queue_sizes()[rid]
        assert queued == cfg.send_queue
        assert aep.stats.send_dropped == n - window - queued
        assert n - window - cfg.send_queue <= aep.stats.credit_blocked <= n - window
        # The application reads again: the queue drains as credit comes back; everything not dropped arrives,
        # in order, and the author never had more than a window in flight.
        got: list[int] = []
        while len(got) < window + queued:
            got += [index(d) for d, _ in await asyncio.wait_for(sep.recv(), 10)]
            sample()
        assert got == sorted(set(got)) and got[:window] == list(range(window))
        assert len(got) == n - aep.stats.send_dropped
        assert peak["in_flight"] <= window and peak["inbox"] <= window
        await until(lambda: aep.in_flight()[rid] == 0, "the last CREDIT")
        assert aep.queue_sizes()[rid] == 0 and sep.stats.credits > 1
    finally:
        await sep.close()
        await aep.close()


async def test_a_stalled_subscriber_is_gated_alone_and_the_other_gets_everything() -> None:
    # A queue longer than the window: whatever ZeroMQ's pipe to the stalled peer accepts at any moment, the
    # window is what stops it (a frame dropped from a full queue means a queue's worth is still to be sent).
    cfg = EndpointConfig(credit_window=2000, send_queue=3000)
    window, n = cfg.credit_window, 6000
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    stalled, r_stalled = await connect_subscriber(aep, cfg)
    reader, r_reader = await connect_subscriber(aep, cfg)
    got: list[int] = []
    peak_reader = 0

    async def read() -> None:
        while True:
            got.extend(index(d) for d, _ in await reader.recv())

    task = asyncio.create_task(read())
    try:
        for lo in range(0, n, 200):
            # A producer that paces itself by the reader's queue alone: the stalled peer never slows it.
            await until(lambda: aep.queue_sizes()[r_reader] < 500, "the reader's queue to drain")
            aep.send_many([Outgoing(frame(i), rid) for i in range(lo, lo + 200) for rid in (r_stalled, r_reader)])
            peak_reader = max(peak_reader, aep.in_flight()[r_reader])
            await asyncio.sleep(0)
        await until(lambda: len(got) == n, "every frame at the reading subscriber")
        assert got == list(range(n))
        assert peak_reader <= window
        # The stalled one: exactly one window sent, its bounded queue, the rest dropped (gap fill's job).
        await until(lambda: stalled.received == window, "the stalled subscriber's window")
        assert stalled.inbox_size() == window and aep.in_flight()[r_stalled] == window
        queued = aep.queue_sizes()[r_stalled]
        assert 0 < queued <= cfg.send_queue
        assert aep.stats.send_dropped == n - window - queued  # all of them the stalled peer's
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await stalled.close()
        await reader.close()
        await aep.close()


class RawPeer:
    """A raw DEALER (an attacker or an old tool): what it receives is collected by a background task."""

    def __init__(self, ctx: zmq.asyncio.Context, addr: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(addr)
        self.frames: list[bytes] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            self.frames.append(await self.sock.recv())

    def data(self) -> list[bytes]:
        return [f for f in self.frames if f[:1] == b"\x95"]

    def sessions(self) -> list[bytes]:
        return [f[9:17] for f in self.frames if f[:1] == PONG]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.sock.close(linger=0)


async def test_forged_stale_replayed_and_malformed_credits_open_nothing() -> None:
    cfg = EndpointConfig(heartbeat_ms=100, liveness=10, credit_window_max=20)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    victim, attacker = RawPeer(ctx, aep.addresses[0]), RawPeer(ctx, aep.addresses[0])
    st = aep.stats
    aep.send_many([])  # starts the endpoint's reader (a driver would, with its first recv)
    try:
        await victim.sock.send(PING)
        await until(lambda: bool(victim.sessions()), "the session PONG")
        assert len(victim.frames[0]) == _PONG_LEN and victim.frames[0][:1] == PONG  # the very first frame
        s1 = victim.sessions()[0]
        (rid,) = aep.peers()
        assert rid not in aep.in_flight()  # not opted in before a CREDIT
        await victim.sock.send(credit(s1, 0, 0, 8))
        await until(lambda: rid in aep.in_flight(), "opt-in")
        aep.send_many([Outgoing(frame(i), rid) for i in range(50)])
        await until(lambda: len(victim.data()) == 8, "one window of 8")
        assert aep.in_flight()[rid] == 8 and aep.queue_sizes()[rid] == 42
        await victim.sock.send(credit(s1, 8, 4, 8))  # took 4 of them: 4 more may come
        await until(lambda: len(victim.data()) == 12, "4 more")
        assert aep.in_flight()[rid] == 8 and aep.queue_sizes()[rid] == 38

        async def refused(msg: bytes, sock: zmq.asyncio.Socket, counter: str) -> None:
            before = getattr(st, counter)
            await sock.send(msg)
            await until(lambda: getattr(st, counter) == before + 1, counter)
            # Processed (a CREDIT is handled and flushed synchronously): the window did not move.
            assert aep.in_flight()[rid] == 8 and aep.queue_sizes()[rid] == 38

        await refused(credit(b"\xff" * 8, 8, 8, 8), victim.sock, "credit_stale")  # a wrong session
        await refused(credit(s1, 8, 8, 8), attacker.sock, "credit_stale")  # the victim's session, another peer
        await refused(CREDIT + s1 + b"\x00" * 5, victim.sock, "malformed")  # wrong length
        await refused(credit(s1, 8, 0, 8), victim.sock, "credits")  # a replay of an older report: no regress
        assert len(victim.data()) == 12
        # A genuine report opens exactly what it says, and a huge window is capped (credit_window_max).
        await victim.sock.send(credit(s1, 12, 12, 0xFFFF_FFFF))
        await until(lambda: len(victim.data()) == 32, "12 + 20 frames")
        assert aep.in_flight()[rid] == 20 and aep.queue_sizes()[rid] == 18
        assert [index(d) for d in victim.data()] == list(range(32))

        # The record expires (the victim goes silent); its next frame creates a new record with a new session.
        await until(lambda: rid not in aep.peers(), "the silent peer's record to expire")
        await victim.sock.send(PING)
        await until(lambda: len(set(victim.sessions())) == 2, "a new session")
        s2 = victim.sessions()[-1]
        assert s2 != s1
        await victim.sock.send(credit(s2, 0, 0, 4))
        await until(lambda: rid in aep.in_flight(), "opt-in to the new session")
        aep.send_many([Outgoing(frame(100 + i), rid) for i in range(10)])
        await until(lambda: len(victim.data()) == 36, "one window of 4 in the new session")
        # The previous session's credit, however generous, is refused.
        before = st.credit_stale
        await victim.sock.send(credit(s1, 1000, 1000, 20))
        await until(lambda: st.credit_stale == before + 1, "stale")
        assert aep.in_flight()[rid] == 4 and aep.queue_sizes()[rid] == 6
        # And the endpoint keeps serving: the right credit moves the window.
        await victim.sock.send(credit(s2, 4, 4, 4))
        await until(lambda: len(victim.data()) == 40, "the next window")
        assert [index(d) for d in victim.data()[32:]] == list(range(100, 108))
        assert st.malformed == 1 and st.per_peer_malformed[rid] == 1
    finally:
        await victim.close()
        await attacker.close()
        ctx.term()
        await aep.close()


async def test_a_peer_that_never_sends_credit_gets_the_initial_window_then_waits_for_one() -> None:
    """A raw client that reads but never sends a CREDIT gets ``credit_window_max`` frames of its session, in
    order, and then nothing more until it reports: the rest waits in the bounded queue.  Its CREDIT opens the
    window like anyone's."""
    cfg = EndpointConfig(credit_window_max=300)  # the raw peer never sends a PING: its record lives 3 s of silence
    n = 500
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    raw = RawPeer(ctx, aep.addresses[0])
    aep.send_many([])
    try:
        await raw.sock.send(PING)
        await until(lambda: bool(aep.peers()), "the peer")
        (rid,) = aep.peers()
        aep.send_many([Outgoing(frame(i), rid) for i in range(n)])
        await until(lambda: len(raw.data()) == 300, "the initial window")
        for _ in range(20):
            await asyncio.sleep(0.005)
            assert len(raw.data()) == 300
        assert aep.queue_sizes()[rid] == n - 300 and aep.stats.credit_blocked == n - 300
        assert raw.frames[0][:1] == PONG  # the session announcement comes first
        (session,) = set(raw.sessions())  # announced, and repeated in the reply to its PING
        await raw.sock.send(credit(session, 300, 300, 1000))
        await until(lambda: len(raw.data()) == n, "every frame")
        assert [index(d) for d in raw.data()] == list(range(n))
        assert aep.in_flight() == {rid: 200} and aep.stats.send_dropped == 0
    finally:
        await raw.close()
        ctx.term()
        await aep.close()


@pytest.mark.parametrize("reports", [False, True], ids=["never-credits", "asks-for-the-largest-window"])
async def test_a_peer_that_stops_reading_holds_at_most_window_bytes_in_flight(tmp_path: Path, reports: bool) -> None:
    """A member that never reads, with 64 KiB frames: whether it sends no CREDIT or claims the largest window
    (it knows its own session), the author hands ZeroMQ at most ``window_bytes`` plus one frame for it -- not
    ``sndhwm`` (1000) frames, a gigabyte of 1 MiB frames -- and keeps at most ``send_queue_bytes`` queued."""
    size = 65536
    cfg = EndpointConfig(window_bytes=1 << 20, send_queue_bytes=1 << 20)
    async with silent_member(f"ipc://{tmp_path}/a.sock", cfg, rcvhwm=2) as (aep, rid, dealer):
        if reports:
            pong = await dealer.recv()  # the one frame it reads: its session
            await dealer.send(credit(pong[9:17], 0, 0, 1 << 30))
            await until(lambda: aep.in_flight() == {rid: 0}, "the CREDIT")
            assert aep._peers[rid].window == cfg.credit_window_max
        out0 = aep.stats.frames_out
        for i in range(200):  # 13 MB
            aep.send_many([Outgoing(big(i, size), rid)])
            await asyncio.sleep(0)
        handed = aep.stats.frames_out - out0
        assert handed == cfg.window_bytes // size  # 16 frames: the 17th found a full window
        assert aep.in_flight_bytes()[rid] == handed * size <= cfg.window_bytes + size
        assert aep.queue_bytes()[rid] <= cfg.send_queue_bytes and aep.stats.send_dropped > 0
        assert aep.stats.send_dropped + aep.queue_sizes()[rid] + handed == 200


async def test_a_window_of_zero_opts_out_and_a_window_over_the_inbox_is_clamped_to_it() -> None:
    aep = AuthorEndpoint("tcp://127.0.0.1:0", EndpointConfig())
    off = SubscriberEndpoint(aep.addresses[0], EndpointConfig(credit_window=0))
    small, r_small = await connect_subscriber(aep, EndpointConfig(inbox=100))  # default window 8000 > inbox
    try:
        await off.send(Outgoing(HELLO))
        (_, r_off), = await aep.recv()
        assert isinstance(r_off, bytes)
        aep.send_many([Outgoing(frame(i), rid) for i in range(500) for rid in (r_off, r_small)])
        await until(lambda: off.received == 500 and small.received == 100, "the frames")
        # A round trip after the session PONG: any CREDIT the opted-out endpoint had sent is processed by now.
        await off.send(Outgoing(HELLO))
        assert (await aep.recv())[0][1] == r_off
        assert r_off not in aep.in_flight() and off.stats.credits == 0
        assert aep.in_flight()[r_small] == 100 and aep.queue_sizes()[r_small] == 400
    finally:
        await off.close()
        await small.close()
        await aep.close()


def unbundle(data: bytes) -> list[bytes]:
    """The frames of a BUNDLE (SPEC 14.1), parsed here independently of the endpoint's own code."""
    out, off = [], 1
    while off < len(data):
        (n,) = struct.unpack_from(">I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    assert off == len(data), "a BUNDLE's lengths add up"
    return out


def bundle(frames: list[bytes]) -> bytes:
    return BUNDLE + b"".join(struct.pack(">I", len(f)) + f for f in frames)


class DropRelay:
    """A relay between subscribers (its ROUTER front) and the author (one DEALER each): told to, it drops every
    ``every``-th author -> subscriber data frame, ``count`` times, and passes everything else -- a lossy, or
    hostile, hop.  It drops single frames out of BUNDLEs too (passing the rest on, re-bundled)."""

    def __init__(self, ctx: zmq.asyncio.Context, author_addr: str) -> None:
        self.ctx, self.author_addr = ctx, author_addr
        self.every = self.to_drop = self.dropped = self.seen = self.bundles = 0
        self.pongs_to_drop = 0
        self.front = ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.bind("tcp://127.0.0.1:0")
        self.address = self.front.getsockopt(zmq.LAST_ENDPOINT).decode()  # type: ignore[union-attr]
        self.backs: dict[bytes, zmq.asyncio.Socket] = {}
        self.task = asyncio.create_task(self._run())

    def drop(self, every: int, count: int) -> None:
        self.every, self.to_drop, self.seen = every, count, 0

    async def _run(self) -> None:
        poller = zmq.asyncio.Poller()
        poller.register(self.front, zmq.POLLIN)
        owner: dict[zmq.asyncio.Socket, bytes] = {}
        while True:
            for sock, _ in await poller.poll():
                while True:  # everything waiting: a wake-up may stand for many messages
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
                        await back.send(data)
                        continue
                    (data,) = parts
                    if data[:1] == PONG and self.pongs_to_drop:
                        self.pongs_to_drop -= 1
                        continue
                    if data[:1] == BUNDLE:
                        self.bundles += 1
                    if data[:1] in (b"\x95", BUNDLE) and self.to_drop:
                        kept = []
                        for f in unbundle(data) if data[:1] == BUNDLE else [data]:
                            self.seen += 1
                            if self.seen % self.every == 0 and self.to_drop:
                                self.to_drop -= 1
                                self.dropped += 1
                            else:
                                kept.append(f)
                        if not kept:
                            continue
                        data = kept[0] if len(kept) == 1 else bundle(kept)
                    await self.front.send_multipart([owner[sock], data])

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        for s in (self.front, *self.backs.values()):
            s.close(linger=0)


async def test_frames_lost_on_the_way_are_written_off_and_every_message_arrives(tmp_path: Path) -> None:
    cfg = EndpointConfig(heartbeat_ms=100, liveness=20, credit_window=16)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    author = await Author.create(tmp_path / "a.db", AUTHOR, "monitor", PW, aep, AllowList.of([P1.did]),
                                 store_options=FAST, config=CORE)
    author.heartbeat_ms = 100
    ctx = zmq.asyncio.Context()
    relay = DropRelay(ctx, aep.addresses[0])
    sep = SubscriberEndpoint(relay.address, cfg)
    sub = await Subscriber.create(tmp_path / "s.db", P1, AUTHOR.did, author.channel, PW, sep, store_options=FAST,
                                  config=CORE)
    sub.heartbeat_ms = 100
    try:
        branch = await sub.subscribe(timeout=10)
        # A window's worth of data frames is lost on the way: counted as sent, never received.  Without the
        # resync they would hold the window shut for good -- gap fill's own FETCH replies could not pass.
        relay.drop(every=4, count=16)
        sent = [b"alert %d" % i for i in range(80)]
        for lo in range(0, 80, 20):
            await author.publish_many(branch, sent[lo:lo + 20])
        got = [m.payload for m in await _take(sub, len(sent))]
        assert got == sent  # gap fill + credit resync: everything, in order, once
        st = aep.stats
        assert relay.dropped == 16 and st.credit_blocked > 0
        assert relay.bundles > 0 and st.bundles > 0  # frames were lost out of BUNDLEs too
        assert st.credit_resyncs > 0, st
        assert max(aep.in_flight().values()) <= 16
    finally:
        await sub.close()
        await relay.close()
        ctx.term()
        await author.close()


async def _take(sub: Subscriber, n: int) -> list[MessageReceived]:
    out: list[MessageReceived] = []
    while len(out) < n:
        out += await sub.next_messages(n - len(out), timeout=30)
    return out


async def test_the_subscriber_adopts_the_new_session_of_a_restarted_author(tmp_path: Path) -> None:
    cfg = EndpointConfig(heartbeat_ms=100, credit_window=16)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    addr = aep.addresses[0]
    author = await Author.create(tmp_path / "a.db", AUTHOR, "monitor", PW, aep, AllowList.of([P1.did]),
                                 store_options=FAST, config=CORE)
    author.heartbeat_ms = 100
    sep = SubscriberEndpoint(addr, cfg)
    sub = await Subscriber.create(tmp_path / "s.db", P1, AUTHOR.did, author.channel, PW, sep, store_options=FAST,
                                  config=CORE)
    sub.heartbeat_ms = 100
    author2 = None
    try:
        branch = await sub.subscribe(timeout=10)
        first = [b"before %d" % i for i in range(60)]
        await author.publish_many(branch, first)
        assert [m.payload for m in await _take(sub, 60)] == first
        old_session, old_instance = sep.session, sep.author_instance
        assert old_session is not None and aep.stats.credit_blocked > 0  # the window of 16 was in force
        await author.close()
        # Same address: the subscriber's DEALER reconnects transparently; the new record has a new session.
        aep2 = AuthorEndpoint(addr, cfg)
        author2 = await Author.open(tmp_path / "a.db", PW, aep2, AllowList.of([P1.did]), store_options=FAST,
                                    config=CORE)
        author2.heartbeat_ms = 100
        await until(lambda: sep.session not in (None, old_session), "the new session", 15)
        assert sep.author_instance != old_instance
        second = [b"after %d" % i for i in range(60)]
        await author2.publish_many(branch, second)
        assert [m.payload for m in await _take(sub, 60)] == second
        assert len(aep2.in_flight()) == 1 and aep2.stats.credits > 0 and aep2.stats.credit_blocked > 0
    finally:
        await sub.close()
        if author2 is not None:
            await author2.close()
        else:
            await author.close()


def test_spec_lists_the_control_messages_as_the_code_builds_them() -> None:
    spec = (Path(__file__).resolve().parent.parent / "SPEC.md").read_text()
    fields = {"instance": 8, "session": 8, "received(u64 BE)": 8, "consumed(u64 BE)": 8, "window(u32 BE)": 4,
              "window_max(u32 BE)": 4, "window_bytes(u64 BE)": 8}
    for name, prefix, length in (("PONG", PONG, _PONG_LEN), ("CREDIT", CREDIT, _CREDIT_LEN)):
        m = re.search(rf"`{name}` = `0x{prefix.hex()} \|\| ([^`]*)`", spec)
        assert m is not None, name
        parts = [p.strip() for p in m.group(1).split("||")]
        assert 1 + sum(fields[p.replace("(8)", "")] for p in parts) == length, name
    assert f"`PING` = the single byte `0x{PING.hex()}`" in spec


async def test_drain_keeps_a_fast_producer_within_the_window_and_nothing_is_dropped() -> None:
    # A producer faster than its subscriber, which waits on drain() after each chunk: the window paces it, no
    # frame is ever dropped (so no gap fill is needed), and a stalled peer of another branch does not hold it.
    cfg = EndpointConfig(credit_window=500)
    window, n, chunk = cfg.credit_window, 6000, 200
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    sep, rid = await connect_subscriber(aep, cfg)
    stalled, r_stalled = await connect_subscriber(aep, cfg)
    mine, other = b"m" * 16, b"o" * 16
    aep.send_many([Outgoing(frame(0), rid, mine), Outgoing(frame(0), r_stalled, other)])  # the grants' routes
    got: list[int] = []
    peak = 0

    async def slow_reader() -> None:
        while True:
            got.extend(index(d) for d, _ in await sep.recv())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(slow_reader())
    try:
        # the stalled peer of the other branch uses up its window and more
        aep.send_many([Outgoing(frame(i), None, other) for i in range(1, window + 100)])
        await until(lambda: aep.queue_sizes()[r_stalled] > 0, "the stalled peer's queue")
        for lo in range(1, n, chunk):
            aep.send_many([Outgoing(frame(i), None, mine) for i in range(lo, min(n, lo + chunk))])
            peak = max(peak, aep.in_flight()[rid])
            await asyncio.wait_for(aep.drain(mine), 10)
            assert aep.queue_sizes()[rid] == 0 and aep.in_flight()[rid] < window  # what drain promises
        await until(lambda: len(got) == n, "every frame at the subscriber")
        assert got == list(range(n))
        assert aep.stats.send_dropped == 0 and peak <= window
        assert aep.stats.max_queue_seen <= chunk + 99  # at most a chunk waited for credit, never a queue's worth
        with contextlib.suppress(TimeoutError):  # the stalled branch cannot drain while its peer does not read
            await asyncio.wait_for(aep.drain(other), 0.2)
            raise AssertionError("drain returned for a peer with no credit left")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sep.close()
        await stalled.close()
        await aep.close()


async def test_drain_returns_when_the_peer_is_forgotten_and_raises_when_closed() -> None:
    cfg = EndpointConfig(credit_window=100, heartbeat_ms=100, liveness=3)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    sep, rid = await connect_subscriber(aep, cfg)
    branch = b"b" * 16
    try:
        aep.send_many([Outgoing(frame(0), rid, branch)] + [Outgoing(frame(i), None, branch) for i in range(1, 300)])
        await until(lambda: aep.queue_sizes()[rid] > 0, "frames waiting for credit")
        waiter = asyncio.create_task(aep.drain(branch))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await sep.close()  # the subscriber dies: its record expires after liveness heartbeats
        await asyncio.wait_for(waiter, 10)
        assert aep.stats.peers_expired >= 1
        # a waiter on a closing endpoint is told so
        sep2, rid2 = await connect_subscriber(aep, cfg)
        aep.send_many([Outgoing(frame(0), rid2, branch)] + [Outgoing(frame(i), None, branch) for i in range(1, 300)])
        await until(lambda: aep.queue_sizes()[rid2] > 0, "frames waiting for credit")
        waiter = asyncio.create_task(aep.drain(branch))
        await asyncio.sleep(0.05)
        await aep.close()
        try:
            await asyncio.wait_for(waiter, 5)
            raise AssertionError("drain returned on a closed endpoint")
        except ClosedResourceError:
            pass
        await sep2.close()
    finally:
        await sep.close()
        await aep.close()


async def test_author_drain_paces_publish_many_with_no_gap_fill(tmp_path: Path) -> None:
    # Through the public API: a producer publishing batches faster than the subscriber's application reads,
    # with Author.drain after each: nothing dropped, so nothing fetched again; every message once, in order.
    cfg = EndpointConfig(credit_window=300)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    author = await Author.create(tmp_path / "a.db", AUTHOR, "monitor", PW, aep, AllowList.of([P1.did]),
                                 store_options=FAST, config=CORE)
    sep = SubscriberEndpoint(aep.addresses[0], cfg)
    sub = await Subscriber.create(tmp_path / "s.db", P1, AUTHOR.did, author.channel, PW, sep, store_options=FAST,
                                  config=CORE)
    try:
        branch = await sub.subscribe(timeout=10)
        seqs: list[int] = []
        got: list[int] = []

        async def app() -> None:
            while len(got) < 3000:
                got.extend(m.seq for m in await sub.next_messages(64, timeout=20))
                await asyncio.sleep(0.001)

        reader = asyncio.create_task(app())
        for k in range(30):
            seqs += await author.publish_many(branch, [b"event %d" % (k * 100 + i) for i in range(100)])
            await asyncio.wait_for(author.drain(branch), 20)
        await asyncio.wait_for(reader, 30)
        assert got == seqs
        assert aep.stats.send_dropped == 0
        assert not any(isinstance(e, GapDetected) for e in sub.pending_events())
    finally:
        await sub.close()
        await author.close()


async def test_taking_frames_never_leaves_a_frame_unread_behind_the_credit_it_sends() -> None:
    """Regression (p99 latency spikes of 20-100 ms).  ``recv()`` reports credit when the driver has taken
    enough; that send lets ZeroMQ process its pending commands, which resets the socket's notification
    descriptor (ZMQ_FD).  A frame that had just arrived then waited unread, with the reader parked on a
    descriptor that no longer signals, until a heartbeat tick or the next ACK re-checked ZMQ_EVENTS.  Taking
    frames must re-check, as every other send does."""
    cfg = EndpointConfig(credit_window=4)  # a CREDIT at every take (window // 4 == 1)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    sep, rid = await connect_subscriber(aep, cfg)
    fd = sep._sync.getsockopt(zmq.FD)
    try:
        aep.send_many([Outgoing(frame(0), rid)])
        await until(lambda: sep.inbox_size() == 1, "frame 0 read into the inbox")
        await until(lambda: sep._wake_fut is not None, "the reader parked on the descriptor")
        credits = sep.stats.credits
        aep.send_many([Outgoing(frame(1), rid)])
        # Frame 1 arrives while the event loop is not running (select() only looks: it consumes nothing).
        readable, _, _ = select.select([fd], [], [], 10)
        assert readable, "frame 1 never arrived"
        time.sleep(0.01)  # (ZeroMQ processes commands on a send at most about once a millisecond)
        got = await sep.recv()  # frame 0, from the inbox at once; reports credit -- a send on the socket
        assert [index(d) for d, _ in got] == [0] and sep.stats.credits == credits + 1
        for _ in range(50):  # event-loop turns, not time: the reader must have been woken already
            await asyncio.sleep(0)
        assert sep.inbox_size() == 1, "frame 1 left unread in the socket"
        assert [index(d) for d, _ in await asyncio.wait_for(sep.recv(), 10)] == [1]
    finally:
        await sep.close()
        await aep.close()


def big(i: int, size: int) -> bytes:
    return frame(i) + b"q" * (size - 64)


@contextlib.asynccontextmanager
async def silent_member(addr: str, cfg: EndpointConfig,
                        rcvhwm: int) -> AsyncIterator[tuple[AuthorEndpoint, bytes, zmq.asyncio.Socket]]:
    """An author endpoint and a raw DEALER that made itself known (HELLO), then never reads nor sends CREDIT."""
    aep = AuthorEndpoint(addr, cfg)
    ctx = zmq.asyncio.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVHWM, rcvhwm)
    dealer.connect(aep.addresses[0])
    try:
        await dealer.send(HELLO)
        data, rid = (await aep.recv())[0]
        assert data == HELLO and isinstance(rid, bytes)
        yield aep, rid, dealer
    finally:
        dealer.close(linger=0)
        ctx.term()
        await aep.close()


async def test_the_queue_for_a_peer_that_does_not_read_is_bounded_in_bytes(tmp_path: Path) -> None:
    """A member that stops reading (and sends no CREDIT) with large frames: what the author keeps for it is
    bounded by ``send_queue_bytes`` long before ``send_queue`` frames; one frame larger than the bound still
    fits an empty queue (else its gap fill could never get through)."""
    cfg = EndpointConfig(send_queue_bytes=1 << 20, sndhwm=2)
    async with silent_member(f"ipc://{tmp_path}/a.sock", cfg, rcvhwm=2) as (aep, rid, _):
        most = 0
        for i in range(400):  # 25 MB at 64 KiB each: far more than the pipes and the bound hold
            aep.send_many([Outgoing(big(i, 65536), rid)])
            most = max(most, aep.queue_bytes()[rid])
            await asyncio.sleep(0)
        assert aep.stats.send_dropped > 0
        assert most <= cfg.send_queue_bytes and aep.queue_bytes()[rid] >= cfg.send_queue_bytes - 65536
        assert aep.queue_sizes()[rid] < cfg.send_queue  # the byte bound is the one that held
        assert aep.queue_bytes()[rid] == sum(len(big(0, 65536)) for _ in range(aep.queue_sizes()[rid]))

    small = EndpointConfig(send_queue_bytes=32 << 10, sndhwm=1)
    async with silent_member(f"ipc://{tmp_path}/b.sock", small, rcvhwm=1) as (aep, rid, _):
        for i in range(200):
            aep.send_many([Outgoing(big(i, 65536), rid)])
            await asyncio.sleep(0)
        # Frames of twice the bound: at most one waits at a time, and it does wait (it is not refused).
        assert aep.queue_sizes()[rid] == 1 and aep.queue_bytes()[rid] == 65536


async def test_a_subscriber_inbox_is_bounded_in_bytes_and_holds_back_without_losing_anything() -> None:
    """A driver that does not read: the subscriber endpoint stops reading at ``inbox_bytes`` (back-pressure
    into ZeroMQ, not drops), then hands over every frame, in order, once the driver reads again."""
    cfg = EndpointConfig(inbox_bytes=1 << 20)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    sep, rid = await connect_subscriber(aep, cfg)
    try:
        n, size = 100, 65536
        aep.send_many([Outgoing(big(i, size), rid) for i in range(n)])
        await until(lambda: sep.inbox_size_bytes() >= cfg.inbox_bytes, "the inbox filled to its byte bound")
        for _ in range(20):  # and it stays there: the endpoint stopped reading
            await asyncio.sleep(0.01)
            # At most one ZeroMQ message beyond the bound: a frame, or a BUNDLE of them.
            assert sep.inbox_size_bytes() < cfg.inbox_bytes + max(size, cfg.bundle_bytes)
        assert sep.inbox_size() < n
        got: list[int] = []
        while len(got) < n:
            got += [index(d) for d, _ in await asyncio.wait_for(sep.recv(), 10)]
        assert got == list(range(n)) and aep.stats.send_dropped == 0 and sep.inbox_size_bytes() == 0
    finally:
        await sep.close()
        await aep.close()


@pytest.mark.parametrize("bound", ["inbox_bytes", "window_bytes"])
async def test_large_frames_shrink_the_credit_window_to_the_byte_bounds(bound: str) -> None:
    """The window counts frames.  With 64 KiB frames and ``inbox_bytes`` (or ``window_bytes``) of 1 MiB, the
    subscriber reports a window of about 16 frames as soon as such frames arrive, so the author hands ZeroMQ no
    more than that beyond what the driver took -- the rest waits in the author's bounded queue -- and everything
    still arrives, with no stall on the author's own byte bound."""
    cfg = EndpointConfig(**{bound: 1 << 20})
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    sep, rid = await connect_subscriber(aep, cfg)
    size, first, then = 65536, 12, 200
    window = (1 << 20) // size  # 16 frames of 64 KiB
    try:
        aep.send_many([Outgoing(big(i, size), rid) for i in range(first)])  # all go: the window was 8000
        await until(lambda: sep.received == first, "the first frames read")
        await until(lambda: aep._peers[rid].window <= window, "the smaller window reported")
        aep.send_many([Outgoing(big(i, size), rid) for i in range(first, first + then)])
        for _ in range(20):
            await asyncio.sleep(0.01)
            assert aep.in_flight()[rid] <= window  # no more handed to ZeroMQ while the driver does not read
        assert aep.queue_sizes()[rid] == first + then - window
        got: list[int] = []
        while len(got) < first + then:
            got += [index(d) for d, _ in await asyncio.wait_for(sep.recv(), 10)]
            assert aep.in_flight()[rid] <= window and aep.in_flight_bytes()[rid] <= (1 << 20) + size
        assert got == list(range(first + then)) and aep.stats.send_dropped == 0
        assert aep.in_flight_bytes()[rid] == size * aep.in_flight()[rid]
    finally:
        await sep.close()
        await aep.close()


async def test_a_sender_that_overruns_a_stalled_subscriber_parks_a_bounded_number_of_frames(tmp_path: Path) -> None:
    """A raw ROUTER in the author's place ignores credit and floods a subscriber whose driver does not read.  The
    subscriber stops reading at ``inbox_bytes``; what the flooder then gets into the subscriber's ZeroMQ pipe is
    bounded by its high-water mark, fitted to ``inbox_bytes / max_frame`` (16 frames here) -- not ``rcvhwm``
    (1000 frames of up to ``max_frame``)."""
    size = 65536
    cfg = EndpointConfig(max_frame=size, inbox_bytes=1 << 20)  # 16 frames in the inbox, 16 in the pipe
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.SNDHWM, 1)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.bind(f"ipc://{tmp_path}/flood.sock")
    sep = SubscriberEndpoint(f"ipc://{tmp_path}/flood.sock", cfg)
    try:
        await sep.send(Outgoing(HELLO))
        rid, data = await router.recv_multipart()
        assert data == PING  # its first contact asks for a session (SPEC 14.4), which its FETCHes carry
        rid, data = await router.recv_multipart()
        assert data == HELLO
        sent, refused_since = 0, time.monotonic()
        while time.monotonic() - refused_since < 0.3 and sent < 5000:  # until the path stays full for a while
            try:
                await router.send_multipart([rid, big(sent, size)], zmq.NOBLOCK)
                sent += 1
                refused_since = time.monotonic()
            except zmq.Again:
                await asyncio.sleep(0.005)
        assert sep.inbox_size_bytes() <= cfg.inbox_bytes and sep.inbox_size() == 16
        # 16 in the inbox, at most 16 in the pipe, and what the two sockets' kernel buffers hold (a few frames).
        assert sent < 16 + 16 + 64, sent
        got: list[int] = []  # and nothing it accepted is lost or reordered once the driver reads
        while len(got) < sent:
            got += [index(d) for d, _ in await asyncio.wait_for(sep.recv(), 10)]
        assert got == list(range(sent))
    finally:
        await sep.close()
        router.close(linger=0)
        ctx.term()


async def test_a_subscriber_whose_session_pong_was_lost_asks_for_it_at_once() -> None:
    """A relay drops the PONG that announces the subscriber's session.  Without a session it cannot send a
    CREDIT, and the author sends it only its initial window; data arriving before any session makes it PING at
    once (the author answers with the session), not at its next idle heartbeat -- a minute away here -- and the
    frames that came before the session count in it, so that its CREDITs report them taken."""
    ctx = zmq.asyncio.Context()
    aep = AuthorEndpoint("tcp://127.0.0.1:0", EndpointConfig(credit_window_max=50))
    relay = DropRelay(ctx, aep.addresses[0])
    relay.pongs_to_drop = 1
    # (A window within the author's clamp, so that it reports every 10 frames taken.)
    sep = SubscriberEndpoint(relay.address, EndpointConfig(heartbeat_ms=60_000, credit_window=40))
    try:
        await sep.send(Outgoing(HELLO))
        (_, rid), = await aep.recv()
        assert isinstance(rid, bytes)
        aep.send_many([Outgoing(frame(i), rid) for i in range(200)])
        got: list[int] = []
        while len(got) < 200:
            got += [index(d) for d, _ in await asyncio.wait_for(sep.recv(), 10)]
        assert got == list(range(200)) and relay.pongs_to_drop == 0
        assert sep.session == aep._peers[rid].session and rid in aep.in_flight()
    finally:
        await sep.close()
        await relay.close()
        await aep.close()
        ctx.term()


@pytest.mark.parametrize("limit", ["credit_window_max", "window_bytes"])
async def test_a_subscriber_fits_its_window_to_the_authors_limits_and_never_waits_for_a_keepalive(limit: str) -> None:
    """The author's limits are smaller than what the subscriber would ask for: a window of 100 frames against
    the subscriber's 8000, or 1 MiB in flight against the 1024 frames of 64 KiB its own byte bounds allow.  The
    author's PONG tells them, so the subscriber asks for no more and reports at a quarter of that; without them
    it reported at a quarter of its own, larger window, which never comes while the author is blocked: every
    window then waited for the subscriber's keepalive CREDIT, a minute away here."""
    acfg = EndpointConfig(**{limit: 100 if limit == "credit_window_max" else 1 << 20})
    size, n = 65536, 600
    expect = 100 if limit == "credit_window_max" else (1 << 20) // size
    aep = AuthorEndpoint("tcp://127.0.0.1:0", acfg)
    sep, rid = await connect_subscriber(aep, EndpointConfig(heartbeat_ms=60_000))
    try:
        assert sep.author_limits == (acfg.credit_window_max, acfg.window_bytes)
        aep.send_many([Outgoing(big(i, size), rid) for i in range(n)])
        got: list[int] = []
        while len(got) < n:
            got += [index(d) for d, _ in await asyncio.wait_for(sep.recv(), 10)]
        assert got == list(range(n)) and aep.stats.send_dropped == 0
        await until(lambda: aep._peers[rid].window == expect, "the fitted window reported")
        assert sep.stats.credits >= n // expect  # a report per quarter window, not one per keepalive
    finally:
        await sep.close()
        await aep.close()


async def test_pongs_with_and_without_limits_and_malformed_ones(tmp_path: Path) -> None:
    """A raw ROUTER plays the author.  A 17-byte PONG (an author endpoint from before the limits) gives the
    subscriber its session and no limits: it asks for its own window.  A 29-byte PONG of the same session that
    lowers the limits makes it report the smaller window at once.  PONGs of any other length are malformed and
    change nothing."""
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{tmp_path}/a.sock")
    sep = SubscriberEndpoint(f"ipc://{tmp_path}/a.sock", EndpointConfig(credit_window=500))
    inst, session = b"I" * 8, b"S" * 8

    async def next_credit() -> tuple[bytes, int]:
        while True:
            _, data = await asyncio.wait_for(router.recv_multipart(), 10)
            if data[:1] == CREDIT:
                got_session, _, _, window = struct.unpack(">8sQQI", data[1:])
                return got_session, window

    try:
        await sep.send(Outgoing(HELLO))
        rid, data = await router.recv_multipart()
        assert data == PING  # its first contact asks for a session (SPEC 14.4), which its FETCHes carry
        rid, data = await router.recv_multipart()
        assert data == HELLO
        await router.send_multipart([rid, PONG + inst + session])
        assert await next_credit() == (session, 500)
        assert sep.session == session and sep.author_limits is None
        for bad in (PONG + inst + session + b"\x00" * 4, PONG + inst + session + b"\x00" * 13, PONG + inst):
            await router.send_multipart([rid, bad])
        await router.send_multipart([rid, PONG + inst + session + struct.pack(">IQ", 40, 1 << 30)])
        assert await next_credit() == (session, 40)  # at once: not at a quarter window, not at a keepalive
        assert sep.author_limits == (40, 1 << 30) and sep.stats.malformed == 3 and sep.session == session
    finally:
        await sep.close()
        router.close(linger=0)
        ctx.term()
