"""Grant sync (SPEC 9.5), two cores wired without sockets: a member that missed re-keys asks for the grants after
its epoch and gets exactly those; old grants replayed change nothing; nobody else obtains grants by asking."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import _crypto
from streams._state import BranchState
from streams.core import CoreConfig, Outgoing, SubscriberCore, _hint, _hint_key, _legacy_hint
from streams.errors import LocalProtocolError
from streams.events import (
    BranchClosed,
    FetchRequested,
    GapDetected,
    Granted,
    MessageReceived,
    Rejected,
    RejectReason,
    Subscribed,
)
from streams.identity import Identity
from streams.wire import (
    SESSION_LEN,
    Fetch,
    Grant,
    GrantEntry,
    GrantSecret,
    Kind,
    Permission,
    decode_frame,
    decode_grant_body,
    decode_grant_key,
    decode_grant_shared,
    encode_frame,
    encode_grant_body,
    encode_grant_entries,
    encode_grant_secret,
)
from tests.corenet import Net, ident


def _kinds(outs: list[Outgoing]) -> list[Kind]:
    return [decode_frame(o.data).kind for o in outs]


def _offline_rekeys(net: Net, branch: bytes) -> list[bytes]:
    """Two re-keys of ``branch`` whose frames reach nobody (the subscriber is offline): the grant frames."""
    grants = []
    for perm in (Permission.READ, Permission.READ_WRITE):
        net.author.set_permission(branch, perm)
        net.author.take_changes()
        grants += [o.data for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.GRANT]
    assert [decode_frame(g).head.epoch for g in grants] == [1, 2]
    return grants


def _sync(net: Net, name: str, branch: bytes, after: int) -> list[Outgoing]:
    """``name`` asks the author for the grants of ``branch`` after epoch ``after``, past the author's
    grant_sync_interval_ms since its last answer; the author's answers."""
    net.now += 1000
    s = net.subs[name]
    me = s.branch_info(branch)
    fetch = Fetch(net.author.channel, branch, 0, 0, after, me[3].index(s.identity.did))
    net.author.receive(encode_frame(fetch, b"", s.identity.sign).raw, net.now, name)
    net.author.take_changes()
    return net.author.data_to_send()


def test_a_member_behind_by_two_rekeys_gets_both_grants_in_order_and_nothing_it_has() -> None:
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    _offline_rekeys(net, branch)
    assert net.subs["s0"].branch_info(branch)[0] == 0
    # What a restart sends: the grant sync first, then the chains' catch-up.
    net.now += 1000
    net.subs["s0"].catch_up()
    net.pump_sub("s0")
    assert [e.epoch for e in net.events["s0"] if isinstance(e, Granted)][-2:] == [1, 2]
    assert net.subs["s0"].branch_info(branch)[:2] == (2, Permission.READ_WRITE)
    # Asked again from epoch 1: only the epoch-2 grant; from epoch 2: nothing newer, only the current grant as
    # the answer (SPEC 9.5: the author always answers on a member's own branch).
    for after in (1, 2):
        assert [decode_frame(o.data).head.epoch for o in _sync(net, "s0", branch, after)] == [2]


def test_old_grants_replayed_change_nothing_and_an_altered_one_is_rejected() -> None:
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    genesis = [d for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.GRANT][-1]
    grants = _offline_rekeys(net, branch)
    for g in grants:
        net.to_sub("s0", g)
    s0 = net.subs["s0"]
    assert s0.branch_info(branch)[0] == 2
    before = len(net.events["s0"])
    for old in (genesis, grants[0]):  # authentic, older than what it holds: silently nothing
        assert net.to_sub("s0", old) == []
    assert s0.branch_info(branch)[:2] == (2, Permission.READ_WRITE) and len(net.events["s0"]) == before
    tampered = bytearray(grants[0])
    tampered[-70] ^= 1  # inside the sealed entries: the author's signature no longer covers it
    ev = net.to_sub("s0", bytes(tampered))
    assert [e.reason for e in ev if isinstance(e, Rejected)] in ([RejectReason.BAD_SIGNATURE],
                                                                  [RejectReason.MALFORMED])
    assert s0.branch_info(branch)[0] == 2


def test_a_grant_sync_replayed_on_one_connection_is_answered_once_per_interval() -> None:
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [branch] = net.subs["s0"].branch_ids()
    _offline_rekeys(net, branch)
    s0 = net.subs["s0"]
    raw = encode_frame(Fetch(net.author.channel, branch, 0, 0, 0, 1), b"", s0.identity.sign).raw
    net.now += 1000

    def answer(peer: str) -> list[Kind]:
        net.author.receive(raw, net.now, peer)
        net.author.take_changes()
        return _kinds(net.author.data_to_send())

    assert answer("s0") == [Kind.GRANT, Kind.GRANT]
    for _ in range(5):  # replayed at once, on that connection: nothing (a signature check each)
        assert answer("s0") == []
    assert answer("relay") == [Kind.GRANT, Kind.GRANT]  # another connection (a reconnect is one) is answered
    net.now += 1000
    assert answer("s0") == [Kind.GRANT, Kind.GRANT]


def test_only_members_get_grants_by_asking() -> None:
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    [b0] = net.subs["s0"].branch_ids()
    _offline_rekeys(net, b0)
    # s1 signs a grant sync for s0's branch, claiming s0's member index: the signature is not s0's.
    fetch = Fetch(net.author.channel, b0, 0, 0, 0, 1)
    ev = net.author.receive(encode_frame(fetch, b"", ident(11).sign).raw, net.now, "s1")
    assert [e.reason for e in ev if isinstance(e, Rejected)] == [RejectReason.BAD_SIGNATURE]
    # ... or claiming an index that is not a member of that branch.
    fetch = Fetch(net.author.channel, b0, 0, 0, 0, 2)
    ev = net.author.receive(encode_frame(fetch, b"", ident(11).sign).raw, net.now, "s1")
    assert [e.reason for e in ev if isinstance(e, Rejected)] == [RejectReason.NOT_MEMBER]
    net.author.take_changes()
    assert net.author.data_to_send() == []


def test_a_removed_group_member_gets_no_later_grant_and_a_revoked_member_gets_the_revoke() -> None:
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    g = net.author.open_group([ident(10).public, ident(11).public])
    net.pump_author()
    net.author.remove_member(g, ident(11).did)
    net.pump_author()
    assert net.subs["s0"].branch_info(g)[0] == 1
    net.now += net.author.config.copy_window_ms  # (not a copy of s1's own grant sync of the re-key by then)
    fetch = Fetch(net.author.channel, g, 0, 0, 0, 2)  # s1 was member 2 of the group
    ev = net.author.receive(encode_frame(fetch, b"", ident(11).sign).raw, net.now, "s1")
    assert ev == []  # not a rejection: a removed member asking is answered (it was told live already here)
    net.author.take_changes()
    assert net.author.data_to_send() == []  # (its own grant sync of the re-key was answered within the interval)
    assert net.subs["s1"].branch_info(g)[2] is BranchState.CLOSED
    # A revoked branch: a member asking (it was offline) is told, with the author's signed REVOKE.
    [b0] = [b for b in net.subs["s0"].branch_ids() if b != g]
    net.author.revoke(b0)
    net.author.take_changes()
    net.author.data_to_send()  # lost: s0 is offline
    outs = _sync(net, "s0", b0, 0)
    assert _kinds(outs) == [Kind.REVOKE]
    net.deliver_author_out(outs)
    assert any(isinstance(e, BranchClosed) and e.branch == b0 for e in net.events["s0"])
    assert net.subs["s0"].branch_info(b0)[2].value != "open"


