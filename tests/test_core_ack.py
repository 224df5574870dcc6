"""Durable acknowledgements (Kind.ACK) and gap-fetch retries in the sans-I/O core, attacked like the rest."""

from __future__ import annotations

import dataclasses

import pytest

from streams.core import AuthorCore, CoreConfig, SubscriberCore
from streams.errors import RejectReason
from streams.events import Acknowledged, Granted, MessageReceived, Rejected
from streams.policy import AllowList
from streams.wire import Ack, Kind, decode_frame, encode_frame

from .corenet import Net, ident, seeded_rng


def _branch(net: Net, name: str) -> bytes:
    [g] = [e for e in net.events[name] if isinstance(e, Granted)]
    return g.branch


def _acks(events: list[object]) -> list[Acknowledged]:
    return [e for e in events if isinstance(e, Acknowledged)]


def _rejects(events: list[object]) -> list[RejectReason]:
    return [e.reason for e in events if isinstance(e, Rejected)]


@pytest.fixture
def net() -> Net:
    n = Net.make()
    for s in ("s0", "s1"):
        n.subscribe(s)
    return n


def _deliver_without_pump(net: Net, name: str) -> list[object]:
    """Hand the author's pending frames to one subscriber without letting it answer yet."""
    out: list[object] = []
    for o in net.author.data_to_send():
        out.extend(net.subs[name].receive(o.data, net.now))
    net.subs[name].take_changes()
    return out


def _sub_acks(net: Net, name: str) -> list[bytes]:
    s = net.subs[name]
    s.acknowledge()
    return [o.data for o in s.data_to_send() if decode_frame(o.data).kind is Kind.ACK]


def test_one_cumulative_ack_per_batch_reaches_the_publisher(net: Net) -> None:
    b0 = _branch(net, "s0")
    for i in range(5):
        net.author.publish(b0, b"m%d" % i, net.now)
    ev = _deliver_without_pump(net, "s0")
    assert len([e for e in ev if isinstance(e, MessageReceived)]) == 5
    [ack] = _sub_acks(net, "s0")  # one signature for the whole batch
    f = decode_frame(ack)
    assert (f.head.branch, f.head.publisher, f.head.seq, f.head.acker) == (b0, 0, 5, 1)
    assert f.head.hash == net.author.chain_head(b0, 0)[1]
    assert _sub_acks(net, "s0") == []  # nothing moved since: nothing to acknowledge
    aev = net.author.receive(ack, net.now, "s0")
    assert _acks(aev) == [Acknowledged(b0, 0, 5, ident(10).did)]
    assert net.author.acknowledged(b0) == 5
    # The same ACK again (re-sent after a restart or a HEAD notice, or replayed by the network) changes nothing
    # and is no event -- a copy within copy_window_ms is not even checked again; an older one, replayed once a
    # later ACK was accepted, is a REPLAY.
    assert net.author.receive(ack, net.now, "s0") == []
    net.now += net.author.config.copy_window_ms
    assert net.author.receive(ack, net.now, "s0") == []
    assert net.author.acknowledged(b0) == 5
    net.author.publish(b0, b"m5", net.now)
    _deliver_without_pump(net, "s0")
    [later] = _sub_acks(net, "s0")
    assert _acks(net.author.receive(later, net.now, "s0")) == [Acknowledged(b0, 0, 6, ident(10).did)]
    assert _rejects(net.author.receive(ack, net.now, "s0")) == []  # a copy of one handled just now: dropped
    net.now += net.author.config.copy_window_ms
    assert _rejects(net.author.receive(ack, net.now, "s0")) == [RejectReason.REPLAY]
    assert net.author.acknowledged(b0) == 6


def test_author_acknowledges_subscriber_chain(net: Net) -> None:
    b0 = _branch(net, "s0")
    s = net.subs["s0"]
    s.publish(b0, b"payment", net.now)
    [pkt] = s.data_to_send()
    net.author.receive(pkt.data, net.now, "s0")
    net.author.take_changes()
    net.author.acknowledge()
    [ack] = [o.data for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.ACK]
    assert _acks(s.receive(ack, net.now)) == [Acknowledged(b0, 1, 1, ident(1).did)]


