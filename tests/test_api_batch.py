"""Batch paths of the asyncio API: group commit, ``publish_many``, ``next_messages`` and back-pressure.

Real SQLite stores with their commit journal, the default (what is committed is read as a crash would leave it: a
second connection reads the database, and the journal's records, which the next open applies, are parsed), the
in-memory network for the protocol tests
and real ZeroMQ endpoints on tcp loopback for back-pressure.  ``kill -9`` durability of ``publish_many`` is in
``test_crash.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.core import CoreConfig
from streams.errors import ClosedResourceError, LocalProtocolError, StorageError, StreamsTimeoutError
from streams.identity import Identity
from streams.policy import AllowList
from streams.store import _CHECKPOINTER, _J_LOG, FRAME_FILE_MIN, Store, _j_parse
from streams.wire import Kind, decode_frame

#: A frame body short enough to stay in its SQLite row (longer ones go to the frame file, which no checkpoint
#: moves): what the checkpointer tests below write.
INLINE = b"f" * (FRAME_FILE_MIN - 24)

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
#: Without the commit journal: every commit a SQLite transaction (which another connection's lock can fail).
FAST_NO_JOURNAL = StoreOptions(durable=False, opslimit=1, memlimit=8192, journal=False)
PW = "correct horse battery staple"


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


AUTHOR, P1 = ident(1), ident(2)


async def pair(tmp: Path, hub: MemoryHub, queue_size: int = 10_000, author_config: CoreConfig | None = None,
               sub_config: CoreConfig | None = None, options: StoreOptions = FAST
               ) -> tuple[Author, Subscriber, bytes]:
    author = await Author.create(tmp / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=options, config=author_config)
    sub = await Subscriber.create(tmp / "p1.db", P1, AUTHOR.did, author.channel, PW, hub.subscriber_endpoint("p1"),
                                  store_options=options, queue_size=queue_size, config=sub_config)
    branch = await sub.subscribe(timeout=5)
    return author, sub, branch


def logged(db: Path, branch: bytes, publisher: int, seq: int) -> bool:
    """Whether a message is committed, as a crash would leave it: in the database (seen from a separate
    connection) or in a record of its commit journal (which the next open applies)."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT 1 FROM log WHERE branch = ? AND publisher = ? AND seq = ?",
                           (branch, publisher, seq)).fetchone()
    finally:
        conn.close()
    journal = Path(f"{db}-commits")
    records, _ = _j_parse(journal.read_bytes()) if journal.exists() else ([], 0)
    journaled = any(r[:3] == [branch, publisher, seq]
                    for _, ops in records for op, rows in ops if op == _J_LOG for r in rows)
    return row is not None or journaled


async def test_group_commit_concurrent_publishes_share_transactions(tmp_path: Path) -> None:
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub)
    first = author._core.chain_head(branch, 0)[0]
    commits0 = author.store.commits
    not_durable: list[int] = []

    async def producer(k: int) -> list[int]:
        seqs = []
        for i in range(4):
            seq = await author.publish(branch, f"{k}/{i}".encode())
            if not logged(tmp_path / "author.db", branch, 0, seq):  # returned before its commit
                not_durable.append(seq)
            seqs.append(seq)
        return seqs

    results = await asyncio.gather(*(producer(k) for k in range(50)))
    commits = author.store.commits - commits0
    seqs = sorted(s for r in results for s in r)
    assert seqs == list(range(first, first + 200))  # contiguous, no duplicates
    assert not_durable == []
    # 50 tasks x 4 rounds: one transaction per round, not per publish (a timer flush may add a few)
    assert 4 <= commits <= 10, commits
    got = [m.payload for m in await _take(sub, 200)]
    assert sorted(got) == sorted(f"{k}/{i}".encode() for k in range(50) for i in range(4))
    for r, k in zip(results, range(50), strict=True):
        # each task's own messages are in its order in the chain
        assert r == sorted(r)
        assert [p for p in got if p.startswith(f"{k}/".encode())] == [f"{k}/{i}".encode() for i in range(4)]
    await sub.close()
    await author.close()


async def _take(sub: Subscriber, n: int) -> list:  # type: ignore[type-arg]
    out = []
    while len(out) < n:
        out.extend(await sub.next_messages(n - len(out), timeout=10))
    return out