def test_owner_of_and_permission_of_answer_for_own_branches_and_no_one_for_a_group_even_of_one() -> None:
    """``owner_of`` (the inverse of ``branch_of``) answers from the branch itself: a group of one member has no
    owner although it looks like an own branch (two members), and a revoked own branch keeps its owner (the CLI
    names who was cut off by it); an unknown branch has none."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    did = ident(10).did
    own = net.author.branch_of(did)
    assert own is not None and net.author.owner_of(own) == did
    g = net.author.open_group([ident(10).public])
    net.pump_author()
    assert len(net.author.branch_info(g)[3]) == len(net.author.branch_info(own)[3]) == 2
    assert net.author.owner_of(g) is None
    assert net.author.permission_of(own) is Permission.READ_WRITE and net.author.permission_of(g) is None
    net.author.set_permission(own, Permission.READ)
    assert net.author.permission_of(own) is Permission.READ
    net.author.revoke(own)
    assert net.author.branch_of(did) is None and net.author.owner_of(own) == did
    assert net.author.owner_of(bytes(16)) is None


def _away_and_removed() -> tuple[Net, bytes, list[bytes]]:
    """s0, s1 and s2 in a group; s1 away while the author removes it and then re-keys the group once more
    (removing s2); s0 gets everything.  (net, the group, the frames s1 missed)."""
    net = Net.make(n_subs=3)
    for name in ("s0", "s1", "s2"):
        net.subscribe(name)
    g = net.author.open_group([ident(10).public, ident(11).public, ident(12).public])
    net.pump_author()
    assert net.subs["s1"].branch_info(g)[0] == 0
    missed = []
    for did in (ident(11).did, ident(12).did):
        net.author.remove_member(g, did)
        net.author.take_changes()
        for o in net.author.data_to_send():
            missed.append(o.data)
            net.to_sub("s0", o.data)
    assert net.subs["s0"].branch_info(g)[0] == 2
    return net, g, missed


def test_a_member_removed_while_away_is_told_when_it_asks_and_is_not_reported_as_an_attack() -> None:
    """A member removed from a group while it was away used to get no answer: every FETCH of it was a NOT_MEMBER
    rejection on the author (on `serve`, rejections from one source are what an attack looks like), and it kept
    the group open and asking for good.  Now the author answers its grant sync with the grants from its epoch
    through the one that removed it (not the later ones): it closes the group, "removed"."""
    net, g, _ = _away_and_removed()
    outs = _sync(net, "s1", g, 0)
    assert [e for e in net.events["author"] if isinstance(e, Rejected)] == []
    frames = [decode_frame(o.data) for o in outs]
    assert [(f.kind, f.head.epoch) for f in frames] == [(Kind.GRANT, 1)]  # not epoch 2's
    events = [e for o in outs for e in net.to_sub("s1", o.data)]
    assert [e for e in events if isinstance(e, BranchClosed)] == [BranchClosed(g, "removed", 0)]
    assert net.subs["s1"].branch_info(g)[2] is BranchState.CLOSED
    # Asked again on the same connection within the interval: nothing (as grant syncs are answered).
    fetch = Fetch(net.author.channel, g, 0, 0, 0, 2)
    cfg = net.author.config
    later = net.now + min(cfg.copy_window_ms, cfg.fetch_retry_ms // 2, cfg.grant_sync_interval_ms // 2) + 1
    assert later < net.now + cfg.grant_sync_interval_ms  # (past the copy window, inside the interval)
    assert net.author.receive(encode_frame(fetch, b"", ident(11).sign).raw, later, "s1") == []
    net.author.take_changes()
    assert net.author.data_to_send() == []


def test_a_removed_members_catch_up_fetch_is_answered_with_its_removal_and_a_forged_one_is_refused() -> None:
    """Any FETCH of a removed member (its catch-up of the author's chain, say) gets the grant that removed it;
    one signed by another key in its name is a BAD_SIGNATURE, and one from an index that never was a member
    stays NOT_MEMBER."""
    net, g, _ = _away_and_removed()
    net.now += 10_000
    catch_up = Fetch(net.author.channel, g, 0, 1, 100, 2)  # s1 was member 2
    assert net.author.receive(encode_frame(catch_up, b"", ident(11).sign).raw, net.now, "s1") == []
    net.author.take_changes()
    [told] = net.author.data_to_send()
    assert decode_frame(told.data).head.epoch == 1
    forged = net.author.receive(encode_frame(catch_up, b"", ident(10).sign).raw, net.now + 5000, "x")
    assert [e.reason for e in forged if isinstance(e, Rejected)] == [RejectReason.BAD_SIGNATURE]
    never = Fetch(net.author.channel, g, 0, 0, 0, 9)
    stranger = net.author.receive(encode_frame(never, b"", ident(11).sign).raw, net.now + 5000, "y")
    assert [e.reason for e in stranger if isinstance(e, Rejected)] == [RejectReason.NOT_MEMBER]
    net.author.take_changes()
    assert net.author.data_to_send() == []


def test_a_removed_members_fetch_replayed_on_another_connection_is_refused_before_anything_is_sent() -> None:
    """With sessions, a FETCH is bound to its connection (SPEC 8.9): a removed member's too.  It used to be
    answered on any connection, so a recorded one brought its grants (O(members^2) bytes each) again on every
    connection a replayer opened."""
    net, g, _ = _away_and_removed()
    sessions: dict[object, bytes] = {}
    net.author.session_of = lambda peer: sessions.setdefault(peer, bytes([len(sessions) + 1]) * SESSION_LEN)
    recorded = encode_frame(Fetch(net.author.channel, g, 0, 0, 0, 2), net.author.session_of("s1"),
                            ident(11).sign).raw
    net.now += net.author.config.grant_sync_interval_ms  # (past s1's own grant syncs as a member)
    for k in range(3):
        ev = net.author.receive(recorded, net.now + k, f"replayer-{k}")
        assert [e.reason for e in ev if isinstance(e, Rejected)] == [RejectReason.REPLAY]
    net.author.take_changes()
    assert net.author.data_to_send() == []
    assert net.author.receive(recorded, net.now, "s1") == []  # on its own connection: told
    net.author.take_changes()
    assert [decode_frame(o.data).head.epoch for o in net.author.data_to_send()] == [1]


def test_a_removed_member_several_rekeys_behind_is_told_even_after_its_catch_up_fetch_took_the_slot() -> None:
    """A catch-up FETCH (no epoch named) is answered with the removing grant alone, which a member several
    re-keys behind cannot apply; its grant sync right after, naming its epoch, must still be answered in full
    (it used to wait out the interval: the slot was taken)."""
    net = Net.make(n_subs=4)
    for name in ("s0", "s1", "s2", "s3"):
        net.subscribe(name)
    g = net.author.open_group([ident(10 + i).public for i in range(4)])
    net.pump_author()
    for who in (12, 13, 11):  # s1 misses the re-keys that remove s2 and s3 (epochs 1, 2), then its own (3)
        net.author.remove_member(g, ident(who).did)
        net.author.take_changes()
        for o in net.author.data_to_send():
            net.to_sub("s0", o.data)
    assert net.author.branch_info(g)[0] == 3 and net.subs["s1"].branch_info(g)[0] == 0
    net.now += net.author.config.grant_sync_interval_ms  # (past s1's own grant syncs as a member)
    catch_up = Fetch(net.author.channel, g, 0, 1, 100, 2)
    assert net.author.receive(encode_frame(catch_up, b"", ident(11).sign).raw, net.now, "s1") == []
    net.author.take_changes()
    [alone] = net.author.data_to_send()
    assert decode_frame(alone.data).head.epoch == 3
    # s1 cannot apply it yet (its entry is its removal, three epochs ahead): dropped, without an event.
    assert net.subs["s1"].receive(alone.data, net.now) == []
    assert net.subs["s1"].branch_info(g)[2] is BranchState.OPEN
    sync = Fetch(net.author.channel, g, 0, 0, 0, 2)
    assert net.author.receive(encode_frame(sync, b"", ident(11).sign).raw, net.now + 300, "s1") == []
    net.author.take_changes()
    outs = net.author.data_to_send()
    assert [decode_frame(o.data).head.epoch for o in outs] == [1, 2, 3]
    for o in outs:
        net.to_sub("s1", o.data)
    assert net.subs["s1"].branch_info(g)[2] is BranchState.CLOSED


def test_a_forged_copy_of_the_revoke_that_closed_a_branch_is_still_reported() -> None:
    """The same REVOKE again is dropped without an event (it comes on two routes), but only if it is the
    author's: one forged with the fields an on-path relay can read is BAD_SIGNATURE."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [b0] = net.subs["s0"].branch_ids()
    net.author.revoke(b0)
    net.pump_author()
    assert net.subs["s0"].branch_info(b0)[2] is BranchState.CLOSED
    [genuine] = [d for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.REVOKE]
    assert net.to_sub("s0", genuine) == []
    forged = encode_frame(decode_frame(genuine).head, b"", ident(99).sign).raw
    ev = net.to_sub("s0", forged)
    assert [e.reason for e in ev if isinstance(e, Rejected)] == [RejectReason.BAD_SIGNATURE]


def test_the_last_member_removed_is_told_by_the_revoke_of_the_epoch_it_holds() -> None:
    """Removing a group's last member closes it.  The group used to be re-keyed first, so its REVOKE named an
    epoch the member never held and the member refused it (STALE_EPOCH), keeping the group open; and once the
    member was taken off the list, asking was a NOT_MEMBER rejection.  Now the member gets the REVOKE of its
    epoch, live or when it asks."""
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    g = net.author.open_group([ident(10).public])
    g2 = net.author.open_group([ident(11).public])
    net.pump_author()
    net.author.remove_member(g, ident(10).did)  # s0 is connected
    net.pump_author()
    assert net.subs["s0"].branch_info(g)[2] is BranchState.CLOSED
    assert [e for e in net.events["s0"] if isinstance(e, Rejected)] == []
    net.author.remove_member(g2, ident(11).did)  # s1 is away
    net.author.take_changes()
    net.author.data_to_send()
    outs = _sync(net, "s1", g2, 0)
    assert _kinds(outs) == [Kind.REVOKE]
    net.deliver_author_out(outs)
    assert net.subs["s1"].branch_info(g2)[2] is BranchState.CLOSED
    assert [e for e in net.events["author"] if isinstance(e, Rejected)] == []


def test_a_group_cannot_seat_a_did_twice() -> None:
    """A DID seated twice would keep one seat after remove_member, and with it every later key (THREATS 6)."""
    import pytest

    from streams.errors import LocalProtocolError

    net = Net.make()
    with pytest.raises(LocalProtocolError, match="distinct"):
        net.author.open_group([ident(10).public, ident(11).public, ident(11).public])
    g = net.author.open_group([ident(10).public, ident(11).public])
    net.author.remove_member(g, ident(11).did)
    assert net.author.branch_info(g)[3] == (ident(1).did, ident(10).did)


def _fetches(outs: list[Outgoing]) -> list[tuple[int, int]]:
    return [(f.head.from_seq, f.head.to_seq) for f in (decode_frame(o.data) for o in outs)
            if f.kind is Kind.FETCH and f.head.from_seq > 0]


def _answer_and_live(net: Net, b0: bytes, payloads: list[bytes]) -> tuple[list[Outgoing], dict[int, bytes]]:
    """s0 catches up: what the author sends back (its answer: for the test to drop, hold back or deliver), then
    the author publishes ``payloads`` on ``b0``: their PACKETs by seq, none delivered yet."""
    s = net.subs["s0"]
    s.catch_up(net.now)
    for o in s.data_to_send():
        net.author.receive(o.data, net.now, "s0")
    net.author.take_changes()
    answer = net.author.data_to_send()
    for payload in payloads:
        net.author.publish(b0, payload, net.now)
    net.author.take_changes()
    live = {decode_frame(o.data).head.seq: o.data for o in net.author.data_to_send()
            if decode_frame(o.data).kind is Kind.PACKET}
    return answer, live


def _three_alerts(delivered: bool) -> tuple[Net, SubscriberCore]:
    """s0, subscribed; the author publishes three alerts on its branch, which reach s0 only if ``delivered``."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    [b0] = net.subs["s0"].branch_ids()
    for i in range(3):
        net.author.publish(b0, b"alert %d" % i, net.now)
    if delivered:
        net.pump_author()
    else:
        net.author.take_changes()
        net.author.data_to_send()
    return net, net.subs["s0"]


def test_a_catch_up_nobody_answered_is_asked_again_a_few_times() -> None:
    """After a reconnect, a member asks each publisher for what follows its cursor; the answer (a HEAD notice,
    then the messages) tells it how far to go.  When that FETCH or its answer is lost, the member asks again
    after fetch_retry_ms -- twice, since a publisher with an empty chain never answers -- instead of waiting
    for the publisher's next HEAD refresh (ten seconds and more)."""
    net, s = _three_alerts(delivered=False)  # lost: s0 was away
    s.catch_up(net.now)
    assert _fetches(s.data_to_send()) == [(1, 1024)]  # lost on the way too
    retry = net.author.config.fetch_retry_ms
    sent = []
    for _ in range(4):
        net.now += retry
        s.handle_timer(net.now)
        sent.append(_fetches(s.data_to_send()))
    assert sent == [[(1, 1024)], [(1, 1024)], [], []]


def test_a_loss_after_the_head_that_answers_a_catch_up_is_reported_when_that_head_comes() -> None:
    """s0 holds the author's three messages and catches up.  A relay holds the author's answer (its HEAD: seq 3)
    back, drops the author's next message (4) and delivers the one after (5): held, not reported -- a catch-up
    window is out, and 4 may have been published while s0 was away.  The HEAD then comes: it says the author held
    3 when it answered, so 4 is no catch-up: it was lost on the way, and is reported now.  (It was never reported:
    the window was answered, and the fetch of 4, which the relay drops, went on in silence.)"""
    net, s = _three_alerts(delivered=True)
    [b0] = s.branch_ids()
    held_back, live = _answer_and_live(net, b0, [b"lost", b"held"])
    assert [decode_frame(o.data).head.seq for o in held_back if decode_frame(o.data).kind is Kind.HEAD] == [3]
    assert sorted(live) == [4, 5]
    assert [e for e in s.receive(live[5], net.now) if isinstance(e, (GapDetected, Rejected))] == []
    events = [e for o in held_back for e in s.receive(o.data, net.now)]
    assert [(e.branch, e.publisher, e.expected_seq, e.received_seq) for e in events
            if isinstance(e, GapDetected)] == [(b0, 0, 4, 5)]


def test_what_a_catch_up_kept_quiet_is_reported_when_the_fetch_after_its_answer_makes_no_progress() -> None:
    """s0 holds three messages and catches up; a relay drops the answer (the author's HEAD), and of the author's
    next three messages delivers 6 (held: the window is out, not reported), then 4 (in order: the window is
    answered, the chain goes on), and drops 5 and every fetch of it.  Nothing ever said 5 was missing; now it is
    reported -- once -- when the time the window may take is up (the fetch made no progress meanwhile)."""
    net, s = _three_alerts(delivered=True)
    [b0] = s.branch_ids()
    _, live = _answer_and_live(net, b0, [b"live %d" % i for i in range(3)])  # the answer dropped
    events = list(s.receive(live[6], net.now)) + list(s.receive(live[4], net.now))
    assert [e.seq for e in events if isinstance(e, MessageReceived)] == [4]
    assert [e for e in events if isinstance(e, GapDetected)] == []
    for _ in range(5):  # the fetches of 5 go out; the relay drops them
        net.now += s.config.fetch_retry_ms
        events += s.handle_timer(net.now) or []
        s.data_to_send()
    assert [(e.branch, e.publisher, e.expected_seq, e.received_seq) for e in events
            if isinstance(e, GapDetected)] == [(b0, 0, 5, 6)]


def test_the_authors_quiet_head_after_an_in_order_answer_does_not_explain_what_a_catch_up_deferred() -> None:
    """As above (the answer's HEAD dropped, 6 held and deferred, 4 answers the window in order, 5 and every fetch
    of it dropped), and then the author's HEAD notice of its chain -- the one it sends when the channel goes
    quiet after publishing, SPEC 14.3 item 4 -- reaches s0 (or a relay delivers it).  That HEAD answers no
    window (4 did): it says nothing of what the author held when s0 caught up.  It cleared the deferral as if
    it were the window's answer (its seq, 6, "explained" 5), and 5 was never reported; it is now, as without
    that HEAD."""
    net, s = _three_alerts(delivered=True)
    [b0] = s.branch_ids()
    _, live = _answer_and_live(net, b0, [b"live %d" % i for i in range(3)])  # the answer dropped
    net.author.head_notices()  # the channel went quiet: the author's HEAD of its chain
    [quiet_head] = [o.data for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.HEAD]
    assert decode_frame(quiet_head).head.seq == 6
    events = list(s.receive(live[6], net.now)) + list(s.receive(live[4], net.now))
    assert [e.seq for e in events if isinstance(e, MessageReceived)] == [4]
    events += s.receive(quiet_head, net.now)
    for _ in range(5):  # the fetches of 5 go out; the relay drops them
        net.now += s.config.fetch_retry_ms
        events += s.handle_timer(net.now)
        s.data_to_send()
    assert [(e.branch, e.publisher, e.expected_seq, e.received_seq) for e in events
            if isinstance(e, GapDetected)] == [(b0, 0, 5, 6)]


def test_a_relay_cannot_keep_what_a_catch_up_deferred_quiet_by_making_the_member_fetch_again() -> None:
    """As above, without the quiet HEAD: once 4 answered the window, what the window deferred (5) is reported
    when the fetch has made no progress for fetch_retry_ms.  A relay that replays the author's old HEAD (3: the
    window in flight is cut to it) and then delivers the author's next live frame (held: 5 is still missing, so
    the member sends a new FETCH) every half fetch_retry_ms makes the member fetch again and again -- which is
    no progress: 5 is still reported."""
    net, s = _three_alerts(delivered=True)
    [b0] = s.branch_ids()
    answer, live = _answer_and_live(net, b0, [b"live %d" % i for i in range(13)])
    [old_head] = [o.data for o in answer if decode_frame(o.data).kind is Kind.HEAD]
    assert decode_frame(old_head).head.seq == 3  # dropped now, replayed later
    events = list(s.receive(live[6], net.now)) + list(s.receive(live[4], net.now))
    assert [e.seq for e in events if isinstance(e, MessageReceived)] == [4]
    for seq in range(7, 17):
        net.now += s.config.fetch_retry_ms // 2
        events += s.receive(old_head, net.now)
        events += s.receive(live[seq], net.now)
        events += s.handle_timer(net.now)
        s.data_to_send()  # the relay drops the fetches
    assert [(e.branch, e.publisher, e.expected_seq, e.received_seq) for e in events
            if isinstance(e, GapDetected)] == [(b0, 0, 5, 6)]


def test_a_catch_up_answered_in_order_before_its_head_that_goes_on_steadily_reports_no_gap() -> None:
    """The other side of the test above: s0 is away while the author publishes 4..12, catches up, and gets the
    author's live 13 first (held, deferred: 4..12 may be history), then 4 -- a frame in order (say, in flight
    from before the catch-up) answers the window -- then the author's HEAD (12), which no longer explains the
    deferral, then 5..12 at a steady pace that takes longer than the deferral's time.  Nothing is lost and the
    fetch never stalls: no gap."""
    net, s = _three_alerts(delivered=True)
    [b0] = s.branch_ids()
    for i in range(9):
        net.author.publish(b0, b"away %d" % i, net.now)
    net.author.take_changes()
    logged = {f.head.seq: f.raw for f in (decode_frame(o.data) for o in net.author.data_to_send())
              if f.kind is Kind.PACKET}  # s0 is away; the author's log serves them
    s.catch_up(net.now)
    for o in s.data_to_send():
        net.author.receive(o.data, net.now, "s0")
    net.author.take_changes()
    answer = [decode_frame(o.data) for o in net.author.data_to_send()]
    net.author.publish(b0, b"live", net.now)
    net.author.take_changes()
    [live] = [o.data for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.PACKET]
    [head] = [f.raw for f in answer if f.kind is Kind.HEAD]
    assert decode_frame(head).head.seq == 12
    events = list(s.receive(live, net.now)) + list(s.receive(logged[4], net.now)) + list(s.receive(head, net.now))
    for seq in range(5, 13):
        net.now += s.config.fetch_retry_ms // 2
        events += s.handle_timer(net.now)
        s.data_to_send()
        events += s.receive(logged[seq], net.now)
    assert [e for e in events if isinstance(e, GapDetected)] == []
    assert [e.seq for e in events if isinstance(e, MessageReceived)] == list(range(4, 14))


def _away_then_caught_up() -> tuple[Net, SubscriberCore, bytes, bytes]:
    """``_three_alerts`` delivered; then three more published on s0's branch b0 while s0 is away; s0 catches up
    and the author answers: returns the net, s0, b0 and the answering HEAD (naming 6), not delivered."""
    net, s = _three_alerts(delivered=True)
    [b0] = s.branch_ids()
    for i in range(3):
        net.author.publish(b0, b"away %d" % i, net.now)
    net.author.take_changes()
    net.author.data_to_send()  # s0 is away
    s.catch_up(net.now)
    for o in s.data_to_send():
        net.author.receive(o.data, net.now, "s0")
    net.author.take_changes()
    [head] = [o.data for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.HEAD]
    return net, s, b0, head


def test_a_catch_up_whose_fetch_never_progresses_is_reported_at_last() -> None:
    """s0 holds three messages and is away while the author publishes three more; it catches up, and the author's
    answer names 6.  A relay delivers that HEAD and drops the messages and every later fetch answer (or the
    author's log is damaged at 4, which it then never serves, api._serve_fetch).  s0 knows 4..6 exist and cannot
    get them: THREATS 4 wants them fetched or reported.  They were asked for again every fetch_retry_ms, for
    good, and never reported -- a `tail --events` showed nothing.  Now what the answering HEAD names is deferred
    as a held frame's gap is: reported once the deferral's time is up and nothing came for fetch_retry_ms (SPEC
    10.1 step 7), and still fetched."""
    net, s, _, head = _away_then_caught_up()
    assert decode_frame(head).head.seq == 6
    events = list(s.receive(head, net.now))
    for _ in range(30):  # the fetches go out; the relay drops every answer
        net.now += s.config.fetch_retry_ms
        events += s.handle_timer(net.now)
        assert _fetches(s.data_to_send()) in ([], [(4, 6)])
    assert [(e.expected_seq, e.received_seq) for e in events if isinstance(e, GapDetected)] == [(4, 7)]


def test_what_a_catch_up_deferred_is_not_reported_again_once_a_later_head_reported_it() -> None:
    """s0 catches up; the author's answer names 6 (4..6 deferred, fetched as the catch-up) and a relay drops
    every fetch answer.  The author's next HEAD (7) reports 4..7 missing from s0's cursor -- which tells the
    deferred range too.  The deferral was still told when its time was up: a second, stale GapDetected (4, 7)
    after (4, 8), of messages already reported."""
    net, s, b0, head = _away_then_caught_up()
    events = list(s.receive(head, net.now))
    net.author.publish(b0, b"later", net.now)
    net.author.take_changes()
    net.author.data_to_send()  # dropped
    net.author.head_notices(True)
    [later] = [o.data for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.HEAD]
    assert decode_frame(later).head.seq == 7
    net.now += s.config.fetch_retry_ms // 2
    events += s.receive(later, net.now)
    for _ in range(10):  # the relay drops every fetch answer
        net.now += s.config.fetch_retry_ms
        events += s.handle_timer(net.now)
        s.data_to_send()
    assert [(e.expected_seq, e.received_seq) for e in events if isinstance(e, GapDetected)] == [(4, 8)]


def test_reconnects_a_relay_forces_do_not_keep_what_a_catch_up_deferred_quiet() -> None:
    """s0 holds three messages and catches up; a relay drops every answer, drops the author's next message (4) and
    delivers the one after (5): held, its gap deferred while the window is out.  The relay then cuts s0's
    connection every half fetch_retry_ms: each reconnect opened a fresh window (its retries and its progress
    time reset), so the gap was never reported.  It is now, once, (retries + 1) x fetch_retry_ms after it was
    first deferred, however often s0 reconnects."""
    net, s = _three_alerts(delivered=True)
    [b0] = s.branch_ids()
    s.catch_up(net.now)
    s.data_to_send()  # dropped
    for payload in (b"lost", b"held"):
        net.author.publish(b0, payload, net.now)
    net.author.take_changes()
    live = {decode_frame(o.data).head.seq: o.data for o in net.author.data_to_send()
            if decode_frame(o.data).kind is Kind.PACKET}
    events = list(s.receive(live[5], net.now))
    assert [e for e in events if isinstance(e, GapDetected)] == []
    for _ in range(20):
        net.now += s.config.fetch_retry_ms // 2
        s.catch_up(net.now)  # reconnected
        events += s.handle_timer(net.now) or []
        s.data_to_send()  # dropped
    assert [(e.branch, e.publisher, e.expected_seq, e.received_seq) for e in events
            if isinstance(e, GapDetected)] == [(b0, 0, 4, 5)]


def _answered_catch_up() -> tuple[Net, SubscriberCore]:
    """s0 holds the author's three messages, catches up (timed), and the author's HEAD notice (seq 3) answers:
    nothing more to fetch."""
    net, s = _three_alerts(delivered=True)
    s.catch_up(net.now)
    [fetch] = [o.data for o in s.data_to_send() if decode_frame(o.data).kind is Kind.FETCH
               and decode_frame(o.data).head.from_seq > 0]
    assert decode_frame(fetch).head.from_seq == 4
    net.to_author(fetch, "s0")
    return net, s


def test_a_catch_up_answered_is_not_asked_again() -> None:
    net, s = _answered_catch_up()
    for _ in range(3):
        net.now += net.author.config.fetch_retry_ms
        s.handle_timer(net.now)
        assert _fetches(s.data_to_send()) == []


def test_an_untimed_catch_up_after_an_answered_one_sends_nothing_more_at_the_next_tick() -> None:
    """catch_up() without a time behaves as before the retries existed, even after a timed one was answered."""
    net, s = _answered_catch_up()
    net.now += 5_000
    s.catch_up()
    assert _fetches(s.data_to_send()) == [(4, 1027)]
    net.now += 10
    s.handle_timer(net.now)
    assert _fetches(s.data_to_send()) == []


def _syncs(outs: list[Outgoing]) -> list[int]:
    """The grant syncs among ``outs`` (FETCHes from seq 0): the epoch each asks after."""
    frames = [decode_frame(o.data) for o in outs]
    return [f.head.to_seq for f in frames if f.kind is Kind.FETCH and f.head.from_seq == 0]


def _lost_sync_answer(net: Net, name: str) -> None:
    """``name`` is back and catches up; its grant sync reaches the author, whose answer is lost on the way."""
    s = net.subs[name]
    net.now += 1000
    s.catch_up(net.now)
    outs = s.data_to_send()
    assert len(_syncs(outs)) == len(s.branch_ids())
    for o in outs:
        net.author.receive(o.data, net.now, name)
    net.author.take_changes()
    net.author.data_to_send()  # lost


def test_a_grant_sync_whose_answer_was_lost_is_asked_again_and_the_rekeys_arrive() -> None:
    """A member back from being away asks for the grants it missed, and the answer (two re-keys) is lost.  It used
    to wait for its next reconnect: nothing else tells a write-only member, which reads no HEAD of the author's
    chain.  The author now answers every grant sync on a member's own branch (nothing newer: its current grant),
    so no answer means a loss: the member asks again after 1.5 x fetch_retry_ms (or the author's interval, if
    longer), and stops once answered."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [b0] = s.branch_ids()
    _offline_rekeys(net, b0)
    _lost_sync_answer(net, "s0")
    wait = max(s.config.fetch_retry_ms, s.config.grant_sync_interval_ms) * 3 // 2
    net.now += wait - 1
    s.handle_timer(net.now)
    assert _syncs(s.data_to_send()) == []  # not yet
    net.now += 1
    s.handle_timer(net.now)
    outs = s.data_to_send()
    assert _syncs(outs) == [0]
    for o in outs:
        net.to_author(o.data, "s0")
    assert s.branch_info(b0)[:2] == (2, Permission.READ_WRITE)
    for _ in range(3):
        net.now += wait
        s.handle_timer(net.now)
        assert _syncs(s.data_to_send()) == []


def test_a_group_opened_while_away_is_learned_after_a_lost_sync_answer() -> None:
    """A group's first grant goes along each member's own branch; a member away then learns of the group only
    from its grant sync of that branch.  That answer lost, it asks again and gets it."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    g = net.author.open_group([ident(10).public])
    net.author.take_changes()
    net.author.data_to_send()  # s0 is away
    _lost_sync_answer(net, "s0")
    assert g not in s.branch_ids()
    net.now += max(s.config.fetch_retry_ms, s.config.grant_sync_interval_ms) * 3 // 2
    s.handle_timer(net.now)
    for o in s.data_to_send():
        net.to_author(o.data, "s0")
    assert g in s.branch_ids()


def test_an_unanswered_grant_sync_is_asked_again_twice_and_an_answered_one_never() -> None:
    """With the author unreachable, a member asks twice more, then waits for what it always does (a reconnect, a
    HEAD naming a later epoch).  Its sync answered -- nothing newer, the current grant -- it asks nothing more, and
    that grant neither changes the branch nor reads as the answer to a subscription."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [b0] = s.branch_ids()
    _lost_sync_answer(net, "s0")
    wait = max(s.config.fetch_retry_ms, s.config.grant_sync_interval_ms) * 3 // 2
    sent = []
    for _ in range(4):
        net.now += wait
        s.handle_timer(net.now)
        sent.append(_syncs(s.data_to_send()))
    assert sent == [[0], [0], [], []]
    net.now += 1000
    s.catch_up(net.now)
    start = len(net.events["s0"])
    net.pump_sub("s0")  # answered: the current grant only
    assert [type(e) for e in net.events["s0"][start:]] == []
    assert s.branch_info(b0)[0] == 0
    for _ in range(3):
        net.now += wait
        s.handle_timer(net.now)
        assert _syncs(s.data_to_send()) == []


def test_a_branch_gone_quiet_is_fetched_again_at_the_forced_refresh_with_backoff() -> None:
    """Where FETCHes are bound, only a member's FETCHes (and chain frames) teach the author its route: ACK and
    HEAD are replayable.  A member whose catch-up FETCHes were all lost, on a connection that stays up, would
    never be routed again: so at a forced refresh that finds a branch quiet since the previous one it sends a
    bound FETCH of the author's chain from its cursor (answered by the author's HEAD) -- none where something
    came, and, while the branch stays quiet, at the 1st, 2nd, 4th, 8th ... quiet refresh only.  Without
    sessions (the in-memory hub) there is nothing to re-teach: it sends nothing."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [b0] = s.branch_ids()
    net.now += 10_000
    s.sync_quiet(net.now)
    assert s.data_to_send() == []  # no sessions
    session = b"\x5a" * SESSION_LEN
    net.author.session_of = lambda peer: session
    s.my_session = lambda: session
    net.author.publish(b0, b"alert", net.now)
    net.pump_author()  # heard
    sent, syncs = [], []
    for _ in range(10):
        net.now += 10_000
        s.handle_timer(net.now)  # as the driver does every tick: an unanswered window is given up
        s.sync_quiet(net.now)
        outs = s.data_to_send()
        assert all(f.body == session for f in map(decode_frame, (o.data for o in outs)) if f.kind is Kind.FETCH)
        sent.append(_fetches(outs))
        syncs.append(_syncs(outs))
    # heard at the first; quiet refreshes 1, 2, 4 and 8 ask (nothing answers here: the frames are dropped), and
    # the 4th refresh (of the branch, quiet or not) also asks for the grants: its answer would carry a group's
    # first grant lost on the way
    assert sent == [[], [(2, 1025)], [(2, 1025)], [], [(2, 1025)], [], [], [], [(2, 1025)], []]
    assert syncs == [[], [], [], [0], [], [], [], [], [], []]
    net.to_author(s.request_fetch(b0, 0, 2, 1025) or s.data_to_send()[0].data, "s0")  # answered: the HEAD
    net.now += 10_000
    s.sync_quiet(net.now)
    assert s.data_to_send() == []
    net.author.sync_quiet(net.now)  # a member's duty: the author sends nothing
    assert net.author.data_to_send() == []


