"""The wire format: versioned, deterministic msgpack frames, and the one decoder.

A frame is a msgpack array of five elements (SPEC.md, "Frames")::

    [version: uint, kind: uint, head: bin, body: bin, sig: bin]

``head`` is itself the canonical msgpack encoding of a fixed array of typed fields, one layout per kind
(``HEADS`` below is the table).  ``body`` is kind-specific opaque bytes (ciphertext, sealed box, ...) and
``sig`` is an Ed25519 signature (64 bytes) or empty.

The message hash, used for hash links and as the signed digest, is::

    H = BLAKE2b-256(person="streams.v1.msg", [version, kind] || head || body)

Only the canonical encoding of a frame is accepted (the decoder re-encodes and compares), so a message has
exactly one byte string and one hash: two different hashes at one (branch, publisher, seq) are a fork, never
an encoding artefact.

:func:`decode_frame` either returns a valid :class:`Frame` or raises :class:`~streams.errors.DecodeError`
(a ``RemoteProtocolError`` and ``ValueError``) -- never anything else.  The size limit is checked before any
parsing (THREATS 8).
"""

from __future__ import annotations

import enum
import hashlib
import operator
from collections.abc import Callable
from dataclasses import dataclass, fields
from types import MemberDescriptorType
from typing import Any, ClassVar, Final, NamedTuple

import msgpack

from . import _crypto
from .errors import DecodeError, FrameTooLarge, UnsupportedVersion

__all__ = [
    "MAX_FRAME",
    "MAX_GRANT_ENTRY",
    "MAX_GRANT_KEY_ENTRY",
    "MAX_GRANT_SHARED",
    "MAX_NAME",
    "SESSION_LEN",
    "VERSION",
    "Ack",
    "Admit",
    "AnchorProof",
    "Announce",
    "Challenge",
    "Checkpoint",
    "Fetch",
    "Frame",
    "Grant",
    "GrantEntry",
    "GrantKey",
    "GrantRemoval",
    "GrantSecret",
    "HeadNotice",
    "Hello",
    "Kind",
    "Packet",
    "Permission",
    "Refuse",
    "Revoke",
    "SigningMode",
    "Subscribe",
    "SubscribeSecret",
    "Unsubscribe",
    "decode_anchor_body",
    "decode_frame",
    "decode_grant_body",
    "decode_grant_entries",
    "decode_grant_key",
    "decode_grant_removal",
    "decode_grant_secret",
    "decode_grant_shared",
    "decode_subscribe_secret",
    "encode_anchor_body",
    "encode_frame",
    "encode_grant_body",
    "encode_grant_entries",
    "encode_grant_key",
    "encode_grant_removal",
    "encode_grant_secret",
    "encode_grant_shared",
    "encode_subscribe_secret",
    "message_hash",
    "padded_grant_removal",
]

VERSION: Final = 1
#: Length of a connection session, the body of a bound FETCH (SPEC 8.9).
SESSION_LEN: Final = 8
#: Default hard limit on an encoded frame, bytes.  Payload limit is this minus the header overhead.
MAX_FRAME: Final = 1 << 20
_U64: Final = (1 << 64) - 1


class Kind(enum.IntEnum):
    """Message kinds (SPEC.md, "Message kinds")."""

    ANNOUNCE = 1
    HELLO = 2
    CHALLENGE = 3
    SUBSCRIBE = 4
    GRANT = 5
    REFUSE = 6
    PACKET = 7
    CHECKPOINT = 8
    REVOKE = 9
    UNSUBSCRIBE = 10
    FETCH = 11
    HEAD = 12
    ACK = 13
    ANCHOR_PROOF = 14
    ADMIT = 15


class Permission(enum.IntEnum):
    """A member's rights on a branch.  The author (publisher 0) always reads and writes."""

    READ = 1  #: read the author's chain
    WRITE = 2  #: publish into the branch (own chain); cannot read the author's chain
    READ_WRITE = 3
    AUDIT = 4  #: read and verify every chain; never publish

    @property
    def can_read(self) -> bool:
        return self in (Permission.READ, Permission.READ_WRITE, Permission.AUDIT)

    @property
    def can_write(self) -> bool:
        return self in (Permission.WRITE, Permission.READ_WRITE)


class SigningMode(enum.IntEnum):
    """How packets of a branch are authenticated."""

    EACH = 1  #: every packet carries an Ed25519 signature (audit grade)
    AMORTIZED = 2  #: packets are AEAD-authenticated; a signed checkpoint covers the chain every N msgs / T ms


# --- field types -------------------------------------------------------------------------------------------


class _T:
    """A field type: ``check`` returns the value or raises DecodeError."""

    __slots__ = ("kind", "max", "min")

    def __init__(self, kind: str, min: int = 0, max: int = _U64) -> None:
        self.kind, self.min, self.max = kind, min, max

    def check(self, name: str, v: Any) -> Any:
        if self.kind == "bytes":
            if not isinstance(v, bytes) or not (self.min <= len(v) <= self.max):
                raise DecodeError(f"field {name}: expected {self.min}..{self.max} bytes")
        elif self.kind == "uint":
            if type(v) is not int or not (self.min <= v <= self.max):
                raise DecodeError(f"field {name}: expected integer {self.min}..{self.max}")
        elif self.kind == "str" and (not isinstance(v, str) or not (self.min <= len(v.encode()) <= self.max)):
            raise DecodeError(f"field {name}: expected text of {self.min}..{self.max} bytes")
        return v


