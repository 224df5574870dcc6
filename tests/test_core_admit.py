"""ADMIT (SPEC 8.6, 9.1): a subscription handshake ends only with the author's signed answer naming the request's
challenge nonce -- never with a copy of a GRANT, which also answers grant syncs.  Attacks: replay of an earlier
attempt's ADMIT, forgery, tampering, relay from another channel or to another member, reordering.

Two cores wired together without sockets (``tests.corenet``)."""

from __future__ import annotations

from streams import _crypto
from streams.core import AuthorCore, SubscriberCore
from streams.errors import RejectReason
from streams.events import Event, Refused, Rejected, Subscribed, SubscriberAdmitted
from streams.identity import Identity
from streams.policy import AllowList
from streams.wire import (
    SESSION_LEN,
    Admit,
    Kind,
    Permission,
    Subscribe,
    SubscribeSecret,
    decode_frame,
    encode_frame,
    encode_subscribe_secret,
)
from tests.corenet import Net, ident, seeded_rng
from tests.test_core_grants import _author_answers, _offline_rekeys


def _rejected(events: list[Event]) -> list[RejectReason]:
    return [e.reason for e in events if isinstance(e, Rejected)]


def _subscribed(events: list[Event]) -> list[Subscribed]:
    return [e for e in events if isinstance(e, Subscribed)]


def _to_await_grant(net: Net, s: SubscriberCore) -> list[bytes]:
    """``s`` starts a (re-)subscription and sends its SUBSCRIBE; returns it, not delivered."""
    s.hello()
    for a in _author_answers(net, s):  # ANNOUNCE + CHALLENGE
        s.receive(a, net.now)
    assert s.state.value == "await-grant"
    return [o.data for o in s.data_to_send()]


def _exchange(net: Net, s: SubscriberCore, rounds: int = 6) -> list[Event]:
    """Deliver everything both ways, ``rounds`` times: what ``s`` queued to the author, its answers back."""
    events: list[Event] = []
    for _ in range(rounds):
        answers = _author_answers(net, s)
        if not answers:
            break
        for a in answers:
            events += s.receive(a, net.now)
    return events


def _with_sessions(net: Net, s: SubscriberCore) -> None:
    session = b"\x5a" * SESSION_LEN
    net.author.session_of = lambda peer: session  # type: ignore[method-assign]
    s.my_session = lambda: session  # type: ignore[method-assign]


def test_a_resubscription_completes_only_after_the_author_handled_its_subscribe() -> None:
    """A member that missed re-keys of its own branch re-subscribes (with a new credential, say) while a grant
    sync is out.  Each re-key it then applies sends one more sync, answered with one more copy of the current
    grant: with two or more missed re-keys a spare copy used to be taken for the answer, and ``subscribe()``
    returned before the author ever saw the SUBSCRIBE (the new credential never checked).  Now nothing but the
    ADMIT of that SUBSCRIBE ends the handshake, however many copies come."""
    for missed in (1, 2, 3):
        net = Net.make(n_subs=1)
        net.subscribe("s0")
        s = net.subs["s0"]
        [own] = s.branch_ids()
        _with_sessions(net, s)  # (before the HELLO: the challenge is bound to the session it was issued on)
        subscribe = _to_await_grant(net, s)  # withheld: lost, or slow
        for _ in range(4):  # the 4th forced refresh sends a grant sync of our own branch
            net.now += 10_000
            s.sync_quiet(net.now)
        for perm in [Permission.READ, Permission.READ_WRITE, Permission.READ][:missed]:
            net.author.set_permission(own, perm)  # re-keys whose GRANTs never reach the member
            net.author.take_changes()
            net.author.data_to_send()
        events = _exchange(net, s)
        assert s.branch_info(own)[0] == missed  # every missed re-key applied, from the syncs' answers
        assert not _subscribed(events) and s.state.value == "await-grant", missed
        for d in subscribe:  # the SUBSCRIBE reaches the author at last
            admitted = net.author.receive(d, net.now, "s0")
            assert [e.resubscribed for e in admitted if isinstance(e, SubscriberAdmitted)] == [True]
        net.author.take_changes()
        events = [e for o in net.author.data_to_send() for e in s.receive(o.data, net.now)]
        assert [(e.branch, e.epoch) for e in _subscribed(events)] == [(own, missed)]
        assert s.state.value == "subscribed"


