"""The endpoint-wide budget for unauthenticated requests (THREATS 8): a flooder that opens many connections, each
with a fresh per-peer token bucket, still cannot push more SUBSCRIBE/HELLO requests to the protocol core (where a
SUBSCRIBE costs an X25519 unsealing) than the global bucket allows; members' frames never draw from it."""

from __future__ import annotations

import asyncio
import os

import zmq
import zmq.asyncio

from brokerless import AuthorEndpoint, EndpointConfig
from streams.core import channel_id
from streams.identity import Identity
from streams.wire import Fetch, Hello, Kind, Subscribe, decode_frame, encode_frame

CHANNEL = channel_id(Identity.from_seed(b"\x01" * 32).sign_public, "budget")


async def _drain(ep: AuthorEndpoint, quiet_s: float = 0.5) -> list[bytes]:
    """Every frame the endpoint hands to the driver until none arrives for ``quiet_s``."""
    out: list[bytes] = []
    while True:
        try:
            batch = await asyncio.wait_for(ep.recv(), quiet_s)
        except TimeoutError:
            return out
        out += [data for data, _ in batch]


async def test_many_connections_cannot_exceed_the_global_budget_and_members_are_not_charged() -> None:
    cfg = EndpointConfig(inbound_budget=1000, inbound_burst=100, global_budget=50, global_burst=200)
    ep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    ctx = zmq.asyncio.Context()
    socks = []
    try:
        subscribe = encode_frame(Subscribe(CHANNEL), os.urandom(200)).raw
        hello = encode_frame(Hello(CHANNEL)).raw
        # 40 connections x 50 requests: each connection is within its own per-peer burst (100), 2,000 in all.
        for _ in range(40):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(ep.addresses[0])
            socks.append(s)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for s in socks:
            for i in range(50):
                await s.send(subscribe if i % 2 else hello)
        # A member frame (a FETCH naming a branch) sent in the middle of the flood is not charged globally.
        member = encode_frame(Fetch(CHANNEL, os.urandom(16), 0, 1, 10, 1), b"", lambda m: bytes(64)).raw
        await socks[0].send(member)
        got = await _drain(ep)
        elapsed = loop.time() - t0
        requests = [d for d in got if decode_frame(d).kind in (Kind.HELLO, Kind.SUBSCRIBE)]
        # What reached the driver is bounded by the global bucket (burst + rate x elapsed), not by 40 x 100.
        assert len(requests) <= cfg.global_burst + cfg.global_budget * elapsed + 1
        assert len(requests) >= cfg.global_burst  # and the budget is spent on well-formed requests first
        assert ep.stats.over_global_budget == 2000 - len(requests)
        assert member in got
        assert ep.stats.over_budget == 0  # no single connection went over its own bucket
        # The bucket refills: a request later is served again.
        await asyncio.sleep(0.2)
        await socks[1].send(hello)
        assert hello in await _drain(ep)
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()
        await ep.close()
