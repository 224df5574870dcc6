"""Third review of the subscription handshake's admission changes (SPEC 8.3, 9.2): each test attacks one of them
-- the handshake's never-backward clock, the order of the policy and the used-nonce record, the subscriber's
handling of a REFUSE while another SUBSCRIBE of the attempt is unanswered.  Two cores wired without sockets
(``tests.corenet``), or real SQLite stores with the in-memory transport."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.api import Author, MemoryHub, StoreOptions, Subscriber
from streams.core import CoreConfig
from streams.events import Refused, SubscriberAdmitted, SubscriberRefused
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import Kind, decode_frame
from tests.corenet import Net
from tests.test_admission_r2 import member, nonce_rows, until_no_nonce_rows

FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)
PW = "pw"


def test_a_clock_once_far_ahead_does_not_stop_used_nonces_from_expiring_for_the_run() -> None:
    """The handshake's clock was the latest reading the driver gave.  One reading far ahead (a bad NTP step
    forward, a machine booting with its clock in the future, then corrected) froze it there for the run: every
    challenge issued after the correction expired only when the wall clock reached that reading, so no used nonce
    was dropped any more -- once ``max_nonces`` subscriptions had been made (anyone's, with an open policy, or a
    member's re-subscriptions over days) every SUBSCRIBE was refused BAD_CHALLENGE until a restart, and a
    challenge stayed answerable for as long.  The handshake's clock now advances by what the driver's clock
    advances, and never goes back: challenges live ``challenge_ttl_ms`` of it, whatever it read once."""
    net = Net.make(n_subs=4, config=CoreConfig(max_nonces=2))
    ttl = net.author.config.challenge_ttl_ms
    real = net.now
    net.now = real + 10 * 365 * 86_400_000  # ten years ahead, once
    net.subscribe("s0")
    net.now = real  # corrected
    for name in ("s1", "s2", "s3"):
        net.now += ttl + 1  # every earlier challenge expired
        events = net.subscribe(name)
        assert not [e for e in events if isinstance(e, Refused)], events
        assert net.author.branch_of(net.subs[name].identity.did) is not None, events
    assert [e.did for e in net.events["author"] if isinstance(e, SubscriberAdmitted)] == \
        [net.subs[n].identity.did for n in ("s0", "s1", "s2", "s3")]
    # Nothing revived either: s0's SUBSCRIBE, answering the challenge issued ten years ahead, copied now.
    (copy,) = [d for who, d in net.wire if who == "s0" and decode_frame(d).kind is Kind.SUBSCRIBE]
    got = net.author.receive(copy, net.now, "s0")
    assert not [e for e in got if isinstance(e, SubscriberAdmitted)], got
    assert [e.reason for e in got if isinstance(e, SubscriberRefused)] == \
        ["challenge forged, expired or already used"], got


async def test_the_used_nonce_rows_written_after_a_clock_far_ahead_are_pruned(tmp_path: Path) -> None:
    """The author's timer deleted the store's used-nonce rows expired by the wall clock, but a row's expiry is
    the handshake's clock (SPEC 8.3), which never goes back: after one reading far ahead, then corrected, every
    subscription of the run wrote a row that expired only when the wall clock got there -- the file grew by a row
    per subscription again, and such rows outlived the run (never read; nothing deleted them for years).  They
    are now pruned against the handshake's clock, with the rows no challenge of this run can have written (an
    expiry beyond its clock plus ``challenge_ttl_ms``)."""
    clock = [1_700_000_000_000]
    real = clock[0]
    hub = MemoryHub()
    a, b = Identity.generate(), Identity.generate()
    a_path = tmp_path / "author.db"
    author = await Author.create(a_path, Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([a.did, b.did]), store_options=FAST, clock=lambda: clock[0])
    sa = await member(tmp_path, hub, author, a, "a")
    sb = await member(tmp_path, hub, author, b, "b")

    try:
        clock[0] = real + 10 * 365 * 86_400_000  # ten years ahead, once
        await sa.subscribe(timeout=10)
        clock[0] = real  # corrected
        await sb.subscribe(timeout=10)
        assert nonce_rows(a_path) == 2
        clock[0] += author._core.config.challenge_ttl_ms + 1  # both challenges expired
        await until_no_nonce_rows(a_path)  # (the author's timer)
        assert nonce_rows(a_path) == 0
    finally:
        await sb.close()
        await sa.close()
        await author.close()


async def test_subscribe_with_a_timeout_that_is_not_a_number_is_refused_at_once(tmp_path: Path) -> None:
    """``subscribe`` refused a ``retry`` that is no positive number (2e827fc) but took any ``timeout``: NaN (a
    computed timeout gone wrong) compared false with everything, so the deadline never came -- against an author
    that does not answer, the call said HELLO every ``retry`` seconds for good instead of timing out.  A clear
    local error now, before anything is sent."""
    from streams.errors import LocalProtocolError

    hub = MemoryHub()
    b = Identity.generate()
    author = await Author.create(tmp_path / "author.db", Identity.generate(), "c", PW, hub.author_endpoint(),
                                 AllowList.of([b.did]), store_options=FAST)
    did, channel = author.did, author.channel
    await author.close()  # nobody answers
    sb = await Subscriber.create(tmp_path / "b.db", b, did, channel, PW, hub.subscriber_endpoint("b"),
                                 store_options=FAST)
    try:
        sent = len(hub.tap)
        with pytest.raises(LocalProtocolError, match="timeout"):
            await asyncio.wait_for(sb.subscribe(timeout=float("nan"), retry=0.05), 10)
        assert not [d for src, _, d in hub.tap[sent:] if src == "b"]
    finally:
        await sb.close()
