"""The sans-I/O channel protocol core: bytes in, events and frames out.

Two machines share one chain engine:

* :class:`AuthorCore` -- owns the channel: announces it, verifies subscriptions, admits or refuses them through
  a :class:`~streams.policy.Policy`, opens one branch per subscriber (and group branches), publishes, revokes.
* :class:`SubscriberCore` -- fetches the announcement, proves control of its DID over a fresh challenge,
  receives grants, reads and (if permitted) writes its branch.

The core never touches sockets, the clock, the event loop or the disk.  Time comes in as ``now_ms`` arguments,
randomness from an injected ``rng(n) -> bytes``.  After each call the driver collects

* ``data_to_send()`` -- frames to transmit, with routing hints (:class:`Outgoing`);
* ``take_changes()`` -- what must be made durable (:class:`Changes`) *before* any event is acted upon or any
  publish is acknowledged (THREATS 4);
* ``take_routes()`` -- which peers verified as members of which branches, for a transport that routes by
  branch (and ``AuthorCore.take_syncs()``: members back from a restart or reconnect, to re-send anchor proofs);
  both are bounded sets, which a driver that neither routes by branch nor anchors may ignore;
* ``take_offenders()`` -- author: peers whose frames failed signature or AEAD checks, for a transport that can
  stop reading them (SPEC 10.3); bounded (``MAX_OFFENDERS`` peers between two calls), may be ignored;

and acts on the returned events.  Bad peer input never escapes as an exception: it becomes a
:class:`~streams.events.Rejected` event (THREATS 8).  Caller misuse raises
:class:`~streams.errors.LocalProtocolError`.

In-memory state is O(branches): per branch a few keys and per chain a cursor; messages live in the store.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple, TypeVar, cast

from . import _crypto
from ._config import check_ints
from ._state import ACCEPTS, BRANCH, SUBSCRIPTION, BranchState, Role, SubscriptionState
from .anchor import (
    ChainHead,
    EpochCheckpoint,
    ForkEvidence,
    InclusionProof,
    chain_blind_key,
    check_fork,
    restore_mark_digest,
    verify_inclusion,
)
from .errors import (
    ChainConflictError,
    ClosedResourceError,
    DecodeError,
    LocalProtocolError,
    PolicyUnavailable,
    RejectReason,
    RemoteProtocolError,
    StorageError,
    VerificationError,
)
from .events import (
    Acknowledged,
    Anchored,
    Announced,
    BranchClosed,
    ChainConflict,
    Covered,
    Event,
    FetchRequested,
    GapDetected,
    Granted,
    MemberLeft,
    MessageReceived,
    PermissionRestricted,
    Refused,
    Rejected,
    Subscribed,
    SubscriberAdmitted,
    SubscriberRefused,
    _message_received,
)
from .identity import Identity, PublicIdentity, did_from_public_key
from .policy import Decision, Policy, SubscriptionRequest, common_permission, could_admit, evidence_holds
from .wire import (
    MAX_CREDENTIAL,
    MAX_FRAME,
    MAX_GRANT_KEY_ENTRY,
    MAX_NAME,
    SESSION_LEN,
    VERSION,
    Ack,
    Admit,
    AnchorProof,
    Announce,
    Challenge,
    Checkpoint,
    Fetch,
    Frame,
    Grant,
    GrantEntry,
    GrantKey,
    GrantRemoval,
    GrantSecret,
    HeadNotice,
    Hello,
    Kind,
    Packet,
    Permission,
    Refuse,
    Revoke,
    SigningMode,
    Subscribe,
    SubscribeSecret,
    Unsubscribe,
    _packb,  # one shared packer (see there)
    decode_anchor_body,
    decode_frame,
    decode_grant_body,
    decode_grant_key,
    decode_grant_removal,
    decode_grant_secret,
    decode_grant_shared,
    decode_subscribe_secret,
    encode_anchor_body,
    encode_frame,
    encode_grant_body,
    encode_grant_key,
    encode_grant_removal,
    encode_grant_shared,
    encode_subscribe_secret,
    message_hash,
    padded_grant_removal,
)

__all__ = [
    "AnchorClaim",
    "AnchorRecord",
    "AuthorCore",
    "BranchRecord",
    "ChainRecord",
    "Changes",
    "CoreConfig",
    "LogRecord",
    "Outgoing",
    "SubscriberCore",
    "channel_id",
]

Rng = Callable[[int], bytes]
_MAX_FRESH = 4096  #: chains of branches created by one handshake's grants kept for restore proofs (SPEC 13.5)
_MAX_HINT_KEYS = 65_536  #: recipients whose hint key the author keeps (SPEC 8.5); a 32-byte key each
_LONG_AGO = -(1 << 62)  #: a time before any clock reading (ms)
_CHALLENGE_RUN_LEN = 16  #: bytes of the challenge key's per-run random component (SPEC 8.3)
#: Rejections that cost the receiver a cryptographic check: what a peer is charged for (CoreConfig.peer_failures).
_CHARGED = frozenset({RejectReason.BAD_SIGNATURE, RejectReason.BAD_AEAD})
#: Signed control frames of which a copy changes nothing: a FETCH is answered again, an ACK or a HEAD notice
#: repeats what was handled.  The author drops a copy that came on the same connection as one whose signature it
#: checked within ``CoreConfig.copy_window_ms``, before checking it again (SPEC 10.3): a recorded FETCH replayed
#: in a loop is not a lever on the author's crypto and log.
_ONCE_KINDS = frozenset({Kind.FETCH, Kind.ACK, Kind.HEAD})
#: Most control-frame hashes remembered for that (oldest forgotten first).
MAX_RECENT_CONTROL = 8192
#: Times a catch-up FETCH that got no answer at all is sent again (CoreBase.catch_up).
CATCH_UP_RETRIES = 2
#: Times a grant sync that got no answer at all is sent again (SPEC 9.5; the wait: CoreBase._sync_retry_ms).
GRANT_SYNC_RETRIES = 2
#: Times a window of our own chain being fetched back from the author (SPEC 13.5) is asked for again when nothing
#: of it came for ``fetch_retry_ms``, before the fetch is given up.
FILL_RETRIES = 3
#: Retries of a gap fetch without progress at ``fetch_retry_ms`` before the wait starts doubling (CoreConfig
#: ``fetch_retry_max_ms``): what a lost FETCH or answer needs, as before -- and more than a catch-up window's
#: retries, so that what it deferred is still reported on their time (SPEC 10.1 step 7).
FETCH_FLAT_RETRIES = CATCH_UP_RETRIES + 2
#: Most peers take_offenders() keeps between two calls (one entry per failing connection: a driver that never
#: asks must not grow with an attacker's reconnects).
MAX_OFFENDERS = 4096
SignatureCheck = tuple[bytes, bytes, bytes]
"""(Ed25519 public key, message hash, signature): one signature a batch of received frames needs checked."""
BatchVerifier = Callable[[list[SignatureCheck]], list[bool]]
"""For each check, whether the signature holds: a pure function (a driver may spread the work over threads)."""
_U64 = struct.Struct(">Q")
#: The latest expiry a challenge may have (SPEC 8.3): the store keeps it as a signed 64-bit INTEGER.
_HANDSHAKE_MAX_MS = (1 << 63) - 1
#: The latest time the handshake's clock starts at (SPEC 8.3): 2**62 ms before it would reach the latest expiry.
_HANDSHAKE_START_MAX_MS = 1 << 62
_PACKET_AAD_PREFIX = bytes((VERSION, Kind.PACKET))
_PACKET: Final = Kind.PACKET
#: How many requests (SUBSCRIBEs) of one subscription attempt a subscriber remembers: an answer may come after
#: a few HELLO retries on a slow path (one per second), and must still count (SPEC 9.1).
_MAX_REQUESTS = 16
#: Handshake states in which an ADMIT completes the subscription: a request of ours is out (SUBSCRIBE, or a
#: HELLO retry that went out after it -- the answer to the earlier SUBSCRIBE may still come).
_AWAITING = frozenset({SubscriptionState.AWAIT_CHALLENGE, SubscriptionState.AWAIT_GRANT})


#: Why a re-check revoked a subscriber (``recheck(reasons=...)``).  ``still_valid`` answers False for any
#: credential failure, so the first names them all.
_NO_EVIDENCE = ("the subscriber's credential no longer holds: revoked, suspended, expired, its issuer no longer "
                "trusted, or its status cannot be checked now")
_NOT_ADMITTED = "the policy no longer admits the subscriber's DID"


def _elapsed(now_ms: int, since_ms: int, interval_ms: int) -> bool:
    """Whether ``interval_ms`` passed since ``since_ms``.  The driver's clock is the wall clock: one stepped back
    (an NTP correction) counts as elapsed, so that no timer waits for the clock to catch up -- a lost FETCH is
    retried, a checkpoint is made, at the driver's next tick."""
    return now_ms >= since_ms + interval_ms or now_ms < since_ms


def channel_id(author_sign: bytes, name: str) -> bytes:
    """``H(chan, author_sign || name)``: a channel is bound to its author's key (SPEC.md, "Channel id")."""
    return _crypto.hash32(_crypto.P_CHANNEL, author_sign, name.encode())


def _check_name(name: object) -> None:
    """A channel name that its ANNOUNCE can carry (SPEC 6.2: 1..128 bytes of UTF-8).  Any other would make an
    announcement every subscriber refuses as malformed: a channel nobody can join."""
    if type(name) is not str:
        raise LocalProtocolError(f"a channel name must be text, not {type(name).__name__}")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise LocalProtocolError("a channel name must be valid Unicode text (it holds a lone surrogate)") from None
    if not 1 <= size <= MAX_NAME:
        raise LocalProtocolError(f"a channel name is 1..{MAX_NAME} bytes of UTF-8, not {size}")


def _check_credential(credential: object) -> None:
    if type(credential) is not bytes:
        raise LocalProtocolError(f"a credential presentation must be bytes, not {type(credential).__name__}")
    if len(credential) > MAX_CREDENTIAL:
        raise LocalProtocolError(f"credential presentation of {len(credential)} bytes exceeds the limit of "
                                 f"{MAX_CREDENTIAL}")


def _payload_bytes(payload: object) -> bytes:
    """A payload given as a bytearray or memoryview, as bytes; anything else is the caller's error."""
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise LocalProtocolError(f"payload must be bytes, not {type(payload).__name__}")


@functools.lru_cache(maxsize=4096)
def _did(public: bytes) -> str:
    """``did_from_public_key``, memoised: base58 costs about 6 us, and every received message names its
    publisher's DID.  Bounded, so it adds nothing per branch."""
    return did_from_public_key(public)


def _hint_key(identity: Identity, peer_kx: bytes, author_kx: bytes, recipient_kx: bytes) -> bytes:
    """The key of an author's hints for one recipient (SPEC 8.5): from their X25519 agreement, which only the two
    can compute -- ``identity`` is either of them, ``peer_kx`` the other's key.  One X25519 per pair: callers may
    keep it (the author per member of a group, :meth:`AuthorCore._hint_for`; a member for its author)."""
    return identity.agree(_crypto.P_HINTKEY, peer_kx, author_kx + recipient_kx)


def _hint(hint_key: bytes, channel: bytes, branch: bytes, epoch: int) -> bytes:
    """A grant entry's hint (SPEC 8.5): keyed by the pair's hint key, so that an observer who knows every DID
    cannot tell whose entry it is (THREATS 1), and bound to the grant's channel, branch and epoch."""
    return _crypto.mac16(hint_key, _crypto.P_HINT, channel, branch, _U64.pack(epoch))[:8]


def _legacy_hint(branch: bytes, epoch: int, kx_public: bytes) -> bytes:
    """The hint of grants written before the keyed one (SPEC 8.5): from public values alone, so anyone who knows
    the recipient's DID computes it.  Read, to open grants kept in stores and histories; never written."""
    return _crypto.hash32(_crypto.P_HINT, branch, _U64.pack(epoch), kx_public)[:8]


#: A grant's shared part is encrypted under a key made for it alone: one plaintext per key, a constant nonce.
_GRANT_NONCE = bytes(_crypto.NONCE_SIZE)


def _grant_aad(branch: bytes, epoch: int) -> bytes:
    """Associated data of a grant's shared part (SPEC 8.5): which branch and epoch it belongs to."""
    return _crypto.P_GRANT + branch + _U64.pack(epoch)


def _proof_digest(channel: bytes, author_sign: bytes, nonce: bytes, expires_ms: int, credential: bytes) -> bytes:
    return _crypto.hash32(_crypto.P_PROOF, channel, author_sign, nonce, _U64.pack(expires_ms), credential)


#: The least value of each integer field of :class:`CoreConfig`: the least one its docstring gives a meaning to.
#: Below it the config breaks the protocol later, far from the cause -- every frame refused as too large
#: (``max_frame``), every challenge expired at once (``challenge_ttl_ms``), a gap fetched as an empty range and
#: never filled (``max_fetch``), a gap re-fetched at every timer tick (``fetch_retry_ms``), every peer of a
#: batch suspended as soon as one failed a check (``peer_failures``) -- or means nothing (a hold buffer of no
#: message, a checkpoint after no message, room for no nonce).  0 is a meaning for the intervals and windows
#: that may be 0: no pacing, no wait (``fetch_retry_max_ms`` below ``fetch_retry_ms`` is ``fetch_retry_ms``).
_CONFIG_FLOORS: dict[str, int] = {
    "max_frame": 1,
    "hold_limit": 1,
    "challenge_ttl_ms": 1,
    "checkpoint_every": 1,
    "checkpoint_interval_ms": 0,
    "max_fetch": 1,
    "max_nonces": 1,
    "fetch_retry_ms": 1,
    "fetch_retry_max_ms": 0,
    "grant_sync_interval_ms": 0,
    "ack_interval_ms": 0,
    "copy_window_ms": 0,
    "peer_failures": 1,
}
#: Every field is at most ``2**63 - 1`` (:data:`streams._config.INT_CEILING`).  It matters most for the fields that
#: the wire carries as a u64 once added to a clock reading or a sequence number: ``challenge_ttl_ms`` (a
#: challenge's ``expires_ms``, SPEC 8.3) and ``max_fetch`` (a FETCH's ``to_seq``), where a larger value raised
#: ``struct.error`` out of :meth:`_CoreBase.receive` (at the first HELLO, anyone's) or out of a catch-up, rather
#: than a config error here.


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Protocol limits and modes.  Units are in the field names.

    Raises :class:`~streams.errors.LocalProtocolError`, naming the field and the value, for a field that is not
    an integer (``signing``: not a :class:`~streams.wire.SigningMode`) or is below its least meaningful value:
    1 for the limits, counts, ``challenge_ttl_ms`` and ``fetch_retry_ms``; 0 for the other intervals -- or is above
    ``2**63 - 1`` (``challenge_ttl_ms`` and ``max_fetch`` are carried as a u64 on the wire once added to a time or a
    seq)."""

    max_frame: int = MAX_FRAME
    """Hard limit on an encoded frame, bytes; larger frames are refused before parsing (THREATS 8)."""
    hold_limit: int = 256
    """Early messages held per chain while a gap is filled; beyond it they are dropped (``HOLD_FULL``)."""
    challenge_ttl_ms: int = 60_000
    """Validity window of a subscription challenge, ms of the handshake's clock (THREATS 5; SPEC 8.3: it advances
    as the driver's clock does and never goes back, so a challenge lives this long of the clock going forward)."""
    signing: SigningMode = SigningMode.EACH
    """Signing mode for branches this party opens (author) -- every packet signed, or amortized."""
    checkpoint_every: int = 32
    """Amortized mode: a signed checkpoint after this many unsigned packets in a chain."""
    checkpoint_interval_ms: int = 200
    """Amortized mode: a signed checkpoint at most this long after the first uncovered packet."""
    max_fetch: int = 1024
    """Most messages served for one FETCH request (the requester asks again for more)."""
    max_nonces: int = 100_000
    """Most unexpired used challenge nonces remembered (one per subscription within ``challenge_ttl_ms``); beyond
    it a SUBSCRIBE is refused BAD_CHALLENGE, which the requester retries, until used challenges expire.  Requests
    the policy refuses keep theirs in at most half of it (SPEC 9.2 step 4)."""
    fetch_retry_ms: int = 1000
    """A gap that made no progress for this long is fetched again (the FETCH or its replies may have been lost
    on an untrusted network: THREATS 4, no silent loss); so is, twice at most, a catch-up window that got no
    answer at all (:meth:`catch_up`).  A gap still fetched without progress after ``FETCH_FLAT_RETRIES`` retries
    is asked again less often: the wait doubles at each retry, up to ``fetch_retry_max_ms``."""
    fetch_retry_max_ms: int = 60_000
    """Longest wait (ms) between two FETCHes of a gap that makes no progress (a tail the publisher can no longer
    serve: its log lost it, or it cut us off).  Never given up -- the loss is reported (GapDetected), and a
    publisher whose log is repaired later is still asked -- but not asked every ``fetch_retry_ms`` for good.
    Any message accepted in order brings the wait back to ``fetch_retry_ms``; so does a catch-up (a reconnect or a
    restart)."""
    grant_sync_interval_ms: int = 1000
    """Author: a member's grant sync of a branch (SPEC 9.5) is answered at most once per this many ms on one
    connection (unless it asks after a later epoch).  A signed FETCH has no freshness, so a relay could replay
    one to make the author resend a branch's grant history again and again (THREATS 8).  Member: an unanswered
    grant sync is asked again after 1.5 x the larger of this and ``fetch_retry_ms``."""
    ack_interval_ms: int = 20
    """At most one ACK per chain per this many ms (SPEC 12): the first after a quiet spell goes at once, the
    cursor moves of a stream are acknowledged together when the interval has passed (:meth:`handle_timer`).
    0: one ACK per received batch."""
    copy_window_ms: int = 500
    """Author: a FETCH, ACK or HEAD notice identical to one whose signature it checked less than this many ms ago
    on the same connection is dropped before any crypto (SPEC 10.3).  A member's retry (the same bytes) must
    come after it to be answered, so the window used is at most half of this config's ``fetch_retry_ms`` and
    ``grant_sync_interval_ms`` (the parties of a channel are expected to share these settings)."""
    peer_failures: int = 4
    """A transport peer whose frames failed this many signature or AEAD checks in one :meth:`receive_many` call
    has its further frames of the call rejected before any crypto (``SUSPENDED``), and its signed chain frames
    are checked one by one there, not in the batch pre-pass, once its first one failed (SPEC 10.3): a flood of
    well-formed forgeries naming a real branch costs a few checks per batch, not one each (THREATS 8).  The
    driver hears of such peers through :meth:`take_offenders` (an endpoint suspends them).  Author only: a
    subscriber hears its author on one connection, which a relay injecting a few forgeries into the author's
    stream would share -- suspending it would drop the genuine frames around them."""

    def __post_init__(self) -> None:
        # Refused here, where the caller's mistake is, rather than met as a hang or a refusal much later.
        check_ints("CoreConfig", self, _CONFIG_FLOORS)
        if not isinstance(self.signing, SigningMode):
            raise LocalProtocolError(f"CoreConfig.signing must be a SigningMode, not {self.signing!r}")


class Outgoing(NamedTuple):
    """A frame to transmit.  ``peer`` set: a direct reply to that transport peer.  ``branch`` set: branch
    traffic, for the members of that branch.  Both: a reply to a member of that branch, which a routing transport
    may take as a route of the branch to that peer (never set for a peer that is no member).  Neither: for
    everyone (the announcement).  (Named tuples rather
    than dataclasses for the per-message records: they cost a fraction to build.)"""

    data: bytes
    peer: object | None = None
    branch: bytes | None = None


class LogRecord(NamedTuple):
    """A message to retain in the log (serves fetch, catch-up and audit)."""

    branch: bytes
    publisher: int
    seq: int
    hash: bytes
    frame: bytes


@dataclass(slots=True)
class ChainRecord:
    """The cursor of one (branch, publisher) chain: the next sequence number and the head hash."""

    branch: bytes
    publisher: int
    next_seq: int
    head: bytes
    covered: int = 0  #: highest seq covered by a signature
    #: Our own chain, member side: the seq at which the author's signed ACK showed it to conflict with the
    #: author's copy (``ChainConflict``, SPEC 12), kept across restarts until lifted; 0: none.
    conflict: int = 0


@dataclass(slots=True)
class BranchRecord:
    """Durable description of a branch.  ``keys`` and ``blind`` are secrets: the store encrypts them."""

    id: bytes
    epoch: int
    mode: int
    grant_hash: bytes
    grant_frame: bytes
    me: int
    members: list[tuple[int, bytes, int]]
    keys: list[tuple[int, int, bytes]]  #: (epoch, publisher, key)
    state: str = BranchState.OPEN.value
    peer_did: str = ""  #: author side: the subscriber of a per-subscriber branch ("" for groups)
    evidence: bytes = b""  #: author side: what admitted the subscriber (e.g. its credential), re-checked later
    #: author side: grants this one replaced, oldest first (the last is epoch - 1), served to members that missed
    #: a re-key (SPEC 9.5): the newest part of the branch's grant history.  A core with ``grants_lookup`` lists
    #: only those its store does not hold yet (the store moves them to its grant history when it writes the
    #: record); one without either hook lists the whole history.  Empty for a branch never re-keyed.
    grants: list[bytes] = field(default_factory=list)
    #: author side, groups: members removed, as (index, Ed25519 public key, the epoch of the grant that removed
    #: it, the author chain's head seq at that grant) -- so that one that was away at its removal is told when it
    #: asks (SPEC 9.5), and one that missed messages published before it is served them, none after (0: a record
    #: written before the head was kept serves none)
    former: list[tuple[int, bytes, int, int]] = field(default_factory=list)
    #: member side, a branch a REVOKE closed: the author chain's final seq it named, while we had not reached it
    #: (the tail still fetched and accepted after a restart, SPEC 8.8); 0: none
    tail: int = 0
    #: the hash of the message at ``tail`` the close named (b"": not known, a record written before it was kept):
    #: another message there is the author's fork (THREATS 7)
    tail_hash: bytes = b""

    def __repr__(self) -> str:
        return f"BranchRecord(id={self.id.hex()}, epoch={self.epoch}, members={len(self.members)}, state={self.state})"

    def conflict_of(self, chain: ChainRecord) -> int:
        """The ChainConflict stop a stored chain record of this branch keeps that is in force (0: none): one on
        our own chain (a member's) while we may write it.  A re-key that takes our write away drops the chain
        (its row stays in the store, stop included, but there is nothing to publish), and the one that gives it
        back restarts the chain at the author's copy, which lifts the stop (SPEC 11)."""
        if not (chain.conflict and self.me and chain.publisher == self.me):
            return 0
        mine = next((p for i, _, p in self.members if i == self.me), None)
        return chain.conflict if mine is not None and Permission(mine).can_write else 0


@dataclass(frozen=True, slots=True)
class AnchorClaim:
    """A verified (signature, blinded leaf, inclusion path) ANCHOR_PROOF not yet applied: with a ledger, the
    driver first reads the checkpoint back from the ledger (:meth:`SubscriberCore.take_anchor_claims`)."""

    head: ChainHead
    key_epoch: int
    proof: InclusionProof
    checkpoint: EpochCheckpoint
    anchor_id: str
    restore: bool


@dataclass(frozen=True, slots=True)
class AnchorRecord:
    """The latest anchored head of a chain as a member verified it: kept so that it can be shown to an auditor,
    and (``restored``) so that the log of that chain legitimately starts after ``seq``."""

    branch: bytes
    publisher: int
    seq: int
    hash: bytes
    key_epoch: int
    epoch: int
    anchor_id: str
    checkpoint: bytes  #: encoded :class:`~streams.anchor.EpochCheckpoint`
    index: int
    tree_size: int
    path: tuple[bytes, ...]
    ledger_verified: bool
    restored: bool
    #: Our signature over :func:`~streams.anchor.restore_mark_digest` of this head, made when we restarted the
    #: chain here holding nothing of it at or below (our log of it starts after ``seq``); b"" otherwise.
    mark: bytes = b""


