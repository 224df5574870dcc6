"""Admission by DID and credentials through the protocol cores, and permission enforcement for each role."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.core import AuthorCore, BranchRecord, ChainRecord, Changes, SubscriberCore
from streams.credentials import (
    CredentialPolicy,
    StatusList,
    StatusListSource,
    canonicalize,
    issue_credential,
    issue_status_list_credential,
    present,
)
from streams.errors import ClosedResourceError, LocalProtocolError, RejectReason
from streams.events import BranchClosed, GapDetected, Granted, MessageReceived, Refused, Rejected, SubscriberRefused
from streams.identity import Identity
from streams.policy import AllOf, AllowList, AnyOf, DenyList, SubscriptionRequest, evidence_holds
from streams.wire import Kind, Permission, decode_frame, encode_frame

from .corenet import Net, ident

ISSUER = Identity.from_seed(b"\x55" * 32)
ROGUE_ISSUER = Identity.from_seed(b"\x56" * 32)
TYPE = "PaymentProviderCredential"
LIST_URL = "https://issuer.example/status/7"
T0 = datetime(2023, 11, 1, tzinfo=UTC)  # Net's clock is 2023-11-14


def _cred(subject: Identity, *, issuer: Identity = ISSUER, types: list[str] | None = None, index: int = 3,
          valid_until: datetime | None = None) -> dict[str, Any]:
    return issue_credential(issuer, subject.did, types or [TYPE], {"name": "provider"}, valid_from=T0,
                            valid_until=valid_until or T0 + timedelta(days=365), status=(LIST_URL, index),
                            created=T0)


def _presenter(holder: Identity, cred: dict[str, Any]):  # type: ignore[no-untyped-def]
    def make(nonce: bytes, channel: bytes) -> bytes:
        return present(holder, cred, challenge=nonce, domain=channel, created=T0 + timedelta(days=1))
    return make


@pytest.fixture
def status() -> tuple[StatusList, StatusListSource]:
    bits = StatusList()
    src = StatusListSource()
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    return bits, src


def _net(status: tuple[StatusList, StatusListSource], permission: Permission = Permission.READ_WRITE) -> Net:
    policy = AllOf((DenyList(frozenset({ident(13).did})),
                    CredentialPolicy(TYPE, frozenset({ISSUER.did}), permission, status_lists=status[1])))
    return Net.make(policy=policy, n_subs=4)


def _sub_with(net: Net, name: str, cred: dict[str, Any]) -> list[object]:
    s = net.subs[name]
    s.credential_for_challenge = _presenter(s.identity, cred)
    return net.subscribe(name)


def test_admitted_by_valid_credential(status: tuple[StatusList, StatusListSource]) -> None:
    net = _net(status)
    ev = _sub_with(net, "s0", _cred(ident(10)))
    assert [type(e) for e in ev if isinstance(e, Granted | Refused)] == [Granted]


@pytest.mark.parametrize("case", ["expired", "revoked", "wrong-type", "untrusted-issuer", "forged", "other-subject",
                                  "none", "denied"])
def test_refused_credentials(status: tuple[StatusList, StatusListSource], case: str) -> None:
    net = _net(status)
    who, holder = ("s3", ident(13)) if case == "denied" else ("s0", ident(10))
    cred = _cred(holder)
    if case == "expired":
        cred = _cred(holder, valid_until=T0 + timedelta(days=2))
    elif case == "revoked":
        bits, src = status
        bits.set(3)
        src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    elif case == "wrong-type":
        cred = _cred(holder, types=["SomethingElse"])
    elif case == "untrusted-issuer":
        cred = _cred(holder, issuer=ROGUE_ISSUER)
    elif case == "forged":
        cred["credentialSubject"]["name"] = "someone else"
    elif case == "other-subject":
        cred = _cred(ident(11))  # s1's credential presented by s0
    if case == "none":
        ev = net.subscribe(who)
    else:
        ev = _sub_with(net, who, cred)
    assert [e.reason for e in ev if isinstance(e, Refused)] == [RejectReason.REFUSED]
    assert not [e for e in ev if isinstance(e, Granted)]
    assert net.author.branch_ids() == []
    # the author's log knows why; the requester only learned "refused"
    assert [e for e in net.events["author"] if isinstance(e, SubscriberRefused)][-1].reason


def test_presentation_replayed_to_another_author_or_later_is_refused(
        status: tuple[StatusList, StatusListSource]) -> None:
    net = _net(status)
    s = net.subs["s0"]
    captured: list[bytes] = []
    inner = _presenter(s.identity, _cred(ident(10)))

    def capture(nonce: bytes, channel: bytes) -> bytes:
        captured.append(inner(nonce, channel))
        return captured[-1]

    s.credential_for_challenge = capture
    net.subscribe("s0")
    assert len(captured) == 1
    # The same presentation bytes offered to another author (other channel, other challenge): refused.
    other = AuthorCore(ident(2), "other-monitor",
                       CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=status[1]))
    sub2 = SubscriberCore(ident(10), ident(2).did, other.channel)
    sub2.credential_for_challenge = lambda _n, _c: captured[0]
    sub2.hello()
    evs: list[object] = []
    pending = [o.data for o in sub2.data_to_send()]
    while pending:
        d = pending.pop(0)
        for o in (other.receive(d, net.now, "p")):
            evs.append(o)
        for o in other.data_to_send():
            evs.extend(sub2.receive(o.data, net.now))
            pending.extend(x.data for x in sub2.data_to_send())
    assert [e.reason for e in evs if isinstance(e, Refused)] == [RejectReason.REFUSED]
    assert other.branch_ids() == []
    # Later, to the same author, with a fresh challenge: the old presentation does not match it.
    s.credential_for_challenge = lambda _n, _c: captured[0]
    net.author.revoke(net.author.branch_ids()[0])
    net.pump_author()
    before = len(net.author.branch_ids())
    ev = net.subscribe("s0")
    assert [e.reason for e in ev if isinstance(e, Refused)] == [RejectReason.REFUSED]
    assert len(net.author.branch_ids()) == before


def test_revoking_the_credential_cuts_off_its_subscriber(status: tuple[StatusList, StatusListSource]) -> None:
    net = _net(status)
    _sub_with(net, "s0", _cred(ident(10), index=3))
    _sub_with(net, "s1", _cred(ident(11), index=4))
    b0 = next(e for e in net.events["s0"] if isinstance(e, Granted)).branch
    b1 = next(e for e in net.events["s1"] if isinstance(e, Granted)).branch
    assert net.author.recheck(net.now) == []  # nothing revoked yet
    bits, src = status
    bits.set(3)  # the issuer revokes s0's credential and republishes its status list
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    reasons: dict[bytes, str] = {}
    assert net.author.recheck(net.now, reasons=reasons) == [b0]
    assert list(reasons) == [b0] and reasons[b0].startswith("the subscriber's credential no longer holds: revoked")
    net.pump_author()
    assert any(isinstance(e, BranchClosed) for e in net.events["s0"])
    with pytest.raises(ClosedResourceError):
        net.author.publish(b0, b"no more", net.now)
    net.author.publish(b1, b"s1 unaffected", net.now)
    net.pump_author()
    assert [m.payload for m in net.events["s1"] if isinstance(m, MessageReceived)] == [b"s1 unaffected"]


def test_all_of_two_credential_rules_rechecks_each_credential_against_its_own_rule(
        status: tuple[StatusList, StatusListSource]) -> None:
    # Two credential rules that must both admit: each is satisfied by a different credential of the subscriber.
    kyc = "KYCCredential"
    policy = AllOf((CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=status[1]),
                    CredentialPolicy(kyc, frozenset({ISSUER.did}), status_lists=status[1])))
    net = Net.make(policy=policy, n_subs=2)
    creds = [_cred(ident(10), index=3), _cred(ident(10), types=[kyc], index=5)]
    s = net.subs["s0"]
    s.credential_for_challenge = lambda nonce, channel: present(
        s.identity, creds, challenge=nonce, domain=channel, created=T0 + timedelta(days=1))
    net.subscribe("s0")
    b0 = next(e for e in net.events["s0"] if isinstance(e, Granted)).branch
    # Nothing changed: the subscriber stays (it was revoked here, each credential being checked against both).
    assert net.author.recheck(net.now) == []
    # Revoking either credential revokes the subscription.
    bits, src = status
    bits.set(5)
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    assert net.author.recheck(net.now) == [b0]


def test_evidence_is_rechecked_piece_by_piece_whatever_policy_made_it(
        status: tuple[StatusList, StatusListSource]) -> None:
    # A branch stored before AllOf kept per-rule evidence holds one bare credential: it is still re-checked
    # against every rule that re-checks.  Evidence made for a policy with another number or order of rules is
    # re-checked the same (each rule looks for a piece that holds for it); damaged evidence holds nothing.
    cred_policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=status[1])
    policy = AllOf((DenyList(), cred_policy))
    bare = canonicalize(_cred(ident(10), index=3))
    assert policy.still_valid(bare, _now_ms())
    assert not AllOf((cred_policy, CredentialPolicy("Other", frozenset({ISSUER.did}), status_lists=status[1]))
                     ).still_valid(bare, _now_ms())
    s = SubscriptionRequest(b"c" * 32, ident(10).did, ident(10).sign_public,
                            present(ident(10), _cred(ident(10), index=3), challenge=b"n" * 16, domain=b"c" * 32,
                                    created=T0 + timedelta(days=1)), b"n" * 16)
    d = policy.decide(s, _now_ms())
    assert d.admit and policy.still_valid(d.evidence, _now_ms())
    assert AllOf((DenyList(), cred_policy, cred_policy)).still_valid(d.evidence, _now_ms())
    assert AllOf((cred_policy, DenyList())).still_valid(d.evidence, _now_ms())
    assert evidence_holds(cred_policy, d.evidence, _now_ms())  # the rule alone now (the deny-list dropped)
    assert evidence_holds(AnyOf((cred_policy,)), d.evidence, _now_ms())
    assert not AllOf((DenyList(), CredentialPolicy("Other", frozenset({ISSUER.did}), status_lists=status[1]))
                     ).still_valid(d.evidence, _now_ms())
    assert not policy.still_valid(d.evidence[:-3], _now_ms())  # damaged: does not hold


def _now_ms() -> int:
    return int((T0 + timedelta(days=2)).timestamp() * 1000)


# --- permissions, enforced on both sides -----------------------------------------------------------------------


def _perm_net(perm: Permission) -> tuple[Net, bytes]:
    net = Net.make(policy=AllowList.of([ident(10).did, ident(11).did], perm))
    net.subscribe("s0")
    return net, next(e for e in net.events["s0"] if isinstance(e, Granted)).branch


def _forge_member_packet(net: Net, branch: bytes, payload: bytes) -> bytes:
    """What a malicious member without write permission would send: a packet it builds and signs itself as
    publisher 1 (it has no chain key, so it uses a key of its own)."""
    from streams import _crypto
    from streams.wire import Packet

    s = net.subs["s0"]
    head = Packet(net.author.channel, branch, 1, 1, b"\0" * 32, 0, b"\1" * 24)
    f = encode_frame(head, _crypto.aead_encrypt(b"\2" * 32, b"\1" * 24, b"", payload), s.identity.sign)
    return f.raw


@pytest.mark.parametrize("perm", [Permission.READ, Permission.AUDIT])
def test_readers_and_auditors_cannot_publish(perm: Permission) -> None:
    net, b = _perm_net(perm)
    with pytest.raises(LocalProtocolError):
        net.subs["s0"].publish(b, b"x", net.now)
    ev = net.author.receive(_forge_member_packet(net, b, b"x"), net.now, "s0")
    assert [r.reason for r in ev if isinstance(r, Rejected)] == [RejectReason.NOT_PERMITTED]
    # but they read the author's chain
    net.author.publish(b, b"to reader", net.now)
    net.pump_author()
    assert [m.payload for m in net.events["s0"] if isinstance(m, MessageReceived)] == [b"to reader"]


def test_writer_cannot_read_author_chain() -> None:
    net, b = _perm_net(Permission.WRITE)
    net.subs["s0"].publish(b, b"from writer", net.now)
    net.pump_sub("s0")
    assert [m.payload for m in net.events["author"] if isinstance(m, MessageReceived)] == [b"from writer"]
    net.author.publish(b, b"secret reply", net.now)
    out = net.author.data_to_send()
    ev = net.subs["s0"].receive(out[0].data, net.now)
    assert [m for m in ev if isinstance(m, MessageReceived)] == []
    assert [r.reason for r in ev if isinstance(r, Rejected)] == [RejectReason.NOT_PERMITTED]
    # and it holds no key for the author's chain: the grant gave it only its own
    sub = net.subs["s0"]
    assert {p for (_e, p) in sub._branches[b].keys} == {1}


def test_permission_change_takes_effect_on_next_message() -> None:
    net, b = _perm_net(Permission.READ_WRITE)
    net.subs["s0"].publish(b, b"while writer", net.now)
    net.pump_sub("s0")
    net.author.set_permission(b, Permission.READ)
    net.pump_author()
    grants = [e for e in net.events["s0"] if isinstance(e, Granted)]
    assert [(g.epoch, g.permission) for g in grants] == [(0, Permission.READ_WRITE), (1, Permission.READ)]
    with pytest.raises(LocalProtocolError):
        net.subs["s0"].publish(b, b"no longer allowed", net.now)
    # a packet it had prepared under the old permission is refused now
    ev = net.author.receive(_forge_member_packet(net, b, b"x"), net.now, "s0")
    assert [r.reason for r in ev if isinstance(r, Rejected)] == [RejectReason.NOT_PERMITTED]
    # reading continues across the re-key
    net.author.publish(b, b"after change", net.now)
    net.pump_author()
    assert b"after change" in [m.payload for m in net.events["s0"] if isinstance(m, MessageReceived)]
    # and back to read-write: its chain continues where it stopped
    net.author.set_permission(b, Permission.READ_WRITE)
    net.pump_author()
    assert net.subs["s0"].publish(b, b"writer again", net.now) == 2
    net.pump_sub("s0")
    assert b"writer again" in [m.payload for m in net.events["author"] if isinstance(m, MessageReceived)]


def test_renewing_by_resubscribing_replaces_the_evidence_that_is_rechecked(
        status: tuple[StatusList, StatusListSource]) -> None:
    net = _net(status)
    _sub_with(net, "s0", _cred(ident(10), index=3))
    b0 = next(e for e in net.events["s0"] if isinstance(e, Granted)).branch
    # The provider renews: it re-subscribes with a new credential (another status entry); same branch.
    _sub_with(net, "s0", _cred(ident(10), index=5))
    assert net.author.branch_ids() == [b0]
    bits, src = status
    bits.set(3)  # the old credential is revoked: it no longer matters
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    assert net.author.recheck(net.now) == []
    bits.set(5)  # the one that admitted it now
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    assert net.author.recheck(net.now) == [b0]


def test_a_subscriber_revoked_by_recheck_also_leaves_its_groups(status: tuple[StatusList, StatusListSource]) -> None:
    net = _net(status)
    _sub_with(net, "s0", _cred(ident(10), index=3))
    _sub_with(net, "s1", _cred(ident(11), index=4))
    group = net.author.open_group([ident(10).public, ident(11).public])
    net.pump_author()
    bits, src = status
    bits.set(3)
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    assert len(net.author.recheck(net.now)) == 1
    net.pump_author()
    # The group was re-keyed without s0: the next broadcast is s1's to read only.
    assert net.author.branch_info(group)[0] == 1
    assert list(net.author.branch_info(group)[3]) == [net.author.identity.did, ident(11).did]
    net.author.publish(group, b"after s0's revocation", net.now)
    net.pump_author()
    assert b"after s0's revocation" in [m.payload for m in net.events["s1"] if isinstance(m, MessageReceived)]
    assert b"after s0's revocation" not in [m.payload for m in net.events["s0"] if isinstance(m, MessageReceived)]


def _member_permission(net: Net, branch: bytes) -> Permission:
    """The subscriber's permission on its own branch, as the author holds it."""
    return net.author._branches[branch].members[1][1]


