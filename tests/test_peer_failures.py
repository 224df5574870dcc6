"""Peers whose frames fail checks (SPEC 10.3, THREATS 8), two cores wired without sockets.

Anyone who can reach the author and has seen a branch id on the wire can send well-formed member frames naming
a real member; each used to cost a signature check (about 40 us), unbudgeted.  Attacks here: a batch of forged
CHECKPOINTs from one peer mixed with a member's genuine stream (the batch pre-pass), a batch of forged FETCHes;
and the relay's counter-attack on the subscriber side (forgeries injected into the author's stream must not
make it drop the genuine frames)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

import streams._crypto as crypto
from brokerless import AuthorEndpoint, EndpointConfig, SubscriberEndpoint
from streams.api import Author, StoreOptions, Subscriber
from streams.core import CoreConfig, SignatureCheck
from streams.errors import DecodeError
from streams.events import FetchRequested, MessageReceived, Rejected, RejectReason
from streams.policy import AllowList
from streams.wire import SESSION_LEN, Checkpoint, Fetch, Kind, decode_frame, encode_frame
from tests.corenet import Net, ident

FORGER = ident(99)
FAST = StoreOptions(durable=False, opslimit=1, memlimit=8192)


@contextmanager
def counted_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every signature the cores check (the real ``verify``, counted): the list of the signatures checked."""
    seen: list[bytes] = []
    real = crypto.verify

    def verify(public: bytes, digest: bytes, sig: bytes) -> None:
        seen.append(sig)
        real(public, digest, sig)

    monkeypatch.setattr(crypto, "verify", verify)
    yield seen


def _hook() -> Callable[[list[SignatureCheck]], list[bool]]:
    """A batch verifier as the drivers install (there on threads): the real check per item."""
    def verify_many(checks: list[SignatureCheck]) -> list[bool]:
        out = []
        for c in checks:
            try:
                crypto.verify(*c)
                out.append(True)
            except crypto.VerificationError:
                out.append(False)
        return out
    return verify_many


def _member_stream(net: Net, n: int) -> tuple[bytes, list[bytes]]:
    """Subscriber s0's branch and ``n`` genuine signed packets it publishes into it (not yet delivered)."""
    net.subscribe("s0")
    s = net.subs["s0"]
    [branch] = s.branch_ids()
    for i in range(n):
        s.publish(branch, b"payment %d" % i, net.now)
    s.take_changes()
    return branch, [o.data for o in s.data_to_send()]


