"""Events: what the protocol core reports.  Frozen dataclasses, all in this one module.

The core turns bytes into events (``receive``) and API calls into frames (``publish``...).  The asyncio layer
(:mod:`streams.api`) persists what the core changed, then hands these events to the application.
"""

from __future__ import annotations

from dataclasses import dataclass

from .anchor import ForkEvidence
from .errors import RejectReason
from .wire import Permission, _slot_setters

__all__ = [
    "Acknowledged",
    "Anchored",
    "Announced",
    "BranchClosed",
    "ChainConflict",
    "Covered",
    "EpochAnchored",
    "Event",
    "FetchRequested",
    "ForkDetected",
    "GapDetected",
    "Granted",
    "LedgerStatus",
    "MemberLeft",
    "MessageReceived",
    "PermissionRestricted",
    "Refused",
    "Rejected",
    "Subscribed",
    "SubscriberAdmitted",
    "SubscriberRefused",
]


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A payload accepted in order: authentic, linked, not a replay, and on disk before it is handed out.

    ``signed`` is True if this message carries its own signature, or a later checkpoint already covered it;
    otherwise (amortized mode) it is AEAD-authenticated and a :class:`Covered` event follows once a signed
    checkpoint covers it."""

    branch: bytes
    publisher: int
    publisher_did: str
    seq: int
    payload: bytes
    signed: bool
    hash: bytes

    def __repr__(self) -> str:
        return (
            f"MessageReceived(branch={self.branch.hex()}, publisher={self.publisher}, seq={self.seq}, "
            f"{len(self.payload)}B, signed={self.signed})"
        )


def _message_received(branch: bytes, publisher: int, publisher_did: str, seq: int, payload: bytes, signed: bool,
                      hash: bytes) -> MessageReceived:
    """``MessageReceived(...)`` for the protocol core's receive path, one per message: the same object, built
    through its slots (``wire._slot_setters``: 0.57 us here with ``__init__``, 0.31 this way)."""
    m = _new_object(MessageReceived)
    _set_branch(m, branch)
    _set_publisher(m, publisher)
    _set_publisher_did(m, publisher_did)
    _set_seq(m, seq)
    _set_payload(m, payload)
    _set_signed(m, signed)
    _set_hash(m, hash)
    return m


_new_object = object.__new__
_set_branch, _set_publisher, _set_publisher_did, _set_seq, _set_payload, _set_signed, _set_hash = _slot_setters(
    MessageReceived, ("branch", "publisher", "publisher_did", "seq", "payload", "signed", "hash"))


@dataclass(frozen=True, slots=True)
class Covered:
    """Every message of (branch, publisher) up to and including ``through_seq`` is now covered by a signature."""

    branch: bytes
    publisher: int
    through_seq: int


@dataclass(frozen=True, slots=True)
class GapDetected:
    """Messages ``expected_seq..received_seq-1`` of a chain are missing.  Later messages are held; a fetch was
    requested from the publisher's retained log -- except where a re-key took our read permission on that chain
    away: the grant named its head beyond our cursor, and what we miss up to it is not fetched (SPEC 11).  Not
    reported for what a catch-up (after a restart or reconnect, or of a group learnt of during one) is fetching,
    unless that catch-up's window is never answered or its fetch stalls: then the report comes late, never not at
    all (SPEC 10.1 step 7)."""

    branch: bytes
    publisher: int
    expected_seq: int
    received_seq: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame was refused (forged, replayed, foreign, malformed, ...).  State is unchanged."""

    reason: RejectReason
    detail: str
    branch: bytes | None = None
    publisher: int | None = None
    seq: int | None = None
    frame: bytes | None = None
    """The refused frame's bytes, set only for REPLAY of a chain frame, so the driver can compare it with the
    logged message at that position (fork detection), and for FORK at a held position.  The driver clears it
    before queueing the event."""
    held: bytes | None = None
    """For FORK at a position whose message waits in the hold buffer (not logged yet): the held frame, the other
    half of the evidence.  The driver clears it before queueing the event."""

    def __repr__(self) -> str:
        branch = None if self.branch is None else self.branch.hex()
        where = f"branch={branch}, publisher={self.publisher}, seq={self.seq}"
        return f"Rejected({self.reason.name}, {self.detail!r}, {where})"


@dataclass(frozen=True, slots=True)
class Anchored:
    """The head ``seq`` of chain (branch, publisher) is committed in the Merkle tree of anchor epoch ``epoch``,
    whose signed checkpoint was written to the ledger under ``anchor_id`` (THREATS 7).

    ``ledger_verified`` is True only if this party read the checkpoint back from the ledger itself, found it
    confirmed and checked the inclusion proof against it; False means "the author says so, with a valid
    signature and inclusion proof" (no ledger configured).  ``restored``: this head came with a re-sent grant
    after we lost our state, and our cursor now starts there (older messages are rejected as replays) -- or it
    restarted our own chain beyond our log's head (a store restored from an older copy): then it is reported once
    our messages in between are fetched back from the author's log, or that was given up (SPEC 13.5)."""

    branch: bytes
    publisher: int
    seq: int
    epoch: int
    anchor_id: str
    ledger_verified: bool = False
    restored: bool = False


@dataclass(frozen=True, slots=True)
class ForkDetected:
    """Two different, validly signed messages at one (branch, publisher, seq): the publisher equivocated.
    ``evidence`` holds both frames; anyone with the publisher's key can check it
    (:func:`streams.anchor.check_fork`).  It is also kept in the store."""

    branch: bytes
    publisher: int
    seq: int
    evidence: ForkEvidence