def test_a_recheck_narrows_a_did_admitted_subscriber_to_the_rights_the_policy_still_gives() -> None:
    """A provider allowed read-write, edited down to read in the policy: a re-check used to leave it read-write
    (it kept publishing).  Its branch is re-keyed read-only: its own core refuses to publish, and a packet it
    made before -- or a member ignoring the re-key -- is refused by the author.  Never the other way: a re-check
    does not widen a permission."""
    net = Net.make(n_subs=2)
    net.subscribe("s0")
    net.subscribe("s1")
    s0, s1 = net.subs["s0"], net.subs["s1"]
    [b0], [b1] = s0.branch_ids(), s1.branch_ids()
    s0.publish(b0, b"sent before the change", net.now)
    in_flight = [o.data for o in s0.data_to_send()]
    net.author.policy = AllowList({ident(10).did: Permission.READ, ident(11).did: Permission.READ_WRITE})
    restricted: list[tuple[bytes, Permission]] = []
    assert net.author.recheck(net.now, dids=True, restricted=restricted) == []
    assert restricted == [(b0, Permission.READ)]
    assert (net.author.branch_info(b0)[0], _member_permission(net, b0)) == (1, Permission.READ)
    assert (net.author.branch_info(b1)[0], _member_permission(net, b1)) == (0, Permission.READ_WRITE)
    for d in in_flight:
        events = net.author.receive(d, net.now, "s0")
        assert [e.reason for e in events if isinstance(e, Rejected)] == [RejectReason.NOT_PERMITTED]
    s0.head_notices(force=True)  # its chain's HEAD: nothing to fetch from a member that may not write
    events = [e for o in s0.data_to_send() for e in net.author.receive(o.data, net.now, "s0")]
    assert not [e for e in events if isinstance(e, (Rejected, GapDetected))]
    outs = net.author.data_to_send()  # (the re-key's GRANT, and no FETCH)
    assert [decode_frame(o.data).kind for o in outs] == [Kind.GRANT]
    net.deliver_author_out(outs)
    net.pump_author()  # the re-key reaches s0
    assert s0.branch_info(b0)[:2] == (1, Permission.READ)
    with pytest.raises(LocalProtocolError):
        s0.publish(b0, b"after", net.now)
    net.author.publish(b0, b"an alert: still readable", net.now)
    net.pump_author()
    assert b"an alert: still readable" in [m.payload for m in net.events["s0"] if isinstance(m, MessageReceived)]
    net.author.policy = AllowList.of([ident(10).did, ident(11).did])  # read-write again: not given back
    restricted.clear()
    assert net.author.recheck(net.now, dids=True, restricted=restricted) == [] and restricted == []
    assert (net.author.branch_info(b0)[0], _member_permission(net, b0)) == (1, Permission.READ)