def test_a_resubscription_whose_answer_meets_an_unanswered_sync_completes_without_a_retry() -> None:
    """A member that missed one re-key re-subscribes while a grant sync of its own branch is out that gets no
    answer (lost).  The author's answer to the SUBSCRIBE (its current grant) used to be counted for that sync:
    applied, not completing, and the handshake waited for a HELLO retry.  The ADMIT ends it at once."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [own] = s.branch_ids()
    _with_sessions(net, s)
    net.author.set_permission(own, Permission.READ)  # a re-key whose GRANT never reaches the member
    net.author.take_changes()
    net.author.data_to_send()
    for _ in range(4):  # the 4th forced refresh: a grant sync of our own branch ...
        net.now += 10_000
        s.sync_quiet(net.now)
    s.data_to_send()  # ... whose FETCH is lost on the way
    s.hello()
    events = _exchange(net, s)
    assert [(e.branch, e.epoch) for e in _subscribed(events)] == [(own, 1)] and s.state.value == "subscribed"


def test_an_admit_recorded_from_an_earlier_attempt_is_refused_as_unexpected() -> None:
    """A relay recorded the ADMIT of the first subscription and replays it during a later one: its nonce is not
    the outstanding request's, so it ends nothing."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [old] = [d for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.ADMIT]
    assert s.state.value == "subscribed"
    subscribe = _to_await_grant(net, s)
    for state in ("await-grant", "await-challenge"):
        if state == "await-challenge":
            s.hello(retry=True)
            s.data_to_send()
        events = s.receive(old, net.now)
        assert _rejected(events) == [RejectReason.UNEXPECTED] and not _subscribed(events)
        assert s.state.value == state
    for d in subscribe:  # the real answer still completes it
        net.author.receive(d, net.now, "s0")
    net.author.take_changes()
    events = [e for o in net.author.data_to_send() for e in s.receive(o.data, net.now)]
    assert len(_subscribed(events)) == 1 and s.state.value == "subscribed"
    assert _rejected(s.receive(old, net.now)) == [RejectReason.UNEXPECTED]  # nor outside a handshake


def test_a_forged_or_tampered_admit_is_refused() -> None:
    """Made with another key (anyone can sign), or the author's with a byte changed: BAD_SIGNATURE, nothing
    ends.  The frame is well formed and names the outstanding request: only the signature stands in the way."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [own] = s.branch_ids()
    _to_await_grant(net, s)
    [request] = s._requests
    forged = encode_frame(Admit(net.author.channel, request, own, 0), b"", ident(99).sign).raw
    genuine = encode_frame(Admit(net.author.channel, request, own, 0), b"", net.author.identity.sign).raw
    tampered = bytearray(genuine)
    tampered[genuine.index(own)] ^= 0x01  # another branch id, the author's signature kept
    for frame in (forged, bytes(tampered)):
        events = s.receive(frame, net.now)
        assert _rejected(events) == [RejectReason.BAD_SIGNATURE] and not _subscribed(events)
        assert s.state.value == "await-grant"
    assert [e.branch for e in _subscribed(s.receive(genuine, net.now))] == [own]  # (the test's own control)


def test_an_admit_of_another_channel_is_refused_as_foreign() -> None:
    """The same author runs a second channel: an ADMIT of it naming our request (signed by the same key),
    relayed here, is another channel's."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [own] = s.branch_ids()
    _to_await_grant(net, s)
    other = AuthorCore(net.author.identity, "another-channel", AllowList.of([ident(10).did]), rng=seeded_rng(5))
    relayed = encode_frame(Admit(other.channel, s._requests[-1], own, 0), b"", net.author.identity.sign).raw
    events = s.receive(relayed, net.now)
    assert _rejected(events) == [RejectReason.FOREIGN_CHANNEL] and not _subscribed(events)
    assert s.state.value == "await-grant"


