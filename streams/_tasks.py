"""Small asyncio helpers shared by the drivers (``streams.api``, ``brokerless``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine, Generator, Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended; what they raise (their cancellation included) is
    dropped: a driver's tasks stopping at close."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


async def wait_shielded(task: asyncio.Future[Any]) -> None:
    """Await ``task`` to its end even if the caller is cancelled meanwhile, then raise that cancellation (or the
    task's own error).  For ``close()``: a cancelled caller must neither leave a half-closed party behind nor
    have its cancellation swallowed (it used to return normally, as if it had not been cancelled)."""
    me = asyncio.current_task()
    pending = me.cancelling() if me is not None else 0
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and task.cancelled():
                break  # the task itself was cancelled: task.result() raises it
    if me is not None and me.cancelling() > pending:
        raise asyncio.CancelledError  # the caller was cancelled meanwhile (also in the turn the task ended)
    task.result()


def run_eagerly(coro: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run ``coro`` in the calling task up to its first suspension: None if it ended there (what it raised is
    raised here), else a task running the rest of it, which a cancellation of the caller does not reach (await
    it with :func:`asyncio.shield`).  Python 3.12's eager tasks by hand, without the task: a coroutine that
    never suspends (every transport's ``send`` here) costs no task and no turn of the loop.  Another awaitable
    (a future) is awaited in a task from the start."""
    if not isinstance(coro, Coroutine):
        return asyncio.ensure_future(coro)
    try:
        first = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(coro, first))


async def _finish(coro: Coroutine[Any, Any, None], first: object) -> None:
    await _Rest(coro, first)


class _Rest:
    """The rest of a coroutine that was started and suspended, yielding ``first`` to its task: awaited, it
    passes that on to the awaiting task (a future to wait for), and what the task sends or throws back (the
    future's outcome, a cancellation) to the coroutine -- as ``await coro`` would have done from the start."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, None], first: object) -> None:
        self._coro, self._first = coro, first

    def __await__(self) -> Generator[Any, Any, None]:
        coro, out = self._coro, self._first
        while True:
            try:
                sent = yield out
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation (or any error) thrown in by the task
                try:
                    out = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    out = coro.send(sent)
                except StopIteration:
                    return