def test_a_recheck_keeps_only_common_rights_and_revokes_a_subscriber_left_with_none() -> None:
    """Rights, as AllOf combines them (``policy.common_permission``): read-write narrowed by write is write;
    write narrowed by read leaves nothing, and so does audit (it shares nothing with the others), so those
    branches are revoked (they may subscribe again for what the policy gives now).  The periodic re-check (no
    ``dids``) changes no permission."""
    net = Net.make(n_subs=3)
    auditor = net.author.open_branch(ident(10).public, Permission.AUDIT)
    writer = net.author.open_branch(ident(11).public, Permission.WRITE)
    both = net.author.open_branch(ident(12).public, Permission.READ_WRITE)
    net.author.policy = AllowList({ident(10).did: Permission.READ, ident(11).did: Permission.READ,
                                   ident(12).did: Permission.WRITE})
    restricted: list[tuple[bytes, Permission]] = []
    assert net.author.recheck(net.now, restricted=restricted) == [] and restricted == []
    assert net.author.recheck(net.now, dids=True, restricted=restricted) == [auditor, writer]
    assert restricted == [(both, Permission.WRITE)] and _member_permission(net, both) is Permission.WRITE
    assert net.author.branch_of(ident(10).did) is None and net.author.branch_of(ident(11).did) is None


