"""Cancellation, concurrency and close of the asyncio layer (``streams.api``, ``brokerless`` endpoints' tasks).

Real SQLite stores, real PyNaCl, the in-memory network or real ZeroMQ on tcp loopback.  Every wait is "until a
condition, with a generous timeout"; nothing measures time."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

from streams.api import Author, MemoryHub, MemoryTransport, StoreOptions, Subscriber
from streams.core import Outgoing
from streams.identity import Identity
from streams.policy import AllowList

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
AUTHOR, P1 = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
POLICY = AllowList.of([P1.did])


class _Gated:
    """A transport without ``send_many`` whose ``send`` awaits (a network send waiting for its socket): while
    ``gate`` is set, each send parks until the gate opens, and says which task it parked."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.gate: asyncio.Event | None = None
        self.parked: asyncio.Future[asyncio.Task[Any] | None] | None = None

    async def send(self, out: Outgoing) -> None:
        gate = self.gate
        if gate is not None:
            if self.parked is not None and not self.parked.done():
                self.parked.set_result(asyncio.current_task())
            await gate.wait()
        await self.inner.send(out)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def _drain(sub: Subscriber, n: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < n:
        got += [m.payload for m in await sub.next_messages(timeout=10)]
    return got


async def test_a_cancelled_publisher_does_not_fail_the_publishes_its_commit_covered(tmp_path: Path) -> None:
    # Over a transport without send_many, the first publish of a loop turn commits the group and then sends its
    # frames one await at a time.  That publisher cancelled in a send used to fail every other publish of its
    # group with ClosedResourceError("cancelled") -- though the party was open and their messages committed (an
    # application retrying them published them twice) -- and leave their frames unsent.
    hub = MemoryHub()
    wrapped = _Gated(hub.author_endpoint())
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, wrapped,  # type: ignore[arg-type]
                                 POLICY, store_options=FAST)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    branch = await sub.subscribe(timeout=10)
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))

    gate = wrapped.gate = asyncio.Event()
    wrapped.parked = loop.create_future()
    tasks = [asyncio.create_task(author.publish(branch, b"m%d" % i)) for i in range(4)]  # one group
    sender = await asyncio.wait_for(wrapped.parked, 10)
    assert sender in tasks  # a publish leads the group's commit and sends (not a driver loop)
    sender.cancel()
    await asyncio.sleep(0)
    gate.set()
    wrapped.gate = None
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

    others = [r for t, r in zip(tasks, results, strict=True) if t is not sender]
    assert isinstance(results[tasks.index(sender)], asyncio.CancelledError)
    assert all(isinstance(r, int) for r in others), others  # committed, sent: their seqs, not an error
    after = await author.publish(branch, b"after")  # the party is usable
    got = await _drain(sub, 5)
    assert got == [b"m0", b"m1", b"m2", b"m3", b"after"], got  # each once, in order
    assert after > max(r for r in others if isinstance(r, int))
    await sub.close()
    await author.close()
    gc.collect()
    await asyncio.sleep(0)
    assert not unretrieved, unretrieved  # no "Future exception was never retrieved"