def _member_of_a_group() -> tuple[Net, SubscriberCore, bytes, bytes]:
    """s0, subscribed, and a group of one (s0) opened and delivered: (net, s0, its own branch, the group)."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    g = net.author.open_group([ident(10).public])
    net.pump_author()
    [own] = [b for b in s.branch_ids() if b != g]
    return net, s, own, g


def test_a_known_grant_never_completes_a_resubscription_only_its_admit_does() -> None:
    """The current grant of a branch also answers grant syncs, and a group's first grant is re-sent along a
    member's own branch.  Neither may read as the answer to a re-subscription (a new credential would never reach
    the author, and ``subscribe()`` could return the group's id): only the ADMIT naming its request does."""
    net, s, own, g = _member_of_a_group()
    grants = {decode_frame(d).head.branch: d for who, d in net.wire
              if who == "author" and decode_frame(d).kind is Kind.GRANT}
    own_grant, group_grant = grants[own], grants[g]
    s.hello()  # a re-subscription starts
    s.data_to_send()  # (its HELLO on the way)
    for grant in (group_grant, own_grant):
        events = s.receive(grant, net.now)
        assert not [e for e in events if isinstance(e, (Granted, Subscribed))] and s.state.value != "subscribed"
    # Its own SUBSCRIBE answered (the grant the author re-sends, then ADMIT): complete.
    outs = _exchange_challenge(net, s)
    assert [e.branch for e in outs if isinstance(e, Subscribed)] == [own] and s.state.value == "subscribed"


