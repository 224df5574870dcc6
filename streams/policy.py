"""Admission policies: who may subscribe to a channel, and with which permission.

The protocol core verifies the cryptography of a subscription (sealed box, fresh challenge, proof of control of
the DID); the policy only decides.  A policy is any object with ``decide(request, now_ms) -> Decision``.  It
must be pure and fast: it runs for every subscription request.

A transport may ask earlier, before any request exists, whether a DID could be admitted at all
(:func:`could_admit`: CurveZMQ's ZAP handler does, for each connecting key).  A policy answers through an
optional ``could_admit(did) -> bool``, which must be True wherever ``decide`` might admit that DID; the lists
and combinators here define it, and a policy without it (a credential policy: the DID alone proves nothing)
lets every DID through to ``decide``.

Refusals returned to the requester carry only a generic reason code, never the policy's contents.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

import msgpack

from .errors import LocalProtocolError, PolicyUnavailable
from .identity import holder_of
from .wire import Permission

__all__ = [
    "AllOf",
    "AllowList",
    "AnyOf",
    "Decision",
    "DenyList",
    "Policy",
    "SubscriptionRequest",
    "common_permission",
    "could_admit",
    "evidence_holds",
    "evidence_parts",
]

_log = logging.getLogger("streams.policy")


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """A subscription whose proof of control has already been verified by the core."""

    channel: bytes
    did: str  #: the requester's did:key, proven by its signature over a fresh challenge
    sign_public: bytes
    credential: bytes  #: a presentation the requester attached (empty if none); policies verify it
    #: the author's subscription challenge nonce that the request answered (empty if unknown).  A credential
    #: presentation must be bound to it (as ``challenge = nonce.hex()``) so it cannot be replayed (THREATS 5).
    nonce: bytes = b""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a policy.  ``reason`` is for the author's log; the requester only learns admit/refuse."""

    admit: bool
    reason: str
    permission: Permission = Permission.READ_WRITE
    #: what admitted the requester, kept with its branch and re-checked later (``Policy.still_valid``), e.g.
    #: the canonical JSON of the credential; empty if the decision needs no re-checking (an allow-list).
    evidence: bytes = b""

    @classmethod
    def refuse(cls, reason: str) -> Decision:
        return cls(False, reason)


class Policy(Protocol):
    """Decides subscriptions.  A policy whose decisions carry ``evidence`` may also define
    ``still_valid(evidence: bytes, now_ms: int) -> bool``; the author re-checks admitted subscribers with it
    (:func:`evidence_holds`: it is asked about each piece of the evidence it may have made) and revokes those whose
    evidence no longer holds (a revoked or expired credential), unless the policy admits their DID alone.  Without
    it, a re-check after the policy was replaced (``Author.recheck_admissions``) judges a subscriber admitted with
    evidence on its DID alone: evidence the policy cannot judge holds nothing for it.

    A policy that cannot answer now, because something it must look up failed (a status list's server, a DID
    resolver), raises :class:`~streams.errors.PolicyUnavailable` (from ``decide`` or ``still_valid``): the
    subscription is refused (fail closed), while a re-check leaves that subscriber as it is and asks again at the
    next one.  Anything else ``decide`` raises refuses the subscription too."""

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision: ...


def could_admit(policy: Policy, did: str) -> bool:
    """Whether ``policy`` might admit ``did``, judged from the DID alone (no request, no credential): False only
    if ``decide`` would refuse it whatever it presented.  Uses the policy's ``could_admit`` method where it has
    one; a policy without one (or whose method fails) is assumed to need more than the DID: True."""
    screen = getattr(policy, "could_admit", None)
    if screen is None:
        return True
    try:
        return bool(screen(did))
    except Exception:  # a user policy's bug must not lock everyone out of the handshake; decide() still rules
        _log.warning("%s.could_admit failed; assuming it could admit the DID", type(policy).__name__,
                     exc_info=True)
        return True