@dataclass(slots=True)
class Changes:
    """What the last calls changed and the driver must persist before acting on events (one transaction)."""

    branches: list[BranchRecord] = field(default_factory=list)
    chains: list[ChainRecord] = field(default_factory=list)
    log: list[LogRecord] = field(default_factory=list)
    nonces: list[tuple[bytes, int]] = field(default_factory=list)
    announce: bytes | None = None
    anchored: list[AnchorRecord] = field(default_factory=list)
    #: (branch, publisher, seq): drop that chain's log rows beyond ``seq`` before ``log`` is written -- our own
    #: chain, restarted at a grant's head after a time without write permission (what we signed beyond it was
    #: refused, and is replaced by what we sign now).
    log_cut: list[tuple[bytes, int, int]] = field(default_factory=list)
    #: (branch, publisher, seq): drop that chain's log rows at or below ``seq`` -- our own chain, restarted at a
    #: grant's head that our log does not hold: what it holds there is not the author's copy (forks a store
    #: restored from an older copy signed, ChainConflict), and our chain no longer builds on it.
    log_drop: list[tuple[bytes, int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.branches or self.chains or self.log or self.nonces or self.announce or self.anchored
                    or self.log_cut or self.log_drop)


# --- in-memory state -------------------------------------------------------------------------------------------


class _Fill:
    """Our own chain, member side, restarted at the author's anchored head beyond our log's head (a store restored
    from an older copy, SPEC 13.5): the messages in between, ours, fetched back from the author's retained log and
    logged below the cursor, each checked against our own signature (or, unsigned in amortized mode, the chain
    key) and linked to the one before -- the first to our log's head, the last being the anchored head."""

    __slots__ = ("asked_ms", "end", "event", "final", "hi", "left", "lo", "prev")

    def __init__(self, lo: int, hi: int, prev: bytes, final: bytes) -> None:
        self.lo = lo  #: the next seq to log
        self.hi = hi  #: the anchored head's seq (the last to log)
        self.prev = prev  #: the hash the message at ``lo`` must link to (b"": our message 1, any: see _apply_anchor)
        self.final = final  #: the anchored head's hash
        #: The proof's event, reported once the fill ends (None: a fill taken up again after a restart).
        self.event: Anchored | None = None
        self.end = 0  #: the last seq of the window asked for
        self.asked_ms = 0  #: when that window was asked for, or a message of it last came
        self.left = FILL_RETRIES  #: times the window may still be asked for again without an answer


class _Chain:
    __slots__ = ("ack_ms", "acked", "acked_by", "advanced_ms", "anchor_wait", "anchored", "catch_up_left",
                 "conflict", "conflict_told", "covered", "deferred", "deferred_at", "fetch_end", "fill", "final",
                 "final_frame", "final_hash", "first_uncovered_ms", "gap_to", "head", "held", "next_seq", "notified",
                 "progress_ms", "quick_acked", "stalls")

    def __init__(self, next_seq: int, head: bytes, covered: int = 0) -> None:
        self.next_seq = next_seq
        self.head = head
        self.covered = covered
        self.held: dict[int, Frame] | None = None
        self.gap_to = 0  # highest seq known to exist (a gap was reported up to here)
        self.fetch_end = 0  # last seq the FETCH in flight can bring (0 or < next_seq: none in flight)
        self.catch_up_left = 0  # times a catch-up FETCH nobody answered may still be sent again
        #: A frame (or anchor proof) that came while our catch-up window was unanswered showed messages missing up
        #: to here (exclusive) that were not reported: told once the window ends, as far as its answer does not
        #: explain them, and at the latest ``deferred_at`` + (CATCH_UP_RETRIES + 1) x fetch_retry_ms
        #: (:meth:`_CoreBase._tell_deferred`); 0: none.
        self.deferred = 0
        self.deferred_at = 0  #: when ``deferred`` was first set (ms)
        self.advanced_ms = 0  #: when a frame was last accepted in order (ms): the fetch makes progress
        self.first_uncovered_ms: int | None = None
        self.notified = 0  # highest seq announced in a HEAD notice
        self.progress_ms = 0  # last time the chain advanced or a gap fetch was (re)issued
        self.stalls = 0  # gap fetches asked again in a row with nothing accepted in order meanwhile (the backoff)
        self.acked = 0  # receiver side: highest seq we acknowledged (0 after a restart: acknowledge again)
        self.ack_ms = _LONG_AGO  # receiver side: when we last sent an ACK of this chain
        self.quick_acked = 0  # receiver side: highest head whose HEAD notice we answered outside the ACK pacing
        self.acked_by: dict[int, int] | None = None  # publisher side: member index -> acknowledged seq
        self.anchored = 0  # highest seq whose anchor proof we applied (or the store held): older proofs are replays
        self.anchor_wait: tuple[AnchorClaim, bool] | None = None  # proof ahead of the cursor, applied once caught up
        #: Our own chain, member side: the seq through which the author's signed ACK says it holds our chain, when
        #: that contradicts our store (beyond our head, or another message at it); 0: none.  We publish no more.
        #: Durable (``ChainRecord.conflict``): a restart does not lift it.
        self.conflict = 0
        self.conflict_told = 0  #: the highest conflict reported (ChainConflict) in this run
        #: The author's chain of a branch its REVOKE closed, member side: the final head the REVOKE named, when we
        #: had not accepted it yet -- its missing tail is still fetched and accepted, nothing beyond (0: none).
        self.final = 0
        #: The hash the close named for ``final`` (b"": not known): another message there is a fork (SPEC 8.8).
        self.final_hash = b""
        #: The REVOKE that named it, while in memory: with another signed message there, the fork's evidence.
        self.final_frame: bytes | None = None
        #: Our own chain, member side: the messages below our cursor being fetched back from the author (or None).
        self.fill: _Fill | None = None

    def catching_up(self) -> bool:
        """Our catch-up window (from the cursor, after a restart or reconnect) is out and unanswered: what a
        frame of the chain reveals meanwhile is being fetched, not a gap (SPEC 10.1 step 7)."""
        return self.catch_up_left > 0 and self.fetch_end >= self.next_seq


#: Equal tuples that idle branches share: the (epoch, publisher) keys of ``_Branch.keys`` and the author's own
#: entry of ``_Branch.members`` were three tuples of every branch's own, about 170 bytes of the 2 KiB an idle
#: branch may cost (bench_scale).  Bounded (emptied when full): a cache, not state.
_SHARED: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_MAX_SHARED = 4096
_T = TypeVar("_T", bound=tuple[Any, ...])


def _shared(t: _T) -> _T:
    """``t``, or an equal tuple met before (the same object for every branch that holds it)."""
    got = _SHARED.get(t)
    if got is None:
        if len(_SHARED) >= _MAX_SHARED:
            _SHARED.clear()
        _SHARED[t] = got = t
    return cast(_T, got)


class _Branch:
    __slots__ = ("chains", "epoch", "evidence", "final_acked", "former", "grant_frame", "grant_hash", "grants",
                 "has_evidence", "heard", "id", "keys", "lapses", "me", "members", "mode", "peer_did", "quiet",
                 "refreshes", "state", "sync_ms")

    def __init__(self, rec: BranchRecord) -> None:
        self.id = rec.id
        self.epoch = rec.epoch
        self.mode = SigningMode(rec.mode)
        self.grant_hash = rec.grant_hash
        # The grant frame (~400 B) and the admission evidence (a credential: kilobytes) are needed rarely (a
        # re-subscription, a re-check): once persisted they are dropped from memory when the driver can read them
        # back from the store (``extras_lookup``), keeping an idle branch's memory small.  None = in the store.
        self.grant_frame: bytes | None = rec.grant_frame
        self.me = rec.me
        self.members: dict[int, tuple[bytes, Permission]] = {
            i: _shared((pk, Permission(p))) if i == 0 else (pk, Permission(p)) for i, pk, p in rec.members}
        self.keys: dict[tuple[int, int], bytes] = {_shared((e, p)): k for e, p, k in rec.keys}
        self.state = BranchState(rec.state)
        self.peer_did = rec.peer_did
        self.evidence: bytes | None = rec.evidence
        self.has_evidence = bool(rec.evidence)
        self.grants: list[bytes] | None = rec.grants  #: earlier grants (author side; None = in the store)
        #: author side: removed members of a group, index -> (public key, epoch of the grant that removed it, the
        #: author chain's head seq at that grant)
        self.former: dict[int, tuple[bytes, int, int]] | None = (
            {i: (pk, e, s) for i, pk, e, s in rec.former} if rec.former else None)
        self.chains: dict[int, _Chain] = {}
        self.final_acked = 0  #: our chain's head as the author held it when a re-key took our write away
        self.sync_ms = _LONG_AGO  #: subscriber side: when we last asked for the grants after our epoch
        self.heard = True  #: subscriber side: an authentic frame of the author's came since the last sync_quiet
        self.quiet = 0  #: subscriber side: forced refreshes in a row that found the branch quiet
        self.refreshes = 0  #: subscriber side: forced refreshes seen (sync_quiet)
        #: publisher -> (epoch they were listed at, the epochs up to it that drew no key for its chain, ascending);
        #: None until a frame of an earlier epoch asks (an idle branch keeps no empty dict: SCALE's memory target)
        self.lapses: dict[int, tuple[int, list[int]]] | None = None

    def lapse_between(self, publisher: int, lo: int, hi: int) -> bool:
        """Whether a member's write permission lapsed after key epoch ``lo``, up to ``hi``: an epoch in between drew
        no key for its chain (a re-key took write away).  Frames it signed under ``lo`` and ``hi`` then belong to
        two runs of its right, and the later run starts beyond the head the lapse named: a frame of the earlier
        run at a position of the later one was never accepted (SPEC 11).  Cost: a bisection (the list is made
        once per epoch)."""
        if publisher == 0 or lo >= hi:
            return False
        lapses = self.lapses
        if lapses is None:
            lapses = self.lapses = {}
        at, gaps = lapses.get(publisher, (-1, []))
        if at != self.epoch:
            gaps = [e for e in range(self.epoch + 1) if (e, publisher) not in self.keys]
            lapses[publisher] = (self.epoch, gaps)
        i = bisect.bisect_right(gaps, lo)
        return i < len(gaps) and gaps[i] <= hi

    def write_lapsed(self, publisher: int, epoch: int) -> bool:
        """Whether the publisher's write permission lapsed after ``epoch`` (up to now): what it signs under
        ``epoch`` beyond our cursor was made outside its current right."""
        return self.lapse_between(publisher, epoch, self.epoch)

    def record(self, grant_frame: bytes, evidence: bytes, grants: list[bytes]) -> BranchRecord:
        return BranchRecord(
            self.id, self.epoch, int(self.mode), self.grant_hash, grant_frame, self.me,
            [(i, pk, int(p)) for i, (pk, p) in sorted(self.members.items())],
            [(e, p, k) for (e, p), k in sorted(self.keys.items())],
            self.state.value, self.peer_did, evidence, grants,
            [(i, pk, e, s) for i, (pk, e, s) in sorted(self.former.items())] if self.former else [],
            self.tail, self.tail_hash,
        )

    @property
    def tail(self) -> int:
        c = self.chains.get(0)
        return c.final if self.me and c is not None and c.final >= c.next_seq else 0

    @property
    def tail_hash(self) -> bytes:
        c = self.chains.get(0)
        return c.final_hash if self.tail and c is not None else b""

    def chain_record(self, publisher: int) -> ChainRecord:
        c = self.chains[publisher]
        return ChainRecord(self.id, publisher, c.next_seq, c.head, c.covered, c.conflict)

    def transition(self, event: str) -> None:
        nxt = BRANCH.get((self.state, event))
        if nxt is None:
            raise LocalProtocolError(f"branch {self.id.hex()} is {self.state.value}: cannot {event}")
        self.state = nxt


class _Reject(Exception):
    """Internal: abort handling of one frame with a reason (turned into a Rejected event)."""

    def __init__(self, reason: RejectReason, detail: str, branch: bytes | None = None,
                 publisher: int | None = None, seq: int | None = None, frame: bytes | None = None,
                 held: bytes | None = None) -> None:
        super().__init__(detail)
        self.event = Rejected(reason, detail, branch, publisher, seq, frame, held)


# --- the shared engine ---------------------------------------------------------------------------------------


_Handler = Callable[[Any, Frame, int, object, list[Event]], None]


_HANDLERS: dict[type[Any], dict[Kind, _Handler]] = {}


def _handler_table(cls: type[_CoreBase]) -> dict[Kind, _Handler]:
    """``ACCEPTS`` for ``cls.role``, resolved to ``cls``'s methods once per class: one dict lookup per frame."""
    table = _HANDLERS.get(cls)
    if table is None:
        table = _HANDLERS[cls] = {kind: getattr(cls, name) for (role, kind), name in ACCEPTS.items()
                                  if role is cls.role}
    return table


class _CoreBase:
    role: Role
    #: Whether frames are charged to their transport peer (SPEC 10.3): the author's, from many connections.  A
    #: subscriber hears only its author, on one connection that an injecting relay would share.
    _charges_peers: bool = False

    def __init__(self, identity: Identity, config: CoreConfig | None, rng: Rng | None) -> None:
        self._id = identity
        self._handlers = _handler_table(type(self))
        #: Whether a packet that is simply the next of its chain takes :meth:`_in_order_packet` (the role's PACKET
        #: handler is the one it stands for; tests turn it off to compare the two paths).
        self._packets_in_order = self._handlers.get(Kind.PACKET) is _CoreBase._on_chain_frame
        self.config = config or CoreConfig()
        self._rng: Rng = rng or os.urandom
        self._out: list[Outgoing] = []
        self._changes = Changes()
        self._dirty: set[tuple[bytes, int]] = set()  # chains whose cursor moved since take_changes
        self._branches: dict[bytes, _Branch] = {}
        self._channel = b""
        self._author: PublicIdentity | None = None
        self._announce_hash = b""
        #: Injected by the driver: the hash logged at (branch, publisher, seq), or None.  Lets anchor proofs of
        #: older heads be matched against what we accepted without the core touching the disk.
        self.log_lookup: Callable[[bytes, int, int], bytes | None] | None = None
        #: Driver hook: ``branch -> (grant frame, evidence)`` as stored, so that the core need not keep them in
        #: memory (read-only; the core stays free of I/O of its own).
        self.extras_lookup: Callable[[bytes], tuple[bytes, bytes, list[bytes]] | None] | None = None
        #: Driver hook (author): ``(branch, lo, hi) ->`` the branch's stored grant history for epochs ``lo..hi``,
        #: oldest first, as far back from ``hi`` as it goes without a hole.  Set it with ``extras_lookup``: a store
        #: keeps the history a record carries (:attr:`BranchRecord.grants`) apart, and the record comes back with
        #: none.  With neither hook, the core keeps every grant in memory.
        self.grants_lookup: Callable[[bytes, int, int], list[bytes]] | None = None
        #: Driver hook (author): ``(branch, epoch, frame) ->`` whether a grant frame the branch record holds (read
        #: back through ``extras_lookup``) is intact -- our own signed grant of that branch.  One that is not (a
        #: disk fault) is never served, nor carried into the grant history; the driver tells the operator.  None:
        #: every grant held is taken as it is.
        self.grant_intact: Callable[[bytes, int, bytes], bool] | None = None
        #: Driver hook for :meth:`receive_many`: checks the signatures of a batch's chain frames up front (on
        #: several threads, say).  Only the checks it confirms are skipped later; nothing else changes.
        self.verify_many: BatchVerifier | None = None
        #: Driver hook (author, SPEC 8.9): the session of the connection ``peer``'s frames arrive on, which its
        #: FETCHes must carry (a FETCH replayed on another connection is refused before its signature is
        #: checked); ``b""`` for a peer the transport no longer knows (nothing matches it); None, or no hook,
        #: where the transport has no sessions (nothing is checked).
        self.session_of: Callable[[object], bytes | None] | None = None
        #: Driver hook (member): the session of the connection our frames leave on now, bound into every
        #: FETCH we make; no hook, or None, sends unbound FETCHes (a transport without sessions).
        self.my_session: Callable[[], bytes | None] | None = None
        self._verified: set[SignatureCheck] = set()
        #: id(frame) -> (key, payload) of the packets receive_many's pre-pass opened, or (key, None) of one that
        #: :meth:`_in_order_packet` found not to authenticate (for this call's frames only).
        self._opened: dict[int, tuple[bytes, bytes | None]] = {}
        #: The earliest timer deadline set since the last :meth:`take_deadline` (see there).
        self._deadline: int | None = None
        #: Routing hints for the driver's transport (see :meth:`take_routes`).
        self._route_hints: dict[tuple[bytes, object], bool] = {}
        #: Failed checks per peer in the current receive_many call, and since the last take_offenders().
        self._failures: dict[object, int] = {}
        self._offenders: dict[object, int] = {}
        #: Control frames handled lately (_ONCE_KINDS), author only: (message hash + signature, transport peer) ->
        #: when (ms), oldest first; and whether the one being handled passed its signature check.
        self._recent_control: OrderedDict[tuple[bytes, object], int] = OrderedDict()
        #: the HEADs of _recent_control whose first copy was dropped silently (the next copies are reported)
        self._copied_heads: OrderedDict[tuple[bytes, object], None] = OrderedDict()
        #: Member: branches whose timed grant sync is not answered yet -> retries left (SPEC 9.5).
        self._sync_waits: dict[bytes, int] = {}
        #: Member: groups whose re-key came before their first grant: our own branch's grant sync was asked for it.
        self._first_grant_asked: dict[bytes, int] = {}  #: -> when first asked (ms)
        self._first_grant_keeps = 0  #: own-branch GRANTs that may still leave that ask's grant-sync wait running
        #: Member: the branches of _sync_waits whose sync is our catch-up's (entries not in _sync_waits are over).
        self._catch_up_syncs: set[bytes] = set()
        self._control_verified = False
        #: group members' verified peers, (branch, member) -> peers (most recent last, a few): forgotten for that
        #: branch when the member is removed.  Groups only: a per-subscriber branch has one member.
        self._member_peers: dict[tuple[bytes, int], dict[object, None]] = {}
        self._now_ms = 0  #: the ``now_ms`` of the latest frame or timer call (for work started by a driver call)

    # -- driver interface ------------------------------------------------------------------------------------

    @property
    def identity(self) -> Identity:
        return self._id

    @property
    def channel(self) -> bytes:
        return self._channel

    def data_to_send(self) -> list[Outgoing]:
        """Frames produced since the last call, in order."""
        out, self._out = self._out, []
        return out

    def _extras(self, b: _Branch) -> tuple[bytes, bytes, list[bytes]]:
        """(grant frame, evidence, earlier grants) of a branch, from memory or from the store through
        ``extras_lookup``."""
        grant, evidence, grants = b.grant_frame, b.evidence, b.grants
        if grant is None or evidence is None or grants is None:
            found = None if self.extras_lookup is None else self.extras_lookup(b.id)
            if found is None:  # pragma: no cover - dropped only when the hook exists and the record was taken
                raise LocalProtocolError(f"branch {b.id.hex()}: its grant is not in the store")
            grant = found[0] if grant is None else grant  # a newer grant in memory wins over the stored one
            evidence = found[1] if evidence is None else evidence
            grants = found[2] if grants is None else grants
        return grant, evidence, grants

    def _record(self, b: _Branch) -> BranchRecord:
        return b.record(*self._extras(b))

    def _shed(self, b: _Branch) -> None:
        """Drop what the store holds (see ``_Branch``), once the branch's record went to the driver."""
        if self.extras_lookup is not None:
            b.grant_frame = None
            b.evidence = None
            b.grants = None

    def take_changes(self) -> Changes:
        """What must be made durable (in one transaction) before events are acted on or a publish returns."""
        ch, self._changes = self._changes, Changes()
        for rec in ch.branches:
            taken = self._branches.get(rec.id)
            if taken is not None:
                self._shed(taken)
        if self._dirty:
            # Chain cursors are collected once per batch, not once per message.
            for bid, p in self._dirty:
                b = self._branches.get(bid)
                if b is not None and p in b.chains:
                    ch.chains.append(b.chain_record(p))
            self._dirty = set()
        return ch

    def load(self, branches: list[BranchRecord], chains: list[ChainRecord]) -> None:
        """Restore branch state from the store after a restart."""
        for rec in branches:
            loaded = _Branch(rec)
            self._shed(loaded)
            self._branches[rec.id] = loaded
        tails = {rec.id: (rec.tail, rec.tail_hash) for rec in branches if rec.tail}
        for cr in chains:
            b = self._branches.get(cr.branch)
            # Not a cursor we keep any more (a re-key took the right away): it is made afresh from the grant that
            # gives the right back (_sync_chains).  Our own is dropped by load_subscriber, which reads what the
            # author held of it first.
            if b is not None and cr.publisher in b.members and (cr.publisher == b.me
                                                                 or self._should_track(b, cr.publisher)):
                c = b.chains[cr.publisher] = _Chain(cr.next_seq, cr.head, cr.covered)
                # A conflict the author's ACK showed in an earlier run still holds: our store did not get younger.
                c.conflict = cr.conflict if cr.publisher == b.me and b.me else 0
                tail, tail_hash = tails.get(cr.branch, (0, b"")) if cr.publisher == 0 and b.me else (0, b"")
                if tail >= cr.next_seq and b.state is BranchState.CLOSED:
                    # The tail of the author's chain that the REVOKE named, not reached before the restart:
                    # still fetched (handle_timer) and accepted, nothing beyond (SPEC 8.8).
                    c.final = c.gap_to = tail
                    c.final_hash = tail_hash

    def branch_ids(self) -> list[bytes]:
        return list(self._branches)

    def branch_info(self, branch: bytes) -> tuple[int, Permission, BranchState, tuple[str, ...]]:
        """(epoch, my permission, state, member DIDs) of a branch."""
        b = self._get_branch(branch)
        dids = tuple(did_from_public_key(pk) for _, (pk, _) in sorted(b.members.items()))
        return b.epoch, b.members[b.me][1], b.state, dids

    def member_keys(self, branch: bytes) -> list[bytes]:
        """The Ed25519 public keys of a branch's members other than us; none for a closed branch.  Raises
        :class:`LocalProtocolError` for an unknown branch."""
        b = self._get_branch(branch)
        if b.state is BranchState.CLOSED:
            return []
        return [pk for i, (pk, _) in b.members.items() if i != b.me]

    def branch_state(self, branch: bytes) -> BranchState:
        """Whether a branch is open or closed.  Raises :class:`LocalProtocolError` for an unknown branch."""
        return self._get_branch(branch).state

    def chain_head(self, branch: bytes, publisher: int) -> tuple[int, bytes, int]:
        """(next_seq, head hash, covered seq) of a chain."""
        c = self._get_branch(branch).chains[publisher]
        return c.next_seq, c.head, c.covered

    def receive(self, data: bytes, now_ms: int, peer: object = None) -> list[Event]:
        """Process one frame from the network.  Never raises for bad input: returns ``Rejected`` events."""
        try:
            frame = decode_frame(data, self.config.max_frame)
        except RemoteProtocolError as exc:
            return [Rejected(exc.reason, str(exc))]
        events: list[Event] = []
        try:
            if not (frame.kind is _PACKET and self._packets_in_order
                    and self._in_order_packet(frame, now_ms, peer, events)):
                self._handle(frame, now_ms, peer, events)
        finally:
            self._failures = {}
            if self._opened:
                self._opened = {}  # (a mark of _in_order_packet's is for this frame only)
        return events

    def receive_many(self, batch: Sequence[tuple[bytes, object]], now_ms: int) -> list[Event]:
        """:meth:`receive` each ``(data, peer)`` in order; the same events, in the same order.

        With a :attr:`verify_many` hook, and signed chain frames making at least half of the batch, their
        signatures are checked first, in one call to the hook, against the keys known now.  Only frames that the
        normal path would check too go to the hook: the cheap rejections (unknown branch or publisher, a replayed
        sequence number, an unknown key epoch, a ciphertext that does not authenticate -- opened here, once) come
        first, as in :meth:`receive`, so a forged batch costs no more than before (THREATS 8).  A signature the
        hook confirms is not checked again when its frame is processed; everything else (a key that changes
        within the batch, a check the hook rejects) is checked as :meth:`receive` checks it.

        Author: the first signed chain frame of each peer in the batch is checked alone, before the hook: a peer
        whose first one fails sends none to the hook, and after ``config.peer_failures`` failed checks its
        further frames of the batch are rejected (``SUSPENDED``) without any (SPEC 10.3)."""
        limit = self.config.max_frame
        frames: list[Frame | Rejected] = []
        signed: list[tuple[Frame, object]] = []
        for data, peer in batch:
            try:
                frame = decode_frame(data, limit)
            except RemoteProtocolError as exc:
                frames.append(Rejected(exc.reason, str(exc)))
                continue
            frames.append(frame)
            if frame.sig and (frame.kind is Kind.PACKET or frame.kind is Kind.CHECKPOINT):
                signed.append((frame, peer))
        verify_many = self.verify_many
        events: list[Event] = []
        try:  # the pre-pass's results are for this batch only, whatever happens (a hook that raises included)
            if verify_many is not None and len(signed) > 1 and 2 * len(signed) >= len(frames):
                # Only where signatures are the bulk of the work (signed-each): in an amortized stream (a
                # checkpoint per 32 packets) there is little to gain, and a helper thread would compete for a CPU
                # with the rest of the host (measured: -20% amortized throughput at 64 B on two shared cores).
                checks = self._signature_checks(signed)
                if len(checks) > 1:
                    self._verified.update(c for c, ok in zip(checks, verify_many(checks), strict=True) if ok)
            in_order = self._in_order_packet if self._packets_in_order else None
            for (_data, peer), f in zip(batch, frames, strict=True):
                if isinstance(f, Rejected):
                    events.append(f)
                elif not (in_order is not None and f.kind is _PACKET and in_order(f, now_ms, peer, events)):
                    self._handle(f, now_ms, peer, events)
        finally:
            self._verified = set()
            self._opened = {}
            self._failures = {}
        return events

    def take_offenders(self) -> list[tuple[object, int]]:
        """Peers whose frames failed signature or AEAD checks since the last call, with how many (in the order
        first seen), for a transport that can stop listening to them for a while (SPEC 10.3).  Author only (a
        subscriber's list stays empty); frames without a peer are not counted."""
        if not self._offenders:
            return []
        out = list(self._offenders.items())
        self._offenders = {}
        return out

    def _signature_checks(self, frames: list[tuple[Frame, object]]) -> list[SignatureCheck]:
        """The signature checks of the chain frames that pass every cheaper test (:meth:`_chain_of`, and the AEAD
        of :meth:`_verify_chain_frame`) now; packets are opened on the way (kept in ``_opened`` for this
        batch).  Author: each peer's first check is made here, alone: if it holds, it is marked verified and the
        peer's further checks are returned; if not, none of that peer's (its frames are checked one by one when
        processed, where the per-peer limit applies).  A subscriber sends every check to the hook: forgeries a
        relay puts in front of the author's stream must not send the genuine frames behind them down the slow
        path."""
        checks: list[SignatureCheck] = []
        opened = self._opened
        probed: dict[object, bool] = {}
        charges = self._charges_peers
        for frame, peer in frames:
            charged = charges and peer is not None
            if charged and probed.get(peer) is False:
                continue
            try:
                b, c = self._chain_of(frame)
            except _Reject:
                continue  # rejected again, as cheaply, when the frame is processed
            h = frame.head
            unprobed = charged and peer not in probed
            if unprobed and c.held and h.seq in c.held:
                continue  # a copy of a frame held for a gap proves nothing about its sender: no probe with it
            if frame.kind is Kind.PACKET:
                key = b.keys[(h.epoch, h.publisher)]
                try:
                    opened[id(frame)] = (key, _crypto.aead_decrypt(key, h.nonce, frame.aad, frame.body))
                except VerificationError:
                    if charged:
                        probed[peer] = False
                    continue  # the normal path rejects it (BAD_AEAD) before any signature check
            check = (b.members[h.publisher][0], frame.hash, frame.sig)
            if unprobed:
                try:
                    _crypto.verify(*check)
                except VerificationError:
                    probed[peer] = False
                    continue  # the normal path rejects it (BAD_SIGNATURE) and counts it
                probed[peer] = True
                self._verified.add(check)
                continue
            checks.append(check)
        return checks

    def _handle(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        self._now_ms = now_ms
        handler = self._handlers.get(frame.kind)
        if handler is None:
            events.append(Rejected(RejectReason.UNEXPECTED, f"{self.role.value} does not accept {frame.kind.name}"))
            return
        if getattr(frame.head, "channel", None) != self._channel and frame.kind is not Kind.ANNOUNCE:
            events.append(Rejected(RejectReason.FOREIGN_CHANNEL, "frame belongs to another channel"))
            return
        failures = self._failures
        if failures and peer is not None and failures.get(peer, 0) >= self.config.peer_failures:
            events.append(Rejected(RejectReason.SUSPENDED, "the peer's frames failed too many checks in this batch"))
            return
        once = self._charges_peers and peer is not None and frame.kind in _ONCE_KINDS
        if once:
            self._control_verified = False
            key = (frame.hash + frame.sig, peer)
            seen = self._recent_control.get(key)
            cfg = self.config
            window = min(cfg.copy_window_ms, cfg.fetch_retry_ms // 2, cfg.grant_sync_interval_ms // 2)
            if seen is not None and 0 <= now_ms - seen < window:
                # Dropped, unchecked.  A FETCH's copy is reported; the same ACK again is ordinary (re-sent after
                # a HEAD), and so is one copy of a HEAD (a member's notice of its head, sent by a publish that
                # waits for its ACK, then again by the catch-up of the connection that came up meanwhile: a
                # REPLAY event there was a false alarm on every `streams publish`) -- its further copies are
                # reported (a replay loop stays visible).
                copied = self._copied_heads
                if frame.kind is Kind.HEAD and key not in copied:
                    copied[key] = None
                    if len(copied) > MAX_RECENT_CONTROL:
                        copied.popitem(last=False)
                elif frame.kind is not Kind.ACK:
                    events.append(Rejected(RejectReason.REPLAY, f"a copy of a {frame.kind.name} handled "
                                                                f"{now_ms - seen} ms ago", frame.head.branch))
                return
        try:
            handler(self, frame, now_ms, peer, events)
        except _Reject as r:
            events.append(r.event)
            if self._charges_peers and peer is not None and r.event.reason in _CHARGED:
                failures[peer] = failures.get(peer, 0) + 1
                offenders = self._offenders
                if peer in offenders or len(offenders) < MAX_OFFENDERS:
                    offenders[peer] = offenders.get(peer, 0) + 1
        finally:
            # Only an exact copy (same signature) of a frame whose signature held is dropped unchecked -- also
            # when the frame was refused after that (an ACK older than one accepted, a FETCH of a chain its
            # sender may not read): a copy would be refused again, after the same check.
            if once and self._control_verified:
                recent = self._recent_control
                recent[key] = now_ms
                self._copied_heads.pop(key, None)  # checked again: its next copy is its first
                recent.move_to_end(key)
                if len(recent) > MAX_RECENT_CONTROL:
                    recent.popitem(last=False)

    # -- publishing --------------------------------------------------------------------------------------------

    def publish(self, branch: bytes, payload: bytes, now_ms: int) -> int:
        """Encrypt, link, sign (or not, in amortized mode) and queue a packet; returns its sequence number.

        Raises :class:`LocalProtocolError` if we may not write the branch, the payload is not bytes (or a
        bytearray or memoryview, taken as their bytes) or is too large, :class:`ClosedResourceError` if the
        branch is closed, :class:`StorageError` if our chain there has no cursor (a store altered)."""
        b = self._get_branch(branch)
        self._check_writable(b)
        if type(payload) is not bytes:
            payload = _payload_bytes(payload)
        if len(payload) > self.config.max_frame - 512:
            raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds the frame limit")
        return self._publish_checked(b, [payload], now_ms)[0]

    def publish_many(self, branch: bytes, payloads: list[bytes], now_ms: int) -> list[int]:
        """:meth:`publish` each payload in order; all or nothing for the caller's errors (every payload size and
        the branch are checked first).  Raises as :meth:`publish`."""
        b = self._get_branch(branch)
        self._check_writable(b)
        limit = self.config.max_frame - 512
        payloads = [p if type(p) is bytes else _payload_bytes(p) for p in payloads]
        for payload in payloads:
            if len(payload) > limit:
                raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds the frame limit")
        return self._publish_checked(b, payloads, now_ms)

    def _publish_checked(self, b: _Branch, payloads: list[bytes], now_ms: int) -> list[int]:
        """:meth:`publish` of each payload (bytes, within the limit) on a branch we may write, its checks made
        (nothing a publish does changes them): sealed, signed (signed-each) and framed in turn, its bytes still
        in the cache.  (Sealing the whole batch first and signing its digests in one call -- on helper threads, or
        not -- was slower: 13-14k against 15.6k msgs/s for a lone author at 16 KiB, 2-4% end to end at every
        size.)  The head is encoded directly, the same bytes as ``encode_head(Packet(...))`` (every decoder refuses
        another form; ``tests/test_vectors.py`` reproduces the published frames byte for byte), and no Frame or
        head object is built."""
        me, bid, epoch = b.me, b.id, b.epoch
        c = b.chains[me]
        key = b.keys[(epoch, me)]
        signed = b.mode is SigningMode.EACH
        sign = self._id.sign
        rng, channel, log, out = self._rng, self._channel, self._changes.log, self._out
        every = self.config.checkpoint_every
        seqs: list[int] = []
        for payload in payloads:
            seq = c.next_seq
            nonce = rng(24)
            head_raw = _packb([channel, bid, me, seq, c.head, epoch, nonce])
            body = _crypto.aead_encrypt(key, nonce, _PACKET_AAD_PREFIX + head_raw, payload)
            h = message_hash(Kind.PACKET, head_raw, body)
            raw = _packb([VERSION, 7, head_raw, body, sign(h) if signed else b""])
            log.append(LogRecord(bid, me, seq, h, raw))
            out.append(Outgoing(raw, None, bid))
            c.next_seq = seq + 1
            c.head = h
            seqs.append(seq)
            if signed:
                c.covered = seq
                continue
            if c.first_uncovered_ms is None:
                c.first_uncovered_ms = now_ms
                self._note_deadline(now_ms + self.config.checkpoint_interval_ms)
            if seq - c.covered >= every:
                self._checkpoint(b, now_ms)  # (it logs and queues on the same lists)
        self._dirty.add((bid, me))
        return seqs

    def take_routes(self) -> list[tuple[bytes, object, bool]]:
        """Routing hints since the last call, in order, for a transport that routes a branch's frames to the
        peers it knows for it (SPEC 14.2): ``(branch, peer, True)``, a peer that a current member's verified
        FETCH (or, where FETCHes are not bound, ACK or HEAD) naming the branch came from, or one of its chain
        frames we accepted (a forged frame, or a replayed one, never teaches a route); ``(branch, peer, False)``,
        forget that peer for the branch (its member was removed from the group); ``(branch, None, False)``,
        forget every peer of the branch (it closed)."""
        if not self._route_hints:
            return []
        out = [(b, peer, keep) for (b, peer), keep in self._route_hints.items()]
        self._route_hints = {}
        return out

    def _hint_route(self, b: _Branch, peer: object, member: int) -> None:
        if peer is None:
            return
        self._route_hints[(b.id, peer)] = True
        if b.me == 0 and not b.peer_did:
            peers = self._member_peers.setdefault((b.id, member), {})
            peers.pop(peer, None)
            peers[peer] = None
            if len(peers) > 4:  # reconnects leave old routing ids behind: keep the latest few
                old = next(iter(peers))
                del peers[old]
                # And route the group to no more of the member's peers than that: one we no longer know of would
                # not be forgotten when the member is removed (SPEC 14.2), and would get the group's frames on.
                self._route_hints[(b.id, old)] = False

    def _hint_route_unbound(self, b: _Branch, peer: object, member: int) -> None:
        """A route from a verified ACK or HEAD: only where FETCHes are not bound to their connection.  Those two
        are not bound, so a recorded one replayed on a connection the replayer opened verifies -- and would
        route the branch's traffic there, a stream bought with one frame per connection (and an eviction of a
        member's route).  Where they are bound, a member sends a FETCH on every new connection (its catch-up),
        and that, or a chain frame of its accepted there, teaches the route (SPEC 14.2)."""
        if self.session_of is None:
            self._hint_route(b, peer, member)

    def take_deadline(self) -> int | None:
        """The earliest ``now_ms`` at which :meth:`handle_timer` has work that was set since the last call (a
        coalesced ACK, an amortized checkpoint, a gap fetch's retry), or None; then forget it.  Cheap, unlike
        :meth:`next_timer`, which scans every chain: a driver calls it after each batch of work and wakes its
        timer early when this comes before the time it sleeps until (else a pending ACK, say, would wait for a
        timer armed before it existed)."""
        d, self._deadline = self._deadline, None
        return d

    def _note_deadline(self, t: int) -> None:
        if self._deadline is None or t < self._deadline:
            self._deadline = t

    def next_timer(self) -> int | None:
        """Earliest ``now_ms`` at which :meth:`handle_timer` has work (amortized checkpoints, gap and catch-up
        fetch retries, coalesced ACKs), or None.  Scans every chain; see :meth:`take_deadline` for what changed
        since."""
        due: int | None = None
        ack_interval = self.config.ack_interval_ms
        for b in self._branches.values():
            c = b.chains.get(b.me)
            if c is not None and c.first_uncovered_ms is not None:
                t = c.first_uncovered_ms + self.config.checkpoint_interval_ms
                due = t if due is None else min(due, t)
            if c is not None and c.fill is not None:
                t = c.fill.asked_ms + self.config.fetch_retry_ms
                due = t if due is None else min(due, t)
            open_ = b.state is BranchState.OPEN
            for p, rc in b.chains.items():
                if p == b.me:
                    continue
                if (rc.gap_to >= rc.next_seq or rc.fetch_end >= rc.next_seq) and (open_ or rc.final >= rc.next_seq):
                    t = rc.progress_ms + self._retry_wait(rc)
                    due = t if due is None else min(due, t)
                if rc.next_seq - 1 > rc.acked and b.state is BranchState.OPEN:
                    t = rc.ack_ms + ack_interval  # a coalesced ACK waits
                    due = t if due is None else min(due, t)
        return due

    def _retry_wait(self, c: _Chain) -> int:
        """How long a gap fetch of ``c`` that makes no progress waits before it is asked again (ms):
        ``fetch_retry_ms`` for the first ``FETCH_FLAT_RETRIES`` retries, then doubling up to
        ``fetch_retry_max_ms``.  A tail its publisher can never serve is asked for less and less often, never
        given up: a log repaired later still heals it (THREATS 4; the loss was reported)."""
        base = self.config.fetch_retry_ms
        doublings = min(max(c.stalls - FETCH_FLAT_RETRIES, 0), 32)
        return max(base, min(base << doublings, self.config.fetch_retry_max_ms))

    def handle_timer(self, now_ms: int) -> list[Event]:
        """Emit checkpoints whose interval has elapsed; fetch again every gap that made no progress for
        ``fetch_retry_ms`` (the request or its replies were lost), and a catch-up window nobody answered (a few
        times); queue the coalesced ACKs that are due (the driver commits before it sends what this queued, as
        always).  Returns the events (``GapDetected``: what a catch-up window deferred, its time up; the
        ``Anchored`` of a restore proof of our own chain whose messages below it could not be fetched back, SPEC
        13.5, after a ``Rejected`` that says so).  The driver acts on them as on :meth:`receive`'s, after
        committing :meth:`take_changes`."""
        events: list[Event] = []
        deferred_ms = (CATCH_UP_RETRIES + 1) * self.config.fetch_retry_ms
        self._now_ms = now_ms
        self._out.extend(self.take_acks(now_ms))
        if self._sync_waits:
            self._retry_grant_syncs(now_ms)
        for b in self._branches.values():
            open_ = b.state is BranchState.OPEN
            if open_ or b.me:  # (closed: only the tail a REVOKE named is still fetched)
                for p, rc in b.chains.items():
                    if rc.deferred and _elapsed(now_ms, rc.deferred_at, deferred_ms) \
                            and (rc.catching_up() or _elapsed(now_ms, rc.advanced_ms, self.config.fetch_retry_ms)):
                        # Counted from when it was deferred, not from the window's retries: each reconnect (a
                        # relay can force them) opens a new window, and must not put the report off again.  Once
                        # the window is answered, only when no frame was accepted for fetch_retry_ms (not
                        # progress_ms, which every FETCH sent renews): a catch-up that goes on (its HEAD came after
                        # a frame in order had answered the window) is no loss.
                        self._tell_deferred(b, p, rc, 0, events)
                    if p != b.me and (rc.gap_to >= rc.next_seq or rc.fetch_end >= rc.next_seq) \
                            and (open_ or rc.final >= rc.next_seq) \
                            and _elapsed(now_ms, rc.progress_ms, self._retry_wait(rc)):
                        # No progress: the request or its replies were lost.  Ask again from our cursor.
                        rc.progress_ms = now_ms
                        rc.stalls += 1
                        if rc.gap_to >= rc.next_seq:
                            # A catch-up window a held frame made a gap fill: its retries count here too, so
                            # that it ends (what it deferred is reported above, in time, THREATS 4).
                            if rc.catch_up_left > 0:
                                rc.catch_up_left -= 1
                            rc.fetch_end = rc.next_seq - 1
                            self._fetch_window(b, p, rc, now_ms)
                        elif rc.catch_up_left > 0:
                            # A catch-up window nobody answered (not even a HEAD): the FETCH or the answer was
                            # lost.  Again, a few times -- a publisher whose chain is empty never answers.
                            rc.catch_up_left -= 1
                            self.request_fetch(b.id, p, rc.next_seq, rc.fetch_end)
                            self._note_deadline(now_ms + self.config.fetch_retry_ms)
                        else:
                            rc.fetch_end = rc.next_seq - 1
            c = b.chains.get(b.me)
            if (c is not None and c.first_uncovered_ms is not None and b.state is BranchState.OPEN
                    and _elapsed(now_ms, c.first_uncovered_ms, self.config.checkpoint_interval_ms)):
                self._checkpoint(b, now_ms)
            fill = None if c is None else c.fill
            if c is not None and fill is not None and _elapsed(now_ms, fill.asked_ms, self.config.fetch_retry_ms):
                if fill.left > 0 and b.state is BranchState.OPEN:
                    fill.left -= 1  # nothing came: the FETCH or its answer was lost -- ask again from where it stands
                    self._ask_fill(b, fill, now_ms)
                else:
                    # The author does not serve it (its log no longer holds it, or it predates this): our log
                    # keeps the hole, which an audit reports.
                    events.append(Rejected(
                        RejectReason.UNEXPECTED, f"our messages {fill.lo}..{fill.hi} were not fetched back from the "
                        "author: our log lacks them", b.id, b.me, fill.lo))
                    self._end_fill(c, events)
        return events

    @staticmethod
    def _defer(c: _Chain, upto: int, now_ms: int) -> None:
        """A frame shows messages missing up to ``upto`` (exclusive) while our catch-up window is out: not reported
        now (the window's answer may explain them), but deferred (:meth:`_tell_deferred`)."""
        if not c.deferred:
            c.deferred_at = now_ms
        c.deferred = max(c.deferred, upto)

    @staticmethod
    def _report_gap(b: _Branch, p: int, c: _Chain, upto: int, events: list[Event]) -> None:
        """Report the messages of chain ``p`` from our cursor up to ``upto`` (exclusive) missing, now.  What an
        earlier catch-up window deferred up to there is told by this report: not again when the deferral's time
        is up (a second, stale GapDetected of a range already reported)."""
        events.append(GapDetected(b.id, p, c.next_seq, upto))
        if c.deferred <= upto:
            c.deferred = 0

    @staticmethod
    def _tell_deferred(b: _Branch, p: int, c: _Chain, explained: int, events: list[Event]) -> None:
        """Report what a frame showed missing (``c.deferred``) while our catch-up window on chain ``p`` was out,
        now that the window is answered by a HEAD, or the time it may take is up: beyond what the answer explains
        -- the messages up to ``explained`` (the HEAD that answered: the publisher held them when it answered) are
        being fetched as the catch-up; later ones were lost on the way, as on a live connection (SPEC 10.1 step
        7)."""
        lo = max(c.next_seq, explained + 1)
        if c.deferred > lo:
            events.append(GapDetected(b.id, p, lo, c.deferred))
        c.deferred = 0

    def _ask_fill(self, b: _Branch, fill: _Fill, now_ms: int) -> None:
        """Ask the author for the next window of our own messages being fetched back."""
        fill.end = min(fill.hi, fill.lo + self.config.max_fetch - 1)
        fill.asked_ms = now_ms
        self._note_deadline(now_ms + self.config.fetch_retry_ms)
        self.request_fetch(b.id, b.me, fill.lo, fill.end)

    def _end_fill(self, c: _Chain, events: list[Event]) -> None:
        """The fetch of our own messages is over, done or given up: report the proof that started it."""
        fill, c.fill = c.fill, None
        if fill is not None and fill.event is not None:
            events.append(fill.event)

    def _own_fill_frame(self, frame: Frame, now_ms: int, events: list[Event]) -> bool:
        """Whether ``frame`` is of our own chain, within the messages we are fetching back (then handled)."""
        h: Packet | Checkpoint = frame.head
        b = self._branches.get(h.branch)
        c = None if b is None or h.publisher != b.me or b.me not in b.members else b.chains.get(b.me)
        fill = None if c is None else c.fill
        if b is None or c is None or fill is None or h.seq > fill.hi:
            return False
        self._fill_frame(b, c, fill, frame, now_ms, events)
        return True

    def _fill_frame(self, b: _Branch, c: _Chain, fill: _Fill, frame: Frame, now_ms: int,
                    events: list[Event]) -> None:
        """A message of our own chain, served by the author while we fetch our messages back (SPEC 13.5).  Logged
        if it is the next one we miss, authenticates as ours and links to the one before; a copy of one already
        logged (a window asked for again) is dropped."""
        h: Packet | Checkpoint = frame.head
        if h.seq < fill.lo:
            return
        if h.seq > fill.lo:
            raise _Reject(RejectReason.UNEXPECTED, "not the next message of ours being fetched back", h.branch,
                          h.publisher, h.seq)
        if (h.epoch, b.me) not in b.keys:
            raise _Reject(RejectReason.STALE_EPOCH, "unknown key epoch", h.branch, h.publisher, h.seq)
        # Authentic first (our signature, or the chain key): a forged frame changes nothing, the fetch goes on.
        self._verify_chain_frame(b, frame)
        if fill.prev and not _crypto.ct_equal(h.prev, fill.prev):
            # Ours, but not linked to our log's head: our log forked from the author's copy there (a restored copy
            # that signed on before it was stopped, SPEC 12).  Nothing of the author's copy builds on our log.
            events.append(Rejected(RejectReason.BAD_LINK, "our message fetched back does not link to our log: "
                                   "our log holds another message before it", h.branch, h.publisher, h.seq))
            self._end_fill(c, events)
            return
        self._changes.log.append(LogRecord(b.id, b.me, h.seq, frame.hash, frame.raw))
        fill.prev, fill.lo, fill.left, fill.asked_ms = frame.hash, h.seq + 1, FILL_RETRIES, now_ms
        if fill.lo > fill.hi:
            if not _crypto.ct_equal(fill.prev, fill.final):
                events.append(Rejected(RejectReason.FORK, "our messages fetched back end in another message than "
                                       "the anchored head", h.branch, h.publisher, h.seq))
            self._end_fill(c, events)
        elif fill.lo > fill.end:
            self._ask_fill(b, fill, now_ms)

    def flush_checkpoints(self, now_ms: int) -> None:
        """Checkpoint every chain of ours that has uncovered packets (e.g. before a clean close)."""
        for b in self._branches.values():
            c = b.chains.get(b.me)
            if c is not None and c.covered < c.next_seq - 1 and b.state is BranchState.OPEN:
                self._checkpoint(b, now_ms)

    def head_notices(self, force: bool = False) -> None:
        """Queue a signed HEAD notice for every open chain of ours that moved since its last notice, so receivers
        detect loss at the tail (the driver calls this when the channel goes quiet).  ``force``: also for chains
        that did not move (a periodic refresh: an earlier notice, or a catch-up FETCH, may have been lost)."""
        for b in self._branches.values():
            self._head_notice(b, force)

    def notify_head(self, branch: bytes) -> bool:
        """Queue a signed HEAD notice of our chain in ``branch`` if it moved since the last notice; return
        whether one was queued.  For a publisher that waits for an ACK: a receiver that holds that head but has
        not acknowledged it yet answers at once, outside ``ack_interval_ms`` (SPEC 12).  Raises
        :class:`LocalProtocolError` for an unknown branch."""
        return self._head_notice(self._get_branch(branch), False)

    def _head_notice(self, b: _Branch, force: bool) -> bool:
        c = b.chains.get(b.me)
        if c is None or b.state is not BranchState.OPEN or c.next_seq <= 1:
            return False
        if not force and c.next_seq - 1 <= c.notified:
            return False
        c.notified = c.next_seq - 1
        head = HeadNotice(self._channel, b.id, b.me, c.next_seq - 1, c.head, b.epoch)
        self._out.append(Outgoing(encode_frame(head, b"", self._id.sign).raw, branch=b.id))
        return True

    def request_fetch(self, branch: bytes, publisher: int, from_seq: int, to_seq: int) -> None:
        """Ask the publisher of a chain for retained messages (catch-up after a restart, gap fill)."""
        b = self._get_branch(branch)
        head = Fetch(self._channel, branch, publisher, from_seq, to_seq, b.me)
        self._out.append(Outgoing(encode_frame(head, self._session(), self._id.sign).raw, branch=branch))

    def _session(self) -> bytes:
        """The body of a FETCH we make: our connection's session, if the transport has one (SPEC 8.9)."""
        get = self.my_session
        return (get() or b"") if get is not None else b""

    def _want(self, b: _Branch, p: int, c: _Chain, upto: int, now_ms: int) -> None:
        """Chain ``p`` is known to reach ``upto``: fetch what we miss, one window at a time (THREATS 4)."""
        if upto > c.gap_to:
            c.gap_to = upto
        if c.gap_to >= c.next_seq and c.fetch_end < c.next_seq:
            self._fetch_window(b, p, c, now_ms)

    def _fetch_window(self, b: _Branch, p: int, c: _Chain, now_ms: int) -> None:
        """Request the next window (at most ``max_fetch`` messages, held ones excluded) of a gap."""
        lo = c.next_seq
        hi = min(c.gap_to, lo + self.config.max_fetch - 1)
        while c.held and hi in c.held and hi > lo:
            hi -= 1
        c.fetch_end = hi
        c.progress_ms = now_ms
        self._note_deadline(now_ms + self.config.fetch_retry_ms)
        if b.me in b.members:
            self.request_fetch(b.id, p, lo, hi)

    def acknowledge(self) -> None:
        """Queue one signed, cumulative ACK for every chain we read whose cursor moved since our last ACK.

        Call it only together with committing :meth:`take_changes` -- the driver must make the changes durable
        *before* it sends the ACKs (``streams.api`` does both in one ``_flush``: commit, then send), because an
        ACK promises the publisher that the messages survive a crash of ours (THREATS 4).  One signature per
        chain per batch, not per message."""
        self._out.extend(self.take_acks())

    def reacknowledge(self, branch: bytes, publisher: int) -> None:
        """Send our ACK of chain ``(branch, publisher)`` again with the next ones: its publisher signed another
        message at a position we hold (a fork), and our signed word of what we hold is what tells a member that
        restored a stale copy of its store to stop (SPEC 12, ChainConflict)."""
        b = self._branches.get(branch)
        if b is None or publisher == b.me:
            return
        c = b.chains.get(publisher)
        if c is not None and c.next_seq > 1:
            c.acked = min(c.acked, c.next_seq - 2)
            self._note_deadline(0)

    def take_acks(self, now_ms: int | None = None) -> list[Outgoing]:
        """The ACK frames :meth:`acknowledge` would queue, returned instead: for a driver that sends them
        itself.  The same rule holds: call it only when every cursor move is committed.

        With ``now_ms``, only for chains whose last ACK is at least ``ack_interval_ms`` old; the others stay
        pending for :meth:`handle_timer` (:meth:`next_timer` says when)."""
        out: list[Outgoing] = []
        interval = self.config.ack_interval_ms
        for b in self._branches.values():
            if b.state is not BranchState.OPEN:
                continue
            for p, c in b.chains.items():
                if p == b.me or c.next_seq - 1 <= c.acked:
                    continue
                if now_ms is not None:
                    if not _elapsed(now_ms, c.ack_ms, interval):
                        self._note_deadline(c.ack_ms + interval)  # coalesced: handle_timer sends it then
                        continue
                    c.ack_ms = now_ms
                c.acked = c.next_seq - 1
                head = Ack(self._channel, b.id, p, c.acked, c.head, b.me)
                out.append(Outgoing(encode_frame(head, b"", self._id.sign).raw, branch=b.id))
        return out

    def acknowledged(self, branch: bytes) -> int:
        """The highest seq of our own chain in ``branch`` that some member acknowledged (0 if none).  Once a
        re-key took our write permission away (the chain is dropped), what the author held of it then: its
        re-key GRANT names our chain's head as the author has it, on disk."""
        b = self._get_branch(branch)
        c = b.chains.get(b.me)
        return max(c.acked_by.values(), default=0) if c is not None and c.acked_by else b.final_acked

    def own_next_seq(self, branch: bytes) -> int:
        """The seq our next message on ``branch`` gets (0 if we hold no chain there: we may not write).  Raises
        :class:`LocalProtocolError` for an unknown branch."""
        b = self._get_branch(branch)
        c = b.chains.get(b.me)
        return c.next_seq if c is not None else 0

    def chain_conflict(self, branch: bytes) -> int:
        """The seq at which the author's signed ACK showed our own chain in ``branch`` to conflict with its copy
        (:class:`~streams.events.ChainConflict`), or 0 if none: while it is set, publishing there raises and
        seqs beyond :meth:`acknowledged` will never be acknowledged.  Raises :class:`LocalProtocolError` for an
        unknown branch."""
        b = self._get_branch(branch)
        c = b.chains.get(b.me)
        return c.conflict if c is not None else 0

    def catch_up(self, now_ms: int | None = None) -> None:
        """Request, for every chain we read, whatever follows our cursor (after a restart or reconnect); a
        subscriber also asks for the grants it may have missed meanwhile (SPEC 9.5).  With ``now_ms``, a window
        that gets no answer at all (not even the publisher's HEAD) is asked for again after ``fetch_retry_ms``, up
        to ``CATCH_UP_RETRIES`` times (:meth:`handle_timer`), rather than waiting for the publisher's next HEAD
        refresh."""
        for b in self._branches.values():
            if b.state is not BranchState.OPEN:
                tail = b.chains.get(0) if b.me else None
                if tail is not None and tail.final >= tail.next_seq and tail.stalls:
                    # The tail a close named, still fetched (SPEC 8.8, 9.5): a new connection asks for it at
                    # fetch_retry_ms again, not at the backoff a dead connection built up (SPEC 10.1 step 7).
                    tail.stalls = 0
                    self._note_deadline(tail.progress_ms + self.config.fetch_retry_ms)
                continue
            if self.role is Role.SUBSCRIBER:
                # On a branch of two members (our own), its answer may bring the first grants of groups opened
                # while we were away: part of this catch-up (_on_grant).
                self._request_grants(b, now_ms, limit=False, catch_up=len(b.members) <= 2)
                b.heard, b.quiet = False, 0  # until the author answers: sync_quiet asks at the next forced refresh
            self._catch_up_chains(b, now_ms)

    def _catch_up_chains(self, b: _Branch, now_ms: int | None) -> None:
        """Open a catch-up window on every chain of ``b`` we read (see :meth:`catch_up`)."""
        for p, c in b.chains.items():
            if p == b.me and c.fill is not None:
                # Our own messages being fetched back (SPEC 13.5): from where that stands, on this connection.
                self._ask_fill(b, c.fill, self._now_ms if now_ms is None else now_ms)
            if p != b.me:
                # The publisher's head is unknown: ask for one window; its HEAD reply tells how far to go.
                c.fetch_end = c.next_seq + self.config.max_fetch - 1
                self.request_fetch(b.id, p, c.next_seq, c.fetch_end)
                if now_ms is not None:
                    c.progress_ms = now_ms
                    c.catch_up_left = CATCH_UP_RETRIES
                    # A new connection: its window and what it defers (reported on the retries' time, SPEC 10.1
                    # step 7) are asked for at fetch_retry_ms again, not at a backoff a dead connection built up.
                    c.stalls = 0
                    self._note_deadline(now_ms + self.config.fetch_retry_ms)
                else:
                    c.catch_up_left = 0  # untimed: as before, no retry

    def _catching_up_grants(self) -> bool:
        """A grant sync our catch-up sent on a branch of ours (or one that carries it on) is unanswered: a
        branch first learnt now was opened while we were away (:meth:`catch_up`, SPEC 9.5)."""
        return any(bid in self._sync_waits for bid in self._catch_up_syncs)

    def _sync_grants(self, b: _Branch, member: tuple[bytes, Permission], requester: int, after: int, peer: object,
                     now_ms: int) -> bool:
        """Answer a grant sync (the author's; see :class:`AuthorCore`)."""
        return False

    def _tell_former(self, b: _Branch, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        """Answer a removed member (the author's; see :class:`AuthorCore`)."""
        raise _Reject(RejectReason.NOT_MEMBER, "fetch from a non-member", b.id)

    def _request_grants(self, b: _Branch, now_ms: int | None, limit: bool = True, expect: bool = True,
                        catch_up: bool = False) -> None:
        """Grant sync (SPEC 9.5): ask the author for the grants of ``b`` after our epoch, and its REVOKE if it
        closed -- what we missed while offline.  With ``now_ms``: at most once per ``fetch_retry_ms`` if
        ``limit``, and, if ``expect``, asked again if no answer comes (:meth:`_retry_grant_syncs`); if
        ``catch_up``, its wait is part of our catch-up (:meth:`_catching_up_grants`)."""
        if now_ms is not None:
            if limit and now_ms - b.sync_ms < self.config.fetch_retry_ms:
                return
            b.sync_ms = now_ms
            if catch_up:
                self._catch_up_syncs.add(b.id)
            else:
                self._catch_up_syncs.discard(b.id)
            # Its answer is expected either way (it must not read as the answer to a subscription); retried
            # only if ``expect``.
            self._sync_waits[b.id] = GRANT_SYNC_RETRIES if expect else 0
            self._note_deadline(now_ms + self._sync_retry_ms())
        self._send_grant_sync(b)

    def sync_quiet(self, now_ms: int) -> None:
        """Member, where FETCHes are bound (SPEC 14.3): a FETCH on every open branch on which nothing came from
        the author since the last call or our catch-up (the driver calls this at each forced HEAD refresh) --
        of the author's chain from our cursor where we read it (answered by its HEAD, if it holds anything),
        else a grant sync.  Bound to our connection, it re-teaches the author our route (ACK and HEAD teach none
        there, SPEC 14.2): without it, a member whose catch-up FETCHes were all lost on a connection that stays
        up would never be routed again.  Not asked again when unanswered; a branch that stays quiet is asked
        at the 1st, 2nd, 4th, 8th ... quiet refresh, then every 64th; a chain with a fetch in flight (a
        catch-up, a gap fill: they have their own retries) is left alone.  And on a branch of two members (our
        own), at the 4th refresh and every 64th after, quiet or not, a grant sync: its answer carries the first
        grants of our groups (one lost on a live connection comes back)."""
        get = self.my_session
        if self.role is not Role.SUBSCRIBER or get is None or get() is None:
            return  # no sessions: ACK and HEAD teach routes (and before a session, nothing is bound)
        for b in self._branches.values():
            if b.state is not BranchState.OPEN:
                continue
            b.refreshes += 1
            synced = len(b.members) <= 2 and b.refreshes % 64 == 4  # counted apart: answers do not reset it
            if synced:
                self._request_grants(b, now_ms, expect=False)
            if b.heard:
                b.heard, b.quiet = False, 0
                continue
            b.quiet += 1
            if b.quiet & (b.quiet - 1) and b.quiet % 64:
                continue
            c = b.chains.get(0)
            if c is None:
                if not synced:
                    self._request_grants(b, now_ms, expect=False)
            elif c.catch_up_left == 0 and c.fetch_end < c.next_seq and c.gap_to < c.next_seq:
                # As a catch-up window (its HEAD answer then fetches nothing twice), never retried.
                c.fetch_end = c.next_seq + self.config.max_fetch - 1
                c.progress_ms = now_ms
                self.request_fetch(b.id, 0, c.next_seq, c.fetch_end)

    def _send_grant_sync(self, b: _Branch) -> None:
        head = Fetch(self._channel, b.id, 0, 0, b.epoch, b.me)
        self._out.append(Outgoing(encode_frame(head, self._session(), self._id.sign).raw, branch=b.id))

    def _sync_retry_ms(self) -> int:
        """How long a member waits for the answer to a grant sync: half again ``fetch_retry_ms``, and at least
        half again ``grant_sync_interval_ms``, the author's limit of one answer per connection (the parties of a
        channel share these settings), so that the retry is answered."""
        cfg = self.config
        return max(cfg.fetch_retry_ms, cfg.grant_sync_interval_ms) * 3 // 2

    def _retry_grant_syncs(self, now_ms: int) -> None:
        """Ask again for the grant syncs nobody answered (lost on the way, or their answer was): the author
        answers every one -- on a member's own branch at least its current GRANT, on a group its HEAD if the
        chain holds anything (a group whose chain is empty costs these retries)."""
        wait = self._sync_retry_ms()
        for bid, left in list(self._sync_waits.items()):
            b = self._branches.get(bid)
            if b is None or b.state is not BranchState.OPEN:
                del self._sync_waits[bid]
            elif _elapsed(now_ms, b.sync_ms, wait):
                if left <= 0:
                    del self._sync_waits[bid]  # no answer came: given up
                    continue
                self._sync_waits[bid] = left - 1
                b.sync_ms = now_ms
                self._send_grant_sync(b)
                self._note_deadline(now_ms + wait)

    def open_logged(self, raw: bytes, covered: int | None = None) -> MessageReceived | None:
        """Decrypt a message from our own log again (redelivery after a restart).  None if it is not a payload
        we can read.  ``covered``: the highest seq of its chain a signature covers, where we keep no cursor of the
        chain any more (a re-key took the right to read it away: the store's row says)."""
        try:
            f = decode_frame(raw, self.config.max_frame)
        except DecodeError:
            return None
        if f.kind is not Kind.PACKET:
            return None
        h: Packet = f.head
        b = self._branches.get(h.branch)
        key = None if b is None else b.keys.get((h.epoch, h.publisher))
        if b is None or key is None or h.publisher not in b.members:
            return None
        try:
            payload = _crypto.aead_decrypt(key, h.nonce, f.aad, f.body)
        except VerificationError:
            return None
        c = b.chains.get(h.publisher)
        if c is not None:
            covered = c.covered
        signed = bool(f.sig) or (covered is not None and h.seq <= covered)
        return _message_received(b.id, h.publisher, _did(b.members[h.publisher][0]), h.seq, payload, signed, f.hash)

    def fork_evidence(self, new_frame: bytes, logged_frame: bytes) -> ForkEvidence | None:
        """Fork check for a frame refused as a REPLAY: ``ForkEvidence(logged, new)`` if both frames are validly
        signed by the chain's publisher and claim different messages at one position (THREATS 7), else None
        (an identical duplicate, an unsigned or forged frame: nothing provable).  Never raises."""
        try:
            f = decode_frame(new_frame, self.config.max_frame)
            b = self._branches.get(getattr(f.head, "branch", b""))
            publisher = 0 if f.kind is Kind.REVOKE else getattr(f.head, "publisher", -1)  # the author's chain
            member = None if b is None else b.members.get(publisher)
            if b is None or member is None:
                return None
            new_epoch = getattr(f.head, "epoch", 0)
            logged_epoch = getattr(decode_frame(logged_frame, self.config.max_frame).head, "epoch", 0)
            if b.lapse_between(publisher, new_epoch, logged_epoch):
                # The new one was signed before the publisher's write lapsed, the accepted one after it got write
                # back: the later run starts beyond the head the lapse named, so nobody accepted the new one.
                return None
            evidence = ForkEvidence(logged_frame, new_frame)
            check_fork(evidence, member[0])
        except (RemoteProtocolError, LocalProtocolError):
            return None
        return evidence

    def _apply_anchor(self, claim: AnchorClaim, verified: bool, events: list[Event]) -> None:
        raise LocalProtocolError("only members apply anchor proofs")  # overridden by SubscriberCore

    def _blind(self, b: _Branch, publisher: int) -> tuple[int, bytes] | None:
        """(key epoch, blind key) of a chain: from the latest key epoch we hold for its publisher."""
        epochs = [e for e, p in b.keys if p == publisher]
        if not epochs:
            return None
        e = max(epochs)
        return e, chain_blind_key(b.keys[(e, publisher)], b.id, publisher, e)

    def _logged_hash(self, branch: bytes, publisher: int, seq: int) -> bytes | None:
        for r in reversed(self._changes.log):  # accepted in this batch, not committed yet
            if r.branch == branch and r.publisher == publisher and r.seq == seq:
                return r.hash
        return None if self.log_lookup is None else self.log_lookup(branch, publisher, seq)

    # -- internals: publishing ---------------------------------------------------------------------------------

    def _check_writable(self, b: _Branch) -> None:
        if b.state is BranchState.CLOSED:
            raise ClosedResourceError(f"branch {b.id.hex()} is closed")
        if b.me != 0 and not b.members[b.me][1].can_write:
            raise LocalProtocolError(f"no write permission on branch {b.id.hex()}")
        c = b.chains.get(b.me)
        if c is None:
            # A branch we may write always has our chain's cursor (made with the grant, committed with the record):
            # none loaded is a store whose row of it was deleted.  Publishing from nowhere would fork the chain
            # (and a ChainConflict stop is kept with that cursor: THREATS "Parties", a store is untrusted).
            raise StorageError(f"our chain on branch {b.id.hex()} has no cursor: the store we were loaded from lost "
                               "its row (altered?); nothing is published there (restore a backup, or start over "
                               "with a new store and subscribe again)")
        if c.conflict:
            raise ChainConflictError(
                f"our chain on branch {b.id.hex()} conflicts with the author's copy (it acknowledged seq "
                f"{c.conflict}, our head is {c.next_seq - 1}): this store is older than the chain it publishes "
                "(restored from a copy?) or another holder of our key published; a new message would fork the "
                "chain further (ChainConflict, SPEC 12; an anchor proof of our chain that far lifts it, or the "
                "author taking our write permission away and giving it back)")

    def _checkpoint(self, b: _Branch, now_ms: int) -> None:
        c = b.chains[b.me]
        if c.conflict:
            c.first_uncovered_ms = None  # signing more of a chain that conflicts would extend a fork
            return
        seq = c.next_seq
        head = Checkpoint(self._channel, b.id, b.me, seq, c.head, b.epoch)
        frame = encode_frame(head, b"", self._id.sign)
        c.next_seq = seq + 1
        c.head = frame.hash
        c.covered = seq
        c.first_uncovered_ms = None
        self._record_sent(b, b.me, seq, frame)

    def _record_sent(self, b: _Branch, publisher: int, seq: int, frame: Frame) -> None:
        self._changes.log.append(LogRecord(b.id, publisher, seq, frame.hash, frame.raw))
        self._dirty.add((b.id, publisher))
        self._out.append(Outgoing(frame.raw, branch=b.id))

    # -- internals: receiving chain frames -------------------------------------------------------------------

    def _get_branch(self, branch: bytes) -> _Branch:
        b = self._branches.get(branch)
        if b is None:
            raise LocalProtocolError(f"unknown branch {branch.hex()}")
        return b

    def _in_order_packet(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> bool:
        """The path of :meth:`receive` and :meth:`receive_many` for the common frame: a packet of the current key
        epoch that is the next of its chain, and passes every check.  Exactly what :meth:`_handle` would do with
        it -- the same checks (:meth:`_chain_of`, :meth:`_accept`), the same state changes and events -- without
        its calls.  Returns False, having changed nothing, for any frame that is not that case, which then takes
        the normal path (that reports the reason); a packet whose ciphertext does not authenticate is not opened
        again there."""
        sig = frame.sig
        if self._failures or (sig and not self._verified):
            # (A peer charged in this batch: _handle may suspend it.  A signature the batch's pre-pass did not
            # confirm -- one awaited signed-each message at a time has none -- is checked on the normal path.)
            return False
        h: Packet = frame.head
        if h.channel != self._channel:
            return False
        b = self._branches.get(h.branch)
        if b is None or b.state is BranchState.CLOSED:
            return False  # (a closed branch's tail, and its end -- c.final -- too)
        publisher = h.publisher
        member = b.members.get(publisher)
        c = b.chains.get(publisher)
        seq = h.seq
        # (Of the current key epoch only: a lapse of the publisher's write right since then, or an older epoch's
        # key that may still open it, is for the normal path to judge.)
        if (member is None or c is None or publisher == b.me or seq != c.next_seq or h.epoch != b.epoch
                or (publisher and not member[1].can_write)):
            return False
        key = b.keys.get((h.epoch, publisher))
        if key is None or not _crypto.ct_equal(h.prev, c.head):
            return False
        if sig:
            if (member[0], frame.hash, sig) not in self._verified or seq - c.covered > 1:
                return False  # (its signature checked, or newly covering unsigned ones, on the normal path)
        elif b.mode is SigningMode.EACH:
            return False
        opened = self._opened.pop(id(frame), None) if self._opened else None
        payload = opened[1] if opened is not None and opened[0] is key else None
        if payload is None:
            try:
                payload = _crypto.aead_decrypt(key, h.nonce, _PACKET_AAD_PREFIX + frame.head_raw, frame.body)
            except VerificationError:
                self._opened[id(frame)] = (key, None)  # the normal path rejects it without opening it again
                return False
        self._now_ms = now_ms
        c.next_seq = seq + 1
        c.head = frame.hash
        c.stalls = 0
        if c.catch_up_left:
            c.catch_up_left = 0
        b.heard = True
        self._changes.log.append(LogRecord(b.id, publisher, seq, frame.hash, frame.raw))
        if sig:
            c.covered = seq
        self._dirty.add((b.id, publisher))
        events.append(_message_received(b.id, publisher, _did(member[0]), seq, payload, bool(sig), frame.hash))
        if self._charges_peers:
            self._hint_route(b, peer, publisher)
        c.progress_ms = c.advanced_ms = now_ms
        if c.held is not None or c.anchor_wait is not None:
            self._drain(b, c, events)
        if c.deferred and c.next_seq >= c.deferred:
            c.deferred = 0
        if c.gap_to >= c.next_seq and c.next_seq > c.fetch_end:
            self._fetch_window(b, publisher, c, now_ms)
        return True

    def _on_chain_frame(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        h: Packet | Checkpoint = frame.head
        try:
            b, c = self._chain_of(frame)
        except _Reject as r:
            # (Looked at only when refused: no cost on the path of every other frame.)
            if r.event.reason is not RejectReason.NOT_MEMBER or not self._own_fill_frame(frame, now_ms, events):
                raise
            return
        if h.seq > c.next_seq:
            self._hold(b, c, frame, events, now_ms)
            return
        self._accept(b, c, frame, events)
        if self._charges_peers:
            # An accepted frame is fresh (a copy is a replay, refused before any check) and authentic: the
            # connection it came on is the member's, now (SPEC 14.2) -- also before its catch-up FETCH is in.
            self._hint_route(b, peer, h.publisher)
        c.progress_ms = c.advanced_ms = now_ms
        self._drain(b, c, events)
        if c.deferred and c.next_seq >= c.deferred:
            c.deferred = 0  # nothing it deferred is missing any more
        if c.gap_to >= c.next_seq and c.next_seq > c.fetch_end:
            # The window in flight is in: ask for the next one now rather than at the retry timer.
            self._fetch_window(b, h.publisher, c, now_ms)

    def _chain_of(self, frame: Frame) -> tuple[_Branch, _Chain]:
        """The branch and chain of a chain frame, after every check that costs no crypto (THREATS 3, 8): a known,
        open branch; a member allowed to write, other than us; a chain we read; no replayed position; a key epoch
        we hold.  Raises ``_Reject``."""
        h: Packet | Checkpoint = frame.head
        b = self._branches.get(h.branch)
        if b is None:
            raise _Reject(RejectReason.UNKNOWN_BRANCH, "not a member of this branch", h.branch)
        if b.state is BranchState.CLOSED:
            tail = b.chains.get(h.publisher)
            if tail is None or not tail.next_seq <= h.seq <= tail.final:
                raise _Reject(RejectReason.CLOSED_BRANCH, "branch is closed", h.branch, h.publisher, h.seq)
            # (The tail of the author's chain that its REVOKE named and overtook: still accepted, SPEC 8.8.)
        member = b.members.get(h.publisher)
        if member is None or h.publisher == b.me:
            # Our own messages reflected back to us are a relay attempt, never input.
            raise _Reject(RejectReason.NOT_MEMBER, "publisher is not a member", h.branch, h.publisher, h.seq)
        if h.publisher != 0 and not member[1].can_write:
            raise _Reject(RejectReason.NOT_PERMITTED, "publisher may not write", h.branch, h.publisher, h.seq)
        c = b.chains.get(h.publisher)
        if c is None:
            raise _Reject(RejectReason.NOT_PERMITTED, "we may not read this chain", h.branch, h.publisher, h.seq)
        if h.seq < c.next_seq:
            # Cheap, before any crypto (THREATS 3, 8).
            # The frame rides along so the driver can tell a duplicate from a fork (THREATS 7) with its log.
            raise _Reject(RejectReason.REPLAY, "sequence number already accepted", h.branch, h.publisher, h.seq,
                          frame.raw)
        if h.publisher and b.write_lapsed(h.publisher, h.epoch):  # (the author's right never lapses)
            raise _Reject(RejectReason.NOT_PERMITTED, "signed before the publisher's write permission lapsed",
                          h.branch, h.publisher, h.seq)
        if (h.epoch, h.publisher) not in b.keys:
            raise _Reject(RejectReason.STALE_EPOCH, "unknown key epoch", h.branch, h.publisher, h.seq)
        return b, c

    def _drain(self, b: _Branch, c: _Chain, events: list[Event]) -> None:
        """Accept held successors now in order, then apply an anchor proof that waited for them."""
        while c.held and c.next_seq in c.held:
            nxt = c.held.pop(c.next_seq)
            h = nxt.head
            try:
                if h.publisher:
                    # _chain_of judged it when it came; a re-key may have taken the publisher's write away since,
                    # or given it back (a frame of an earlier run of its right is never accepted, SPEC 11).
                    member = b.members.get(h.publisher)
                    if member is None or not member[1].can_write or b.write_lapsed(h.publisher, h.epoch):
                        raise _Reject(RejectReason.NOT_PERMITTED, "the publisher may not write this (any more)",
                                      h.branch, h.publisher, h.seq)
                self._accept(b, c, nxt, events)
            except _Reject as r:
                events.append(r.event)
        if c.held is not None and not c.held:
            c.held = None
        if c.anchor_wait is not None and c.next_seq > c.anchor_wait[0].head.seq:
            claim, verified = c.anchor_wait
            c.anchor_wait = None
            try:
                self._apply_anchor(claim, verified, events)
            except _Reject as r:
                events.append(r.event)

    def _verify_chain_frame(self, b: _Branch, frame: Frame) -> bytes | None:
        """AEAD then signature (cheapest first).  Returns the payload (None for checkpoints)."""
        h = frame.head
        pub = b.members[h.publisher][0]
        payload: bytes | None = None
        if frame.kind is Kind.PACKET:
            key = b.keys[(h.epoch, h.publisher)]
            done = self._opened.pop(id(frame), None) if self._opened else None
            if done is not None and done[0] is key:
                payload = done[1]  # opened by receive_many's pre-pass with this very key
                if payload is None:  # (or found not to authenticate there)
                    raise _Reject(RejectReason.BAD_AEAD, "ciphertext does not authenticate", h.branch,
                                  h.publisher, h.seq)
            else:
                try:
                    payload = _crypto.aead_decrypt(key, h.nonce, frame.aad, frame.body)
                except VerificationError as exc:
                    raise _Reject(RejectReason.BAD_AEAD, "ciphertext does not authenticate", h.branch,
                                  h.publisher, h.seq) from exc
            if not frame.sig and b.mode is SigningMode.EACH:
                raise _Reject(RejectReason.BAD_SIGNATURE, "unsigned packet on a signed-each branch", h.branch,
                              h.publisher, h.seq)
        if frame.sig and not (self._verified and (pub, frame.hash, frame.sig) in self._verified):
            try:
                _crypto.verify(pub, frame.hash, frame.sig)
            except VerificationError as exc:
                raise _Reject(RejectReason.BAD_SIGNATURE, "signature does not verify", h.branch, h.publisher,
                              h.seq) from exc
        return payload

    def _accept(self, b: _Branch, c: _Chain, frame: Frame, events: list[Event]) -> None:
        h = frame.head
        if not _crypto.ct_equal(h.prev, c.head):
            raise _Reject(RejectReason.BAD_LINK, "hash link does not match the previous message", h.branch,
                          h.publisher, h.seq)
        if h.epoch != b.epoch and not self._old_epoch_ok(b, h.epoch):
            raise _Reject(RejectReason.STALE_EPOCH, "key epoch is not current", h.branch, h.publisher, h.seq)
        payload = self._verify_chain_frame(b, frame)
        if h.seq == c.final and c.final_hash and not _crypto.ct_equal(frame.hash, c.final_hash):
            # The tail's last message, but not the one the close (REVOKE, or the re-key that removed us) named
            # there, SPEC 8.8 / 9.5.  Signed: the author signed two messages at one position, a fork (THREATS 7)
            # -- the REVOKE (when still held) and this frame are its evidence.  Unsigned: not the author's word.
            if frame.sig:
                raise _Reject(RejectReason.FORK, "another message than the one the close named at the tail's head",
                              h.branch, h.publisher, h.seq, c.final_frame,
                              frame.raw if c.final_frame is not None else None)
            raise _Reject(RejectReason.BAD_LINK, "not the message the close named at the tail's head", h.branch,
                          h.publisher, h.seq)
        c.next_seq = h.seq + 1
        c.head = frame.hash
        c.stalls = 0  # progress: a fetch still needed goes back to fetch_retry_ms
        if c.catch_up_left:
            c.catch_up_left = 0  # the chain goes on from our cursor: our catch-up is answered (or moot)
        b.heard = True
        signed = bool(frame.sig)
        self._changes.log.append(LogRecord(b.id, h.publisher, h.seq, frame.hash, frame.raw))
        newly_covered = signed and (h.seq - c.covered > 1 or frame.kind is Kind.CHECKPOINT)
        if signed:
            c.covered = h.seq
        self._dirty.add((b.id, h.publisher))
        if payload is not None:
            events.append(_message_received(b.id, h.publisher, _did(b.members[h.publisher][0]), h.seq, payload,
                                          signed, frame.hash))
        if newly_covered:
            events.append(Covered(b.id, h.publisher, h.seq))

    def _old_epoch_ok(self, b: _Branch, epoch: int) -> bool:
        # A message of an earlier epoch is accepted only while we hold its key (it was sent before the re-key
        # reached the publisher's chain cut); the link check already pins it to the chain.
        return epoch < b.epoch and any(e == epoch for e, _ in b.keys)

    def _hold(self, b: _Branch, c: _Chain, frame: Frame, events: list[Event], now_ms: int) -> None:
        h = frame.head
        if c.held is None:
            c.held = {}
        held = c.held.get(h.seq)
        if held is not None:
            if _crypto.ct_equal(held.hash, frame.hash):
                raise _Reject(RejectReason.REPLAY, "already held", h.branch, h.publisher, h.seq)
            if b.write_lapsed(h.publisher, held.head.epoch):
                # Held since before the publisher's write lapsed: it will never be accepted (SPEC 11).  The new
                # one, of the current run, takes its place.
                self._verify_chain_frame(b, frame)
                c.held[h.seq] = frame
                return
            # Another message at a position we hold one for (THREATS 7): if it authenticates too, the publisher
            # signed both -- a fork, whichever the relay delivers first.  Both frames go to the driver, which
            # checks and records the evidence as for a REPLAY that differs from the log.  The held one stays.
            self._verify_chain_frame(b, frame)
            raise _Reject(RejectReason.FORK, "another message at a held position", h.branch, h.publisher, h.seq,
                          frame.raw, held.raw)
        if len(c.held) >= self.config.hold_limit:
            raise _Reject(RejectReason.HOLD_FULL, "hold buffer full", h.branch, h.publisher, h.seq)
        # Authenticate before buffering, so forged frames cannot fill the buffer.
        self._verify_chain_frame(b, frame)
        c.held[h.seq] = frame
        if h.seq > c.gap_to:
            # Reported only if it shows a message missing that we did not know of (a live frame right after
            # the range being fetched -- while a catch-up goes on, window after window -- shows none), and
            # not while our catch-up is unanswered (a live frame that overtakes its answer; see _on_head).
            if h.seq > max(c.gap_to, c.next_seq - 1) + 1:
                if c.catching_up():
                    self._defer(c, h.seq, now_ms)  # told when the window ends, if its answer does not explain it
                else:
                    self._report_gap(b, h.publisher, c, h.seq, events)
            self._want(b, h.publisher, c, h.seq, now_ms)

    def _on_head(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        h: HeadNotice = frame.head
        b = self._branches.get(h.branch)
        if (b is not None and h.publisher in b.members and h.publisher != b.me and h.publisher not in b.chains
                and not self._should_track(b, h.publisher)):
            return  # a chain we may not read (the author's, once a re-key took our read away): nothing to fetch
        if b is None or h.publisher not in b.members or h.publisher == b.me or h.publisher not in b.chains:
            raise _Reject(RejectReason.UNKNOWN_BRANCH, "head of an unknown chain", h.branch, h.publisher)
        if b.state is BranchState.CLOSED or (h.publisher and not b.members[h.publisher][1].can_write):
            # Nothing to fetch there (a revoked member's, a group we were removed from, or the chain of a member
            # whose write permission was taken away: what it published after is refused).  Dropped without an
            # event: the HEAD that follows the REVOKE in a grant sync's answer would read as an attack.
            return
        try:
            _crypto.verify(b.members[h.publisher][0], frame.hash, frame.sig)
        except VerificationError as exc:
            raise _Reject(RejectReason.BAD_SIGNATURE, "head notice signature", h.branch, h.publisher) from exc
        self._control_verified = True
        self._hint_route_unbound(b, peer, h.publisher)
        if h.publisher == 0:
            b.heard = True
            self._sync_waits.pop(b.id, None)  # the author answered (a group's grant sync, SPEC 9.5)
        c = b.chains[h.publisher]
        if 1 <= h.seq < c.next_seq:
            known = c.head if h.seq == c.next_seq - 1 else self._logged_hash(b.id, h.publisher, h.seq)
            if known is not None and not _crypto.ct_equal(known, h.hash):
                # The publisher's signed word that another message sits at a position we accepted: a fork (SPEC
                # 13.6).  The frame goes to the driver, which keeps it with the logged message as evidence.
                if b.write_lapsed(h.publisher, h.epoch):
                    # Signed in an earlier run of its write right: a fork only if the position is of that run
                    # too, which the driver's check against the logged frame's epoch decides (fork_evidence).
                    raise _Reject(RejectReason.REPLAY, "a head of an earlier run of the publisher's write right",
                                  b.id, h.publisher, h.seq, frame.raw)
                raise _Reject(RejectReason.FORK, "the head names another message than the one we accepted",
                              b.id, h.publisher, h.seq, frame.raw)
        # The answer to our catch-up window starts with this HEAD, the messages follow (SPEC 14.3): what we
        # miss up to it is already asked for, so it is not reported as a gap (every `tail --events` began with
        # one that filled at once).  The rest, beyond the window, is fetched as the catch-up goes on.
        catching_up = c.catching_up()
        c.catch_up_left = 0  # the publisher answered: what follows is the gap path's
        if c.deferred and catching_up:
            # What a frame showed missing beyond this head, while the window was out, is no catch-up: it was
            # published after the publisher answered, and lost on the way.  Only the HEAD that answers the window
            # explains anything: a later one (the publisher's HEAD when its channel goes quiet, once a frame in
            # order answered the window) says nothing of what it held when we caught up -- the rest is told when
            # the deferral's time is up (handle_timer), if the fetch has not brought it by then.
            self._tell_deferred(b, h.publisher, c, h.seq, events)
        if h.epoch > b.epoch and h.publisher == 0 and self.role is Role.SUBSCRIBER:
            self._request_grants(b, now_ms)  # the author re-keyed and its grant did not reach us (SPEC 9.5)
        if c.acked < h.seq < c.next_seq and h.seq > c.quick_acked:
            # We hold a head we have not acknowledged yet (its ACK is held back by ack_interval_ms): the
            # publisher is waiting for it (wait_acknowledged sends such a notice), so answer at once.  Once per
            # head: a replayed notice goes the paced way below.
            c.quick_acked = h.seq
            c.ack_ms = _LONG_AGO
        elif h.seq < c.next_seq and c.acked >= h.seq:
            # The publisher announces a head we already hold: our ACK may have been lost on the way (only the
            # publisher's periodic or quiet-time notices reach here), so acknowledge our cursor again.
            c.acked = h.seq - 1
        if c.fetch_end > h.seq:
            c.fetch_end = h.seq  # the window in flight cannot bring more than the publisher has
        if h.seq >= c.next_seq and h.seq > c.gap_to:
            if not catching_up:
                self._report_gap(b, h.publisher, c, h.seq + 1, events)
            else:
                # Fetched as the catch-up, not reported -- unless that fetch stalls: deferred, so that what it
                # has not brought when the deferral's time is up and nothing came for fetch_retry_ms (a relay
                # dropping every answer, the publisher's log damaged there) is reported then (THREATS 4: fetched
                # or reported).
                self._defer(c, h.seq + 1, now_ms)
            self._want(b, h.publisher, c, h.seq, now_ms)

    def _on_ack(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        h: Ack = frame.head
        b = self._branches.get(h.branch)
        if b is None:
            raise _Reject(RejectReason.UNKNOWN_BRANCH, "ack for an unknown branch", h.branch)
        if h.publisher != b.me:
            raise _Reject(RejectReason.UNEXPECTED, "ack of a chain that is not ours", h.branch, h.publisher)
        member = b.members.get(h.acker)
        if member is None or h.acker == b.me:
            raise _Reject(RejectReason.NOT_MEMBER, "ack from a non-member", h.branch, h.acker)
        c = b.chains.get(b.me)
        if c is None or (b.me == 0 and h.acker != 0 and not member[1].can_read):
            raise _Reject(RejectReason.NOT_PERMITTED, "acker may not read this chain", h.branch, h.acker)
        # The signature binds channel, branch, chain, seq and hash: an ACK relayed from another branch or
        # channel, or altered, does not verify (THREATS 2, 3).
        try:
            _crypto.verify(member[0], frame.hash, frame.sig)
        except VerificationError as exc:
            raise _Reject(RejectReason.BAD_SIGNATURE, "ack signature", h.branch, h.acker) from exc
        self._control_verified = True
        self._hint_route_unbound(b, peer, h.acker)
        if h.acker == 0:
            b.heard = True  # the author acknowledged our chain
        if c.acked_by is None:
            c.acked_by = {}
        seen = c.acked_by.get(h.acker, 0)
        beyond = h.seq >= c.next_seq
        # The message the acker says it holds at h.seq, against ours: at our head always; below it, for the
        # author's advancing ACKs (one log read each, paced) -- after a restore from a stale copy we may have
        # published past what we had lost before its ACK could tell us.
        # Not at or below our anchored head: there our chain is the author's copy (a proof that matched our log
        # there, or one our chain restarted at over a stale store's forks, which the log still holds -- an old ACK
        # of the author's, replayed, must not stop a chain that no longer builds on them).
        if h.seq == c.next_seq - 1:
            known: bytes | None = c.head
        elif h.acker == 0 and max(seen, c.anchored) < h.seq < c.next_seq - 1:
            known = self._logged_hash(b.id, b.me, h.seq)
        else:
            known = None
        other = known is not None and not _crypto.ct_equal(known, h.hash)
        if (beyond or other) and h.acker == 0 and b.me != 0 and h.seq > c.conflict_told:
            # The author's signed word that it holds our chain beyond our head, or another message than ours: our
            # store is older than the chain (a stale copy restored) or another holder of our key published.
            # Anything we sign now forks the chain further: stop, and say so once per conflicting position (and
            # run: a stop kept from an earlier run is reported again when the author confirms it).  The stop is
            # committed with the chain (before the event is acted on), so it holds after a restart too.
            if h.seq > c.conflict:
                c.conflict = h.seq
                self._dirty.add((b.id, b.me))
            c.conflict_told = h.seq
            events.append(ChainConflict(b.id, b.me, c.next_seq - 1, h.seq))
        if beyond:
            raise _Reject(RejectReason.UNEXPECTED, "ack beyond our head", h.branch, h.publisher, h.seq)
        if other:
            # The acker holds a different message than ours: someone forked our chain.
            raise _Reject(RejectReason.FORK, "ack of a message we never sent", h.branch, h.publisher, h.seq)
        if h.seq <= seen:
            if h.seq == seen:
                # The same ACK again: the receiver re-sends it after a restart and when a HEAD notice of ours
                # suggests we missed it (it cannot tell), or the network replays it.  It changes nothing, and
                # reporting it would bury real replays in noise after every quiet spell (SPEC 12).
                return
            raise _Reject(RejectReason.REPLAY, "ack older than one already accepted", h.branch, h.publisher, h.seq)
        c.acked_by[h.acker] = h.seq
        events.append(Acknowledged(b.id, b.me, h.seq, did_from_public_key(member[0])))

    def _on_fetch(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        h: Fetch = frame.head
        b = self._branches.get(h.branch)
        if b is None:
            raise _Reject(RejectReason.UNKNOWN_BRANCH, "fetch for an unknown branch", h.branch)
        member = b.members.get(h.requester)
        former = member is None and b.me == 0 and b.former is not None and h.requester in b.former
        if not former and (member is None or h.requester == b.me):
            raise _Reject(RejectReason.NOT_MEMBER, "fetch from a non-member", h.branch, h.requester)
        session_of = self.session_of
        if session_of is not None and peer is not None:
            # Bound to the connection it came on (SPEC 8.9): a recorded FETCH replayed on any other connection
            # -- one the replayer opened, or the member's next one -- is refused here, before its signature.
            # (A removed member's too: its answer, grants, must not be had again on every connection one opens.)
            want = session_of(peer)
            if want is not None and not (len(want) == SESSION_LEN and _crypto.ct_equal(frame.body, want)):
                raise _Reject(RejectReason.REPLAY, "fetch bound to another connection" if frame.body
                              else "fetch not bound to this connection", h.branch, h.requester)
        if former:
            self._tell_former(b, frame, now_ms, peer, events)
            return
        assert member is not None
        try:
            _crypto.verify(member[0], frame.hash, frame.sig)
        except VerificationError as exc:
            raise _Reject(RejectReason.BAD_SIGNATURE, "fetch signature", h.branch, h.requester) from exc
        self._control_verified = True
        self._hint_route(b, peer, h.requester)
        if h.publisher != b.me:
            if b.me == 0 and h.publisher == h.requester and h.from_seq >= 1 and b.state is BranchState.OPEN:
                # A member fetching its own messages back (its store was restored from an older copy and its
                # chain restarted at our anchored head, SPEC 13.5): from our log of its chain, up to our cursor.
                theirs = b.chains.get(h.publisher)
                hi = 0 if theirs is None else min(h.to_seq, h.from_seq + self.config.max_fetch - 1,
                                                  theirs.next_seq - 1)
                if hi >= h.from_seq:
                    events.append(FetchRequested(b.id, h.publisher, h.from_seq, hi, peer))
                return
            raise _Reject(RejectReason.UNEXPECTED, "we serve only our own chains", h.branch, h.publisher)
        perm = member[1]
        if b.me == 0 and (h.from_seq == 0 or b.state is BranchState.CLOSED):
            # A grant sync (from seq 0: the grants after epoch ``to_seq``), or a member that does not know the
            # branch closed (SPEC 9.5).  Any member may ask: a write-only one needs the new keys as well.
            answered = self._sync_grants(b, member, h.requester, h.to_seq if h.from_seq == 0 else b.epoch, peer,
                                         now_ms)
            if h.from_seq == 0 and not answered:
                return
            if h.from_seq == 0 and (b.peer_did or not perm.can_read):
                # Our HEAD only for a group: a member that just learned of it fetches what it holds.  A member
                # of its own branch fetches that from its cursor itself (after a restart, or not at all: one that
                # lost its state restarts at the anchored heads, section 13.5).
                return
        if h.requester != 0 and not perm.can_read:
            raise _Reject(RejectReason.NOT_PERMITTED, "requester may not read this chain", h.branch, h.requester)
        mine = b.chains.get(b.me)
        if mine is None:
            # A read-only member has no chain of its own: nothing to serve (and never a KeyError on peer input).
            raise _Reject(RejectReason.UNEXPECTED, "we have no chain in this branch", h.branch, h.publisher)
        hi = min(h.to_seq, h.from_seq + self.config.max_fetch - 1, mine.next_seq - 1)
        if mine.next_seq > 1:
            # Our head first: the requester learns how far to fetch (and that a truncated window is not the end),
            # so it asks for the next window as soon as this one is in, not at its retry timer.
            notice = HeadNotice(self._channel, b.id, b.me, mine.next_seq - 1, mine.head, b.epoch)
            self._out.append(Outgoing(encode_frame(notice, b"", self._id.sign).raw, peer=peer, branch=b.id))
        if h.from_seq >= 1 and hi >= h.from_seq:
            events.append(FetchRequested(b.id, b.me, h.from_seq, hi, peer))

    # -- internals: branches ---------------------------------------------------------------------------------

    def _new_branch(self, rec: BranchRecord, heads: list[tuple[int, int, bytes]]) -> _Branch:
        b = _Branch(rec)
        self._sync_chains(b, heads, rec.grant_hash)
        self._branches[b.id] = b
        self._changes.branches.append(self._record(b))
        self._changes.chains.extend(b.chain_record(p) for p in b.chains)
        return b

    @staticmethod
    def _should_track(b: _Branch, p: int) -> bool:
        """Whether we keep a cursor for publisher ``p``'s chain: ours if we may write it, others' if we may
        read them.  The author tracks every member's chain of a per-subscriber branch (so a later permission
        change finds the cursor in place) and only its own chain in a group."""
        if b.me == 0:
            return p == 0 or bool(b.peer_did)
        mine = b.members[b.me][1]
        if p == b.me:
            return mine.can_write
        if p == 0:
            return mine.can_read
        return mine is Permission.AUDIT and b.members[p][1].can_write

    def _sync_chains(self, b: _Branch, heads: list[tuple[int, int, bytes]], genesis: bytes,
                     events: list[Event] | None = None, now_ms: int | None = None) -> None:
        """Create the cursors we should have (from the grant's heads, else at the genesis grant) and drop the
        ones we may no longer use.  A chain we may no longer read whose head in the grant is beyond our cursor
        (published while we could read it, not received yet) is reported as a gap in ``events``: it is not
        fetched (SPEC 11).

        A cursor made at a grant's head counts nothing below it as covered on an amortized branch: the grant
        names the head, it is no signature of the chain's publisher over it (SPEC 10.1), and what we hold of the
        chain there may be unsigned packets.  The next signed message of the chain covers them (``Covered``);
        our own chain, restarting where the author holds it after our write lapsed, checkpoints them within
        ``checkpoint_interval_ms`` of ``now_ms``, as it would packets just published."""
        start = {p: (s, hh) for p, s, hh in heads}
        for p in list(b.chains):
            if p not in b.members or not self._should_track(b, p):
                c = b.chains[p]
                if p == b.me and b.me:  # our write permission was taken away: keep what the author had of it
                    acked_by = c.acked_by
                    acked = max(acked_by.values(), default=0) if acked_by else 0
                    b.final_acked = max(b.final_acked, acked, start.get(p, (0, b""))[0])
                elif events is not None and p in start and start[p][0] >= c.next_seq:
                    events.append(GapDetected(b.id, p, c.next_seq, start[p][0] + 1))
                del b.chains[p]
        for p in b.members:
            if p not in b.chains and self._should_track(b, p):
                seq, hh = start.get(p, (0, genesis))
                amortized = b.mode is not SigningMode.EACH
                c = b.chains[p] = _Chain(seq + 1, hh, 0 if amortized else seq)
                c.acked = seq  # nothing received yet: nothing to acknowledge
                if p == b.me and b.me:
                    # Our chain goes on from where the author holds it: what we signed beyond (refused while we
                    # could not write) leaves our log.  (Both callers write every cursor of the branch now.)
                    self._changes.log_cut.append((b.id, p, seq))
                    if seq:
                        known = self._logged_hash(b.id, p, seq)
                        if (self.log_lookup is not None if known is None else not _crypto.ct_equal(known, hh)):
                            # Our log does not hold the author's message at that head: what it holds up to there
                            # is not (all) the author's copy -- forks of a store restored from an older copy
                            # (ChainConflict).  Our chain now builds on the author's copy, so those rows leave
                            # the log: compared with the author's old ACKs (replayed by the network), they
                            # would stop our chain again, for good (SPEC 12).
                            self._changes.log_drop.append((b.id, p, seq))
                    if seq and amortized and now_ms is not None:
                        c.first_uncovered_ms = now_ms  # (SPEC 11: checkpointed within the interval)
                        self._note_deadline(now_ms + self.config.checkpoint_interval_ms)


def _anchored_already(c: _Chain, branch: bytes, publisher: int, seq: int) -> bool:
    """SPEC 13.5: a proof of the head we hold as anchored is no event (True); one below it is a REPLAY."""
    if seq < c.anchored:
        raise _Reject(RejectReason.REPLAY, "already anchored beyond this sequence number", branch, publisher, seq)
    return seq == c.anchored


# --- author --------------------------------------------------------------------------------------------------


class AuthorCore(_CoreBase):
    """The channel author's protocol machine.  See the module docstring for the driver contract."""

    role = Role.AUTHOR
    _charges_peers = True

    def __init__(self, identity: Identity, name: str, policy: Policy, config: CoreConfig | None = None,
                 rng: Rng | None = None) -> None:
        _check_name(name)
        super().__init__(identity, config, rng)
        self.name = name
        self.policy = policy
        self._channel = channel_id(identity.sign_public, name)
        self._author = identity.public
        ann = Announce(self._channel, identity.sign_public, identity.kx_public, name)
        self._announce = encode_frame(ann, b"", identity.sign)
        self._announce_hash = self._announce.hash
        # Per run (SPEC 8.3): a random component drawn at every start, so a challenge issued before a restart
        # fails its MAC in the next run (BAD_CHALLENGE: the requester says HELLO again).  A copied SUBSCRIBE then
        # cannot be admitted again after a restart even where the used nonces kept on disk were deleted
        # (they are not authenticated: THREATS "Parties", a store is untrusted): the used-nonce check is only
        # needed within one run.
        self._chal_key = identity.derive_key(_crypto.P_CHALKEY, self._channel + self._rng(_CHALLENGE_RUN_LEN))
        self._used_nonces: dict[bytes, int] = {}
        #: (expires_ms, nonce) of every used nonce, a heap: the expired ones are dropped oldest first (_remember_nonce).
        self._nonce_expiry: list[tuple[int, bytes]] = []
        #: The used nonces of requests the policy refused (a part of _used_nonces): at most half the bound.
        self._refused_nonces: set[bytes] = set()
        #: The handshake's clock (see _handshake_now), and the driver's reading it last advanced from (None: none yet).
        self._handshake_ms = 0
        self._handshake_read: int | None = None
        self._by_did: dict[str, bytes] = {}
        self._groups: set[bytes] = set()  #: group (broadcast) branch ids, open or closed
        #: Each recipient's hint key (SPEC 8.5), by its X25519 key: see :meth:`_hint_for`.
        self._hint_keys: dict[bytes, bytes] = {}
        self._syncs: dict[tuple[bytes, object], None] = {}  #: grant syncs answered (branch, peer), for the driver
        #: (branch, member, peer) -> when we last answered its grant sync, and after which epoch (_sync_grants)
        self._synced_ms: dict[tuple[bytes, int, object], tuple[int, int]] = {}
        #: (branch, member, peer) -> when its grant sync last got the first grants of the member's groups
        self._groups_told: dict[tuple[bytes, int, object], int] = {}

    def __repr__(self) -> str:
        return f"AuthorCore(channel={self._channel.hex()}, branches={len(self._branches)})"

    @property
    def announcement(self) -> bytes:
        """The signed announcement frame (public)."""
        return self._announce.raw

    def announce(self) -> None:
        """Queue the announcement for everyone."""
        self._out.append(Outgoing(self._announce.raw))
        self._changes.announce = self._announce.raw

    def load_author(self, branches: list[BranchRecord], chains: list[ChainRecord],
                    nonces: list[tuple[bytes, int]]) -> None:
        """Restore after a restart: branches and cursors.  ``nonces``, the used challenge nonces an older store
        holds, are accepted and left out: a challenge of an earlier run fails its MAC in this one (SPEC 8.3), so
        they could never refuse anything -- but kept, they would fill the bounded table (``max_nonces``) and have
        newcomers refused until they expire; rows of a store written with a far expiry (a store is untrusted,
        THREATS "Parties") would have them refused for good."""
        del nonces
        self.load(branches, chains)
        for b in self._branches.values():
            if b.peer_did and b.state is BranchState.OPEN:
                self._by_did[b.peer_did] = b.id
            elif not b.peer_did:
                self._groups.add(b.id)

    def branch_of(self, did: str) -> bytes | None:
        """The open per-subscriber branch of ``did``, if any."""
        return self._by_did.get(did)

    def permission_of(self, branch: bytes) -> Permission | None:
        """The subscriber's permission on its own (per-subscriber) branch ``branch`` -- what
        :meth:`set_permission` sets; None for a group or a branch we do not know."""
        b = self._branches.get(branch)
        return b.members[1][1] if b is not None and b.peer_did and 1 in b.members else None

    def owner_of(self, branch: bytes) -> str | None:
        """The DID whose own (per-subscriber) branch ``branch`` is, open or closed; None for a group -- one of a
        single member included -- or a branch we do not know."""
        b = self._branches.get(branch)
        return b.peer_did or None if b is not None else None

    # -- subscription handshake (THREATS 5) --------------------------------------------------------------------

    def _challenge_mac(self, nonce: bytes, expires_ms: int, peer: object) -> bytes:
        """The MAC of a challenge issued on ``peer``'s connection, bound to it where the transport has sessions
        (SPEC 8.3): the session of that connection is MACed in, so only a SUBSCRIBE that comes on the connection
        its challenge was issued on (the same session) passes.  A tap's copy of a SUBSCRIBE, delivered first on a
        connection of its own, fails as a foreign challenge -- and its GRANT never routes the new branch there
        (SPEC 14.2).  The CHALLENGE frame is unchanged: the requester copies the MAC without reading it."""
        session = b""
        session_of = self.session_of
        if session_of is not None and peer is not None:
            session = session_of(peer) or b""
            if not session:
                # The transport has sessions but no record of this connection now (a flood of new connections
                # evicted it before this turn): bind to the connection itself, never to nothing -- else a copy of
                # the SUBSCRIBE on any other connection it has no record of either would pass.  Never 8 bytes
                # long, so never a real session; and one id each (a padding byte appended made a 7-byte id and
                # the same id with 0xff after it -- a peer chooses its ZeroMQ routing id -- name one connection).
                ref = peer if isinstance(peer, bytes) else repr(peer).encode()
                session = (b"\xfe\xfe" if len(ref) == SESSION_LEN - 1 else b"\xff") + ref
        return _crypto.mac16(self._chal_key, _crypto.P_CHALLENGE, self._channel, nonce, _U64.pack(expires_ms),
                             session)

    def _on_hello(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        # Stateless: the challenge is MACed, so a HELLO flood costs one MAC each and no memory.
        nonce = self._rng(16)
        expires = self._handshake_now(now_ms) + self.config.challenge_ttl_ms
        ch = Challenge(self._channel, nonce, expires, self._challenge_mac(nonce, expires, peer))
        self._out.append(Outgoing(self._announce.raw, peer=peer))
        self._out.append(Outgoing(encode_frame(ch).raw, peer=peer))

    def _refuse(self, peer: object, request: bytes, reason: RejectReason) -> None:
        f = encode_frame(Refuse(self._channel, request, reason.value), b"", self._id.sign)
        self._out.append(Outgoing(f.raw, peer=peer))

    def _on_subscribe(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        try:
            secret = decode_subscribe_secret(self._id.unseal(frame.body))
        except (VerificationError, DecodeError) as exc:
            events.append(SubscriberRefused("", "subscription does not open or decode"))
            raise _Reject(RejectReason.MALFORMED, "subscription does not open or decode") from exc
        # 1. The challenge is ours (MAC), issued on this connection (its session, where the transport has
        #    them), fresh (window) and unused (THREATS 5: no replayed request, none relayed elsewhere).
        mac_ok = _crypto.ct_equal(secret.mac, self._challenge_mac(secret.nonce, secret.expires_ms, peer))
        t = self._handshake_now(now_ms)
        if not mac_ok or t > secret.expires_ms or secret.nonce in self._used_nonces:
            events.append(SubscriberRefused("", "challenge forged, expired or already used"))
            self._refuse(peer, frame.hash, RejectReason.BAD_CHALLENGE)
            raise _Reject(RejectReason.BAD_CHALLENGE, "challenge forged, expired or already used")
        self._drop_expired_nonces(t)
        if len(self._used_nonces) >= self.config.max_nonces:
            # THREATS 8: anyone who makes key pairs can answer challenges with valid proofs, each nonce kept for
            # the challenge's lifetime.  Beyond the bound: refused before any signature check, nothing kept; a
            # refusal to ask again for (BAD_CHALLENGE) -- room comes back as the used challenges expire.
            events.append(SubscriberRefused("", "too many subscriptions within the challenge lifetime (max_nonces)"))
            self._refuse(peer, frame.hash, RejectReason.BAD_CHALLENGE)
            raise _Reject(RejectReason.BAD_CHALLENGE, "too many subscriptions within the challenge lifetime")
        # 2. Proof of control of the DID over this channel, this author and this challenge.
        digest = _proof_digest(self._channel, self._id.sign_public, secret.nonce, secret.expires_ms,
                               secret.credential)
        try:
            pub = PublicIdentity.from_sign_public(secret.sign_public)
            pub.verify(digest, secret.proof)
        except (VerificationError, DecodeError) as exc:
            events.append(SubscriberRefused("", "proof of control does not verify"))
            self._refuse(peer, frame.hash, RejectReason.BAD_SIGNATURE)
            raise _Reject(RejectReason.BAD_SIGNATURE, "proof of control does not verify") from exc
        did = pub.did
        req = SubscriptionRequest(self._channel, did, pub.sign_public, secret.credential, secret.nonce)
        try:
            decision = self.policy.decide(req, now_ms)
        except Exception as exc:  # a policy's failure on what a requester sent: refused, and the author serves on
            decision = Decision.refuse(f"the policy failed: {type(exc).__name__}: {exc}")
        if not decision.admit:
            # Kept (a copy is refused as used, whatever the policy says by then) while the requests the policy
            # refused hold less than half the bound: throwaway DIDs, which anyone makes, must not fill the table
            # against the DIDs the policy admits (THREATS 8).  Beyond, not kept: a copy gets the policy's verdict.
            if len(self._refused_nonces) < self.config.max_nonces // 2:
                self._remember_nonce(secret.nonce, secret.expires_ms, now_ms)
                self._refused_nonces.add(secret.nonce)
            events.append(SubscriberRefused(did, decision.reason))
            self._refuse(peer, frame.hash, RejectReason.REFUSED)
            return
        self._remember_nonce(secret.nonce, secret.expires_ms, now_ms)
        existing = self._by_did.get(did)
        if existing is not None:
            # Re-subscription (e.g. the subscriber lost its grant): send the current grant again.  What admitted
            # it now (a renewed credential, say) replaces what admitted it before: later re-checks use it.
            # Its branch keeps only the rights that the new decision gives too (never more: a re-subscription adds
            # none): the evidence re-checked from now on must hold for every right it keeps.
            b = self._branches[existing]
            current = b.members[1][1]
            kept = common_permission(current, decision.permission)
            if kept is None:
                events.append(SubscriberRefused(did, f"re-subscription admitted with {decision.permission.name}, "
                                                     f"which has nothing in common with its branch's {current.name}"))
                self._refuse(peer, frame.hash, RejectReason.REFUSED)
                return
            _, old_evidence, _ = self._extras(b)
            if decision.evidence != old_evidence:
                b.evidence, b.has_evidence = decision.evidence, bool(decision.evidence)
                self._changes.branches.append(self._record(b))
            if kept is not current:
                self.set_permission(b.id, kept)  # a re-key: the grant sent below is the new one
                events.append(PermissionRestricted(b.id, did, kept))
            grant = self._current_grant(b)
            if grant is not None:  # (else damaged on disk: the driver told the operator; the member asks again)
                self._out.append(Outgoing(grant, peer=peer, branch=b.id))
            self._admit(peer, frame.hash, b.id, b.epoch)
            events.append(SubscriberAdmitted(did, b.id, kept, decision.reason, resubscribed=True))
            return
        branch = self._open_branch([(pub, decision.permission)], self.config.signing, peer_did=did, peer=peer,
                                   evidence=decision.evidence)
        self._admit(peer, frame.hash, branch, 0)
        events.append(SubscriberAdmitted(did, branch, decision.permission, decision.reason))

    def _admit(self, peer: object, request: bytes, branch: bytes, epoch: int) -> None:
        """The answer that ends an admitted request's handshake, after the GRANT it names (SPEC 8.6): bound to the
        SUBSCRIBE by its hash ``request``, so that no other copy of that GRANT (a grant sync's answer), and no
        answer to an earlier request, is taken for it."""
        f = encode_frame(Admit(self._channel, request, branch, epoch), b"", self._id.sign)
        self._out.append(Outgoing(f.raw, peer=peer))

    def handshake_time(self, now_ms: int) -> int:
        """The handshake's clock (SPEC 8.3) at the driver's reading ``now_ms``: what the used nonces' expiries
        (``take_changes().nonces``) are times of.  Never less than an earlier answer; a challenge issued so far
        expires by this plus ``challenge_ttl_ms`` at the latest."""
        return self._handshake_now(now_ms)

    def _handshake_now(self, now_ms: int) -> int:
        """The time for the challenges (issuing, expiry, dropping used nonces): it advances by what the driver's
        clock advances, and never goes back -- a wall clock steps back, and a nonce dropped as expired must stay
        expired, or a copied SUBSCRIBE answering it would be admitted again (THREATS 5).  Nor does it stay on a
        reading far ahead (a bad step forward, then corrected): the challenges issued after it would not expire
        before the wall clock got there, nor their used nonces be dropped, and once ``max_nonces`` of them were
        kept every SUBSCRIBE was refused for the rest of the run.  Challenges live ``challenge_ttl_ms`` of the
        driver's clock going forward, at most; a step of it forward ends them early (asked again)."""
        last = self._handshake_read
        if last is None:
            # Within what an expiry can be (a u64 on the wire, a signed 64-bit INTEGER in the store's nonces
            # table), with room to advance: a first reading below 0 or near 2**63 (a driver's clock of another
            # epoch) made the first HELLO -- anyone's -- raise out of the core (struct.error) or out of the commit
            # of its used nonce (OverflowError), and the party closed.
            self._handshake_ms = min(max(now_ms, 0), _HANDSHAKE_START_MAX_MS)
        elif now_ms > last:
            self._handshake_ms += now_ms - last
        self._handshake_read = now_ms
        # (At the top it stops -- some 146 million years of advances after the latest start.)
        self._handshake_ms = min(self._handshake_ms, _HANDSHAKE_MAX_MS - self.config.challenge_ttl_ms)
        return self._handshake_ms

    def _drop_expired_nonces(self, now_ms: int) -> None:
        """Forget the used nonces whose challenges expired (a SUBSCRIBE answering one is refused as expired
        anyway), oldest first: each is dropped once, whatever order the challenges were answered in."""
        heap, used = self._nonce_expiry, self._used_nonces
        while heap and heap[0][0] < now_ms:
            _, n = heapq.heappop(heap)
            used.pop(n, None)
            self._refused_nonces.discard(n)

    def _remember_nonce(self, nonce: bytes, expires_ms: int, now_ms: int) -> None:
        """Keep a used nonce until its challenge expires (the caller checked the bound, ``max_nonces``)."""
        self._used_nonces[nonce] = expires_ms
        heapq.heappush(self._nonce_expiry, (expires_ms, nonce))
        self._changes.nonces.append((nonce, expires_ms))

    # -- branches ------------------------------------------------------------------------------------------------

    def open_branch(self, subscriber: PublicIdentity, permission: Permission = Permission.READ_WRITE,
                    mode: SigningMode | None = None) -> bytes:
        """Open a per-subscriber branch for a DID without a handshake (e.g. pre-provisioned)."""
        if subscriber.did in self._by_did:
            raise LocalProtocolError("that DID already has an open branch")
        return self._open_branch([(subscriber, permission)], mode or self.config.signing, subscriber.did, None)

    def open_group(self, members: list[PublicIdentity], permission: Permission = Permission.READ) -> bytes:
        """Open a broadcast branch: only the author writes, members read (or audit).  Always signed-each: with a
        shared key, an unsigned packet could be forged by any member."""
        if permission.can_write:
            raise LocalProtocolError("group branches are author-write only")
        if not members:
            raise LocalProtocolError("a group needs members")
        if len({m.sign_public for m in members}) != len(members):
            # remove_member must be able to take a member out entirely (THREATS 6)
            raise LocalProtocolError("a group's members must be distinct")
        return self._open_branch([(m, permission) for m in members], SigningMode.EACH, "", None)

    def _open_branch(self, members: list[tuple[PublicIdentity, Permission]], mode: SigningMode, peer_did: str,
                     peer: object, evidence: bytes = b"") -> bytes:
        branch = self._rng(16)
        while branch in self._branches:
            branch = self._rng(16)
        if len(members) > 255:
            raise LocalProtocolError(f"a branch holds at most 255 members besides the author, not {len(members)}")
        member_list = [(0, self._id.sign_public, int(Permission.READ_WRITE))]
        member_list += [(i + 1, pub.sign_public, int(perm)) for i, (pub, perm) in enumerate(members)]
        keys = [(0, p, self._rng(32)) for p, _, perm in member_list if p == 0 or Permission(perm).can_write]
        rec = BranchRecord(branch, 0, int(mode), b"", b"", 0, member_list, keys, BranchState.OPEN.value, peer_did,
                           evidence)
        frame = self._grant_frame(rec, [pub for pub, _ in members], self._announce_hash, [])
        rec.grant_hash, rec.grant_frame = frame.hash, frame.raw
        b = self._new_branch(rec, [])
        if peer_did:
            self._by_did[peer_did] = branch
        self._out.append(Outgoing(frame.raw, peer=peer, branch=branch))
        if not peer_did:
            self._groups.add(branch)
            self._to_members(b, frame.raw)
        return branch

    def _to_members(self, b: _Branch, raw: bytes) -> None:
        """Also send a group's control frame (GRANT, REVOKE) along each member's own branch: the transport
        routes a branch's frames to the peers it learned for that branch, and a member learns of a new group
        only from its grant (SPEC 14.2).  A member not connected gets it by grant sync (SPEC 9.5)."""
        for pk, _ in b.members.values():
            own = self._by_did.get(_did(pk))
            if own is not None:
                self._out.append(Outgoing(raw, branch=own))

    def _set_grant(self, b: _Branch, frame: Frame) -> None:
        """Make ``frame`` (a re-key) the branch's grant; the one it replaces joins its grant history, which
        members that missed the re-key fetch (SPEC 9.5) -- unless it is damaged on disk (``grant_intact``): then
        the history ends at the new grant (nothing older could be served: the chain of grants breaks there)."""
        old, evidence, earlier = self._extras(b)
        b.grants, _ = self._held_grants(b, old, earlier, b.epoch - 1)  # (the caller moved the epoch on)
        b.evidence = evidence
        b.grant_hash, b.grant_frame = frame.hash, frame.raw

    def _held_grants(self, b: _Branch, current: bytes, earlier: list[bytes],
                     epoch: int) -> tuple[list[bytes], bool]:
        """The newest part of ``b``'s grant history that its record holds (``earlier`` grants, then its
        ``current`` one, of ``epoch``), from after the newest one the ``grant_intact`` hook finds damaged; and
        whether none was."""
        frames = [*earlier, current]
        check = self.grant_intact
        if check is not None:
            first = epoch - len(frames) + 1  # the epoch of frames[0]
            for i in range(len(frames) - 1, -1, -1):
                if not check(b.id, first + i, frames[i]):
                    return frames[i + 1:], False
        return frames, True

    def _current_grant(self, b: _Branch) -> bytes | None:
        """``b``'s current grant, to send again; None if the ``grant_intact`` hook finds it damaged.

        A member's own branch whose grant is damaged is re-keyed at once, to the permission it has (as
        :meth:`set_permission` would), and the new grant is the one sent: else a member back with a new store
        got no grant at any try, for good (only a re-key by hand let it in).  The re-key links to the grant's
        hash, which the record keeps apart from the damaged frame, so the member's other stores take it too.  A
        group's is re-keyed the same way, removing nobody (:meth:`_repair_group`).  The driver has told the
        operator of the damage either way."""
        current = self._extras(b)[0]
        check = self.grant_intact
        if check is None or check(b.id, b.epoch, current):
            return current
        if b.peer_did and b.state is BranchState.OPEN:
            self.set_permission(b.id, b.members[1][1])
            return b.grant_frame
        if self._open_group(b):
            self._rekey_group(b, [])  # (as _repair_group would: its check is the one just made)
            return b.grant_frame
        return None

    def _open_group(self, b: _Branch) -> bool:
        """Whether ``b`` is an open group (broadcast) branch, which a re-key that removes nobody can repair."""
        return not b.peer_did and b.id in self._groups and b.state is BranchState.OPEN

    def _repair_group(self, g: _Branch) -> bool:
        """An open group whose current grant the ``grant_intact`` hook finds damaged on disk is re-keyed at once,
        removing nobody (a new key, the same members): else a member that needs that grant -- one back with a new
        store, which learns the group from it -- was locked out for good, as a member of its own branch was
        before :meth:`_current_grant` re-keyed it.  The new grant links to the grant hash the record keeps apart
        from the damaged frame, so members holding the old grant take it; the damaged frame is neither served
        nor carried into the history.  Returns whether it re-keyed."""
        check = self.grant_intact
        if not self._open_group(g) or check is None or check(g.id, g.epoch, self._extras(g)[0]):
            return False
        self._rekey_group(g, [])
        return True

    def _grants_after(self, b: _Branch, epoch: int) -> list[bytes]:
        """The grant frames of ``b`` for the epochs after ``epoch``, in order (as far as its history goes back:
        stores written before it was kept hold only the current grant; nothing from a damaged one back)."""
        current, _, earlier = self._extras(b)
        frames, intact = self._held_grants(b, current, earlier, b.epoch)  # (all of it without grants_lookup)
        first = b.epoch - len(frames) + 1  # the epoch of frames[0]
        lookup = self.grants_lookup
        if lookup is not None and intact and first > max(0, epoch + 1):
            older = lookup(b.id, max(0, epoch + 1), first - 1)
            frames = [*older, *frames]
            first -= len(older)
        return frames[max(0, epoch + 1 - first):]

    def _first_grant(self, g: _Branch) -> bytes | None:
        """The grant that opened ``g`` (epoch 0), or the earliest one its history still holds (None: none intact)."""
        self._repair_group(g)  # (its current grant damaged on disk: re-keyed first, else none is served)
        lookup = self.grants_lookup
        if lookup is not None and g.epoch > 0:
            current, _, earlier = self._extras(g)
            held, intact = self._held_grants(g, current, earlier, g.epoch)
            first = g.epoch - len(held) + 1  # the epoch of held[0]
            if not intact:
                # The history breaks inside the record (a grant damaged on disk, the one _repair_group replaced
                # included): the grant at 0 leads nowhere -- no grant after it links on -- so a member that learns
                # the group learns it from the earliest grant after the break (what came before is its gap).
                return held[0] if held else None
            # The table's part, 0 .. first - 1, served from after a hole or a grant damaged anywhere in it (the
            # lookup checks each): whole, it starts at 0; else at the earliest grant after the break -- not at 0,
            # which no grant the member can then get links on from (it stayed at epoch 0 for good).
            before = lookup(g.id, 0, first - 1) if first > 0 else []
            return before[0] if before else (held[0] if held else None)
        frames = self._grants_after(g, -1)
        return frames[0] if frames else None

    def take_syncs(self) -> list[tuple[bytes, object]]:
        """The open branches a member asked to sync since the last call, with its peer: a member back after
        a restart or a reconnect.  The driver re-sends it the latest anchor proofs of the branch (which it may
        have missed while away, SPEC 13.5)."""
        out = list(self._syncs)
        self._syncs = {}
        return out

    def _revoke_frame(self, b: _Branch) -> bytes:
        """The branch's REVOKE (deterministic: nothing it names moves once the branch is closed)."""
        c = b.chains[0]
        head = Revoke(self._channel, b.id, b.epoch, b.grant_hash, c.next_seq - 1, c.head)
        return encode_frame(head, b"", self._id.sign).raw

    def _tell_former(self, b: _Branch, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        """A FETCH from a member removed from group ``b`` (it was away when the re-key that removed it went out,
        and asks on, or it fetches what it missed before its removal): answer with the grants from its epoch
        through the one that removed it -- the last tells it so and names the author chain's head then, which
        closes the group on its side (SPEC 9.5) -- at most once per ``grant_sync_interval_ms`` per connection, as
        grant syncs are; and serve a FETCH of the author's chain up to that head, never beyond (THREATS 4, 6).
        Not a rejection: it is what a removed member does until it learns."""
        h: Fetch = frame.head
        assert b.former is not None
        pk, removed_at, last = b.former[h.requester]
        try:
            _crypto.verify(pk, frame.hash, frame.sig)
        except VerificationError as exc:
            raise _Reject(RejectReason.BAD_SIGNATURE, "fetch signature", h.branch, h.requester) from exc
        self._control_verified = True
        hi = min(h.to_seq, h.from_seq + self.config.max_fetch - 1, last)
        if h.publisher == 0 and 1 <= h.from_seq <= hi:
            # What was published to it before its removal, from the retained log (the driver's part); nothing
            # after: ``last`` is the head the removing re-key named.  No HEAD of ours: it would name a later one.
            events.append(FetchRequested(b.id, 0, h.from_seq, hi, peer))
        # A grant sync names the member's epoch; any other FETCH does not: then the grant that removed it alone.
        after = min(h.to_seq, removed_at - 1) if h.from_seq == 0 else removed_at - 1
        key = (b.id, h.requester, peer)
        last, last_after = self._synced_ms.get(key, (_LONG_AGO, after))
        if now_ms - last < self.config.grant_sync_interval_ms and after >= last_after:
            return  # (answered within the interval, with as much as this asks: a sync from further back is not)
        self._prune_synced(now_ms)
        self._synced_ms[key] = (now_ms, after)
        # By each frame's own epoch, not by position: a store's grant history may start later than epoch 0
        # (kept only since an upgrade), and nothing after the removing grant may go out.
        frames = []
        for raw in self._grants_after(b, after):
            epoch = decode_frame(raw).head.epoch
            if after < epoch <= removed_at:
                frames.append((epoch, raw))
        if not frames or frames[-1][0] != removed_at:
            return  # the grant that removed it is not in the history (an old store): nothing that would tell it
        for _, raw in frames:
            # To its peer alone, naming no branch: an endpoint routes a branch to the peer of an Outgoing naming
            # both (a grant to a member), and this one is no member -- its peers were forgotten for the group.
            self._out.append(Outgoing(raw, peer=peer))

    def _prune_synced(self, now_ms: int) -> None:
        """Bound the grant-sync answer times kept (per member, branch and connection)."""
        if len(self._synced_ms) >= 100_000:
            limit = now_ms - self.config.grant_sync_interval_ms
            self._synced_ms = {k: v for k, v in self._synced_ms.items() if v[0] > limit}

    def _sync_grants(self, b: _Branch, member: tuple[bytes, Permission], requester: int, after: int, peer: object,
                     now_ms: int) -> bool:
        """Answer a member's grant sync (a FETCH from seq 0, SPEC 9.5): the grants of ``b`` after epoch
        ``after``, its REVOKE if it is closed, and, on the member's own branch, the first grant of every open
        group it belongs to (it may have been offline when the group opened; once per interval); on that
        branch, when nothing is newer, its current grant (an answer always: the member asks again when none
        comes).  At most once per member, branch and connection (peer) per ``grant_sync_interval_ms``, unless
        ``after`` is higher than the last answered: False (nothing sent) otherwise -- a request replayed on one
        connection costs a signature check only (a member that reconnects is a new peer, and one that applied a
        grant asks after its new epoch: answered)."""
        key = (b.id, requester, peer)
        last, last_after = self._synced_ms.get(key, (_LONG_AGO, after))
        if now_ms - last < self.config.grant_sync_interval_ms and after <= last_after:
            return False
        self._prune_synced(now_ms)
        self._synced_ms[key] = (now_ms, after)
        later = self._grants_after(b, after)
        for raw in later:
            self._out.append(Outgoing(raw, peer=peer, branch=b.id))
        if b.state is BranchState.OPEN:
            self._syncs[(b.id, peer)] = None
        if b.state is BranchState.CLOSED:
            self._out.append(Outgoing(self._revoke_frame(b), peer=peer, branch=b.id))
            return True
        if not b.peer_did:
            return True  # a group: our HEAD answers (_on_fetch), if the chain holds anything
        if now_ms - self._groups_told.get(key, _LONG_AGO) >= self.config.grant_sync_interval_ms:
            # Not again within the interval: a group's GRANT is O(members) bytes, and a member that applied k
            # missed re-keys asks k times in a row (a retry after a loss comes later: answered in full).
            if len(self._groups_told) >= 100_000:
                self._groups_told.clear()
            self._groups_told[key] = now_ms
            for g in self._open_groups_of(member[0]):
                first = self._first_grant(g)
                if first is None:
                    continue  # damaged on disk (the driver told the operator)
                self._out.append(Outgoing(first, peer=peer, branch=g.id))
                # Naming the group and the peer, it routes the group there (SPEC 14.2): one of the member's peers
                # for the group, forgotten when it is removed -- as one its FETCH of the group came from would be.
                for i, (pk, _) in g.members.items():
                    if i and pk == member[0]:
                        self._hint_route(g, peer, i)
        if not later:
            # Always an answer on a member's own branch (SPEC 9.5), last: its current grant (it changes nothing
            # there).  A member that gets none asks again: the request or the answer was lost.
            current = self._current_grant(b)
            if current is not None:  # (else damaged on disk: the driver told the operator)
                self._out.append(Outgoing(current, peer=peer, branch=b.id))
        return True

    def _open_groups_of(self, sign_public: bytes) -> list[_Branch]:
        """The open groups that list this key as a member (the author aside)."""
        out = []
        for gid in self._groups:
            g = self._branches[gid]
            if g.state is BranchState.OPEN and any(i and pk == sign_public for i, (pk, _) in g.members.items()):
                out.append(g)
        return out

    def _hint_for(self, kx_public: bytes, branch: bytes, epoch: int, keep: bool) -> bytes:
        """The hint of a recipient's entry in a grant of ``branch`` at ``epoch`` (SPEC 8.5).  The pair's hint key
        costs an X25519: with ``keep`` (a group's grant) it is kept per recipient, so that a group's re-key costs
        none for members already granted something (bounded: a cache, emptied when full, not state).  A
        per-subscriber branch's grant does not keep it: 10,000 branches kept 10,000 keys, about 180 bytes of every
        idle branch (bench_scale).  Its re-keys (:meth:`set_permission`, a policy recheck's restriction, a damaged
        grant's repair) have one recipient and seal the grant key to it anyway (one X25519 in the sealed box): the
        hint key adds a second, where a kept one added none."""
        key = self._hint_keys.get(kx_public)
        if key is None:
            key = _hint_key(self._id, kx_public, self._id.kx_public, kx_public)
            if keep:
                if len(self._hint_keys) >= _MAX_HINT_KEYS:
                    self._hint_keys.clear()
                self._hint_keys[kx_public] = key
        return _hint(key, self._channel, branch, epoch)

    def _grant_frame(self, rec: BranchRecord, recipients: list[PublicIdentity], prev: bytes,
                     heads: list[tuple[int, int, bytes]],
                     removed: Sequence[tuple[int, bytes, Permission]] = ()) -> Frame:
        # The member list and the heads, once, under a fresh key; each recipient's entry seals that key with its
        # own chain keys (SPEC 8.5).  A fresh key encrypts one plaintext: the nonce may be constant.  ``removed``:
        # (index, Ed25519 key, permission) of the members this re-key removes from a group, each told the author
        # chain's head in an entry of its own, which holds no key (THREATS 4: it fetches or reports what it missed
        # before).
        shared_key = self._rng(32)
        shared = _crypto.aead_encrypt(shared_key, _GRANT_NONCE, _grant_aad(rec.id, rec.epoch),
                                      encode_grant_shared(list(rec.members), heads))
        entries: list[tuple[int, GrantEntry]] = []  # (member index, entry): written in member order
        keep = not rec.peer_did  # a group's: its re-keys reuse the hint keys (_hint_for)
        by_pub = {pk: (i, Permission(p)) for i, pk, p in rec.members}

        def keys_of(idx: int, perm: Permission) -> list[tuple[int, bytes]]:
            return [(p, k) for e, p, k in rec.keys if e == rec.epoch and (
                (p == idx and perm.can_write) or (p == 0 and perm.can_read) or perm is Permission.AUDIT)]

        for pub in recipients:
            idx, perm = by_pub[pub.sign_public]
            sealed = _crypto.seal(pub.kx_public, encode_grant_key(GrantKey(idx, shared_key, keys_of(idx, perm))))
            if len(sealed) > MAX_GRANT_KEY_ENTRY:  # pragma: no cover - 256 chain keys fit
                raise LocalProtocolError(f"a grant entry of {len(sealed):,} bytes is over the limit of "
                                         f"{MAX_GRANT_KEY_ENTRY:,}")
            entries.append((idx, GrantEntry(self._hint_for(pub.kx_public, rec.id, rec.epoch, keep), sealed)))
        for idx, pk, perm in removed:
            pub = PublicIdentity.from_sign_public(pk)
            seq, last = next((s, h) for p, s, h in heads if p == 0)
            # As long as the key entry it would have had (a stand-in, never sent), and at its member's place: an
            # observer who sees every byte does not tell which entry is the removal by its size or place (SPEC 8.5).
            size = len(encode_grant_key(GrantKey(idx, bytes(32), keys_of(idx, perm))))
            sealed = _crypto.seal(pub.kx_public, encode_grant_removal(padded_grant_removal(idx, seq, last, size)))
            entries.append((idx, GrantEntry(self._hint_for(pub.kx_public, rec.id, rec.epoch, keep), sealed)))
        entries.sort(key=lambda e: e[0])
        head = Grant(self._channel, rec.id, rec.epoch, prev, rec.mode)
        frame = encode_frame(head, encode_grant_body(shared, [e for _, e in entries]), self._id.sign)
        if len(frame.raw) > self.config.max_frame:
            # Refused here, before anything changed: members would drop it unread (FrameTooLarge).  A grant grows
            # with its members (about 170 bytes each): only a frame limit far below the default's makes this.
            raise LocalProtocolError(f"a branch of {len(rec.members) - 1} members is too large: its grant would be "
                                     f"{len(frame.raw):,} bytes, over the frame limit of {self.config.max_frame:,}")
        return frame

    def remove_member(self, branch: bytes, did: str) -> None:
        """Remove a member from a group branch and re-key it (epoch + 1): nothing published afterwards is
        readable by the removed member (THREATS 6)."""
        b = self._get_branch(branch)
        if b.peer_did:
            raise LocalProtocolError("per-subscriber branches are revoked, not re-keyed")
        target = [i for i, (pk, _) in b.members.items() if i != 0 and did_from_public_key(pk) == did]
        if not target:
            raise LocalProtocolError("not a member of that branch")
        if all(i == 0 or i in target for i in b.members):
            # Its last member: the group closes.  Its REVOKE names the epoch the member holds (a re-key first
            # would make it one the member never saw, and refuse), and the member stays listed, so that one
            # that was away is answered with that REVOKE when it asks.
            self.revoke(branch)
            return
        self._rekey_group(b, target)

    def _rekey_group(self, b: _Branch, target: list[int]) -> None:
        """Re-key group ``b`` (epoch + 1), removing the members at indices ``target`` (none: a repair, SPEC 9.5)."""
        b.transition("grant")
        former = b.former or {}
        c = b.chains[0]
        perms = {}
        for i in target:  # every seat of that DID (stores written before open_group refused duplicates)
            pk, perms[i] = b.members.pop(i)
            former[i] = (pk, b.epoch + 1, c.next_seq - 1)
            b.chains.pop(i, None)
        b.former = former or None
        b.epoch += 1
        b.keys[(b.epoch, 0)] = self._rng(32)
        rec = self._record(b)
        recipients = [PublicIdentity.from_sign_public(pk) for i, (pk, _) in sorted(b.members.items()) if i != 0]
        frame = self._grant_frame(rec, recipients, b.grant_hash, [(0, c.next_seq - 1, c.head)],
                                  [(i, former[i][0], perms[i]) for i in target])
        self._set_grant(b, frame)
        self._changes.branches.append(self._record(b))
        self._out.append(Outgoing(frame.raw, branch=b.id))
        self._to_members(b, frame.raw)
        for i in target:
            for peer in self._member_peers.pop((b.id, i), ()):
                self._route_hints[(b.id, peer)] = False  # the removed member's peers: no more of the group's frames

    def set_permission(self, branch: bytes, permission: Permission) -> None:
        """Change the subscriber's permission on a per-subscriber branch.  Re-keys the branch (epoch + 1): from
        the next message on, a reader that lost read access cannot decrypt, and packets of a member that lost
        write access are refused (THREATS 6)."""
        b = self._get_branch(branch)
        if not b.peer_did:
            raise LocalProtocolError("group branches are re-keyed with remove_member, not re-permissioned")
        b.transition("grant")
        pk, _ = b.members[1]
        b.members[1] = (pk, permission)
        b.epoch += 1
        b.keys[(b.epoch, 0)] = self._rng(32)
        if permission.can_write:  # no key, no chain: nothing it signs under this epoch is ever accepted
            b.keys[(b.epoch, 1)] = self._rng(32)
        heads = [(p, c.next_seq - 1, c.head) for p, c in sorted(b.chains.items())]
        frame = self._grant_frame(self._record(b), [PublicIdentity.from_sign_public(pk)], b.grant_hash, heads)
        self._set_grant(b, frame)
        self._changes.branches.append(self._record(b))
        self._out.append(Outgoing(frame.raw, branch=b.id))

    def recheck(self, now_ms: int, dids: bool = False, restricted: list[tuple[bytes, Permission]] | None = None,
                reasons: dict[bytes, str] | None = None,
                undecided: list[tuple[str, str]] | None = None) -> list[bytes]:
        """Re-evaluate each open subscriber's admission against the policy now: revoke the branches whose
        evidence (e.g. a credential) no longer holds by the policy's ``still_valid(evidence, now_ms)``, if it has
        one (a revoked or expired credential), and with ``dids``, those the policy no longer admits
        (:meth:`_readmits`: after the policy was replaced; branches opened with :meth:`open_branch` included).  Such
        a subscriber also leaves its groups.  With ``dids``, evidence that the policy does not re-check (no
        ``still_valid``, or none in the policies it combines: the rule that admitted it was removed) holds nothing:
        such a subscriber is judged on its DID alone, as one whose evidence no longer holds.  With ``dids`` too, a
        subscriber admitted on its DID alone keeps only
        the rights of its branch's permission that the policy still gives it (never more: a re-key,
        :meth:`set_permission`; revoked if none is left), each appended to ``restricted`` as (branch, permission).
        Returns the revoked branch ids, groups closed by losing their last member included; ``reasons`` receives
        why, per branch; ``undecided`` (DID, why) for each subscriber whose policy cannot answer now
        (:class:`~streams.errors.PolicyUnavailable`: a status list whose source is down), left as it is."""
        # Every decision first, then the changes: a policy that raises part-way changes nothing (nothing half
        # done, and nothing revoked unreported).
        cut: dict[str, str] = {}  # DID -> why
        narrow: list[tuple[bytes, Permission]] = []
        renewed: list[tuple[_Branch, bytes]] = []  # (branch, evidence of its DID-alone admission)
        own: set[str] = set()
        rechecks = getattr(self.policy, "still_valid", None) is not None  # (else no evidence is read back)

        def unanswered(did: str, exc: PolicyUnavailable) -> None:
            """The policy cannot answer now for ``did`` (a status list whose source is down): as it is, unless
            what needs no lookup decides (denied, say)."""
            if dids and not could_admit(self.policy, did):
                cut[did] = _NOT_ADMITTED
            elif undecided is not None:
                undecided.append((did, str(exc)))

        for b in list(self._branches.values()):
            if b.state is not BranchState.OPEN or not b.peer_did:
                continue
            own.add(b.peer_did)
            try:
                holds = (evidence_holds(self.policy, self._extras(b)[1], now_ms) if b.has_evidence and rechecks
                         else None)
            except PolicyUnavailable as exc:
                unanswered(b.peer_did, exc)
                continue
            if holds is None and b.has_evidence and dids:
                # Evidence that no rule of the policy re-checks (one replaced by a policy without the credential
                # rule that admitted it, or by one that re-checks nothing): it holds nothing now -- kept, it would
                # keep its rights past its credential's expiry or revocation, whatever the policy gives its DID.
                holds = False
            if holds is False:
                # Its evidence no longer holds: it stays only if the policy admits its DID alone now (an
                # allow-list beside the credential rule), with what that gives.
                decision = self._decide_on_did(b.peer_did, now_ms)
                admitted, allowed = decision.admit, decision.permission if decision.admit else None
                if admitted:
                    renewed.append((b, decision.evidence))
            elif dids:
                admitted, allowed = self._readmits(b.peer_did, b.has_evidence, now_ms)
            else:
                continue
            current = b.members[1][1]
            kept = common_permission(current, allowed) if admitted and allowed is not None else current
            if not admitted:
                cut[b.peer_did] = _NO_EVIDENCE if holds is False else _NOT_ADMITTED
            elif kept is None:
                cut[b.peer_did] = "the subscriber's permission and the policy's have nothing in common"
            elif kept is not current:
                narrow.append((b.id, kept))
        # Group members with no open branch of their own (they left it, it was revoked alone, or they never had
        # one: a group the author filled itself).  One whose closed own branch kept evidence (a credential) is
        # judged by it, as it would be there: while a piece holds it stays (with ``dids``, unless the policy
        # cannot admit its DID at all); once none does, it stays only if the policy admits its DID alone.  The
        # others are judged on their DID alone with ``dids``: taken off the list, they leave.
        members = {_did(pk) for gid in self._groups if self._branches[gid].state is BranchState.OPEN
                   for i, (pk, _) in self._branches[gid].members.items() if i} - own
        evidence_of: dict[str, list[bytes]] = {}
        if members and rechecks:
            for b in self._branches.values():
                if b.peer_did in members and b.state is BranchState.CLOSED and b.has_evidence:
                    evidence_of.setdefault(b.peer_did, []).append(self._extras(b)[1])
        for d in sorted(members):
            pieces = evidence_of.get(d)
            try:
                holding = bool(pieces) and any(evidence_holds(self.policy, e, now_ms) for e in pieces or ())
            except PolicyUnavailable as exc:
                unanswered(d, exc)
                continue
            if holding:
                if dids and not could_admit(self.policy, d):
                    cut[d] = _NOT_ADMITTED
            elif pieces:
                if not self._decide_on_did(d, now_ms).admit:
                    cut[d] = _NO_EVIDENCE
            elif dids and not self._readmits(d, False, now_ms)[0]:
                cut[d] = _NOT_ADMITTED
        revoked = []
        for did, why in cut.items():
            closed = self.revoke_subscriber(did)
            revoked += closed
            if reasons is not None:
                reasons.update((b, f"its last member was cut off: {why}" if b in self._groups else why)
                               for b in closed)
        for b, evidence in renewed:
            if b.peer_did not in cut:
                b.evidence, b.has_evidence = evidence, bool(evidence)
                self._changes.branches.append(self._record(b))
        for branch, permission in narrow:
            self.set_permission(branch, permission)
            if restricted is not None:
                restricted.append((branch, permission))
        return revoked

    def revoke_subscriber(self, did: str) -> list[bytes]:
        """Cut a subscriber off: revoke its own branch (if open) and take it out of every group (each re-keyed
        without it), as a re-check does to one it no longer admits.  Returns the branches closed (its own, and
        groups it was the last member of).  Raises :class:`LocalProtocolError` if ``did`` is not a DID or is a
        member of nothing open."""
        try:
            sign_public = PublicIdentity.from_did(did).sign_public
        except (DecodeError, ValueError) as exc:
            raise LocalProtocolError(f"not a DID: {did!r}") from exc
        own = self._by_did.get(did)
        groups = self._open_groups_of(sign_public)
        if own is None and not groups:
            raise LocalProtocolError(f"{did} is a member of no open branch")
        closed = []
        if own is not None:
            self.revoke(own)
            closed.append(own)
        # It leaves every group too (each re-keyed without it): it would otherwise keep reading what the author
        # broadcasts (THREATS 6).  A group it was the last member of closes.
        for g in groups:
            self.remove_member(g.id, did)
            if g.state is BranchState.CLOSED:
                closed.append(g.id)
        return closed

    def _decide_on_did(self, did: str, now_ms: int) -> Decision:
        """The policy's decision on ``did`` alone (no credential), as for a subscription that presented none;
        never an admission of a DID it cannot admit at all (:func:`~streams.policy.could_admit`).  What ``decide``
        raises propagates."""
        if not could_admit(self.policy, did):
            return Decision.refuse("the policy cannot admit this DID")
        pub = PublicIdentity.from_did(did)
        return self.policy.decide(SubscriptionRequest(self._channel, did, pub.sign_public, b""), now_ms)

    def _readmits(self, did: str, has_evidence: bool, now_ms: int) -> tuple[bool, Permission | None]:
        """Whether the policy would still admit ``did``, and with which permission where it decides that again:
        never a DID it cannot admit at all (:func:`~streams.policy.could_admit`: denied, say); one admitted on its
        DID alone (no evidence: an allow-list, :meth:`open_branch`, a group) only if the policy admits it again on
        its DID alone -- taken off an allow-list, it is not, even where a credential rule could admit it with a
        credential -- and then with the permission that decision gives.  Evidence is re-checked by
        ``still_valid`` (permission None: not decided again).  What ``decide`` raises propagates, as at a
        subscription."""
        if not could_admit(self.policy, did):
            return False, None
        if has_evidence:
            return True, None
        decision = self._decide_on_did(did, now_ms)
        return decision.admit, decision.permission if decision.admit else None

    def revoke(self, branch: bytes) -> None:
        """Close a branch: nothing published afterwards is readable, nothing its members send is accepted."""
        b = self._get_branch(branch)
        b.transition("revoke")
        raw = self._revoke_frame(b)
        self._out.append(Outgoing(raw, branch=b.id))
        self._route_hints[(b.id, None)] = False  # after the REVOKE went out: nothing more to send them
        for key in [k for k in self._member_peers if k[0] == b.id] if not b.peer_did else ():
            del self._member_peers[key]
        self._changes.branches.append(self._record(b))
        if b.peer_did:
            self._by_did.pop(b.peer_did, None)
        else:
            self._to_members(b, raw)

    # -- anchoring (THREATS 7) -------------------------------------------------------------------------------------

    def anchor_heads(self, chains: list[tuple[bytes, int]],
                     committed: Mapping[tuple[bytes, int], tuple[int, bytes]] | None = None
                     ) -> list[tuple[ChainHead, int]]:
        """The current heads of ``chains`` as ``(ChainHead, key_epoch)``, ready for
        :func:`streams.anchor.build_epoch`.  Chains without a message yet, or unknown, are left out.
        ``committed``: the driver's (seq, hash) of each chain's head as committed, anchored instead of the
        current head, which a message not committed yet may have moved (the ledger must never hold a head the
        store may not have)."""
        out: list[tuple[ChainHead, int]] = []
        for branch, publisher in chains:
            b = self._branches.get(branch)
            c = None if b is None else b.chains.get(publisher)
            if b is None or c is None or c.next_seq <= 1:
                continue
            seq, head = c.next_seq - 1, c.head
            if committed is not None:
                at = committed.get((branch, publisher))
                if at is None or not 1 <= at[0] <= seq:
                    continue
                seq, head = at
            blind = self._blind(b, publisher)
            if blind is None:
                continue
            out.append((ChainHead(branch, publisher, seq, head, blind[1]), blind[0]))
        return out

    def anchor_proof(self, branch: bytes, publisher: int, seq: int, head_hash: bytes, key_epoch: int,
                     checkpoint: EpochCheckpoint, anchor_id: str, proof: InclusionProof, *, restore: bool = False,
                     peer: object = None) -> None:
        """Queue a signed ANCHOR_PROOF of ``head`` for the members of its branch.  Call it only once the
        checkpoint is confirmed on the ledger (THREATS 7: nothing says "anchored" earlier).  ``restore``: sent
        right after a re-sent grant, the member starts its cursor there.  Closed or unknown branches are
        skipped."""
        b = self._branches.get(branch)
        if b is None or b.state is BranchState.CLOSED:
            return
        h = AnchorProof(self._channel, branch, publisher, seq, head_hash, key_epoch, checkpoint.epoch, anchor_id,
                        proof.index, proof.tree_size, int(restore))
        body = encode_anchor_body(checkpoint.encode(), proof.path)
        self._out.append(Outgoing(encode_frame(h, body, self._id.sign).raw, peer=peer, branch=branch))

    def _on_unsubscribe(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        h: Unsubscribe = frame.head
        b = self._branches.get(h.branch)
        if b is None or b.state is BranchState.CLOSED:
            raise _Reject(RejectReason.CLOSED_BRANCH, "unsubscribe for an unknown or closed branch", h.branch)
        member = b.members.get(h.publisher)
        if member is None or h.publisher == 0:
            raise _Reject(RejectReason.NOT_MEMBER, "unsubscribe from a non-member", h.branch, h.publisher)
        if h.epoch != b.epoch or not _crypto.ct_equal(h.prev, b.grant_hash):
            raise _Reject(RejectReason.STALE_EPOCH, "unsubscribe for another epoch", h.branch, h.publisher)
        try:
            _crypto.verify(member[0], frame.hash, frame.sig)
        except VerificationError as exc:
            raise _Reject(RejectReason.BAD_SIGNATURE, "unsubscribe signature", h.branch, h.publisher) from exc
        if b.peer_did:
            b.transition("unsubscribe")
            self._by_did.pop(b.peer_did, None)
            self._changes.branches.append(self._record(b))
            events.append(BranchClosed(b.id, "unsubscribe", 0))
        else:
            did = did_from_public_key(member[0])
            self.remove_member(b.id, did)
            if self.branch_state(b.id) is BranchState.CLOSED:  # it was the last member
                events.append(BranchClosed(b.id, "unsubscribe", 0))
            else:
                events.append(MemberLeft(b.id, did))


# --- subscriber ------------------------------------------------------------------------------------------------


class SubscriberCore(_CoreBase):
    """A subscriber's protocol machine.  It knows the author's DID and the channel id in advance (out of band,
    e.g. from configuration) and trusts nothing else it receives."""

    role = Role.SUBSCRIBER

    def __init__(self, identity: Identity, author_did: str, channel: bytes, config: CoreConfig | None = None,
                 rng: Rng | None = None) -> None:
        super().__init__(identity, config, rng)
        if type(channel) is not bytes or len(channel) != 32:
            raise LocalProtocolError("a channel id is 32 bytes (streams.core.channel_id)")
        self._author = PublicIdentity.from_did(author_did)
        self._channel = channel
        #: Our hint key with the author (SPEC 8.5), made at the first grant: one X25519 for the core's life.
        self._hint_key: bytes | None = None
        self.state = SubscriptionState.IDLE
        self._announced = False
        #: the message hash of each request (SUBSCRIBE) the current attempt sent (the last few): what a REFUSE
        #: or an ADMIT must name (SPEC 9.1)
        self._requests: list[bytes] = []
        #: (branch, epoch) an ADMIT of the current attempt named before we held that grant (SPEC 9.1)
        self._admitted: tuple[bytes, int] | None = None
        self._credential = b""
        self._claims = []
        #: Branches we hold closed that the author answered as open: (when we last told it we left, and the newest
        #: grant of it we know, epoch and hash).  At most one entry per branch we hold.
        self._left: dict[bytes, tuple[int, int, bytes]] = {}
        #: Chains (branch, publisher) of the branches a GRANT of the current handshake created -- we held nothing of
        #: them: new, or we lost our state -- with the cursor that GRANT started them at: where a restore proof
        #: may move them (SPEC 13.5).  Forgotten when a new handshake starts; in memory only.
        self._fresh: dict[tuple[bytes, int], int] = {}

    def __repr__(self) -> str:
        return f"SubscriberCore(channel={self._channel.hex()}, state={self.state.value})"

    @property
    def announced(self) -> bool:
        """Whether we hold the author's verified announcement of our channel."""
        return self._announced

    @property
    def author(self) -> PublicIdentity:
        assert self._author is not None
        return self._author

    def load_subscriber(self, announce: bytes | None, branches: list[BranchRecord],
                        chains: list[ChainRecord]) -> None:
        self.load(branches, chains)
        for b in self._branches.values():
            if b.me and b.me in b.chains and not self._should_track(b, b.me):
                # A re-key took our write permission away (its chain's row stays in the store): what the author
                # held of our chain then is named in that grant, which the store keeps (``acknowledged``).
                b.final_acked = self._our_head_in_grant(b)
                del b.chains[b.me]
        if announce is not None:
            f = decode_frame(announce, self.config.max_frame)
            self._announce_hash = f.hash
            self._announced = True
        if any(b.state is BranchState.OPEN for b in self._branches.values()):
            self.state = SubscriptionState.SUBSCRIBED

    def _our_head_in_grant(self, b: _Branch) -> int:
        """The seq of our chain's head that ``b``'s current grant names (0 if it names none, or does not open)."""
        if b.grant_frame is None:
            return 0
        try:
            frame = decode_frame(b.grant_frame, self.config.max_frame)
            shared, entries = decode_grant_body(frame.body)
            secret = self._open_grant(b.id, b.epoch, shared, self._our_entries(b.id, b.epoch, entries))
        except DecodeError:
            return 0
        return next((s for p, s, _ in secret.heads if p == b.me), 0) if secret is not None else 0

    def _our_entries(self, branch: bytes, epoch: int, entries: list[GrantEntry]) -> list[GrantEntry]:
        """The entries of a grant whose hint is ours (SPEC 8.5): by the keyed hint, then by the legacy one (grants
        written before it, kept in stores and grant histories)."""
        if self._hint_key is None:
            self._hint_key = _hint_key(self._id, self.author.kx_public, self.author.kx_public, self._id.kx_public)
        hint = _hint(self._hint_key, self._channel, branch, epoch)
        legacy = _legacy_hint(branch, epoch, self._id.kx_public)
        return [e for e in entries if _crypto.ct_equal(e.hint, hint)] + \
            [e for e in entries if _crypto.ct_equal(e.hint, legacy)]

    def _open_grant(self, branch: bytes, epoch: int, shared: bytes | None,
                    mine: list[GrantEntry]) -> GrantSecret | None:
        """The first of our entries that opens with our key, with the grant's shared part it unlocks (None if none
        does).  ``shared`` None: a grant of the first layout, whose entries hold everything (SPEC 8.5)."""
        for e in mine:
            try:
                plain = self._id.unseal(e.sealed)
                if shared is None:
                    return decode_grant_secret(plain)
                k = decode_grant_key(plain)
                members, heads = decode_grant_shared(
                    _crypto.aead_decrypt(k.shared_key, _GRANT_NONCE, _grant_aad(branch, epoch), shared))
                return GrantSecret(k.index, members, k.keys, heads)
            except (VerificationError, DecodeError):
                continue
        return None

    def _transition(self, inp: Kind | str) -> None:
        nxt = SUBSCRIPTION.get((self.state, inp))
        if nxt is None:
            raise _Reject(RejectReason.UNEXPECTED, f"{inp} not expected in state {self.state.value}")
        self.state = nxt

    def hello(self, credential: bytes = b"", retry: bool = False) -> None:
        """Start (or restart) the subscription handshake.  ``credential``: an optional presentation for the
        author's policy (see :mod:`streams.credentials`).  Set :attr:`credential_for_challenge` for a
        presentation that must embed the author's challenge.  ``retry``: this repeats the HELLO of the same
        attempt (its earlier SUBSCRIBEs may still be answered); a new attempt forgets the SUBSCRIBEs an abandoned
        one left outstanding, whose late ADMIT must not complete it (SPEC 9.1)."""
        _check_credential(credential)
        try:
            self._transition("hello")
        except _Reject as r:  # pragma: no cover - "hello" is valid in every state
            raise LocalProtocolError(r.event.detail) from None
        if not retry:
            self._requests = []
            self._admitted = None
            self._fresh = {}  # the grants of an earlier handshake are not this one's
        self._credential = credential
        self.presenter_error = None
        self._abandoned = False
        self._out.append(Outgoing(encode_frame(Hello(self._channel)).raw))

    def abandon_hello(self) -> None:
        """The driver gave up on the handshake (its call timed out or was cancelled): a CHALLENGE that still
        comes (a HELLO held up on the way) is refused, not answered -- no presenter run, no SUBSCRIBE sent for a
        membership the application no longer asks for.  A SUBSCRIBE already sent may still be admitted (it is out
        of our hands); the next :meth:`hello` starts a new attempt."""
        self._abandoned = True

    #: The last handshake was given up (:meth:`abandon_hello`): challenges are refused until the next hello.
    _abandoned = False

    # A hook for presentations bound to the challenge: called with (nonce, channel) -> credential bytes.
    credential_for_challenge: Callable[[bytes, bytes], bytes] | None = None
    #: What the hook raised (or why its result was unusable) at the last CHALLENGE: no SUBSCRIBE was sent.
    presenter_error: Exception | None = None
    #: Announcements received of another author or channel than the one we know (wrong address or settings?).
    foreign_announcements = 0

    def _on_announce(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        a: Announce = frame.head
        author = self.author
        if not _crypto.ct_equal(a.author_sign, author.sign_public) or a.channel != self._channel:
            self.foreign_announcements += 1  # the driver's hint when the handshake times out
            raise _Reject(RejectReason.FOREIGN_CHANNEL, "announcement of another author or channel")
        if a.channel != channel_id(a.author_sign, a.name) or a.author_kx != author.kx_public:
            raise _Reject(RejectReason.MALFORMED, "announcement fields are inconsistent")
        try:
            author.verify(frame.hash, frame.sig)
        except VerificationError as exc:
            raise _Reject(RejectReason.BAD_SIGNATURE, "announcement signature") from exc
        if not self._announced:
            self._announced = True
            self._announce_hash = frame.hash
            self._changes.announce = frame.raw
            events.append(Announced(self._channel, author.did))

    def _on_challenge(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        if not self._announced:
            raise _Reject(RejectReason.UNEXPECTED, "challenge before a verified announcement")
        if self._abandoned:
            raise _Reject(RejectReason.UNEXPECTED, "challenge of a handshake we gave up")
        self._transition(Kind.CHALLENGE)
        ch: Challenge = frame.head
        cred = self._credential
        if self.credential_for_challenge is not None:
            try:
                cred = self.credential_for_challenge(ch.nonce, self._channel)
                _check_credential(cred)
            except Exception as exc:
                # The application's presenter failed: a local error, never one of the receive loop (which
                # would close the party).  No request goes out; the driver reports it to the caller.
                self.presenter_error = exc
                return
        digest = _proof_digest(self._channel, self.author.sign_public, ch.nonce, ch.expires_ms, cred)
        secret = SubscribeSecret(self._id.sign_public, ch.nonce, ch.expires_ms, ch.mac, cred, self._id.sign(digest))
        body = _crypto.seal(self.author.kx_public, encode_subscribe_secret(secret))
        request = encode_frame(Subscribe(self._channel), body)
        self._requests = [*self._requests[-(_MAX_REQUESTS - 1):], request.hash]
        self._out.append(Outgoing(request.raw))

    def _check_answer(self, frame: Frame, request: bytes, what: str) -> None:
        """An answer to a SUBSCRIBE (REFUSE, ADMIT): signed by the author, naming a request of the handshake that
        runs (SPEC 9.1)."""
        try:
            self.author.verify(frame.hash, frame.sig)
        except VerificationError as exc:
            raise _Reject(RejectReason.BAD_SIGNATURE, f"{what} signature") from exc
        if self.state not in _AWAITING or not any(_crypto.ct_equal(request, h) for h in self._requests):
            raise _Reject(RejectReason.UNEXPECTED, f"{what} of a request we did not make")

    def _on_refuse(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        r: Refuse = frame.head
        self._check_answer(frame, r.request, "refusal")
        self._requests = [h for h in self._requests if h != r.request]  # (a copy of it: UNEXPECTED)
        if not self._requests:
            self._transition(Kind.REFUSE)
            self._admitted = None
        # else another SUBSCRIBE of this attempt is still unanswered (a HELLO said again after silence): the
        # handshake still awaits its answer -- refused for an expired challenge or a full used-nonce table, the
        # first may come back refused while the second is admitted, and that ADMIT (and the GRANT before it) must
        # end the handshake, not be dropped as unexpected while the driver pauses before asking again.
        try:
            reason = RejectReason(r.reason)
        except ValueError:
            reason = RejectReason.REFUSED
        events.append(Refused(reason))

    def _on_admit(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        a: Admit = frame.head
        self._check_answer(frame, a.request, "admission")
        b = self._branches.get(a.branch)
        if b is not None and b.state is BranchState.CLOSED:
            self._leave_again(b, a.epoch, None, now_ms)
            raise _Reject(RejectReason.CLOSED_BRANCH, "admission to a closed branch", a.branch)
        if b is not None and len(b.members) != 2:
            raise _Reject(RejectReason.MALFORMED, "admission to a group", a.branch)
        if b is None or b.epoch < a.epoch:
            # Its GRANT is not applied yet (lost on the way, or a re-subscription's, which does not extend the
            # epoch we hold when we missed re-keys): the handshake ends when it is (``_on_grant``).  Ask for the
            # re-keys we missed now, rather than at the next periodic sync.
            self._admitted = (a.branch, a.epoch)
            if b is not None:
                self._request_grants(b, now_ms, limit=False)
            return
        self._complete(b, events)

    def _complete(self, b: _Branch, events: list[Event]) -> None:
        """End the handshake: ``b``, our own branch, holds the grant the author's ADMIT named."""
        self._transition(Kind.ADMIT)
        self._requests = []
        self._admitted = None
        _, perm, _, dids = self.branch_info(b.id)
        events.append(Subscribed(b.id, b.epoch, perm, dids))

    def _on_grant(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        g: Grant = frame.head
        try:
            shared, entries = decode_grant_body(frame.body)
        except DecodeError as exc:
            raise _Reject(RejectReason.MALFORMED, "grant entries") from exc
        mine = self._our_entries(g.branch, g.epoch, entries)
        if not mine:
            self._maybe_removed(frame, None, now_ms, events)
            return  # a grant for someone else (routing may broadcast): not an error, not our business
        try:
            self.author.verify(frame.hash, frame.sig)
        except VerificationError as exc:
            raise _Reject(RejectReason.BAD_SIGNATURE, "grant signature", g.branch) from exc
        existing = self._branches.get(g.branch)
        # Our catch-up's grant sync is unanswered: a branch we learn of now (the first grant of a group opened
        # while we were away comes in its answer) was opened while we were away -- it is caught up as well; and a
        # later grant of this branch that answers that sync asks again as part of the catch-up.
        away = existing is None and self._catching_up_grants()
        resync = g.branch in self._catch_up_syncs and g.branch in self._sync_waits
        handshake = self.state in _AWAITING
        if not (existing is not None and len(existing.members) == 2 and self._keep_first_grant_ask()):
            # The author answered our grant sync (9.5): no retry -- unless we asked this branch (our own) for a
            # group's first grant that has not come (a GRANT of it answering something else, a re-subscription's,
            # must not end that ask: the group's re-key that prompted it was not applied).
            self._sync_waits.pop(g.branch, None)
        if existing is not None:
            existing.heard = True
            if existing.me and len(existing.members) > 2 and g.epoch > existing.epoch:
                removal = self._open_removal(existing.me, mine)
                if removal is not None:
                    # The re-key that removes us from the group, naming the author chain's head (SPEC 9.5).  Again,
                    # once we closed it (it comes on the group's route and our own branch's): nothing here.  One we
                    # cannot apply yet (we missed re-keys before it): _maybe_removed asks for them.
                    if existing.state is BranchState.OPEN:
                        self._maybe_removed(frame, removal, now_ms, events)
                    return
            if existing.state is BranchState.CLOSED:
                if g.epoch >= existing.epoch:
                    self._leave_again(existing, g.epoch, frame.hash, now_ms)
                raise _Reject(RejectReason.CLOSED_BRANCH, "grant for a closed branch", g.branch)
            if _crypto.ct_equal(frame.hash, existing.grant_hash):
                # The same grant again (the answer to a re-subscription, or to a grant sync): already applied.
                # The ADMIT that follows a re-subscription's ends the handshake.
                return
            if g.epoch < existing.epoch:
                # An earlier grant of the author's, signed: a grant sync or a group's first grant sent along our
                # own branch again (SPEC 9.5).  Already applied; it changes nothing.
                return
            if g.epoch != existing.epoch + 1 or not _crypto.ct_equal(g.prev, existing.grant_hash):
                raise _Reject(RejectReason.STALE_EPOCH, "grant does not extend the branch's grant chain", g.branch)
        elif g.epoch == 0 and not _crypto.ct_equal(g.prev, self._announce_hash):
            raise _Reject(RejectReason.BAD_LINK, "first grant does not link to the announcement", g.branch)
        secret = self._open_grant(g.branch, g.epoch, shared, mine)
        if secret is None:
            raise _Reject(RejectReason.BAD_AEAD, "grant entry does not open", g.branch)
        members = {i: (pk, p) for i, pk, p in secret.members}
        if secret.index not in members or not _crypto.ct_equal(members[secret.index][0], self._id.sign_public) \
                or 0 not in members or not _crypto.ct_equal(members[0][0], self.author.sign_public):
            raise _Reject(RejectReason.MALFORMED, "grant membership inconsistent", g.branch)
        if existing is not None and secret.index != existing.me:
            # Our member index names our chain and cursors; a re-key never moves it (found by fuzz/insider.py).
            raise _Reject(RejectReason.MALFORMED, "grant moves us to another member index", g.branch)
        try:
            mode = SigningMode(g.mode)
        except ValueError as exc:
            raise _Reject(RejectReason.MALFORMED, "unknown signing mode", g.branch) from exc
        # While a handshake runs, a grant is applied and the handshake goes on: only ADMIT ends it.  Outside one, a
        # grant makes us subscribed (a branch the author opened for us unasked).
        if self.state not in _AWAITING and self.state is not SubscriptionState.SUBSCRIBED:
            self._transition(Kind.GRANT)
        if existing is None and g.epoch > 0 and not self._may_be_own(g.branch, len(members)):
            # (A branch of two members is ours, or a group of one: we cannot tell, so each is asked.)
            own = [b for b in self._branches.values() if len(b.members) == 2 and b.state is BranchState.OPEN]
            asked = self._first_grant_asked.get(g.branch)
            if own and (asked is None or now_ms - asked < self._sync_retry_ms()):
                # A re-key of a group we hold nothing of: its first grant did not reach us (held back, lost).  We
                # were a member from its start (a group's members only ever leave) and may read its history: our
                # own branch's grant sync brings the group's first grant, then the group's syncs the later ones,
                # then its catch-up what it holds (SPEC 9.5).  Starting at this grant's heads would skip what was
                # published to us before, in silence.  If the sync brought nothing earlier (an author store that
                # no longer holds the first grant), a copy that comes after a sync's wait is applied.
                if asked is None:
                    if len(self._first_grant_asked) >= 1024:
                        self._first_grant_asked.clear()
                    self._first_grant_asked[g.branch] = now_ms
                    self._first_grant_keeps = GRANT_SYNC_RETRIES + 1
                for b in own:
                    self._request_grants(b, now_ms, limit=asked is not None)
                return
            # Applied after the wait, or with no branch of our own to ask through: what the author's chain held
            # before this grant's head is missing, and is said so (not fetched: we hold no key of those epochs).
            head = next((s for p, s, _ in secret.heads if p == 0), 0)
            if head:
                events.append(GapDetected(g.branch, 0, 1, head + 1))
        keys = [(g.epoch, p, k) for p, k in secret.keys]
        if existing is None:
            rec = BranchRecord(g.branch, g.epoch, int(mode), frame.hash, frame.raw, secret.index,
                               list(secret.members), keys)
            new = self._new_branch(rec, secret.heads)
            if self.state in _AWAITING and len(self._fresh) < _MAX_FRESH:
                # (Our own chain too: only there does a proof of it restart it at a mark, SPEC 13.5.)
                self._fresh.update(((new.id, p), c.next_seq) for p, c in new.chains.items())
        else:
            existing.transition("grant")
            existing.epoch = g.epoch
            existing.grant_hash, existing.grant_frame = frame.hash, frame.raw
            existing.members = {i: (pk, Permission(p)) for i, pk, p in secret.members}
            existing.keys.update({(e, p): k for e, p, k in keys})
            self._sync_chains(existing, secret.heads, existing.grant_hash, events, now_ms)
            self._changes.branches.append(self._record(existing))
            self._changes.chains.extend(existing.chain_record(p) for p in existing.chains)
        perm = Permission(members[secret.index][1])
        dids = tuple(did_from_public_key(pk) for _, (pk, _) in sorted(members.items()))
        events.append(Granted(g.branch, g.epoch, perm, dids))
        if self._admitted is not None and self._admitted[0] == g.branch and g.epoch >= self._admitted[1] \
                and len(members) == 2 and self.state in _AWAITING:
            self._complete(self._branches[g.branch], events)  # the grant an ADMIT that came first named
        # Grant sync (SPEC 9.5): any later grant (a group's first grant may come long after it was re-keyed), the
        # first grants of groups we belong to (on our own branch), and the author's HEAD, which starts the fetch
        # of what the branch already holds (packets sent before the author's transport knew our route to it).
        b = self._branches[g.branch]
        # An authentic new grant: never rate-limited.  Timed (asked again if unanswered) on a member's own branch,
        # which the author always answers; a new group's chain is empty, and nothing would answer there.
        self._request_grants(b, now_ms if len(b.members) <= 2 else None, limit=False, catch_up=resync)
        if away and not (handshake and len(b.members) == 2):
            # A group opened (and maybe published to) while we were away: what it holds is no gap, as for the
            # branches we held (SPEC 10.1 step 7, 14.3) -- a catch-up window, from the grant's heads, on every
            # chain we read there.  Its FETCHes follow the grant sync: the author answers the later grants first.
            # (Not our own branch that a handshake running now created: its restore proof sets where it starts.)
            self._catch_up_chains(b, now_ms)

    def _keep_first_grant_ask(self) -> bool:
        """A GRANT of our own branch came while a group's first grant asked for through its grant sync has not:
        keep that sync's wait (its retries go on), at most the ask's number of tries since the last ask -- counted
        in answers, not in time, so a late timer does not end it early, and a first grant that can never come
        (we were removed from the group meanwhile) costs a bounded number of syncs.  (An ask that is over stays
        recorded: a later copy of the group's re-key is then applied, with the gap said, SPEC 9.5.)"""
        if self._first_grant_keeps <= 0 or all(gid in self._branches for gid in self._first_grant_asked):
            return False
        self._first_grant_keeps -= 1
        return True

    def _may_be_own(self, branch: bytes, n_members: int) -> bool:
        """Whether a grant of a branch we hold nothing of, of ``n_members`` members, may be of our own branch: two
        members (the author and us), while a handshake runs whose ADMIT, if it came, names that branch, and we hold
        no other open branch of two members (a member that lost its state subscribes again and is granted its
        branch at a later epoch; the author keeps one branch per DID, so a member that holds its own already is
        granted that one).  A grant of two members outside a handshake is taken for a group of one (a group whose
        other members left): a grant of our own branch at a later epoch comes to us only with a subscription of
        ours."""
        if n_members != 2 or self.state not in _AWAITING:
            return False
        if self._admitted is not None:
            return self._admitted[0] == branch
        return not any(len(b.members) == 2 and b.state is BranchState.OPEN and b.id != branch
                       for b in self._branches.values())

    def _open_removal(self, me: int, mine: list[GrantEntry]) -> GrantRemoval | None:
        """Our entry of a GRANT that removes us from a group, opened: the author chain's head at the re-key, for
        our member index (SPEC 8.5); None if no entry of ours is one."""
        for e in mine:
            try:
                r = decode_grant_removal(self._id.unseal(e.sealed))
            except (VerificationError, DecodeError):
                continue
            if r.index == me:
                return r
        return None

    def _maybe_removed(self, frame: Frame, removal: GrantRemoval | None, now_ms: int, events: list[Event]) -> None:
        """A GRANT with no entry for us (``removal`` None), or whose entry for us is a removal (signed, checked by
        the caller): if it is the author's signed re-key of a group we hold, extending the grant we hold (epoch +
        1, ``prev``), we were removed from the group (SPEC 9.5): close it here, rather than go on asking it for
        what we may no longer read.  Anything else is someone else's grant.  A removal names the author chain's
        head at the re-key: what we miss up to it was published to us, and is still fetched and accepted, as the
        tail a REVOKE names (SPEC 8.8); a grant without an entry (an author before removals were told) names
        nothing, and we close at our cursor."""
        g: Grant = frame.head
        b = self._branches.get(g.branch)
        if b is None or b.state is not BranchState.OPEN or len(b.members) <= 2 or g.epoch <= b.epoch:
            return
        if g.epoch > b.epoch + 1:
            # A later re-key of a group we hold that removes us, or has no entry for us (we were removed at it or
            # before): we missed re-keys before our removal.  Nothing else brings them (the group's frames no
            # longer come to us; the author answers a FETCH of the chain with the removing GRANT alone): ask for
            # them, at most once per fetch_retry_ms (checked before the signature: a replayed copy costs nothing),
            # and only if signed.  The answer brings them, then the removal, which closes the group here.
            if now_ms - b.sync_ms >= self.config.fetch_retry_ms:
                if removal is None:
                    try:
                        self.author.verify(frame.hash, frame.sig)
                    except VerificationError as exc:
                        raise _Reject(RejectReason.BAD_SIGNATURE, "grant signature", g.branch) from exc
                self._request_grants(b, now_ms)
            return
        if not _crypto.ct_equal(g.prev, b.grant_hash):
            return
        if removal is None:
            try:
                self.author.verify(frame.hash, frame.sig)
            except VerificationError as exc:
                raise _Reject(RejectReason.BAD_SIGNATURE, "grant signature", g.branch) from exc
        c = b.chains.get(0)
        last = 0 if removal is None else removal.seq
        if c is not None and removal is not None and last and last == c.next_seq - 1 \
                and not _crypto.ct_equal(removal.hash, c.head):
            # The author's signed word that its chain ends, for us, with another message than the one we
            # accepted there (SPEC 13.6).  (No evidence frame: the head is sealed to us.)
            raise _Reject(RejectReason.FORK, "the re-key that removed us names another head than the message we "
                          "accepted", g.branch, 0, last)
        b.transition("revoke")
        self._sync_waits.pop(g.branch, None)
        events.append(BranchClosed(b.id, "removed", max(last, c.next_seq - 1) if c is not None else last))
        if c is not None:
            self._fetch_tail(b, c, last, b"" if removal is None else removal.hash, None, now_ms, events)
        self._changes.branches.append(self._record(b))

    def _on_revoke(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        r: Revoke = frame.head
        b = self._branches.get(r.branch)
        if b is None:
            return  # someone else's branch
        if b.state is BranchState.CLOSED:
            if r.epoch == b.epoch and _crypto.ct_equal(r.prev, b.grant_hash):
                # The REVOKE that closed it, again: a group's comes on the group's route and on our own branch's
                # (SPEC 14.2), and a grant sync's answer repeats it.  It changes nothing: not reported, if it is
                # the author's (a forged one is).
                try:
                    self.author.verify(frame.hash, frame.sig)
                except VerificationError as exc:
                    raise _Reject(RejectReason.BAD_SIGNATURE, "revoke signature", r.branch) from exc
                return
            raise _Reject(RejectReason.CLOSED_BRANCH, "branch already closed", r.branch)
        if r.epoch != b.epoch or not _crypto.ct_equal(r.prev, b.grant_hash):
            raise _Reject(RejectReason.STALE_EPOCH, "revoke for another epoch", r.branch)
        try:
            self.author.verify(frame.hash, frame.sig)
        except VerificationError as exc:
            raise _Reject(RejectReason.BAD_SIGNATURE, "revoke signature", r.branch) from exc
        c = b.chains.get(0)
        if c is not None and r.last_seq and r.last_seq == c.next_seq - 1 and not _crypto.ct_equal(r.last_hash, c.head):
            # The author's signed word that its chain ends with another message than the one we accepted there.
            # The frame goes to the driver, which keeps it with the logged message as evidence (SPEC 13.6).
            raise _Reject(RejectReason.FORK, "the revoke's final head differs from the message we accepted",
                          r.branch, 0, r.last_seq, frame.raw)
        b.transition("revoke")
        events.append(BranchClosed(b.id, "revoke", r.last_seq))
        if c is not None:
            self._fetch_tail(b, c, r.last_seq, r.last_hash, frame.raw, now_ms, events)
        self._changes.branches.append(self._record(b))  # (with the tail still to come: b.tail)

    def _fetch_tail(self, b: _Branch, c: _Chain, last_seq: int, last_hash: bytes, close_frame: bytes | None,
                    now_ms: int, events: list[Event]) -> None:
        """``b`` just closed, the author's chain ``c`` ending at ``last_seq`` for us (a REVOKE's final head, or the
        head the re-key that removed us from a group named).  If that is beyond our cursor -- the close overtook
        the tail (reordered), or the packets were lost -- what we miss up to it is still fetched and accepted,
        nothing beyond it, and kept durably until it is in (SPEC 8.8, 9.5).  ``last_hash``: the message the close
        named at ``last_seq`` (the tail's head must be that one, else FORK); ``close_frame``: the REVOKE, kept in
        memory as the fork's evidence."""
        if last_seq < c.next_seq:
            return
        c.final = last_seq
        c.final_hash = last_hash
        c.final_frame = close_frame
        if c.held:
            c.held = {s: f for s, f in c.held.items() if s <= last_seq} or None
        if last_seq > c.gap_to:
            if c.catching_up():
                self._defer(c, last_seq + 1, now_ms)
            else:
                self._report_gap(b, 0, c, last_seq + 1, events)
        self._want(b, 0, c, last_seq, now_ms)

    def _leave_again(self, b: _Branch, epoch: int, grant_hash: bytes | None, now_ms: int) -> None:
        """The author's authentic GRANT (its current one or a later one, ``grant_hash``) or ADMIT (``grant_hash``
        None) of ``b``, a branch we hold closed: the author still has it open -- our UNSUBSCRIBE was lost on the
        way -- and would go on refusing to open us another.  Send the UNSUBSCRIBE again, naming the newest grant
        of the branch we know, at most once per ``grant_sync_interval_ms`` per branch (a replayed GRANT costs
        the author one frame per interval, nothing more).  An ADMIT naming an epoch whose grant we have not seen
        sends nothing: the author refuses an UNSUBSCRIBE of another epoch, and that grant comes along."""
        last, e, gh = self._left.get(b.id, (_LONG_AGO, b.epoch, b.grant_hash))
        if grant_hash is not None and epoch > e:
            e, gh = epoch, grant_hash
        if epoch > e or not _elapsed(now_ms, last, self.config.grant_sync_interval_ms):
            self._left[b.id] = (last, e, gh)
            return
        self._left[b.id] = (now_ms, e, gh)
        head = Unsubscribe(self._channel, b.id, b.me, e, gh)
        self._out.append(Outgoing(encode_frame(head, b"", self._id.sign).raw, branch=b.id))

    def unsubscribe(self, branch: bytes) -> None:
        """Leave a branch: tell the author (signed) and close it locally."""
        b = self._get_branch(branch)
        b.transition("unsubscribe")
        head = Unsubscribe(self._channel, b.id, b.me, b.epoch, b.grant_hash)
        self._out.append(Outgoing(encode_frame(head, b"", self._id.sign).raw, branch=b.id))
        self._changes.branches.append(self._record(b))

    # -- anchor proofs (THREATS 7; state-loss recovery, THREATS 3) ------------------------------------------------

    #: Set by a driver that checks every anchor proof against the ledger itself: verified claims are then queued
    #: (:meth:`take_anchor_claims`) instead of applied, and the driver calls :meth:`apply_anchor`.
    defer_anchor_checks: bool = False
    max_anchor_claims: int = 4096

    def _on_anchor_proof(self, frame: Frame, now_ms: int, peer: object, events: list[Event]) -> None:
        h: AnchorProof = frame.head
        b = self._branches.get(h.branch)
        if b is None or h.publisher not in b.chains:
            return  # another member's branch or chain (branch traffic may be broadcast): not our business
        if b.state is BranchState.CLOSED:
            raise _Reject(RejectReason.CLOSED_BRANCH, "anchor proof for a closed branch", h.branch, h.publisher, h.seq)
        try:
            self.author.verify(frame.hash, frame.sig)
        except VerificationError as exc:
            raise _Reject(RejectReason.BAD_SIGNATURE, "anchor proof signature", h.branch, h.publisher, h.seq) from exc
        key = b.keys.get((h.key_epoch, h.publisher))
        if key is None:
            raise _Reject(RejectReason.STALE_EPOCH, "no chain key for the proof's key epoch", h.branch, h.publisher,
                          h.seq)
        try:
            raw_cp, path = decode_anchor_body(frame.body)
            checkpoint = EpochCheckpoint.decode(raw_cp)
        except DecodeError as exc:
            raise _Reject(RejectReason.MALFORMED, "anchor proof body", h.branch, h.publisher, h.seq) from exc
        if checkpoint.channel != self._channel:
            raise _Reject(RejectReason.FOREIGN_CHANNEL, "checkpoint of another channel", h.branch, h.publisher, h.seq)
        head = ChainHead(h.branch, h.publisher, h.seq, h.hash, chain_blind_key(key, h.branch, h.publisher,
                                                                                h.key_epoch))
        proof = InclusionProof(h.anchor_epoch, h.leaf_index, h.tree_size, tuple(path))
        try:
            verify_inclusion(head, proof, checkpoint, self.author.sign_public)
        except VerificationError as exc:
            raise _Reject(RejectReason.NOT_ANCHORED, f"anchor proof: {exc}", h.branch, h.publisher, h.seq) from exc
        claim = AnchorClaim(head, h.key_epoch, proof, checkpoint, h.anchor_id, bool(h.restore))
        # Decided before the claim waits for the driver's ledger check, so a replayed proof costs no ledger read
        # (THREATS 8); _apply_anchor decides again for a claim that waited.
        if _anchored_already(b.chains[h.publisher], h.branch, h.publisher, h.seq):
            return
        if self.defer_anchor_checks:
            if len(self._claims) >= self.max_anchor_claims:
                raise _Reject(RejectReason.HOLD_FULL, "too many anchor proofs awaiting the ledger", h.branch,
                              h.publisher, h.seq)
            self._claims.append(claim)
            return
        self._apply_anchor(claim, False, events)

    _claims: list[AnchorClaim]

    def load_anchored(self, records: list[AnchorRecord]) -> None:
        """After :meth:`load_subscriber`: the latest anchored head of each chain as the store holds it, so that
        across a restart too a proof for it is no event and one below it a REPLAY (SPEC 13.5)."""
        for r in records:
            b = self._branches.get(r.branch)
            c = None if b is None else b.chains.get(r.publisher)
            if c is not None and r.seq < c.next_seq:
                c.anchored = max(c.anchored, r.seq)

    def resume_fills(self, hole: Callable[[bytes, int, int], tuple[int, bytes, int, bytes | None] | None],
                     now_ms: int) -> None:
        """After :meth:`load_subscriber`: take up again a fetch of our own messages that a restart cut short, or
        that was given up (SPEC 13.5).  ``hole(branch, publisher, below)`` is the driver's look for the first hole
        in our log of our own chain below our cursor (:meth:`Store.log_hole`; from the chain's start -- 1, or after
        our restore mark -- as a write permission given back drops the rows a log held below the author's head,
        SPEC 12): the messages in it are fetched back as after the restart that lost them -- linked to the row
        before it (the first at the chain's start on its own authentication), and ending in the hash the row
        after it links to (or our cursor's head) -- reported by no event (the proof was), asked for by the next
        :meth:`catch_up`.  Whatever proof is now our chain's latest anchored head: a later one (we published on
        after the fetch was given up) leaves the hole where it was."""
        for b in self._branches.values():
            c = b.chains.get(b.me) if b.me and b.state is BranchState.OPEN else None
            if c is None or c.fill is not None or c.conflict or c.next_seq <= 1:
                continue
            found = hole(b.id, b.me, c.next_seq)
            if found is not None:
                lo, prev, hi, final = found
                c.fill = _Fill(lo, hi, prev, c.head if final is None else final)
                c.fill.asked_ms = now_ms

    def take_anchor_claims(self) -> list[AnchorClaim]:
        """Anchor proofs that passed every local check and wait for the driver's ledger check."""
        out, self._claims = self._claims, []
        return out

    def apply_anchor(self, claim: AnchorClaim, ledger_verified: bool) -> list[Event]:
        """Apply a claim (after the driver's ledger check): record the anchored head, restore a cursor, or
        fetch the messages up to it.  Returns the events (``Anchored``, ``GapDetected`` or ``Rejected``)."""
        events: list[Event] = []
        try:
            self._apply_anchor(claim, ledger_verified, events)
        except _Reject as r:
            events.append(r.event)
        return events

    def _apply_anchor(self, claim: AnchorClaim, verified: bool, events: list[Event]) -> None:
        head = claim.head
        b = self._branches.get(head.branch)
        c = None if b is None else b.chains.get(head.publisher)
        if b is None or c is None or b.state is BranchState.CLOSED:
            return
        where = (head.branch, head.publisher, head.seq)
        if _anchored_already(c, *where):
            return  # the proof we hold, sent again (after we reconnected): nothing new
        restored = empty = False
        fill: _Fill | None = None
        if head.seq < c.next_seq:
            known = c.head if head.seq == c.next_seq - 1 else self._logged_hash(*where)
            if known is None:
                raise _Reject(RejectReason.NOT_ANCHORED, "anchored head is not in our log", *where)
            if not _crypto.ct_equal(known, head.hash):
                # The author anchored another message than the one we accepted at this position.
                raise _Reject(RejectReason.FORK, "the anchored head differs from the message we accepted", *where)
        elif head.publisher == b.me or (claim.restore and self._fresh.get((b.id, head.publisher)) == c.next_seq):
            # We lost our state (THREATS 3): for our own chain the author holds messages we no longer remember
            # (publishing from our old cursor would fork it), and a re-sent grant came with its anchored heads --
            # only if our current handshake's GRANT created the branch and the cursor is still where that GRANT
            # started it: a member that kept its state fetches what it misses, it skips nothing (SPEC 13.5).
            # Start there: everything at or below is a replay from now on.
            fresh = self._fresh.pop((b.id, head.publisher), None) == c.next_seq
            # Our log holds nothing of the chain at or below the head (we lost our state, or the branch is new to
            # us): it starts after it, which our restore mark says (below).  For our own chain only if this
            # handshake's GRANT created the branch: a branch we held, with our chain's cursor at 1 or our log
            # lacking its head, is a store put back from an older copy or edited by whoever can write it -- our
            # mark would pass a deletion of our messages off as a restart (they are fetched back instead, or
            # stay a hole the audit reports).
            empty = (head.publisher != b.me or fresh) and (
                c.next_seq <= 1 or self._logged_hash(b.id, head.publisher, c.next_seq - 1) is None)
            if head.publisher == b.me and not fresh and c.fill is None and not (0 < c.conflict < c.next_seq):
                # (At cursor 1 our log holds nothing: our message 1 is taken on its own authentication -- what it
                # links to, the branch's first grant, is not the cursor's head where a later grant created the
                # branch -- and the ones after it link to it.)
                logged = c.head if c.next_seq == 1 else self._logged_hash(b.id, b.me, c.next_seq - 1)
                if logged is not None and _crypto.ct_equal(logged, c.head):
                    # Our log holds our chain up to our head, and the author holds it on to this one: the
                    # messages in between are ours, lost with a store restored from an older copy.  Fetch them
                    # back from the author's log, so that our log holds our whole chain again (an audit tells a
                    # hole from a deletion only by what the log holds); the proof is reported once that is over.
                    # (Not when the author's ACK named another message than ours at or below our head: our log
                    # forked from its copy there, and nothing of that copy links to it.)
                    fill = _Fill(c.next_seq, head.seq, c.head if c.next_seq > 1 else b"", head.hash)
            c.next_seq, c.head, c.covered = head.seq + 1, head.hash, head.seq
            c.gap_to = max(c.gap_to, head.seq)
            if c.conflict and head.seq >= c.conflict:
                # Our chain now starts where the author's copy ends: publishing forks nothing (the chain record
                # below, committed, lifts the stop in the store too).
                c.conflict = c.conflict_told = 0
            if c.held:
                c.held = {s: f for s, f in c.held.items() if s > head.seq} or None
            self._changes.chains.append(b.chain_record(head.publisher))
            restored = True
        else:
            # Ahead of us: messages are missing (THREATS 4).  Fetch them; apply the proof once they are in.
            c.anchor_wait = (claim, verified)
            if head.seq > c.gap_to:
                if c.catching_up():  # our catch-up FETCH may be bringing them, as for a HEAD: told if not
                    self._defer(c, head.seq + 1, c.progress_ms)
                else:
                    self._report_gap(b, head.publisher, c, head.seq + 1, events)
                self._want(b, head.publisher, c, head.seq, c.progress_ms)
            return
        c.anchored = head.seq
        p = claim.proof
        mark = self._id.sign(restore_mark_digest(self._channel, *where, head.hash)) if restored and empty else b""
        record = AnchorRecord(
            head.branch, head.publisher, head.seq, head.hash, claim.key_epoch, claim.checkpoint.epoch,
            claim.anchor_id, claim.checkpoint.encode(), p.index, p.tree_size, p.path, verified, restored, mark)
        event = Anchored(head.branch, head.publisher, head.seq, claim.checkpoint.epoch, claim.anchor_id, verified,
                         restored)
        if fill is not None:
            # Kept now, as an ordinary anchored head -- never as a restore proof: our log held our chain below it,
            # so it does not start there (a hole, until the fetch fills it); a restart takes the fetch up again
            # from it (resume_fills).  Reported once the fetch ends.
            self._changes.anchored.append(replace(record, restored=False))
            fill.event = event
            c.fill = fill
            self._ask_fill(b, fill, self._now_ms)
        else:
            self._changes.anchored.append(record)
            events.append(event)
        if restored:
            self._drain(b, c, events)