def _author_answers(net: Net, s: SubscriberCore) -> list[bytes]:
    """Hand what ``s`` (as peer s0) queued to the author; return the author's answers, not delivered."""
    answers: list[bytes] = []
    for d in [o.data for o in s.data_to_send()]:
        net.author.receive(d, net.now, "s0")
        net.author.take_changes()
        answers += [o.data for o in net.author.data_to_send()]
    return answers


def _exchange_challenge(net: Net, s: SubscriberCore) -> list[object]:
    """Run the rest of a handshake by hand: HELLO -> ANNOUNCE + CHALLENGE -> SUBSCRIBE -> GRANT + ADMIT."""
    events: list[object] = []
    s.hello()
    for _ in range(3):
        for a in _author_answers(net, s):
            events += s.receive(a, net.now)
    return events


def test_grant_syncs_replayed_on_one_connection_get_one_answer_per_interval_and_group_grants_once() -> None:
    """A member that applied k missed re-keys asks after each new epoch: each higher ``to_seq`` is answered, but
    its groups' first grants (O(members^2) bytes each) go out once per interval, not k times; and a relay
    replaying the member's recorded syncs of lower epochs within the interval gets nothing more."""
    net, s, own, g = _member_of_a_group()
    _offline_rekeys(net, own)
    net.now += 1000
    s.catch_up(net.now)
    net.wire.clear()
    net.pump_sub("s0")  # the sync, its answer (two re-keys), the member's syncs after epochs 1 and 2
    assert s.branch_info(own)[0] == 2
    syncs = [d for who, d in net.wire if who == "s0" and decode_frame(d).kind is Kind.FETCH
             and decode_frame(d).head.from_seq == 0 and decode_frame(d).head.branch == own]
    assert sorted(decode_frame(d).head.to_seq for d in syncs) == [0, 1, 2]
    group_grants = [d for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.GRANT
                    and decode_frame(d).head.branch == g]
    assert len(group_grants) == 1
    net.now += 600  # past the copy window, within grant_sync_interval_ms
    for d in syncs:
        net.author.receive(d, net.now, "s0")
    net.author.take_changes()
    assert net.author.data_to_send() == []


