"""Two (or more) protocol cores wired together without sockets, and the attacks each THREATS property names."""

from __future__ import annotations

import dataclasses

import pytest

from streams._state import BranchState
from streams.core import AuthorCore, SubscriberCore
from streams.errors import ClosedResourceError, LocalProtocolError, RejectReason
from streams.events import (
    Announced,
    BranchClosed,
    Covered,
    GapDetected,
    Granted,
    MessageReceived,
    Refused,
    Rejected,
    Subscribed,
    SubscriberAdmitted,
    SubscriberRefused,
)
from streams.policy import AllowList
from streams.wire import Kind, Permission, SigningMode, decode_frame, encode_frame

from .corenet import Net, ident, seeded_rng


def _granted(events: list[object]) -> Granted:
    gs = [e for e in events if isinstance(e, Granted)]
    assert len(gs) == 1, events
    return gs[0]


def _msgs(events: list[object]) -> list[MessageReceived]:
    return [e for e in events if isinstance(e, MessageReceived)]


def _rejects(events: list[object]) -> list[Rejected]:
    return [e for e in events if isinstance(e, Rejected)]


@pytest.fixture
def net() -> Net:
    n = Net.make()
    for s in ("s0", "s1"):
        n.subscribe(s)
    return n


def branch_of(net: Net, name: str) -> bytes:
    return _granted(net.events[name]).branch


def test_handshake_admits_listed_dids_and_opens_one_branch_each(net: Net) -> None:
    b0, b1 = branch_of(net, "s0"), branch_of(net, "s1")
    assert b0 != b1
    assert any(isinstance(e, Announced) for e in net.events["s0"])
    admitted = [e for e in net.events["author"] if isinstance(e, SubscriberAdmitted)]
    assert {a.did for a in admitted} == {ident(10).did, ident(11).did}
    g = _granted(net.events["s0"])
    assert g.permission is Permission.READ_WRITE
    assert g.members == (ident(1).did, ident(10).did)


def test_round_trip_both_directions(net: Net) -> None:
    b0 = branch_of(net, "s0")
    net.author.publish(b0, b"alert: card 4242 flagged", net.now)
    net.pump_author()
    [m] = _msgs(net.events["s0"])
    assert (m.payload, m.seq, m.signed, m.publisher_did) == (b"alert: card 4242 flagged", 1, True, ident(1).did)
    seq = net.subs["s0"].publish(b0, b"payment 17 EUR", net.now)
    assert seq == 1
    net.pump_sub("s0")
    [m2] = _msgs(net.events["author"])
    assert (m2.payload, m2.publisher, m2.publisher_did) == (b"payment 17 EUR", 1, ident(10).did)


def test_segregation_other_provider_cannot_read_branch(net: Net) -> None:
    """THREATS 1: every frame of s0's branch is broadcast to s1 too; s1 decrypts nothing of it."""
    b0 = branch_of(net, "s0")
    for i in range(5):
        net.author.publish(b0, b"secret-%d" % i, net.now)
    net.pump_author()
    assert len(_msgs(net.events["s0"])) == 5
    assert _msgs(net.events["s1"]) == []
    # s1 also cannot use s0's frames on its own branch: relabelled branch id breaks AEAD/signature.
    b1 = branch_of(net, "s1")
    frames = [d for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.PACKET]
    f = decode_frame(frames[0])
    forged = encode_frame(dataclasses.replace(f.head, branch=b1), f.body, lambda _h: f.sig)
    ev = net.subs["s1"].receive(forged.raw, net.now)
    assert len(_rejects(ev)) == 1 and _msgs(ev) == []
    assert not any(s in repr(net.events["s1"]).encode() for s in [b"secret"])


