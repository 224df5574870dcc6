"""Identities: an Ed25519 signing key, its X25519 key-agreement key, and its ``did:key`` DID.

The X25519 key is derived from the Ed25519 key exactly as the did:key method specifies for Ed25519 DIDs
(https://w3c-ccg.github.io/did-method-key/, "Encryption Method Creation Algorithm"), so the DID alone tells a
peer both keys.

Secrets never appear in ``repr`` or ``str``; equality of identities is a constant-time compare of the public
key.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Protocol

import base58

from . import _crypto
from .errors import DecodeError, LocalProtocolError

__all__ = [
    "DIDDocument",
    "DIDResolver",
    "Identity",
    "KeyResolver",
    "PublicIdentity",
    "did_from_public_key",
    "dids_of_kx_public",
    "holder_of",
    "public_key_from_did",
]

# multicodec varint prefixes (https://github.com/multiformats/multicodec/blob/master/table.csv)
_ED25519_PUB = b"\xed\x01"
_X25519_PUB = b"\xec\x01"


def _multibase_key(prefix: bytes, key: bytes) -> str:
    return "z" + base58.b58encode(prefix + key).decode("ascii")


def did_from_public_key(public: bytes) -> str:
    """``did:key:z6Mk...`` for a 32-byte Ed25519 public key."""
    if len(public) != 32:
        raise LocalProtocolError("an Ed25519 public key is 32 bytes")
    return "did:key:" + _multibase_key(_ED25519_PUB, public)


@functools.lru_cache(maxsize=4096)
def dids_of_kx_public(kx_public: bytes) -> tuple[str, ...]:
    """The DIDs (at most two, whose Ed25519 keys differ only in the sign of x) whose X25519 key-agreement key is
    ``kx_public``: who a CurveZMQ client key can belong to.  Empty for a key no Ed25519 key maps to.  (Cached:
    the inversion costs about 0.2 ms.)"""
    return tuple(did_from_public_key(pk) for pk in _crypto.ed25519_candidates_for_x25519(bytes(kx_public)))


def holder_of(did: str) -> bytes | None:
    """What identifies whoever controls ``did``: its Ed25519 key without the sign bit (32 bytes), or None if
    ``did`` is not a valid did:key.  A DID and its *twin* (the key negated: same X25519 key, same holder, who
    can sign as either by negating the scalar) share it, so a deny-list must compare this, not the string."""
    try:
        return _crypto.holder_key(public_key_from_did(did))
    except DecodeError:
        return None


def x25519_multibase(public: bytes) -> str:
    """Multibase (``z6LS...``) form of an X25519 public key."""
    return _multibase_key(_X25519_PUB, public)


#: The longest multibase part of an Ed25519 did:key read (its canonical spelling is 48 characters: "z" and 47 of
#: base58btc for the 34 bytes of multicodec and key); a longer one is refused undecoded.
_MB_MAX = 64


def public_key_from_did(did: str) -> bytes:
    """The Ed25519 public key of a ``did:key`` DID.

    Raises :class:`~streams.errors.DecodeError` (a ``ValueError``) for anything that is not a valid Ed25519
    did:key: wrong method, multibase other than base58btc, wrong multicodec, wrong length, a point that is
    not on the curve (or of small order), or any spelling other than the canonical one (e.g. trailing
    whitespace), so that equal keys always have equal DID strings.
    """
    if not isinstance(did, str) or not did.startswith("did:key:"):
        raise DecodeError("not a did:key DID")
    mb = did[len("did:key:") :]
    if "#" in mb or "/" in mb or "?" in mb or ";" in mb:
        raise DecodeError("did:key must not carry a path, query or fragment here")
    if not mb.startswith("z"):
        raise DecodeError("did:key multibase must be base58btc ('z')")
    if len(mb) > _MB_MAX:  # (before the decode, whose time grows with the square of the length)
        raise DecodeError("did:key is too long for an Ed25519 key")
    try:
        raw = base58.b58decode(mb[1:])
    except ValueError as exc:
        raise DecodeError("did:key is not valid base58btc") from exc
    if raw[:2] != _ED25519_PUB:
        raise DecodeError("did:key is not an Ed25519 key (multicodec 0xed)")
    key = raw[2:]
    if len(key) != 32:
        raise DecodeError("did:key Ed25519 key must be 32 bytes")
    if not _crypto.is_valid_ed25519_point(key):
        raise DecodeError("did:key Ed25519 key is not a valid curve point")
    # One key, one DID string: the base58 library strips trailing whitespace, so without this check
    # "did:key:z6Mk...\n" would name the same key as "did:key:z6Mk..." and could slip past a policy that
    # compares DID strings (THREATS 5).
    if did_from_public_key(key) != did:
        raise DecodeError("did:key is not in canonical form")
    return key


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """The public half of an identity: what peers know of each other."""

    sign_public: bytes  #: Ed25519 public key, 32 bytes
    kx_public: bytes  #: X25519 key-agreement public key, 32 bytes (derived from ``sign_public``)

    @classmethod
    def from_sign_public(cls, sign_public: bytes) -> PublicIdentity:
        return cls(sign_public, _crypto.ed25519_pk_to_x25519(sign_public))

    @classmethod
    def from_did(cls, did: str) -> PublicIdentity:
        return cls.from_sign_public(public_key_from_did(did))

    @property
    def did(self) -> str:
        return did_from_public_key(self.sign_public)

    def verify(self, digest: bytes, signature: bytes) -> None:
        """Raise :class:`~streams.errors.VerificationError` unless ``signature`` is ours over ``digest``."""
        _crypto.verify(self.sign_public, digest, signature)


class Identity:
    """A full identity with secret keys.  Create with :meth:`generate` or :meth:`from_seed`.

    The seed is the only secret; it is never shown by ``repr``/``str`` and is stored only encrypted
    (see :mod:`streams.keystore` and :mod:`streams.store`).
    """

    __slots__ = ("_kx_secret", "_secret", "_seed", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise LocalProtocolError("an identity seed is 32 bytes")
        pk, sk = _crypto.ed25519_keypair_from_seed(seed)
        self._seed = bytes(seed)
        self._secret = sk
        self._kx_secret = _crypto.ed25519_sk_to_x25519(sk)
        self.public = PublicIdentity(pk, _crypto.ed25519_pk_to_x25519(pk))

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(seed)

    @property
    def did(self) -> str:
        return self.public.did

    @property
    def sign_public(self) -> bytes:
        return self.public.sign_public

    @property
    def kx_public(self) -> bytes:
        return self.public.kx_public

    def sign(self, digest: bytes) -> bytes:
        """Ed25519 signature over a 32-byte digest."""
        return _crypto.sign(self._secret, digest)

    def unseal(self, sealed: bytes) -> bytes:
        """Open a sealed box addressed to our key-agreement key; raises VerificationError."""
        return _crypto.unseal(self.public.kx_public, self._kx_secret, sealed)

    def derive_key(self, person: bytes, context: bytes = b"") -> bytes:
        """A 32-byte secret derived from the seed for one purpose (keyed BLAKE2b, domain-separated)."""
        return _crypto.hash32(person, self._seed, context)

    def agree(self, person: bytes, peer_kx_public: bytes, context: bytes = b"") -> bytes:
        """A 32-byte secret that only we and the holder of ``peer_kx_public`` can compute, for one purpose:
        BLAKE2b-256 under ``person`` of our X25519 agreement with that key, then ``context`` (which both sides
        must give alike).  Raises :class:`~streams.errors.VerificationError` for a key that is not usable (small
        order, wrong size): keys taken from DIDs never are."""
        return _crypto.hash32(person, _crypto.x25519(self._kx_secret, peer_kx_public), context)

    def export_seed(self) -> bytes:
        """The raw seed, for encrypting into a keystore.  Handle with care; never log it."""
        return self._seed

    def __repr__(self) -> str:
        return f"Identity(did={self.did!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Identity):
            return NotImplemented
        return _crypto.ct_equal(self.public.sign_public, other.public.sign_public)

    def __hash__(self) -> int:
        return hash(self.public.sign_public)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Identity objects are not picklable; use a keystore")


@dataclass(frozen=True, slots=True)
class DIDDocument:
    """The parts of a resolved DID document that ``streams`` uses."""

    id: str
    sign_public: bytes  #: Ed25519 verification method (authentication / assertionMethod)
    kx_public: bytes  #: X25519 key agreement


class DIDResolver(Protocol):
    """Resolves a DID to its document.  Plug in other DID methods by implementing this."""

    def resolve(self, did: str) -> DIDDocument: ...


class KeyResolver:
    """Resolver for ``did:key`` (Ed25519).  Pure: no I/O."""

    def resolve(self, did: str) -> DIDDocument:
        pub = PublicIdentity.from_did(did)
        return DIDDocument(did, pub.sign_public, pub.kx_public)