async def test_publish_many_one_commit_in_order_and_durable(tmp_path: Path) -> None:
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub)
    first = author._core.chain_head(branch, 0)[0]
    commits0 = author.store.commits
    payloads = [f"event {i}".encode() for i in range(100)]
    seqs = await author.publish_many(branch, payloads)
    assert author.store.commits - commits0 == 1
    assert seqs == list(range(first, first + 100))
    assert all(logged(tmp_path / "author.db", branch, 0, s) for s in (seqs[0], seqs[50], seqs[-1]))
    msgs = await _take(sub, 100)
    assert [m.payload for m in msgs] == payloads
    assert [m.seq for m in msgs] == seqs
    assert all(m.signed for m in msgs)
    assert await author.publish_many(branch, []) == []
    await sub.close()
    await author.close()


async def test_publish_many_commits_and_sends_before_anything_else_runs(tmp_path: Path) -> None:
    # Latency: the caller batched already, so publish_many does not wait a loop iteration for company; its
    # frames are committed and handed to the transport before any other ready callback runs -- and a
    # single publish waiting for its group commit is covered by the same transaction.
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub)
    loop = asyncio.get_running_loop()
    seen: list[tuple[int, bool]] = []
    taps = len(hub.tap)
    loop.call_soon(lambda: seen.append((len(hub.tap) - taps, logged(tmp_path / "author.db", branch, 0, 2))))
    assert await author.publish_many(branch, [b"a", b"b"]) == [1, 2]
    assert seen == [(2, True)]  # both frames on disk and sent before the first other callback ran
    commits0 = author.store.commits
    single = asyncio.ensure_future(author.publish(branch, b"single"))
    await asyncio.sleep(0)  # the single publish now leads a group and waits one iteration for company
    assert await author.publish_many(branch, [b"c"]) == [4]
    assert await single == 3
    assert author.store.commits - commits0 == 1  # one transaction covered both
    assert [m.payload for m in await _take(sub, 4)] == [b"a", b"b", b"single", b"c"]
    await sub.close()
    await author.close()


async def test_publish_many_all_or_nothing_for_caller_errors(tmp_path: Path) -> None:
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub)
    first = author._core.chain_head(branch, 0)[0]
    too_big = b"x" * author._core.config.max_frame
    with pytest.raises(LocalProtocolError, match="exceeds"):
        await author.publish_many(branch, [b"ok", b"ok too", too_big])
    with pytest.raises(LocalProtocolError, match="unknown branch"):
        await author.publish_many(b"\x00" * 16, [b"ok"])
    # nothing of the refused call was published: the next message takes the next seq and arrives alone
    assert await author.publish_many(branch, [b"after"]) == [first]
    assert [m.payload for m in await _take(sub, 1)] == [b"after"]
    with pytest.raises(StreamsTimeoutError):
        await sub.next_messages(timeout=0.2)
    await sub.close()
    await author.close()
    with pytest.raises(ClosedResourceError):
        await author.publish_many(branch, [b"late"])


