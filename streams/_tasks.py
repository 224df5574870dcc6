"""Small asyncio helpers shared by the drivers (``streams.api``, ``brokerless``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
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
