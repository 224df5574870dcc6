"""Policy combinators: permissions combine by intersection; evidence is carried and re-checked."""

from __future__ import annotations

from dataclasses import dataclass

from streams.identity import Identity
from streams.policy import AllOf, AllowList, AnyOf, Decision, DenyList, SubscriptionRequest, common_permission
from streams.wire import Permission

A, B = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)


def req(who: Identity) -> SubscriptionRequest:
    return SubscriptionRequest(b"\0" * 32, who.did, who.sign_public, b"", b"\1" * 16)


@dataclass(frozen=True)
class Evidence:
    """A policy that admits with evidence and says whether that evidence still holds."""

    valid: set[bytes]

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        return Decision(True, "evidence", Permission.READ_WRITE, b"cred-" + request.did.encode())

    def still_valid(self, evidence: bytes, now_ms: int) -> bool:
        return evidence in self.valid


def test_common_permission_table() -> None:
    assert common_permission(Permission.READ_WRITE, Permission.READ) is Permission.READ
    assert common_permission(Permission.READ_WRITE, Permission.WRITE) is Permission.WRITE
    assert common_permission(Permission.READ, Permission.WRITE) is None
    assert common_permission(Permission.AUDIT, Permission.READ) is None
    assert common_permission(Permission.AUDIT, Permission.AUDIT) is Permission.AUDIT


def test_all_of_grants_only_what_every_policy_grants() -> None:
    p = AllOf((DenyList(frozenset({B.did})), AllowList.of([A.did, B.did], Permission.READ)))
    d = p.decide(req(A), 0)
    assert d.admit
    assert d.permission is Permission.READ  # not the deny-list's default read-write
    assert not p.decide(req(B), 0).admit
    disjoint = AllOf((AllowList.of([A.did], Permission.READ), AllowList.of([A.did], Permission.WRITE)))
    assert not disjoint.decide(req(A), 0).admit


def test_evidence_is_carried_through_combinators_and_rechecked() -> None:
    ev = Evidence(set())
    own = b"cred-" + A.did.encode()  # what the evidence-giving sub-policy admitted A with
    for p in (AllOf((DenyList(), ev)), AnyOf((AllowList(), ev))):
        d = p.decide(req(A), 0)
        assert d.evidence  # AnyOf hands it on as is; AllOf keeps it with the other sub-policies' (opaque)
        assert p.still_valid(d.evidence, 0) is False
        ev.valid.add(own)
        assert p.still_valid(d.evidence, 0) is True
        ev.valid.clear()


@dataclass(frozen=True)
class Tagged:
    """Admits with evidence naming its tag; that evidence holds while the tag is in ``valid``."""

    tag: bytes
    valid: set[bytes]

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        return Decision(True, "tagged", Permission.READ_WRITE, self.tag)

    def still_valid(self, evidence: bytes, now_ms: int) -> bool:
        return evidence == self.tag and self.tag in self.valid


def test_all_of_rechecks_every_sub_policy_against_its_own_evidence() -> None:
    valid = {b"x", b"y"}
    p = AllOf((Tagged(b"x", valid), DenyList(), Tagged(b"y", valid)))
    d = p.decide(req(A), 0)
    assert p.still_valid(d.evidence, 0)  # it used to check x's evidence against y too: revoked at once
    valid.discard(b"y")
    assert not p.still_valid(d.evidence, 0)
