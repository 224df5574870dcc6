"""A member restored from an older copy of its store (SPEC 12, ChainConflict).

Such a member would sign new messages at sequence numbers it already used: forks of its own chain, recorded by
the author as evidence against it, and never acknowledged.  The author's signed ACK of its chain beyond the
member's head tells the member; from then on it refuses to publish there.  The asyncio API over the in-memory
transport, real SQLite stores and the real backup."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.errors import ChainConflictError, LocalProtocolError, RejectReason
from streams.events import Acknowledged, Anchored, ChainConflict, Event, Rejected
from streams.identity import Identity
from streams.ledger import EmbeddedLedger
from streams.policy import AllowList
from streams.store import backup
from tests.test_anchoring_integration import CFG, wait_for

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "correct horse battery staple"
AUTHOR, P1 = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)


async def _sub(tmp: Path, hub: MemoryHub) -> Subscriber:
    s = await Subscriber.open(tmp / "p1.db", PW, hub.subscriber_endpoint("p1"), store_options=FAST)
    s.heartbeat_ms = 50  # its HEAD notices go out quickly
    return s


async def _first(s: Subscriber, kind: type[Event], timeout: float) -> Event:
    async def scan() -> Event:
        async for ev in s.events():
            if isinstance(ev, kind):
                return ev
        raise AssertionError("events ended")

    return await asyncio.wait_for(scan(), timeout)


async def _restored(tmp: Path, ledger: EmbeddedLedger | None = None) -> tuple[MemoryHub, Author, bytes]:
    """The author and P1 subscribed; P1 publishes 3 messages, copies its store (the real backup), publishes 3 more
    (all acknowledged), then the operator restores the copy: the author holds P1's chain through 6, the store
    through 3.  With ``ledger``, the author anchors there, and P1's chain is anchored through 6."""
    hub = MemoryHub()
    author = await Author.create(tmp / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST, ledger=ledger, anchor_config=CFG)
    author.heartbeat_ms = 50
    s = await Subscriber.create(tmp / "p1.db", P1, AUTHOR.did, author.channel, PW, hub.subscriber_endpoint("p1"),
                                store_options=FAST)
    branch = await s.subscribe(timeout=5)
    await s.publish_many(branch, [b"before the copy %d" % i for i in range(3)])
    await s.wait_acknowledged(branch, 3, timeout=5)
    await s.close()
    backup(tmp / "p1.db", tmp / "old.db")
    s = await _sub(tmp, hub)
    await s.publish_many(branch, [b"after the copy %d" % i for i in range(3)])
    await s.wait_acknowledged(branch, 6, timeout=5)
    if ledger is not None:
        await wait_for(lambda: author.anchoring is not None and author.anchoring.pending == 0
                       and getattr(author.anchoring.anchored_head(branch, 1), "seq", 0) == 6, what="P1's 6 anchored")
    await s.close()
    for suffix in ("", "-frames"):
        shutil.copyfile(tmp / f"old.db{suffix}", tmp / f"p1.db{suffix}")
    for suffix in ("-wal", "-shm"):
        (tmp / f"p1.db{suffix}").unlink(missing_ok=True)
    return hub, author, branch


async def test_a_member_restored_from_an_old_copy_stops_publishing_once_the_author_says_it_is_behind(
        tmp_path: Path) -> None:
    hub, author, branch = await _restored(tmp_path)
    s = await _sub(tmp_path, hub)
    ev = await _first(s, ChainConflict, 10)
    assert isinstance(ev, ChainConflict)
    assert (ev.branch, ev.publisher, ev.ours, ev.theirs) == (branch, 1, 3, 6)
    with pytest.raises(LocalProtocolError, match="conflicts with the author's copy"):
        await s.publish(branch, b"would fork seq 4")
    with pytest.raises(LocalProtocolError, match="conflicts with the author's copy"):
        await s.publish_many(branch, [b"would fork seq 4", b"and 5"])
    # A wait called after the conflict raises at once, rather than at its timeout: no ACK of our chain will come.
    with pytest.raises(ChainConflictError, match=r"conflicts with the author's copy \(ChainConflict\): seq 3"):
        await s.wait_acknowledged(branch, 3, timeout=5)
    await asyncio.sleep(0.3)
    assert author.forks() == []  # nothing was signed at a position the author holds
    # The member still reads: the author's chain on its branch goes on.
    await author.publish(branch, b"from the monitor")
    assert (await s.next_message(timeout=5)).payload == b"from the monitor"
    await s.close()
    await author.close()


