"""Re-checking admissions (SPEC 11): the evidence kept with a branch is re-checked piece by piece, whatever policy
made it (reordered, nested, relaxed); evidence that no longer holds leaves the subscriber only what the policy
gives its DID alone; a re-subscription keeps no right its new admission lacks; a group member that left its own
branch is still re-checked; a failing status lookup or policy refuses a subscription instead of escaping the core.
Cores wired together without sockets, real credentials and status lists."""

from __future__ import annotations

import pytest

from streams.credentials import CredentialPolicy, StatusList, StatusListSource, issue_status_list_credential
from streams.events import Granted
from streams.policy import AllOf, AnyOf, DenyList

from .corenet import Net, ident
from .test_admission import ISSUER, LIST_URL, T0, TYPE, _cred, _sub_with, status  # noqa: F401  (fixture)


def test_relaxing_an_all_of_policy_does_not_revoke_valid_credential_holders(
        status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    # Admitted under AllOf((DenyList, CredentialPolicy)): the evidence is the AllOf-packed form.  The author then
    # drops the deny-list (a relaxation: the same credential rule alone).  The subscriber's credential is still
    # valid, so a re-check must keep it.
    cred_policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=status[1])
    net = Net.make(policy=AllOf((DenyList(frozenset({ident(13).did})), cred_policy)), n_subs=2)
    _sub_with(net, "s0", _cred(ident(10)))
    assert any(isinstance(e, Granted) for e in net.events["s0"])
    for relaxed in (cred_policy, AnyOf((cred_policy,))):
        net.author.policy = relaxed
        assert net.author.recheck(net.now) == [], type(relaxed).__name__


def test_reordering_an_all_of_policy_keeps_rechecking_the_credential(
        status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    # AllOf((DenyList, CredentialPolicy)) and AllOf((CredentialPolicy, DenyList)) are the same policy.  After the
    # author swaps them, a revoked credential must still cut its subscriber off at the next re-check.
    deny = DenyList(frozenset({ident(13).did}))
    cred_policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=status[1])
    net = Net.make(policy=AllOf((deny, cred_policy)), n_subs=2)
    _sub_with(net, "s0", _cred(ident(10), index=3))
    b0 = next(e for e in net.events["s0"] if isinstance(e, Granted)).branch
    net.author.policy = AllOf((cred_policy, deny))
    bits, src = status
    bits.set(3)  # the issuer revokes s0's credential
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    assert not cred_policy.still_valid(_evidence(net, b0), net.now)  # the credential itself no longer holds
    assert net.author.recheck(net.now) == [b0]
    assert net.author.recheck(net.now, dids=True) == [] and net.author.branch_of(ident(10).did) is None


def _evidence(net: Net, branch: bytes) -> bytes:
    import msgpack

    from streams.policy import _ALL_OF
    ev = net.author._extras(net.author._branches[branch])[1]
    parts = msgpack.unpackb(ev[len(_ALL_OF):], raw=False)
    return next(p for p in parts if p)