@dataclass(frozen=True, slots=True)
class ChainConflict:
    """The author's signed ACK says it holds our chain ``(branch, publisher)`` through ``theirs``, beyond our head
    ``ours`` or with another message than ours at ``theirs``: this store is older than the chain it publishes
    (restored from a stale copy) or another holder of our key published there.  Publishing on the branch now
    raises :class:`~streams.errors.ChainConflictError` (a :class:`~streams.errors.LocalProtocolError`: a new
    message would fork the chain further), and ``wait_acknowledged`` for what the author will never acknowledge
    raises it too -- in this run and every later one of this store (the stop is kept in it; reported again once
    per run, when the author's ACK confirms it) -- until an anchor proof of our chain beyond our head, at or
    beyond ``theirs``, restarts it there (``Anchored(restored=True)``, SPEC 13.5), or the author takes our write
    permission away and gives it back (the chain goes on from the head its GRANT names).  Otherwise start over: a new
    store (with anchoring, it restarts at the anchored heads) or, without a ledger, a new identity (README,
    backups)."""

    branch: bytes
    publisher: int  #: our own index in the branch
    ours: int
    theirs: int


@dataclass(frozen=True, slots=True)
class Announced:
    """(Subscriber) the author's announcement verified: channel id and author DID match what we expected."""

    channel: bytes
    author_did: str


@dataclass(frozen=True, slots=True)
class Granted:
    """(Subscriber) a branch was opened or re-keyed for us."""

    branch: bytes
    epoch: int
    permission: Permission
    members: tuple[str, ...]  #: DIDs of the members, index order (the author first)


@dataclass(frozen=True, slots=True)
class Subscribed:
    """(Subscriber) the author admitted our subscription (its ADMIT, bound to our request): ``branch`` is our own
    branch, whose grant at ``epoch`` (or later) we hold.  What :meth:`streams.api.Subscriber.subscribe` waits for;
    the branch's grant came as a :class:`Granted` before, unless we held it already (a re-subscription)."""

    branch: bytes
    epoch: int
    permission: Permission
    members: tuple[str, ...]  #: DIDs of the members, index order (the author first)


@dataclass(frozen=True, slots=True)
class Refused:
    """(Subscriber) the author refused our subscription.  ``reason`` is the author's coarse reason code."""

    reason: RejectReason


@dataclass(frozen=True, slots=True)
class SubscriberAdmitted:
    """(Author) a DID was admitted by the policy and granted ``branch``."""

    did: str
    branch: bytes
    permission: Permission
    reason: str
    resubscribed: bool = False  #: the DID already had this branch: its grant was re-sent (state-loss recovery)


@dataclass(frozen=True, slots=True)
class SubscriberRefused:
    """(Author) a subscription was refused; ``did`` is empty if the request never proved a DID."""

    did: str
    reason: str


@dataclass(frozen=True, slots=True)
class BranchClosed:
    """A branch was revoked by the author or left by a member; nothing more is accepted on it."""

    branch: bytes
    #: "revoke", "unsubscribe", "removed" (we were taken out of a group: its re-key gives us no key, only a
    #: removal entry naming the author chain's head -- or, from an author before removal entries, no entry;
    #: SPEC 9.5), or
    #: (author side) "recheck": its admission no longer held
    by: str
    #: the author chain's final sequence number (revoke; removed: the head the re-key named, or our cursor if it
    #: named none), or 0
    last_seq: int
    reason: str = ""  #: (author side, by "recheck") why the admission no longer holds


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """(Author) a member left a group (its signed UNSUBSCRIBE): the group was re-keyed without it and stays open
    for the others (when the last member leaves, the group closes: :class:`BranchClosed`)."""

    branch: bytes
    did: str


@dataclass(frozen=True, slots=True)
class PermissionRestricted:
    """(Author) the policy now gives a subscriber fewer rights on its branch than it holds (a policy file edited
    from read-write to read, a credential that no longer holds beside an allow-list that gives less, a
    re-subscription admitted with less): its branch was re-keyed with ``permission``, the rights it held that the
    policy still gives (never more), effective from the next message."""

    branch: bytes
    did: str  #: the subscriber
    permission: Permission


@dataclass(frozen=True, slots=True)
class EpochAnchored:
    """(Author) an anchoring epoch's signed checkpoint is confirmed on the ledger: the heads of ``heads`` chains
    are anchored, and their members are sent their inclusion proofs."""

    epoch: int
    anchor_id: str  #: the ledger's id of the entry
    heads: int


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """(Author) the ledger stopped answering (``available`` False: ``queued`` epochs wait durably and are retried
    with backoff; publishing goes on) or answers again (True)."""

    available: bool
    queued: int  #: epochs written to the store and not yet confirmed on the ledger
    error: str = ""  #: what the ledger client raised (when unavailable)


@dataclass(frozen=True, slots=True)
class FetchRequested:
    """A member asked for retained messages of one of our chains -- or, at the author, of its own chain, which it
    fetches back after a restore (SPEC 13.5); the driver serves them from the log."""

    branch: bytes
    publisher: int
    from_seq: int
    to_seq: int
    peer: object


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """A member confirmed (signed ACK) that every message of our chain ``(branch, publisher)`` through
    ``through_seq`` is on its disk.  Emitted only when that member's acknowledged position advances."""

    branch: bytes
    publisher: int  #: our own index in the branch
    through_seq: int
    by_did: str


Event = (
    MessageReceived | Covered | GapDetected | Rejected | Announced | Granted | Refused | SubscriberAdmitted
    | SubscriberRefused | BranchClosed | FetchRequested | Acknowledged | Anchored | ForkDetected | Subscribed
    | PermissionRestricted | EpochAnchored | LedgerStatus | ChainConflict | MemberLeft
)
