"""Regressions found by reviewing this session's own changes (each failed before its fix): an ACK that comes in
the same batch as the branch's closing frame, a member's catch-up burst on branches the author's endpoint has no
route for yet, and a cancellation of close()'s caller in the very turn the close ends."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import zmq

from brokerless import AuthorEndpoint
from streams._tasks import wait_shielded
from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Fetch, encode_frame

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
AUTHOR, P1 = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)


async def test_an_ack_in_the_same_batch_as_the_closing_frame_still_answers_wait_acknowledged(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await Author.create(tmp_path / "a.db", AUTHOR, "m", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                                 store_options=FAST)
    sub = await Subscriber.create(tmp_path / "s.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    try:
        branch = await sub.subscribe(timeout=5)
        held: list[tuple[str, bytes, str]] = []
        deliver = hub.inject

        def hold(to: str, data: bytes, peer: str = "attacker") -> None:
            if to == "author":
                held.append((to, data, peer))
            else:
                deliver(to, data, peer)

        hub.inject = hold  # type: ignore[method-assign]
        seq = await author.publish(branch, b"x")
        waiting = asyncio.create_task(author.wait_acknowledged(branch, seq, timeout=30))
        await sub.next_message(timeout=5)
        await sub.unsubscribe(branch)  # its ACK and its UNSUBSCRIBE wait, then reach the author in one batch
        hub.inject = deliver  # type: ignore[method-assign]
        assert held
        for h in held:
            deliver(*h)
        await asyncio.wait_for(waiting, 10)  # acknowledged: no ClosedResourceError
        assert author._core.acknowledged(branch) >= seq
    finally:
        await sub.close()
        await author.close()


async def test_a_members_catch_up_burst_on_unrouted_branches_all_reaches_the_core() -> None:
    """After an author restart no branch has a route: a member's grant syncs and FETCHes (one per branch and
    chain) were charged to its inbound budget and the excess dropped, and nothing retries them."""
    ep = AuthorEndpoint("tcp://127.0.0.1:0")
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(ep.addresses[0])
    me, channel, n = P1, os.urandom(32), 300
    try:
        for i in range(n):
            dealer.send(encode_frame(Fetch(channel, i.to_bytes(16, "big"), 0, 0, 0, 1), b"", me.sign).raw)
        got = 0
        while got < n:
            got += len(await asyncio.wait_for(ep.recv(), 10))
        assert got == n
    finally:
        dealer.close(0)
        await ep.close()
        ctx.term()


async def test_a_caller_cancelled_in_the_turn_the_close_ends_still_sees_its_cancellation() -> None:
    gate = asyncio.get_running_loop().create_future()

    async def closing() -> None:
        await gate

    task = asyncio.ensure_future(closing())
    caller = asyncio.create_task(wait_shielded(task))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gate.set_result(None)  # the close ends in the next turn ...
    caller.cancel()  # ... and its caller is cancelled in that same turn (a timeout firing, say)
    try:
        await caller
        raise AssertionError("the caller's cancellation was swallowed")
    except asyncio.CancelledError:
        pass
    assert task.done() and not task.cancelled()