def test_an_admit_relayed_to_another_member_does_not_subscribe_it() -> None:
    """An on-path relay hands two members the same CHALLENGE (its own HELLO's).  The author admits the first
    SUBSCRIBE (ADMIT naming that request and member A's branch) and refuses the second (the nonce is used).  The
    relay gives B A's ADMIT: genuine signature, B's nonce -- but it names A's request, not B's (nor does B hold
    such a branch: its GRANT is sealed to A), so B is not subscribed, and the refusal then tells it to ask
    again."""
    net = Net.make(n_subs=2)
    a, b = net.subs["s0"], net.subs["s1"]
    relay = SubscriberCore(Identity.generate(), net.author.identity.did, net.author.channel)
    relay.hello()
    challenge_frames: list[bytes] = []
    for o in relay.data_to_send():
        net.author.receive(o.data, net.now, "relay")
        challenge_frames += [x.data for x in net.author.data_to_send()]
    subscribes = {}
    for name, s in (("s0", a), ("s1", b)):
        s.hello()
        s.data_to_send()  # (its own HELLO dropped by the relay)
        for f in challenge_frames:
            s.receive(f, net.now)
        subscribes[name] = [o.data for o in s.data_to_send()]
    assert a._requests != b._requests  # (one challenge, two requests)
    answers: dict[str, list[bytes]] = {}
    for name in ("s0", "s1"):
        answers[name] = []
        for d in subscribes[name]:
            net.author.receive(d, net.now, name)
            net.author.take_changes()
            answers[name] += [o.data for o in net.author.data_to_send()]
    assert [decode_frame(d).kind for d in answers["s0"]] == [Kind.GRANT, Kind.ADMIT]
    assert [decode_frame(d).kind for d in answers["s1"]] == [Kind.REFUSE]
    a_admit = answers["s0"][1]
    for d in answers["s0"]:  # everything A was sent, shown to B too
        events = b.receive(d, net.now)
        assert not _subscribed(events)
    assert b.state.value == "await-grant" and b.branch_ids() == []
    events = b.receive(answers["s1"][0], net.now)  # its own answer: refused (the challenge was used)
    assert b.state.value == "refused" and not _subscribed(events)
    assert [e.branch for e in _subscribed([e for d in answers["s0"] for e in a.receive(d, net.now)])] \
        == [decode_frame(a_admit).head.branch]


def test_an_admit_that_overtakes_its_grant_completes_when_the_grant_is_applied() -> None:
    """Reordered on the way: the ADMIT arrives first.  The handshake ends once the GRANT it names is applied,
    once; a copy of the ADMIT afterwards ends nothing more."""
    net = Net.make(n_subs=1)
    s = net.subs["s0"]
    subscribe = _to_await_grant(net, s)
    answer: list[bytes] = []
    for d in subscribe:
        net.author.receive(d, net.now, "s0")
        net.author.take_changes()
        answer += [o.data for o in net.author.data_to_send()]
    grant, admit = answer
    assert decode_frame(admit).kind is Kind.ADMIT
    events = s.receive(admit, net.now)
    assert not _subscribed(events) and not _rejected(events) and s.state.value == "await-grant"
    events = s.receive(grant, net.now)
    [done] = _subscribed(events)
    assert done.branch == decode_frame(admit).head.branch and s.state.value == "subscribed"
    assert _rejected(s.receive(admit, net.now)) == [RejectReason.UNEXPECTED]


def test_answers_slower_than_the_hello_retry_still_complete_the_handshake() -> None:
    """The round trip takes longer than the retry interval (a starved host, a slow path): every answer arrives
    after the next retry's CHALLENGE made a new request.  The first version of ADMIT took only the newest
    request's answer, so such a handshake never completed (the GRANT copy that answered it before was accepted
    late).  Every request of the attempt still counts -- for a new subscriber and for a re-subscription."""
    net = Net.make(n_subs=1)
    s = net.subs["s0"]
    for attempt in ("first", "re-subscription", "re-subscription"):
        s.hello()
        for a in _author_answers(net, s):  # ANNOUNCE + CHALLENGE
            s.receive(a, net.now)
        late: list[bytes] = []
        for _ in range(3):  # each answer is still on its way when the next retry's CHALLENGE arrives
            late += _author_answers(net, s)  # (this SUBSCRIBE's GRANT + ADMIT, held back)
            s.hello(retry=True)
            for a in _author_answers(net, s):
                s.receive(a, net.now)
            assert s.state.value == "await-grant"
        events = [e for a in late for e in s.receive(a, net.now)]
        assert len(_subscribed(events)) == 1 and s.state.value == "subscribed", attempt
        assert _rejected(events) == [RejectReason.UNEXPECTED] * 2  # (the later copies of the answer)
    assert len(net.author.branch_ids()) == 1