@pytest.mark.parametrize("n", [4, 10])
async def test_a_restored_member_that_published_past_what_it_lost_is_stopped_too(tmp_path: Path, n: int) -> None:
    """Published at once after the restore, past the author's copy: the author's ACK is then below our head, not
    beyond it.  The author records the forks and sends its ACK of what it holds again; its hash differs from ours
    at that seq.  A wait for an ACK that will never come ends with the error instead of hanging."""
    hub, author, branch = await _restored(tmp_path)
    s = await _sub(tmp_path, hub)
    seqs = await s.publish_many(branch, [b"forks %d" % i for i in range(n)])  # before any ACK could come
    assert seqs == list(range(4, 4 + n))
    waiting = asyncio.ensure_future(s.wait_acknowledged(branch, seqs[-1]))
    ev = await _first(s, ChainConflict, 10)
    assert isinstance(ev, ChainConflict) and (ev.ours, ev.theirs) == (3 + n, 6)
    with pytest.raises(LocalProtocolError, match="conflicts"):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(LocalProtocolError, match="conflicts with the author's copy"):
        await s.publish(branch, b"more")
    assert len(author.forks()) == 3  # seqs 4-6, signed twice; nothing after the conflict
    await s.close()
    await author.close()


async def test_an_ack_beyond_our_head_from_another_member_does_not_stop_us(tmp_path: Path) -> None:
    """Only the author's word counts: in a group another member cannot read our chain, and on our own branch the
    author is the only other party.  A forged ACK (not the author's key) is refused and changes nothing."""
    from streams.core import SubscriberCore
    from streams.wire import Ack, encode_frame
    from tests.corenet import Net, ident

    net = Net.make(n_subs=1)
    net.subscribe("s0")
    sub: SubscriberCore = net.subs["s0"]
    b = sub.branch_ids()[0]
    sub.publish(b, b"one", net.now)
    sub.data_to_send()
    forged = encode_frame(Ack(net.author.channel, b, 1, 5, bytes(32), 0), b"", ident(99).sign).raw
    events = sub.receive(forged, net.now)
    assert not [e for e in events if isinstance(e, ChainConflict)]
    sub.publish(b, b"two", net.now)  # still allowed
    real = encode_frame(Ack(net.author.channel, b, 1, 5, bytes(32), 0), b"", ident(1).sign).raw
    events = sub.receive(real, net.now)
    assert [(e.ours, e.theirs) for e in events if isinstance(e, ChainConflict)] == [(2, 5)]
    with pytest.raises(LocalProtocolError, match="conflicts"):
        sub.publish(b, b"three", net.now)
    again = sub.receive(real, net.now)  # once per conflicting position
    assert not [e for e in again if isinstance(e, ChainConflict)]


def test_an_anchor_proof_of_our_chain_that_far_lifts_the_conflict() -> None:
    """The author holds what we no longer remember: an anchor proof of our own chain at or beyond the seq it
    acknowledged restarts our chain there (SPEC 13.5), and then publishing forks nothing.  One short of it does
    not lift the conflict."""
    from streams.anchor import ChainHead, build_epoch
    from streams.core import FILL_RETRIES, AnchorClaim, SubscriberCore
    from streams.events import Anchored
    from streams.wire import Ack, encode_frame
    from tests.corenet import Net, ident

    net = Net.make(n_subs=1)
    net.subscribe("s0")
    sub: SubscriberCore = net.subs["s0"]
    b = sub.branch_ids()[0]
    sub.publish(b, b"one", net.now)
    sub.data_to_send()
    ack = encode_frame(Ack(net.author.channel, b, 1, 5, bytes(32), 0), b"", ident(1).sign).raw
    assert sub.chain_conflict(b) == 0
    assert [(e.ours, e.theirs) for e in sub.receive(ack, net.now) if isinstance(e, ChainConflict)] == [(1, 5)]
    assert sub.chain_conflict(b) == 5

    def claim(seq: int) -> AnchorClaim:
        head = ChainHead(b, 1, seq, bytes([seq]) * 32, bytes(32))
        epoch = build_epoch(net.author.channel, [head], None, net.now, ident(1).sign)
        return AnchorClaim(head, 0, epoch.proofs[(b, 1)], epoch.checkpoint, str(seq), False)

    restart = sub.apply_anchor(claim(4), False)
    # Our log holds our head (1): our messages 2..4 are asked back from the author, which (here) never answers --
    # the proof is reported once that is given up (SPEC 13.5).
    assert not [e for e in restart if isinstance(e, Anchored)]
    for _ in range(FILL_RETRIES + 1):
        net.now += sub.config.fetch_retry_ms
        restart += sub.handle_timer(net.now)
    assert [e.restored for e in restart if isinstance(e, Anchored)] == [True]
    with pytest.raises(LocalProtocolError, match="conflicts"):
        sub.publish(b, b"would fork seq 5", net.now)
    assert sub.chain_conflict(b) == 5
    assert [e.restored for e in sub.apply_anchor(claim(5), False) if isinstance(e, Anchored)] == [True]
    assert sub.chain_conflict(b) == 0
    assert sub.publish(b, b"after the author's copy", net.now) == 6