def test_a_new_subscription_attempt_forgets_the_subscribe_an_abandoned_one_left_outstanding() -> None:
    """A ``subscribe()`` that timed out after its SUBSCRIBE went out leaves it outstanding.  The next attempt (a
    new credential, say) must not be completed by that SUBSCRIBE's late GRANT before its own SUBSCRIBE is sent:
    the author would never see the new one.  (A HELLO *retry* of the same attempt still accepts it: see
    tests/test_core.py.)"""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [own] = s.branch_ids()
    s.hello()  # a re-subscription whose answer (GRANT, ADMIT) is late
    for _ in range(2):
        answers = _author_answers(net, s)
        late = [a for a in answers if decode_frame(a).kind in (Kind.GRANT, Kind.ADMIT)]
        for a in answers:
            if decode_frame(a).kind not in (Kind.GRANT, Kind.ADMIT):
                s.receive(a, net.now)
    assert [decode_frame(a).kind for a in late] == [Kind.GRANT, Kind.ADMIT]
    assert decode_frame(late[1]).head.branch == own
    s.hello(b"")  # a new attempt
    s.data_to_send()
    events = [e for a in late for e in s.receive(a, net.now)]
    assert not [e for e in events if isinstance(e, Subscribed)] and s.state.value != "subscribed"
    assert [e.reason for e in events if isinstance(e, Rejected)] == [RejectReason.UNEXPECTED]  # the ADMIT


