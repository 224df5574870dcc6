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
owed nothing but came after one that did (a commit's frames never overtake an earlier commit's), and a failed sync
fails every request waiting, and the store's journal (no later commit is made: ``Store.end_sync``).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from .store import Store, sync_fd


class Syncer:
    """The deferred syncs of one party's store (used on its event loop's thread)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._executor: ThreadPoolExecutor | None = None  #: made at the first sync
        self._round: list[asyncio.Future[None]] | None = None  #: the requests the running sync answers
        self._next: list[asyncio.Future[None]] = []  #: the requests waiting for the next round

    def request(self) -> asyncio.Future[None] | None:
        """A future done once every commit written so far is durable and every earlier request is done (its
        exception: the :class:`~streams.errors.StorageError` of a failed sync); None if nothing is owed or
        waiting (what was committed is durable now: send at once)."""
        owed = self._store.sync_owed
        if self._round is None and not owed:
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._round is None and not getattr(loop, "_ready", True):
            # Nothing else is ready to run: a sync on a thread would overlap nothing, and costs two thread
            # wake-ups (about 90 us each way here): the sync runs in place.
            fd = self._store.begin_sync()
            try:
                sync_fd(fd)
            except OSError as exc:
                err = self._store.end_sync(exc)
                fut.set_exception(err if err is not None else exc)
                return fut
            self._store.end_sync(None)
            return None
        if self._round is None:
            self._start([fut])
        elif owed or self._next:
            self._next.append(fut)
        else:
            self._round.append(fut)  # durable already: answered in turn, after the requests before it
        return fut

    @property
    def busy(self) -> bool:
        return self._round is not None

    def _start(self, futs: list[asyncio.Future[None]]) -> None:
        fd = self._store.begin_sync()
        self._round = futs
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="streams-sync")
        done = asyncio.get_running_loop().run_in_executor(self._executor, sync_fd, fd)
        done.add_done_callback(self._ended)

    def _ended(self, done: asyncio.Future[None]) -> None:
        exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
        err = self._store.end_sync(exc)
        futs, self._round = self._round or [], None
        for f in futs:
            _answer(f, err)
        if not self._next:
            return
        nxt, self._next = self._next, []
        if err is None and self._store.sync_owed:
            self._start(nxt)
        else:  # (a failure: every one waiting fails with it; or nothing was written since: durable already)
            for f in nxt:
                _answer(f, err)

    async def close(self) -> None:
        """Wait for the syncs under way (their outcome is reported to their requests), then stop the thread.
        Call before the store is closed: a sync uses its descriptor."""
        while self._round is not None:
            await asyncio.wait([(self._next or self._round)[-1]])  # (its outcome is its requester's)
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