def test_the_authors_ack_of_another_message_below_our_head_is_never_taken_for_an_acknowledgement() -> None:
    """Sent again (the author re-sends its ACK after each fork it records), the same ACK is a fork again: it must
    not count as the author holding our messages, or wait_acknowledged would return for messages it refused."""
    from streams.core import SubscriberCore
    from streams.events import Acknowledged
    from streams.wire import Ack, encode_frame
    from tests.corenet import Net, ident

    net = Net.make(n_subs=1)
    net.subscribe("s0")
    sub: SubscriberCore = net.subs["s0"]
    b = sub.branch_ids()[0]
    for payload in (b"one", b"two", b"three"):
        sub.publish(b, payload, net.now)
    sub.data_to_send()  # (the log rows stay in the core's changes: what _logged_hash reads without a store)
    ack = encode_frame(Ack(net.author.channel, b, 1, 2, bytes(32), 0), b"", ident(1).sign).raw
    first = sub.receive(ack, net.now)
    assert [(e.ours, e.theirs) for e in first if isinstance(e, ChainConflict)] == [(3, 2)]
    for events in (first, sub.receive(ack, net.now)):
        assert [e.reason for e in events if isinstance(e, Rejected)] == [RejectReason.FORK]
        assert not [e for e in events if isinstance(e, Acknowledged)]


async def test_the_stop_survives_a_restart_of_the_member(tmp_path: Path) -> None:
    """The conflict is kept in the store with the chain: reopened, the member refuses at once, with the same
    error, and signs nothing.  It used to live in memory only: each run after the first signed a new message at a
    position the author holds (one more fork per run), until that run's first ACK stopped it again."""
    hub, author, branch = await _restored(tmp_path)
    s = await _sub(tmp_path, hub)
    await _first(s, ChainConflict, 10)
    with pytest.raises(ChainConflictError, match="conflicts with the author's copy") as first:
        await s.publish(branch, b"would fork seq 4")
    await s.close()

    s = await _sub(tmp_path, hub)
    try:
        with pytest.raises(type(first.value), match="conflicts with the author's copy"):
            await s.publish(branch, b"would fork seq 4, second run")
        with pytest.raises(type(first.value), match="conflicts with the author's copy"):
            await s.publish_many(branch, [b"nor these"])
        with pytest.raises(LocalProtocolError, match=r"conflicts with the author's copy \(ChainConflict\): seq 3"):
            await s.wait_acknowledged(branch, 3, timeout=5)
        assert s.store.log_range(branch, 1, 4, 100) == []  # nothing signed beyond the store's head
        # Reported again in this run once the author confirms it (tail --events shows it each run).
        ev = await _first(s, ChainConflict, 10)
        assert isinstance(ev, ChainConflict) and (ev.ours, ev.theirs) == (3, 6)
        # The member still reads, and the author recorded no fork of its chain.
        await author.publish(branch, b"from the monitor")
        assert (await s.next_message(timeout=5)).payload == b"from the monitor"
        assert author.forks() == []
    finally:
        await s.close()
        await author.close()