def test_a_relay_replaying_an_old_challenge_and_its_admit_cannot_complete_a_new_attempt() -> None:
    """An on-path relay recorded a whole handshake.  In a later attempt (a new credential, say) it drops the
    HELLO, replays the old CHALLENGE, drops the SUBSCRIBE and replays the old ADMIT: with a nonce binding that
    completed the handshake without the author ever seeing the request.  The ADMIT names the SUBSCRIBE's hash,
    and each SUBSCRIBE is sealed afresh: the old one names a request this attempt never made."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    recorded = {decode_frame(d).kind: d for who, d in net.wire if who == "author"}
    s.hello(b"")
    s.data_to_send()  # the HELLO, dropped
    s.receive(recorded[Kind.CHALLENGE], net.now)
    assert s.state.value == "await-grant"
    s.data_to_send()  # the SUBSCRIBE, dropped: the author never sees this attempt
    events = s.receive(recorded[Kind.ADMIT], net.now)
    assert _rejected(events) == [RejectReason.UNEXPECTED] and not _subscribed(events)
    assert s.state.value == "await-grant"


def test_a_member_several_rekeys_behind_completes_a_resubscription_by_itself() -> None:
    """A member that missed two re-keys of its own branch re-subscribes with no grant sync outstanding: the
    author's answer (its current GRANT, epoch 2) does not extend the epoch it holds, so it waited for a
    periodic sync.  The ADMIT naming epoch 2 makes it ask for the re-keys at once; it completes when they come."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [own] = s.branch_ids()
    _offline_rekeys(net, own)
    net.now += 5_000
    s.hello()
    events = _exchange(net, s)
    assert [(e.branch, e.epoch) for e in _subscribed(events)] == [(own, 2)] and s.state.value == "subscribed"


def test_a_relay_cannot_get_a_members_request_refused_with_a_subscribe_of_its_own() -> None:
    """A CHALLENGE's nonce, expiry and MAC travel in clear: an on-path relay can put a member's challenge into a
    SUBSCRIBE of its own.  With a REFUSE naming the nonce, the author's refusal of that (an unlisted DID: 15;
    a bad proof: 11) ended the member's attempt as refused -- a false verdict, where dropping frames only times
    out.  The REFUSE names the relay's request: the member ignores it, and its own request is answered on its
    merits (here BAD_CHALLENGE, the nonce being used, which subscribe() answers with a fresh challenge; or
    admitted, after a bad proof, which does not use the nonce)."""
    for bad_proof in (False, True):
        net = Net.make(n_subs=1)
        s = net.subs["s0"]
        s.hello()
        answers = _author_answers(net, s)  # ANNOUNCE + CHALLENGE
        for a in answers:
            s.receive(a, net.now)
        mine = [o.data for o in s.data_to_send()]  # the member's SUBSCRIBE, held by the relay
        relay = SubscriberCore(Identity.generate(), net.author.identity.did, net.author.channel)
        relay.hello()
        relay.data_to_send()
        for a in answers:
            relay.receive(a, net.now)
        [forged] = [o.data for o in relay.data_to_send()]
        if bad_proof:
            ch = next(decode_frame(a).head for a in answers if decode_frame(a).kind is Kind.CHALLENGE)
            secret = SubscribeSecret(relay.identity.sign_public, ch.nonce, ch.expires_ms, ch.mac, b"", b"\x00" * 64)
            forged = encode_frame(Subscribe(net.author.channel),
                                  _crypto.seal(net.author.identity.kx_public, encode_subscribe_secret(secret))).raw
        net.author.receive(forged, net.now, "relay")
        net.author.take_changes()
        [refusal] = [o.data for o in net.author.data_to_send()]
        assert decode_frame(refusal).head.reason == (11 if bad_proof else 15)
        events = s.receive(refusal, net.now)
        assert _rejected(events) == [RejectReason.UNEXPECTED] and s.state.value == "await-grant"
        for d in mine:
            net.author.receive(d, net.now, "s0")
        net.author.take_changes()
        events = [e for o in net.author.data_to_send() for e in s.receive(o.data, net.now)]
        if bad_proof:
            assert len(_subscribed(events)) == 1 and s.state.value == "subscribed"
        else:
            assert [e.reason for e in events if isinstance(e, Refused)] == [RejectReason.BAD_CHALLENGE]