def test_forged_and_relayed_acks_are_rejected(net: Net) -> None:
    b0, b1 = _branch(net, "s0"), _branch(net, "s1")
    net.author.publish(b0, b"x", net.now)
    net.author.publish(b1, b"y", net.now)
    outs = net.author.data_to_send()
    for o in outs:
        for name in ("s0", "s1"):
            net.subs[name].receive(o.data, net.now)
    [ack1] = _sub_acks(net, "s1")
    a = decode_frame(ack1).head
    # s1's valid ACK of b1 relayed into b0 (same signature, branch field changed): the signature breaks.
    relayed = encode_frame(dataclasses.replace(a, branch=b0), b"").raw[:-2] + ack1[-66:]
    assert _rejects(net.author.receive(relayed, net.now, "s1"))[0] in (RejectReason.BAD_SIGNATURE,
                                                                       RejectReason.MALFORMED)
    # s1 signs an ACK for b0 claiming to be member 1 there (that is s0): forged.
    head_b0 = net.author.chain_head(b0, 0)[1]
    forged = encode_frame(Ack(net.author.channel, b0, 0, 1, head_b0, 1), b"", ident(11).sign).raw
    assert _rejects(net.author.receive(forged, net.now, "s1")) == [RejectReason.BAD_SIGNATURE]
    # An ACK of a chain that is not the receiver's, beyond the head, or of a forked head.
    s0 = ident(10)
    assert _rejects(net.author.receive(
        encode_frame(Ack(net.author.channel, b0, 1, 1, head_b0, 1), b"", s0.sign).raw, net.now, "s0")) == [
        RejectReason.UNEXPECTED]
    assert _rejects(net.author.receive(
        encode_frame(Ack(net.author.channel, b0, 0, 9, head_b0, 1), b"", s0.sign).raw, net.now, "s0")) == [
        RejectReason.UNEXPECTED]
    assert _rejects(net.author.receive(
        encode_frame(Ack(net.author.channel, b0, 0, 1, b"\x01" * 32, 1), b"", s0.sign).raw, net.now, "s0")) == [
        RejectReason.FORK]
    # From another channel of the same author: foreign.
    other = AuthorCore(ident(1), "other", AllowList.of([s0.did]), rng=seeded_rng(3))
    assert _rejects(other.receive(ack1, net.now, "s1")) == [RejectReason.FOREIGN_CHANNEL]
    # A bit flip anywhere in a valid ACK is refused; the genuine one is still accepted afterwards.
    for i in range(0, len(ack1), 7):
        bad = bytearray(ack1)
        bad[i] ^= 0x10
        ev = net.author.receive(bytes(bad), net.now, "s1")
        assert _rejects(ev) and not _acks(ev)
    assert _acks(net.author.receive(ack1, net.now, "s1")) == [Acknowledged(b1, 0, 1, ident(11).did)]


def test_ack_after_restart_is_sent_again(net: Net) -> None:
    b0 = _branch(net, "s0")
    net.author.publish(b0, b"m", net.now)
    _deliver_without_pump(net, "s0")
    [ack] = _sub_acks(net, "s0")
    s = net.subs["s0"]
    # Restart from the committed records (the ACK may have died with the process): acknowledged again.
    s2 = SubscriberCore(ident(10), ident(1).did, net.author.channel)
    s2.load([s._record(s._branches[b0])], [s._branches[b0].chain_record(0)])
    s2.acknowledge()
    [again] = [o.data for o in s2.data_to_send()]
    assert decode_frame(again).head.seq == decode_frame(ack).head.seq == 1