async def test_an_anchor_proof_lifts_the_stop_for_good(tmp_path: Path) -> None:
    """Learnt in one run, the stop holds in the next; there the author's anchor proof of our chain through the
    seq it acknowledged restarts the chain at the author's copy (SPEC 13.5), and the next run publishes on from
    there: its message is the author's next one, acknowledged, no fork."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub, author, branch = await _restored(tmp_path, ledger)
    await author.close()

    async def author_on(hub: MemoryHub, with_ledger: bool) -> Author:
        a = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                              store_options=FAST, ledger=ledger if with_ledger else None, anchor_config=CFG)
        a.heartbeat_ms = 50
        return a

    # Run 1, the author without its ledger (no proof comes): the conflict is learnt.
    hub = MemoryHub()
    author = await author_on(hub, False)
    s = await _sub(tmp_path, hub)
    await _first(s, ChainConflict, 10)
    await s.close()
    await author.close()
    # Run 2, with the ledger: the author's proof of our chain through 6 (re-sent as we connect) lifts it.
    hub = MemoryHub()
    author = await author_on(hub, True)
    s = await _sub(tmp_path, hub)
    try:
        ev = await _first(s, Anchored, 10)
        assert isinstance(ev, Anchored) and (ev.publisher, ev.seq, ev.restored) == (1, 6, True)
    finally:
        await s.close()
        await author.close()
    # Run 3, without the ledger again (nothing can lift it now but the store): publishing goes on at 7.
    hub = MemoryHub()
    author = await author_on(hub, False)
    s = await _sub(tmp_path, hub)
    try:
        assert await s.publish(branch, b"after the author's copy") == 7
        await s.wait_acknowledged(branch, 7, timeout=5)
        assert author.forks() == []
    finally:
        await s.close()
        await author.close()
        ledger.close()


def test_the_stop_is_a_row_of_its_own_and_stores_written_before_it_open_without_one(tmp_path: Path) -> None:
    """The conflict is written (and deleted) with the chain's record, in the same commit.  A store written before
    the ``chain_conflicts`` table (here: one whose table is dropped, which is all that differs) opens, reads no
    conflict, and keeps one from then on; a damaged row is a StorageError, not a crash."""
    import sqlite3

    from streams.core import ChainRecord, Changes
    from streams.errors import StorageError
    from streams.store import Store

    db = tmp_path / "s.db"
    b, h = b"b" * 16, b"h" * 32
    st = Store.create(db, P1, PW, role="subscriber", channel=b"c" * 32, author_did=AUTHOR.did, durable=False,
                      opslimit=1, memlimit=8192)
    st.commit(Changes(chains=[ChainRecord(b, 1, 4, h, 3)]))
    st.close()
    with sqlite3.connect(db) as c:
        c.execute("DROP TABLE chain_conflicts")

    def reopened() -> tuple[Store, list[tuple[int, int, int]]]:
        s = Store.open(db, PW, durable=False)
        return s, [(r.publisher, r.next_seq, r.conflict) for r in s.load_chains()]

    def rows() -> list[tuple[bytes, int, int]]:
        with sqlite3.connect(db) as c:
            return [tuple(r) for r in c.execute("SELECT branch, publisher, seq FROM chain_conflicts")]

    st, chains = reopened()
    assert chains == [(1, 4, 0)]
    st.commit(Changes(chains=[ChainRecord(b, 1, 4, h, 3, 6)]))  # the author's ACK at 6: learnt
    st.close()
    assert rows() == [(b, 1, 6)]
    st, chains = reopened()
    assert chains == [(1, 4, 6)]
    st.commit(Changes(chains=[ChainRecord(b, 0, 9, h, 9)]))  # another chain moves: the row stays
    st.close()
    assert rows() == [(b, 1, 6)]
    st, _ = reopened()
    st.commit(Changes(chains=[ChainRecord(b, 1, 7, h, 6)]))  # restarted at an anchored head through 6: lifted
    st.close()
    assert rows() == []
    st, chains = reopened()
    assert sorted(chains) == [(0, 9, 0), (1, 7, 0)]
    st.close()
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO chain_conflicts VALUES (?, 1, ?)", (b, "six"))
    st = Store.open(db, PW, durable=False)
    try:
        with pytest.raises(StorageError, match=r"chain_conflicts .* is damaged"):
            st.load_chains()
    finally:
        st.close()


async def test_write_given_back_lifts_the_stop_for_good(tmp_path: Path) -> None:
    """A re-key that gives back a write permission taken away continues our chain from the head its GRANT names
    (SPEC 11): the author's copy, so publishing there forks nothing.  That lifts a stop kept from an earlier run,
    in the store too: the run after publishes on."""
    from streams.wire import Permission

    hub, author, branch = await _restored(tmp_path)
    s = await _sub(tmp_path, hub)
    await _first(s, ChainConflict, 10)
    await s.close()
    await author.set_permission(branch, Permission.READ)  # epoch 1
    await author.set_permission(branch, Permission.READ_WRITE)  # epoch 2, naming our chain's head: 6
    s = await _sub(tmp_path, hub)  # catches up with both grants
    try:
        await wait_for(lambda: [b.epoch for b in s.branches() if b.id == branch] == [2], what="epoch 2")
    finally:
        await s.close()
    s = await _sub(tmp_path, hub)
    try:
        assert await s.publish(branch, b"after the author's copy") == 7
        await s.wait_acknowledged(branch, 7, timeout=5)
        assert author.forks() == []
    finally:
        await s.close()


async def test_a_wait_for_an_ack_the_author_will_never_send_says_chain_conflict(tmp_path: Path) -> None:
    """A member restored from a stale copy publishes and waits for the author's ACK: the author records the fork
    and acknowledges again, which shows our chain conflicts with its copy.  The wait used to raise a plain
    LocalProtocolError, the type a write permission taken away raises there too, so a caller (`streams publish`)
    could not tell the two apart and reported a conflict as a lost permission; it raises ChainConflictError (a
    LocalProtocolError) now, and so does the next publish."""
    from streams.errors import ChainConflictError

    hub = MemoryHub()
    author = await Author.create(tmp_path / "a.db", AUTHOR, "x", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                                 store_options=FAST)
    try:
        sub = await Subscriber.create(tmp_path / "s.db", P1, AUTHOR.did, author.channel, PW,
                                      hub.subscriber_endpoint("s"), store_options=FAST)
        branch = await sub.subscribe()
        await sub.wait_acknowledged(branch, await sub.publish(branch, b"1"), timeout=10)
        await sub.close()
        backup(tmp_path / "s.db", tmp_path / "stale.db")
        sub = await Subscriber.open(tmp_path / "s.db", PW, hub.subscriber_endpoint("s"), store_options=FAST)
        for p in (b"2", b"3"):
            await sub.wait_acknowledged(branch, await sub.publish(branch, p), timeout=10)
        await sub.close()
        stale = await Subscriber.open(tmp_path / "stale.db", PW, hub.subscriber_endpoint("s"), store_options=FAST)
        try:
            seq = await stale.publish(branch, b"2, again")
            with pytest.raises(ChainConflictError, match="conflicts with the author's copy"):
                await stale.wait_acknowledged(branch, seq, timeout=10)
            with pytest.raises(ChainConflictError):
                await stale.publish(branch, b"3, again")
        finally:
            await stale.close()
    finally:
        await author.close()


def _acks_of_our_chain(hub: MemoryHub, branch: bytes) -> dict[int, bytes]:
    """The author's ACKs of P1's chain a tap recorded on the way to P1: seq -> the frame's bytes."""
    from streams.errors import DecodeError
    from streams.wire import Ack, decode_frame

    out: dict[int, bytes] = {}
    for src, _dst, data in hub.tap:
        if src != "author":
            continue
        try:
            f = decode_frame(data)
        except DecodeError:
            continue
        if isinstance(f.head, Ack) and f.head.branch == branch and f.head.publisher == 1 and f.head.acker == 0:
            out[f.head.seq] = data
    return out


