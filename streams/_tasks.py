"""Small asyncio helpers shared by the drivers (``streams.api``, ``brokerless``)."""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_shielded(task: asyncio.Future[Any]) -> None:
    """Await ``task`` to its end even if the caller is cancelled meanwhile, then raise that cancellation (or the
    task's own error).  For ``close()``: a cancelled caller must neither leave a half-closed party behind nor
    have its cancellation swallowed (it used to return normally, as if it had not been cancelled)."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()