@pytest.mark.parametrize("field", ["channel", "branch", "publisher", "seq", "prev", "epoch", "nonce"])
def test_every_header_field_is_authenticated(net: Net, field: str) -> None:
    """THREATS 2: changing any header field (re-encoded canonically) is rejected, never accepted."""
    b0 = branch_of(net, "s0")
    net.author.publish(b0, b"hello", net.now)
    out = net.author.data_to_send()
    net.author.take_changes()
    f = decode_frame(out[0].data)
    vals = {x.name: getattr(f.head, x.name) for x in dataclasses.fields(f.head)}
    v = vals[field]
    vals[field] = (bytes([v[0] ^ 1]) + v[1:]) if isinstance(v, bytes) else v + 1
    raw = encode_frame(type(f.head)(**vals), f.body, lambda _h: f.sig).raw
    assert raw != f.raw
    ev = net.subs["s0"].receive(raw, net.now)
    assert _msgs(ev) == []
    assert len(_rejects(ev)) == 1
    # and the genuine frame is still accepted afterwards: state was not changed by the attack
    assert [m.payload for m in _msgs(net.subs["s0"].receive(f.raw, net.now))] == [b"hello"]


def test_ciphertext_and_signature_bitflips_rejected(net: Net) -> None:
    b0 = branch_of(net, "s0")
    net.author.publish(b0, b"x" * 100, net.now)
    [o] = net.author.data_to_send()
    f = decode_frame(o.data)
    for i in range(0, len(f.body), 7):
        body = bytearray(f.body)
        body[i] ^= 0x40
        ev = net.subs["s0"].receive(encode_frame(f.head, bytes(body), lambda _h: f.sig).raw, net.now)
        assert [r.reason for r in _rejects(ev)] in ([RejectReason.BAD_AEAD], [RejectReason.BAD_SIGNATURE])
    sig = bytearray(f.sig)
    sig[5] ^= 1
    ev = net.subs["s0"].receive(encode_frame(f.head, f.body, lambda _h: bytes(sig)).raw, net.now)
    assert [r.reason for r in _rejects(ev)] == [RejectReason.BAD_SIGNATURE]
    # stripping the signature on a signed-each branch is refused too
    ev = net.subs["s0"].receive(encode_frame(f.head, f.body, None).raw, net.now)
    assert [r.reason for r in _rejects(ev)] == [RejectReason.BAD_SIGNATURE]


def test_replay_within_branch_rejected(net: Net) -> None:
    b0 = branch_of(net, "s0")
    net.author.publish(b0, b"one", net.now)
    [o] = net.author.data_to_send()
    assert len(_msgs(net.subs["s0"].receive(o.data, net.now))) == 1
    ev = net.subs["s0"].receive(o.data, net.now)
    assert [r.reason for r in _rejects(ev)] == [RejectReason.REPLAY]


def test_replay_across_branches_and_channels_rejected(net: Net) -> None:
    b0 = branch_of(net, "s0")
    net.author.publish(b0, b"for s0", net.now)
    [o] = net.author.data_to_send()
    # to s1 (other branch): not a member
    ev = net.subs["s1"].receive(o.data, net.now)
    assert [r.reason for r in _rejects(ev)] == [RejectReason.UNKNOWN_BRANCH]
    # to a subscriber of another channel of the same author: foreign channel
    other = AuthorCore(ident(1), "other-channel", AllowList.of([ident(10).did]), rng=seeded_rng(5))
    sub_other = SubscriberCore(ident(10), ident(1).did, other.channel)
    ev = sub_other.receive(o.data, net.now)
    assert [r.reason for r in _rejects(ev)] == [RejectReason.FOREIGN_CHANNEL]


def test_relay_to_another_author_rejected(net: Net) -> None:
    """A subscriber's packet relayed to a different author (same channel name) is foreign there."""
    b0 = branch_of(net, "s0")
    net.subs["s0"].publish(b0, b"payment", net.now)
    [o] = net.subs["s0"].data_to_send()
    evil = AuthorCore(ident(2), "fraud-monitor", AllowList.of([ident(10).did]), rng=seeded_rng(9))
    ev = evil.receive(o.data, net.now, "s0")
    assert [r.reason for r in _rejects(ev)] == [RejectReason.FOREIGN_CHANNEL]
    # and a packet reflected back to its own publisher is refused
    ev = net.subs["s0"].receive(o.data, net.now)
    assert [r.reason for r in _rejects(ev)] == [RejectReason.NOT_MEMBER]