async def test_next_messages_batches_limits_and_delivery_marks(tmp_path: Path) -> None:
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub)
    seqs = await author.publish_many(branch, [bytes([i]) for i in range(30)])
    await asyncio.sleep(0.1)  # all 30 arrive and wait in the queue
    a = await sub.next_messages(10, timeout=5)
    assert [m.seq for m in a] == seqs[:10]
    b = await sub.next_messages(1000, timeout=5)
    assert [m.seq for m in b] == seqs[10:]  # every one waiting, not more
    with pytest.raises(LocalProtocolError):
        await sub.next_messages(0)
    # a waits-for-one call returns as soon as a message arrives
    waiter = asyncio.ensure_future(sub.next_messages(5, timeout=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await author.publish(branch, b"late")
    assert [m.payload for m in await waiter] == [b"late"]
    # taking the next batch marked the previous ones delivered: the application cursor is on disk at next commit
    await author.publish(branch, b"one more")
    await sub.next_messages(timeout=5)
    assert sub.store.delivered()[(branch, 0)] >= seqs[-1]
    await sub.close()
    await author.close()


async def test_undelivered_batch_comes_back_after_a_crash(tmp_path: Path) -> None:
    """A batch taken but not acknowledged by coming back is redelivered after a restart (at least once)."""
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub)
    seqs = await author.publish_many(branch, [b"a", b"b", b"c", b"d"])
    first = await sub.next_messages(2, timeout=5)
    assert [m.seq for m in first] == seqs[:2]
    second = await sub.next_messages(2, timeout=5)  # marks the first batch delivered
    assert [m.seq for m in second] == seqs[2:]
    await author.publish(branch, b"e")  # its receive commit also writes the first batch's delivery mark
    for _ in range(100):  # until "e" was received and committed (in-memory network: a few loop iterations)
        if sub._messages:
            break
        await asyncio.sleep(0.01)
    third = await sub.next_messages(5, timeout=5)  # marks the second batch delivered (in memory), takes "e"
    assert [m.payload for m in third] == [b"e"]
    # A crash right now (no await in between, so no commit can run): the tasks die, the store is dropped
    # without close() (which would commit the marks held in memory).
    for t in sub._tasks:
        t.cancel()
    sub._store.close()
    await sub._transport.close()
    sub2 = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1b"), store_options=FAST)
    again = await sub2.next_messages(10, timeout=5)
    # the first batch's mark was committed; the second's and "e" were not: they come back, in order
    assert [m.payload for m in again] == [b"c", b"d", b"e"]
    await sub2.close()
    await author.close()


async def take(party: Author | Subscriber, n: int, max_n: int = 256) -> list[int]:
    """The seqs of the next ``n`` messages (``next_messages`` batches of at most ``max_n``)."""
    got: list[int] = []
    while len(got) < n:
        got += [m.seq for m in await party.next_messages(min(max_n, n - len(got)), timeout=5)]
    return got


async def test_unread_backlog_beyond_queue_size_comes_back_in_order_across_restarts(tmp_path: Path) -> None:
    """Accepted messages the application never took outnumber the queue: every one comes back, exactly once and
    in order, before the chain's live messages -- across two restarts, the second after a partial read -- and
    the queue never holds more than ``queue_size`` of them."""
    qs = 4
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub, queue_size=qs)
    seqs = await author.publish_many(branch, [b"m%d" % i for i in range(30)])
    await author.wait_acknowledged(branch, seqs[-1], timeout=5)  # all 30 are on the subscriber's disk
    await sub.close()  # the application took none of them

    sub = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1b"), store_options=FAST,
                                queue_size=qs)
    assert len(sub._messages) == qs  # the rest stays on disk
    live = await author.publish(branch, b"live")
    await author.wait_acknowledged(branch, live, timeout=5)  # accepted behind 26 unread older ones
    assert len(sub._messages) <= qs
    assert await take(sub, 10, max_n=3) == seqs[:10]
    await sub.close()  # marks the 10 taken

    sub = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1c"), store_options=FAST,
                                queue_size=qs)
    later = await author.publish(branch, b"later")
    got = await take(sub, 22)
    assert got == [*seqs[10:], live, later]
    with pytest.raises(StreamsTimeoutError):  # nothing twice
        await sub.next_message(timeout=0.2)
    await sub.close()
    await author.close()


async def test_author_redelivers_a_backlog_beyond_queue_size_in_order(tmp_path: Path) -> None:
    """The author side: a subscriber's messages accepted but not taken come back after the author's restart,
    all of them in order, before the subscriber's next live message (one at a time: next_message)."""
    qs = 3
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub)
    seqs = await sub.publish_many(branch, [b"s%d" % i for i in range(20)])
    await sub.wait_acknowledged(branch, seqs[-1], timeout=5)
    await author.close()
    author = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                               store_options=FAST, queue_size=qs)
    live = await sub.publish(branch, b"live")
    await sub.wait_acknowledged(branch, live, timeout=5)
    got = [(await author.next_message(timeout=5)).seq for _ in range(21)]
    assert got == [*seqs, live]
    await sub.close()
    await author.close()


async def test_group_commit_failure_fails_every_waiting_publish(tmp_path: Path) -> None:
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub, options=FAST_NO_JOURNAL)
    # Make the next commit fail: another connection holds the write lock beyond the busy timeout.  (A journaled
    # commit does not take it; its failures: test_commit_journal.py, test_disk_faults.py.)
    blocker = sqlite3.connect(tmp_path / "author.db", isolation_level=None)
    author.store._conn.execute("PRAGMA busy_timeout=50")
    blocker.execute("BEGIN IMMEDIATE")
    try:
        results = await asyncio.gather(*(author.publish(branch, b"x") for _ in range(5)), return_exceptions=True)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(r, StorageError) for r in results), results
    with pytest.raises(ClosedResourceError):
        await author.publish(branch, b"after the failure")
    await sub.close()
    await author.close()


