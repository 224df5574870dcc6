"""Processes of the flood harness (:mod:`chaos.flood`): ``python chaos/flood_party.py author|host|flooder ...``.

* ``author``  -- an :class:`~streams.api.Author` on an :class:`~brokerless.AuthorEndpoint`; admits the listed
  subscriber seeds and publishes round-robin into every open branch, at most ``--window`` messages ahead of each
  branch's last ACK (so the stream runs at the system's capacity), except the ``--push-seed`` branch, published
  every round whatever its ACKs say (the slow peer: its frames pile up in the endpoint's bounded queue).
  Prints a JSON stats line (``S {...}``) every half second: publishes, the endpoint counters, refusals, RSS.
* ``host``    -- many :class:`~streams.api.Subscriber` instances, each with its own SubscriberEndpoint (one shared
  ZeroMQ context) and its own SQLite store, in one event loop.  Prints ``READY n`` once all hold their grant,
  then ``C <unix time> [per-subscriber counts]`` every half second.
* ``flooder`` -- a hostile peer on a raw DEALER: garbage, frame-looking garbage, HELLO and SUBSCRIBE requests (with a
  random sealed body) and PINGs at ``--rate`` frames per second; prints ``SENT {...}`` at the end.  With ``--sink``
  it also floods a decoy, as told on stdin (the control phases of :mod:`chaos.flood`).
* ``sink``    -- the decoy: an idle author endpoint (no channel) that refuses the flood as the author's would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import select
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq
import zmq.asyncio

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from streams.api import Author, StoreOptions, Subscriber
from streams.core import channel_id
from streams.events import Acknowledged, Rejected, SubscriberAdmitted, SubscriberRefused
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Hello, Subscribe, encode_frame

STORE = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "flood"
NAME = "flood-channel"
AUTHOR_SEED = 1


def ident(seed: int) -> Identity:
    return Identity.from_seed(seed.to_bytes(4, "big") * 8)


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _out(*words: object) -> None:
    print(*words, flush=True)


def _term_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_author(args: argparse.Namespace) -> None:
    stop = _term_event()
    ep = AuthorEndpoint(args.bind, EndpointConfig())
    seeds = range(args.first_seed, args.first_seed + args.subs)
    policy = AllowList.of([ident(s).did for s in seeds])
    author = await Author.create(Path(args.db), ident(AUTHOR_SEED), NAME, PW, ep, policy, store_options=STORE)
    _out("READY", ep.addresses[0])
    acked: dict[bytes, int] = defaultdict(int)
    sent: dict[bytes, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)

    async def events() -> None:
        async for ev in author.events():
            if isinstance(ev, Acknowledged) and ev.publisher == 0:
                acked[ev.branch] = max(acked[ev.branch], ev.through_seq)
            elif isinstance(ev, SubscriberRefused):
                counts["subscribe_refused"] += 1  # a SUBSCRIBE that reached the core (was unsealed or tried)
            elif isinstance(ev, SubscriberAdmitted):
                counts["admitted"] += 1
            elif isinstance(ev, Rejected):
                counts["rejected_" + ev.reason.name] += 1

    async def publish() -> None:
        payload = os.urandom(args.payload)
        n = 0
        while True:
            branches = [b.id for b in author.branches() if b.open]
            push = author.branch_of(ident(args.push_seed).did) if args.push_seed else None
            progressed = False
            for b in branches:
                if sent[b] - acked[b] >= args.window and b != push:
                    continue  # this member is behind (or stopped reading): spend nothing on it
                for _ in range(args.push_burst if b == push else 1):
                    sent[b] = await author.publish(b, payload)
                    n += 1
                counts["published"] = n
                progressed = True
                if n % 16 == 0:
                    await asyncio.sleep(0)  # let the receive loop (ACKs, and whatever floods in) run
            await asyncio.sleep(0 if progressed else 0.005)

    async def stats() -> None:
        while True:
            st = ep.stats
            _out("S", json.dumps({
                "t": time.time(), "rss_kb": rss_kb(), "cpu_s": sum(os.times()[:2]), "peers": len(ep.peers()), **counts,
                "frames_in": st.frames_in, "frames_out": st.frames_out, "malformed": st.malformed,
                "over_budget": st.over_budget, "inbox_dropped": st.inbox_dropped, "send_dropped": st.send_dropped,
                "max_queue_seen": st.max_queue_seen, "peers_expired": st.peers_expired,
                "queued_frames": sum(ep.queue_sizes().values())}))
            await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(c) for c in (events(), publish(), stats())]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await author.close()


async def run_host(args: argparse.Namespace) -> None:
    stop = _term_event()
    ctx = zmq.asyncio.Context()
    author = ident(AUTHOR_SEED)
    channel = channel_id(author.sign_public, NAME)
    seeds = list(range(args.first_seed, args.first_seed + args.subs))
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    counts = [0] * len(seeds)
    subs: list[Subscriber] = []
    gate = asyncio.Semaphore(32)  # handshakes in flight at once

    async def one(i: int, seed: int) -> None:
        ep = SubscriberEndpoint(args.connect, EndpointConfig(), context=ctx)
        sub = await Subscriber.create(work / f"s{seed}.db", ident(seed), author.did, channel, PW, ep,
                                      store_options=STORE, queue_size=args.queue)
        subs.append(sub)
        async with gate:
            await sub.subscribe(timeout=300, retry=2.0)

    await asyncio.gather(*(one(i, s) for i, s in enumerate(seeds)))
    # subs were appended in completion order of creation; keep counts by index of the seed instead
    by_did = {ident(s).did: i for i, s in enumerate(seeds)}

    async def consume(sub: Subscriber) -> None:
        i = by_did[sub.did]
        async for _m in sub:
            counts[i] += 1

    tasks = [] if args.no_read else [asyncio.create_task(consume(s)) for s in subs]
    _out("READY", len(subs))

    async def report() -> None:
        while True:
            _out("C", time.time(), json.dumps(counts), sum(os.times()[:2]))
            await asyncio.sleep(0.5)

    tasks.append(asyncio.create_task(report()))
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in subs:
        with contextlib.suppress(Exception):
            await s.close()
    ctx.term()


def run_flooder(args: argparse.Namespace) -> None:
    """Send the flood at ``--rate`` frames per second.  By default at the author for ``--seconds``.  With
    ``--stdin`` or ``--sink ADDR``: commands on stdin choose the target -- ``author``, ``sink`` (the decoy: the same
    frames at the same rate into a process that discards them, so the machine carries the same load while the
    author is left alone), ``off`` -- and ``stop`` ends the run; ``SENT`` counts only what reached the author."""
    ctx = zmq.Context()

    def dealer(addr: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100)  # it never reads what the author answers
        sock.connect(addr)
        return sock

    to_author = dealer(args.connect)
    to_sink = dealer(args.sink) if args.sink else None
    driven = args.stdin or to_sink is not None
    rnd = random.Random(7)
    channel = channel_id(ident(AUTHOR_SEED).sign_public, NAME)
    hello = encode_frame(Hello(channel)).raw
    shapes: dict[str, Any] = {
        "garbage": lambda: rnd.randbytes(rnd.randrange(0, 300)),
        "frame_like": lambda: b"\x95\x01\x07" + rnd.randbytes(40),
        "bad_version": lambda: b"\x95\x02\x07\xc4\x00\xc4\x00\xc4\x00",
        "hello": lambda: hello,
        # A well-formed SUBSCRIBE whose sealed body is random: opening it costs the author an X25519 operation,
        # which is why the endpoint's per-peer budget must refuse the flood before the core sees it.
        "subscribe": lambda: encode_frame(Subscribe(channel), rnd.randbytes(200)).raw,
        "ping": lambda: b"\x00",
    }
    names = list(shapes)
    weights = [3, 2, 1, 2, 4, 1]
    # Pre-built: the flooder shares the machine's two cores with its victims, so it should spend as little CPU as
    # possible on making frames (a real attacker's CPU is not ours).
    pool = [(name, shapes[name]()) for name in rnd.choices(names, weights, k=4096)]
    sent: dict[str, int] = defaultdict(int)
    target = None if driven else to_author
    end = time.monotonic() + args.seconds
    tick = 0.01
    per_tick = max(1, int(args.rate * tick))
    i = 0
    while driven or time.monotonic() < end:
        if driven and select.select([sys.stdin], [], [], 0)[0]:
            cmd = sys.stdin.readline().strip()
            if cmd in ("stop", ""):
                break
            target = {"author": to_author, "sink": to_sink}.get(cmd)
        t = time.monotonic()
        if target is not None:
            for _ in range(per_tick):
                name, data = pool[i % len(pool)]
                i += 1
                try:
                    target.send(data, zmq.NOBLOCK)
                    if target is to_author:
                        sent[name] += 1
                except zmq.Again:
                    sent["hwm_full"] += 1
        time.sleep(max(0.0, tick - (time.monotonic() - t)))
    cpu = os.times()
    sent["cpu_ms"] = int((cpu.user + cpu.system) * 1000)
    _out("SENT", json.dumps(sent))
    to_author.close(linger=0)
    if to_sink is not None:
        to_sink.close(linger=0)
    ctx.term()


async def run_sink(args: argparse.Namespace) -> None:
    """The decoy's target: an idle :class:`~brokerless.AuthorEndpoint` of its own, with no channel behind it, that
    receives the flood and refuses it exactly as the author's endpoint would (the same triage, budgets and decoder,
    the same ZeroMQ receive path), until SIGTERM.  What it lets through is taken and discarded."""
    stop = _term_event()
    ep = AuthorEndpoint(args.bind, EndpointConfig())
    _out("READY", ep.addresses[0])

    async def drain() -> None:
        while True:
            await ep.recv()

    task = asyncio.create_task(drain())
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await ep.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", choices=["author", "host", "flooder", "sink"])
    p.add_argument("--bind", default="tcp://127.0.0.1:0")
    p.add_argument("--connect", default="")
    p.add_argument("--db", default="")
    p.add_argument("--dir", default="")
    p.add_argument("--subs", type=int, default=0, help="author: subscribers admitted; host: subscribers hosted")
    p.add_argument("--first-seed", type=int, default=1000)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--push-seed", type=int, default=0,
                   help="author: publish to this subscriber's branch every round, ignoring the window (as an "
                        "alert feed that never waits would): its pipe fills when it stops reading")
    p.add_argument("--push-burst", type=int, default=1, help="author: messages per round to the push branch")
    p.add_argument("--payload", type=int, default=256)
    p.add_argument("--queue", type=int, default=1000)
    p.add_argument("--no-read", action="store_true")
    p.add_argument("--rate", type=float, default=20_000, help="flooder: frames per second")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--sink", default="", help="flooder: the decoy's address; then stdin commands pick the target")
    p.add_argument("--stdin", action="store_true", help="flooder: stdin commands pick the target (author/off)")
    args = p.parse_args()
    if args.role == "flooder":
        run_flooder(args)
    elif args.role == "sink":
        asyncio.run(run_sink(args))
    else:
        asyncio.run(run_author(args) if args.role == "author" else run_host(args))


if __name__ == "__main__":
    main()
