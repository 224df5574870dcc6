"""A durable store's commit syncs, off the event loop's thread and overlapped with the party's next work.

A party whose store is durable (``StoreOptions(durable=True)``, the default) and journaled writes each hot commit
with ``Store.commit(..., defer_sync=True)``: the record is appended, and its ``fdatasync`` (about 100-200 us here,
much of it waiting on the device) runs on a thread of the :class:`Syncer`'s own while the loop goes on -- signing
and encrypting the next ``publish_many`` call of another task, checking the next received batch.  Nothing of a
commit is sent, acknowledged or handed to the application before a sync begun after it has ended (THREATS 4):
the party waits on the future :meth:`Syncer.request` returns.

A sync asked for while nothing else is ready to run on the loop (its ``_ready`` queue, CPython's; on a loop
without one every sync goes to the thread) is made in place instead: a thread would overlap nothing there and
cost two wake-ups, about 90 us each way here (a publish awaited at a time, a lone received message).  This is a
matter of speed only: either way nothing is sent before the sync ends.

Syncs run in rounds: one at a time; the requests made while one runs wait for the next, which covers every commit
written before it began (group commit).  Futures are resolved in the order they were requested, also those that
owed nothing but came after one that did, and a round stays open until the turn of the loop after its end (its
requesters' callbacks send in that turn): a commit's frames never overtake an earlier commit's.  A failed sync
stops the store's journal (``Store.end_sync``: no later commit is made, the records it leaves undurable are taken
back) and fails each waiting request whose commit is not durable by other means (its journal number beyond
``Store.durable_seq``: an apply into SQLite may have made it so meanwhile), and every request after.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from .errors import StorageError
from .store import Store, sync_fd


class Syncer:
    """The deferred syncs of one party's store (used on its event loop's thread)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._executor: ThreadPoolExecutor | None = None  #: made at the first sync
        #: The requests the running sync answers; between its end and the turn of the loop after (its requesters'
        #: callbacks run in that turn), an empty list: a request made meanwhile waits behind them.
        self._round: list[asyncio.Future[None]] | None = None
        self._next: list[asyncio.Future[None]] = []  #: the requests waiting for the next round
        #: A sync failed, or the journal stopped: every later request fails with this (never "durable already":
        #: what was committed after it may be gone).
        self._failed: StorageError | None = None
        #: Each waiting request's mark: the journal's last record number when it was made (its commit's).  A
        #: failed sync fails only those whose commits are not durable by other means (an apply into SQLite).
        self._marks: dict[asyncio.Future[None], int] = {}

    def request(self) -> asyncio.Future[None] | None:
        """A future done once every commit written so far is durable and every earlier request is done (its
        exception: the :class:`~streams.errors.StorageError` of a failed sync); None if nothing is owed or
        waiting (what was committed is durable now: send at once)."""
        loop = asyncio.get_running_loop()
        owed = self._store.sync_owed
        if self._failed is None and self._round is None and not owed:
            return None
        fut: asyncio.Future[None] = loop.create_future()
        if self._failed is not None:
            fut.set_exception(self._failed)
            return fut
        mark = self._store.written_seq
        if self._round is None and not getattr(loop, "_ready", True):
            # Nothing else is ready to run: a sync on a thread would overlap nothing, and costs two thread
            # wake-ups (about 90 us each way here): the sync runs in place.
            fd = self._store.begin_sync()
            outcome: OSError | None = None
            try:
                sync_fd(fd)
            except OSError as exc:
                outcome = exc
            err = self._end(outcome)
            if err is None or mark <= self._store.durable_seq:
                return None
            fut.set_exception(err)
            return fut
        self._marks[fut] = mark
        if self._round is None:
            self._start([fut])
        elif owed or self._next:
            self._next.append(fut)
        else:
            self._round.append(fut)  # durable already: answered in turn, after the requests before it
        return fut

    def _end(self, exc: BaseException | None) -> StorageError | None:
        """Report a sync's outcome to the store; return its error (kept for every later request)."""
        err = self._store.end_sync(exc)
        if self._failed is None:
            self._failed = err
        return err

    def _reply(self, f: asyncio.Future[None], err: StorageError | None) -> None:
        """Answer a request: ``err`` unless its commit is durable all the same (an apply made it so)."""
        mark = self._marks.pop(f, None)
        if err is not None and mark is not None and mark <= self._store.durable_seq:
            err = None
        _answer(f, err)

    def _start(self, futs: list[asyncio.Future[None]]) -> None:
        fd = self._store.begin_sync()
        self._round = futs
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="streams-sync")
        done = asyncio.get_running_loop().run_in_executor(self._executor, sync_fd, fd)
        done.add_done_callback(self._ended)

    def _ended(self, done: asyncio.Future[None]) -> None:
        err = self._end(done.exception() if not done.cancelled() else asyncio.CancelledError())
        futs, self._round = self._round or [], []
        for f in futs:
            self._reply(f, err)
        # Their callbacks (the sends of those commits) run in the loop's next turn: what is asked for until then
        # is answered after them (_after), not at once.
        asyncio.get_running_loop().call_soon(self._after)

    def _after(self) -> None:
        gap, self._round = self._round or [], None
        for f in gap:
            self._reply(f, self._failed)
        if not self._next:
            return
        nxt, self._next = self._next, []
        if self._failed is None and self._store.sync_owed:
            self._start(nxt)
        else:  # (a failure: every one waiting fails with it; or nothing was written since: durable already)
            for f in nxt:
                self._reply(f, self._failed)

    async def close(self) -> None:
        """Wait for the syncs under way (their outcome is reported to their requests), then stop the thread.
        Call before the store is closed: a sync uses its descriptor."""
        while self._round is not None:
            waiting = self._next or self._round
            if waiting:
                await asyncio.wait([waiting[-1]])  # (its outcome is its requester's)
            else:
                await asyncio.sleep(0)  # (between a round's end and _after)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


def _answer(f: asyncio.Future[None], err: BaseException | None) -> None:
    if f.done():
        return
    if err is None:
        f.set_result(None)
    else:
        f.set_exception(err)
