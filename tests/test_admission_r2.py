"""Second review of the bounded used-nonce table (``CoreConfig.max_nonces``, SPEC 9.2) and of the paced
re-asking of ``Subscriber.subscribe`` after BAD_CHALLENGE: each test attacks one way the table and its expiry heap
could stop doing their job -- refusing a replayed SUBSCRIBE, and admitting members.  Real SQLite stores with the
in-memory transport, or two cores wired without sockets (``tests.corenet``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.core import CoreConfig
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Kind, decode_frame

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "pw"


async def member(tmp_path: Path, hub: MemoryHub, author: Author, identity: Identity, name: str) -> Subscriber:
    """A new member store ``<name>.db`` of ``author``'s channel, on ``hub`` as peer ``name`` (not subscribed)."""
    return await Subscriber.create(tmp_path / f"{name}.db", identity, author.did, author.channel, PW,
                                   hub.subscriber_endpoint(name), store_options=FAST)


def nonce_rows(path: Path) -> int:
    """The rows of the store's ``nonces`` table (read with another connection, as an observer of the file)."""
    with sqlite3.connect(path) as c:
        (n,) = c.execute("SELECT COUNT(*) FROM nonces").fetchone()
    c.close()
    return int(n)


async def until_no_nonce_rows(path: Path) -> None:
    """Wait until the author's timer deleted every row of the store's ``nonces`` table, with a generous bound
    (the caller asserts it)."""
    import asyncio

    for _ in range(2000):
        if nonce_rows(path) == 0:
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("tampered", [False, True])
async def test_the_nonces_of_the_run_before_a_restart_do_not_fill_the_bound(tmp_path: Path,
                                                                             tampered: bool) -> None:
    """The used nonces read back from the store at an open can never be used again -- a challenge of an earlier
    run fails its MAC (SPEC 8.3) -- yet they were put in the bounded table: an author restarted within the
    challenges' lifetime refused every newcomer BAD_CHALLENGE until they expired (benign: a busy author's
    restart), and rows written with a far expiry by whoever can write the store file (THREATS "Parties": a store
    is untrusted, no passphrase needed) refused every subscription of every run for good."""
    hub = MemoryHub()
    a, b = Identity.generate(), Identity.generate()
    a_path = tmp_path / "author.db"
    policy = AllowList.of([a.did, b.did])
    config = CoreConfig(max_nonces=1)
    author = await Author.create(a_path, Identity.generate(), "c", PW, hub.author_endpoint(), policy,
                                 store_options=FAST, config=config)
    sa = await member(tmp_path, hub, author, a, "a")
    sb = await member(tmp_path, hub, author, b, "b")
    try:
        await sa.subscribe(timeout=10)
        await author.close()
        with sqlite3.connect(a_path) as c:
            assert c.execute("SELECT COUNT(*) FROM nonces").fetchone() == (1,)  # a's, unexpired
            if tampered:  # the attacker: a row that never expires, in place of a's
                c.execute("UPDATE nonces SET expires_ms = ?", (1 << 62,))
        c.close()
        author = await Author.open(a_path, PW, hub.author_endpoint(), policy, store_options=FAST, config=config)
        # b is admitted at once -- not refused until a's nonce of the earlier run expires (60 s), or never.
        branch = await sb.subscribe(timeout=5)
        assert branch == author._core.branch_of(b.did)
    finally:
        await sb.close()
        await sa.close()
        await author.close()


def test_a_subscribe_replayed_after_the_clock_stepped_back_is_refused() -> None:
    """The core takes its time from its driver, and the asyncio driver's clock is wall-clock time, which steps
    back (NTP).  Used nonces are now dropped as soon as they expire: a copied SUBSCRIBE whose nonce was dropped
    was admitted again once the clock stepped back into its challenge's lifetime -- re-opening a branch for a
    member that had left (THREATS 5, 6).  (Before the heap, nonces stayed until the table filled.)"""
    from streams.errors import RejectReason
    from streams.events import BranchClosed, Refused, SubscriberAdmitted, SubscriberRefused
    from tests.corenet import Net

    net = Net.make(n_subs=2)
    s0 = net.subs["s0"]
    t0 = net.now
    net.subscribe("s0")
    (copy,) = [d for who, d in net.wire if who == "s0" and decode_frame(d).kind is Kind.SUBSCRIBE]
    (branch,) = [e.branch for e in net.events["author"] if isinstance(e, SubscriberAdmitted)]
    s0.unsubscribe(branch)  # the member leaves
    net.pump_sub("s0")
    assert any(isinstance(e, BranchClosed) for e in net.events["author"])
    assert net.author.branch_of(s0.identity.did) is None
    net.now = t0 + net.author.config.challenge_ttl_ms + 1
    net.subscribe("s1")  # (any SUBSCRIBE: the expired nonces are dropped)
    net.now = t0 + net.author.config.challenge_ttl_ms - 2000  # the wall clock steps back 2 s
    got = net.author.receive(copy, net.now, "attacker")  # a relay that kept the copy
    net.author.take_changes()
    net.author.data_to_send()
    assert not any(isinstance(e, SubscriberAdmitted) for e in got), got
    assert net.author.branch_of(s0.identity.did) is None
    assert [e for e in got if isinstance(e, SubscriberRefused)], got
    # A subscription asked for now, in the stepped-back time, is still admitted.
    net.now += 10
    events = net.subscribe("s0")
    assert net.author.branch_of(s0.identity.did) is not None, events
    assert not any(isinstance(e, Refused) and e.reason is not RejectReason.BAD_CHALLENGE for e in events)


