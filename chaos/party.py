"""One chaos process: ``python chaos/party.py author|subscriber ...`` -- an :class:`~streams.api.Author` or a
:class:`~streams.api.Subscriber` over :mod:`brokerless` ZeroMQ endpoints with a real SQLite store (created on the
first run, reopened from disk after every ``kill -9``), publishing into its branches in both directions.

Everything it claims goes to an append-only, fsync'd log (:mod:`chaos.applog`), one line per fact, prefixed by the
lifetime number the harness passes in:

* ``START <role>`` / ``BRANCH <branch hex>`` -- the process is up / serves this branch
* ``PUB <branch> <seq>``                       -- ``publish`` returned: the message is on this process's disk
* ``ACKED <branch> <publisher> <through>``     -- the receiver's signed ACK (sent after its commit) arrived
* ``WACK <branch> <seq>``                      -- ``wait_acknowledged(branch, seq)`` returned
* ``GOT <branch> <publisher> <seq> <hash>``    -- handed to the application (logged before the next is asked for)
* ``INJ <branch> <publisher> <seq>``           -- an old, already delivered frame re-injected (replay attack)
* ``REJECT <reason> ...`` / ``FORK ...``       -- what the core refused / fork evidence
* ``DONE <branch> <seq>``                      -- this process published its whole quota on a branch

Replays: after every (re)start, the process takes up to ``--inject`` frames that its store already holds *and*
already marked delivered to the application, and feeds them back in through its transport exactly as a relay
would.  Any GOT at such a position in the same lifetime would be a replay accepted (THREATS 3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from chaos.applog import AppLog
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig, Outgoing, channel_id
from streams.errors import ClosedResourceError, StreamsError
from streams.events import Acknowledged, ForkDetected, Rejected
from streams.identity import Identity
from streams.policy import AllowList

#: ``synchronous=NORMAL`` survives process crashes (SIGKILL), which is what this harness inflicts; a cheap KDF keeps
#: the many restarts fast (the passphrase KDF is not under test here).
STORE = StoreOptions(durable=False, opslimit=1, memlimit=8192, journal=False)  # (--journal: the default)
CORE = CoreConfig(fetch_retry_ms=300)
PW = "chaos"
NAME = "chaos-channel"


def ident(seed: int) -> Identity:
    """The deterministic identity of a party (seeds are public test values)."""
    return Identity.from_seed(seed.to_bytes(2, "big") * 16)


def channel_of(author_seed: int) -> bytes:
    return channel_id(ident(author_seed).sign_public, NAME)


class InjectingTransport:
    """A transport wrapper that can feed recorded frames back in, as an on-path relay replaying them would.

    Everything else passes through to the wrapped endpoint (``on_reconnect`` included)."""

    def __init__(self, inner: AuthorEndpoint | SubscriberEndpoint) -> None:
        self.inner = inner
        self._injected: deque[tuple[bytes, object]] = deque()
        self._wake = asyncio.Event()
        self._pending: asyncio.Future[list[tuple[bytes, object]]] | None = None

    @property
    def on_reconnect(self) -> Callable[[], Awaitable[None]] | None:
        return getattr(self.inner, "on_reconnect", None)

    @on_reconnect.setter
    def on_reconnect(self, cb: Callable[[], Awaitable[None]] | None) -> None:
        if isinstance(self.inner, SubscriberEndpoint):
            self.inner.on_reconnect = cb

    def inject(self, frames: list[bytes], peer: object) -> None:
        self._injected.extend((f, peer) for f in frames)
        self._wake.set()

    async def send(self, out: Outgoing) -> None:
        await self.inner.send(out)

    async def recv(self) -> list[tuple[bytes, object]]:
        if not self._injected:
            if self._pending is None:
                self._pending = asyncio.ensure_future(self.inner.recv())
            wake = asyncio.ensure_future(self._wake.wait())
            try:
                waits: set[asyncio.Future[object]] = {self._pending, wake}  # type: ignore[arg-type]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
        self._wake.clear()
        batch = list(self._injected)
        self._injected.clear()
        if self._pending is not None and self._pending.done():
            pending, self._pending = self._pending, None
            batch.extend(pending.result())
        return batch

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pending
        await self.inner.close()


def _endpoint_config(hb: int) -> EndpointConfig:
    return EndpointConfig(heartbeat_ms=hb, liveness=3, reconnect_min_ms=50, reconnect_max_ms=500)


async def _events(party: Author | Subscriber, log: AppLog) -> None:
    async for ev in party.events():
        if isinstance(ev, Acknowledged):
            log.line("ACKED", ev.branch.hex(), ev.publisher, ev.through_seq)
        elif isinstance(ev, Rejected):
            log.line("REJECT", ev.reason.name, (ev.branch or b"").hex() or "-", ev.publisher, ev.seq)
        elif isinstance(ev, ForkDetected):
            log.line("FORK", ev.branch.hex(), ev.publisher, ev.seq)


async def _consume(party: Author | Subscriber, log: AppLog) -> None:
    # The GOT line is durable before next_message() is called again, which is what marks the message delivered:
    # a kill between the two re-delivers it (at least once), never loses it.
    async for m in party:
        log.line("GOT", m.branch.hex(), m.publisher, m.seq, m.hash.hex())


async def _publish(party: Author | Subscriber, log: AppLog, branch: bytes, me: int, quota: int, window: int,
                   interval_ms: float, size: int = 16) -> None:
    seq = next((c.next_seq - 1 for c in party.store.load_chains() if c.branch == branch and c.publisher == me), 0)
    while seq < quota:
        seq = await party.publish(branch, os.urandom(size))
        log.line("PUB", branch.hex(), seq)
        if seq > window:
            # Flow control: at most ``window`` messages not yet durable at the receiver.
            await party.wait_acknowledged(branch, seq - window)
            log.line("WACK", branch.hex(), seq - window)
        if interval_ms:
            await asyncio.sleep(interval_ms / 1000)
    await party.wait_acknowledged(branch, seq)
    log.line("WACK", branch.hex(), seq)
    log.line("DONE", branch.hex(), seq)


def _inject_replays(party: Author | Subscriber, tr: InjectingTransport, log: AppLog, me: dict[bytes, int],
                    count: int, rng: random.Random) -> None:
    """Re-inject up to ``count`` frames already accepted *and* marked delivered (never redelivered legitimately)."""
    if count <= 0:
        return
    picks: list[tuple[bytes, int, int, bytes]] = []
    for (branch, publisher), cursor in party.store.delivered().items():
        if me.get(branch) == publisher or cursor < 1:
            continue
        seqs = rng.sample(range(1, cursor + 1), min(cursor, count))
        for s in seqs:
            entry = party.store.log_entry(branch, publisher, s)
            if entry is not None:
                picks.append((branch, publisher, s, entry[1]))
    rng.shuffle(picks)
    picks = picks[:count]
    for branch, publisher, s, _frame in picks:
        log.line("INJ", branch.hex(), publisher, s)
    tr.inject([p[3] for p in picks], b"replayer" if isinstance(party, Author) else None)


async def _until_term() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_author(args: argparse.Namespace, log: AppLog, rng: random.Random) -> None:
    tr = InjectingTransport(AuthorEndpoint(args.bind, _endpoint_config(args.hb)))
    db = Path(args.db)
    subs = [ident(s) for s in args.subs]
    policy = AllowList.of([s.did for s in subs])
    if db.exists():
        author = await Author.open(db, PW, tr, policy, store_options=_store(args), config=CORE)
    else:
        author = await Author.create(db, ident(args.seed), NAME, PW, tr, policy, store_options=_store(args),
                                     config=CORE)
    try:
        author.heartbeat_ms = args.hb
        author.head_refresh_ticks = 5
        branches = []
        for s in subs:
            # Pre-opened: the grant goes out when the subscriber asks (a restart mid-handshake is harmless).
            b = author.branch_of(s.did) or await author.open_branch(s.did)
            branches.append(b)
            log.line("BRANCH", b.hex())
        log.line("START", "author")
        tasks = [asyncio.create_task(_events(author, log)), asyncio.create_task(_consume(author, log))]
        _inject_replays(author, tr, log, dict.fromkeys(branches, 0), args.inject, rng)
        tasks += [asyncio.create_task(_publish(author, log, b, 0, args.quota, args.window, args.interval,
                                                  args.size))
                  for b in branches]
        await _until_term()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await author.close()


async def run_subscriber(args: argparse.Namespace, log: AppLog, rng: random.Random) -> None:
    tr = InjectingTransport(SubscriberEndpoint(args.connect, _endpoint_config(args.hb)))
    db = Path(args.db)
    if db.exists():
        sub = await Subscriber.open(db, PW, tr, store_options=_store(args), config=CORE)
    else:
        author = ident(args.author_seed)
        sub = await Subscriber.create(db, ident(args.seed), author.did, channel_of(args.author_seed), PW, tr,
                                      store_options=_store(args), config=CORE)
    try:
        sub.heartbeat_ms = args.hb
        sub.head_refresh_ticks = 5
        opened = [b for b in sub.branches() if b.open]
        while not opened:
            with contextlib.suppress(StreamsError):
                await sub.subscribe(timeout=10)
            opened = [b for b in sub.branches() if b.open]
        info = opened[0]
        me = info.members.index(sub.did)
        log.line("SUBSCRIBED", info.id.hex())
        log.line("START", "subscriber")
        tasks = [asyncio.create_task(_events(sub, log)), asyncio.create_task(_consume(sub, log))]
        _inject_replays(sub, tr, log, {info.id: me}, args.inject, rng)
        tasks.append(asyncio.create_task(_publish(sub, log, info.id, me, args.quota, args.window, args.interval,
                                                             args.size)))
        await _until_term()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        with contextlib.suppress(ClosedResourceError):
            await sub.close()


def _store(args: argparse.Namespace) -> StoreOptions:
    return dataclasses.replace(STORE, journal=args.journal)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", choices=["author", "subscriber"])
    p.add_argument("--db", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--life", type=int, default=0)
    p.add_argument("--bind", action="append", default=[])
    p.add_argument("--connect", default="")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--author-seed", type=int, default=1)
    p.add_argument("--subs", type=int, nargs="*", default=[])
    p.add_argument("--quota", type=int, default=100, help="publish until this sequence number, per branch")
    p.add_argument("--window", type=int, default=64, help="most messages published but not yet acknowledged")
    p.add_argument("--interval", type=float, default=0.0, help="ms between publishes")
    p.add_argument("--inject", type=int, default=20, help="old frames re-injected after each start")
    p.add_argument("--hb", type=int, default=100, help="heartbeat, ms")
    p.add_argument("--size", type=int, default=16, help="payload bytes (1 KiB and more: the store's frame file)")
    p.add_argument("--journal", action="store_true",
                   help="the store's commit journal on (the library's default; off without this flag)")
    args = p.parse_args()
    log = AppLog(args.log, args.life)
    rng = random.Random(f"{args.seed}-{args.life}")
    runner = run_author if args.role == "author" else run_subscriber
    try:
        asyncio.run(runner(args, log, rng))
    finally:
        log.close()


if __name__ == "__main__":
    main()