async def test_slow_consumer_back_pressure_keeps_memory_bounded(tmp_path: Path) -> None:
    """An application that stops reading: its queue stops at ``queue_size``, the endpoint stops reading at its
    inbox bound, the author's per-peer queue stops at ``send_queue`` (then drops); once the application reads
    again, gap fill brings every message, in order."""
    cfg = EndpointConfig(sndhwm=50, rcvhwm=50, send_queue=100, inbox=200, batch=64, heartbeat_ms=200)
    aep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    core = CoreConfig(fetch_retry_ms=200)
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, aep, AllowList.of([P1.did]),
                                 store_options=FAST, config=core)
    author.heartbeat_ms = 100
    sep = SubscriberEndpoint(aep.addresses[0], cfg)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW, sep, store_options=FAST,
                                  config=core, queue_size=50)
    sub.heartbeat_ms = 100
    try:
        branch = await sub.subscribe(timeout=10)
        n = 3000
        seqs: list[int] = []
        for i in range(0, n, 100):
            seqs += await author.publish_many(branch, [(i + k).to_bytes(4, "big") * 64 for k in range(100)])
            await asyncio.sleep(0.005)
            # bounded everywhere while nobody reads
            assert len(sub._messages) <= 50
            assert len(sep._inbox) <= cfg.inbox
            assert max(aep.queue_sizes().values(), default=0) <= cfg.send_queue
        await asyncio.sleep(0.5)
        assert len(sub._messages) == 50  # full, and the receive loop waits instead of growing it
        assert len(sep._inbox) <= cfg.inbox
        got: list[int] = []
        deadline = time.monotonic() + 60
        while len(got) < n:
            assert time.monotonic() < deadline, f"only {len(got)} of {n} after the consumer resumed"
            got += [m.seq for m in await sub.next_messages(100, timeout=30)]
        assert got == seqs  # every message, in order, none twice
        assert aep.stats.send_dropped > 0 or sep.stats.frames_in >= n  # the bounds were reached (or not needed)
    finally:
        await sub.close()
        await author.close()


def test_background_checkpoints_move_the_wal_into_the_database(tmp_path: Path) -> None:
    """Only a checkpoint writes the main database file; the writer's own automatic one would not run below
    64 MiB, so growth of the file while the store is open is the background checkpointer's work."""
    from streams.core import Changes, LogRecord

    store = Store.create(tmp_path / "s.db", P1, PW, role="subscriber", channel=b"c" * 32, author_did=AUTHOR.did,
                         durable=False, opslimit=1, memlimit=8192)
    try:
        before = (tmp_path / "s.db").stat().st_size
        for i in range(20):
            store.commit(Changes(log=[LogRecord(b"b" * 16, 1, i * 50 + k, b"h" * 32, INLINE)
                                      for k in range(50)]))
        deadline = time.monotonic() + 10
        while (tmp_path / "s.db").stat().st_size < before + 500_000:
            assert time.monotonic() < deadline, "the WAL was never checkpointed"
            time.sleep(0.02)
        assert store.log_count() == 1000
        assert _CHECKPOINTER.alive()
    finally:
        store.close()
    assert store._ck_conn is None  # close() released its checkpoint connection


def test_one_checkpointer_thread_serves_every_store_of_the_process(tmp_path: Path) -> None:
    # A host runs hundreds of parties: one checkpoint thread for all of them, not one each.
    import threading

    from streams.core import Changes, LogRecord

    stores = [Store.create(tmp_path / f"s{i}.db", P1, PW, role="subscriber", channel=b"c" * 32,
                           author_did=AUTHOR.did, durable=False, opslimit=1, memlimit=8192) for i in range(12)]
    try:
        sizes = [(tmp_path / f"s{i}.db").stat().st_size for i in range(12)]
        for st in stores:
            for i in range(4):
                st.commit(Changes(log=[LogRecord(b"b" * 16, 1, i * 50 + k, b"h" * 32, INLINE)
                                       for k in range(50)]))
        deadline = time.monotonic() + 10
        for i in range(12):
            while (tmp_path / f"s{i}.db").stat().st_size < sizes[i] + 150_000:
                assert time.monotonic() < deadline, f"store {i} was never checkpointed"
                time.sleep(0.02)
        names = [t.name for t in threading.enumerate()]
        assert names.count("streams-store-checkpoint") == 1
    finally:
        for st in stores:
            st.close()
    assert all(st._ck_conn is None for st in stores)