def test_reorder_is_held_then_delivered_in_order_with_gap_reported(net: Net) -> None:
    b0 = branch_of(net, "s0")
    for i in range(1, 5):
        net.author.publish(b0, b"m%d" % i, net.now)
    outs = net.author.data_to_send()
    s = net.subs["s0"]
    ev = s.receive(outs[2].data, net.now) + s.receive(outs[1].data, net.now)
    gaps = [e for e in ev if isinstance(e, GapDetected)]
    assert gaps and gaps[0].expected_seq == 1 and gaps[0].received_seq == 3
    assert _msgs(ev) == []  # held, not accepted
    fetches = [decode_frame(o.data) for o in s.data_to_send()]
    assert fetches and fetches[0].kind is Kind.FETCH and fetches[0].head.from_seq == 1
    ev = s.receive(outs[0].data, net.now) + s.receive(outs[3].data, net.now)
    assert [m.seq for m in _msgs(ev)] == [1, 2, 3, 4]


def test_a_fork_at_a_held_position_is_refused_with_both_frames() -> None:
    """THREATS 7 / SPEC 13.6: two different messages at one position, each signed by the publisher, are a fork,
    whatever order a relay delivers them in.  The second one, arriving while the first waits in the hold buffer (a
    gap before it), is refused FORK with both frames (the driver checks and records the evidence, as for a REPLAY
    that differs from the log); an exact copy of the held frame stays a plain REPLAY, and the held one is kept."""
    from streams import _crypto
    from streams.anchor import check_fork
    from streams.wire import Packet, encode_head

    n = Net.make(n_subs=1)
    n.subscribe("s0")
    b0 = branch_of(n, "s0")
    for i in range(2):
        n.author.publish(b0, b"m%d" % i, n.now)
    n.author.take_changes()
    p1, p2 = (o.data for o in n.author.data_to_send())
    # The publisher (say, restored from a stale copy) signs another message at seq 2.
    f2 = decode_frame(p2)
    key = n.author._branches[b0].keys[(0, 0)]
    h = Packet(f2.head.channel, b0, 0, 2, f2.head.prev, 0, bytes(24))
    body = _crypto.aead_encrypt(key, bytes(24), bytes((1, 7)) + encode_head(h), b"the other m1")
    fork = encode_frame(h, body, ident(1).sign).raw
    s = n.subs["s0"]
    assert _rejects(s.receive(p2, n.now)) == []  # held: 1 is missing
    assert [r.reason for r in _rejects(s.receive(p2, n.now))] == [RejectReason.REPLAY]  # the same frame again
    (rej,) = _rejects(s.receive(fork, n.now))
    assert (rej.reason, rej.seq, rej.frame, rej.held) == (RejectReason.FORK, 2, fork, p2)
    evidence = s.fork_evidence(rej.frame, rej.held)
    assert evidence is not None and check_fork(evidence, ident(1).sign_public)[3] == 2
    # A forgery at the held position is refused as such, with nothing to record.
    forged = bytearray(fork)
    forged[-1] ^= 1
    assert [r.reason for r in _rejects(s.receive(bytes(forged), n.now))] == [RejectReason.BAD_SIGNATURE]
    assert [m.payload for m in _msgs(s.receive(p1, n.now))] == [b"m0", b"m1"]  # the held one is kept


def test_hold_buffer_is_bounded() -> None:
    from streams.core import CoreConfig

    n = Net.make(config=CoreConfig(hold_limit=3))
    n.subscribe("s0")
    b0 = branch_of(n, "s0")
    for i in range(8):
        n.author.publish(b0, b"%d" % i, n.now)
    outs = n.author.data_to_send()
    s = n.subs["s0"]
    s.config = CoreConfig(hold_limit=3)  # type: ignore[misc]
    ev = []
    for o in outs[1:]:
        ev += s.receive(o.data, n.now)
    assert sum(1 for r in _rejects(ev) if r.reason is RejectReason.HOLD_FULL) == 4