def _b(n: int) -> _T:
    return _T("bytes", n, n)


B16, B32, B24, B64 = _b(16), _b(32), _b(24), _b(64)
U64 = _T("uint")
U8 = _T("uint", 0, 255)
FLAG = _T("uint", 0, 1)  #: SPEC 6.2 ``flag``: 0 or 1, every other value MALFORMED
#: The longest ``name`` field (a channel's name in ANNOUNCE, an anchor id), bytes of UTF-8 (SPEC 6.2).
MAX_NAME: Final = 128
NAME = _T("str", 1, MAX_NAME)


# --- heads -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Announce:
    """Public announcement of a channel, signed by the author.  ``channel = H(chan, author_sign || name)``."""

    KIND: ClassVar[Kind] = Kind.ANNOUNCE
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B32, B32, NAME)
    channel: bytes
    author_sign: bytes  #: Ed25519 public key of the author (its did:key)
    author_kx: bytes  #: X25519 key-agreement key (subscriptions are sealed to it)
    name: str


@dataclass(frozen=True, slots=True)
class Hello:
    """Subscriber -> author: "send me the announcement and a fresh challenge".  Unsigned."""

    KIND: ClassVar[Kind] = Kind.HELLO
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32,)
    channel: bytes


@dataclass(frozen=True, slots=True)
class Challenge:
    """Author -> requester: a fresh challenge, MACed by the author so it can be checked statelessly."""

    KIND: ClassVar[Kind] = Kind.CHALLENGE
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U64, B16)
    channel: bytes
    nonce: bytes
    expires_ms: int  #: absolute expiry, milliseconds since the Unix epoch
    mac: bytes  #: BLAKE2b-128 keyed with the author's challenge key over (channel, nonce, expires)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscriber -> author.  The body is a sealed box (to ``author_kx``) of a :class:`SubscribeSecret`, so
    observers do not learn who subscribes.  The outer frame is unsigned; the proof is inside."""

    KIND: ClassVar[Kind] = Kind.SUBSCRIBE
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32,)
    channel: bytes


@dataclass(frozen=True, slots=True)
class Grant:
    """A keyload: opens (epoch 0) or rekeys a branch.  Body: :func:`encode_grant_body` (read: also the first
    layout, :func:`encode_grant_entries`); signed by author.

    ``prev`` links to the previous grant of the branch, or to the announcement for epoch 0."""

    KIND: ClassVar[Kind] = Kind.GRANT
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U64, B32, U8)
    channel: bytes
    branch: bytes
    epoch: int
    prev: bytes
    mode: int  #: :class:`SigningMode`


@dataclass(frozen=True, slots=True)
class Refuse:
    """Author -> requester: subscription refused.  Signed by the author.  ``reason`` is a RejectReason code.
    ``request`` binds it to the SUBSCRIBE it answers, as ADMIT's does: that frame's message hash (a request made
    by a relay with a member's challenge is refused under its own hash, never the member's)."""

    KIND: ClassVar[Kind] = Kind.REFUSE
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B32, U8)
    channel: bytes
    request: bytes  #: the message hash of the refused SUBSCRIBE
    reason: int


@dataclass(frozen=True, slots=True)
class Admit:
    """Author -> requester: subscription admitted.  Signed by the author; sent after the GRANT that answers it
    (the member's own branch at ``epoch``: opened for it, or its current grant again).  ``request`` binds it to
    the SUBSCRIBE it answers: that frame's message hash (its sealed body is fresh each time, so an ADMIT of an
    earlier request never names a new one)."""

    KIND: ClassVar[Kind] = Kind.ADMIT
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B32, B16, U64)
    channel: bytes
    request: bytes  #: the message hash of the admitted SUBSCRIBE
    branch: bytes  #: the member's own branch
    epoch: int  #: the epoch of the GRANT sent with it


@dataclass(frozen=True, slots=True)
class Packet:
    """A payload message in a (branch, publisher) chain.  Body: AEAD ciphertext with AD = version, kind and
    the encoded head.  ``sig`` is 64 bytes in signed-each mode, empty in amortized mode."""

    KIND: ClassVar[Kind] = Kind.PACKET
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U8, U64, B32, U64, B24)
    channel: bytes
    branch: bytes
    publisher: int  #: index in the branch's member list; 0 is the author
    seq: int  #: 1, 2, 3, ... per (branch, publisher)
    prev: bytes  #: hash of the publisher's previous message in the branch (the grant's for seq 1)
    epoch: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed message in a chain, with empty body: covers every earlier message through the hash links."""

    KIND: ClassVar[Kind] = Kind.CHECKPOINT
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U8, U64, B32, U64)
    channel: bytes
    branch: bytes
    publisher: int
    seq: int
    prev: bytes
    epoch: int


@dataclass(frozen=True, slots=True)
class Revoke:
    """Author closes a branch.  ``last_seq``/``last_hash`` is the author chain's final head.  Signed."""

    KIND: ClassVar[Kind] = Kind.REVOKE
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U64, B32, U64, B32)
    channel: bytes
    branch: bytes
    epoch: int
    prev: bytes  #: hash of the branch's current grant
    last_seq: int
    last_hash: bytes


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """A member leaves a branch.  Signed by the member."""

    KIND: ClassVar[Kind] = Kind.UNSUBSCRIBE
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U8, U64, B32)
    channel: bytes
    branch: bytes
    publisher: int
    epoch: int
    prev: bytes  #: hash of the branch's current grant