class _Recording:
    """A plain Transport wrapper (no send_many of its own) that sees every frame sent through it and forwards
    everything else to the wrapped transport -- as a chaos or tap wrapper would."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    async def send(self, out: object) -> None:
        self.sent.append(out.data)  # type: ignore[attr-defined]
        await self.inner.send(out)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_plain_transport_wrapper_is_not_bypassed_and_group_commit_still_works(tmp_path: Path) -> None:
    hub = MemoryHub()
    wrapped = _Recording(hub.author_endpoint())
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, wrapped,  # type: ignore[arg-type]
                                 AllowList.of([P1.did]), store_options=FAST)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)
    branch = await sub.subscribe(timeout=5)
    commits0 = author.store.commits
    sent0 = len(wrapped.sent)
    seqs = await asyncio.gather(*(author.publish(branch, bytes([i])) for i in range(20)))
    many = await author.publish_many(branch, [b"m1", b"m2"])
    assert sorted(seqs) == list(range(seqs[0], seqs[0] + 20)) and many == [seqs[0] + 20, seqs[0] + 21]
    assert author.store.commits - commits0 <= 4
    assert len(wrapped.sent) - sent0 >= 22  # every packet went through the wrapper's send()
    assert len(await _take(sub, 22)) == 22
    await sub.close()
    await author.close()


async def test_acks_of_a_stream_are_coalesced_and_wait_acknowledged_still_resolves(tmp_path: Path) -> None:
    # The subscriber's clock stands still while a stream arrives: one ACK goes at once, the others wait for
    # ack_interval_ms (SPEC 12) -- then the timer acknowledges the cursor, and the publisher's wait ends.
    hub = MemoryHub()
    clock = [1_700_000_000_000]
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST, clock=lambda: clock[0])
    try:
        branch = await sub.subscribe(timeout=5)

        def sub_acks() -> list[int]:
            return [decode_frame(d).head.seq for src, _to, d in hub.tap
                    if src == "p1" and decode_frame(d).kind is Kind.ACK]

        seqs = []
        for i in range(10):
            seqs.append(await author.publish(branch, b"event %d" % i))
            await _take(sub, 1)
        await author.wait_acknowledged(branch, seqs[0], timeout=5)
        await asyncio.sleep(0.05)
        assert len(sub_acks()) == 1  # the clock did not move: everything after the first ACK waits
        assert author._core.acknowledged(branch) < seqs[-1]
        clock[0] += 20
        # The coalesced ACK: from the subscriber's timer, or at once in answer to the HEAD notice that
        # wait_acknowledged sends -- one ACK either way.
        await author.wait_acknowledged(branch, seqs[-1], timeout=5)
        assert sub_acks() == [sub_acks()[0], seqs[-1]]
        # A pending ACK is not lost at close: it is sent after the last commit.
        last = await author.publish(branch, b"last")
        await _take(sub, 1)
        await sub.close()
        await author.wait_acknowledged(branch, last, timeout=5)
    finally:
        await sub.close()
        await author.close()


async def _armed_long(party: Author | Subscriber) -> None:
    """Wait until the party's timer loop sleeps on its (minute-long) heartbeat: nothing of the core is due."""
    end = time.monotonic() + 10
    while party._timer_at - party._clock() < 30_000:
        assert time.monotonic() < end, "the timer loop never armed its heartbeat"
        await asyncio.sleep(0.01)