def test_throwaway_dids_the_policy_refuses_cannot_fill_the_nonce_table_against_members() -> None:
    """Anyone who makes key pairs answers challenges with valid proofs of control; the policy refuses them, but
    each refusal kept its nonce in the bounded table: enough of them within the challenges' lifetime and every
    member -- a newcomer on the allow-list, or one subscribing again -- was refused BAD_CHALLENGE until they
    expired, and again as long as the flood went on.  Requests the policy refuses now hold at most half the table;
    beyond, their nonce is not kept (a replay of one gets the policy's verdict again)."""
    from streams.events import SubscriberAdmitted, SubscriberRefused
    from tests.corenet import Net, ident

    net = Net.make(n_subs=2, config=CoreConfig(max_nonces=6))  # half of it for the requests refused: 3
    net.author.policy = AllowList.of([net.subs["s0"].identity.did, net.subs["s1"].identity.did])
    net.subscribe("s0")
    for i in range(8):  # the flood: 8 throwaway DIDs, each refused by the policy
        net.add_sub(f"x{i}", ident(100 + i))
        net.subscribe(f"x{i}")
    refused = [e for e in net.events["author"] if isinstance(e, SubscriberRefused) and e.did]
    assert len(refused) == 8, refused  # (the policy's verdict on every one: none refused for the bound)
    assert len(net.author._used_nonces) == 4  # s0's, and 3 of the refused
    # A member subscribing again, and a newcomer on the allow-list: admitted, within the same lifetime.
    for name in ("s0", "s1"):
        net.now += 1
        start = len(net.events["author"])
        net.subscribe(name)
        assert any(isinstance(e, SubscriberAdmitted) and e.did == net.subs[name].identity.did
                   for e in net.events["author"][start:]), net.events["author"][start:]
    # A refused request whose nonce was kept is still refused as used when replayed.
    (copy,) = [d for who, d in net.wire if who == "x0" and decode_frame(d).kind is Kind.SUBSCRIBE]
    got = net.author.receive(copy, net.now, "x0")
    assert [e.reason for e in got if isinstance(e, SubscriberRefused)] == \
        ["challenge forged, expired or already used"], got