def evidence_holds(policy: Policy, evidence: bytes, now_ms: int) -> bool | None:
    """Whether the evidence a subscriber was admitted with still holds for ``policy`` (None: the policy re-checks
    no evidence -- it has no ``still_valid``, or none of the policies it combines has).  :class:`AllOf` and
    :class:`AnyOf` judge the whole of it, as does a policy that wraps others and defines
    ``evidence_verdict(evidence, now_ms) -> bool | None`` (it passes the evidence on through this function, and
    answers as it does); any other policy is asked about each piece (:func:`evidence_parts`) and holds if one does:
    the evidence was made by the policy in force at the subscription, which may since have been reordered, nested
    or relaxed.  What ``still_valid`` raises propagates."""
    if isinstance(policy, AllOf):
        return _still_valid(policy.policies, evidence, now_ms, "all")
    if isinstance(policy, AnyOf):
        return _still_valid(policy.policies, evidence, now_ms, "any")
    verdict = getattr(policy, "evidence_verdict", None)
    if verdict is not None:
        return cast("bool | None", verdict(evidence, now_ms))
    check = getattr(policy, "still_valid", None)
    if check is None:
        return None
    return any(bool(check(part, now_ms)) for part in evidence_parts(evidence))


def _still_valid(policies: tuple[Policy, ...], evidence: bytes, now_ms: int, combine: str) -> bool | None:
    """Combine the sub-policies' verdicts; one that cannot answer now (PolicyUnavailable) counts only where the
    others do not decide without it (a False in an all-of, a True in an any-of), else it is raised.  None when no
    sub-policy re-checks evidence (no verdict either way: an all-of of allow-lists, say)."""
    verdicts: list[bool] = []
    unavailable: PolicyUnavailable | None = None
    for p in policies:
        try:
            v = evidence_holds(p, evidence, now_ms)
        except PolicyUnavailable as exc:
            unavailable = unavailable or exc
            continue
        if v is not None:
            verdicts.append(v)
    decisive = combine == "any"  # the verdict that settles it alone
    if decisive in verdicts:
        return decisive
    if unavailable is not None:
        raise unavailable
    return not decisive if verdicts else None


#: Prefix of :class:`AllOf` evidence: ``_ALL_OF + msgpack([evidence of sub-policy 0, of 1, ...])``.  It cannot
#: start a credential's JSON, so evidence stored by earlier versions (one bare credential) is told apart.
_ALL_OF: Final = b"\x00streams.allof.v1\x00"
_MAX_PARTS: Final = 64


def evidence_parts(evidence: bytes) -> list[bytes]:
    """The pieces of evidence (e.g. one credential each) that ``evidence`` holds, whatever policy structure made
    it: an :class:`AllOf`'s packing is opened (nested ones too), a bare piece is itself, empty pieces are left
    out.  Packing that does not decode gives no pieces (fail closed: nothing holds).

    Every piece was verified as the subscriber's when it was admitted (:func:`evidence_holds` re-checks them).
    At most 64 pieces are taken."""
    out: list[bytes] = []
    todo = [evidence]
    while todo and len(out) < _MAX_PARTS:
        e = todo.pop()
        if not e:
            continue
        if not e.startswith(_ALL_OF):
            out.append(e)
            continue
        try:
            parts = msgpack.unpackb(e[len(_ALL_OF):], raw=False, max_array_len=_MAX_PARTS, max_map_len=0,
                                    max_str_len=0, max_ext_len=0)
        except (ValueError, TypeError, msgpack.UnpackException):  # malformed: no pieces from it
            continue
        if isinstance(parts, list) and all(isinstance(p, bytes) for p in parts):
            todo.extend(reversed(parts))
    return out


def _check_dids(what: str, dids: Iterable[object]) -> frozenset[bytes]:
    """Refuse an entry that is not a valid Ed25519 did:key -- the only DIDs a subscription can prove: one that is
    not would never match, so a mistyped DID on an allow-list would silently admit nobody, and on a deny-list
    deny nobody (a policy file refuses it too, :mod:`streams.policy_file`).  Return their holders
    (:func:`denied_holders`, each DID decoded once)."""
    holders = set()
    for did in dids:
        holder = holder_of(did) if isinstance(did, str) else None
        if holder is None:
            raise LocalProtocolError(f"{what}: {did!r} is not a valid Ed25519 did:key")
        holders.add(holder)
    return frozenset(holders)


@dataclass(frozen=True)
class AllowList:
    """Admit exactly the listed DIDs, each with a permission (default read-write).  Raises
    :class:`~streams.errors.LocalProtocolError` for an entry that is not a valid Ed25519 did:key."""

    dids: dict[str, Permission] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_dids("allow-list", self.dids)

    @classmethod
    def of(cls, dids: Iterable[str], permission: Permission = Permission.READ_WRITE) -> AllowList:
        return cls({d: permission for d in dids})

    def could_admit(self, did: str) -> bool:
        return did in self.dids

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        perm = self.dids.get(request.did)
        if perm is None:
            return Decision.refuse("DID not on the allow-list")
        return Decision(True, "DID on the allow-list", perm)


