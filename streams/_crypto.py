"""Thin, internal crypto bindings: the only module that calls ``nacl.bindings`` and ``hashlib`` for protocol
crypto.  The object API lives in :mod:`streams.identity`.

Primitives (see SPEC.md, "Cryptographic primitives"):

* hash: BLAKE2b-256 with a 16-byte personalisation string per purpose (domain separation);
* signatures: Ed25519 over a 32-byte digest, so the signing cost stays flat as payloads grow;
* AEAD: XChaCha20-Poly1305-IETF with a 24-byte random nonce;
* sealing: libsodium sealed boxes (X25519 + XSalsa20-Poly1305) to a recipient's key-agreement key;
* keyed MAC: BLAKE2b-128 keyed;
* key agreement: X25519 between two parties' static key-agreement keys (grant hints).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import nacl.bindings as _b
import nacl.exceptions

from .errors import VerificationError

HASH_SIZE = 32
SIG_SIZE = 64
KEY_SIZE = 32
NONCE_SIZE = 24
TAG_SIZE = 16

# Domain-separation personalisations (BLAKE2b ``person``, 16 bytes max).  Never reuse one for two purposes.
P_MSG = b"streams.v1.msg"  #: message hash (links, signatures)
P_CHANNEL = b"streams.v1.chan"  #: channel id from author key and name
P_HINT = b"streams.v1.hint"  #: recipient hint in a grant
P_HINTKEY = b"streams.v1.hintk"  #: an author's and a recipient's hint key, from their X25519 agreement
P_CHALLENGE = b"streams.v1.chal"  #: challenge MAC
P_CHALKEY = b"streams.v1.chk"  #: derivation of the challenge MAC key from the author seed
P_PROOF = b"streams.v1.proof"  #: proof-of-control signature input
P_STORE = b"streams.v1.store"  #: store-key derivation
P_GRANT = b"streams.v1.grant"  #: associated data of a grant's shared part
P_KEPT = b"streams.v1.kept"  #: digest of stored bytes already checked (in memory only, never on the wire)


def hash32(person: bytes, *parts: bytes) -> bytes:
    """BLAKE2b-256 of the concatenation of ``parts`` under personalisation ``person``."""
    h = hashlib.blake2b(digest_size=HASH_SIZE, person=person)
    for p in parts:
        h.update(p)
    return h.digest()


def hasher(person: bytes, prefix: bytes) -> hashlib.blake2b:
    """A BLAKE2b-256 state under ``person`` that has absorbed ``prefix``, for :func:`hash32_from` (hot paths:
    the message hash of every frame starts with the same two bytes)."""
    return hashlib.blake2b(prefix, digest_size=HASH_SIZE, person=person)


def hash32_from(state: hashlib.blake2b, part1: bytes, part2: bytes) -> bytes:
    """``hash32(person, prefix, part1, part2)`` from a :func:`hasher` state (which stays unchanged)."""
    h = state.copy()
    h.update(part1)
    h.update(part2)
    return h.digest()


def mac16(key: bytes, person: bytes, *parts: bytes) -> bytes:
    """Keyed BLAKE2b-128."""
    h = hashlib.blake2b(digest_size=16, key=key, person=person)
    for p in parts:
        h.update(p)
    return h.digest()


#: Constant-time comparison of two byte strings (THREATS 9): ``hmac.compare_digest`` itself (called for every
#: received message's link: no wrapper around it).
ct_equal: Callable[[bytes, bytes], bool] = hmac.compare_digest


def sign(secret64: bytes, digest: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of ``digest`` with a libsodium 64-byte secret key."""
    return bytes(_b.crypto_sign(digest, secret64)[:SIG_SIZE])


def verify(public: bytes, digest: bytes, sig: bytes) -> None:
    """Verify an Ed25519 signature; raise :class:`VerificationError` if it does not hold."""
    if len(sig) != SIG_SIZE or len(public) != 32:
        raise VerificationError("bad signature length")
    try:
        _b.crypto_sign_open(sig + digest, public)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
        raise VerificationError("signature does not verify") from exc


# The AEAD is called once per message on each side.  PyNaCl's wrappers (``nacl.bindings``) spend 6-7 us of Python
# per call around 2-4 us of libsodium at 1 KiB (five checks that format their error messages every time, two
# cffi allocations, a copy): so the two calls of the hot path go to the same libsodium functions through
# PyNaCl's own cffi module (``nacl._sodium``), with the length checks that keep libsodium inside its buffers
# made here.  Where that module does not offer them, the wrappers are used.
try:
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib

    _aead_enc = _lib.crypto_aead_xchacha20poly1305_ietf_encrypt
    _aead_dec = _lib.crypto_aead_xchacha20poly1305_ietf_decrypt
    _NULL = _ffi.NULL
    _new = _ffi.new
    _buffer = _ffi.buffer
except (ImportError, AttributeError):  # pragma: no cover - a PyNaCl without them
    _aead_enc = _aead_dec = None


def _bytes(b: bytes) -> bytes:
    """``b`` as bytes: itself, or a copy of a buffer's bytes (TypeError for what is not a buffer: an int must not
    become that many zero bytes).  Sizes are checked on the result: ``len()`` of a buffer counts items."""
    return b if type(b) is bytes else memoryview(b).tobytes()