def test_a_group_opened_during_a_resubscription_is_applied_and_does_not_answer_it() -> None:
    """A group's first grant arriving while a re-subscription waits for its CHALLENGE is applied (the member
    joins the group) but does not complete the handshake: ``Subscriber.subscribe`` waits for ``Subscribed``, which
    only the ADMIT of its request gives (it used to return the group's id)."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [own] = s.branch_ids()
    s.hello()  # a re-subscription starts; its HELLO is on the way
    hello = [o.data for o in s.data_to_send()]
    g = net.author.open_group([ident(10).public])
    net.author.take_changes()
    group_grants = [o.data for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.GRANT]
    events = [e for d in group_grants for e in s.receive(d, net.now)]
    assert [e.branch for e in events if isinstance(e, Granted)] == [g]
    assert not [e for e in events if isinstance(e, Subscribed)]
    assert g in s.branch_ids() and s.state.value != "subscribed"
    for d in hello:
        net.author.receive(d, net.now, "s0")
    events = _exchange_challenge(net, s)
    assert [e.branch for e in events if isinstance(e, Subscribed)] == [own]
    assert s.state.value == "subscribed"


def _resubscribe_with_a_sync_out(net: Net, s: SubscriberCore) -> list[bytes]:
    """s0 starts a re-subscription (a new credential, say) and gets as far as AWAIT_GRANT; then, on a transport
    with sessions, its 4th forced refresh sends a grant sync of its own branch (queued, not delivered).  Returns
    its SUBSCRIBE, not delivered."""
    session = b"\x5a" * SESSION_LEN  # (before the HELLO: the challenge is bound to the session it was issued on)
    net.author.session_of = lambda peer: session
    s.my_session = lambda: session
    s.hello()
    for a in _author_answers(net, s):  # ANNOUNCE + CHALLENGE
        s.receive(a, net.now)
    assert s.state.value == "await-grant"
    subscribe = [o.data for o in s.data_to_send()]
    for _ in range(4):
        net.now += 10_000
        s.sync_quiet(net.now)
    return subscribe


def test_a_group_grant_never_answers_a_subscribe_outstanding_nor_does_a_quiet_refreshs_sync_answer() -> None:
    """With a re-subscription's SUBSCRIBE out (AWAIT_GRANT), a group opened or re-keyed meanwhile is applied but
    is not its answer (the author answers a SUBSCRIBE only with the member's own branch); nor is the current
    grant answering the grant sync of a forced refresh.  The real answer then completes it."""
    net, s, own, _ = _member_of_a_group()
    net.author.open_group([ident(10).public, ident(11).public])  # a second group, of two members
    net.author.take_changes()
    group_grants = [o.data for o in net.author.data_to_send() if decode_frame(o.data).kind is Kind.GRANT]
    subscribe = _resubscribe_with_a_sync_out(net, s)
    marker = _author_answers(net, s)
    # (with the first grants of its groups, then its own current grant, last)
    assert [decode_frame(m).head.branch for m in marker if decode_frame(m).kind is Kind.GRANT][-1] == own
    for d in group_grants + marker:
        assert not [e for e in s.receive(d, net.now) if isinstance(e, Subscribed)]
        assert s.state.value == "await-grant"
    for d in subscribe:
        net.author.receive(d, net.now, "s0")
    net.author.take_changes()
    events = [e for o in net.author.data_to_send() for e in s.receive(o.data, net.now)]
    assert [e.branch for e in events if isinstance(e, Subscribed)] == [own]
    assert s.state.value == "subscribed"


def test_a_rekey_answering_a_grant_sync_is_applied_but_does_not_answer_a_subscribe_outstanding() -> None:
    """SPEC 9.1: a grant that answers our grant sync is never the answer to a subscription -- a *new* grant
    included (a re-key the member missed, sent as the sync's answer), not only the current one.  It is applied;
    the author's ADMIT of the SUBSCRIBE then completes the handshake."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [own] = s.branch_ids()
    subscribe = _resubscribe_with_a_sync_out(net, s)
    net.author.set_permission(own, Permission.READ)  # a re-key whose GRANT never reaches the member
    net.author.take_changes()
    net.author.data_to_send()
    answers = _author_answers(net, s)
    assert [decode_frame(a).head.epoch for a in answers if decode_frame(a).kind is Kind.GRANT] == [1]
    events = [e for a in answers for e in s.receive(a, net.now)]
    assert [(e.branch, e.epoch) for e in events if isinstance(e, Granted)] == [(own, 1)]
    assert not [e for e in events if isinstance(e, Subscribed)]
    assert s.state.value == "await-grant" and s.branch_info(own)[0] == 1
    for d in subscribe:
        net.author.receive(d, net.now, "s0")
    net.author.take_changes()
    events = [e for o in net.author.data_to_send() for e in s.receive(o.data, net.now)]
    for a in _author_answers(net, s):  # (the member's sync after the new epoch, answered too)
        events += s.receive(a, net.now)
    assert [(e.branch, e.epoch) for e in events if isinstance(e, Subscribed)] == [(own, 1)]
    assert s.state.value == "subscribed"


def test_a_group_whose_grant_its_members_could_not_read_is_refused_before_anything_changes() -> None:
    """A group's GRANT grows with its members (SPEC 8.5), so with the default frame limit the bound is the one-byte
    member index: 255 members besides the author.  Under a frame limit its GRANT would not fit, members would drop
    it unread (FrameTooLarge) and the group would reach nobody: the author refuses to open it, and nothing
    changes."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    others = [Identity.from_seed(i.to_bytes(2, "big") * 16).public for i in range(300, 560)]
    before = net.author.branch_ids()
    with pytest.raises(LocalProtocolError, match="at most 255"):
        net.author.open_group([ident(10).public, *others[:255]])
    assert net.author.branch_ids() == before
    assert net.author.data_to_send() == [] and not net.author.take_changes()
    g = net.author.open_group([ident(10).public, *others[:254]])  # 255 members: it fits, and reaches s0
    net.pump_author()
    assert g in s.branch_ids() and len(s.branch_info(g)[3]) == 256

    small = Net.make(n_subs=1, config=CoreConfig(max_frame=16384))
    small.subscribe("s0")
    before = small.author.branch_ids()
    with pytest.raises(LocalProtocolError, match="frame limit"):
        small.author.open_group([ident(10).public, *others[:99]])
    assert small.author.branch_ids() == before
    assert small.author.data_to_send() == [] and not small.author.take_changes()


def test_a_group_grant_grows_with_its_members_not_their_square() -> None:
    """The member list and the heads are encrypted once; each member's entry seals only its key to them and its
    own chain keys (SPEC 8.5).  The first layout repeated the list in every entry: 160 members filled 1 MiB."""

    def grant_size(n: int) -> int:
        net = Net.make(n_subs=1)
        net.subscribe("s0")
        others = [Identity.from_seed(i.to_bytes(2, "big") * 16).public for i in range(300, 300 + n - 1)]
        g = net.author.open_group([ident(10).public, *others])
        frames = [o.data for o in net.author.data_to_send()]
        return max(len(d) for d in frames if decode_frame(d).kind is Kind.GRANT and decode_frame(d).head.branch == g)

    small, large = grant_size(50), grant_size(200)
    assert large < 5 * small  # four times the members: about four times the bytes (the first layout: sixteen)
    assert large < 200 * 250  # about 170 bytes per member (no heads at epoch 0)


def test_a_member_removed_from_a_group_closes_it_and_stops_asking_for_it() -> None:
    """The re-key that removes a member reaches it too (the group's routes still hold its connection), with no
    entry for it: it used to drop it as someone else's grant, keep the group open, and go on fetching from it
    (the author logging NOT_MEMBER rejections, a publish there saying 'no write permission').  The author's
    signed re-key extending the grant it holds, without it, closes the group on its side ('removed').  A forged
    one, or an old one replayed, changes nothing."""
    net = Net.make(n_subs=3)
    for name in ("s0", "s1", "s2"):
        net.subscribe(name)
    s0 = net.subs["s0"]
    g = net.author.open_group([ident(10).public, ident(11).public, ident(12).public])
    net.pump_author()
    first = next(d for who, d in net.wire if who == "author" and decode_frame(d).kind is Kind.GRANT
                 and decode_frame(d).head.branch == g)
    h = decode_frame(first).head
    entries = encode_grant_entries([GrantEntry(b"\x01" * 8, b"\x02" * 80)])  # (someone else's, by its hint)
    forged = encode_frame(Grant(h.channel, g, 1, decode_frame(first).hash, h.mode), entries, ident(99).sign).raw
    events = s0.receive(forged, net.now)
    assert [e.reason for e in events if isinstance(e, Rejected)] == [RejectReason.BAD_SIGNATURE]
    assert not [e for e in s0.receive(first, net.now) if isinstance(e, BranchClosed)]  # (an old one again)
    assert s0.branch_info(g)[2] is BranchState.OPEN
    net.author.remove_member(g, ident(11).did)  # someone else removed: s0 stays, re-keyed
    net.pump_author()
    assert s0.branch_info(g)[:3] == (1, Permission.READ, BranchState.OPEN)
    start = len(net.events["s0"])
    net.author.remove_member(g, ident(10).did)  # s0 removed
    net.pump_author()
    closed = [e for e in net.events["s0"][start:] if isinstance(e, BranchClosed)]
    assert [(e.branch, e.by) for e in closed] == [(g, "removed")]
    assert s0.branch_info(g)[2] is BranchState.CLOSED and net.subs["s2"].branch_info(g)[:3] == (
        2, Permission.READ, BranchState.OPEN)
    net.wire.clear()
    net.author.publish(g, b"for the others", net.now)  # (with its HEAD, on a transport that broadcasts)
    net.now += 60_000
    net.author.head_notices()
    net.pump_author()
    assert not [m for m in net.events["s0"][start:] if isinstance(m, MessageReceived)]
    s0.catch_up(net.now)  # a reconnect: its grant syncs and fetches
    net.pump_sub("s0")
    assert not [d for who, d in net.wire if who == "s0" and decode_frame(d).head.branch == g]
    assert not [e for e in net.events["author"] if isinstance(e, Rejected) and e.reason is RejectReason.NOT_MEMBER]


def test_a_revoked_members_next_publish_is_refused_as_closed_not_reported_as_a_gap() -> None:
    """A provider revoked while away (its REVOKE lost) publishes when it comes back: the author refused the
    packet as CLOSED_BRANCH, but the HEAD that follows it was taken as news of a gap (`streams serve` printed a
    `gap` event, and the author asked the revoked member for the message).  A HEAD of a closed branch is dropped
    (nothing to fetch there)."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s0 = net.subs["s0"]
    [b0] = s0.branch_ids()
    net.author.revoke(b0)
    net.author.take_changes()
    net.author.data_to_send()  # (the REVOKE is lost: s0 is away)
    s0.publish(b0, b"after the revocation", net.now)
    s0.head_notices(force=True)
    events = [e for o in s0.data_to_send() for e in net.author.receive(o.data, net.now, "s0")]
    assert [e.reason for e in events if isinstance(e, Rejected)] == [RejectReason.CLOSED_BRANCH]  # the packet
    assert not [e for e in events if isinstance(e, GapDetected)] and net.author.data_to_send() == []


def test_a_member_revoked_while_away_learns_it_at_catch_up_without_a_rejection() -> None:
    """The grant sync's answer for a closed branch is its REVOKE, then the branch's HEAD: once the REVOKE is
    applied the HEAD concerns a closed branch, and is dropped quietly (a rejection there read, in `tail
    --events`, like an attack on every catch-up of a revoked member)."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s0 = net.subs["s0"]
    [b0] = s0.branch_ids()
    net.author.publish(b0, b"an alert", net.now)
    net.author.revoke(b0)
    net.author.take_changes()
    net.author.data_to_send()  # (lost: s0 is away)
    start = len(net.events["s0"])
    net.now += 5_000
    s0.catch_up(net.now)
    net.pump_sub("s0")
    events = net.events["s0"][start:]
    assert [(e.branch, e.by) for e in events if isinstance(e, BranchClosed)] == [(b0, "revoke")]
    assert not [e for e in events if isinstance(e, Rejected)], events


async def test_a_groups_removed_members_survive_a_restart_of_the_author(tmp_path: Path) -> None:
    """The author keeps a group's removed members in its store (with the branch record): after a
    restart, a member removed while it was away is still told when it asks, not rejected as a stranger -- and its
    FETCH of the author's chain is served from the log up to the head at its removal, not beyond (SPEC 9.5)."""
    from streams.api import Author, MemoryHub, StoreOptions
    from streams.policy import AllowList

    opts = StoreOptions(durable=False, opslimit=1, memlimit=8192)
    members = [ident(10), ident(11), ident(12)]
    policy = AllowList.of([m.did for m in members])
    author = await Author.create(tmp_path / "a.db", ident(1), "fraud-monitor", "pw", MemoryHub().author_endpoint(),
                                 policy, store_options=opts)
    for m in members:
        await author.open_branch(m.did)
    g = await author.open_group([m.did for m in members])
    await author.publish(g, b"before")
    await author.remove_member(g, members[1].did)
    await author.publish(g, b"after")
    await author.close()
    author = await Author.open(tmp_path / "a.db", "pw", MemoryHub().author_endpoint(), policy, store_options=opts)
    try:
        [rec] = [r for r in author.store.load_branches() if r.id == g]
        assert rec.former == [(2, members[1].sign_public, 1, 1)]
        core = author._core
        fetch = Fetch(core.channel, g, 0, 0, 0, 2)
        assert core.receive(encode_frame(fetch, b"", members[1].sign).raw, 1_800_000_000_000, "p") == []
        core.take_changes()
        [told] = core.data_to_send()
        assert decode_frame(told.data).head.epoch == 1 and told.peer == "p"
        tail = Fetch(core.channel, g, 0, 1, 100, 2)
        [asked] = [e for e in core.receive(encode_frame(tail, b"", members[1].sign).raw, 1_800_000_000_000, "p")
                   if isinstance(e, FetchRequested)]
        served = [decode_frame(o.data) for o in author._serve_fetch(asked)]
        assert [(f.head.seq, f.head.epoch) for f in served] == [(1, 0)]  # "before" alone, from the log
    finally:
        await author.close()


def test_a_removed_member_stored_before_its_removal_head_was_kept_is_served_nothing() -> None:
    """A group record written before the author kept the head at each removal lists its removed members as
    (index, key, epoch): read as head 0, so a FETCH of theirs is answered with the removing grant, and nothing of
    the log (the author cannot tell what was published before the removal); a row of another shape is refused."""
    from streams.store import _former

    key = ident(11).sign_public
    assert _former([None] * 12 + [[[2, key, 1]]]) == [(2, key, 1, 0)]
    assert _former([None] * 12 + [[[2, key, 1, 7]]]) == [(2, key, 1, 7)]
    for row in ([2, key], [2, key, 1, -1], [2, key, 1, "7"]):
        with pytest.raises(TypeError):
            _former([None] * 12 + [[row]])
    net = Net.make(n_subs=2)
    g = net.author.open_group([ident(10).public, ident(11).public, ident(12).public])
    net.author.publish(g, b"before", net.now)
    net.author.remove_member(g, ident(11).did)
    net.author.take_changes()
    net.author.data_to_send()
    b = net.author._branches[g]
    assert b.former is not None and b.former[2][2] == 1
    catch_up = encode_frame(Fetch(net.author.channel, g, 0, 1, 100, 2), b"", ident(11).sign).raw
    for last, served in ((1, [(1, 1)]), (0, [])):  # as kept now, and as an older record reads
        b.former[2] = (*b.former[2][:2], last)
        net.now += 10_000
        events = net.author.receive(catch_up, net.now, "s1")
        assert [(e.from_seq, e.to_seq) for e in events if isinstance(e, FetchRequested)] == served
        assert [e for e in events if isinstance(e, Rejected)] == []
        net.author.take_changes()
        assert [decode_frame(o.data).kind for o in net.author.data_to_send()] == [Kind.GRANT]


def _gaps(events: list[object]) -> list[tuple[int, int]]:
    return [(e.expected_seq, e.received_seq) for e in events if isinstance(e, GapDetected)]


@pytest.mark.parametrize("case", ["catch-up lost", "empty chain"])
def test_a_live_loss_is_reported_although_the_catch_up_got_no_answer(case: str) -> None:
    """A catch-up window that gets no answer (its FETCH was lost, or the chain was empty: a publisher with
    nothing answers nothing) must not keep gap events silent while the chain goes on from our cursor: a frame
    accepted in order answers it.  A message lost on the live connection after that is reported."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    [b] = s.branch_ids()
    if case == "catch-up lost":
        for i in range(3):
            net.author.publish(b, b"m%d" % i, net.now)
        net.pump_author()
    s.catch_up(net.now)
    s.take_changes()
    for o in s.data_to_send():
        if case == "empty chain":
            net.to_author(o.data, "s0")  # answered by nothing: the chain is empty
    first = 4 if case == "catch-up lost" else 1
    events: list[object] = []
    for seq in range(first, first + 4):
        net.now += 500
        net.author.publish(b, b"x", net.now)
        net.author.take_changes()
        outs = net.author.data_to_send()
        if seq != first + 2:  # lost on the live connection
            for o in outs:
                events.extend(s.receive(o.data, net.now))
        s.handle_timer(net.now)
        s.take_changes()
        s.data_to_send()
    assert _gaps(events) == [(first + 2, first + 3)]


def test_a_grant_of_the_first_layout_still_opens() -> None:
    """Grants kept in stores, and authors not yet upgraded, have the first body layout (every entry sealing the
    member list and the heads whole, SPEC 8.5): a member still reads them.  A first-layout entry inside a body of
    the current layout, or the reverse, does not open."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s = net.subs["s0"]
    me = ident(10)
    g = net.author.open_group([me.public, ident(11).public, ident(12).public])
    [new] = {o.data for o in net.author.data_to_send()  # (one copy per route)
             if decode_frame(o.data).kind is Kind.GRANT and decode_frame(o.data).head.branch == g}
    f = decode_frame(new)
    shared, entries = decode_grant_body(f.body)
    assert shared is not None and len(entries) == 3
    author = ident(1)
    hint = _hint(_hint_key(me, author.kx_public, author.kx_public, me.kx_public), net.author.channel, g, 0)
    [mine] = [e for e in entries if e.hint == hint]
    key = decode_grant_key(me.unseal(mine.sealed))
    members, heads = decode_grant_shared(_crypto.aead_decrypt(key.shared_key, bytes(_crypto.NONCE_SIZE),
                                                              _crypto.P_GRANT + g + bytes(8), shared))
    old_secret = encode_grant_secret(GrantSecret(key.index, members, key.keys, heads))
    # (with the hint of its time, SPEC 8.5: the first layout predates the keyed hint)
    old_entry = GrantEntry(_legacy_hint(g, 0, me.kx_public), _crypto.seal(me.kx_public, old_secret))

    # A current body whose entry seals a first-layout secret: refused (the layouts do not mix).
    mixed = encode_frame(f.head, encode_grant_body(shared, [old_entry]), author.sign).raw
    assert [e.reason for e in s.receive(mixed, net.now) if isinstance(e, Rejected)] == [RejectReason.BAD_AEAD]
    assert g not in s.branch_ids()
    # The reverse: a first-layout body whose entry seals a current key.
    reverse = encode_frame(f.head, encode_grant_entries([mine]), author.sign).raw
    assert [e.reason for e in s.receive(reverse, net.now) if isinstance(e, Rejected)] == [RejectReason.BAD_AEAD]
    assert g not in s.branch_ids()

    first = encode_frame(f.head, encode_grant_entries([old_entry]), author.sign).raw
    events = s.receive(first, net.now)
    assert not [e for e in events if isinstance(e, Rejected)]
    assert g in s.branch_ids() and len(s.branch_info(g)[3]) == 4


def test_a_group_member_whose_first_grant_comes_late_still_reads_the_groups_history() -> None:
    """A member of a group from its start whose first GRANT is held back (a relay, a connection not up yet) and
    that gets the group's re-key first (a member removed, epoch 1, also sent along its own branch) does not start
    at the re-key's head, skipping in silence what was published to it before: it asks its own branch's grant
    sync, which brings the group's first grant, then the later one, then the history."""
    net = Net.make(n_subs=3)
    for s in ("s0", "s1", "s2"):
        net.subscribe(s)
    a = net.author
    g = _late_first_grant_group(net)
    start = len(net.events["s0"])
    a.remove_member(g, ident(12).did)  # epoch 1: its GRANT reaches s0, which asks for the rest
    net.pump_author()
    assert g not in net.subs["s0"].branch_ids()
    # (The author answers one grant sync per member, branch and connection per grant_sync_interval_ms: s0's own
    # branch was synced at its subscription, so the answer comes to the member's retry.)
    net.now += 2_000
    net.subs["s0"].handle_timer(net.now)
    net.pump_sub("s0")
    ev = net.events["s0"][start:]
    assert [e.epoch for e in ev if isinstance(e, Granted) and e.branch == g] == [0, 1]
    # Its cursor of the author's chain starts at the group's start, and the author is asked for 1..3 (served from
    # its retained log by the driver: FetchRequested).
    assert net.subs["s0"].chain_head(g, 0)[0] == 1
    assert [(e.from_seq, e.to_seq) for e in net.events["author"] if isinstance(e, FetchRequested)
            and e.branch == g][-1:] == [(1, 3)]


def test_a_late_first_grant_is_asked_for_also_when_the_rekey_leaves_a_group_of_one() -> None:
    """As above, when the re-key that reaches the member first leaves it the group's only member (author and it:
    two members, like its own branch): it still asks its own branch's grant sync for the group's first grant,
    rather than taking the re-key for a grant of its own branch and starting at its heads in silence."""
    from streams.identity import PublicIdentity

    net = Net.make(n_subs=2)
    for s in ("s0", "s1"):
        net.subscribe(s)
    a = net.author
    g = a.open_group([PublicIdentity.from_did(ident(10 + i).did) for i in range(2)])
    a.take_changes()
    for o in a.data_to_send():  # the first GRANT never reaches s0
        net.to_sub("s1", o.data)
    for i in range(3):
        a.publish(g, b"group msg %d" % i, net.now)
    a.take_changes()
    for o in a.data_to_send():
        net.to_sub("s1", o.data)
    start = len(net.events["s0"])
    a.remove_member(g, ident(11).did)  # epoch 1: the author and s0 are left; its GRANT reaches s0
    net.pump_author()
    assert g not in net.subs["s0"].branch_ids()
    net.now += 2_000
    net.subs["s0"].handle_timer(net.now)
    net.pump_sub("s0")
    ev = net.events["s0"][start:]
    assert [e.epoch for e in ev if isinstance(e, Granted) and e.branch == g] == [0, 1]
    assert net.subs["s0"].chain_head(g, 0)[0] == 1
    assert [(e.from_seq, e.to_seq) for e in net.events["author"] if isinstance(e, FetchRequested)
            and e.branch == g][-1:] == [(1, 3)]


def _late_first_grant_group(net: Net) -> bytes:
    """s0..s2 subscribed; a group of the three whose first GRANT never reaches s0; three messages in it."""
    from streams.identity import PublicIdentity

    a = net.author
    g = a.open_group([PublicIdentity.from_did(ident(10 + i).did) for i in range(3)])
    a.take_changes()
    for o in a.data_to_send():  # the first GRANT never reaches s0
        for t in ("s1", "s2"):
            net.to_sub(t, o.data)
    for i in range(3):
        a.publish(g, b"group msg %d" % i, net.now)
    a.take_changes()
    for o in a.data_to_send():
        for t in ("s1", "s2"):
            net.to_sub(t, o.data)
    return g