async def _restored_with_a_tap(tmp: Path, ledger: EmbeddedLedger | None = None
                               ) -> tuple[MemoryHub, Author, bytes, dict[int, bytes]]:
    """As :func:`_restored`, but P1 publishes one message at a time, each acknowledged: the author signs an ACK of
    each seq, which a tap records (returned: seq -> frame).  With ``ledger``, P1's chain is anchored through 6."""
    hub = MemoryHub()
    author = await Author.create(tmp / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST, ledger=ledger, anchor_config=CFG)
    author.heartbeat_ms = 50
    s = await Subscriber.create(tmp / "p1.db", P1, AUTHOR.did, author.channel, PW, hub.subscriber_endpoint("p1"),
                                store_options=FAST)
    branch = await s.subscribe(timeout=5)
    for i in range(3):
        await s.wait_acknowledged(branch, await s.publish(branch, b"before the copy %d" % i), timeout=5)
    await s.close()
    backup(tmp / "p1.db", tmp / "old.db")
    s = await _sub(tmp, hub)
    for i in range(3):
        await s.wait_acknowledged(branch, await s.publish(branch, b"after the copy %d" % i), timeout=5)
    if ledger is not None:
        await wait_for(lambda: author.anchoring is not None and author.anchoring.pending == 0
                       and getattr(author.anchoring.anchored_head(branch, 1), "seq", 0) == 6, what="P1's 6 anchored")
    await s.close()
    recorded = _acks_of_our_chain(hub, branch)
    assert {4, 5, 6} <= set(recorded)
    for suffix in ("", "-frames"):
        shutil.copyfile(tmp / f"old.db{suffix}", tmp / f"p1.db{suffix}")
    for suffix in ("-wal", "-shm"):
        (tmp / f"p1.db{suffix}").unlink(missing_ok=True)
    return hub, author, branch, recorded


