"""Re-checks and write lapses, attacked: a policy file of several credential rules, a group member's kept
evidence at a reload, a status lookup that fails during a re-check, a group's first grant that comes late (a
group of one, an author store without the grant history), and a write right that lapsed and came back (real
forks at accepted positions still caught, a frame held from before the lapse replaced).  Cores wired together
without sockets, real credentials."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from streams.credentials import (
    StatusList,
    StatusListSource,
    StatusLookupFailed,
    issue_status_list_credential,
    present,
)
from streams.errors import RejectReason
from streams.events import Granted, MessageReceived, Rejected
from streams.wire import Checkpoint, encode_frame

from .corenet import Net, ident
from .test_admission import ISSUER, LIST_URL, T0, TYPE, _cred, status  # noqa: F401  (fixture)
from .test_core_grants import _late_first_grant_group


def test_policy_file_mode_all_two_credential_rules_keeps_valid_subscriber(
        tmp_path, status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    # `streams serve --policy FILE` with mode "all" and two credential rules: the subscriber presents one valid
    # credential for each.  Nothing is revoked; the periodic re-check must keep it.  evidence_holds() splits the
    # AllOf-packed evidence into pieces and asks FilePolicy.still_valid about each piece alone -- but FilePolicy
    # delegates to its inner AllOf, which needs every rule satisfied by the piece: no single piece holds.
    from streams.policy_file import load_policy

    bits, _ = status
    (tmp_path / "status.json").write_text(json.dumps(issue_status_list_credential(ISSUER, LIST_URL, bits,
                                                                                  valid_from=T0)))
    kyc = "KYCCredential"
    body = "".join(f'[[policy.credential]]\ntype = "{t}"\nissuers = ["{ISSUER.did}"]\npermission = "read-write"\n'
                   f'status_lists = ["status.json"]\n' for t in (TYPE, kyc))
    path = tmp_path / "policy.toml"
    path.write_text('[policy]\nmode = "all"\n' + body)
    net = Net.make(policy=load_policy(path), n_subs=1)
    creds = [_cred(ident(10), index=3), _cred(ident(10), types=[kyc], index=5)]
    s = net.subs["s0"]
    s.credential_for_challenge = lambda nonce, channel: present(
        s.identity, creds, challenge=nonce, domain=channel, created=T0 + timedelta(days=1))
    net.subscribe("s0")
    assert any(isinstance(e, Granted) for e in net.events["s0"])
    assert net.author.recheck(net.now) == []


def test_late_first_grant_of_a_group_whose_first_grant_the_author_no_longer_holds() -> None:
    # An author whose store holds only the group's current grant (a store written before grant history was kept:
    # _grants_after / _first_grant then serve "the earliest one its history still holds", an epoch > 0).  s0's
    # first GRANT was lost; the re-key reaches it.  Before the change s0 applied it (at its heads).  Now s0
    # refuses any epoch > 0 grant of a group it does not hold and asks its own branch's grant sync, whose answer
    # is that same epoch-1 grant: it never joins the group, whatever it retries.
    net = Net.make(n_subs=3)
    for s in ("s0", "s1", "s2"):
        net.subscribe(s)
    a = net.author
    g = _late_first_grant_group(net)
    a.remove_member(g, ident(12).did)  # epoch 1
    a._branches[g].grants = []  # the history holds only the current grant (a store from before it was kept)
    net.pump_author()
    for _ in range(5):
        net.now += 2_000
        net.subs["s0"].handle_timer(net.now)
        net.pump_sub("s0")
        net.pump_author()
    assert g in net.subs["s0"].branch_ids()


def test_late_first_grant_asks_the_members_own_branch_not_a_one_member_group() -> None:
    # The late-first-grant path takes the first open branch of two members as "our own branch".  A group of one
    # member (open_group([s0]), or one every other member left) also has two.  s0 is in such a group G1, left its
    # first own branch and subscribed again: its branches are [own (closed), G1, own']. A re-key of a group G2
    # whose first GRANT was lost makes it ask G1's grant sync, whose answer never carries G2's first grant.
    from streams.identity import PublicIdentity

    net = Net.make(n_subs=3)
    for s in ("s0", "s1", "s2"):
        net.subscribe(s)
    a = net.author
    s0 = net.subs["s0"]
    g1 = a.open_group([PublicIdentity.from_did(ident(10).did)])
    net.pump_author()
    assert g1 in s0.branch_ids()
    own = a.branch_of(ident(10).did)
    s0.unsubscribe(own)
    net.pump_sub("s0")
    net.now += 5_000
    net.subscribe("s0")
    assert a.branch_of(ident(10).did) not in (None, own)
    g = _late_first_grant_group(net)
    a.remove_member(g, ident(12).did)  # epoch 1: reaches s0 along its own branch
    net.pump_author()
    for _ in range(5):
        net.now += 2_000
        s0.handle_timer(net.now)
        net.pump_sub("s0")
        net.pump_author()
    assert g in s0.branch_ids()


def test_a_frame_held_before_the_write_lapse_does_not_shadow_the_honest_one_after() -> None:
    # s0 publishes 1 (accepted), 2 (lost), 3 (held by the author for the gap).  The author takes write away and
    # gives it back (heads: 1).  s0 restarts its chain at 2 and signs 2', 3'.  A relay delivers 3' before 2'.
    # The old 3, signed under epoch 0 before the lapse, still sits in the hold buffer: the honest 3' is refused
    # FORK "at a held position" (the driver's fork_evidence then finds none: a Rejected(FORK) with no fork), and
    # once 2' is in, the old 3 is drained, fails its link, and 3' is gone.
    from streams.events import MessageReceived, Rejected

    net = Net.make(n_subs=1)
    net.subscribe("s0")
    a, s = net.author, net.subs["s0"]
    b0 = a.branch_of(ident(10).did)
    s.publish(b0, b"one", net.now)
    net.pump_sub("s0")
    for p in (b"two", b"three"):
        s.publish(b0, p, net.now)
    s.take_changes()
    _lost, three = [o.data for o in s.data_to_send()]
    a.receive(three, net.now, "s0")  # held: 2 is missing
    a.take_changes()
    a.data_to_send()  # (the FETCH of 2 is lost too)
    net.lapse_write(b0)
    assert s.publish(b0, b"two again", net.now) == 2
    s.publish(b0, b"three again", net.now)
    s.take_changes()
    two2, three2 = [o.data for o in s.data_to_send()]
    ev = a.receive(three2, net.now, "relay") + a.receive(two2, net.now, "relay")
    assert not [e for e in ev if isinstance(e, Rejected) and e.reason is RejectReason.FORK]
    got = [(e.seq, e.payload) for e in ev if isinstance(e, MessageReceived)]
    assert got == [(2, b"two again"), (3, b"three again")]


def test_a_member_given_write_back_that_re_signs_an_accepted_position_is_still_a_fork() -> None:
    # s0's message 1 (epoch 0) was accepted; write was taken away (epoch 1, heads: 1) and given back (epoch 2).
    # A malicious s0 now signs a different message 1 under epoch 2.  Two signed messages at one accepted position
    # is a fork (THREATS 7): fork_evidence keeps it -- the accepted one was signed before the lapse, but at or
    # below the head the lapse grant named (accepted, not refused).
    from streams.events import Rejected

    net, b0, logged = _accepted_then_lapsed()
    a, s = net.author, net.subs["s0"]
    sb = s._branches[b0]
    c = sb.chains[sb.me]
    c.next_seq, c.head = 1, _genesis(a, b0)  # (re-sign position 1, linked as the accepted one was)
    assert s.publish(b0, b"one, forked", net.now) == 1
    s.take_changes()
    (forged,) = [o.data for o in s.data_to_send()]
    [rej] = [e for e in a.receive(forged, net.now, "relay") if isinstance(e, Rejected)]
    assert rej.reason is RejectReason.REPLAY
    assert rej.frame is not None
    assert a.fork_evidence(forged, logged) is not None


def _accepted_then_lapsed() -> tuple[Net, bytes, bytes]:
    """s0's message 1 (epoch 0) accepted, then its write taken away (epoch 1, heads: 1) and given back (epoch 2).
    Returns (the net, s0's branch, the accepted frame)."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    s = net.subs["s0"]
    s.publish(b0, b"one", net.now)
    s.take_changes()
    (logged,) = [o.data for o in s.data_to_send()]
    net.author.receive(logged, net.now, "s0")
    net.pump_author()
    net.lapse_write(b0)
    return net, b0, logged


def _genesis(a, branch: bytes) -> bytes:  # type: ignore[no-untyped-def]
    from streams.wire import decode_frame
    first = a._first_grant(a._branches[branch])
    return decode_frame(first).hash


def test_a_fork_signed_under_the_pre_lapse_epoch_at_an_accepted_position_reaches_the_fork_check() -> None:
    # As above, but the malicious s0 re-signs position 1 under epoch 0 (the key it held before the lapse: the
    # epoch the accepted message 1 was signed under).  Both frames were signed before the lapse, both at an
    # accepted position: a fork.  The REPLAY carries the frame, so the driver compares it with its log.
    from streams.events import Rejected

    net, b0, logged = _accepted_then_lapsed()
    a, s = net.author, net.subs["s0"]
    sb = s._branches[b0]
    c = sb.chains[sb.me]
    epoch = sb.epoch
    c.next_seq, c.head, sb.epoch = 1, _genesis(a, b0), 0
    assert s.publish(b0, b"one, forked", net.now) == 1
    sb.epoch = epoch
    s.take_changes()
    (forged,) = [o.data for o in s.data_to_send()]
    assert a.fork_evidence(forged, logged) is not None  # (both pre-lapse: fork_evidence itself would keep it)
    [rej] = [e for e in a.receive(forged, net.now, "relay") if isinstance(e, Rejected)]
    assert rej.reason is RejectReason.REPLAY
    assert rej.frame is not None


def test_a_policy_reload_keeps_a_group_member_whose_closed_own_branch_credential_holds(
        status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    # As tests/test_admission_recheck.py::test_a_group_member_that_left_its_own_branch_stays_while_its_credential_
    # holds, but the re-check is the one `streams serve` runs at start and on SIGHUP (dids=True), with the very
    # same policy.  SPEC 11: "a group member without an open branch of its own is re-checked by the evidence its
    # closed own branch kept" -- with dids=True it is judged on its DID alone instead, and a credential policy
    # refuses every DID alone: s0 is taken out of the group at each restart although its credential holds.

    from .test_admission_recheck import _group_member_that_left_its_own_branch

    net, group = _group_member_that_left_its_own_branch(status)
    assert net.author.recheck(net.now) == []
    net.author.recheck(net.now, dids=True)
    assert ident(10).did in net.author.branch_info(group)[3]


def test_a_transient_status_lookup_failure_at_the_periodic_recheck_revokes_nobody(
        status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    # A status-list lookup that raises (its ledger's SQLite busy, a disk or network error) count
    # as "status list unavailable".  Right for a subscription (refused, the author serves on); but the periodic
    # re-check (every recheck_ms, 5 s) uses the same path, so one failed read revokes every credential holder
    # for good (their branches are closed; README: "a re-check that fails ... the next SIGHUP tries again").
    from streams.credentials import CredentialPolicy

    from .test_admission import _sub_with

    class Flaky:
        fail = False

        def get(self, url: str):  # type: ignore[no-untyped-def]
            if self.fail:
                raise OSError("database is locked")
            return status[1].get(url)

    lists = Flaky()
    net = Net.make(policy=CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lists), n_subs=1)
    _sub_with(net, "s0", _cred(ident(10), index=3))
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    lists.fail = True
    # No answer now: that subscriber is left as it is, and said to be (the driver logs it; the next re-check
    # tries again).
    undecided: list[tuple[str, str]] = []
    assert net.author.recheck(net.now, undecided=undecided) == []
    assert [d for d, _ in undecided] == [ident(10).did]
    assert "status list lookup failed (OSError)" in undecided[0][1]
    assert net.author.branch_of(ident(10).did) == b0
    with pytest.raises(StatusLookupFailed):  # (what the policy itself says)
        net.author.policy.still_valid(net.author._extras(net.author._branches[b0])[1], net.now)
    lists.fail = False
    assert net.author.recheck(net.now) == []


async def test_a_periodic_recheck_that_fails_leaves_the_author_serving(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A policy whose re-check raises (a status lookup that fails, a bug) at the timer's re-check: logged,
    nothing changes, the author serves on (it used to end the timer task, and with it the party)."""
    import asyncio

    from streams.api import Author, MemoryHub, StoreOptions, Subscriber
    from streams.policy import AllowList

    class Failing:
        inner = AllowList.of([ident(10).did])

        def decide(self, request, now_ms):  # type: ignore[no-untyped-def]
            return self.inner.decide(request, now_ms)

        def still_valid(self, evidence: bytes, now_ms: int) -> bool:
            raise OSError("status source down")

    fast = StoreOptions(durable=False, opslimit=1, memlimit=8192)
    hub = MemoryHub()
    author = await Author.create(tmp_path / "a.db", ident(1), "m", "pw", hub.author_endpoint(), Failing(),
                                 store_options=fast)
    s = await Subscriber.create(tmp_path / "s.db", ident(10), ident(1).did, author.channel, "pw",
                                hub.subscriber_endpoint("s"), store_options=fast)
    branch = await s.subscribe(timeout=5)
    author._core._branches[branch].has_evidence = True  # (as if a credential had admitted it)
    author._core._branches[branch].evidence = b"{}"
    author.recheck_ms = 10
    author.heartbeat_ms = 20
    await asyncio.sleep(1.5)  # several timer re-checks, each failing (the first wake: at the old heartbeat)
    await author.publish(branch, b"still serving")
    assert (await s.next_message(timeout=5)).payload == b"still serving"
    assert author.branch_of(ident(10).did) == branch
    await s.close()
    await author.close()


def test_a_held_pre_lapse_frame_is_not_drained_into_the_later_run() -> None:
    # A malicious s0 (write at epoch 0) sends message 3 under epoch 0, linked to a CHECKPOINT 2 it signs for the
    # epoch it expects write back at (2): the author holds 3 (2 is missing).  Write is taken away (epoch 1, heads:
    # 1) and given back (epoch 2).  s0 now sends the CHECKPOINT 2 (epoch 2, of the current run: accepted), and the
    # held 3 -- signed under epoch 0, before the lapse -- is drained and accepted at a later-run position
    # (SPEC 11: such a frame is refused NOT_PERMITTED beyond the cursor).
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    a, s = net.author, net.subs["s0"]
    b0 = a.branch_of(ident(10).did)
    s.publish(b0, b"one", net.now)
    net.pump_sub("s0")
    sb = s._branches[b0]
    c = sb.chains[sb.me]
    ckpt = encode_frame(Checkpoint(a.channel, b0, sb.me, 2, c.head, 2), b"", ident(10).sign)
    c.next_seq, c.head = 3, ckpt.hash
    assert s.publish(b0, b"three, pre-lapse", net.now) == 3
    s.take_changes()
    (three,) = [o.data for o in s.data_to_send()]
    assert not a.receive(three, net.now, "s0") or True  # held: 2 is missing
    a.take_changes()
    a.data_to_send()
    net.lapse_write(b0)
    assert a._branches[b0].epoch == 2
    ev = a.receive(ckpt.raw, net.now, "relay")
    got = [(e.seq, e.payload) for e in ev if isinstance(e, MessageReceived)]
    assert got == [], got


def test_a_pre_lapse_head_naming_another_message_at_an_earlier_run_position_is_a_fork() -> None:
    # s0's message 1 (epoch 0) was accepted; write was taken away (epoch 1, heads: 1) and given back (epoch 2).
    # A malicious s0 signs a HEAD under epoch 0 naming another hash at position 1 -- an earlier-run position,
    # accepted under epoch 0 too: no lapse lies between the two (fork_evidence keeps such a pair, SPEC 11), yet
    # _on_head excuses every HEAD signed before the lapse (write_lapsed(h.epoch), not lapse_between the HEAD and
    # the logged message) and processes it as an ordinary HEAD.
    from streams.wire import HeadNotice

    net = Net.make(n_subs=1)
    net.subscribe("s0")
    a, s = net.author, net.subs["s0"]
    b0 = a.branch_of(ident(10).did)
    s.publish(b0, b"one", net.now)
    s.take_changes()
    (logged,) = [o.data for o in s.data_to_send()]
    a.receive(logged, net.now, "s0")
    net.pump_author()
    net.lapse_write(b0)
    head = encode_frame(HeadNotice(a.channel, b0, 1, 1, b"\x07" * 32, 0), b"", ident(10).sign)
    assert a.fork_evidence(head.raw, logged) is not None  # the driver would keep it...
    ev = a.receive(head.raw, net.now, "relay")
    # Signed in an earlier run of the member's write right: the core hands the frame to the driver's fork check
    # (a REPLAY with the frame), which keeps it here -- the position is of that run too.
    [rej] = [e for e in ev if isinstance(e, Rejected)]
    assert rej.frame == head.raw and a.fork_evidence(rej.frame, logged) is not None


def test_a_late_first_grant_applied_after_the_wait_does_not_skip_history_in_silence() -> None:
    # s0's first GRANT of a group was lost; the re-key (epoch 1) reaches it, it asks its own branch's grant sync,
    # whose answer (the group's first GRANT) a relay drops.  The relay replays the epoch-1 GRANT after the sync's
    # wait: s0 applies it at its heads and the group's three earlier messages are skipped, with no event.
    from streams.events import GapDetected


    net = Net.make(n_subs=3)
    for s in ("s0", "s1", "s2"):
        net.subscribe(s)
    a, s0 = net.author, net.subs["s0"]
    g = _late_first_grant_group(net)
    a.remove_member(g, ident(12).did)  # epoch 1
    a.take_changes()
    rekey = a.data_to_send()[0].data
    ev = s0.receive(rekey, net.now)
    s0.take_changes()
    s0.data_to_send()  # its grant sync: dropped by the relay
    assert g not in s0.branch_ids()
    net.now += 60_000
    ev += s0.receive(rekey, net.now)
    s0.take_changes()
    if g in s0.branch_ids():
        c = s0._branches[g].chains[0]
        assert c.next_seq == 1 or [e for e in ev if isinstance(e, GapDetected) and e.branch == g], \
            f"cursor at {c.next_seq}, no gap reported"


def test_one_failing_status_lookup_does_not_block_every_other_revocation() -> None:
    # s0's credential is on list A, s1's on list B (same trusted issuer).  The issuer revokes s0's credential
    # (list A says revoked: an answer).  List B's lookup fails (its host is down).  The re-check raises
    # StatusLookupFailed for s1 and so changes nothing for anybody: s0 keeps reading with a revoked credential for
    # as long as list B stays unreachable (every periodic re-check fails the same way).
    from datetime import timedelta

    from streams.credentials import (
        CredentialPolicy,
        StatusList,
        StatusListSource,
        StatusLookupFailed,
        issue_credential,
        issue_status_list_credential,
    )

    from .test_admission import ISSUER, LIST_URL, T0, TYPE, _sub_with

    url_b = "https://issuer.example/status/8"
    bits_a, src = StatusList(), StatusListSource()
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits_a, valid_from=T0))
    src.publish(issue_status_list_credential(ISSUER, url_b, StatusList(), valid_from=T0))

    class Flaky:
        down: set[str] = set()

        def get(self, url: str):  # type: ignore[no-untyped-def]
            if url in self.down:
                raise OSError("connection refused")
            return src.get(url)

    lists = Flaky()
    net = Net.make(policy=CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lists), n_subs=2)

    def cred(n: int, url: str):  # type: ignore[no-untyped-def]
        return issue_credential(ISSUER, ident(n).did, [TYPE], {"name": "p"}, valid_from=T0,
                                valid_until=T0 + timedelta(days=365), status=(url, 3), created=T0)

    _sub_with(net, "s0", cred(10, LIST_URL))
    _sub_with(net, "s1", cred(11, url_b))
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None and net.author.branch_of(ident(11).did) is not None
    bits_a.set(3)
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits_a, valid_from=T0))
    lists.down = {url_b}
    try:
        revoked = net.author.recheck(net.now)
    except StatusLookupFailed:
        revoked = []
    assert b0 in revoked