@pytest.mark.parametrize("retry", [0.0, -1.0, float("nan")])
async def test_subscribe_with_a_retry_that_is_no_positive_number_is_refused_at_once(tmp_path: Path,
                                                                                    retry: float) -> None:
    """``retry`` paces the HELLOs -- after silence, and (doubling from 50 ms, up to it) after BAD_CHALLENGE
    refusals.  ``retry=0`` made both paces nothing: against an author refusing for a while (its used-nonce table
    full) the subscriber said HELLO some thousand times a second until its timeout, each answered with the
    handshake's crypto and drawing on the author's budget that every newcomer shares (THREATS 8).  A clear local
    error now, before anything is sent."""
    from streams.errors import LocalProtocolError

    hub = MemoryHub()
    a, b = Identity.generate(), Identity.generate()
    author = await Author.create(tmp_path / "author.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([a.did, b.did]), store_options=FAST, config=CoreConfig(max_nonces=1))
    sa = await member(tmp_path, hub, author, a, "a")
    sb = await member(tmp_path, hub, author, b, "b")
    try:
        await sa.subscribe(timeout=10)  # the table is full for b for the challenge's lifetime
        sent = len(hub.tap)
        with pytest.raises(LocalProtocolError, match="retry"):
            await sb.subscribe(timeout=1, retry=retry)
        assert not [d for src, _, d in hub.tap[sent:] if src == "b"]
        # (and the party is still usable)
        assert sb._core.state.value in ("idle", "refused")
    finally:
        await sb.close()
        await sa.close()
        await author.close()


def test_the_admission_of_one_subscribe_after_the_refusal_of_an_earlier_one_of_the_attempt_ends_the_handshake(
        ) -> None:
    """A HELLO said again after silence leaves two SUBSCRIBEs of one attempt outstanding.  The first can come back
    refused BAD_CHALLENGE (its challenge expired on the way, or the used-nonce table was full when it came) while
    the second is admitted.  The refusal moved the subscriber to REFUSED, where the second's GRANT was applied
    but its ADMIT dropped as unexpected: no Subscribed, so ``Subscriber.subscribe`` -- pausing before it asks
    again (50 ms doubling, up to ``retry``) -- missed the admission it waits for during the pause and asked again,
    using one more nonce, and failed (timeout) against an author refusing for a while although it was admitted."""
    from streams.errors import RejectReason
    from streams.events import Refused, Rejected, Subscribed
    from tests.corenet import Net

    net = Net.make(n_subs=1)
    s, a = net.subs["s0"], net.author
    ttl = a.config.challenge_ttl_ms

    def to_author(data: bytes) -> list[bytes]:
        a.receive(data, net.now, "s0")
        a.take_changes()
        return [o.data for o in a.data_to_send()]

    def to_sub(data: bytes) -> list[object]:
        ev: list[object] = list(s.receive(data, net.now))
        s.take_changes()
        return ev

    def handshake(retry: bool) -> bytes:
        s.hello(retry=retry)
        (hello,) = [o.data for o in s.data_to_send()]
        for reply in to_author(hello):
            to_sub(reply)
        (request,) = [o.data for o in s.data_to_send()]
        assert decode_frame(request).kind is Kind.SUBSCRIBE
        return request

    first = handshake(retry=False)
    net.now += ttl // 2
    second = handshake(retry=True)  # (no answer came: the HELLO said again)
    net.now += ttl // 2 + 1  # the first challenge expired on the way, the second not
    events: list[object] = []
    for d in to_author(first) + to_author(second):  # REFUSE (first); GRANT, ADMIT (second)
        events += to_sub(d)
    assert [e.reason for e in events if isinstance(e, Refused)] == [RejectReason.BAD_CHALLENGE], events
    assert not [e for e in events if isinstance(e, Rejected)], events
    (done,) = [e for e in events if isinstance(e, Subscribed)]
    assert done.branch == a.branch_of(s.identity.did)


def test_the_fuzz_harness_sees_a_change_of_the_nonce_expiry_heap_alone() -> None:
    """The fuzz harness checks that a rejected frame leaves the core's state alone; it read the used-nonce table
    but not the expiry heap beside it (4f19378), so a rejected frame that left an entry in the heap only -- the
    two disagreeing -- went unseen."""
    from fuzz.targets import fingerprint
    from tests.corenet import Net

    net = Net.make(n_subs=1)
    before = fingerprint(net.author)
    net.author._nonce_expiry.append((net.now, b"\x00" * 16))  # the heap alone
    assert fingerprint(net.author) != before


async def test_the_used_nonce_rows_of_the_store_are_pruned_once_expired(tmp_path: Path) -> None:
    """Every subscription with a valid proof writes its used nonce to the store's ``nonces`` table (kept for older
    versions of this code); nothing ever deleted a row (``Store.prune_nonces`` had no caller), and this version
    no longer reads them: the file grew by a row per subscription for good -- a flood of throwaway DIDs, up to
    1000 handshakes a second through the ZeroMQ endpoint's global budget, grew it without bound (THREATS 8)."""

    clock = [1_700_000_000_000]
    hub = MemoryHub()
    a = Identity.generate()
    a_path = tmp_path / "author.db"
    author = await Author.create(a_path, Identity.generate(), "c", PW, hub.author_endpoint(), AllowList.of([a.did]),
                                 store_options=FAST, clock=lambda: clock[0])
    sa = await member(tmp_path, hub, author, a, "a")

    try:
        await sa.subscribe(timeout=10)
        assert nonce_rows(a_path) == 1
        clock[0] += author._core.config.challenge_ttl_ms + 1  # a's challenge expired
        await until_no_nonce_rows(a_path)  # (the author's timer)
        assert nonce_rows(a_path) == 0
    finally:
        await sa.close()
        await author.close()
