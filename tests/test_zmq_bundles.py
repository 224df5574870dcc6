"""BUNDLEs (SPEC 14.1): data frames for one subscriber that are ready together go out in one ZeroMQ message.

Real sockets on tcp loopback.  The raw DEALERs and ROUTERs here play a subscriber from before bundles (it never
says it takes them), a subscriber that takes small ones, and a hostile author (or relay) that sends malformed
ones.  BUNDLEs are parsed here with ``struct``, independently of the endpoint's code."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from brokerless.curve import CurveConfig
from brokerless.endpoints import _PONG_LEN, BUNDLE, BUNDLE_OK, CREDIT, PING, PONG
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig, Outgoing
from streams.errors import LocalProtocolError
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import HeadNotice, Hello, encode_frame

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
AUTHOR, P1 = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x0a" * 32)
HELLO = encode_frame(Hello(b"c" * 32)).raw


def frame(i: int, size: int = 64) -> bytes:
    """A data frame as the endpoints see it (they never decode author -> subscriber traffic): numbered."""
    return b"\x95" + i.to_bytes(4, "big") + b"p" * (size - 5)


def index(data: bytes) -> int:
    return int.from_bytes(data[1:5], "big")


def unbundle(data: bytes) -> list[bytes]:
    out, off = [], 1
    while off < len(data):
        (n,) = struct.unpack_from(">I", data, off)
        assert n > 0 and off + 4 + n <= len(data), "a BUNDLE's lengths add up"
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


def bundle(frames: list[bytes]) -> bytes:
    return BUNDLE + b"".join(struct.pack(">I", len(f)) + f for f in frames)


async def until(pred: object, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():  # type: ignore[operator]
        assert loop.time() < end, f"timeout waiting for {what}"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def raw_member(cfg: EndpointConfig, takes: int | None,
                     window: int = 10_000) -> AsyncIterator[tuple[AuthorEndpoint, bytes, zmq.asyncio.Socket, bytes]]:
    """An author endpoint and a raw DEALER that made itself known (HELLO), learnt its session from the PONG, said
    it takes BUNDLEs of ``takes`` bytes (never, if None: a subscriber from before them) and sent one CREDIT of
    ``window`` frames."""
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(aep.addresses[0])
    try:
        await dealer.send(HELLO)
        data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]
        assert data == HELLO and isinstance(rid, bytes)
        pong = await asyncio.wait_for(dealer.recv(), 10)
        assert pong[:1] == PONG and len(pong) == _PONG_LEN
        session = pong[9:17]
        if takes is not None:
            await dealer.send(BUNDLE_OK + struct.pack(">I", takes))
        await dealer.send(CREDIT + session + struct.pack(">QQI", 0, 0, window))
        await until(lambda: aep.stats.credits == 1, "the CREDIT")
        yield aep, rid, dealer, session
    finally:
        dealer.close(linger=0)
        ctx.term()
        await aep.close()


async def read_all(dealer: zmq.asyncio.Socket, n: int) -> list[bytes]:
    """The ZeroMQ messages carrying the next ``n`` data frames (control messages skipped)."""
    msgs: list[bytes] = []
    frames = 0
    while frames < n:
        m = await asyncio.wait_for(dealer.recv(), 10)
        if m[:1] in (PING, PONG, BUNDLE_OK):  # (the author answers a BUNDLE_OK with its own)
            continue
        msgs.append(m)
        frames += len(unbundle(m)) if m[:1] == BUNDLE else 1
    return msgs


async def test_frames_ready_together_go_out_in_bundles_within_the_size_the_subscriber_takes() -> None:
    takes = 4096
    async with raw_member(EndpointConfig(), takes) as (aep, rid, dealer, _):
        aep.send_many([Outgoing(frame(i, 300), rid) for i in range(200)])
        msgs = await read_all(dealer, 200)
        assert all(m[:1] == BUNDLE for m in msgs)
        assert all(len(m) <= takes for m in msgs), max(len(m) for m in msgs)
        got = [f for m in msgs for f in unbundle(m)]
        assert [index(f) for f in got] == list(range(200)) and got == [frame(i, 300) for i in range(200)]
        # As many frames per BUNDLE as fit: 13 of 304 bytes in 4096 (with the 1-byte prefix).
        assert len(msgs) == -(-200 // 13) and aep.stats.bundles == len(msgs)
        assert aep.stats.frames_out >= 200 and aep.in_flight()[rid] == 200  # credit counts frames


async def test_a_subscriber_that_never_said_it_takes_bundles_gets_single_frames() -> None:
    """A subscriber endpoint from before BUNDLEs: nothing it cannot parse is ever sent to it."""
    async with raw_member(EndpointConfig(), None) as (aep, rid, dealer, _):
        aep.send_many([Outgoing(frame(i), rid) for i in range(300)])
        msgs = await read_all(dealer, 300)
        assert [index(m) for m in msgs] == list(range(300)) and aep.stats.bundles == 0


async def test_an_author_configured_without_bundles_sends_single_frames() -> None:
    async with raw_member(EndpointConfig(bundle_bytes=0), 1 << 20) as (aep, rid, dealer, _):
        aep.send_many([Outgoing(frame(i), rid) for i in range(100)])
        msgs = await read_all(dealer, 100)
        assert [index(m) for m in msgs] == list(range(100)) and aep.stats.bundles == 0


async def test_the_author_bundles_no_more_than_its_own_limit_whatever_the_subscriber_says() -> None:
    async with raw_member(EndpointConfig(bundle_bytes=2048), 1 << 30) as (aep, rid, dealer, _):
        aep.send_many([Outgoing(frame(i, 500), rid) for i in range(40)])
        msgs = await read_all(dealer, 40)
        assert all(len(m) <= 2048 for m in msgs) and aep.stats.bundles > 0


async def test_bundles_never_exceed_the_credit_window() -> None:
    """The window counts frames, whether they travel alone or bundled: a CREDIT of 7 gets exactly 7 frames, the
    rest waits in the author's queue and goes out as the next CREDITs open the window."""
    async with raw_member(EndpointConfig(), 1 << 20, window=7) as (aep, rid, dealer, session):
        aep.send_many([Outgoing(frame(i), rid) for i in range(30)])
        msgs = await read_all(dealer, 7)
        assert len(msgs) == 1 and len(unbundle(msgs[0])) == 7  # one BUNDLE of the whole window
        await asyncio.sleep(0.2)
        assert aep.in_flight()[rid] == 7 and aep.queue_sizes()[rid] == 23
        while await dealer.poll(0, zmq.POLLIN):  # nothing more came while the window was shut
            extra = await dealer.recv()
            assert extra[:1] in (PING, PONG, BUNDLE_OK), "a data frame beyond the window"
        # The subscriber took 7: the window opens again, and the queue goes out bundled.
        await dealer.send(CREDIT + session + struct.pack(">QQI", 7, 7, 10))
        msgs = await read_all(dealer, 10)
        got = [index(f) for m in msgs for f in (unbundle(m) if m[:1] == BUNDLE else [m])]
        assert got == list(range(7, 17)) and aep.in_flight()[rid] == 10 and aep.queue_sizes()[rid] == 13


