"""Edges between today's flows: a REVOKE's pending tail across a restart (kept in the branch record), and a
wait for the ACK of a message refused while the member's write had lapsed, which the ACK of its replacement at
that seq must not answer.  Cores wired together, the asyncio API over the in-memory transport with real
stores."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streams._state import BranchState
from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.core import BranchRecord, ChainRecord, Changes, SubscriberCore
from streams.errors import StreamsError
from streams.events import MessageReceived, Rejected
from streams.policy import AllowList
from streams.wire import Kind, Permission, decode_frame

from .corenet import Net, ident


def _keep(core: SubscriberCore) -> tuple[dict[bytes, BranchRecord], dict[tuple[bytes, int], ChainRecord]]:
    """Record what the store would hold of ``core`` (its take_changes)."""
    records: dict[bytes, BranchRecord] = {}
    chains: dict[tuple[bytes, int], ChainRecord] = {}
    take = core.take_changes

    def kept() -> Changes:
        changes = take()
        records.update((r.id, r) for r in changes.branches)
        chains.update(((c.branch, c.publisher), c) for c in changes.chains)
        return changes

    core.take_changes = kept  # type: ignore[method-assign]
    return records, chains


def test_revoke_overtaking_the_tail_then_restart_still_accepts_the_tail() -> None:
    """SPEC 8.8: the tail a REVOKE named is fetched and accepted on the closed branch -- also by a member
    restarted between the REVOKE and the tail (the branch record keeps it: BranchRecord.tail), which asks for it
    again at its timer."""
    n = Net.make(n_subs=1)
    s0 = n.subs["s0"]
    records, chains = _keep(s0)
    n.subscribe("s0")
    [b0] = s0.branch_ids()
    for i in range(5):
        n.author.publish(b0, b"m%d" % i, n.now)
    n.author.take_changes()
    packets = [o.data for o in n.author.data_to_send()]
    for raw in packets[:3]:
        n.to_sub("s0", raw)
    n.author.revoke(b0)
    n.pump_author()
    s0.take_changes()
    assert s0.branch_state(b0) is BranchState.CLOSED
    again = SubscriberCore(s0.identity, n.author.identity.did, n.author.channel)
    again.load_subscriber(None, list(records.values()), list(chains.values()))
    again.catch_up(n.now)
    again.handle_timer(n.now + 10_000)  # the tail is asked for again
    again.take_changes()
    fetches = [decode_frame(o.data).head for o in again.data_to_send() if decode_frame(o.data).kind is Kind.FETCH]
    assert [(f.branch, f.publisher, f.from_seq) for f in fetches] == [(b0, 0, 4)]
    n.subs["s0"] = again
    events = n.to_sub("s0", packets[3]) + n.to_sub("s0", packets[4])
    assert [e.reason for e in events if isinstance(e, Rejected)] == []
    assert [m.seq for m in events if isinstance(m, MessageReceived)] == [4, 5]


def test_a_removal_naming_a_head_beyond_the_cursor_then_restart_still_fetches_and_accepts_it() -> None:
    """SPEC 9.5: the head the re-key that removed s0 from a group named (3), beyond s0's cursor (1), is kept with
    the closed group like a REVOKE's tail: s0 restarted before the messages came asks for them again at its
    timer and accepts them."""
    n = Net.make(n_subs=2)
    s0 = n.subs["s0"]
    records, chains = _keep(s0)
    n.subscribe("s0")
    n.subscribe("s1")
    g = n.author.open_group([ident(10).public, ident(11).public])
    n.pump_author()
    for i in range(3):
        n.author.publish(g, b"m%d" % i, n.now)
    n.author.take_changes()
    packets = [o.data for o in n.author.data_to_send() if decode_frame(o.data).kind is Kind.PACKET]
    n.to_sub("s0", packets[0])
    n.author.remove_member(g, ident(10).did)
    n.pump_author()
    s0.take_changes()
    assert s0.branch_state(g) is BranchState.CLOSED
    again = SubscriberCore(s0.identity, n.author.identity.did, n.author.channel)
    again.load_subscriber(None, list(records.values()), list(chains.values()))
    again.catch_up(n.now)
    again.handle_timer(n.now + 10_000)
    again.take_changes()
    fetches = [decode_frame(o.data).head for o in again.data_to_send() if decode_frame(o.data).kind is Kind.FETCH]
    assert [(f.branch, f.publisher, f.from_seq, f.to_seq) for f in fetches if f.branch == g] == [(g, 0, 2, 3)]
    n.subs["s0"] = again
    events = n.to_sub("s0", packets[1]) + n.to_sub("s0", packets[2])
    assert [e.reason for e in events if isinstance(e, Rejected)] == []
    assert [m.payload for m in events if isinstance(m, MessageReceived)] == [b"m1", b"m2"]


async def test_wait_acknowledged_of_a_refused_message_is_not_answered_by_its_replacement(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Write taken away and given back before the member hears of either (both re-keys reach it together): the
    message it published meanwhile was refused, the re-key restarts its chain at the author's head and drops it
    from the log (Changes.log_cut), and the next publish gets the same seq.  A wait_acknowledged on the refused
    message, pending then, fails: the ACK of the *other* message published at its seq must not answer it (looking
    at can_write after the batch, True again, it would have)."""
    async with _refused_across_a_lapse(tmp_path) as (author, s, b, refused):
        waiter = asyncio.ensure_future(s.wait_acknowledged(b, refused, timeout=5))
        await author._flush()
        await asyncio.sleep(0.5)
        again = await s.publish(b, b"two again")
        assert again == refused  # the seq is reused
        with pytest.raises(StreamsError):
            await waiter


