"""A party in its own process, for multi-process tests: ``python tests/zmq_party.py author|subscriber|flood ...``.

Runs a real :class:`streams.api.Author` or :class:`~streams.api.Subscriber` over :mod:`brokerless` endpoints
with a real SQLite store (created on first run, reopened after a restart), and prints machine-readable lines,
flushed at once, so a test can ``kill -9`` it at any point and compare what each side claimed:

* ``READY <address>``                        -- the author endpoint is bound
* ``SUBSCRIBED <branch hex>``                -- the subscriber holds a grant
* ``PUB <seq>``                              -- ``publish`` returned: the message is on the sender's disk
* ``ACKED <seq>``                            -- the receiver signed that it has everything through seq on disk
* ``GOT <branch hex> <publisher> <seq> <payload>``  -- handed to the application
* ``REJECT <reason>``                        -- a frame the core refused

``flood`` is a hostile peer: it sends garbage, oversized frames, non-canonical msgpack and HELLO floods.
``churn`` is another: ``--conns`` connections of its own, each with its routing id, taking turns to send a PING as
fast as they can (a new peer record at the author on every turn once they outnumber its ``max_peers``); it prints
``FLOODING`` once they are connected.  With ``--hello`` each turn sends a HELLO instead (a record in a handshake).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig, channel_id
from streams.events import Acknowledged, Rejected
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Hello, encode_frame

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
NAME = "fraud-monitor"


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


def out(*words: object) -> None:
    print(*words, flush=True)


def endpoint_config(args: argparse.Namespace) -> EndpointConfig:
    return EndpointConfig(heartbeat_ms=args.hb, liveness=3, reconnect_min_ms=50, reconnect_max_ms=500)


CORE = CoreConfig(fetch_retry_ms=300)


async def _events(party: Author | Subscriber) -> None:
    async for ev in party.events():
        if isinstance(ev, Acknowledged):
            out("ACKED", ev.through_seq)
        elif isinstance(ev, Rejected):
            out("REJECT", ev.reason.name)


async def _consume(party: Author | Subscriber, delay_ms: int) -> None:
    async for m in party:
        out("GOT", m.branch.hex(), m.publisher, m.seq, m.payload.decode())
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)


async def _publish(party: Author | Subscriber, branch: bytes, count: int, interval_ms: int) -> None:
    seq = 0
    while seq < count:
        seq = await party.publish(branch, os.urandom(6).hex().encode())
        out("PUB", seq)
        await asyncio.sleep(interval_ms / 1000)


async def run_author(args: argparse.Namespace) -> None:
    ep = AuthorEndpoint(args.bind, endpoint_config(args))
    db = Path(args.db)
    allowed = AllowList.of([ident(s).did for s in args.allow])
    if db.exists():
        author = await Author.open(db, PW, ep, allowed, store_options=FAST, config=CORE)
    else:
        author = await Author.create(db, ident(args.seed), NAME, PW, ep, allowed, store_options=FAST, config=CORE)
    author.heartbeat_ms = args.hb
    author.head_refresh_ticks = 5
    for a in ep.addresses:
        out("READY", a)
    tasks = [asyncio.create_task(_events(author)), asyncio.create_task(_consume(author, 0))]
    if args.count:
        did = ident(args.allow[0]).did
        while author.branch_of(did) is None:
            await asyncio.sleep(0.02)
        branch = author.branch_of(did)
        assert branch is not None
        tasks.append(asyncio.create_task(_publish(author, branch, args.count, args.interval)))
    await asyncio.sleep(args.seconds)
    for t in tasks:
        t.cancel()
    await author.close()


async def run_subscriber(args: argparse.Namespace) -> None:
    ep = SubscriberEndpoint(args.connect, endpoint_config(args))
    db = Path(args.db)
    author = ident(args.author_seed)
    if db.exists():
        sub = await Subscriber.open(db, PW, ep, store_options=FAST, config=CORE, queue_size=args.queue)
    else:
        sub = await Subscriber.create(db, ident(args.seed), author.did, channel_id(author.sign_public, NAME), PW,
                                      ep, store_options=FAST, config=CORE, queue_size=args.queue)
    sub.heartbeat_ms = args.hb
    sub.head_refresh_ticks = 5
    branches = [b.id for b in sub.branches() if b.open]
    branch = branches[0] if branches else await sub.subscribe(timeout=30)
    out("SUBSCRIBED", branch.hex())
    tasks = [asyncio.create_task(_events(sub))]
    if not args.no_read:
        tasks.append(asyncio.create_task(_consume(sub, args.delay)))
    if args.count:
        tasks.append(asyncio.create_task(_publish(sub, branch, args.count, args.interval)))
    await asyncio.sleep(args.seconds)
    for t in tasks:
        t.cancel()
    await sub.close()


async def run_flood(args: argparse.Namespace) -> None:
    """Hostile peer: garbage of every shape as fast as it can, for ``seconds``."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.connect(args.connect)
    rnd = random.Random(7)
    channel = channel_id(ident(args.author_seed).sign_public, NAME)
    hello = encode_frame(Hello(channel)).raw
    shapes = [
        lambda: rnd.randbytes(rnd.randrange(0, 300)),  # random bytes
        lambda: b"\x95\x01\x07" + rnd.randbytes(40),  # a frame-looking prefix, then garbage
        lambda: b"\x95\x02\x07\xc4\x00\xc4\x00\xc4\x00",  # unknown version
        lambda: hello,  # valid but unauthenticated: the budget caps it
        lambda: b"\x00",  # PING flood
        lambda: b"\xdd\xff\xff\xff\xff",  # a huge array header
    ]
    sent = 0
    end = time.monotonic() + args.seconds
    big = b"\x00" * (2 << 20)  # over the 1 MiB frame limit: ZeroMQ's MAXMSGSIZE cuts the connection
    while time.monotonic() < end:
        for _ in range(200):
            try:
                sock.send(rnd.choice(shapes)(), zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                break
        if rnd.random() < 0.02:
            with contextlib.suppress(zmq.Again):
                sock.send(big, zmq.NOBLOCK)
        time.sleep(0.001)
    out("SENT", sent)
    sock.close(linger=0)
    ctx.term()


async def run_churn(args: argparse.Namespace) -> None:
    """Hostile peer: ``conns`` connections that take turns to send one PING (``--hello``: one HELLO) each, for
    ``seconds``."""
    import zmq

    msg = encode_frame(Hello(channel_id(ident(args.author_seed).sign_public, NAME))).raw if args.hello else b"\x00"
    ctx = zmq.Context()
    socks = []
    for i in range(args.conns):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, b"churn-%05d" % i)
        s.connect(args.connect)
        socks.append(s)
    out("FLOODING")
    sent = 0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        for s in socks:
            with contextlib.suppress(zmq.Again):
                s.send(msg, zmq.NOBLOCK)
                sent += 1
            with contextlib.suppress(zmq.Again):  # the PONGs: read, so that no pipe fills
                while True:
                    s.recv(zmq.NOBLOCK)
    out("SENT", sent)
    for s in socks:
        s.close(linger=0)
    ctx.term()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["author", "subscriber", "flood", "churn"])
    p.add_argument("--db", default="")
    p.add_argument("--bind", action="append", default=[])
    p.add_argument("--connect", default="")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--author-seed", type=int, default=1)
    p.add_argument("--allow", type=int, nargs="*", default=[])
    p.add_argument("--count", type=int, default=0, help="publish until this sequence number")
    p.add_argument("--interval", type=int, default=5, help="ms between publishes")
    p.add_argument("--delay", type=int, default=0, help="ms the application takes per message")
    p.add_argument("--queue", type=int, default=10_000)
    p.add_argument("--no-read", action="store_true")
    p.add_argument("--hb", type=int, default=100, help="heartbeat, ms")
    p.add_argument("--seconds", type=float, default=60.0, help="lifetime")
    p.add_argument("--conns", type=int, default=32, help="churn: connections")
    p.add_argument("--hello", action="store_true", help="churn: send HELLOs, not PINGs")
    args = p.parse_args()
    runner = {"author": run_author, "subscriber": run_subscriber, "flood": run_flood, "churn": run_churn}[args.role]
    asyncio.run(runner(args))


if __name__ == "__main__":
    main()