async def _verdict_on_the_replay(s: Subscriber) -> None:
    """Wait until P1 has judged the replayed ACK of seq 4: a conflict (the bug), or the author's word that it
    holds seq 4 -- its copy, which our chain now builds on."""
    async def scan() -> None:
        async for ev in s.events():
            if isinstance(ev, ChainConflict) or (isinstance(ev, Acknowledged) and ev.through_seq == 4):
                return
        raise AssertionError("events ended")

    await asyncio.wait_for(scan(), 10)
async def test_a_replayed_old_ack_does_not_stop_a_member_whose_stop_was_lifted(tmp_path: Path) -> None:
    """A tap records the author's ACKs of P1's chain, one per message (P1 publishes one at a time).  P1 is restored
    from an older copy and signs two forks before the author's ACK stops it; the author takes the write permission
    away and gives it back, which restarts P1's chain at the author's copy and lifts the stop for good.  The tap
    then replays the author's old ACK of seq 4 -- the author's message there, not P1's fork, which P1's log still
    holds.  That ACK says nothing about P1's chain as it is now (it starts at the author's copy), so it must not
    stop P1 again: it used to, and, the stop being kept in the store, for good -- no lift could come, as P1's chain
    cannot move past the author's copy while it is stopped."""
    from streams.wire import Permission

    hub, author, branch, recorded = await _restored_with_a_tap(tmp_path)
    s = await _sub(tmp_path, hub)
    assert await s.publish_many(branch, [b"fork 4", b"fork 5"]) == [4, 5]  # before the author's ACK came
    await _first(s, ChainConflict, 10)
    await s.close()
    await author.set_permission(branch, Permission.READ)
    await author.set_permission(branch, Permission.READ_WRITE)  # names P1's chain through 6: the author's copy
    s = await _sub(tmp_path, hub)
    try:
        await wait_for(lambda: [b.epoch for b in s.branches() if b.id == branch] == [2], what="epoch 2")
        assert s.store.log_range(branch, 1, 1, 6) == []  # the stale store's rows, forks among them, are gone
    finally:
        await s.close()
    await author.close()

    # The next run, the author away: the tap replays the author's ACK of seq 4 to P1.
    hub = MemoryHub()
    s = await _sub(tmp_path, hub)
    try:
        hub.inject("p1", recorded[4], "tap")
        await _verdict_on_the_replay(s)
        assert await s.publish(branch, b"after the author's copy") == 7  # stored, sent when the author is heard
    finally:
        await s.close()
    author = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                               store_options=FAST)
    author.heartbeat_ms = 50
    s = await _sub(tmp_path, hub)
    try:
        await s.wait_acknowledged(branch, 7, timeout=5)
        assert await s.publish(branch, b"and on") == 8
        await s.wait_acknowledged(branch, 8, timeout=5)
        assert sorted(f.seq for f in author.forks()) == [4, 5]  # the restored run's two, nothing since
    finally:
        await s.close()
        await author.close()


