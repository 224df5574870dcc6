"""Cancellation, concurrency and close of the asyncio layer (``streams.api``, ``brokerless`` endpoints' tasks).

Real SQLite stores, real PyNaCl, the in-memory network or real ZeroMQ on tcp loopback.  Every wait is "until a
condition, with a generous timeout"; nothing measures time."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from streams.api import AnchorConfig, Author, MemoryHub, MemoryTransport, StoreOptions, Subscriber
from streams.core import CoreConfig, Outgoing
from streams.errors import BrokenResourceError, ClosedResourceError, StreamsTimeoutError
from streams.events import Acknowledged, EpochAnchored, Rejected
from streams.identity import Identity
from streams.ledger.embedded import EmbeddedLedger
from streams.policy import AllowList
from streams.wire import Kind, SigningMode, decode_frame

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
AUTHOR, P1 = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
POLICY = AllowList.of([P1.did])

#: The publish a send was made for: set by :func:`_publish`, and seen by the transport's ``send``, which runs in a
#: task of its own started from the publisher (a task's context is a copy of its creator's).
_PUBLISHER: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar("publisher", default=None)


async def _publish(author: Author, branch: bytes, payload: bytes) -> int:
    _PUBLISHER.set(asyncio.current_task())
    return await author.publish(branch, payload)


class _Gated:
    """A transport without ``send_many`` whose ``send`` awaits (a network send waiting for its socket): while
    ``gate`` is set, each send of a message parks until the gate opens, and says which publish it parked."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.gate: asyncio.Event | None = None
        self.parked: asyncio.Future[asyncio.Task[Any] | None] | None = None

    async def send(self, out: Outgoing) -> None:
        gate = self.gate
        if gate is not None and decode_frame(out.data).kind is Kind.PACKET:  # (not a reply the party sends)
            if self.parked is not None and not self.parked.done():
                self.parked.set_result(_PUBLISHER.get())
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
    tasks = [asyncio.create_task(_publish(author, branch, b"m%d" % i)) for i in range(4)]  # one group
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


