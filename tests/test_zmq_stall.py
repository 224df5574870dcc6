"""A subscriber whose own event loop stalls for longer than its liveness window -- a starved host running hundreds of
subscribers on one core, a long GC, a blocking call -- must not take the author for dead while the author's answers
wait unread in its own socket (THREATS 8: load must not deny admission for good).

Found with ``chaos/flood.py --pin`` (1,000 subscribers in two host processes sharing one core): the hosts' event loops
lagged 4-7 s, more than the 3 s liveness window, so subscriber endpoints "reconnected" again and again (closing the
socket with the CHALLENGE or GRANT waiting in it, opening a new one under a new routing id).  A handshake needs its
answer read on the socket that asked: handshakes took 60-120 s with up to 10 reconnects each (and in earlier runs of
that harness, past the 300 s timeout in one run in two).  Here one loop, stalled 0.5 s at a time against a 0.3 s
window, shows the mechanism: a PING answered at once, the answer still unread when the heartbeat looked -- about one
reconnect a second before the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zmq

from brokerless import EndpointConfig, SubscriberEndpoint
from brokerless.endpoints import PING, PONG
from streams.api import StoreOptions, Subscriber
from streams.core import CoreConfig, channel_id

from .zmq_party import NAME, PW, ident
from .zmqproc import party, procs

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
#: Each stall blocks the subscriber's whole event loop for longer than its liveness window (3 x 100 ms).
STALL_S = 0.5
CFG = EndpointConfig(heartbeat_ms=100, liveness=3, reconnect_min_ms=50, reconnect_max_ms=500)


@contextlib.asynccontextmanager
async def stalled_loop(stall_s: float = STALL_S) -> AsyncIterator[None]:
    """Block the running event loop for ``stall_s`` at a time, with one short turn for the others in between (the
    loop of a host whose core is shared by far more work than it can run)."""
    stop = False

    async def staller() -> None:
        while not stop:
            time.sleep(stall_s)  # the point: nothing else on this loop runs meanwhile
            await asyncio.sleep(0.01)

    task = asyncio.create_task(staller())
    try:
        yield
    finally:
        stop = True
        await task


async def test_a_handshake_completes_while_the_subscribers_loop_keeps_stalling(tmp_path: Path) -> None:
    with procs() as started:
        author = party(started, "author", "--db", str(tmp_path / "a.db"), "--bind", "tcp://127.0.0.1:0",
                       "--allow", "10", "--count", "5", "--interval", "50", "--seconds", "60")
        addr = author.first("READY").split()[1]
        a_id = ident(1)
        ep = SubscriberEndpoint(addr, CFG)
        sub = await Subscriber.create(tmp_path / "s.db", ident(10), a_id.did, channel_id(a_id.sign_public, NAME), PW,
                                      ep, store_options=FAST, config=CoreConfig(fetch_retry_ms=300))
        try:
            async with stalled_loop():
                t0 = time.monotonic()
                branch = await sub.subscribe(timeout=20, retry=0.3)
                handshake_s = time.monotonic() - t0
                # The author publishes 5 messages once the branch exists: they arrive despite the stalls.
                got = [await sub.next_message(timeout=20) for _ in range(5)]
                # Then quiet: only heartbeats, each answered at once by the author; our loop keeps stalling.
                await asyncio.sleep(3)
            assert [m.seq for m in got] == [1, 2, 3, 4, 5]
            assert all(m.branch == branch for m in got)
            assert handshake_s < 15
            # The author was never silent: its answers were waiting in our socket each time we looked.  (Before
            # the fix, the quiet stretch alone cost about one reconnect a second.)
            assert ep.stats.reconnects == 0, ep.stats
        finally:
            await sub.close()


def _pong_server(ctx: zmq.Context[zmq.Socket[bytes]], answer: threading.Event, stop: threading.Event,
                 port: list[int], ready: threading.Event) -> None:
    """A minimal author endpoint on its own thread (unaffected by the test loop's stalls): answers every PING with a
    PONG of one session while ``answer`` is set, and is silent otherwise."""
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port.append(router.bind_to_random_port("tcp://127.0.0.1"))
    ready.set()
    try:
        while not stop.is_set():
            if not router.poll(20):
                continue
            rid, data = router.recv_multipart()
            if data == PING and answer.is_set():
                router.send_multipart([rid, PONG + b"I" * 8 + b"S" * 8])
    finally:
        router.close(linger=0)


@pytest.mark.timeout(60)
async def test_a_stalled_subscriber_still_detects_an_author_that_is_really_silent() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    answer, stop, ready = threading.Event(), threading.Event(), threading.Event()
    answer.set()
    port: list[int] = []
    server = threading.Thread(target=_pong_server, args=(ctx, answer, stop, port, ready), daemon=True)
    server.start()
    ready.wait(5)
    ep = SubscriberEndpoint(f"tcp://127.0.0.1:{port[0]}", CFG)
    reader = asyncio.create_task(ep.recv())
    try:
        async with stalled_loop():
            # The author answers every PING: however long our own stalls, that is no reason to reconnect.
            end = time.monotonic() + 3
            while time.monotonic() < end:
                await asyncio.sleep(0.05)
            assert ep.stats.reconnects == 0, ep.stats
            assert ep.session == b"S" * 8
            # The author goes silent: liveness still works, stalls or not (in heartbeats we were awake to send).
            answer.clear()
            end = time.monotonic() + 20
            while ep.stats.reconnects == 0 and time.monotonic() < end:
                await asyncio.sleep(0.05)
            assert ep.stats.reconnects >= 1
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await ep.close()
        stop.set()
        server.join(5)
        ctx.term()
