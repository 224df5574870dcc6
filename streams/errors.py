"""The one exception hierarchy of ``streams``.

Every error the library raises derives from :class:`StreamsError`.  The tree tells the caller whose fault it
was and what to do about it:

* :class:`LocalProtocolError` -- *you* used the API wrongly (publish on a branch you may not write, a closed
  object, a bad argument).  Fix the calling code.
* :class:`RemoteProtocolError` -- the *peer* (or the untrusted network between you) sent something invalid:
  a malformed frame, a forged signature, a replay.  Drop it, log it, keep serving; never crash on it.
* :class:`ClosedResourceError` -- you closed the object and then used it.
* :class:`BrokenResourceError` -- the object failed under you (storage or transport broke); the cause is
  chained as ``__cause__``.  Reopen from the store: what was acknowledged is durable.

Builtin exceptions are mixed in where the meaning matches (``ValueError``, ``TimeoutError``, ``OSError``), so
generic ``except ValueError`` handlers keep working.  Foreign errors (msgpack, nacl, sqlite, zmq) are
translated where they enter (``raise ... from exc``) and never leak out.

No message text ever contains key material.
"""

from __future__ import annotations

import enum

__all__ = [
    "AdmissionRefused",
    "BadPassphrase",
    "BrokenResourceError",
    "ChainConflictError",
    "ClosedResourceError",
    "DecodeError",
    "FrameTooLarge",
    "KeystoreError",
    "LedgerConflict",
    "LedgerError",
    "LocalProtocolError",
    "PolicyUnavailable",
    "RejectReason",
    "RemoteProtocolError",
    "StorageError",
    "StreamsError",
    "StreamsTimeoutError",
    "UnsupportedVersion",
    "VerificationError",
]


class RejectReason(enum.Enum):
    """Why a peer's frame was refused.  Every :class:`RemoteProtocolError` and every
    :class:`~streams.events.Rejected` event carries one; the value is the wire code used in refusals."""

    MALFORMED = 1  #: the frame does not decode, or is not in canonical form
    TOO_LARGE = 2  #: the frame exceeds the configured size limit
    BAD_VERSION = 3  #: unknown protocol version
    FOREIGN_CHANNEL = 4  #: addressed to another channel (relay from elsewhere)
    UNKNOWN_BRANCH = 5  #: no such branch, or we are not a member of it
    NOT_MEMBER = 6  #: the publisher index is not a member of the branch
    NOT_PERMITTED = 7  #: the publisher has no write permission (reader, auditor)
    STALE_EPOCH = 8  #: key epoch is not the branch's current epoch
    REPLAY = 9  #: sequence number already accepted (duplicate or replay)
    BAD_LINK = 10  #: the hash link does not match the previous message
    BAD_SIGNATURE = 11  #: Ed25519 signature invalid or missing where required
    BAD_AEAD = 12  #: the ciphertext does not authenticate under the branch key
    HOLD_FULL = 13  #: an early message could not be held: the per-chain buffer is full
    BAD_CHALLENGE = 14  #: subscription challenge missing, expired, forged or already used
    REFUSED = 15  #: the author's policy refused the subscription
    CLOSED_BRANCH = 16  #: the branch was revoked or unsubscribed
    FORK = 17  #: a different message at an already accepted (branch, publisher, seq)
    UNEXPECTED = 18  #: a message kind that this role does not accept
    NOT_ANCHORED = 19  #: an anchor proof that does not verify (inclusion, or the checkpoint on the ledger)
    SUSPENDED = 20  #: not checked: the peer's frames failed too many checks in this batch (local; never sent)


class StreamsError(Exception):
    """Base of every error raised by ``streams``."""


class LocalProtocolError(StreamsError):
    """The caller used the API in a way the protocol forbids.  Fix the calling code; state is unchanged."""


class ChainConflictError(LocalProtocolError):
    """A member may not publish on this branch: the author's signed ACK showed that it holds our own chain beyond
    our store's head, or another message at a position we hold (:class:`~streams.events.ChainConflict`, SPEC 12).
    The store is older than the chain (restored from a stale copy) or another holder of our key published; a new
    message would fork the chain further, so nothing was signed.  The stop is kept in the store.  Do not publish
    from this store: an anchor proof of our chain that far lifts it (so does the author taking our write permission
    away and giving it back), or start over with a new store (README, backups)."""


class RemoteProtocolError(StreamsError):
    """A peer, or the untrusted network, sent something invalid.

    ``reason`` is the :class:`RejectReason`; the frame was not accepted and state is unchanged.
    """

    def __init__(self, message: str, reason: RejectReason = RejectReason.MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason


class DecodeError(RemoteProtocolError, ValueError):
    """A frame is malformed: bad msgpack, wrong types or sizes, non-canonical encoding."""


class FrameTooLarge(DecodeError):
    """A frame exceeds the size limit; refused before any parsing."""

    def __init__(self, message: str) -> None:
        super().__init__(message, RejectReason.TOO_LARGE)


class UnsupportedVersion(DecodeError):
    """A frame carries a protocol version this implementation does not speak."""

    def __init__(self, message: str) -> None:
        super().__init__(message, RejectReason.BAD_VERSION)


class VerificationError(RemoteProtocolError):
    """A signature, AEAD tag, MAC or hash link does not verify."""


class AdmissionRefused(RemoteProtocolError):
    """The channel's author refused our subscription.  ``reason`` says only as much as the author disclosed."""


class ClosedResourceError(StreamsError):
    """You closed this object (or the branch was closed by revoke/unsubscribe) and then used it."""


class BrokenResourceError(StreamsError):
    """The object failed under you (storage, transport).  The cause is chained; reopen from the store."""


class StorageError(BrokenResourceError, OSError):
    """The durable store failed (disk full, read-only, corrupted file).  Nothing was acknowledged."""


class KeystoreError(StreamsError):
    """A keystore file cannot be read or written."""


class BadPassphrase(KeystoreError, ValueError):
    """The passphrase does not open this keystore (or the file was altered)."""


class LedgerError(BrokenResourceError):
    """The ledger backend failed or is unreachable; anchors stay queued."""


class LedgerConflict(StreamsError):
    """The ledger holds anchors of this channel that contradict this party's store: a later epoch than the store
    knows, or another signed checkpoint for an epoch it holds.  The store is older than the party's history (it
    was restored from a stale copy) or another instance of the party runs.  Nothing more is anchored from it."""


class PolicyUnavailable(StreamsError):
    """A policy cannot answer now: something it must look up failed (a credential's status list whose source is
    down, an issuer's DID whose resolver cannot answer).  A subscription is refused (fail closed); a re-check
    leaves that subscriber as it is, says so, and tries again at the next one."""


class StreamsTimeoutError(StreamsError, TimeoutError):
    """An operation did not complete in the allotted time."""