class _SentThenParked:
    """A transport without ``send_many`` whose ``send`` hands the frame to the network first and then awaits (a
    drain after the write): while ``gate`` is set, each send of a message parks after it went out, and says
    which publish it parked."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.gate: asyncio.Event | None = None
        self.parked: asyncio.Future[asyncio.Task[Any] | None] | None = None

    async def send(self, out: Outgoing) -> None:
        await self.inner.send(out)
        gate = self.gate
        if gate is not None and decode_frame(out.data).kind is Kind.PACKET:  # (not a reply the party sends)
            if self.parked is not None and not self.parked.done():
                self.parked.set_result(_PUBLISHER.get())
            await gate.wait()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_publisher_cancelled_after_its_frame_went_out_does_not_send_it_twice(tmp_path: Path) -> None:
    # The hand-off of a cancelled publisher's sends (above) sent the frame whose send was cancelled again, in case
    # it had not gone out.  Where it had (the transport wrote it, then awaited), the member received it twice and
    # reported Rejected(REPLAY) -- what an attack looks like in its events and log.  The hand-off now waits for the
    # send it took over and sends only the frames after it: each frame once, nothing lost.
    hub = MemoryHub()
    wrapped = _SentThenParked(hub.author_endpoint())
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, wrapped,  # type: ignore[arg-type]
                                 POLICY, store_options=FAST)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    branch = await sub.subscribe(timeout=10)
    loop = asyncio.get_running_loop()
    gate = wrapped.gate = asyncio.Event()
    wrapped.parked = loop.create_future()
    tasks = [asyncio.create_task(_publish(author, branch, b"m%d" % i)) for i in range(4)]  # one group
    sender = await asyncio.wait_for(wrapped.parked, 10)
    assert sender in tasks
    sender.cancel()
    await asyncio.sleep(0)
    gate.set()
    wrapped.gate = None
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert all(isinstance(r, int) for t, r in zip(tasks, results, strict=True) if t is not sender), results
    await author.publish(branch, b"after")
    got = await _drain(sub, 5)
    assert got == [b"m0", b"m1", b"m2", b"m3", b"after"], got
    packets = [d for src, _dst, d in hub.tap if src == "author" and decode_frame(d).kind is Kind.PACKET]
    assert (len(packets), len(set(packets))) == (5, 5), "a frame was sent twice"
    rejected = [e for e in sub.pending_events() if isinstance(e, Rejected)]
    assert not rejected, rejected
    await sub.close()
    await author.close()


async def test_run_in_task_runs_in_a_task_of_its_own_that_the_caller_cannot_cancel() -> None:
    from streams._tasks import run_in_task

    me = asyncio.current_task()
    ran_in: list[asyncio.Task[Any] | None] = []
    gate = asyncio.Event()
    stopped: list[str] = []

    async def quick() -> None:
        ran_in.append(asyncio.current_task())

    async def parks(fail: bool) -> None:
        ran_in.append(asyncio.current_task())
        try:
            await gate.wait()
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise
        ran_in.append(asyncio.current_task())
        if fail:
            raise OSError("after the write")

    quick_task = run_in_task(quick())  # None on 3.12 (an eager task ended at once), else a task
    if quick_task is not None:
        await quick_task
    assert len(ran_in) == 1 and ran_in[0] is not None and ran_in[0] is not me  # its own task, from the start
    ran_in.clear()
    rest = run_in_task(parks(False))
    assert rest is not None

    async def caller() -> None:
        await asyncio.shield(rest)

    waiting = asyncio.create_task(caller())
    await asyncio.sleep(0)
    waiting.cancel()  # the caller's cancellation does not reach the rest
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.set()
    await asyncio.wait_for(rest, 10)
    assert ran_in[0] is ran_in[1] is rest and not stopped
    gate.clear()
    failing = run_in_task(parks(True))
    assert failing is not None
    gate.set()
    with pytest.raises(OSError, match="after the write"):
        await asyncio.wait_for(failing, 10)
    gate.clear()
    cancelled = run_in_task(parks(False))
    assert cancelled is not None
    await asyncio.sleep(0)
    cancelled.cancel()  # (close) reaches the coroutine
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert stopped == ["cancelled"]




class _Slow:
    """A transport without ``send_many`` whose ``send`` of a message waits a turn of the loop before it writes (a
    socket that needs a moment): sends of two commits are on the way at once."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.slow = False

    async def send(self, out: Outgoing) -> None:
        if self.slow and decode_frame(out.data).kind is Kind.PACKET:
            await asyncio.sleep(0)
        await self.inner.send(out)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_the_frames_of_two_commits_leave_in_commit_order_over_a_transport_whose_send_awaits(
        tmp_path: Path) -> None:
    # Over a transport without send_many, each commit's frames went out one await at a time, and a second commit
    # (publishes of a later loop turn) sent its own meanwhile: seqs 1, 4, 2, 5, 3, 6 on the wire.  The member saw
    # gaps, fetched the missing messages, and then got the originals too: Rejected(REPLAY) for honest traffic --
    # what a replay attack looks like in its events and log -- and every message a round trip late.  Now a
    # commit's frames go out after those of the commits before it.
    hub = MemoryHub()
    wrapped = _Slow(hub.author_endpoint())
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, wrapped,  # type: ignore[arg-type]
                                 POLICY, store_options=FAST)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    branch = await sub.subscribe(timeout=10)
    wrapped.slow = True
    first = [asyncio.create_task(author.publish(branch, b"a%d" % i)) for i in range(3)]  # one commit
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # that commit's sends are on the way
    second = [asyncio.create_task(author.publish(branch, b"b%d" % i)) for i in range(3)]  # the next one
    seqs = await asyncio.wait_for(asyncio.gather(*first, *second), 10)
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert await _drain(sub, 6) == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2"]
    wire = [decode_frame(d).head.seq for src, _dst, d in hub.tap  # type: ignore[union-attr]
            if src == "author" and decode_frame(d).kind is Kind.PACKET]
    assert wire == [1, 2, 3, 4, 5, 6], wire  # in order, each once: nothing to fetch again
    rejected = [e for e in sub.pending_events() if isinstance(e, Rejected)]
    assert not rejected, rejected
    await sub.close()
    await author.close()