async def test_a_malformed_bundle_ok_is_counted_and_changes_nothing() -> None:
    async with raw_member(EndpointConfig(), None) as (aep, rid, dealer, _):
        await dealer.send(BUNDLE_OK + b"\x00\x01")  # too short
        await until(lambda: aep.stats.malformed == 1, "the malformed BUNDLE_OK counted")
        await dealer.send(BUNDLE_OK + struct.pack(">I", 16))  # too small to hold two frames: no bundles
        await dealer.send(PING)
        await until(lambda: aep.stats.frames_in >= 4, "the author read them")
        aep.send_many([Outgoing(frame(i), rid) for i in range(20)])
        msgs = await read_all(dealer, 20)
        assert [index(m) for m in msgs] == list(range(20)) and aep.stats.bundles == 0


#: A session PONG, as an author (or a relay in its place) would send it.
SESSION_PONG = PONG + b"i" * 8 + b"s" * 8 + struct.pack(">IQ", 10_000, 64 << 20)


@contextlib.asynccontextmanager
async def raw_author(cfg: EndpointConfig | None = None
                     ) -> AsyncIterator[tuple[zmq.asyncio.Socket, SubscriberEndpoint, bytes]]:
    """A raw ROUTER posing as the author (or a relay in its place) and a real SubscriberEndpoint connected to it,
    once the subscriber's HELLO arrived: (router, subscriber endpoint, its routing id)."""
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:0")
    sep = SubscriberEndpoint(router.getsockopt(zmq.LAST_ENDPOINT).decode(), cfg)  # type: ignore[union-attr]
    try:
        await sep.send(Outgoing(HELLO))
        rid = b""
        while True:  # its PING (at start) and the HELLO
            rid, data = await asyncio.wait_for(router.recv_multipart(), 10)
            if data == HELLO:
                break
        yield router, sep, rid
    finally:
        await sep.close()
        router.close(linger=0)
        ctx.term()