def test_an_old_ack_below_the_anchored_head_our_chain_restarted_at_does_not_stop_it_again() -> None:
    """A stop lifted by an anchor proof restarts our chain at the author's copy (SPEC 13.5); our log keeps what the
    restored store signed below it, which may differ from the author's messages there.  An ACK of the author's at
    such a seq -- an old one, replayed by the network (ACKs carry no epoch) -- is about the author's copy, which
    our chain now builds on: it must not stop our chain again (it used to, durably: the store keeps the stop, and
    no proof beyond our head can come while we cannot publish)."""
    from streams.anchor import ChainHead, build_epoch
    from streams.core import FILL_RETRIES, AnchorClaim, SubscriberCore
    from streams.wire import Ack, encode_frame
    from tests.corenet import Net, ident

    net = Net.make(n_subs=1)
    net.subscribe("s0")
    sub: SubscriberCore = net.subs["s0"]
    b = sub.branch_ids()[0]
    for payload in (b"one", b"two", b"three"):  # signed by a store restored from an older copy: forks
        sub.publish(b, payload, net.now)
    sub.data_to_send()  # (the log rows stay in the core's changes: what _logged_hash reads without a store)

    def ack(seq: int) -> bytes:  # the author's ACK of its own copy of our chain at seq
        return encode_frame(Ack(net.author.channel, b, 1, seq, bytes([seq]) * 32, 0), b"", ident(1).sign).raw

    old_ack_of_2 = ack(2)  # recorded by a tap, long ago
    sub.receive(ack(5), net.now)
    assert sub.chain_conflict(b) == 5
    head = ChainHead(b, 1, 5, bytes([5]) * 32, bytes(32))
    epoch = build_epoch(net.author.channel, [head], None, net.now, ident(1).sign)
    claim = AnchorClaim(head, 0, epoch.proofs[(b, 1)], epoch.checkpoint, "5", False)
    restart = sub.apply_anchor(claim, False)
    for _ in range(FILL_RETRIES + 1):  # our messages 4..5, asked back from the author, which never answers here
        net.now += sub.config.fetch_retry_ms
        restart += sub.handle_timer(net.now)
    assert [e.restored for e in restart if isinstance(e, Anchored)] == [True]
    assert sub.chain_conflict(b) == 0
    events = sub.receive(old_ack_of_2, net.now)
    assert not [e for e in events if isinstance(e, ChainConflict)]
    assert sub.chain_conflict(b) == 0
    assert sub.publish(b, b"after the author's copy", net.now) == 6


async def test_an_honest_member_given_write_back_keeps_its_log(tmp_path: Path) -> None:
    """The other side of the drop above: a member whose log holds the author's head that the GRANT giving write
    back names (no stale copy) keeps every row of its chain, and goes on from there."""
    from streams.wire import Permission

    hub = MemoryHub()
    author = await Author.create(tmp_path / "author.db", AUTHOR, "fraud-monitor", PW, hub.author_endpoint(),
                                 AllowList.of([P1.did]), store_options=FAST)
    author.heartbeat_ms = 50
    s = await Subscriber.create(tmp_path / "p1.db", P1, AUTHOR.did, author.channel, PW,
                                hub.subscriber_endpoint("p1"), store_options=FAST)
    try:
        branch = await s.subscribe(timeout=5)
        await s.publish_many(branch, [b"one", b"two", b"three"])
        await s.wait_acknowledged(branch, 3, timeout=5)
        await author.set_permission(branch, Permission.READ)
        await author.set_permission(branch, Permission.READ_WRITE)
        await wait_for(lambda: [b.epoch for b in s.branches() if b.id == branch] == [2], what="epoch 2")
        assert len(s.store.log_range(branch, 1, 1, 3)) == 3
        assert await s.publish(branch, b"four") == 4
        await s.wait_acknowledged(branch, 4, timeout=5)
        assert author.forks() == []
    finally:
        await s.close()
        await author.close()