class _TimesOut:
    """A transport without ``send_many`` whose ``send`` bounds its wait for the network with ``asyncio.timeout``
    (as a socket send with a deadline would), and whose network never drains: the deadline is already past, so
    the send raises TimeoutError -- its own error, which the publish must raise."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.stuck = False

    async def send(self, out: Outgoing) -> None:
        if not self.stuck:
            await self.inner.send(out)
            return
        async with asyncio.timeout(0):
            await asyncio.get_running_loop().create_future()  # a drain that never comes

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_send_that_times_out_itself_fails_the_publish_not_cancels_the_caller(tmp_path: Path) -> None:
    # Each send of a transport without send_many ran in the caller's task up to its first pause (run_in_task): a
    # send that took a deadline there (asyncio.timeout, or wait_for on 3.12) bound it to the CALLER's task.  The
    # deadline then cancelled the publisher -- its publish raised CancelledError although nobody cancelled it --
    # and never reached the send, which went on waiting for good.  The send's own TimeoutError is what the
    # publish must raise.
    hub = MemoryHub()
    wrapped = _TimesOut(hub.author_endpoint())
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, wrapped,  # type: ignore[arg-type]
                                 POLICY, store_options=FAST)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    branch = await sub.subscribe(timeout=10)
    wrapped.stuck = True
    publish = asyncio.create_task(author.publish(branch, b"m0"))
    done, _ = await asyncio.wait([publish], timeout=10)
    assert done, "the publish never ended"
    assert not publish.cancelled(), "the send's deadline cancelled the publisher"
    assert isinstance(publish.exception(), TimeoutError), repr(publish.exception())
    await sub.close()
    await author.close()


async def _closes_itself(party: Author | Subscriber) -> ClosedResourceError:
    """Wait (generously) until the party has closed itself; the error its calls raise then."""
    for _ in range(200):
        try:
            await party.next_message(timeout=0.1)
        except ClosedResourceError as exc:
            return exc
        except StreamsTimeoutError:
            continue
    raise AssertionError("the party did not close itself")


async def test_an_author_endpoint_whose_reader_dies_makes_the_party_close_not_go_deaf(tmp_path: Path) -> None:
    # The application shares a ZeroMQ context and terminates it (its shutdown): the endpoint's reader fails with
    # ETERM.  It used to die alone -- the party, parked in recv(), went deaf for good without a word to its
    # application, and Context.term() waited forever for the socket nobody closed.  Now recv() raises
    # BrokenResourceError: the party closes itself, saying why, and its close frees the socket.
    ctx = zmq.asyncio.Context()
    ep = AuthorEndpoint("tcp://127.0.0.1:0", context=ctx)
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, ep, POLICY, store_options=FAST)
    term = asyncio.ensure_future(asyncio.to_thread(ctx.term))
    try:
        exc = await _closes_itself(author)
        assert isinstance(exc.__cause__, BrokenResourceError), repr(exc.__cause__)
        await asyncio.wait_for(asyncio.shield(term), 20)  # the socket was closed: the context could end
    finally:
        await author.close()
        await term


async def test_a_subscriber_endpoint_whose_tasks_die_makes_the_party_close_not_go_deaf(tmp_path: Path) -> None:
    # The same on the subscriber's side: its reader found the socket failing and left the heartbeat to
    # reconnect, whose new socket the terminated context refused (a raw ZMQError): the heartbeat died unlogged,
    # and the subscriber waited in recv() forever.
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, AuthorEndpoint("tcp://127.0.0.1:0"),
                                 POLICY, store_options=FAST)
    addr = author._transport.addresses[0]  # type: ignore[attr-defined]
    ctx = zmq.asyncio.Context()
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  SubscriberEndpoint(addr, EndpointConfig(heartbeat_ms=100), context=ctx),
                                  store_options=FAST)
    await sub.subscribe(timeout=10)
    term = asyncio.ensure_future(asyncio.to_thread(ctx.term))
    try:
        exc = await _closes_itself(sub)
        assert isinstance(exc.__cause__, BrokenResourceError), repr(exc.__cause__)
        await asyncio.wait_for(asyncio.shield(term), 20)
    finally:
        await sub.close()
        await term
        await author.close()


async def test_an_authors_anchoring_that_dies_closes_the_party_and_says_why(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    # The ledger is closed under a running author (the application's shutdown in the wrong order, a ledger
    # object shared and closed elsewhere).  The anchoring task died of the ClosedResourceError without a word --
    # no log, no event -- and the author went on publishing with nothing anchored any more (THREATS 7).  A
    # subscriber in that case closes and says why; the author now does the same.
    hub = MemoryHub()
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(), POLICY,
                                 store_options=FAST, ledger=ledger, anchor_config=AnchorConfig(epoch_interval_ms=20))
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    try:
        branch = await sub.subscribe(timeout=10)
        await author.publish(branch, b"anchored")
        for _ in range(200):
            if any(isinstance(ev, EpochAnchored) for ev in author.pending_events()):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the first epoch was never anchored")
        ledger.close()
        await author.publish(branch, b"never anchored")
        await _closes_itself(author)
        assert any("ledger" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)
    finally:
        await sub.close()
        await author.close()
        ledger.close()


class _Dropping:
    """A transport without ``send_many`` whose connection can drop: ``send`` then raises ConnectionResetError, as a
    socket-backed transport does when its peer is gone."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.dropped = False

    async def send(self, out: Outgoing) -> None:
        if self.dropped:
            raise ConnectionResetError("connection reset by peer")
        await self.inner.send(out)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_close_releases_the_store_and_transport_when_its_last_send_fails(tmp_path: Path) -> None:
    # close() commits, then sends what is still queued (ACKs, checkpoints).  A transport whose send raised then
    # (its connection gone) made close() raise before it closed the transport and the store -- and every later
    # close() raised the same: the store stayed locked by a party that could never be closed, and could not be
    # opened again in this process.  What close() committed is on disk whatever the send does: it now finishes.
    hub = MemoryHub()
    wrapped = _Dropping(hub.author_endpoint())
    # Amortized signing: close() signs a checkpoint of the chain's uncovered packets and sends it (the timer does
    # not get there first: its interval is long).
    config = CoreConfig(signing=SigningMode.AMORTIZED, checkpoint_interval_ms=3_600_000)
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, wrapped,  # type: ignore[arg-type]
                                 POLICY, store_options=FAST, config=config)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    branch = await sub.subscribe(timeout=10)
    seq = await author.publish(branch, b"before the drop")
    wrapped.dropped = True
    with contextlib.suppress(ConnectionResetError):
        await author.publish(branch, b"committed, not sent")
    await author.close()
    assert wrapped.inner.closed  # the transport was closed
    again = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), POLICY, store_options=FAST)
    # On disk: both messages and the checkpoint close() signed of them (its send failed, its commit stands).
    assert again._core.chain_head(branch, 0)[0] == seq + 3
    assert len(again.store.log_range(branch, 0, seq, seq + 2)) == 3
    await again.close()
    await sub.close()