def test_unlisted_did_refused(net: Net) -> None:
    stranger = net.add_sub("x", ident(99))
    ev = net.subscribe("x")
    assert [e.reason for e in ev if isinstance(e, Refused)] == [RejectReason.REFUSED]
    assert not [e for e in ev if isinstance(e, Granted)]
    refused = [e for e in net.events["author"] if isinstance(e, SubscriberRefused)]
    assert refused[-1].did == ident(99).did
    assert stranger.branch_ids() == []


def test_replayed_subscription_request_refused(net: Net) -> None:
    """THREATS 5: a recorded SUBSCRIBE (fresh when recorded) replayed later, or to another author, is refused."""
    subs = [d for who, d in net.wire if who == "s0" and decode_frame(d).kind is Kind.SUBSCRIBE]
    assert subs
    before = len(net.author.branch_ids())
    ev = net.author.receive(subs[0], net.now, "attacker")
    assert [r.reason for r in _rejects(ev)] == [RejectReason.BAD_CHALLENGE]
    assert len(net.author.branch_ids()) == before
    # after expiry too
    ev = net.author.receive(subs[0], net.now + 10**9, "attacker")
    assert [r.reason for r in _rejects(ev)] == [RejectReason.BAD_CHALLENGE]
    # to another author: the sealed box does not even open there
    other = AuthorCore(ident(3), "fraud-monitor", AllowList.of([ident(10).did]))
    ev = other.receive(subs[0], net.now, "attacker")
    assert _rejects(ev)
    assert other.branch_ids() == []


def test_expired_challenge_refused() -> None:
    n = Net.make()
    s = n.subs["s0"]
    s.hello()
    [hello] = s.data_to_send()
    n.author.receive(hello.data, n.now, "s0")
    outs = n.author.data_to_send()
    for o in outs:
        s.receive(o.data, n.now)
    [sub] = s.data_to_send()
    ev = n.author.receive(sub.data, n.now + 61_000, "s0")
    assert [r.reason for r in _rejects(ev)] == [RejectReason.BAD_CHALLENGE]


def test_publish_after_revocation(net: Net) -> None:
    b0 = branch_of(net, "s0")
    net.author.publish(b0, b"before", net.now)
    net.pump_author()
    # s0 prepares a packet, then gets revoked; the packet must be refused by the author
    net.subs["s0"].publish(b0, b"late", net.now)
    late = net.subs["s0"].data_to_send()
    net.subs["s0"].take_changes()
    net.author.revoke(b0)
    net.pump_author()
    closed = [e for e in net.events["s0"] if isinstance(e, BranchClosed)]
    assert closed and closed[0].by == "revoke" and closed[0].last_seq == 1
    ev = net.author.receive(late[0].data, net.now, "s0")
    assert [r.reason for r in _rejects(ev)] == [RejectReason.CLOSED_BRANCH]
    with pytest.raises(ClosedResourceError):
        net.author.publish(b0, b"after", net.now)
    with pytest.raises(ClosedResourceError):
        net.subs["s0"].publish(b0, b"after", net.now)


def _author_packet(n: Net, branch: bytes, seq: int, prev: bytes, payload: bytes) -> bytes:
    """A packet of the author's chain at ``seq``, encrypted and signed as the author's (the test holds its keys)."""
    from streams import _crypto
    from streams.wire import Packet, encode_head

    key = n.author._branches[branch].keys[(0, 0)]
    h = Packet(n.author.channel, branch, 0, seq, prev, 0, bytes(24))
    body = _crypto.aead_encrypt(key, bytes(24), bytes((1, 7)) + encode_head(h), payload)
    return encode_frame(h, body, ident(1).sign).raw