@dataclass(frozen=True)
class DenyList:
    """Refuse the listed DIDs -- and their twins (the same key negated: the same holder, who can sign as either;
    :func:`streams.identity.holder_of`) -- and admit everyone else with ``permission``.  Combine with
    :class:`AllOf`.  Raises :class:`~streams.errors.LocalProtocolError` for an entry that is not a valid Ed25519
    did:key (it would deny nobody)."""

    dids: frozenset[str] = frozenset()
    permission: Permission = Permission.READ_WRITE
    _holders: frozenset[bytes] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_holders", _check_dids("deny-list", self.dids))

    def could_admit(self, did: str) -> bool:
        return not is_denied(did, self.dids, self._holders)

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        if is_denied(request.did, self.dids, self._holders):
            return Decision.refuse("DID on the deny-list")
        return Decision(True, "DID not on the deny-list", self.permission)


def denied_holders(dids: Iterable[str]) -> frozenset[bytes]:
    """The holders (:func:`streams.identity.holder_of`) of the valid DIDs among ``dids``."""
    return frozenset(h for h in map(holder_of, dids) if h is not None)


def is_denied(did: str, dids: frozenset[str], holders: frozenset[bytes]) -> bool:
    """Whether ``did`` is in ``dids`` or held by one of ``holders`` (a deny-list's DIDs and their holders)."""
    if did in dids:
        return True
    return bool(holders) and holder_of(did) in holders


@dataclass(frozen=True)
class AnyOf:
    """Admit if any sub-policy admits (the first that does gives the permission)."""

    policies: tuple[Policy, ...]

    def could_admit(self, did: str) -> bool:
        return any(could_admit(p, did) for p in self.policies)

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        reasons = []
        for p in self.policies:
            d = p.decide(request, now_ms)
            if d.admit:
                return d
            reasons.append(d.reason)
        return Decision.refuse("; ".join(reasons) or "no policy")

    def still_valid(self, evidence: bytes, now_ms: int) -> bool:
        """Whether a piece of the evidence still holds for a sub-policy that re-checks it; False where none
        re-checks any (evidence this policy cannot judge holds nothing for it)."""
        return _still_valid(self.policies, evidence, now_ms, "any") is True


def common_permission(a: Permission, b: Permission) -> Permission | None:
    """The rights two permissions have in common, or None.  Audit shares nothing with the others."""
    if Permission.AUDIT in (a, b):
        return a if a == b else None
    both = int(a) & int(b)  # READ=1, WRITE=2, READ_WRITE=3 are bit sets
    return Permission(both) if both else None


@dataclass(frozen=True)
class AllOf:
    """Admit only if every sub-policy admits, with the permission they all grant (refuse if they share none).

    The evidence keeps what admitted the requester for each sub-policy (e.g. a different credential for each of
    two credential rules), and :meth:`still_valid` asks each sub-policy that re-checks evidence whether a piece of
    it still holds (:func:`evidence_parts`)."""

    policies: tuple[Policy, ...]

    def could_admit(self, did: str) -> bool:
        return bool(self.policies) and all(could_admit(p, did) for p in self.policies)

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        granted: Permission | None = None
        evidence: list[bytes] = []
        reasons = []
        for p in self.policies:
            d = p.decide(request, now_ms)
            if not d.admit:
                return d
            granted = d.permission if granted is None else common_permission(granted, d.permission)
            if granted is None:
                return Decision.refuse("the policies grant no permission in common")
            evidence.append(d.evidence)
            reasons.append(d.reason)
        if granted is None:
            return Decision.refuse("no policy")
        packed = _ALL_OF + msgpack.packb(evidence, use_bin_type=True) if any(evidence) else b""
        return Decision(True, "; ".join(reasons), granted, packed)

    def still_valid(self, evidence: bytes, now_ms: int) -> bool:
        """Whether, for every sub-policy that re-checks evidence, a piece of it still holds
        (:func:`evidence_holds`: wherever it sits, so a reordered or nested policy re-checks the same); False where
        none re-checks any (evidence this policy cannot judge holds nothing for it)."""
        return _still_valid(self.policies, evidence, now_ms, "all") is True
