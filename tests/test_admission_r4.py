"""Fourth review of the subscription handshake's clock and used nonces (SPEC 8.3, 9.2): the author's clock at
readings a driver may give (negative, near the u64 the wire carries), and the pruning of the store's used-nonce
rows (``Store.prune_nonces``) -- real SQLite files, two cores wired without sockets (``tests.corenet``)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from streams.api import NONCE_PRUNE_BATCH, Author, MemoryHub, StoreOptions
from streams.identity import Identity
from streams.policy import AllowList
from streams.store import Store

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "pw"


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as c:
        (n,) = c.execute("SELECT COUNT(*) FROM nonces").fetchone()
    c.close()
    return int(n)


def _fill(path: Path, n: int, expires_ms: int) -> None:
    """Rows as an older version of this code left them: one per subscription it ever admitted."""
    with sqlite3.connect(path) as c:
        c.executemany("INSERT INTO nonces VALUES (?, ?)", ((os.urandom(16), expires_ms) for _ in range(n)))
    c.close()


async def test_the_store_s_expired_nonce_rows_are_deleted_a_bounded_batch_at_a_time(tmp_path: Path) -> None:
    """The author's timer deleted every expired used-nonce row of the store in one DELETE, on the event loop: a
    store an older version of this code wrote holds a row per subscription it ever admitted (nothing deleted
    them), and at the first tick after the upgrade the author handled no frame until millions of rows were
    scanned and deleted.  At most ``limit`` rows go per call now, the timer's ``NONCE_PRUNE_BATCH`` a tick, and
    the next tick deletes more until none is left."""
    clock = [1_700_000_000_000]
    path = tmp_path / "author.db"
    author = await Author.create(path, Identity.generate(), "c", PW, MemoryHub().author_endpoint(),
                                 AllowList.of([]), store_options=FAST, clock=lambda: clock[0])
    await author.close()
    stale = 2 * NONCE_PRUNE_BATCH + 7
    _fill(path, stale, clock[0] - 1)  # expired (an older version's wall-clock expiries)
    _fill(path, 3, clock[0] + 30_000)  # not expired: kept
    st = Store.open(path, PW, durable=False)
    try:
        assert st.prune_nonces(clock[0], clock[0] + 60_000, limit=NONCE_PRUNE_BATCH) is True
        assert _rows(path) == stale + 3 - NONCE_PRUNE_BATCH
    finally:
        st.close()
    # The author's timer deletes the rest over its next ticks, and only the expired ones.
    author = await Author.open(path, PW, MemoryHub().author_endpoint(), AllowList.of([]), store_options=FAST,
                               clock=lambda: clock[0])
    try:
        for _ in range(3000):  # until the timer deleted them, with a generous bound
            if _rows(path) == 3:
                break
            await asyncio.sleep(0.01)
        assert _rows(path) == 3
    finally:
        await author.close()