def test_a_revoke_that_overtakes_the_tail_reports_and_fetches_it() -> None:
    """THREATS 4 / SPEC 8.8: the author publishes 1..5, then revokes; the REVOKE overtakes 4 and 5 (a relay
    reordered them, or they were dropped).  Its final head (5) says what the member misses: it reports the gap and
    fetches 4..5 -- the author serves a FETCH on a closed branch -- and accepts them on its closed branch, late or
    fetched, but nothing beyond the final head."""
    from streams.events import FetchRequested
    from streams.wire import Fetch

    n = Net.make(n_subs=1)
    n.subscribe("s0")
    b0 = branch_of(n, "s0")
    for i in range(5):
        n.author.publish(b0, b"m%d" % i, n.now)
    n.author.take_changes()
    packets = [o.data for o in n.author.data_to_send()]
    for raw in packets[:3]:
        n.to_sub("s0", raw)
    mark = len(n.events["author"])
    n.author.revoke(b0)
    n.pump_author()  # the REVOKE first; its member's FETCH goes out at once
    ev = n.events["s0"]
    closed = [e for e in ev if isinstance(e, BranchClosed)]
    assert closed and closed[0].last_seq == 5
    gaps = [e for e in ev if isinstance(e, GapDetected)]
    assert [(g.expected_seq, g.received_seq) for g in gaps] == [(4, 6)]
    fetches = [e for e in n.events["author"][mark:] if isinstance(e, FetchRequested)]
    assert [(f.branch, f.from_seq, f.to_seq) for f in fetches] == [(b0, 4, 5)]
    s = n.subs["s0"]
    s.handle_timer(n.now + s.config.fetch_retry_ms)  # no answer came: asked again, as on an open branch
    again = [decode_frame(o.data).head for o in s.data_to_send()]
    assert [(h.from_seq, h.to_seq) for h in again if isinstance(h, Fetch)] == [(4, 5)]
    n.to_sub("s0", packets[4])  # 5, late: held
    n.to_sub("s0", packets[3])  # 4, the driver's answer to the FETCH
    assert [m.seq for m in _msgs(n.events["s0"])] == [1, 2, 3, 4, 5]
    assert n.subs["s0"].branch_state(b0) is BranchState.CLOSED
    # Nothing beyond the final head, even signed by the author; nor a replay of the tail.
    after = _author_packet(n, b0, 6, decode_frame(packets[4]).hash, b"after the revoke")
    assert [r.reason for r in _rejects(n.to_sub("s0", after))] == [RejectReason.CLOSED_BRANCH]
    assert [r.reason for r in _rejects(n.to_sub("s0", packets[4]))] == [RejectReason.CLOSED_BRANCH]
    assert n.subs["s0"].next_timer() is None  # nothing left to fetch again


def test_a_revoke_that_names_another_final_message_is_a_fork() -> None:
    """SPEC 8.8: a REVOKE whose final head is the position we hold but names another message is the author's
    signed word against its own chain: refused FORK (the branch is not closed by it)."""
    from streams.wire import Revoke

    n = Net.make(n_subs=1)
    n.subscribe("s0")
    b0 = branch_of(n, "s0")
    n.author.publish(b0, b"m", n.now)
    n.pump_author()
    s = n.subs["s0"]
    epoch, _, _, _ = s.branch_info(b0)
    grant_hash = s._branches[b0].grant_hash
    forged = encode_frame(Revoke(n.author.channel, b0, epoch, grant_hash, 1, bytes(32)), b"", ident(1).sign).raw
    (rej,) = _rejects(s.receive(forged, n.now))
    assert (rej.reason, rej.seq) == (RejectReason.FORK, 1)
    assert n.subs["s0"].branch_state(b0) is BranchState.OPEN


def test_read_only_subscriber_cannot_publish_and_its_packets_are_refused() -> None:
    n = Net.make(policy=AllowList.of([ident(10).did, ident(11).did], Permission.READ))
    n.subscribe("s0")
    b0 = branch_of(n, "s0")
    with pytest.raises(LocalProtocolError):
        n.subs["s0"].publish(b0, b"x", n.now)