@dataclass(frozen=True, slots=True)
class Fetch:
    """A member asks for retained messages ``from_seq..to_seq`` (inclusive) of a chain.  Signed by the member."""

    KIND: ClassVar[Kind] = Kind.FETCH
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U8, U64, U64, U8)
    channel: bytes
    branch: bytes
    publisher: int  #: whose chain
    from_seq: int
    to_seq: int
    requester: int  #: member index of the signer


@dataclass(frozen=True, slots=True)
class HeadNotice:
    """The current head of a chain, signed by its publisher: lets a receiver detect loss at the tail."""

    KIND: ClassVar[Kind] = Kind.HEAD
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U8, U64, B32, U64)
    channel: bytes
    branch: bytes
    publisher: int
    seq: int
    hash: bytes
    epoch: int


@dataclass(frozen=True, slots=True)
class Ack:
    """A durable acknowledgement: the receiver of a chain has every message of it through ``seq`` on disk.

    Cumulative (one per batch, not per message), signed by the acknowledging member ``acker``; ``hash`` is the
    hash of the message at ``seq`` so that the publisher can check the acknowledger holds *its* message
    (THREATS 4: a sender learns what is durable at the receiver)."""

    KIND: ClassVar[Kind] = Kind.ACK
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U8, U64, B32, U8)
    channel: bytes
    branch: bytes
    publisher: int  #: whose chain is acknowledged
    seq: int  #: every message through this seq is on the acknowledger's disk
    hash: bytes  #: hash of the message at ``seq``
    acker: int  #: member index of the signer


@dataclass(frozen=True, slots=True)
class AnchorProof:
    """Author -> members: the head ``(seq, hash)`` of one chain is in the Merkle tree of anchor epoch
    ``anchor_epoch``, written to the ledger under ``anchor_id`` (THREATS 7).  Signed by the author.

    Body: :func:`encode_anchor_body` -- the encoded :class:`~streams.anchor.EpochCheckpoint` and the RFC 9162
    inclusion path.  ``key_epoch`` names the chain key the leaf's blind key is derived from
    (:func:`streams.anchor.chain_blind_key`).  ``restore`` is 1 when the author sends it right after re-sending
    a grant to a re-subscribing member: such a member starts its cursor at this head (state-loss recovery)."""

    KIND: ClassVar[Kind] = Kind.ANCHOR_PROOF
    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U8, _T("uint", 1), B32, U64, U64, NAME, U64, _T("uint", 1), FLAG)
    channel: bytes
    branch: bytes
    publisher: int
    seq: int
    hash: bytes
    key_epoch: int
    anchor_epoch: int
    anchor_id: str
    leaf_index: int
    tree_size: int
    restore: int


Head = (
    Announce | Hello | Challenge | Subscribe | Grant | Refuse | Packet | Checkpoint | Revoke | Unsubscribe
    | Fetch | HeadNotice | Ack | AnchorProof | Admit
)

HEADS: Final[dict[Kind, type[Any]]] = {
    cls.KIND: cls
    for cls in (
        Announce, Hello, Challenge, Subscribe, Grant, Refuse, Packet, Checkpoint, Revoke, Unsubscribe, Fetch,
        HeadNotice, Ack, AnchorProof, Admit,
    )
}

#: Field names of each head class, in wire order, and a getter returning their values as a tuple (hot paths:
#: ``dataclasses.fields`` costs about 1 us a call).
_NAMES: Final[dict[type[Any], tuple[str, ...]]] = {cls: tuple(f.name for f in fields(cls)) for cls in HEADS.values()}


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda h: (one(h),)
    return operator.attrgetter(*names)


_GETTERS: Final[dict[type[Any], Callable[[Any], tuple[Any, ...]]]] = {
    cls: _getter(names) for cls, names in _NAMES.items()
}
_KINDS: Final[dict[int, Kind]] = {int(k): k for k in Kind}
_PREFIX: Final[dict[int, bytes]] = {int(k): bytes((VERSION, k)) for k in Kind}  #: ``[version, kind]``

#: Which kinds must carry a signature (64 bytes), may carry one, or must not.
SIG_REQUIRED: Final = frozenset(
    {Kind.ANNOUNCE, Kind.GRANT, Kind.REFUSE, Kind.CHECKPOINT, Kind.REVOKE, Kind.UNSUBSCRIBE, Kind.FETCH,
     Kind.HEAD, Kind.ACK, Kind.ANCHOR_PROOF, Kind.ADMIT}
)
SIG_OPTIONAL: Final = frozenset({Kind.PACKET})
#: Kinds whose body must be empty.  (A FETCH's is empty or the ``SESSION_LEN`` bytes of a connection session.)
EMPTY_BODY: Final = frozenset(
    {Kind.ANNOUNCE, Kind.HELLO, Kind.CHALLENGE, Kind.REFUSE, Kind.CHECKPOINT, Kind.REVOKE, Kind.UNSUBSCRIBE,
     Kind.HEAD, Kind.ACK, Kind.ADMIT}
)