async def until(pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timeout waiting for {what}"
        await asyncio.sleep(0.01)


def _hooked_author(genuine: int) -> tuple[Net, bytes, list[bytes]]:
    """An author core with a batch verifier installed, subscriber s0's branch, and ``genuine`` signed packets
    s0 published into it (not yet delivered)."""
    net = Net.make(n_subs=1)
    branch, frames = _member_stream(net, genuine)
    net.author.verify_many = _hook()
    return net, branch, frames


def _forged_checkpoints(net: Net, branch: bytes, n: int) -> tuple[list[bytes], set[bytes]]:
    """``n`` CHECKPOINTs forged for the member at index 1 of ``branch``, ahead of its stream, and their
    signatures.  They pass every cheap test, and a frame ahead is authenticated before it is held (SPEC 10.1
    step 7): each would cost a signature check."""
    a = net.author
    forged = [encode_frame(Checkpoint(a.channel, branch, 1, 100 + i, bytes(32), 0), b"", FORGER.sign).raw
              for i in range(n)]
    return forged, {decode_frame(f).sig for f in forged}


def _reasons(events: list[object]) -> list[RejectReason]:
    return [e.reason for e in events if isinstance(e, Rejected)]


def test_forged_checkpoints_in_a_batch_cost_a_few_checks_and_the_member_stream_is_untouched(
        monkeypatch: pytest.MonkeyPatch) -> None:
    net, branch, genuine = _hooked_author(40)
    a = net.author
    forged, forged_sigs = _forged_checkpoints(net, branch, 60)
    batch = ([(f, "evil") for f in forged[:30]] + [(g, "s0") for g in genuine[:20]]
             + [(f, "evil") for f in forged[30:]] + [(g, "s0") for g in genuine[20:]])
    with counted_checks(monkeypatch) as seen:
        events = a.receive_many(batch, net.now)
    assert sum(1 for s in seen if s in forged_sigs) <= 1 + a.config.peer_failures  # not 60
    reasons = _reasons(events)
    assert reasons.count(RejectReason.BAD_SIGNATURE) == a.config.peer_failures
    assert reasons.count(RejectReason.SUSPENDED) == 60 - a.config.peer_failures
    got = [e.payload for e in events if isinstance(e, MessageReceived)]
    assert got == [b"payment %d" % i for i in range(40)]
    assert a.take_offenders() == [("evil", a.config.peer_failures)]
    assert a.take_offenders() == []
    # The next batch starts afresh (the transport decides what to do with the offender, not the core).
    with counted_checks(monkeypatch) as seen:
        events = a.receive_many([(forged[0], "evil")], net.now)
    assert _reasons(events) == [RejectReason.BAD_SIGNATURE] and len(seen) == 1


def test_a_copy_of_a_frame_held_for_a_gap_does_not_open_the_pre_pass_to_forgeries(
        monkeypatch: pytest.MonkeyPatch) -> None:
    net, branch, genuine = _hooked_author(3)
    a = net.author
    a.receive_many([(genuine[2], "s0")], net.now)  # seq 3 ahead of a gap: authenticated and held
    forged, forged_sigs = _forged_checkpoints(net, branch, 50)
    with counted_checks(monkeypatch) as seen:
        events = a.receive_many([(genuine[2], "evil")] + [(f, "evil") for f in forged], net.now)
    assert sum(1 for s in seen if s in forged_sigs) <= 1 + a.config.peer_failures  # not 50
    assert _reasons(events).count(RejectReason.SUSPENDED) == 50 - a.config.peer_failures


def test_forged_fetches_are_checked_a_few_times_per_batch() -> None:
    net = Net.make(n_subs=1, config=CoreConfig(peer_failures=2))
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    a = net.author
    forged = [encode_frame(Fetch(a.channel, branch, 0, 1, 10, 1), b"", FORGER.sign).raw for _ in range(20)]
    events = a.receive_many([(f, "evil") for f in forged], net.now)
    assert _reasons(events) == [RejectReason.BAD_SIGNATURE] * 2 + [RejectReason.SUSPENDED] * 18
    assert a.take_offenders() == [("evil", 2)]
    # The genuine member on another connection, in the same batch as another forger, is served.
    s = net.subs["s0"]
    me = s.branch_info(branch)[3].index(s.identity.did)
    good = encode_frame(Fetch(a.channel, branch, 0, 1, 10, me), b"", s.identity.sign).raw
    events = a.receive_many([(f, "evil2") for f in forged[:5]] + [(good, "s0")], net.now)
    assert RejectReason.SUSPENDED in _reasons(events)
    assert _reasons(events).count(RejectReason.BAD_SIGNATURE) == 2
    assert a.take_routes() == [(branch, "s0", True)]  # verified: the FETCH was processed, not suspended


def test_a_recorded_fetch_replayed_in_a_loop_costs_a_check_per_connection_not_per_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A genuine FETCH, recorded on the wire and replayed: each copy used to cost the author a signature check,
    a signed HEAD notice and a range read from its log, sent to whoever replayed it.  Now a copy on a connection
    that sent the same frame less than copy_window_ms ago costs none of that: one answer per connection per
    window.  The member's own retry, after its fetch_retry_ms, is served."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    a, s = net.author, net.subs["s0"]
    for i in range(10):
        a.publish(branch, b"alert %d" % i, net.now)
    a.take_changes()
    a.data_to_send()  # lost on the way: s0 will fetch them
    me = s.branch_info(branch)[3].index(s.identity.did)
    fetch = encode_frame(Fetch(a.channel, branch, 0, 1, 10, me), b"", s.identity.sign).raw
    served = [e for e in a.receive(fetch, net.now, "s0") if isinstance(e, FetchRequested)]
    assert [(e.from_seq, e.to_seq) for e in served] == [(1, 10)]
    a.take_changes()
    assert [decode_frame(o.data).kind for o in a.data_to_send()] == [Kind.HEAD]
    assert a.take_routes() == [(branch, "s0", True)]
    with counted_checks(monkeypatch) as seen:
        events = []
        for i in range(300):  # five connections, sixty copies each, all within the window
            events += a.receive_many([(fetch, f"relay{i % 5}")], net.now + i % a.config.copy_window_ms)
        assert _reasons(events) == [RejectReason.REPLAY] * 295
        assert sum(isinstance(e, FetchRequested) for e in events) == 5 and len(seen) == 5
        a.take_changes()
        assert len(a.data_to_send()) == 5  # a HEAD notice per connection, not per copy
        # The member's retry (fetch_retry_ms later: the same bytes) is answered, with one check.
        net.now += s.config.fetch_retry_ms
        assert any(isinstance(e, FetchRequested) for e in a.receive(fetch, net.now, "s0"))
        assert len(seen) == 6


def test_copies_of_a_grant_sync_and_of_a_superseded_ack_cost_one_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Also a copy of a frame refused after its signature held (an ACK older than one accepted), and of a grant
    sync the author does not answer again yet, is dropped unchecked: a member's every grant sync and every past
    ACK are on the wire."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    a, s = net.author, net.subs["s0"]
    me = s.branch_info(branch)[3].index(s.identity.did)
    sync = encode_frame(Fetch(a.channel, branch, 0, 0, 0, me), b"", s.identity.sign).raw
    acks = []
    for i in range(2):
        a.publish(branch, b"alert %d" % i, net.now)
        net.pump_author()
        s.acknowledge()
        acks += [o.data for o in s.data_to_send() if decode_frame(o.data).kind is Kind.ACK]
    old, latest = acks[-2], acks[-1]
    a.receive(latest, net.now, "relay")
    with counted_checks(monkeypatch) as seen:
        for _ in range(100):
            a.receive(sync, net.now + 1, "relay")
        assert len(seen) == 1
        reasons = []
        for _ in range(100):
            reasons += _reasons(a.receive(old, net.now + 1, "relay"))
        assert reasons == [RejectReason.REPLAY] and len(seen) == 2  # refused once after its check, then dropped


def test_a_heads_first_copy_is_silent_and_its_further_copies_are_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A member sends the same HEAD twice in ordinary operation (see the real-socket test below): that copy is
    dropped without an event.  A replay loop of it stays visible: every further copy is a REPLAY event, and none
    is checked again."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    a, s = net.author, net.subs["s0"]
    s.publish(branch, b"payment", net.now)
    s.data_to_send()
    assert s.notify_head(branch)
    [head] = [o.data for o in s.data_to_send() if decode_frame(o.data).kind is Kind.HEAD]
    a.receive(head, net.now, "s0")
    with counted_checks(monkeypatch) as seen:
        reasons = [_reasons(a.receive(head, net.now + 1, "s0")) for _ in range(5)]
    assert reasons == [[], *[[RejectReason.REPLAY]] * 4] and seen == []
    # Past the copy window the same HEAD is checked again (the member's periodic refresh, say): its next copy
    # is again its first, and silent.
    later = net.now + 60_000
    assert _reasons(a.receive(head, later, "s0")) == [] and _reasons(a.receive(head, later + 1, "s0")) == []


def test_the_copy_window_leaves_room_for_a_faster_retry() -> None:
    """Parties configured to retry faster than copy_window_ms (fetch_retry_ms 200) still get their retries
    answered: the window used is at most half of fetch_retry_ms."""
    net = Net.make(n_subs=1, config=CoreConfig(fetch_retry_ms=200))
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    a, s = net.author, net.subs["s0"]
    a.publish(branch, b"alert", net.now)
    a.take_changes()
    a.data_to_send()
    me = s.branch_info(branch)[3].index(s.identity.did)
    fetch = encode_frame(Fetch(a.channel, branch, 0, 1, 1, me), b"", s.identity.sign).raw
    assert any(isinstance(e, FetchRequested) for e in a.receive(fetch, net.now, "s0"))
    assert _reasons(a.receive(fetch, net.now + 50, "s0")) == [RejectReason.REPLAY]  # a copy
    assert any(isinstance(e, FetchRequested) for e in a.receive(fetch, net.now + 200, "s0"))  # the retry


def test_a_copy_of_a_forgery_is_checked_again() -> None:
    """Only a copy of a frame that held is dropped unchecked: a forged FETCH repeated keeps failing (and being
    charged), and a forgery carrying a genuine FETCH's content but another signature is checked, not taken for
    a copy of it."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    a, s = net.author, net.subs["s0"]
    me = s.branch_info(branch)[3].index(s.identity.did)
    head = Fetch(a.channel, branch, 0, 1, 10, me)
    a.receive(encode_frame(head, b"", s.identity.sign).raw, net.now, "s0")
    forged = encode_frame(head, b"", FORGER.sign).raw
    for _ in range(3):
        assert _reasons(a.receive(forged, net.now, "s0")) == [RejectReason.BAD_SIGNATURE]


def test_forgeries_injected_into_the_authors_stream_never_suspend_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subscriber side: it hears its author on one connection (the ZeroMQ endpoint hands its frames over without
    a peer; the in-memory hub names the sender).  A relay injecting forgeries there first must not make it drop
    the genuine frames behind them, nor check those one by one."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [branch] = s.branch_ids()
    a = net.author
    for i in range(30):
        a.publish(branch, b"alert %d" % i, net.now)
    a.take_changes()
    genuine = [o.data for o in a.data_to_send()]
    forged = [encode_frame(Checkpoint(a.channel, branch, 0, 100 + i, bytes(32), 0), b"", FORGER.sign).raw
              for i in range(10)]
    hooked: list[int] = []
    hook = _hook()
    s.verify_many = lambda checks: hooked.append(len(checks)) or hook(checks)
    for peer in (None, "relay"):
        events = s.receive_many([(f, peer) for f in forged] + [(g, peer) for g in genuine], net.now)
        assert RejectReason.SUSPENDED not in _reasons(events)
        # Every signature in the batch's pre-pass, forged or not (the second time the genuine ones are replays,
        # refused before any check).
        assert hooked.pop() == (40 if peer is None else 10)
        if peer is None:
            assert [e.payload for e in events if isinstance(e, MessageReceived)] == [b"alert %d" % i
                                                                                     for i in range(30)]
        assert s.take_offenders() == []


# --- over the real ZeroMQ endpoints -------------------------------------------------------------------------------


async def test_a_forger_on_its_own_connection_is_suspended_and_members_keep_their_stream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An outsider connects to the author's endpoint and floods forged FETCHes naming the real subscriber of a
    real branch (both visible on the wire), with a replayed genuine FETCH of the member before every three
    (a verified frame must not earn forgiveness).  The author's core checks a handful of the forgeries, the
    endpoint then drops the rest unread, and the subscriber gets every message published meanwhile.  Going
    quiet until its record expires does not lift the suspension."""
    ep_cfg = EndpointConfig(heartbeat_ms=200, failures_to_suspend=8, suspend_ms=60_000)
    ep = AuthorEndpoint("tcp://127.0.0.1:0", ep_cfg)
    author = await Author.create(tmp_path / "author.db", ident(1), "suspend", "pw", ep, AllowList.of([ident(10).did]),
                                 store_options=FAST)
    sub = await Subscriber.create(tmp_path / "sub.db", ident(10), ident(1).did, author.channel, "pw",
                                  SubscriberEndpoint(ep.addresses[0], EndpointConfig(heartbeat_ms=200)),
                                  store_options=FAST)
    ctx = zmq.asyncio.Context()
    evil = ctx.socket(zmq.DEALER)
    evil.setsockopt(zmq.LINGER, 0)
    try:
        branch = await sub.subscribe(timeout=10)
        # The forger binds its FETCHes to its own connection (SPEC 8.9; the author's PONG tells it the session):
        # else they would be refused before any check.
        evil.connect(ep.addresses[0])
        await evil.send(b"\x00")  # PING
        session = (await evil.recv())[9:9 + SESSION_LEN]
        forged = [encode_frame(Fetch(author.channel, branch, 0, 1 + i, 10 + i, 1), session, FORGER.sign).raw
                  for i in range(3000)]
        forged_sigs = {decode_frame(f).sig for f in forged}
        genuine = encode_frame(Fetch(author.channel, branch, 0, 1, 2, 1), session, ident(10).sign).raw
        with counted_checks(monkeypatch) as seen:
            for i, f in enumerate(forged):
                if i % 3 == 0:
                    await evil.send(genuine)
                await evil.send(f)
            for i in range(200):
                await author.publish(branch, b"alert %d" % i)
            got = [(await sub.next_message(timeout=10)).payload for _ in range(200)]
            assert got == [b"alert %d" % i for i in range(200)]
            # Every forged frame is accounted for: dropped by the endpoint, or refused by the core.
            # Every frame of the flood read, and the core done with them (nothing refused for a while).
            await until(lambda: ep.stats.frames_in >= 4000, "the flood read")
            refused, last, quiet_since = 0, -1, time.monotonic()
            while time.monotonic() - quiet_since < 0.5:
                await asyncio.sleep(0.05)
                refused += sum(1 for e in author.pending_events() if isinstance(e, Rejected)
                               and e.reason in (RejectReason.BAD_SIGNATURE, RejectReason.SUSPENDED))
                if refused != last:
                    last, quiet_since = refused, time.monotonic()
            assert ep.stats.suspended_dropped + ep.stats.inbox_dropped + refused >= 3000
            checked = sum(1 for s in seen if s in forged_sigs)
            assert ep.stats.peers_suspended == 1
            assert ep.stats.suspended_dropped > 0
            # Suspended after 8 failures; before that, at most CoreConfig.peer_failures + 1 checks per batch, and
            # one more batch may be in the core while the endpoint hears of the first ones.
            assert checked <= ep_cfg.failures_to_suspend + 2 * (CoreConfig().peer_failures + 1), checked
            # Quiet for longer than the peer's liveness (its record is forgotten), then forging again: still
            # dropped unread.
            await asyncio.sleep(3 * ep_cfg.heartbeat_ms * ep_cfg.liveness / 1000)
            dropped = ep.stats.suspended_dropped
            for f in forged[:200]:
                await evil.send(f)
            await until(lambda: ep.stats.suspended_dropped >= dropped + 200, "the second flood dropped")
            assert sum(1 for s in seen if s in forged_sigs) == checked
    finally:
        evil.close()
        ctx.term()
        await sub.close()
        await author.close()


def _sessions(net: Net) -> dict[object, bytes]:
    """Connection sessions as a transport with sessions keeps them (SPEC 8.9), installed in both cores: the
    author checks each FETCH against the session of the connection it came on, the member binds its own."""
    sessions: dict[object, bytes] = {"s0": b"\x5a" * SESSION_LEN}
    sessions.update({f"relay{i}": bytes([i]) * SESSION_LEN for i in range(5)})
    net.author.session_of = lambda peer: sessions.get(peer, b"")
    net.subs["s0"].my_session = lambda: sessions["s0"]
    return sessions


def test_a_fetch_is_bound_to_its_connection_and_refused_on_any_other_before_its_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A member binds every FETCH to the session of its connection (SPEC 8.9).  The same FETCH recorded and
    replayed on other connections (ones the replayer opened, one the author no longer knows) is refused there
    before its signature is checked, and answered nowhere; on its own connection it is answered.  (Without the
    binding each connection got a signed HEAD and the range, whatever the copy rule did per connection.)"""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    a, s = net.author, net.subs["s0"]
    sessions = _sessions(net)
    for i in range(10):
        a.publish(branch, b"alert %d" % i, net.now)
    a.take_changes()
    a.data_to_send()  # lost on the way: s0 will fetch them
    s.request_fetch(branch, 0, 1, 10)
    [fetch] = [o.data for o in s.data_to_send() if decode_frame(o.data).kind is Kind.FETCH]
    assert decode_frame(fetch).body == sessions["s0"]
    a.take_routes()
    with counted_checks(monkeypatch) as seen:
        events = []
        for i in range(5):
            events += a.receive(fetch, net.now + i, f"relay{i}")
        events += a.receive(fetch, net.now, "forgotten")
        assert _reasons(events) == [RejectReason.REPLAY] * 6
        assert not seen
        a.take_changes()
        assert a.data_to_send() == [] and a.take_routes() == []
        served = [e for e in a.receive(fetch, net.now, "s0") if isinstance(e, FetchRequested)]
        assert [(e.from_seq, e.to_seq, e.peer) for e in served] == [(1, 10, "s0")] and len(seen) == 1
    # Unbound (as over a transport without sessions), or bound to another session: refused as well.
    me = s.branch_info(branch)[3].index(s.identity.did)
    for body in (b"", sessions["relay0"]):
        other = encode_frame(Fetch(a.channel, branch, 0, 1, 10, me), body, s.identity.sign).raw
        assert _reasons(a.receive(other, net.now + 2000, "s0")) == [RejectReason.REPLAY]


def test_a_members_grant_syncs_and_catch_up_carry_its_current_session() -> None:
    """Every FETCH a member makes carries the session its transport reports at that moment: after the session
    changed (a reconnect), the catch-up is bound to the new one and answered on the new connection."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    a, s = net.author, net.subs["s0"]
    sessions = _sessions(net)
    a.publish(branch, b"alert", net.now)
    a.take_changes()
    a.data_to_send()
    sessions["s0"] = b"\x33" * SESSION_LEN  # reconnected: the author's new record of s0
    s.catch_up(net.now)
    fetches = [decode_frame(o.data) for o in s.data_to_send() if decode_frame(o.data).kind is Kind.FETCH]
    assert {f.head.from_seq for f in fetches} == {0, 1}  # the grant sync and the catch-up of the author's chain
    assert {f.body for f in fetches} == {sessions["s0"]}
    answered = [e for f in fetches for e in a.receive(f.raw, net.now, "s0")]
    assert not [e for e in answered if isinstance(e, Rejected)]
    assert any(isinstance(e, FetchRequested) for e in answered)


@pytest.mark.parametrize("n", [1, 7, 9, 32])
def test_a_fetch_body_is_empty_or_a_session(n: int) -> None:
    """Wire (SPEC 6.4): a FETCH's body is empty or exactly one session; anything else is malformed."""
    f = encode_frame(Fetch(b"c" * 32, b"b" * 16, 0, 1, 2, 1), b"x" * n, FORGER.sign).raw
    with pytest.raises(DecodeError):
        decode_frame(f)
    for ok in (b"", b"x" * SESSION_LEN):
        assert decode_frame(encode_frame(Fetch(b"c" * 32, b"b" * 16, 0, 1, 2, 1), ok, FORGER.sign).raw).body == ok


async def test_a_fetch_recorded_on_the_wire_is_answered_on_no_other_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over real sockets: an eavesdropper records a member's catch-up FETCH and replays it on twenty
    connections of its own.  Each used to be answered with a signed HEAD and the five messages the member
    fetched, read from the author's log.  Now none gets anything but the endpoint's PONG, and the author refuses
    every copy before checking its signature.  The member got its own answer."""
    cfg = EndpointConfig(heartbeat_ms=200)
    ep = AuthorEndpoint("tcp://127.0.0.1:0", cfg)
    author = await Author.create(tmp_path / "author.db", ident(1), "bound", "pw", ep, AllowList.of([ident(10).did]),
                                 store_options=FAST)
    sub = await Subscriber.create(tmp_path / "sub.db", ident(10), ident(1).did, author.channel, "pw",
                                  SubscriberEndpoint(ep.addresses[0], cfg), store_options=FAST)
    ctx = zmq.asyncio.Context()
    evil: list[zmq.asyncio.Socket] = []
    try:
        branch = await sub.subscribe(timeout=10)
        await sub.close()
        for i in range(5):  # while the member is away
            await author.publish(branch, b"alert %d" % i)
        sub_ep = SubscriberEndpoint(ep.addresses[0], cfg)
        wire: list[bytes] = []
        send = sub_ep._send

        def tap(data: bytes) -> None:  # what the member puts on the wire
            wire.append(data)
            send(data)

        sub_ep._send = tap  # type: ignore[method-assign]
        sub = await Subscriber.open(tmp_path / "sub.db", "pw", sub_ep, store_options=FAST)
        assert [(await sub.next_message(timeout=10)).payload for _ in range(5)] == [b"alert %d" % i for i in range(5)]
        [recorded] = [d for d in wire if d[:1] == b"\x95" and decode_frame(d).kind is Kind.FETCH
                      and decode_frame(d).head.from_seq == 1]
        author.pending_events()
        with counted_checks(monkeypatch) as seen:
            for _ in range(20):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.connect(ep.addresses[0])
                evil.append(s)
                await s.send(recorded)
            answers: list[bytes] = []
            refused = 0
            end = time.monotonic() + 10
            while time.monotonic() < end and refused < 20:
                await asyncio.sleep(0.05)
                refused += sum(1 for e in author.pending_events()
                               if isinstance(e, Rejected) and e.reason is RejectReason.REPLAY)
            await asyncio.sleep(0.3)  # anything sent in answer has arrived by now
            for s in evil:
                while await s.poll(0):
                    answers.append(await s.recv())
            assert refused == 20
            assert len(answers) == 20 and all(a[:1] == b"\x01" for a in answers)  # one PONG each, nothing else
            assert decode_frame(recorded).sig not in seen
    finally:
        for s in evil:
            s.close()
        ctx.term()
        await sub.close()
        await author.close()


def test_a_replayed_ack_or_head_routes_nothing_where_fetches_are_bound() -> None:
    """A member's ACK and HEAD carry no session: a recorded one replayed on a connection the replayer opened
    still verifies, and used to route the branch's traffic to that connection (the whole stream, bought with
    one frame per connection, and a member's route evicted at the limit).  Where FETCHes are bound, routes come
    from FETCHes (a member sends one on every new connection), the GRANT, and the member's chain frames the
    author accepts (fresh: a copy of one is a replay, and teaches nothing either)."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    a, s = net.author, net.subs["s0"]
    _sessions(net)
    a.publish(branch, b"alert", net.now)
    net.pump_author()
    s.publish(branch, b"payment", net.now)
    s.take_changes()
    [packet] = [o.data for o in s.data_to_send()]
    a.take_routes()
    assert any(isinstance(e, MessageReceived) for e in a.receive(packet, net.now, "s0-new"))
    assert a.take_routes() == [(branch, "s0-new", True)]  # its new connection, before any FETCH there
    assert _reasons(a.receive(packet, net.now, "relay4")) == [RejectReason.REPLAY]
    s.acknowledge()
    s.head_notices(force=True)
    frames = {decode_frame(o.data).kind: o.data for o in s.data_to_send()}
    assert {Kind.ACK, Kind.HEAD} <= set(frames)
    a.take_routes()
    for i, kind in enumerate((Kind.ACK, Kind.HEAD)):
        a.receive(frames[kind], net.now, f"relay{i}")
    assert a.take_routes() == []
    s.request_fetch(branch, 0, 1, 1)
    [fetch] = [o.data for o in s.data_to_send()]
    a.receive(fetch, net.now, "s0")
    assert a.take_routes() == [(branch, "s0", True)]


async def test_a_publish_that_waits_for_its_ack_right_after_connecting_raises_no_replay_alarm(
        tmp_path: Path) -> None:
    """Over real sockets, as ``streams publish`` does: open, publish, wait for the ACK.  The publish's HEAD
    notice and the catch-up of the connection that came up meanwhile send the same HEAD twice; the author drops
    the copy, and used to report it as a REPLAY -- a false attack alarm on every acknowledged publish.  A FETCH's
    copy is still reported."""
    ep = AuthorEndpoint("tcp://127.0.0.1:0")
    author = await Author.create(tmp_path / "author.db", ident(1), "alarms", "pw", ep, AllowList.of([ident(10).did]),
                                 store_options=FAST)
    heads: list[bytes] = []
    receive_many = author._core.receive_many

    def spy(batch: list[tuple[bytes, object]], now_ms: int) -> list[object]:
        heads.extend(d for d, _ in batch if d[:1] == b"\x95" and decode_frame(d).kind is Kind.HEAD)
        return receive_many(batch, now_ms)  # type: ignore[return-value]

    author._core.receive_many = spy  # type: ignore[method-assign,assignment]
    try:
        sub = await Subscriber.create(tmp_path / "sub.db", ident(10), ident(1).did, author.channel, "pw",
                                      SubscriberEndpoint(ep.addresses[0]), store_options=FAST)
        branch = await sub.subscribe(timeout=10)
        await sub.close()
        for i in range(3):
            sub = await Subscriber.open(tmp_path / "sub.db", "pw", SubscriberEndpoint(ep.addresses[0]),
                                        store_options=FAST)
            seq = await sub.publish(branch, b"payment %d" % i)
            await sub.wait_acknowledged(branch, seq, timeout=10)
            await sub.close()
        assert [(await author.next_message(timeout=10)).payload for _ in range(3)] == [b"payment %d" % i
                                                                                     for i in range(3)]
        await asyncio.sleep(0.2)
        assert len(heads) > len(set(heads))  # the duplicate this is about did happen
        assert [e for e in author.pending_events() if isinstance(e, Rejected)] == []
    finally:
        await author.close()
