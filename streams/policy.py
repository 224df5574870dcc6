"""Admission policies: who may subscribe to a channel, and with which permission.

The protocol core verifies the cryptography of a subscription (sealed box, fresh challenge, proof of control of
the DID); the policy only decides.  A policy is any object with ``decide(request, now_ms) -> Decision``.  It
must be pure and fast: it runs for every subscription request.

Refusals returned to the requester carry only a generic reason code, never the policy's contents.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .wire import Permission

__all__ = [
    "AllOf",
    "AllowList",
    "AnyOf",
    "Decision",
    "DenyList",
    "Policy",
    "SubscriptionRequest",
]


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

    @classmethod
    def refuse(cls, reason: str) -> Decision:
        return cls(False, reason)


class Policy(Protocol):
    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision: ...


@dataclass(frozen=True)
class AllowList:
    """Admit exactly the listed DIDs, each with a permission (default read-write)."""

    dids: dict[str, Permission] = field(default_factory=dict)

    @classmethod
    def of(cls, dids: Iterable[str], permission: Permission = Permission.READ_WRITE) -> AllowList:
        return cls({d: permission for d in dids})

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        perm = self.dids.get(request.did)
        if perm is None:
            return Decision.refuse("DID not on the allow-list")
        return Decision(True, "DID on the allow-list", perm)


@dataclass(frozen=True)
class DenyList:
    """Refuse the listed DIDs; admit everyone else with ``permission``.  Combine with :class:`AllOf`."""

    dids: frozenset[str] = frozenset()
    permission: Permission = Permission.READ_WRITE

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        if request.did in self.dids:
            return Decision.refuse("DID on the deny-list")
        return Decision(True, "DID not on the deny-list", self.permission)


@dataclass(frozen=True)
class AnyOf:
    """Admit if any sub-policy admits (the first that does gives the permission)."""

    policies: tuple[Policy, ...]

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        reasons = []
        for p in self.policies:
            d = p.decide(request, now_ms)
            if d.admit:
                return d
            reasons.append(d.reason)
        return Decision.refuse("; ".join(reasons) or "no policy")


@dataclass(frozen=True)
class AllOf:
    """Admit only if every sub-policy admits; the permission is the first one's (typically the narrowest
    policy should come first)."""

    policies: tuple[Policy, ...]

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        first: Decision | None = None
        for p in self.policies:
            d = p.decide(request, now_ms)
            if not d.admit:
                return d
            first = first or d
        return first or Decision.refuse("no policy")