@contextlib.asynccontextmanager
async def fake_author(cfg: EndpointConfig | None = None
                      ) -> AsyncIterator[tuple[zmq.asyncio.Socket, SubscriberEndpoint, bytes]]:
    """:func:`raw_author`, after its session PONG and the subscriber's BUNDLE_OK (checked: 64 bytes under its
    frame limit at most, the room CURVE needs)."""
    cfg = cfg or EndpointConfig()
    async with raw_author(cfg) as (router, sep, rid):
        await router.send_multipart([rid, SESSION_PONG])
        while True:
            _, data = await asyncio.wait_for(router.recv_multipart(), 10)
            if data[:1] == BUNDLE_OK:
                break
        assert data == BUNDLE_OK + struct.pack(">I", min(cfg.bundle_bytes, cfg.max_frame - 64))
        yield router, sep, rid


async def test_a_subscriber_unpacks_bundles_in_order_and_drops_malformed_ones_whole() -> None:
    async with fake_author() as (router, sep, rid):
        bad = [
            BUNDLE + struct.pack(">I", 64) + frame(100)[:63],  # the last frame is cut short
            BUNDLE + struct.pack(">I", 0) + struct.pack(">I", 64) + frame(101),  # an empty frame
            BUNDLE + struct.pack(">I", 64) + frame(102) + b"\x00\x00",  # a length cut short
            BUNDLE,  # no frame at all
            BUNDLE + struct.pack(">I", 1 << 31) + frame(103),  # a length far beyond the message
        ]
        good = [bundle([frame(0), frame(1), frame(2)]), frame(3), bundle([frame(4), frame(5, 5000)])]
        for m in (bad[0], good[0], *bad[1:3], good[1], *bad[3:], good[2]):
            await router.send_multipart([rid, m])
        got: list[bytes] = []
        while len(got) < 6:
            got += [d for d, _ in await asyncio.wait_for(sep.recv(), 10)]
        assert got == [frame(0), frame(1), frame(2), frame(3), frame(4), frame(5, 5000)]
        assert sep.stats.malformed == len(bad) and sep.stats.bundles_in == 2
        assert sep.received == 6  # the credit counts frames: the malformed ones were never received


async def test_a_subscriber_refuses_bundles_larger_than_it_takes_or_of_frames_too_small_to_be_frames() -> None:
    """A hostile author (or relay) cannot use a BUNDLE to put more in the inbox than the subscriber agreed to:
    not one larger than it said (1 MiB of 1-byte frames was 200k frames at once), not frames shorter than any
    protocol frame, not bytes that are no frame."""
    async with fake_author(EndpointConfig(bundle_bytes=8192)) as (router, sep, rid):
        bad = [
            bundle([frame(i) for i in range(200)]),  # 13.6 KB: more than the 8 KiB it takes
            bundle([b"\x95" + bytes(38)] * 100),  # 39-byte "frames"
            bundle([frame(7), b"\x00" + frame(8)[1:]]),  # the second is no frame
        ]
        for m in (*bad, bundle([frame(0), frame(1)])):
            await router.send_multipart([rid, m])
        got = [d for d, _ in await asyncio.wait_for(sep.recv(), 10)]
        assert got == [frame(0), frame(1)] and sep.stats.malformed == len(bad) and sep.received == 2


@pytest.mark.parametrize("cfg", [EndpointConfig(bundle_bytes=0), EndpointConfig(credit_window=0)],
                         ids=["bundles off", "no credit, so no BUNDLE_OK"])
