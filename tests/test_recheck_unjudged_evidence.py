"""A subscriber admitted by a credential, after the policy is replaced by one with no rule that re-checks it.

Its evidence (the credential) is judged by no rule of the new policy; it used to count as holding, so the
subscriber kept its credential's rights -- read-write where the new policy gives its DID read, and past the
credential's expiry and revocation, for as long as the author ran.  Now such evidence holds nothing: the
subscriber is judged on its DID alone, as one whose credential lapsed (SPEC 11).  Real policy files, a real
credential and status list, two cores wired together."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streams.credentials import StatusList, issue_credential, issue_status_list_credential, present
from streams.policy import AllOf, AllowList, AnyOf, evidence_holds
from streams.policy_file import load_policy
from streams.wire import Permission
from tests.corenet import Net, ident

ISSUER = ident(0x55)
TYPE = "PaymentProviderCredential"
LIST_URL = "https://issuer.example/status/7"
T0 = datetime(2023, 11, 1, tzinfo=UTC)  # (the Net's clock starts on 2023-11-14)
EXPIRY = T0 + timedelta(days=20)
S0, S1 = ident(10), ident(11)


def _ms(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _files(d: Path, bits: StatusList) -> None:
    (d / "status.json").write_text(json.dumps(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0)))
    (d / "v1.toml").write_text(f'''
[policy]
[[policy.allow]]
did = "{S1.did}"
permission = "read-write"
[[policy.credential]]
type = "{TYPE}"
issuers = ["{ISSUER.did}"]
permission = "read-write"
status_lists = ["status.json"]
''')
    (d / "v2.toml").write_text(f'''
[policy]
[[policy.allow]]
did = "{S0.did}"
permission = "read"
[[policy.allow]]
did = "{S1.did}"
permission = "read"
''')
    (d / "v3.toml").write_text(f'''
[policy]
[[policy.allow]]
did = "{S1.did}"
permission = "read"
''')


def _net(d: Path, bits: StatusList) -> Net:
    _files(d, bits)
    net = Net.make(policy=load_policy(d / "v1.toml"), n_subs=2)
    cred = issue_credential(ISSUER, S0.did, [TYPE], {"name": "p"}, valid_from=T0, valid_until=EXPIRY,
                            status=(LIST_URL, 3), created=T0)
    net.subs["s0"].credential_for_challenge = lambda n, c: present(S0, cred, challenge=n, domain=c, created=T0)
    net.subscribe("s0")
    net.subscribe("s1")
    return net


def test_a_reload_without_the_credential_rule_leaves_the_subscriber_what_its_did_alone_gets(tmp_path: Path) -> None:
    bits = StatusList()
    net = _net(tmp_path, bits)
    a = net.author
    b0, b1 = a.branch_of(S0.did), a.branch_of(S1.did)
    assert b0 is not None and b1 is not None
    assert (a.permission_of(b0), a.permission_of(b1)) == (Permission.READ_WRITE, Permission.READ_WRITE)

    a.policy = load_policy(tmp_path / "v2.toml")  # what `streams serve` does on SIGHUP, then the re-check
    restricted: list[tuple[bytes, Permission]] = []
    assert a.recheck(net.now, dids=True, restricted=restricted) == []
    assert sorted(restricted) == sorted([(b0, Permission.READ), (b1, Permission.READ)])
    assert (a.permission_of(b0), a.permission_of(b1)) == (Permission.READ, Permission.READ)

    # The credential expires and is revoked: nothing more to take (its DID is on the list now), nothing undone.
    bits.set(3)
    (tmp_path / "status.json").write_text(
        json.dumps(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0)))
    later = _ms(EXPIRY + timedelta(days=30))
    assert a.recheck(later) == [] and a.recheck(later, dids=True) == []
    assert a.permission_of(b0) is Permission.READ


def test_a_reload_that_admits_neither_the_credential_nor_the_did_revokes(tmp_path: Path) -> None:
    net = _net(tmp_path, StatusList())
    a = net.author
    b0 = a.branch_of(S0.did)
    assert b0 is not None
    a.policy = load_policy(tmp_path / "v3.toml")
    reasons: dict[bytes, str] = {}
    assert a.recheck(net.now, dids=True, reasons=reasons) == [b0]
    assert a.branch_of(S0.did) is None
    assert "credential" in reasons[b0]


@pytest.mark.parametrize("kind", ["AllowList", "AnyOf", "AllOf"])
def test_a_library_policy_that_rechecks_no_evidence_judges_it_on_the_did_alone(tmp_path: Path, kind: str) -> None:
    net = _net(tmp_path, StatusList())
    a = net.author
    b0 = a.branch_of(S0.did)
    assert b0 is not None
    allow = AllowList({S0.did: Permission.READ, S1.did: Permission.READ_WRITE})
    a.policy = {"AllowList": allow, "AnyOf": AnyOf((allow,)), "AllOf": AllOf((allow,))}[kind]
    restricted: list[tuple[bytes, Permission]] = []
    assert a.recheck(net.now, dids=True, restricted=restricted) == []
    assert restricted == [(b0, Permission.READ)]
    assert a.permission_of(b0) is Permission.READ


def test_combinators_with_no_rechecking_part_give_no_verdict_and_hold_nothing() -> None:
    allow = AllowList({S0.did: Permission.READ})
    for p in (AnyOf((allow,)), AllOf((allow, AllowList()))):
        assert evidence_holds(p, b"some credential", 0) is None
        assert p.still_valid(b"some credential", 0) is False
    # Nested: a part that judges nothing is no verdict against a part that does.
    inner = AnyOf((allow,))
    assert evidence_holds(AllOf((inner, AllOf((AllowList(),)))), b"x", 0) is None
    for valid in (True, False):
        p = AllOf((inner, _Judges(valid)))
        assert evidence_holds(p, b"x", 0) is valid
        assert p.still_valid(b"x", 0) is valid


class _Judges(AllowList):
    """An allow-list that re-checks evidence, with a fixed verdict."""

    def __init__(self, valid: bool) -> None:
        super().__init__({})
        self.valid = valid

    def still_valid(self, evidence: bytes, now_ms: int) -> bool:
        return self.valid