#: What :func:`decode_frame` checks per kind, in one lookup: (kind, signature rule, body must be empty, head
#: class, BLAKE2b state of the message hash with ``[version, kind]`` absorbed).
_SIG_REQUIRED, _SIG_OPTIONAL, _SIG_NONE = "required", "optional", "none"
_RULES: Final[dict[int, tuple[Kind, str, bool, type[Any], hashlib.blake2b]]] = {
    int(k): (k, _SIG_REQUIRED if k in SIG_REQUIRED else _SIG_OPTIONAL if k in SIG_OPTIONAL else _SIG_NONE,
             k in EMPTY_BODY, HEADS[k], _crypto.hasher(_crypto.P_MSG, _PREFIX[k]))
    for k in Kind
}


def _packb_each(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


#: One packer for the module's life: ``msgpack.packb`` builds a Packer per call, about 1 us of the 1.6 us it takes
#: to pack a packet head.  Shared between threads only as msgpack's C extension: for the plain types packed here
#: (lists, tuples, bytes, ints, strings, None) its ``pack`` runs no Python code, so it holds the GIL from start to
#: finish.  Its error path does not (it builds the exception with the partial output still in the buffer), so a
#: failed pack falls back to a fresh packer to raise.  msgpack's pure-Python fallback shares nothing.
_PACKER = msgpack.Packer(use_bin_type=True)
_PACKET: Final = Kind.PACKET
_SHARED = type(_PACKER).__module__ == "msgpack._cmsgpack"


def _packb(obj: Any) -> bytes:
    if not _SHARED:
        return _packb_each(obj)
    try:
        return _PACKER.pack(obj)  # type: ignore[no-any-return]
    except Exception:
        return _packb_each(obj)  # raises the same error, from a packer of its own


def _unpack(data: bytes, what: str, max_len: int) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_len,
            max_str_len=max_len,
            max_array_len=max_len,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"{what}: not valid msgpack") from exc
    except Exception as exc:  # msgpack may raise others on hostile input; all of them mean "malformed"
        raise DecodeError(f"{what}: not valid msgpack") from exc


def encode_head(head: Head) -> bytes:
    get = _GETTERS.get(type(head))
    if get is None:
        return _packb([getattr(head, f.name) for f in fields(head)])
    return _packb(get(head))  # a tuple packs exactly as the list would


class Frame(NamedTuple):
    """A decoded (or freshly encoded) frame.  ``raw`` is its exact bytes; ``hash`` the message hash.

    Immutable (a named tuple: it is built for every message on the hot path, where a frozen dataclass costs
    about a microsecond more)."""

    kind: Kind
    head: Any  #: one of the head dataclasses above, matching ``kind``
    head_raw: bytes
    body: bytes
    sig: bytes
    raw: bytes
    hash: bytes

    @property
    def aad(self) -> bytes:
        """Associated data for the packet AEAD: version, kind and the encoded head."""
        return _PREFIX[self.kind] + self.head_raw

    def __repr__(self) -> str:
        return f"Frame({self.kind.name}, {self.head!r}, body={len(self.body)}B, signed={bool(self.sig)})"


def message_hash(kind: int, head_raw: bytes, body: bytes) -> bytes:
    """``H(msg, [version, kind] || head || body)`` -- the link target and the signed digest."""
    rule = _RULES.get(kind)
    if rule is None:
        return _crypto.hash32(_crypto.P_MSG, bytes((VERSION, kind)), head_raw, body)
    return _crypto.hash32_from(rule[4], head_raw, body)


def encode_frame(head: Head, body: bytes = b"", sign: Any = None) -> Frame:
    """Encode a frame.  ``sign`` is a callable ``digest -> signature`` (e.g. ``Identity.sign``) or None."""
    head_raw = encode_head(head)
    h = message_hash(head.KIND, head_raw, body)
    sig = sign(h) if sign is not None else b""
    raw = _packb([VERSION, int(head.KIND), head_raw, body, sig])
    return Frame(head.KIND, head, head_raw, body, sig, raw, h)