async def test_a_subscriber_that_said_it_takes_no_bundles_drops_them(cfg: EndpointConfig) -> None:
    async with raw_author(cfg) as (router, sep, rid):
        await router.send_multipart([rid, bundle([frame(0), frame(1)])])
        await router.send_multipart([rid, frame(2)])
        got = [d for d, _ in await asyncio.wait_for(sep.recv(), 10)]
        assert got == [frame(2)] and sep.stats.malformed == 1


async def test_bundles_reach_a_subscriber_with_a_small_frame_limit_over_curve() -> None:
    """Under CURVE, ZeroMQ holds the encrypted message (33 bytes more) to MAXMSGSIZE: a BUNDLE filled to exactly
    the subscriber's ``max_frame`` cut its connection, on every reconnect (review of the first version)."""
    acfg = EndpointConfig(curve=CurveConfig.for_author(AUTHOR))
    aep = AuthorEndpoint("tcp://127.0.0.1:0", acfg, known_key=lambda _k: True)
    scfg = EndpointConfig(curve=CurveConfig.for_subscriber(P1, AUTHOR.did), max_frame=4096)
    sep = SubscriberEndpoint(aep.addresses[0], scfg)
    try:
        await sep.send(Outgoing(HELLO))
        data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]
        assert data == HELLO and isinstance(rid, bytes)
        await until(lambda: aep.stats.credits >= 1, "the subscriber's CREDIT")
        sent = [frame(i, 310) for i in range(26)]
        aep.send_many([Outgoing(f, rid) for f in sent])
        got: list[bytes] = []
        while len(got) < len(sent):
            got += [d for d, _ in await asyncio.wait_for(sep.recv(), 10)]
        assert got == sent and aep.stats.bundles >= 2 and sep.stats.reconnects == 0
    finally:
        await sep.close()
        await aep.close()


async def test_frames_routed_before_a_refused_outgoing_still_go_out() -> None:
    """``send_many`` collects each peer's frames to bundle them; one refused Outgoing midway must not take the
    frames routed before it down with it (one by one, they had gone out)."""
    async with raw_member(EndpointConfig(), 1 << 20) as (aep, rid, dealer, _):
        with pytest.raises(LocalProtocolError):
            aep.send_many([Outgoing(frame(0), rid), Outgoing(frame(1), rid),
                           Outgoing(frame(2), "not a routing id")])  # type: ignore[arg-type]
        msgs = await read_all(dealer, 2)
        assert [index(f) for m in msgs for f in (unbundle(m) if m[:1] == BUNDLE else [m])] == [0, 1]
        # Data that is not bytes is refused as it is routed (not later, with the frames collected before it).
        with pytest.raises(LocalProtocolError):
            aep.send_many([Outgoing(frame(2), rid), Outgoing(bytearray(frame(3)), rid)])  # type: ignore[arg-type]
        msgs = await read_all(dealer, 1)
        assert [index(f) for m in msgs for f in (unbundle(m) if m[:1] == BUNDLE else [m])] == [2]


async def test_a_subscriber_configured_without_bundles_does_not_ask_for_them() -> None:
    """It says it takes none (a BUNDLE_OK of 0 bytes: the smallest of a session stands at the author, so a relay's
    forged one that comes with or after it cannot make the author bundle for it; SPEC 14.1 says where one stands)."""
    async with raw_author(EndpointConfig(bundle_bytes=0)) as (router, _sep, rid):
        await router.send_multipart([rid, SESSION_PONG])
        seen: list[bytes] = []
        while CREDIT not in [d[:1] for d in seen]:  # (a BUNDLE_OK goes before the session's first CREDIT)
            seen.append((await asyncio.wait_for(router.recv_multipart(), 10))[1])
        assert [d for d in seen if d[:1] == BUNDLE_OK] == [BUNDLE_OK + bytes(4)]