async def test_a_replayed_old_ack_does_not_stop_a_member_an_anchor_proof_restarted(tmp_path: Path) -> None:
    """The same replay after the other lift: P1, restored from an older copy, signs a fork at 4 and is stopped;
    in its next run the author's anchor proof of its chain through 6 restarts the chain there.  The tap's old ACK
    of seq 4 (the author's message, not P1's fork, which P1's log keeps below the anchored head) must not stop P1
    again -- it used to, durably and for good."""
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    hub, author, branch, recorded = await _restored_with_a_tap(tmp_path, ledger)
    await author.close()

    async def author_on(hub: MemoryHub, with_ledger: bool) -> Author:
        a = await Author.open(tmp_path / "author.db", PW, hub.author_endpoint(), AllowList.of([P1.did]),
                              store_options=FAST, ledger=ledger if with_ledger else None, anchor_config=CFG)
        a.heartbeat_ms = 50
        return a

    try:
        hub = MemoryHub()  # run 1, the author without its ledger: a fork, then the stop
        author = await author_on(hub, False)
        s = await _sub(tmp_path, hub)
        assert await s.publish(branch, b"fork 4") == 4
        await _first(s, ChainConflict, 10)
        await s.close()
        await author.close()
        hub = MemoryHub()  # run 2, with the ledger: the proof through 6 lifts it
        author = await author_on(hub, True)
        s = await _sub(tmp_path, hub)
        ev = await _first(s, Anchored, 10)
        assert isinstance(ev, Anchored) and (ev.seq, ev.restored) == (6, True)
        await s.close()
        await author.close()
        hub = MemoryHub()  # run 3, the author away: the tap replays its old ACK of seq 4
        s = await _sub(tmp_path, hub)
        hub.inject("p1", recorded[4], "tap")
        await _verdict_on_the_replay(s)
        assert await s.publish(branch, b"after the author's copy") == 7
        await s.close()
        hub = MemoryHub()  # run 4: the author acknowledges it, no fork since the one at 4
        author = await author_on(hub, False)
        s = await _sub(tmp_path, hub)
        await s.wait_acknowledged(branch, 7, timeout=5)
        assert sorted(f.seq for f in author.forks()) == [4]
        await s.close()
        await author.close()
    finally:
        ledger.close()


async def test_the_audit_of_a_store_that_keeps_a_conflict_stop_reports_it(tmp_path: Path) -> None:
    """A member store that keeps a ChainConflict stop (the author's signed ACK showed its own chain to conflict
    with the author's copy) is a store its party must not publish from; ``streams audit`` read every table but
    ``chain_conflicts`` and passed it as clean.  It now fails the audit with an error at that chain."""
    from streams.audit import audit_store

    hub, author, branch = await _restored(tmp_path)
    try:
        s = await _sub(tmp_path, hub)
        await _first(s, ChainConflict, 10)
        await s.close()
    finally:
        await author.close()
    report = audit_store(tmp_path / "p1.db", PW, None)
    found = [f for f in report.findings if "ChainConflict" in f.reason]
    assert [(f.severity, f.branch, f.publisher, f.seq) for f in found] == [("error", branch.hex(), 1, 6)], \
        report.summary()
    assert not report.ok
    assert "conflict" in report.summary().lower()


async def test_status_and_audit_show_no_stop_once_the_write_it_stopped_is_taken_away(tmp_path: Path) -> None:
    """A stop on our chain is a stop on publishing there.  Once the author takes our write permission away, the
    chain is no longer ours to publish (its row stays in the store, the core drops it), and a grant that gives
    write back restarts it at the author's copy, lifting the stop (test_write_given_back_lifts_the_stop_for_good).
    ``streams status`` still said CONFLICT ("do not publish from it") from the old row, and an audit failed on it."""
    from streams._cli.channel import _status_text, status_doc
    from streams.audit import audit_store
    from streams.store import Store
    from streams.wire import Permission

    hub, author, branch = await _restored(tmp_path)
    try:
        s = await _sub(tmp_path, hub)
        await _first(s, ChainConflict, 10)
        await s.close()
        await author.set_permission(branch, Permission.READ)  # epoch 1: our write taken away
        s = await _sub(tmp_path, hub)  # applies it
        try:
            await wait_for(lambda: [b.epoch for b in s.branches() if b.id == branch] == [1], what="epoch 1")
        finally:
            await s.close()
    finally:
        await author.close()
    store = Store.open(tmp_path / "p1.db", PW, durable=False)
    try:
        doc = status_doc(store)
    finally:
        store.close()
    [b] = [b for b in doc["branches"] if b["branch"] == branch.hex()]
    assert b["permission"] == "read"
    assert [c["conflict"] for c in b["chains"]] == [0] * len(b["chains"]), b["chains"]
    assert "CONFLICT" not in _status_text(doc)
    report = audit_store(tmp_path / "p1.db", PW, None)
    assert not [f for f in report.findings if "ChainConflict" in f.reason], report.summary()
