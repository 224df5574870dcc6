"""Third review of the subscription handshake's admission changes (SPEC 8.3, 9.2): each test attacks one of them
-- the handshake's never-backward clock, the order of the policy and the used-nonce record, the subscriber's
handling of a REFUSE while another SUBSCRIBE of the attempt is unanswered.  Two cores wired without sockets
(``tests.corenet``), or real SQLite stores with the in-memory transport."""

from __future__ import annotations

from streams.core import CoreConfig
from streams.events import Refused, SubscriberAdmitted, SubscriberRefused
from streams.wire import Kind, decode_frame
from tests.corenet import Net


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