async def test_a_held_back_ack_goes_when_its_interval_ends_not_at_the_next_heartbeat(tmp_path: Path) -> None:
    # The subscriber's timer sleeps a minute (nothing was due when it armed).  A message acknowledged within
    # ack_interval_ms of the previous ACK is held back; the timer must wake for it when the interval ends --
    # a publisher that waits for each ACK did 2 messages a second on the 500 ms heartbeat before.
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub, sub_config=CoreConfig(ack_interval_ms=300))
    try:
        # Both timers sleep: the author's HEAD notices (each heartbeat) would otherwise wake the subscriber's
        # receive loop, which sends the held-back ACK too.
        sub.heartbeat_ms = author.heartbeat_ms = 60_000
        await _armed_long(sub)
        await _armed_long(author)

        def sub_acks() -> list[int]:
            return [decode_frame(d).head.seq for src, _to, d in hub.tap
                    if src == "p1" and decode_frame(d).kind is Kind.ACK]

        async def acknowledged(seq: int, what: str) -> None:
            # Not wait_acknowledged: its HEAD notice would be answered at once (see the next test).
            end = time.monotonic() + 10
            while author._core.acknowledged(branch) < seq:
                assert time.monotonic() < end, what
                await asyncio.sleep(0.01)

        first = await author.publish(branch, b"first")
        await acknowledged(first, "the first ACK after a quiet spell")  # at once
        second = await author.publish(branch, b"second")  # within 300 ms of that ACK: held back
        await _take(sub, 2)
        await acknowledged(second, "the held-back ACK waited for the subscriber's heartbeat")
        assert sub_acks() == [first, second]  # the second is the coalesced one, sent by the timer
    finally:
        await sub.close()
        await author.close()


async def test_an_amortized_checkpoint_goes_when_its_interval_ends_not_at_the_next_heartbeat(
        tmp_path: Path) -> None:
    from streams.wire import SigningMode

    hub = MemoryHub()
    author, sub, branch = await pair(
        tmp_path, hub, author_config=CoreConfig(signing=SigningMode.AMORTIZED, checkpoint_interval_ms=200))
    try:
        author.heartbeat_ms = 60_000
        await _armed_long(author)
        seq = await author.publish(branch, b"uncovered until the checkpoint")
        (msg,) = await _take(sub, 1)
        assert msg.seq == seq and not msg.signed
        end = time.monotonic() + 10
        while not any(src == "author" and decode_frame(d).kind is Kind.CHECKPOINT for src, _to, d in hub.tap):
            assert time.monotonic() < end, "no checkpoint: the timer slept through checkpoint_interval_ms"
            await asyncio.sleep(0.01)
    finally:
        await sub.close()
        await author.close()


async def test_a_publisher_waiting_for_each_ack_is_answered_at_once_and_a_replayed_head_adds_no_ack(
        tmp_path: Path) -> None:
    # ACK pacing a minute long, heartbeats a minute long: only the HEAD notice that wait_acknowledged sends can
    # get each message acknowledged within the deadline.  The receiver answers a notice of a head it holds but
    # has not acknowledged at once -- once: a replayed notice finds the head acknowledged.
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub, sub_config=CoreConfig(ack_interval_ms=60_000))
    try:
        sub.heartbeat_ms = author.heartbeat_ms = 60_000

        def frames(src: str, kind: Kind) -> list[bytes]:
            return [d for s, _to, d in hub.tap if s == src and decode_frame(d).kind is kind]

        heads0 = len(frames("author", Kind.HEAD))
        for i in range(20):
            seq = await author.publish(branch, b"payment %d" % i)
            await author.wait_acknowledged(branch, seq, timeout=10)
        assert [m.payload for m in await _take(sub, 20)] == [b"payment %d" % i for i in range(20)]
        heads = frames("author", Kind.HEAD)[heads0:]
        assert len(heads) <= 20  # at most one notice per head waited for
        acks = len(frames("p1", Kind.ACK))
        for _ in range(5):
            hub.inject("p1", heads[-1], peer="author")  # a relay replays the last notice
        await asyncio.sleep(0.2)
        assert len(frames("p1", Kind.ACK)) == acks
    finally:
        await sub.close()
        await author.close()