def aead_encrypt(key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """XChaCha20-Poly1305-IETF: ``plaintext`` sealed, with its 16-byte tag appended.  Raises ValueError for a
    key or nonce of the wrong size, TypeError for an argument that is not bytes or a buffer."""
    if not (type(plaintext) is bytes and type(aad) is bytes and type(nonce) is bytes and type(key) is bytes):
        plaintext, aad, nonce, key = _bytes(plaintext), _bytes(aad), _bytes(nonce), _bytes(key)
    if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError("AEAD key must be 32 bytes and nonce 24")
    if _aead_enc is None:  # pragma: no cover
        return bytes(_b.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key))
    n = len(plaintext) + TAG_SIZE
    out = _new("unsigned char[]", n)
    if _aead_enc(out, _NULL, plaintext, n - TAG_SIZE, aad, len(aad), _NULL, nonce, key):
        raise ValueError("encryption failed")  # pragma: no cover - libsodium refuses only over-long messages
    return bytes(_buffer(out, n))


def aead_decrypt(key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    """The plaintext of :func:`aead_encrypt`'s output; raise :class:`VerificationError` if it does not
    authenticate (wrong key, nonce or associated data, altered or truncated) or a size is wrong, TypeError for
    an argument that is not bytes or a buffer."""
    if not (type(ciphertext) is bytes and type(aad) is bytes and type(nonce) is bytes and type(key) is bytes):
        ciphertext, aad, nonce, key = _bytes(ciphertext), _bytes(aad), _bytes(nonce), _bytes(key)
    c = len(ciphertext)
    if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE or c < TAG_SIZE:
        raise VerificationError("ciphertext does not authenticate")
    if _aead_dec is None:  # pragma: no cover
        try:
            return bytes(_b.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key))
        except (nacl.exceptions.CryptoError, ValueError) as exc:
            raise VerificationError("ciphertext does not authenticate") from exc
    n = c - TAG_SIZE
    out = _new("unsigned char[]", n or 1)
    if _aead_dec(out, _NULL, _NULL, ciphertext, c, aad, len(aad), nonce, key):
        raise VerificationError("ciphertext does not authenticate")
    return bytes(_buffer(out, n))


def seal(recipient_x25519: bytes, plaintext: bytes) -> bytes:
    return bytes(_b.crypto_box_seal(plaintext, recipient_x25519))


def unseal(x25519_public: bytes, x25519_secret: bytes, sealed: bytes) -> bytes:
    try:
        return bytes(_b.crypto_box_seal_open(sealed, x25519_public, x25519_secret))
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise VerificationError("sealed box does not open") from exc


def x25519(secret: bytes, public: bytes) -> bytes:
    """The X25519 shared secret of our ``secret`` and a peer's ``public`` key; :class:`VerificationError` for a
    peer key of small order (the result would be all zero: libsodium refuses it) or of the wrong size."""
    if len(secret) != KEY_SIZE or len(public) != KEY_SIZE:  # (the binding does not check: libsodium reads 32)
        raise VerificationError("not a usable key-agreement key")
    try:
        return bytes(_b.crypto_scalarmult(secret, public))
    except (nacl.exceptions.CryptoError, RuntimeError, ValueError) as exc:
        raise VerificationError("not a usable key-agreement key") from exc


def ed25519_keypair_from_seed(seed: bytes) -> tuple[bytes, bytes]:
    """(public 32 B, libsodium secret 64 B) from a 32-byte seed."""
    pk, sk = _b.crypto_sign_seed_keypair(seed)
    return bytes(pk), bytes(sk)


def ed25519_pk_to_x25519(public: bytes) -> bytes:
    try:
        return bytes(_b.crypto_sign_ed25519_pk_to_curve25519(public))
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise VerificationError("not a valid Ed25519 public key") from exc


_P = 2**255 - 19


def ed25519_candidates_for_x25519(public: bytes) -> list[bytes]:
    """The Ed25519 public keys whose X25519 key, as :func:`ed25519_pk_to_x25519` derives it, is ``public``: none,
    or two that differ only in the sign of x (the top bit), i.e. a key and its negation -- whoever knows the
    secret scalar of one knows the other's (negated).

    The birational map: ``u = (1 + y) / (1 - y)``, so ``y = (u - 1) / (u + 1)`` (RFC 7748, section 4.1); the
    Ed25519 encoding is ``y`` with the sign of ``x`` in the top bit (RFC 8032, section 5.1.2).  The first
    candidate is converted back (which also refuses small-order and mixed-order points); its negation is then
    valid too."""
    if len(public) != 32:
        return []
    u = int.from_bytes(public, "little")
    if u >= _P or u == _P - 1:  # not canonical, or u + 1 == 0 (no y)
        return []
    y = (u - 1) * pow(u + 1, -1, _P) % _P
    cand = y.to_bytes(32, "little")
    if not is_valid_ed25519_point(cand):
        return []
    try:
        if ed25519_pk_to_x25519(cand) != public:
            return []
    except VerificationError:
        return []
    return [cand, (y | (1 << 255)).to_bytes(32, "little")]


def holder_key(ed25519_public: bytes) -> bytes:
    """An Ed25519 public key without its sign bit: the same for a key and its negation, which one secret
    controls (see :func:`ed25519_candidates_for_x25519`)."""
    return ed25519_public[:31] + bytes((ed25519_public[31] & 0x7F,))


def ed25519_sk_to_x25519(secret64: bytes) -> bytes:
    return bytes(_b.crypto_sign_ed25519_sk_to_curve25519(secret64))


def is_valid_ed25519_point(public: bytes) -> bool:
    return len(public) == 32 and bool(_b.crypto_core_ed25519_is_valid_point(public))