def test_policy_file_reload_from_mode_all_to_any_keeps_valid_credential_holders(
        tmp_path, status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    # `streams serve` + SIGHUP: the same rules, only `mode` relaxed from "all" to "any".  Every subscriber admitted
    # under "all" holds a valid credential of the rule and is on the allow-list, so "any" admits it too; the
    # periodic credential re-check must not revoke it.
    import json

    from streams.policy_file import load_policy

    bits, _ = status
    (tmp_path / "status.json").write_text(json.dumps(issue_status_list_credential(ISSUER, LIST_URL, bits,
                                                                                  valid_from=T0)))
    body = (f'[[policy.allow]]\ndid = "{ident(10).did}"\n'
            f'[[policy.credential]]\ntype = "{TYPE}"\nissuers = ["{ISSUER.did}"]\npermission = "read-write"\n'
            f'status_lists = ["status.json"]\n')
    path = tmp_path / "policy.toml"
    path.write_text('[policy]\nmode = "all"\n' + body)
    net = Net.make(policy=load_policy(path), n_subs=2)
    _sub_with(net, "s0", _cred(ident(10)))
    assert any(isinstance(e, Granted) for e in net.events["s0"])
    path.write_text('[policy]\nmode = "any"\n' + body)
    net.author.policy = load_policy(path)
    assert net.author.recheck(net.now, dids=True) == []
    assert net.author.recheck(net.now) == []


class _FailingLedger:
    """An embedded ledger whose SQLite read fails (disk error, file replaced): EmbeddedLedger raises LedgerError."""

    def size(self) -> int:
        from streams.errors import LedgerError
        raise LedgerError("embedded ledger read failed: disk I/O error")

    def status(self, anchor_id: str):  # type: ignore[no-untyped-def]
        raise AssertionError("not reached")

    def read(self, anchor_id: str):  # type: ignore[no-untyped-def]
        raise AssertionError("not reached")


def test_a_status_ledger_read_failure_refuses_the_subscription_instead_of_escaping_receive(
        status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    # CredentialPolicy fails closed when a status list cannot be checked, and verify_credential "raises a
    # CredentialError subclass and nothing else"; a failing status ledger must not escape AuthorCore.receive()
    # (it would kill the author's receive loop: api._guarded closes the party).
    from streams.credentials import StatusUnavailable, verify_credential
    from streams.events import Refused
    from streams.status_anchor import AnchoredStatusLists

    lists = AnchoredStatusLists(_FailingLedger(), status[1])  # type: ignore[arg-type]
    with pytest.raises(StatusUnavailable):
        verify_credential(_cred(ident(10)), net_now(), status_lists=lists)
    net = Net.make(policy=CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lists), n_subs=1)
    ev = _sub_with(net, "s0", _cred(ident(10)))  # raises LedgerError out of AuthorCore.receive today
    assert [e.reason for e in ev if isinstance(e, Refused)]
    assert net.author.branch_ids() == []


def net_now() -> int:
    return Net.make(n_subs=0).now


def test_a_revoked_credential_also_cuts_off_a_group_member_that_left_its_own_branch(
        status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    # s0 was admitted by its credential and put in a group.  It then unsubscribes from its own branch (its right),
    # which takes its evidence out of the periodic re-check, and keeps reading the group.  When its credential is
    # revoked the periodic re-check ("a revoked or expired credential revokes the subscriptions it admitted",
    # README / THREATS 6) must still take it out of the group.
    from streams.events import MessageReceived

    net, group = _group_member_that_left_its_own_branch(status)
    assert net.author.branch_of(ident(10).did) is None
    bits, src = status
    bits.set(3)  # the issuer revokes s0's credential
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    net.author.recheck(net.now)  # the periodic re-check (Author._on_tick)
    net.pump_author()
    net.author.publish(group, b"after s0's credential was revoked", net.now)
    net.pump_author()
    got = [m.payload for m in net.events["s0"] if isinstance(m, MessageReceived)]
    assert b"after s0's credential was revoked" not in got


def test_resubscribing_with_a_weaker_credential_does_not_keep_the_stronger_ones_rights(
        status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    # Policy: a provider credential gives read-write, a basic credential read.  s0 holds both.  It subscribes with
    # the provider credential (read-write branch), then re-subscribes with the basic one: the evidence kept for
    # its branch becomes the basic credential, but the branch keeps read-write.  When the issuer revokes the
    # provider credential, nothing re-checks it any more: s0 keeps write access that no valid credential of it
    # gives.
    from streams.wire import Permission

    basic = "BasicCredential"
    policy = AnyOf((CredentialPolicy(TYPE, frozenset({ISSUER.did}), Permission.READ_WRITE, status_lists=status[1]),
                    CredentialPolicy(basic, frozenset({ISSUER.did}), Permission.READ, status_lists=status[1])))
    net = Net.make(policy=policy, n_subs=1)
    _sub_with(net, "s0", _cred(ident(10), index=3))
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None and net.author.permission_of(b0) is Permission.READ_WRITE
    _sub_with(net, "s0", _cred(ident(10), types=[basic], index=5))  # re-subscription: admitted with "read"
    bits, src = status
    bits.set(3)  # the issuer revokes the provider credential
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    net.author.recheck(net.now)
    net.author.recheck(net.now, dids=True)
    assert net.author.branch_of(ident(10).did) != b0 or net.author.permission_of(b0) is not Permission.READ_WRITE


def test_a_credential_that_no_longer_holds_leaves_what_the_allow_list_gives(
        status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    """AnyOf((credential rule, allow-list)): admitted read-write by its credential, listed read-only.  Once the
    credential is revoked it keeps read (a re-key), not read-write, and is not cut off; its evidence is dropped,
    so the next re-checks leave it alone."""
    from streams.policy import AllowList
    from streams.wire import Permission

    policy = AnyOf((CredentialPolicy(TYPE, frozenset({ISSUER.did}), Permission.READ_WRITE, status_lists=status[1]),
                    AllowList.of([ident(10).did], Permission.READ)))
    net = Net.make(policy=policy, n_subs=2)
    _sub_with(net, "s0", _cred(ident(10), index=3))
    _sub_with(net, "s1", _cred(ident(11), index=4))
    b0, b1 = net.author.branch_of(ident(10).did), net.author.branch_of(ident(11).did)
    assert b0 is not None and b1 is not None
    assert net.author.permission_of(b0) is Permission.READ_WRITE
    bits, src = status
    bits.set(3)
    bits.set(4)
    src.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    restricted: list[tuple[bytes, Permission]] = []
    assert net.author.recheck(net.now, restricted=restricted) == [b1]  # s1 is on no list: cut off
    assert restricted == [(b0, Permission.READ)]
    assert net.author.branch_of(ident(10).did) == b0 and net.author.permission_of(b0) is Permission.READ
    net.pump_author()
    assert net.author.recheck(net.now) == []
    assert net.author.branch_of(ident(10).did) == b0


class _Exploding:
    """A policy whose decide fails on what a requester sent (a bug, a lookup that fails)."""

    def decide(self, request, now_ms):  # type: ignore[no-untyped-def]
        raise RuntimeError("lookup failed")


def test_a_policy_that_raises_refuses_the_subscription_and_the_author_serves_on() -> None:
    from streams.events import Refused, SubscriberRefused

    net = Net.make(policy=_Exploding(), n_subs=1)  # type: ignore[arg-type]
    ev = net.subscribe("s0")  # the author's receive() does not raise
    assert [e for e in ev if isinstance(e, Refused)]
    assert [e.reason for e in net.events["author"] if isinstance(e, SubscriberRefused)] == [
        "the policy failed: RuntimeError: lookup failed"]
    assert net.author.branch_ids() == []


def test_a_group_member_that_left_its_own_branch_stays_while_its_credential_holds(
        status: tuple[StatusList, StatusListSource]) -> None:  # noqa: F811
    """The re-check of a group member without an open branch of its own uses the evidence its closed branch kept:
    while that credential holds, it stays in the group."""
    from streams.events import MessageReceived

    net, group = _group_member_that_left_its_own_branch(status)
    assert net.author.recheck(net.now) == []
    net.pump_author()
    net.author.publish(group, b"s0 still reads", net.now)
    net.pump_author()
    assert b"s0 still reads" in [m.payload for m in net.events["s0"] if isinstance(m, MessageReceived)]


def _group_member_that_left_its_own_branch(lists: tuple[StatusList, StatusListSource]) -> tuple[Net, bytes]:
    """s0 and s1 admitted by their credentials (status indices 3 and 4) and put in a group; s0 then unsubscribes
    from its own branch.  Returns (the net, the group)."""
    policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lists[1])
    net = Net.make(policy=policy, n_subs=2)
    _sub_with(net, "s0", _cred(ident(10), index=3))
    _sub_with(net, "s1", _cred(ident(11), index=4))
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    group = net.author.open_group([ident(10).public, ident(11).public])
    net.pump_author()
    net.subs["s0"].unsubscribe(b0)
    net.pump_sub("s0")
    return net, group