def test_amortized_mode_covers_with_checkpoints() -> None:
    from streams.core import CoreConfig

    n = Net.make(config=CoreConfig(signing=SigningMode.AMORTIZED, checkpoint_every=4))
    n.subscribe("s0")
    b0 = branch_of(n, "s0")
    for i in range(6):
        n.author.publish(b0, b"p%d" % i, n.now)
    n.pump_author()
    ev = n.events["s0"]
    msgs = _msgs(ev)
    assert [m.signed for m in msgs] == [False] * 6
    cov = [e for e in ev if isinstance(e, Covered)]
    assert [c.through_seq for c in cov] == [5]  # 4 packets then the checkpoint at seq 5
    assert n.author.next_timer() == n.now + 200
    n.author.handle_timer(n.now + 200)
    n.pump_author()
    cov = [e for e in n.events["s0"] if isinstance(e, Covered)]
    assert [c.through_seq for c in cov] == [5, 8]


def test_take_deadline_reports_each_new_timer_once_and_cheaply() -> None:
    """``take_deadline`` tells the driver of deadlines set since its last call -- a held-back ACK, an amortized
    checkpoint -- so that a timer armed earlier can be woken; ``next_timer`` (a scan) agrees with it."""
    from streams.core import CoreConfig

    n = Net.make(config=CoreConfig(signing=SigningMode.AMORTIZED, checkpoint_every=1000))
    n.subscribe("s0")
    b0 = branch_of(n, "s0")
    n.author.take_deadline()
    n.author.publish(b0, b"p0", n.now)
    assert n.author.take_deadline() == n.now + 200 == n.author.next_timer()
    n.author.publish(b0, b"p1", n.now + 5)  # the same checkpoint covers it: no new deadline
    assert n.author.take_deadline() is None
    # A subscriber that acknowledged at t holds back the ACK of a message that arrives within the interval.
    sub = n.subs["s0"]
    sub.take_deadline()
    n.pump_author()
    assert sub.take_acks(n.now) != []  # the first after a quiet spell goes at once
    assert sub.take_deadline() is None
    n.author.publish(b0, b"p2", n.now + 5)
    n.pump_author()
    assert sub.take_acks(n.now + 5) == []
    assert sub.take_deadline() == n.now + 20 == sub.next_timer()
    assert sub.take_deadline() is None  # once


def test_group_branch_rekey_cuts_off_removed_member() -> None:
    n = Net.make(n_subs=3)
    for s in ("s0", "s1", "s2"):
        n.subscribe(s)
    members = [s.identity.public for s in n.subs.values()]
    g = n.author.open_group(members)
    n.pump_author()
    n.author.publish(g, b"broadcast 1", n.now)
    n.pump_author()
    for s in ("s0", "s1", "s2"):
        assert b"broadcast 1" in [m.payload for m in _msgs(n.events[s])]
    n.author.remove_member(g, ident(12).did)
    n.pump_author()
    n.author.publish(g, b"broadcast 2", n.now)
    n.pump_author()
    assert b"broadcast 2" in [m.payload for m in _msgs(n.events["s0"])]
    assert b"broadcast 2" not in [m.payload for m in _msgs(n.events["s2"])]
    # s2 heard the re-key that left it out, and closed the group on its side: the next broadcast is refused
    # there unread (it was STALE_EPOCH, the key unknown, before members were told they were removed).
    assert [(e.branch, e.by) for e in n.events["s2"] if isinstance(e, BranchClosed)] == [(g, "removed")]
    assert any(r.reason is RejectReason.CLOSED_BRANCH for r in _rejects(n.events["s2"]))


def test_refusal_does_not_leak_policy_and_unlisted_gets_no_key_material(net: Net) -> None:
    net.add_sub("x", ident(77))
    net.subscribe("x")
    refuses = [d for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.REFUSE]
    f = decode_frame(refuses[-1])
    assert f.head.reason == RejectReason.REFUSED.value
    assert ident(10).did.encode() not in refuses[-1]