def test_a_credential_admitted_subscriber_keeps_its_permission_at_a_recheck(
        status: tuple[StatusList, StatusListSource]) -> None:
    """Its permission came with its credential, which is re-checked by ``still_valid``, not decided again: a
    re-check leaves it as it is."""
    net = _net(status)
    _sub_with(net, "s0", _cred(ident(10), index=3))
    b0 = next(e for e in net.events["s0"] if isinstance(e, Granted)).branch
    before = (net.author.branch_info(b0)[0], _member_permission(net, b0))
    restricted: list[tuple[bytes, Permission]] = []
    assert net.author.recheck(net.now, dids=True, restricted=restricted) == [] and restricted == []
    assert (net.author.branch_info(b0)[0], _member_permission(net, b0)) == before


def test_what_the_author_held_when_it_took_write_away_counts_as_acknowledged() -> None:
    """A member whose write permission a re-check removed drops its chain, and with it the ACKs it had: a
    message the author had accepted, whose ACK had not come yet, read as refused ('the author will not accept
    it').  The re-key GRANT names the member's chain head as the author holds it (on disk): that much is
    acknowledged; what the member published after is not."""
    net = Net.make(n_subs=1)
    net.subscribe("s0")
    s0 = net.subs["s0"]
    [b0] = s0.branch_ids()
    for i in (1, 2):
        s0.publish(b0, b"payment %d" % i, net.now)
    for o in s0.data_to_send():  # both reach the author; their ACK is still paced (not sent yet)
        net.author.receive(o.data, net.now, "s0")
    net.author.take_changes()
    net.author.data_to_send()
    s0.publish(b0, b"payment 3", net.now)  # made before s0 learns of the change: the author never gets it
    s0.data_to_send()
    assert s0.acknowledged(b0) < 2
    net.author.policy = AllowList({ident(10).did: Permission.READ})
    assert net.author.recheck(net.now, dids=True) == []
    net.pump_author()  # the re-key reaches s0
    assert s0.branch_info(b0)[1] is Permission.READ
    assert s0.acknowledged(b0) == 2