def _left_unheard() -> tuple[Net, bytes, bytes]:
    """s0 subscribed, then left its branch (closed on its side at once); its UNSUBSCRIBE is lost on the way.
    Returns (the net, the branch, the lost frame)."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    s = net.subs["s0"]
    s.unsubscribe(b0)
    s.take_changes()
    (lost,) = [o.data for o in s.data_to_send()]
    return net, b0, lost


def test_a_lost_unsubscribe_is_sent_again_when_the_author_answers_as_if_the_branch_were_open() -> None:
    """A member leaves (closed on its side at once) and the UNSUBSCRIBE is lost: the author keeps the branch open
    and answers the member's next subscription with that branch's GRANT and ADMIT, which the member refuses
    (CLOSED_BRANCH) -- every retry alike, had nothing repaired it.  An authentic GRANT or ADMIT of a branch it
    left makes the member send its UNSUBSCRIBE again: the author closes the branch, and the next subscription
    opens a new one."""
    from streams._state import BranchState
    from streams.events import BranchClosed

    net, b0, lost = _left_unheard()
    start = len(net.events["author"])
    ev = net.subscribe("s0")  # answered as for an open branch: its GRANT (which re-sends the UNSUBSCRIBE), ADMIT
    assert _rejected(ev) == [RejectReason.CLOSED_BRANCH] * 2 and not _subscribed(ev)
    assert net.author.branch_state(b0) is BranchState.CLOSED
    assert [e.by for e in net.events["author"][start:] if isinstance(e, BranchClosed)] == ["unsubscribe"]
    assert [o for who, o in net.wire if who == "s0"].count(lost) == 1  # the same frame, deterministic
    (sub,) = _subscribed(net.subscribe("s0"))
    assert sub.branch != b0 and net.author.branch_of(ident(10).did) == sub.branch


def test_only_authentic_author_frames_make_a_member_leave_again_at_most_once_an_interval() -> None:
    """What sends a lost UNSUBSCRIBE again is the author's signed GRANT or ADMIT of the branch, no forgery; and a
    relay replaying a recorded GRANT gets one UNSUBSCRIBE per ``grant_sync_interval_ms`` per branch, no more."""
    net, _, _ = _left_unheard()
    s = net.subs["s0"]
    grant = next(d for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.GRANT)

    def sent(now: int, frame: bytes) -> list[Kind]:
        ev = s.receive(frame, now)
        assert _rejected(ev), ev
        return [decode_frame(o.data).kind for o in s.data_to_send()]

    tampered = bytearray(grant)
    tampered[-1] ^= 1
    assert sent(net.now, bytes(tampered)) == []  # BAD_SIGNATURE
    assert sent(net.now, grant) == [Kind.UNSUBSCRIBE]
    assert sent(net.now, grant) == []
    assert sent(net.now + s.config.grant_sync_interval_ms - 1, grant) == []
    assert sent(net.now + s.config.grant_sync_interval_ms, grant) == [Kind.UNSUBSCRIBE]


def test_the_admit_alone_sends_a_lost_unsubscribe_again() -> None:
    """The re-subscription's GRANT lost too: its ADMIT, signed and naming our request, is enough (it names the
    grant we hold), and the next subscription opens a new branch."""
    net, b0, _ = _left_unheard()
    s = net.subs["s0"]
    (request,) = _to_await_grant(net, s)
    net.author.receive(request, net.now, "s0")
    net.author.take_changes()
    answers = [decode_frame(o.data) for o in net.author.data_to_send()]
    assert [f.kind for f in answers] == [Kind.GRANT, Kind.ADMIT]
    assert _rejected(s.receive(answers[1].raw, net.now)) == [RejectReason.CLOSED_BRANCH]
    (unsub,) = [o.data for o in s.data_to_send()]
    assert decode_frame(unsub).kind is Kind.UNSUBSCRIBE
    net.author.receive(unsub, net.now, "s0")
    (sub,) = _subscribed(net.subscribe("s0"))
    assert sub.branch != b0
