"""streams: secure publish/subscribe channels between security tools.

An author announces a channel; subscribers prove control of their DID and are admitted by the author's policy;
the author opens one encrypted, signed, sequence-numbered, hash-linked branch per subscriber (and group
branches for broadcasts).  See README.md for a tour and SPEC.md for the wire protocol.

The public API is what this module exports; everything else is internal.
"""

from __future__ import annotations

from .anchoring_service import AnchorConfig
from .api import Author, BranchInfo, MemoryHub, MemoryTransport, StoreOptions, Subscriber, Transport
from .core import AuthorCore, CoreConfig, Outgoing, SubscriberCore, channel_id
from .errors import (
    AdmissionRefused,
    BadPassphrase,
    BrokenResourceError,
    ChainConflictError,
    ClosedResourceError,
    DecodeError,
    FrameTooLarge,
    KeystoreError,
    LedgerConflict,
    LedgerError,
    LocalProtocolError,
    RejectReason,
    RemoteProtocolError,
    StorageError,
    StreamsError,
    StreamsTimeoutError,
    UnsupportedVersion,
    VerificationError,
)
from .events import (
    Acknowledged,
    Anchored,
    Announced,
    BranchClosed,
    ChainConflict,
    Covered,
    EpochAnchored,
    Event,
    FetchRequested,
    ForkDetected,
    GapDetected,
    Granted,
    LedgerStatus,
    MemberLeft,
    MessageReceived,
    PermissionRestricted,
    Refused,
    Rejected,
    Subscribed,
    SubscriberAdmitted,
    SubscriberRefused,
)
from .identity import DIDDocument, DIDResolver, Identity, KeyResolver, PublicIdentity
from .ledger import EmbeddedLedger, Ledger
from .policy import AllOf, AllowList, AnyOf, Decision, DenyList, Policy, SubscriptionRequest
from .wire import Permission, SigningMode

__version__ = "0.1.0"

__all__ = [
    "Acknowledged",
    "AdmissionRefused",
    "AllOf",
    "AllowList",
    "AnchorConfig",
    "Anchored",
    "Announced",
    "AnyOf",
    "Author",
    "AuthorCore",
    "BadPassphrase",
    "BranchClosed",
    "BranchInfo",
    "BrokenResourceError",
    "ChainConflict",
    "ChainConflictError",
    "ClosedResourceError",
    "CoreConfig",
    "Covered",
    "DIDDocument",
    "DIDResolver",
    "Decision",
    "DecodeError",
    "DenyList",
    "EmbeddedLedger",
    "EpochAnchored",
    "Event",
    "FetchRequested",
    "ForkDetected",
    "FrameTooLarge",
    "GapDetected",
    "Granted",
    "Identity",
    "KeyResolver",
    "KeystoreError",
    "Ledger",
    "LedgerConflict",
    "LedgerError",
    "LedgerStatus",
    "LocalProtocolError",
    "MemberLeft",
    "MemoryHub",
    "MemoryTransport",
    "MessageReceived",
    "Outgoing",
    "Permission",
    "PermissionRestricted",
    "Policy",
    "PublicIdentity",
    "Refused",
    "RejectReason",
    "Rejected",
    "RemoteProtocolError",
    "SigningMode",
    "StorageError",
    "StoreOptions",
    "StreamsError",
    "StreamsTimeoutError",
    "Subscribed",
    "Subscriber",
    "SubscriberAdmitted",
    "SubscriberCore",
    "SubscriberRefused",
    "SubscriptionRequest",
    "Transport",
    "UnsupportedVersion",
    "VerificationError",
    "__version__",
    "channel_id",
]