def test_what_the_author_held_when_it_took_write_away_survives_a_restart() -> None:
    """That much stays acknowledged after a restart too (it lived in memory only: after a restart
    ``acknowledged`` fell back to 0, and ``wait_acknowledged`` on that branch waited for its timeout), and the
    chain we may no longer write is not taken up again from the store."""
    net = Net.make(n_subs=1)
    records: dict[bytes, BranchRecord] = {}
    chains: dict[tuple[bytes, int], ChainRecord] = {}
    s0 = net.subs["s0"]
    take = s0.take_changes

    def kept() -> Changes:  # (what the store would hold)
        changes = take()
        records.update((r.id, r) for r in changes.branches)
        chains.update(((c.branch, c.publisher), c) for c in changes.chains)
        return changes

    s0.take_changes = kept  # type: ignore[method-assign]
    net.subscribe("s0")
    [b0] = s0.branch_ids()
    for i in (1, 2, 3):
        s0.publish(b0, b"payment %d" % i, net.now)
    for o in s0.data_to_send():  # the author takes all three; their ACK is lost
        net.author.receive(o.data, net.now, "s0")
    s0.take_changes()
    net.author.take_changes()
    net.author.data_to_send()
    net.author.set_permission(b0, Permission.READ)
    net.pump_author()
    assert s0.acknowledged(b0) == 3
    again = SubscriberCore(s0.identity, net.author.identity.did, net.author.channel)
    again.load_subscriber(None, list(records.values()), list(chains.values()))
    assert again.acknowledged(b0) == 3 and again.branch_info(b0)[1] is Permission.READ
    assert again._branches[b0].me not in again._branches[b0].chains