async def test_close_ends_a_subscribe_in_progress_at_once(tmp_path: Path) -> None:
    # subscribe() waits for the author's answer in steps of `retry` seconds.  A close() meanwhile did not end it:
    # it went on waiting for the rest of its step (an hour here), then sent another HELLO into the closed store.
    # Now close() answers it with ClosedResourceError, as it answers next_message() and wait_acknowledged().
    hub = MemoryHub()  # no author: nobody answers
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, b"\x07" * 32, PW, hub.subscriber_endpoint("p1"),
                                  store_options=FAST)
    subscribing = asyncio.create_task(sub.subscribe(timeout=3600, retry=3600))
    for _ in range(200):  # until its HELLO went out
        if any(src == "p1" for src, _dst, _data in hub.tap):
            break
        await asyncio.sleep(0.01)
    await sub.close()
    with pytest.raises(ClosedResourceError):
        await asyncio.wait_for(subscribing, 20)


async def test_async_for_survives_a_step_cancelled_by_a_timeout(tmp_path: Path) -> None:
    # `async for msg in party` was an async generator: a step cancelled by a timeout around anext() finished it,
    # and every later step raised StopAsyncIteration -- what the iteration says when the party is closed -- while
    # the party was open and messages kept arriving.  A cancelled step now leaves the iteration usable.
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(), POLICY,
                                 store_options=FAST)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    branch = await sub.subscribe(timeout=10)
    messages = aiter(sub)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):  # nothing published yet: the step is cancelled
            await anext(messages)
    events = author.events()  # the same for events()
    while author.pending_events():
        pass
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await anext(events)
    await author.publish(branch, b"after the timeout")
    msg = await asyncio.wait_for(anext(messages), 10)
    assert msg.payload == b"after the timeout"
    ev = await asyncio.wait_for(anext(events), 10)  # the ACK of that message
    assert isinstance(ev, Acknowledged)
    await sub.close()
    await author.close()
    with pytest.raises(StopAsyncIteration):  # closed and drained: the iterations end
        await anext(messages)
    with pytest.raises(StopAsyncIteration):
        await anext(events)