async def test_a_published_stream_travels_in_bundles_end_to_end(tmp_path: Path) -> None:
    """Through the asyncio API: a burst published at once reaches the subscriber in BUNDLEs, every message once,
    in order; and so does the catch-up of what was published while the subscriber was away."""
    aep = AuthorEndpoint("tcp://127.0.0.1:0")
    author = await Author.create(tmp_path / "a.db", AUTHOR, "monitor", PW, aep, AllowList.of([P1.did]),
                                 store_options=FAST, config=CoreConfig(max_fetch=64))
    sep = SubscriberEndpoint(aep.addresses[0])
    sub = await Subscriber.create(tmp_path / "s.db", P1, AUTHOR.did, author.channel, PW, sep, store_options=FAST)
    try:
        branch = await sub.subscribe(timeout=10)
        sent = [b"payment %d" % i for i in range(500)]
        await author.publish_many(branch, sent)
        got: list[bytes] = []
        while len(got) < len(sent):
            got += [m.payload for m in await asyncio.wait_for(sub.next_messages(1000), 10)]
        assert got == sent
        assert aep.stats.bundles > 0 and sep.stats.bundles_in > 0
        assert sep.stats.malformed == 0 and aep.stats.malformed == 0
        # Away, then back: the catch-up's FETCH answers (up to max_fetch frames each) come bundled too.
        await sub.close()
        missed = [b"refund %d" % i for i in range(300)]
        await author.publish_many(branch, missed)
        sep = SubscriberEndpoint(aep.addresses[0])
        sub = await Subscriber.open(tmp_path / "s.db", PW, sep, store_options=FAST)
        got = []
        while len(got) < len(missed):
            got += [m.payload for m in await asyncio.wait_for(sub.next_messages(1000), 10)]
        assert got == missed and sep.stats.bundles_in > 0 and sep.stats.malformed == 0
    finally:
        await sub.close()
        await author.close()


# --- subscriber -> author ----------------------------------------------------------------------------------------


async def test_a_subscriber_bundles_what_it_sends_once_the_author_said_it_takes_bundles() -> None:
    aep = AuthorEndpoint("tcp://127.0.0.1:0")
    sep = SubscriberEndpoint(aep.addresses[0])
    try:
        await sep.send(Outgoing(HELLO))
        data, rid = (await asyncio.wait_for(aep.recv(), 10))[0]
        assert data == HELLO
        await until(lambda: sep._author_takes > 0, "the author's BUNDLE_OK")
        # Well-formed member frames (HEAD notices; their signatures are the core's to check, not the endpoint's).
        frames = [encode_frame(HeadNotice(b"c" * 32, b"b" * 16, 1, i, bytes(32), 0), sign=lambda _h: bytes(64)).raw
                  for i in range(300)]
        sep.send_many([Outgoing(f) for f in frames])
        got: list[bytes] = []
        while len(got) < len(frames):
            got += [d for d, peer in await asyncio.wait_for(aep.recv(), 10) if peer == rid]
        assert got == frames and aep.stats.malformed == 0
        assert sep.stats.bundles >= 1 and aep.stats.bundles_in == sep.stats.bundles
    finally:
        await sep.close()
        await aep.close()


async def test_unauthenticated_frames_in_a_bundle_draw_on_the_budget_one_by_one() -> None:
    """A BUNDLE buys a flooder nothing: 200 HELLOs in one are charged one by one against the peer's budget."""
    cfg = EndpointConfig(inbound_burst=50, inbound_budget=0.001)
    async with raw_member(cfg, 1 << 20) as (aep, _rid, dealer, _):
        reply = await asyncio.wait_for(dealer.recv(), 10)
        while reply[:1] != BUNDLE_OK:
            reply = await asyncio.wait_for(dealer.recv(), 10)
        (takes,) = struct.unpack(">I", reply[1:])
        assert takes == min(cfg.bundle_bytes, cfg.max_frame - 64, 64 << 10)  # (an author takes 64 KiB at most)
        before = aep.stats.over_budget
        await dealer.send(bundle([HELLO] * 200))
        await until(lambda: aep.stats.over_budget - before >= 150, "the budget charged frame by frame")
        got: list[bytes] = []
        while True:
            try:
                got += [d for d, _ in await asyncio.wait_for(aep.recv(), 0.5)]
            except TimeoutError:
                break
        # The raw member's HELLO already took one token: the rest of the burst passes, the others are dropped.
        assert len(got) + (aep.stats.over_budget - before) == 200 and 0 < len(got) <= 50


