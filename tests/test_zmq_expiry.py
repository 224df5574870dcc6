"""A subscriber the author endpoint forgot (its liveness expired: a stalled host, a paused process, a long GC)
but which is alive and comes back must not be starved: the author's routes for its branch are gone, so nothing
published there reaches it until it names its branch again (THREATS 4 and 8: nothing lost, nothing stalled)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import zmq
import zmq.asyncio

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from brokerless.endpoints import PING, PONG
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig
from streams.identity import Identity
from streams.policy import AllowList

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"


async def test_a_forgotten_live_subscriber_is_routed_again_and_misses_nothing(tmp_path: Path) -> None:
    author_id, sub_id = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x0a" * 32)
    # The author forgets a peer silent for 200 ms; the subscriber, idle, pings only every second: between pings the
    # author forgets it (and its routes) every time, as a stalled host's peers are forgotten under load.
    a_ep = AuthorEndpoint("tcp://127.0.0.1:0", EndpointConfig(heartbeat_ms=100, liveness=2))
    author = await Author.create(tmp_path / "a.db", author_id, "expiry", PW, a_ep, AllowList.of([sub_id.did]),
                                 store_options=FAST, config=CoreConfig(fetch_retry_ms=200))
    s_ep = SubscriberEndpoint(a_ep.addresses[0], EndpointConfig(heartbeat_ms=1000, liveness=30))
    sub = await Subscriber.create(tmp_path / "s.db", sub_id, author_id.did, author.channel, PW, s_ep,
                                  store_options=FAST)
    try:
        await sub.subscribe(timeout=20)
        branch = author.branch_of(sub_id.did)
        assert branch is not None
        await author.publish(branch, b"first")
        assert (await asyncio.wait_for(sub.next_message(), 10)).payload == b"first"
        # Idle long enough for the author to forget the peer several times over.
        expired0 = a_ep.stats.peers_expired
        await asyncio.sleep(1.5)
        assert a_ep.stats.peers_expired > expired0  # the premise: the author did forget it
        for i in range(5):
            await author.publish(branch, b"m%d" % i)
        got = [(await asyncio.wait_for(sub.next_message(), 15)).payload for _ in range(5)]
        assert got == [b"m%d" % i for i in range(5)]
        await author.wait_acknowledged(branch, 6, timeout=15)
    finally:
        await sub.close()
        await author.close()


async def test_replayed_session_pongs_cause_coalesced_catch_ups_not_a_pile() -> None:
    # A relay replaying old PONGs (another session of the same author) makes the subscriber think it was forgotten:
    # it catches up -- harmless, duplicates are rejected -- but never runs a pile of catch-ups at once.
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    ep = SubscriberEndpoint(f"tcp://127.0.0.1:{port}", EndpointConfig(heartbeat_ms=100, liveness=100))
    running = peak = calls = 0

    async def slow_catch_up() -> None:
        nonlocal running, peak, calls
        calls += 1
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.3)
        running -= 1

    ep.on_reconnect = slow_catch_up
    reader = asyncio.create_task(ep.recv())
    try:
        rid, ping = await asyncio.wait_for(router.recv_multipart(), 5)  # the endpoint's heartbeat PING
        assert ping == PING
        inst = b"I" * 8
        await router.send_multipart([rid, PONG + inst + b"A" * 8])
        for i in range(50):
            await router.send_multipart([rid, PONG + inst + (b"B" if i % 2 == 0 else b"A") * 8])
        await asyncio.sleep(1.0)
        assert ep.session in (b"A" * 8, b"B" * 8)
        assert peak == 1  # never two at once
        assert 1 <= calls <= 3  # 50 triggers: one run, one coalesced re-run (and at most one more)
    finally:
        reader.cancel()
        await ep.close()
        router.close(linger=0)
        ctx.term()