def decode_frame(data: bytes | bytearray | memoryview, max_frame: int = MAX_FRAME) -> Frame:
    """Decode one frame, or raise :class:`DecodeError` (or its subclasses).  Verifies structure only;
    signatures, links and AEAD are the protocol core's job."""
    if type(data) is bytes:
        size = len(data)
        if size > max_frame:
            raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {max_frame}")
    elif isinstance(data, (bytearray, memoryview)):
        # len() of a memoryview counts items, not bytes: use nbytes so the limit holds for any buffer format.
        size = memoryview(data).nbytes
        if size > max_frame:
            raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {max_frame}")
        data = bytes(data)
    else:
        raise DecodeError("frame must be bytes")
    outer = _unpack(data, "frame", max_frame)
    if type(outer) is not list or len(outer) != 5:
        raise DecodeError("frame must be an array of 5")
    version, kind, head_raw, body, sig = outer
    if type(version) is not int:
        raise DecodeError("version must be an integer")
    if version != VERSION:
        raise UnsupportedVersion(f"unsupported protocol version {version}")
    rule = _RULES.get(kind) if type(kind) is int else None
    if rule is None:
        raise DecodeError("unknown message kind")
    k, sig_rule, empty_body, cls, prefix = rule
    if type(head_raw) is not bytes or type(body) is not bytes or type(sig) is not bytes:
        raise DecodeError("head, body and sig must be binary")
    # Canonical form without re-encoding the (possibly large) body: every msgpack value has one shortest
    # encoding and every other encoding of it is strictly longer, so the frame is canonical exactly when its
    # length is the sum of the shortest encodings (fixarray 5, two fixints, three bin headers).
    # (A bin header is 2 bytes below 256, 3 below 65536, else 5: written out, this is every frame's path.)
    n_head, n_body, n_sig = len(head_raw), len(body), len(sig)
    headers = ((2 if n_head < 256 else 3 if n_head < 65536 else 5) + (2 if n_body < 256 else 3 if n_body < 65536 else 5)
               + (2 if n_sig < 256 else 3 if n_sig < 65536 else 5))
    if size != 3 + n_head + n_body + n_sig + headers:
        raise DecodeError("frame is not in canonical encoding")
    if sig_rule is _SIG_REQUIRED:
        if len(sig) != 64:
            raise DecodeError(f"{k.name} must be signed")
    elif sig_rule is _SIG_OPTIONAL:
        if sig and len(sig) != 64:
            raise DecodeError("signature must be 64 bytes or absent")
    elif sig:
        raise DecodeError(f"{k.name} must not carry a signature")
    if empty_body and body:
        raise DecodeError(f"{k.name} must have an empty body")
    if k is Kind.FETCH and len(body) not in (0, SESSION_LEN):
        raise DecodeError(f"FETCH body must be empty or a {SESSION_LEN}-byte session")
    values = _unpack(head_raw, "head", 1024)
    schema = cls.SCHEMA
    if type(values) is not list or len(values) != len(schema):
        raise DecodeError(f"{k.name} head must be an array of {len(schema)}")
    head = _packet_head(values, head_raw) if k is _PACKET else None
    if head is None:
        names = _NAMES[cls]
        checked = [t.check(n, v) for t, n, v in zip(schema, names, values, strict=True)]
        if _packb(checked) != head_raw:
            raise DecodeError("head is not in canonical encoding")
        head = cls(*checked)
    return Frame(k, head, head_raw, body, sig, data, _crypto.hash32_from(prefix, head_raw, body))


def _uint_form(v: int) -> tuple[int, int]:
    """Length and first byte of the shortest msgpack encoding of a non-negative integer (the fixint itself, or
    uint 8/16/32/64 and its marker)."""
    if v < 128:
        return 1, v
    if v < 256:
        return 2, 0xCC
    if v < 65536:
        return 3, 0xCD
    return (5, 0xCE) if v < 4294967296 else (9, 0xCF)


#: :func:`_uint_form` of 0..255 (a publisher's index: one lookup on the hot path instead of a call).
_U8_FORMS: Final = tuple(_uint_form(v) for v in range(256))


#: Where a PACKET head's integers start: after fixarray(7) and the bin 8 channel (34 bytes) and branch (18).
_PACKET_PUBLISHER_AT: Final = 1 + 34 + 18