async def test_an_author_judges_bundled_frames_one_by_one_and_stops_at_the_first_that_is_none() -> None:
    """No agreement makes a frame more or less trusted: a BUNDLE is taken whether or not the author answered the
    peer's BUNDLE_OK (a subscriber that has not yet heard of a new record of the author's sends what the old one
    agreed to), each frame judged.  One too large, or malformed, is refused whole; the first bundled frame that is
    no frame ends the BUNDLE (an honest endpoint bundles only what its core made): a flood's BUNDLE costs one
    failed frame and one warning, not thousands."""
    async with raw_member(EndpointConfig(bundle_bytes=4096), None) as (aep, _rid, dealer, _):
        async def inbox(n: int) -> list[bytes]:
            got: list[bytes] = []
            while len(got) < n:
                got += [d for d, _ in await asyncio.wait_for(aep.recv(), 10)]
            return got

        await dealer.send(bundle([HELLO, HELLO]))  # never said BUNDLE_OK, never told: judged all the same
        assert await inbox(2) == [HELLO, HELLO] and aep.stats.bundles_in == 1
        await dealer.send(bundle([HELLO] * 100))  # 4.8 KB: more than the 4096 bytes it takes
        await dealer.send(bundle([HELLO, b"\x95" + bytes(10)]))  # a frame too short to be one
        await until(lambda: aep.stats.malformed == 2, "both refused whole")
        junk = b"\x95\x01" + bytes(60)  # starts as a frame, does not decode
        await dealer.send(bundle([HELLO, junk, *[junk] * 40, HELLO]))
        assert await inbox(1) == [HELLO]
        await until(lambda: aep.stats.malformed == 3, "the junk BUNDLE")
        with pytest.raises(TimeoutError):  # the HELLO after the junk was never judged
            await asyncio.wait_for(aep.recv(), 0.2)
        assert aep.stats.malformed == 3  # one failure for the whole BUNDLE


async def test_a_subscriber_whose_author_never_answered_sends_single_frames() -> None:
    """An author endpoint from before BUNDLEs never answers a BUNDLE_OK: everything goes as single frames."""
    async with raw_author() as (router, sep, rid):
        await router.send_multipart([rid, SESSION_PONG])
        while (await asyncio.wait_for(router.recv_multipart(), 10))[1][:1] != CREDIT:
            pass
        sep.send_many([Outgoing(frame(i)) for i in range(50)])
        got: list[bytes] = []
        while len(got) < 50:
            _, data = await asyncio.wait_for(router.recv_multipart(), 10)
            if data[:1] == b"\x95":
                got.append(data)
            else:
                assert data[:1] in (PING, CREDIT, BUNDLE_OK), data[:1]
        assert [index(d) for d in got] == list(range(50)) and sep.stats.bundles == 0


async def test_a_provider_stream_travels_to_the_monitor_in_bundles(tmp_path: Path) -> None:
    """Through the asyncio API, the other way: a provider's published burst reaches the author in BUNDLEs,
    every message once, in order."""
    aep = AuthorEndpoint("tcp://127.0.0.1:0")
    author = await Author.create(tmp_path / "a.db", AUTHOR, "monitor", PW, aep, AllowList.of([P1.did]),
                                 store_options=FAST)
    sep = SubscriberEndpoint(aep.addresses[0])
    sub = await Subscriber.create(tmp_path / "s.db", P1, AUTHOR.did, author.channel, PW, sep, store_options=FAST)
    try:
        branch = await sub.subscribe(timeout=10)
        await until(lambda: sep._author_takes > 0, "the author's BUNDLE_OK")
        with pytest.raises(LocalProtocolError):  # refused before anything is sent, bundled or not
            sep.send_many([Outgoing(frame(0)), Outgoing(frame(1)), Outgoing(bytearray(3))])  # type: ignore[arg-type]
        sent = [b"payment %d" % i for i in range(400)]
        for lo in range(0, 400, 100):
            await sub.publish_many(branch, sent[lo:lo + 100])
        got: list[bytes] = []
        while len(got) < len(sent):
            got += [m.payload for m in await asyncio.wait_for(author.next_messages(1000), 10)]
        assert got == sent
        assert sep.stats.bundles > 0 and aep.stats.bundles_in == sep.stats.bundles
        assert aep.stats.malformed == 0 and aep.stats.inbox_dropped == 0
        assert not [e for e in author.pending_events() if type(e).__name__ == "Rejected"]
    finally:
        await sub.close()
        await author.close()