async def test_payloads_of_the_wrong_type_are_refused_before_anything_is_published(tmp_path: Path) -> None:
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub)
    try:
        # A str among bytes: a typed error, and none of the batch is published (all or nothing).
        with pytest.raises(LocalProtocolError, match="payload must be bytes, not str"):
            await author.publish_many(branch, [b"first", b"second", "third"])  # type: ignore[list-item]
        with pytest.raises(LocalProtocolError, match="not int"):
            await author.publish(branch, 42)  # type: ignore[arg-type]
        # bytearray and memoryview are taken as their bytes.
        assert await author.publish_many(branch, [bytearray(b"one"), memoryview(b"two")]) == [1, 2]  # type: ignore[list-item]
        assert await author.publish(branch, bytearray(b"three")) == 3  # type: ignore[arg-type]
        got = [await sub.next_message(timeout=5) for _ in range(3)]
        assert [(m.seq, m.payload) for m in got] == [(1, b"one"), (2, b"two"), (3, b"three")]
        assert not logged(tmp_path / "author.db", branch, 0, 4)
    finally:
        await sub.close()
        await author.close()


async def test_waiting_for_an_ack_on_a_branch_that_closes_raises_at_once(tmp_path: Path) -> None:
    hub = MemoryHub()
    author, sub, branch = await pair(tmp_path, hub)
    try:
        await sub.close()  # nobody will acknowledge
        seq = await author.publish(branch, b"never acknowledged")
        waiting = asyncio.create_task(author.wait_acknowledged(branch, seq, timeout=60))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await author.revoke(branch)
        # Not after its 60 s timeout: as soon as the revocation is committed.
        with pytest.raises(ClosedResourceError, match="closed before seq 1 was acknowledged"):
            await asyncio.wait_for(waiting, 10)
        with pytest.raises(ClosedResourceError, match="is closed"):
            await asyncio.wait_for(author.wait_acknowledged(branch, seq, timeout=60), 10)
    finally:
        await author.close()


async def test_a_failing_or_oversized_credential_presenter_fails_subscribe_not_the_party(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST)
    sub = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                  hub.subscriber_endpoint("p1"), store_options=FAST)

    def too_big(nonce: bytes, channel: bytes) -> bytes:
        return b"x" * 70_000

    def broken(nonce: bytes, channel: bytes) -> bytes:
        raise ValueError("the wallet is locked")

    try:
        # The presenter runs inside the receive loop; its failure ends the call at once, with a typed error.
        with pytest.raises(LocalProtocolError, match="exceeds the limit of 65536"):
            await asyncio.wait_for(sub.subscribe(timeout=30, presenter=too_big), 10)
        with pytest.raises(LocalProtocolError, match="presenter failed: ValueError: the wallet is locked"):
            await asyncio.wait_for(sub.subscribe(timeout=30, presenter=broken), 10)
        with pytest.raises(LocalProtocolError, match="exceeds"):  # a static one is checked before anything goes out
            await sub.subscribe(credential=b"y" * 70_000)
        # The party is intact: the next handshake succeeds and the branch works.
        branch = await sub.subscribe(timeout=10)
        await author.publish(branch, b"hello")
        assert (await sub.next_message(timeout=5)).payload == b"hello"
    finally:
        await sub.close()
        await author.close()


async def test_subscribing_with_a_wrong_channel_id_or_author_says_so_when_it_times_out(tmp_path: Path) -> None:
    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST)
    wrong_channel = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, bytes(32), PW,
                                            hub.subscriber_endpoint("p1"), store_options=FAST)
    wrong_author = await Subscriber.create(tmp_path / "p2.db", P1, ident(9).did, author.channel, PW,
                                           hub.subscriber_endpoint("p2"), store_options=FAST)
    try:
        # The author does not answer a HELLO for another channel; it announces its own to a wrong author DID.
        with pytest.raises(StreamsTimeoutError, match="no announcement of this channel came back"):
            await wrong_channel.subscribe(timeout=0.5, retry=0.1)
        with pytest.raises(StreamsTimeoutError, match="announced another channel or author key"):
            await wrong_author.subscribe(timeout=0.5, retry=0.1)
    finally:
        await wrong_channel.close()
        await wrong_author.close()
        await author.close()


async def test_a_cancelled_close_still_closes_everything_and_the_caller_sees_its_cancellation(
        tmp_path: Path) -> None:
    hub = MemoryHub()
    author, sub, _branch = await pair(tmp_path, hub)
    try:
        closing = asyncio.create_task(sub.close())
        await asyncio.sleep(0)  # under way: waiting for its tasks to end
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing  # not swallowed (it used to return normally, as if never cancelled)
        # ... and nothing was left half-closed: the store is free for the next party at once.
        again = await Subscriber.open(tmp_path / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST)
        await again.close()
    finally:
        await author.close()