def test_lost_fetch_is_retried_after_the_retry_interval() -> None:
    n = Net.make(config=CoreConfig(fetch_retry_ms=100))
    n.subscribe("s0")
    b0 = _branch(n, "s0")
    s = n.subs["s0"]
    s.config = CoreConfig(fetch_retry_ms=100)  # type: ignore[misc]
    for i in range(3):
        n.author.publish(b0, b"%d" % i, n.now)
    outs = n.author.data_to_send()
    s.receive(outs[2].data, n.now)  # 1 and 2 lost: gap, FETCH issued ...
    first = [decode_frame(o.data) for o in s.data_to_send()]
    assert [f.kind for f in first] == [Kind.FETCH]  # ... and lost too
    assert s.next_timer() == n.now + 100
    s.handle_timer(n.now + 50)
    assert s.data_to_send() == []
    s.handle_timer(n.now + 100)
    [retry] = [decode_frame(o.data) for o in s.data_to_send()]
    assert (retry.kind, retry.head.from_seq, retry.head.to_seq) == (Kind.FETCH, 1, 2)  # 3 is held: not fetched again
    # ... and lost again; then the wall clock steps back an hour: the next tick still asks again.
    s.data_to_send()
    s.handle_timer(n.now + 100 - 3_600_000)
    [again] = [decode_frame(o.data) for o in s.data_to_send()]
    assert (again.kind, again.head.from_seq, again.head.to_seq) == (Kind.FETCH, 1, 2)
    ev = s.receive(outs[0].data, n.now) + s.receive(outs[1].data, n.now)
    assert [e.seq for e in ev if isinstance(e, MessageReceived)] == [1, 2, 3]
    s.handle_timer(n.now + 1000)
    assert [o for o in s.data_to_send() if decode_frame(o.data).kind is Kind.FETCH] == []


def test_lost_ack_is_sent_again_when_the_publisher_announces_its_head(net: Net) -> None:
    b0 = _branch(net, "s0")
    net.author.publish(b0, b"m", net.now)
    _deliver_without_pump(net, "s0")
    [_lost] = _sub_acks(net, "s0")  # dropped by the network
    net.author.head_notices(force=True)
    [head] = [o.data for o in net.author.data_to_send()]
    net.subs["s0"].receive(head, net.now)
    [again] = _sub_acks(net, "s0")
    assert _acks(net.author.receive(again, net.now, "s0")) == [Acknowledged(b0, 0, 1, ident(10).did)]


def test_acks_of_a_stream_are_coalesced_and_the_last_one_follows_on_the_timer(net: Net) -> None:
    # ack_interval_ms (default 20): the first ACK after a quiet spell at once, the rest of a stream together.
    b0 = _branch(net, "s0")
    s, t0 = net.subs["s0"], net.now
    assert s.config.ack_interval_ms == 20

    def batch(n: int, now: int) -> list[bytes]:
        for i in range(n):
            net.author.publish(b0, b"m%d" % i, now)
        _deliver_without_pump(net, "s0")
        return [o.data for o in s.take_acks(now)]

    [first] = batch(3, t0)
    assert decode_frame(first).head.seq == 3
    assert batch(2, t0 + 5) == [] and batch(4, t0 + 15) == []  # coalesced
    assert s.next_timer() == t0 + 20
    s.handle_timer(t0 + 19)
    assert s.data_to_send() == []
    s.handle_timer(t0 + 20)
    [second] = [o.data for o in s.data_to_send()]
    assert decode_frame(second).head.seq == 9  # one ACK for both later batches: the cursor then
    assert s.next_timer() is None and s.take_acks(t0 + 21) == []
    [third] = batch(1, t0 + 100)  # after a quiet spell: at once again
    assert decode_frame(third).head.seq == 10
    got = [a.through_seq for f in (first, second, third) for a in _acks(net.author.receive(f, t0 + 100, "s0"))]
    assert got == [3, 9, 10]
    assert net.author.acknowledged(b0) == 10
    # The wall clock steps back an hour (an NTP correction): the next ACK does not wait for it to catch up.
    [fourth] = batch(1, t0 + 100 - 3_600_000)
    assert decode_frame(fourth).head.seq == 11


def test_ack_interval_zero_acknowledges_every_batch() -> None:
    n = Net.make()
    n.subscribe("s0")
    b0 = _branch(n, "s0")
    s = n.subs["s0"]
    s.config = CoreConfig(ack_interval_ms=0)  # type: ignore[misc]
    seqs = []
    for _ in range(4):
        n.author.publish(b0, b"x", n.now)
        _deliver_without_pump(n, "s0")
        [a] = s.take_acks(n.now)
        seqs.append(decode_frame(a.data).head.seq)
    assert seqs == [1, 2, 3, 4]


def test_protocol_core_never_imports_zmq_or_brokerless() -> None:
    import subprocess
    import sys

    code = "import sys, streams, streams.api, streams.core, streams.store; " \
           "sys.exit(any(m == 'zmq' or m.startswith(('zmq.', 'brokerless')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
