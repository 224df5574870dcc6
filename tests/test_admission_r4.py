"""Fourth review of the subscription handshake's clock and used nonces (SPEC 8.3, 9.2): the author's clock at
readings a driver may give (negative, near the u64 the wire carries), and the pruning of the store's used-nonce
rows (``Store.prune_nonces``) -- real SQLite files, two cores wired without sockets (``tests.corenet``)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from streams.api import NONCE_PRUNE_BATCH, Author, MemoryHub, StoreOptions
from streams.core import CoreConfig
from streams.events import SubscriberAdmitted, SubscriberRefused
from streams.identity import Identity
from streams.policy import AllowList
from streams.store import Store
from streams.wire import Kind, decode_frame
from tests.corenet import Net
from tests.test_admission_r2 import member, nonce_rows

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "pw"


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
        assert nonce_rows(path) == stale + 3 - NONCE_PRUNE_BATCH
    finally:
        st.close()
    # The author's timer deletes the rest over its next ticks, and only the expired ones.
    author = await Author.open(path, PW, MemoryHub().author_endpoint(), AllowList.of([]), store_options=FAST,
                               clock=lambda: clock[0])
    try:
        for _ in range(3000):  # until the timer deleted them, with a generous bound
            if nonce_rows(path) == 3:
                break
            await asyncio.sleep(0.01)
        assert nonce_rows(path) == 3
    finally:
        await author.close()


@pytest.mark.parametrize(("start", "ttl"), [(-100_000, None), ((1 << 63) - 1_000, None), ((1 << 64) - 1_000, None),
                                           (1_700_000_000_000, (1 << 63) - 1)])
async def test_a_driver_clock_below_zero_or_near_the_u64_does_not_close_the_author_at_a_hello(
        tmp_path: Path, start: int, ttl: int | None) -> None:
    """The handshake's clock started at the driver's first reading, whatever it was: below 0 the challenge's
    expiry did not pack as the u64 of the wire (struct.error), near 2**64 neither, and near 2**63 its used nonce
    did not fit the store's INTEGER (OverflowError at the commit) -- raised out of the receive loop at the first
    HELLO, anyone's, and the author closed.  So did an author with the greatest ``challenge_ttl_ms`` CoreConfig
    takes, 2**63 - 1, at the first SUBSCRIBE: its expiry, a wall-clock reading plus that, did not fit the store.
    The clock is now kept within what an expiry can be."""
    clock = [start]
    hub = MemoryHub()
    a = Identity.generate()
    a_path = tmp_path / "author.db"
    config = None if ttl is None else CoreConfig(challenge_ttl_ms=ttl)
    author = await Author.create(a_path, Identity.generate(), "c", PW, hub.author_endpoint(), AllowList.of([a.did]),
                                 store_options=FAST, clock=lambda: clock[0], config=config)
    sa = await member(tmp_path, hub, author, a, "a")
    try:
        branch = await sa.subscribe(timeout=10)
        assert author.branch_of(a.did) == branch
        assert nonce_rows(a_path) == 1
    finally:
        await sa.close()
        await author.close()


@pytest.mark.parametrize("start", [-600_000, (1 << 63) - 1_000, (1 << 64) - 1_000])
def test_challenges_still_expire_and_are_not_reused_from_a_first_reading_out_of_range(start: int) -> None:
    """The kept-in-bounds clock still does its work from such a first reading: a copied SUBSCRIBE is refused,
    before and after its challenge expired, and the used nonces are dropped as their challenges expire -- it does
    not stop at its top (with ``max_nonces`` 2, the third subscription needs the first nonce dropped)."""
    net = Net.make(n_subs=4, config=CoreConfig(max_nonces=2))
    ttl = net.author.config.challenge_ttl_ms
    net.now = start
    net.subscribe("s0")
    assert net.author.branch_of(net.subs["s0"].identity.did) is not None
    (copy,) = [d for who, d in net.wire if who == "s0" and decode_frame(d).kind is Kind.SUBSCRIBE]
    for _ in range(2):  # used, then (s0's challenge expired) expired
        got = net.author.receive(copy, net.now, "s0")
        assert [e.reason for e in got if isinstance(e, SubscriberRefused)] == \
            ["challenge forged, expired or already used"], got
        assert not [e for e in got if isinstance(e, SubscriberAdmitted)], got
        net.now += ttl + 1
    for name in ("s1", "s2", "s3"):
        net.subscribe(name)
        assert net.author.branch_of(net.subs[name].identity.did) is not None, name
        net.now += ttl + 1
