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

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "pw"


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
    sa = await Subscriber.create(tmp_path / "a.db", a, author.did, author.channel, PW, hub.subscriber_endpoint("a"),
                                 store_options=FAST)
    sb = await Subscriber.create(tmp_path / "b.db", b, author.did, author.channel, PW, hub.subscriber_endpoint("b"),
                                 store_options=FAST)
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
    from streams.wire import Kind, decode_frame
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