def _packet_head(values: list[Any], head_raw: bytes) -> Packet | None:
    """The hot path of :func:`decode_frame` for PACKET heads: the same checks as ``Packet.SCHEMA`` (types,
    lengths, ranges) written out, and canonical form without re-encoding.  The byte strings cannot be encoded
    otherwise at the same length (a wider bin header is longer, a str is not bytes), but an integer can: msgpack's
    signed ``int 16/32/64`` of a value is as long as its ``uint 16/32/64`` (SPEC 5: MALFORMED), so each integer's
    marker byte is checked too -- with the lengths and the values equal, the bytes then are.  Returns None when a
    check fails, so that the generic path reports the precise error."""
    channel, branch, publisher, seq, prev, epoch, nonce = values
    if not (type(channel) is bytes and len(channel) == 32 and type(branch) is bytes and len(branch) == 16
            and type(prev) is bytes and len(prev) == 32 and type(nonce) is bytes and len(nonce) == 24
            and type(publisher) is int and 0 <= publisher <= 255 and type(seq) is int and 0 <= seq <= _U64
            and type(epoch) is int and 0 <= epoch <= _U64):
        return None
    # fixarray(7) + bin8 headers of 32, 16, 32 and 24 bytes: 1 + 34 + 18 + 34 + 26 = 113, plus the integers
    (n_publisher, m_publisher), (n_seq, m_seq), (n_epoch, m_epoch) = (
        _U8_FORMS[publisher], _uint_form(seq), _uint_form(epoch))
    if len(head_raw) != 113 + n_publisher + n_seq + n_epoch:
        return None
    at = _PACKET_PUBLISHER_AT
    if (head_raw[at] != m_publisher or head_raw[at + n_publisher] != m_seq
            or head_raw[at + n_publisher + n_seq + 34] != m_epoch):
        return None
    p = _new_object(Packet)
    _set_channel(p, channel)
    _set_branch(p, branch)
    _set_publisher(p, publisher)
    _set_seq(p, seq)
    _set_prev(p, prev)
    _set_epoch(p, epoch)
    _set_nonce(p, nonce)
    return p


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The setters of the slots of a frozen, slotted dataclass whose fields are ``names`` (all, in order), for a hot
    path that builds one through them: the dataclass's ``__init__`` sets each field through ``object.__setattr__``
    (a Packet: 0.57 us here, 0.32 this way).  Raises RuntimeError if the fields are others, are not slots, or the
    class has a ``__post_init__`` (work that construction would skip): the module that builds it then refuses to
    load until its construction follows the change."""
    slots = [cls.__dict__.get(n) for n in names]
    if (tuple(f.name for f in fields(cls)) != names or hasattr(cls, "__post_init__")
            or not all(isinstance(s, MemberDescriptorType) for s in slots)):
        raise RuntimeError(f"{cls.__module__}.{cls.__name__} changed: its construction through slots must follow")
    return tuple(cls.__dict__[n].__set__ for n in names)


#: The hot path's Packet, built through its slots (:func:`_slot_setters`).  Its values are the ones ``__init__``
#: would take: :func:`_packet_head` checked them first.
_new_object = object.__new__
_set_channel, _set_branch, _set_publisher, _set_seq, _set_prev, _set_epoch, _set_nonce = _slot_setters(
    Packet, ("channel", "branch", "publisher", "seq", "prev", "epoch", "nonce"))


# --- inner structures ----------------------------------------------------------------------------------------


def _strict(data: bytes, what: str, schema: tuple[_T, ...], max_len: int = 4096) -> list[Any]:
    values = _unpack(data, what, max_len)
    if not isinstance(values, list) or len(values) != len(schema):
        raise DecodeError(f"{what}: expected an array of {len(schema)}")
    out = [t.check(f"{what}[{i}]", v) for i, (t, v) in enumerate(zip(schema, values, strict=True))]
    if _packb(out) != data:
        raise DecodeError(f"{what}: not in canonical encoding")
    return out


#: The largest credential presentation a SUBSCRIBE carries (bytes).
MAX_CREDENTIAL = 65536


@dataclass(frozen=True, slots=True)
class SubscribeSecret:
    """Plaintext sealed inside a SUBSCRIBE body.

    ``proof`` is the subscriber's Ed25519 signature over
    ``H(proof, channel || author_sign || nonce || expires_ms || credential)``: proof of control of its DID,
    bound to this channel, this author and this fresh challenge (THREATS 5)."""

    sign_public: bytes
    nonce: bytes
    expires_ms: int
    mac: bytes
    credential: bytes  #: optional presentation (issue: credentials), empty if none
    proof: bytes

    SCHEMA: ClassVar[tuple[_T, ...]] = (B32, B16, U64, B16, _T("bytes", 0, MAX_CREDENTIAL), B64)


def encode_subscribe_secret(s: SubscribeSecret) -> bytes:
    return _packb([s.sign_public, s.nonce, s.expires_ms, s.mac, s.credential, s.proof])


def decode_subscribe_secret(data: bytes) -> SubscribeSecret:
    return SubscribeSecret(*_strict(data, "subscribe", SubscribeSecret.SCHEMA, 1 << 17))


#: The largest sealed entry a grant may hold (a member's :class:`GrantSecret`, which lists every member: about
#: 40 bytes each).
MAX_GRANT_ENTRY: Final = 8192


@dataclass(frozen=True, slots=True)
class GrantEntry:
    """One recipient of a grant: its ``hint`` (8 bytes: SPEC 8.5's keyed rule, ``streams.core._hint``, or the
    legacy one of GRANTs written before it) and a sealed box."""

    hint: bytes
    sealed: bytes


def encode_grant_entries(entries: list[GrantEntry]) -> bytes:
    """The body of a GRANT in the first layout (SPEC 8.5): one entry per recipient, each sealing a whole
    :class:`GrantSecret`.  Still read (grants kept in stores, authors not yet upgraded); no longer written."""
    return _packb([[e.hint, e.sealed] for e in entries])


def _grant_entry_list(values: Any, max_entries: int, max_sealed: int) -> list[GrantEntry]:
    if not isinstance(values, list) or not values:
        raise DecodeError("grant entries: expected a non-empty array")
    if len(values) > max_entries:
        raise DecodeError(f"grant entries: more than {max_entries}")
    out: list[GrantEntry] = []
    for v in values:
        if (
            not isinstance(v, list) or len(v) != 2 or not isinstance(v[0], bytes) or len(v[0]) != 8
            or not isinstance(v[1], bytes) or not (48 <= len(v[1]) <= max_sealed)
        ):
            raise DecodeError("grant entry malformed")
        out.append(GrantEntry(v[0], v[1]))
    return out


def decode_grant_entries(data: bytes, max_entries: int = 4096) -> list[GrantEntry]:
    """The entries of a GRANT body in the first layout (:func:`encode_grant_entries`)."""
    return _first_layout(_unpack(data, "grant entries", 1 << 20), data, max_entries)


def _first_layout(values: Any, data: bytes, max_entries: int) -> list[GrantEntry]:
    out = _grant_entry_list(values, max_entries, MAX_GRANT_ENTRY)
    if encode_grant_entries(out) != data:
        raise DecodeError("grant entries: not in canonical encoding")
    return out


#: The largest sealed entry of a grant in the current layout: a :class:`GrantKey`, which holds one chain key, two
#: for a member that reads the author's chain, every chain's for an auditor (256 of 36 bytes).
MAX_GRANT_KEY_ENTRY: Final = 12288
#: The largest shared part of a grant: the member list and the heads of a branch of 256 members, encrypted.
MAX_GRANT_SHARED: Final = 1 << 16


def encode_grant_body(shared: bytes, entries: list[GrantEntry]) -> bytes:
    """The body of a GRANT (SPEC 8.5): ``[shared, [[hint, sealed], ...]]``.  ``shared`` is the member list and the
    heads (:func:`encode_grant_shared`) encrypted once, under a fresh key that each recipient's sealed entry (a
    :class:`GrantKey`) carries: the grant grows with its members, not with their square."""
    return _packb([shared, [[e.hint, e.sealed] for e in entries]])


def decode_grant_body(data: bytes, max_entries: int = 4096) -> tuple[bytes | None, list[GrantEntry]]:
    """``(shared, entries)`` of a GRANT body: the current layout (:func:`encode_grant_body`, at most 256 entries:
    a branch's members), or the first one (:func:`encode_grant_entries`, at most ``max_entries``), for which
    ``shared`` is None and each entry seals a :class:`GrantSecret`.  Raises :class:`DecodeError` unless one of
    the two, canonical and within its bounds."""
    values = _unpack(data, "grant", 1 << 20)
    if isinstance(values, list) and len(values) == 2 and isinstance(values[0], bytes):
        shared = values[0]
        if not (16 <= len(shared) <= MAX_GRANT_SHARED):
            raise DecodeError("grant: malformed shared part")
        entries = _grant_entry_list(values[1], min(max_entries, 256), MAX_GRANT_KEY_ENTRY)
        if encode_grant_body(shared, entries) != data:
            raise DecodeError("grant: not in canonical encoding")
        return shared, entries
    return None, _first_layout(values, data, max_entries)


@dataclass(frozen=True, slots=True)
class GrantKey:
    """Plaintext sealed to one member inside a grant (current layout, SPEC 8.5).

    * ``index``: the recipient's member index (publisher number) in the branch;
    * ``shared_key``: the key of the grant's shared part (member list and heads);
    * ``keys``: ``[(publisher_index, key)]`` -- the AEAD key of each chain the recipient may read or write.
    """

    index: int
    shared_key: bytes
    keys: list[tuple[int, bytes]]

    def __repr__(self) -> str:  # never show keys
        return f"GrantKey(index={self.index}, keys=<{len(self.keys)} hidden>)"


def encode_grant_key(k: GrantKey) -> bytes:
    return _packb([k.index, k.shared_key, [list(x) for x in k.keys]])


def decode_grant_key(data: bytes) -> GrantKey:
    values = _unpack(data, "grant key", MAX_GRANT_KEY_ENTRY)
    if not isinstance(values, list) or len(values) != 3 or not isinstance(values[2], list) or len(values[2]) > 256:
        raise DecodeError("grant key: expected [index, shared key, keys]")
    k = GrantKey(U8.check("index", values[0]), B32.check("shared key", values[1]),
                 [tuple(_strict_tuple(x, (U8, B32), "key")) for x in values[2]])
    if encode_grant_key(k) != data:
        raise DecodeError("grant key: not in canonical encoding")
    _once_each(k.keys, "grant key: keys")
    return k


@dataclass(frozen=True, slots=True)
class GrantRemoval:
    """Plaintext sealed to a member that a re-key removes from a group, in that GRANT's entry for it (SPEC 8.5):
    its member ``index``, and the author chain's head at the re-key, ``(seq, hash)`` -- the last message it may
    read there, which it fetches if it misses it (THREATS 4) -- and ``pad``, zero bytes that make the entry as
    long as the key entry it would have had (an observer does not tell it from the others by its size), or None
    (the form without it, still read).  The second element an integer: never a :class:`GrantKey` (whose second is
    a byte string)."""

    index: int
    seq: int
    hash: bytes
    pad: bytes | None = None

    SCHEMA: ClassVar[tuple[_T, ...]] = (U8, U64, B32)


def encode_grant_removal(r: GrantRemoval) -> bytes:
    return _packb([r.index, r.seq, r.hash] if r.pad is None else [r.index, r.seq, r.hash, r.pad])


def padded_grant_removal(index: int, seq: int, head: bytes, size: int) -> GrantRemoval:
    """The :class:`GrantRemoval` whose encoding is ``size`` bytes long (the key entry it stands in for), or as
    close above it as the encoding allows."""
    bare = len(encode_grant_removal(GrantRemoval(index, seq, head, b"")))  # (an empty pad costs 2 bytes)
    n = max(0, size - bare)
    if n > 0xFF:
        n = max(n - 1, 0x100)  # a pad over 255 bytes has a header of 3 bytes, not 2
    return GrantRemoval(index, seq, head, bytes(n))


def decode_grant_removal(data: bytes) -> GrantRemoval:
    """A :class:`GrantRemoval`.  Raises :class:`DecodeError` unless canonical and well-formed (a pad of zero bytes
    only: it carries nothing)."""
    values = _unpack(data, "grant removal", MAX_GRANT_KEY_ENTRY)
    if isinstance(values, list) and len(values) == 4:
        pad = values.pop()
        if type(pad) is not bytes or any(pad):
            raise DecodeError("grant removal: the pad must be zero bytes")
        index, seq, head = _strict(_packb(values), "grant removal", GrantRemoval.SCHEMA, 64)
        r = GrantRemoval(index, seq, head, pad)
    else:
        r = GrantRemoval(*_strict(data, "grant removal", GrantRemoval.SCHEMA, 64))
    if encode_grant_removal(r) != data:
        raise DecodeError("grant removal: not in canonical encoding")
    return r


def _once_each(rows: list[Any], what: str) -> None:
    """SPEC 8.5: a grant's lists name each index (their first element) at most once -- a list naming one twice
    reads two ways (the first or the last?), so it is malformed."""
    if len({r[0] for r in rows}) != len(rows):
        raise DecodeError(f"{what}: an index named twice")


def encode_grant_shared(members: list[tuple[int, bytes, int]], heads: list[tuple[int, int, bytes]]) -> bytes:
    """The plaintext of a grant's shared part: ``[members, heads]``, as in :class:`GrantSecret`."""
    return _packb([[list(m) for m in members], [list(h) for h in heads]])


def decode_grant_shared(data: bytes) -> tuple[list[tuple[int, bytes, int]], list[tuple[int, int, bytes]]]:
    values = _unpack(data, "grant shared part", MAX_GRANT_SHARED)
    if not isinstance(values, list) or len(values) != 2 or \
            not all(isinstance(x, list) and len(x) <= 256 for x in values):
        raise DecodeError("grant shared part: expected [members, heads]")
    members = [tuple(_strict_tuple(m, (U8, B32, U8), "member")) for m in values[0]]
    heads = [tuple(_strict_tuple(h, (U8, U64, B32), "head")) for h in values[1]]
    if encode_grant_shared(members, heads) != data:
        raise DecodeError("grant shared part: not in canonical encoding")
    if any(perm not in (1, 2, 3, 4) for _, _, perm in members):
        raise DecodeError("grant shared part: unknown permission")
    _once_each(members, "grant shared part: members")
    _once_each(heads, "grant shared part: heads")
    return members, heads


@dataclass(frozen=True, slots=True)
class GrantSecret:
    """Plaintext sealed to one member inside a grant.

    * ``index``: the recipient's member index (publisher number) in the branch;
    * ``members``: ``[(index, sign_public, permission)]`` of every member, the author (index 0) included;
    * ``keys``: ``[(publisher_index, key)]`` -- the AEAD key of each chain the recipient may read or write;
    * ``heads``: ``[(publisher_index, seq, hash)]`` -- each chain's head when the grant was made, so that a
      member joining (or re-keyed) later starts exactly there.
    """

    index: int
    members: list[tuple[int, bytes, int]]
    keys: list[tuple[int, bytes]]
    heads: list[tuple[int, int, bytes]]

    def __repr__(self) -> str:  # never show keys
        return f"GrantSecret(index={self.index}, members={len(self.members)}, keys=<{len(self.keys)} hidden>)"


def encode_grant_secret(s: GrantSecret) -> bytes:
    return _packb(
        [s.index, [list(m) for m in s.members], [list(k) for k in s.keys], [list(h) for h in s.heads]]
    )


def decode_grant_secret(data: bytes) -> GrantSecret:
    values = _unpack(data, "grant secret", 1 << 16)
    if not isinstance(values, list) or len(values) != 4:
        raise DecodeError("grant secret: expected an array of 4")
    index = U8.check("index", values[0])
    lists = values[1:]
    if not all(isinstance(x, list) and len(x) <= 256 for x in lists):
        raise DecodeError("grant secret: malformed lists")
    members = [tuple(_strict_tuple(m, (U8, B32, U8), "member")) for m in lists[0]]
    keys = [tuple(_strict_tuple(k, (U8, B32), "key")) for k in lists[1]]
    heads = [tuple(_strict_tuple(h, (U8, U64, B32), "head")) for h in lists[2]]
    s = GrantSecret(index, members, keys, heads)
    if encode_grant_secret(s) != data:
        raise DecodeError("grant secret: not in canonical encoding")
    for _, _, perm in s.members:
        if perm not in (1, 2, 3, 4):
            raise DecodeError("grant secret: unknown permission")
    for rows, what in ((s.members, "members"), (s.keys, "keys"), (s.heads, "heads")):
        _once_each(rows, f"grant secret: {what}")
    return s


def _strict_tuple(v: Any, schema: tuple[_T, ...], what: str) -> list[Any]:
    if not isinstance(v, list) or len(v) != len(schema):
        raise DecodeError(f"{what}: malformed")
    return [t.check(what, x) for t, x in zip(schema, v, strict=True)]


#: Longest inclusion path accepted in an ANCHOR_PROOF: a tree of 2**64 leaves has paths of 64 nodes.
MAX_ANCHOR_PATH: Final = 64


def encode_anchor_body(checkpoint: bytes, path: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Body of an ANCHOR_PROOF: ``[encoded checkpoint, [sibling hashes, leaf level first]]``."""
    return _packb([checkpoint, list(path)])


def decode_anchor_body(data: bytes) -> tuple[bytes, list[bytes]]:
    """``(encoded checkpoint, path)`` of an ANCHOR_PROOF body.  Raises :class:`DecodeError` unless canonical
    and well-formed (the checkpoint itself is parsed by :meth:`streams.anchor.EpochCheckpoint.decode`)."""
    values = _unpack(data, "anchor proof", 4096)
    if not isinstance(values, list) or len(values) != 2:
        raise DecodeError("anchor proof: expected [checkpoint, path]")
    checkpoint, path = values
    if not isinstance(checkpoint, bytes) or not (1 <= len(checkpoint) <= 1024):
        raise DecodeError("anchor proof: malformed checkpoint")
    if not isinstance(path, list) or len(path) > MAX_ANCHOR_PATH:
        raise DecodeError("anchor proof: malformed path")
    for node in path:
        B32.check("anchor proof path", node)
    if encode_anchor_body(checkpoint, path) != data:
        raise DecodeError("anchor proof: not in canonical encoding")
    return checkpoint, path
