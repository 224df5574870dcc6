"""A durable store's commit syncs run off the event loop (streams._syncer) when other work is ready to run, and
still nothing is acknowledged, sent or handed over before its sync has ended (THREATS 4).  (A task that yields
in a loop keeps the event loop "busy" where a test needs the sync on the thread.)

Real SQLite stores and journals, the in-memory transport; ``os.fdatasync`` of one party's journal is held at a gate
(a real call once let through) or made to fail, as a full disk that shows only at the sync (ext4's delayed
allocation) would."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.core import Outgoing
from streams.errors import ClosedResourceError, StorageError, StreamsTimeoutError
from streams.identity import Identity
from streams.policy import AllowList
from streams.store import Store
from streams.wire import decode_frame

PW = "pw"
DURABLE = StoreOptions(durable=True, opslimit=1, memlimit=8192, journal=True)
FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192, journal=True)
_REAL_SYNC = os.fdatasync


class Gate:
    """``os.fdatasync`` of one file held until :attr:`release` is set (at most ``patience`` seconds), or failing
    with ``fail`` (an errno) once; other files pass."""

    def __init__(self, path: Path, patience: float = 10.0) -> None:
        self.path = str(path)
        self.patience = patience
        self.release = threading.Event()
        self.entered = threading.Event()
        self.in_time: list[bool] = []  #: per held call: released before the patience ran out
        self.fail: int | None = None
        self.failed = 0
        self.threads: list[str] = []  #: the thread of each call
        self.synced = threading.Event()  #: set when a held call has returned

    def __call__(self, fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == self.path:
            self.threads.append(threading.current_thread().name)
            self.entered.set()
            self.in_time.append(self.release.wait(self.patience))
            if self.fail is not None:
                err, self.fail = self.fail, None
                self.failed += 1
                raise OSError(err, os.strerror(err))
            _REAL_SYNC(fd)
            self.synced.set()
            return
        _REAL_SYNC(fd)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Gate]]:
    gates: list[Gate] = []

    def sync(fd: int) -> None:
        for g in gates:
            if os.readlink(f"/proc/self/fd/{fd}") == g.path:
                g(fd)
                return
        _REAL_SYNC(fd)

    monkeypatch.setattr(os, "fdatasync", sync)
    yield gates
    for g in gates:
        g.release.set()


async def _pair(tmp: Path, author_opts: StoreOptions, sub_opts: StoreOptions
                ) -> tuple[Author, Subscriber, bytes]:
    hub = MemoryHub()
    member = Identity.generate()
    author = await Author.create(tmp / "a.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([member.did]), store_options=author_opts)
    sub = await Subscriber.create(tmp / "m.db", member, author.did, author.channel, PW,
                                  hub.subscriber_endpoint("m"), store_options=sub_opts)
    branch = await sub.subscribe(timeout=10)
    return author, sub, branch


@contextlib.asynccontextmanager
async def _busy() -> AsyncIterator[None]:
    """Something else ready to run at every turn of the loop (as a producer's next call, or a busy party)."""
    stop = False

    async def spin() -> None:
        while not stop:
            await asyncio.sleep(0)

    task = asyncio.create_task(spin())
    try:
        yield
    finally:
        stop = True
        await task


async def _until(flag: threading.Event) -> None:
    for _ in range(1000):
        if flag.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the sync never started")


async def test_a_publish_waits_for_its_sync_off_the_loop_and_the_next_call_is_signed_meanwhile(
        tmp_path: Path, gate: list[Gate]) -> None:
    """The author's sync held: its publish_many does not return and nothing reaches the subscriber; meanwhile
    the loop runs on -- a second publish_many from another task is signed (its seqs assigned) -- and the gate is
    released from the loop itself (the loop blocked in the sync, as before, could not: the gate timed out)."""
    author, sub, branch = await _pair(tmp_path, DURABLE, FAST)
    g = Gate(tmp_path / "a.db-commits")
    gate.append(g)
    try:
        # The producer's pattern: the next call made before the last one is awaited (it is ready to run when the
        # first one commits).
        first = asyncio.create_task(author.publish_many(branch, [b"a1", b"a2"]))
        second = asyncio.create_task(author.publish_many(branch, [b"b1"]))
        await _until(g.entered)
        await asyncio.sleep(0.05)
        assert not first.done() and not second.done()
        assert author._core.own_next_seq(branch) == 4  # both calls signed: seqs 1-3 taken
        with pytest.raises(StreamsTimeoutError):
            await sub.next_message(timeout=0.3)  # nothing sent before its sync
        g.release.set()
        assert await first == [1, 2] and await second == [3]
        got = [(await sub.next_message(timeout=10)).payload for _ in range(3)]
        assert got == [b"a1", b"a2", b"b1"]
        assert g.in_time and all(g.in_time)
        assert g.threads[0].startswith("streams-sync")
    finally:
        g.release.set()
        await sub.close()
        await author.close()


async def test_an_idle_party_syncs_in_place(tmp_path: Path, gate: list[Gate]) -> None:
    """Nothing else ready to run: the sync is made on the loop's thread (a thread would overlap nothing and cost
    two wake-ups), and the publish returns once it is done."""
    author, sub, branch = await _pair(tmp_path, DURABLE, FAST)
    g = Gate(tmp_path / "a.db-commits", patience=0.2)
    gate.append(g)
    try:
        assert await author.publish(branch, b"x") == 1
        assert g.threads == ["MainThread"] and g.in_time == [False]  # (held on the loop: nobody released it)
        assert (await sub.next_message(timeout=10)).payload == b"x"
    finally:
        await sub.close()
        await author.close()


async def test_a_received_batch_is_handed_over_and_acknowledged_only_after_its_sync(
        tmp_path: Path, gate: list[Gate]) -> None:
    author, sub, branch = await _pair(tmp_path, FAST, DURABLE)
    g = Gate(tmp_path / "m.db-commits")
    gate.append(g)
    try:
        async with _busy():
            seq = await author.publish(branch, b"x")
            await _until(g.entered)
            with pytest.raises(StreamsTimeoutError):
                await sub.next_message(timeout=0.3)
            with pytest.raises(StreamsTimeoutError):
                await author.wait_acknowledged(branch, seq, timeout=0.3)  # no ACK of what is not durable
            g.release.set()
            assert (await sub.next_message(timeout=10)).payload == b"x"
            await author.wait_acknowledged(branch, seq, timeout=10)
        assert all(g.in_time) and g.threads[0].startswith("streams-sync")
    finally:
        g.release.set()
        await sub.close()
        await author.close()


async def test_a_receiver_checks_its_next_batch_while_the_last_one_syncs(tmp_path: Path, gate: list[Gate]) -> None:
    """Received batches pipeline: while one's sync is held, the next is received, checked and written, and both
    reach the application in order once their syncs end."""
    author, sub, branch = await _pair(tmp_path, FAST, DURABLE)
    g = Gate(tmp_path / "m.db-commits")
    gate.append(g)
    try:
        async with _busy():
            await author.publish(branch, b"one")
            await _until(g.entered)
            await author.publish(branch, b"two")
            for _ in range(500):
                if sub.store.sync_owed:
                    break
                await asyncio.sleep(0.01)
            assert sub.store.sync_owed  # "two" was written while "one" synced
            assert not sub._messages
            g.release.set()
            got = [(await sub.next_message(timeout=10)).payload for _ in range(2)]
        assert got == [b"one", b"two"]
    finally:
        g.release.set()
        await sub.close()
        await author.close()


@pytest.mark.parametrize("busy", [False, True], ids=["in place", "on the thread"])
async def test_a_failed_sync_fails_the_publish_and_leaves_nothing_of_it(tmp_path: Path, gate: list[Gate],
                                                                        busy: bool) -> None:
    """ENOSPC at the sync (a full disk that ext4's delayed allocation reports only there): the publish raises
    StorageError, nothing of it was sent, the author closes, and the store opened again holds nothing beyond what
    was acknowledged -- the record is taken back from the journal, not applied at close."""
    author, sub, branch = await _pair(tmp_path, DURABLE, FAST)
    g = Gate(tmp_path / "a.db-commits")
    g.release.set()  # (syncs pass, but the one made to fail)
    gate.append(g)
    try:
        assert await author.publish(branch, b"kept") == 1
        assert (await sub.next_message(timeout=10)).payload == b"kept"
        g.fail = errno.ENOSPC
        await asyncio.sleep(0.1)  # (the loop idle: the subscriber's ACK and the rest of the first round done)
        async with _busy() if busy else contextlib.nullcontext():
            with pytest.raises(StorageError, match="syncing"):
                await author.publish_many(branch, [b"lost1", b"lost2"])
        assert g.failed == 1
        assert g.threads[-1].startswith("streams-sync") == busy
        with pytest.raises(StreamsTimeoutError):
            await sub.next_message(timeout=0.3)
        for _ in range(500):
            if author._closed:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(ClosedResourceError):
            await author.publish(branch, b"after")
    finally:
        await sub.close()
        await author.close()
    store = Store.open(tmp_path / "a.db", PW)
    try:
        assert len(store.log_range(branch, 0, 1, 100)) == 1  # "kept" only
    finally:
        store.close()
    reopened = await Author.open(tmp_path / "a.db", PW, MemoryHub().author_endpoint(), AllowList.of([]),
                                 store_options=DURABLE)
    try:
        assert reopened._core.own_next_seq(branch) == 2  # seq 2 was never acknowledged: used again
    finally:
        await reopened.close()


async def test_close_waits_for_the_syncs_under_way(tmp_path: Path, gate: list[Gate]) -> None:
    author, sub, branch = await _pair(tmp_path, DURABLE, FAST)
    g = Gate(tmp_path / "a.db-commits", patience=0.5)
    gate.append(g)
    try:
        async with _busy():
            task = asyncio.create_task(author.publish_many(branch, [b"p%d" % i for i in range(10)]))
            await _until(g.entered)
            await author.close()  # the sync ends (gate patience), the frames go, then the store closes
        assert g.threads[0].startswith("streams-sync")
        assert await task == list(range(1, 11))
    finally:
        await sub.close()
        await author.close()
    store = Store.open(tmp_path / "a.db", PW)
    try:
        assert len(store.log_range(branch, 0, 1, 100)) == 10
    finally:
        store.close()


@pytest.mark.parametrize("applied_first", [False, True], ids=["records pending", "journal applied first"])
async def test_records_of_a_failed_sync_stay_out_even_where_the_journal_cannot_be_cut_back(
        tmp_path: Path, gate: list[Gate], monkeypatch: pytest.MonkeyPatch, applied_first: bool) -> None:
    """The sync fails and so does every cut of the journal (its file keeps the records of the failed commit): the
    database is marked past them at close -- by the apply of what is still pending, or, with nothing pending (the
    journal applied just before: found by review), by a mark of its own -- so the next open's replay skips them:
    the reopened store holds what was acknowledged and nothing of the failed publish."""
    author, sub, branch = await _pair(tmp_path, DURABLE, FAST)
    g = Gate(tmp_path / "a.db-commits")
    g.release.set()
    gate.append(g)
    journal = str(tmp_path / "a.db-commits")
    real_truncate = os.ftruncate

    def truncate(fd: int, length: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == journal:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_truncate(fd, length)

    try:
        assert await author.publish(branch, b"kept") == 1
        assert (await sub.next_message(timeout=10)).payload == b"kept"
        if applied_first:
            author.store.apply_journal()
            assert author.store.journal_pending == 0
        monkeypatch.setattr(os, "ftruncate", truncate)
        g.fail = errno.ENOSPC
        with pytest.raises(StorageError, match="syncing"):
            await author.publish_many(branch, [b"lost1", b"lost2"])
    finally:
        await sub.close()
        await author.close()
        monkeypatch.setattr(os, "ftruncate", real_truncate)
    assert Path(journal).stat().st_size > 0  # (the records are still in the file)
    # A party's open replays the journal (a reader that does not lock the store would not).
    reopened = await Author.open(tmp_path / "a.db", PW, MemoryHub().author_endpoint(), AllowList.of([]),
                                 store_options=DURABLE)
    try:
        assert len(reopened.store.log_range(branch, 0, 1, 100)) == 1  # "kept" only
        assert reopened._core.own_next_seq(branch) == 2
    finally:
        await reopened.close()


async def test_a_received_batch_whose_sync_fails_in_place_is_never_handed_over(
        tmp_path: Path, gate: list[Gate]) -> None:
    """The subscriber idle (its sync made in place) and the sync fails: the batch's ACK and its messages wait on
    one sync request, so neither goes -- a second request used to find the failure taken back already, answer
    "durable", and hand the message to the application (found by review)."""
    author, sub, branch = await _pair(tmp_path, FAST, DURABLE)
    g = Gate(tmp_path / "m.db-commits")
    g.release.set()
    gate.append(g)
    try:
        await asyncio.sleep(0.1)
        g.fail = errno.EIO
        seq = await author.publish(branch, b"never durable")
        with pytest.raises((StreamsTimeoutError, ClosedResourceError)):
            await sub.next_message(timeout=1)
        assert g.failed == 1
        with pytest.raises(StreamsTimeoutError):
            await author.wait_acknowledged(branch, seq, timeout=0.3)
    finally:
        await sub.close()
        await author.close()


async def test_a_sync_that_fails_after_an_apply_made_its_commits_durable_fails_nothing_it_covered(
        tmp_path: Path, gate: list[Gate]) -> None:
    """While the sync of a publish runs on the thread, the journal is applied to SQLite (the heartbeat's apply;
    a read through the database does the same): those records are durable there.  The sync then fails: the
    publish succeeds (its messages are in the reopened store, its seqs not used again), and the party stops at
    its next commit (the journal is stopped).  It used to raise StorageError for messages it kept (review)."""
    author, sub, branch = await _pair(tmp_path, DURABLE, FAST)
    g = Gate(tmp_path / "a.db-commits")
    gate.append(g)
    try:
        g.release.set()
        assert await author.publish(branch, b"kept") == 1
        await asyncio.sleep(0.1)
        g.release.clear()
        g.entered.clear()
        g.fail = errno.EIO
        async with _busy():
            task = asyncio.create_task(author.publish_many(branch, [b"two", b"three"]))
            await _until(g.entered)
            author.store.apply_journal()  # (as the heartbeat would)
            assert author.store.journal_pending == 0
            g.release.set()
            assert await task == [2, 3]
        with pytest.raises((StorageError, ClosedResourceError)):
            await author.publish(branch, b"after")
    finally:
        g.release.set()
        await sub.close()
        await author.close()
    reopened = await Author.open(tmp_path / "a.db", PW, MemoryHub().author_endpoint(), AllowList.of([]),
                                 store_options=DURABLE)
    try:
        assert len(reopened.store.log_range(branch, 0, 1, 100)) == 3
        assert reopened._core.own_next_seq(branch) == 4
    finally:
        await reopened.close()


async def test_a_flush_right_after_a_round_ends_sends_after_that_round_s_frames(
        tmp_path: Path, gate: list[Gate]) -> None:
    """A task that runs as soon as a sync has returned flushes a HEAD notice (nothing to sync): between the
    round's end and the turn in which its commits' frames are sent it used to be answered "durable" and sent
    first -- the subscriber saw HEAD 3 before PACKETs 2-3 and fetched them twice (review).  It waits behind them."""
    author, sub, branch = await _pair(tmp_path, DURABLE, FAST)
    author.heartbeat_ms = 10**9
    g = Gate(tmp_path / "a.db-commits")
    gate.append(g)
    wire: list[tuple[str, int | None]] = []
    real = author._send_many
    assert real is not None

    def send_many(outs: Sequence[Outgoing]) -> None:
        for o in outs:
            f = decode_frame(o.data)
            wire.append((f.kind.name, getattr(f.head, "seq", None)))
        real(outs)

    author._send_many = send_many
    try:
        g.release.set()
        assert await author.publish(branch, b"one") == 1
        await author.wait_acknowledged(branch, 1, timeout=10)
        await asyncio.sleep(0.1)
        g.release.clear()
        g.entered.clear()
        g.synced.clear()

        async def prober() -> None:
            while not g.synced.is_set():
                await asyncio.sleep(0)
            await author.wait_acknowledged(branch, 3, timeout=10)

        async with _busy():
            probe = asyncio.create_task(prober())
            task = asyncio.create_task(author.publish_many(branch, [b"two", b"three"]))
            await _until(g.entered)
            wire.clear()
            g.release.set()
            assert await task == [2, 3]
            await probe
        first_head = next(i for i, (k, s) in enumerate(wire) if k == "HEAD" and s == 3)
        packets = [i for i, (k, s) in enumerate(wire) if k == "PACKET" and s in (2, 3)]
        assert len(packets) == 2 and max(packets) < first_head, wire
    finally:
        g.release.set()
        await sub.close()
        await author.close()