def _exchange(net: Net, name: str, frames: list[bytes]) -> list[bytes]:
    """Deliver a subscriber's frames to the author by hand; return the author's answers (no automatic pumping:
    the test decides when, and whether, each answer arrives)."""
    out: list[bytes] = []
    for d in frames:
        net.author.receive(d, net.now, name)
        net.author.take_changes()
        out += [o.data for o in net.author.data_to_send()]
    return out


def test_an_answer_that_arrives_after_the_next_hello_retry_still_completes_the_handshake() -> None:
    """The round trip takes longer than the retry interval (a starved host): every answer (GRANT, then ADMIT)
    arrives after the next HELLO retry reset the handshake to AWAIT_CHALLENGE.  It must still complete it -- for a
    subscriber that already holds the branch (a re-subscription, answered with the same grant again) as for a new
    one; otherwise a slow enough path keeps a re-subscription from ever completing, however long the subscriber
    retries (THREATS 8)."""
    net = Net.make(n_subs=1)
    s = net.subs["s0"]
    for _attempt in ("first grant", "re-subscription", "re-subscription"):
        s.hello()
        answers = _exchange(net, "s0", [o.data for o in s.data_to_send()])  # ANNOUNCE + CHALLENGE
        events = [e for a in answers for e in s.receive(a, net.now)]
        assert not _rejects(events)
        answer = _exchange(net, "s0", [o.data for o in s.data_to_send()])  # SUBSCRIBE -> GRANT, ADMIT
        assert [decode_frame(g).kind for g in answer] == [Kind.GRANT, Kind.ADMIT]
        s.hello(retry=True)  # the retry timer fires before the answer arrives (Subscriber.subscribe's retry)
        s.data_to_send()  # (and this HELLO is lost)
        events = [e for a in answer for e in s.receive(a, net.now)]
        assert not _rejects(events)
        [done] = [e for e in events if isinstance(e, Subscribed)]
        assert done.branch == net.author.branch_of(ident(10).did)
        assert s.state.value == "subscribed"
    assert len(net.author.branch_ids()) == 1


def test_a_signed_head_naming_another_message_at_an_accepted_position_is_a_fork(net: Net) -> None:
    """SPEC 13.6: a HEAD signed by the publisher that names another hash at a position the receiver accepted is
    one half of a fork, the accepted message the other; the receiver refuses it FORK, with the frame for the
    driver to keep as evidence.  An honest HEAD of that position is taken quietly."""
    from streams.wire import HeadNotice

    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    s0 = net.subs["s0"]
    logged: dict[tuple[bytes, int, int], bytes] = {}  # (what the driver's store would hold)
    take = s0.take_changes

    def kept():  # type: ignore[no-untyped-def]
        changes = take()
        logged.update(((r.branch, r.publisher, r.seq), r.hash) for r in changes.log)
        return changes

    s0.take_changes = kept  # type: ignore[method-assign]
    s0.log_lookup = lambda b, p, q: logged.get((b, p, q))
    for i in range(3):
        net.author.publish(b0, b"m%d" % i, net.now)
    net.pump_author()
    seq, head, _ = s0.chain_head(b0, 0)
    assert seq == 4
    honest = encode_frame(HeadNotice(net.author.channel, b0, 0, 3, head, 0), b"", ident(1).sign).raw
    assert not [e for e in s0.receive(honest, net.now) if isinstance(e, Rejected)]
    for at in (3, 2):  # at our head, and below it (the log's hash)
        lie = encode_frame(HeadNotice(net.author.channel, b0, 0, at, bytes([at]) * 32, 0), b"", ident(1).sign).raw
        [rej] = [e for e in s0.receive(lie, net.now) if isinstance(e, Rejected)]
        assert (rej.reason, rej.seq, rej.frame) == (RejectReason.FORK, at, lie)
    # Not the author's key: refused as such, no evidence.
    forged = encode_frame(HeadNotice(net.author.channel, b0, 0, 3, bytes(32), 0), b"", ident(99).sign).raw
    assert [e.reason for e in s0.receive(forged, net.now) if isinstance(e, Rejected)] == [RejectReason.BAD_SIGNATURE]
