"""Small asyncio helpers shared by the drivers (``streams.api``, ``brokerless``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Coroutine, Iterable
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


def run_in_task(coro: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run ``coro`` in a task of its own, which a cancellation of the caller does not reach (await it with
    :func:`asyncio.shield`): the task, or None if it ended without suspending (what it raised is raised here).

    The task is a real one from its first step: whatever the coroutine binds to the current task -- a deadline
    (``asyncio.timeout``; ``wait_for`` on 3.12), a ``TaskGroup`` -- is bound to it.  (It used to run in the
    caller up to its first suspension, by hand: a send's own deadline then cancelled the caller, whose publish
    raised CancelledError nobody asked for, and never reached the send.)  On Python 3.12 the task starts eagerly
    (``eager_start``): a coroutine that never suspends costs no turn of the loop; on 3.11 it starts at the next
    turn, as any task."""
    if sys.version_info >= (3, 12) and isinstance(coro, Coroutine):
        task: asyncio.Task[None] = asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)
        if task.done():
            task.result()
            return None
        return task
    return asyncio.ensure_future(coro)