class _FailingRecv:
    """A transport whose recv() fails for good once ``fail`` is set (a socket-backed transport whose network went)."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.fail = asyncio.Event()

    async def recv(self) -> list[tuple[bytes, object]]:
        got = asyncio.ensure_future(self.inner.recv())
        failing = asyncio.ensure_future(self.fail.wait())
        await asyncio.wait({got, failing}, return_when=asyncio.FIRST_COMPLETED)
        failing.cancel()
        if got.done():
            return got.result()
        got.cancel()
        raise OSError("network is unreachable")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_waiters_of_a_party_that_broke_get_the_cause(tmp_path: Path) -> None:
    # A party whose receive loop failed closes itself; the calls waiting meanwhile must learn why (the cause
    # chained), as next_message() and the next publish() do.  wait_acknowledged() got a bare "closed".
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(), POLICY,
                                 store_options=FAST)
    wrapped = _FailingRecv(hub.subscriber_endpoint("p1"))
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  wrapped, store_options=FAST)  # type: ignore[arg-type]
    branch = await sub.subscribe(timeout=10)
    await author.close()  # nobody will acknowledge what the member publishes now
    seq = await sub.publish(branch, b"never acknowledged")
    waiting = asyncio.create_task(sub.wait_acknowledged(branch, seq))
    reading = asyncio.create_task(sub.next_message())
    await asyncio.sleep(0)
    wrapped.fail.set()
    for task in (waiting, reading):
        with pytest.raises(ClosedResourceError) as info:
            await asyncio.wait_for(task, 20)
        assert isinstance(info.value.__cause__, OSError), (task, repr(info.value.__cause__))
    await sub.close()


class _OnReconnect(logging.Handler):
    """Calls ``act`` when a subscriber endpoint logs that it starts a reconnect."""

    def __init__(self, act: Any) -> None:
        super().__init__(logging.INFO)
        self.act = act

    def emit(self, record: logging.LogRecord) -> None:
        if "reconnecting in" in record.getMessage():
            self.act()


async def test_a_subscriber_endpoint_closed_as_it_starts_a_reconnect_closes_at_once() -> None:
    # The heartbeat's reconnect cancels the reader and waits for it, swallowing a CancelledError there -- its own
    # too, when close() cancelled the heartbeat in that turn: it then slept out the whole reconnect delay (up to
    # reconnect_max_ms; an hour here) before it noticed the close, and close() waited as long.
    with socket.socket() as s:  # a port nobody listens on: the endpoint hears nothing and reconnects
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = SubscriberEndpoint(f"tcp://127.0.0.1:{port}",
                            EndpointConfig(heartbeat_ms=50, reconnect_min_ms=3_600_000, reconnect_max_ms=3_600_000))
    closing: list[asyncio.Future[None]] = []
    handler = _OnReconnect(lambda: closing.append(asyncio.ensure_future(ep.close())))
    log = logging.getLogger("brokerless")
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.INFO)
    try:
        reading = asyncio.create_task(ep.recv())  # starts the endpoint's tasks
        for _ in range(400):
            if closing:
                break
            await asyncio.sleep(0.05)
        assert closing, "the endpoint never reconnected"
        await asyncio.wait({closing[0]}, timeout=20)  # (not wait_for: a close() is not cancelled, it finishes)
        assert closing[0].done(), "close() waits out the reconnect delay"
        with pytest.raises(ClosedResourceError):
            await reading
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
        if closing and not closing[0].done():  # (the old code: end its hour-long sleep, or the test never ends)
            for t in ep._tasks:
                t.cancel()
        await ep.close()
        if not reading.done():
            reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, ClosedResourceError):
            await reading


async def test_a_party_whose_memory_transport_is_closed_under_it_closes_itself(tmp_path: Path) -> None:
    # The in-memory transport's recv() waited on its inbox forever once closed (send raised ClosedResourceError,
    # recv never did): a party whose transport was closed under it -- the in-process demo's hub shutting down, a
    # test cutting the network -- stayed open and deaf, where over ZeroMQ it closes itself and says why.
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(), POLICY,
                                 store_options=FAST)
    transport = hub.subscriber_endpoint("p1")
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW, transport,
                                  store_options=FAST)
    await sub.subscribe(timeout=10)
    await transport.close()
    await _closes_itself(sub)
    with pytest.raises(ClosedResourceError):
        await transport.recv()
    await sub.close()
    await author.close()


async def test_a_member_that_leaves_right_after_reading_acknowledges_what_it_holds(tmp_path: Path) -> None:
    # The receive loop signs a batch's ACKs after the application took the batch (it yields to it first).  An
    # application woken by the batch that unsubscribed at once closed the branch before that ACK was signed, and
    # ACKs are never signed for a closed branch: the author's wait_acknowledged() failed with "branch closed before
    # seq 1 was acknowledged" though the member had the message on disk.  unsubscribe() now acknowledges first.
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(), POLICY,
                                 store_options=FAST)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    try:
        branch = await sub.subscribe(timeout=10)

        async def read_and_leave() -> None:
            assert (await sub.next_message()).payload == b"x"
            await sub.unsubscribe(branch)  # at once

        leaving = asyncio.create_task(read_and_leave())  # waiting when the message comes
        await asyncio.sleep(0)
        seq = await author.publish(branch, b"x")
        waiting = asyncio.create_task(author.wait_acknowledged(branch, seq, timeout=30))
        await asyncio.wait_for(leaving, 10)
        await asyncio.wait_for(waiting, 10)  # acknowledged: no ClosedResourceError
    finally:
        await sub.close()
        await author.close()


class _CancelOnRecv:
    """A transport that, when a batch holding a frame of kind ``kind`` arrives, has ``victim`` cancelled right after
    (a timeout or a shutdown that happens to fire as the awaited frame comes in: on a busy stream, sooner or later
    one does)."""

    def __init__(self, inner: MemoryTransport, kind: Kind) -> None:
        self.inner = inner
        self.kind = kind
        self.victim: asyncio.Task[Any] | None = None
        self.hold_acks: asyncio.Event | None = None  #: while set, our ACKs wait until it is set

    async def send(self, out: Outgoing) -> None:
        hold = self.hold_acks
        if hold is not None and decode_frame(out.data).kind is Kind.ACK:
            await hold.wait()
        await self.inner.send(out)

    async def recv(self) -> list[tuple[bytes, object]]:
        batch = await self.inner.recv()
        if self.victim is not None and any(decode_frame(data).kind is self.kind for data, _ in batch):
            asyncio.get_running_loop().call_soon(self.victim.cancel)
            self.victim = None
        return batch

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_waiter_cancelled_as_its_frame_arrives_is_cancelled_and_nothing_is_lost(tmp_path: Path) -> None:
    # next_message(s)(timeout=...) and wait_acknowledged() waited with asyncio.wait_for, which (Python 3.11)
    # returns the result when the awaited future completed in the turn its caller was cancelled: the cancellation
    # was swallowed and the task went on -- a consumer loop under TaskGroup or asyncio.run's shutdown did not stop,
    # and waited again.  Now the caller is cancelled, and the messages it did not take are there for the next call.
    hub = MemoryHub()
    a_side = _CancelOnRecv(hub.author_endpoint(), Kind.ACK)
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, a_side,  # type: ignore[arg-type]
                                 POLICY, store_options=FAST)
    s_side = _CancelOnRecv(hub.subscriber_endpoint("p1"), Kind.PACKET)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  s_side, store_options=FAST)  # type: ignore[arg-type]
    branch = await sub.subscribe(timeout=10)
    for take in (lambda: sub.next_messages(timeout=60), lambda: sub.next_message(timeout=60)):
        reader = asyncio.create_task(take())
        await asyncio.sleep(0)  # parked, waiting for a message
        s_side.victim = reader
        await author.publish(branch, b"m")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(reader, 20)
        assert [m.payload for m in await sub.next_messages(timeout=10)] == [b"m"]  # nothing lost

    release = s_side.hold_acks = asyncio.Event()  # the ACK comes while the waiter waits, not before it starts
    seq = await author.publish(branch, b"acknowledged")
    waiter = asyncio.create_task(author.wait_acknowledged(branch, seq, timeout=60))
    a_side.victim = waiter
    for _ in range(1000):
        if author._ack_waiters:
            break
        await asyncio.sleep(0.01)
    assert author._ack_waiters, "the waiter never waited"
    s_side.hold_acks = None
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 20)
    await sub.close()
    await author.close()


async def test_close_right_after_an_anchoring_kick_finishes(tmp_path: Path) -> None:
    # The anchoring task waits for its next epoch with asyncio.wait_for(wake.wait()).  A kick() just before
    # close() completed that wait in the turn close() cancelled the task, and wait_for (Python 3.11) then returned
    # instead of raising: the cancellation was swallowed, the anchoring loop went on for good, and close() -- which
    # waits for it -- never returned: the process did not exit.
    hub = MemoryHub()
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(), POLICY,
                                 store_options=FAST, ledger=ledger)
    assert author.anchoring is not None
    try:
        for _ in range(200):  # until the anchoring task waits for its next epoch (it compared the ledger first)
            if author.anchoring._checked:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        author.anchoring.kick()
        closing = asyncio.ensure_future(author.close())
        await asyncio.wait({closing}, timeout=20)  # (not wait_for: a close() is not cancelled, it finishes)
        assert closing.done(), "close() never returns"
    finally:
        task = author.anchoring._task
        if task is not None:  # (the old code: stop the loop that swallowed its cancellation)
            task.cancel()
        await author.close()
        ledger.close()