@contextlib.asynccontextmanager
async def _refused_across_a_lapse(tmp_path: Path) -> AsyncIterator[tuple[Author, Subscriber, bytes, int]]:
    """An author and s0 over the in-memory hub: s0 publishes one message (acknowledged), then another, which the
    author will refuse: before it reads it, it takes s0's write away and gives it back (two re-keys, not sent
    yet).  Yields (author, s0, its branch, the refused seq); both are closed after."""
    fast = StoreOptions(durable=False, opslimit=1, memlimit=8192)
    hub = MemoryHub()
    author = await Author.create(tmp_path / "a.db", ident(1), "m", "pw", hub.author_endpoint(),
                                 AllowList({ident(10).did: Permission.READ_WRITE}), store_options=fast)
    s = await Subscriber.create(tmp_path / "s.db", ident(10), ident(1).did, author.channel, "pw",
                                hub.subscriber_endpoint("s"), store_options=fast)
    try:
        b = await s.subscribe(timeout=5)
        await s.wait_acknowledged(b, await s.publish(b, b"one"), timeout=5)
        refused = await s.publish(b, b"two (refused: signed before the lapse)")
        author._core.set_permission(b, Permission.READ)  # (before the author reads it)
        author._core.set_permission(b, Permission.READ_WRITE)
        yield author, s, b, refused
    finally:
        await s.close()
        await author.close()


def test_a_branch_records_pending_tail_survives_the_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The store keeps BranchRecord.tail (a record written before it was kept reads as 0)."""
    import msgpack

    from streams.errors import StorageError
    from streams.identity import Identity
    from streams.keystore import seal_secret
    from streams.store import Store

    me = Identity.from_seed(b"\x0a" * 32)
    store = Store.create(tmp_path / "s.db", me, "pw", role="subscriber", channel=b"c" * 32,
                         author_did=Identity.from_seed(b"\x01" * 32).did, durable=False, opslimit=1, memlimit=8192)
    rec = BranchRecord(b"b" * 16, 0, 1, b"h" * 32, b"", 1, [(0, b"a" * 32, 3), (1, me.sign_public, 3)],
                       [(0, 0, b"k" * 32)], BranchState.CLOSED.value, tail=7)
    store.commit(Changes(branches=[rec]))
    assert [r.tail for r in store.load_branches()] == [7]
    raw = store._conn.execute("SELECT rec FROM branches").fetchone()[0]
    v = msgpack.unpackb(raw, raw=False)[:13]
    store._conn.execute("UPDATE branches SET rec = ?", (msgpack.packb(v, use_bin_type=True),))
    with pytest.raises(StorageError, match="altered"):  # a current record cut short: its tail was dropped
        store.load_branches()
    # The record as the code before the tail wrote it: its keys (and the seed) sealed without the record's
    # fields as associated data (the store authenticates them at this open).
    key = store._key
    v[7] = seal_secret(key, msgpack.packb([[0, 0, b"k" * 32]], use_bin_type=True), b"streams.store.keys" + b"b" * 16)
    store._conn.execute("UPDATE branches SET rec = ?", (msgpack.packb(v, use_bin_type=True),))
    store._conn.execute("UPDATE meta SET v = ? WHERE k = 'seed'", (msgpack.packb(
        seal_secret(key, me.export_seed(), b"streams.store.identity"), use_bin_type=True),))
    store._conn.execute("DELETE FROM meta WHERE k = 'check'")  # (the older code wrote no check row)
    store.close()
    store = Store.open(tmp_path / "s.db", "pw", durable=False)
    assert [r.tail for r in store.load_branches()] == [0]
    store.close()


async def test_wait_registered_after_the_log_cut_is_not_answered_by_the_replacement(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The refused message's wait, started once the re-keys that lapsed and restored our write are in (the
    log_cut already committed), raises: that seq is not a message of our chain (until the next publish takes
    it), rather than being answered by the ACK of the replacement published there."""
    async with _refused_across_a_lapse(tmp_path) as (author, s, b, refused):
        await author._flush()
        await asyncio.sleep(0.5)  # both re-keys are in: our chain restarted at 1, seq 2 given back
        waiter = asyncio.ensure_future(s.wait_acknowledged(b, refused, timeout=5))
        await asyncio.sleep(0)
        again = await s.publish(b, b"two again")
        assert again == refused
        with pytest.raises(StreamsError):
            await waiter

