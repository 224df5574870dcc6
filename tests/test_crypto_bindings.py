"""The AEAD of the hot path (``streams._crypto.aead_encrypt``/``aead_decrypt``) calls libsodium through PyNaCl's
cffi module directly, with its own length checks: it must give the published XChaCha20-Poly1305-IETF test
vector, the same bytes as PyNaCl's public wrappers for every size, and refuse -- as VerificationError, without
reading outside a buffer -- every altered, truncated or mis-sized input."""

from __future__ import annotations

import ctypes
import os

import nacl.bindings as nb
import pytest

from streams import _crypto
from streams.errors import VerificationError

# draft-irtf-cfrg-xchacha-03, appendix A.3.1 (AEAD_XChaCha20_Poly1305).
KEY = bytes(range(0x80, 0xA0))
NONCE = bytes(range(0x40, 0x58))
AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
PLAINTEXT = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen "
             b"would be it.")
CIPHERTEXT = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c2"
    "16cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615"
    "c68b13b52e")
TAG = bytes.fromhex("c0875924c1c7987947deafd8780acf49")


def test_the_published_test_vector() -> None:
    assert _crypto.aead_encrypt(KEY, NONCE, AAD, PLAINTEXT) == CIPHERTEXT + TAG
    assert _crypto.aead_decrypt(KEY, NONCE, AAD, CIPHERTEXT + TAG) == PLAINTEXT


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 64, 1024, 16384, 1 << 20])
def test_the_same_bytes_as_pynacl_public_wrappers(size: int) -> None:
    key, nonce, aad, pt = os.urandom(32), os.urandom(24), os.urandom(size % 50), os.urandom(size)
    ct = _crypto.aead_encrypt(key, nonce, aad, pt)
    assert type(ct) is bytes and ct == nb.crypto_aead_xchacha20poly1305_ietf_encrypt(pt, aad or None, nonce, key)
    assert _crypto.aead_decrypt(key, nonce, aad, ct) == pt
    # Buffers other than bytes (a memoryview slice of a received frame) give the same.
    assert _crypto.aead_decrypt(key, nonce, memoryview(aad), memoryview(b"x" + ct)[1:]) == pt
    assert _crypto.aead_encrypt(key, nonce, bytearray(aad), bytearray(pt)) == ct


def test_every_alteration_is_refused() -> None:
    sealed = CIPHERTEXT + TAG
    bad: list[tuple[bytes, bytes, bytes, bytes]] = [
        (KEY, NONCE, AAD, sealed[:-1] + bytes([sealed[-1] ^ 1])),  # the tag
        (KEY, NONCE, AAD, bytes([sealed[0] ^ 0x80]) + sealed[1:]),  # the ciphertext
        (KEY, NONCE, AAD + b"\0", sealed),  # the associated data
        (KEY, NONCE, b"", sealed),
        (KEY, NONCE[:-1] + b"\0", AAD, sealed),  # another nonce
        (bytes(32), NONCE, AAD, sealed),  # another key
        (KEY, NONCE, AAD, sealed[:-1]),  # truncated
        (KEY, NONCE, AAD, TAG),  # the tag alone
        (KEY, NONCE, AAD, TAG[:15]),  # shorter than a tag
        (KEY, NONCE, AAD, b""),
        (KEY, NONCE[:23], AAD, sealed),  # a short nonce: libsodium would read past it
        (KEY[:31], NONCE, AAD, sealed),  # a short key
        (KEY + b"\0", NONCE, AAD, sealed),
    ]
    for key, nonce, aad, ct in bad:
        with pytest.raises(VerificationError):
            _crypto.aead_decrypt(key, nonce, aad, ct)


def test_sizes_are_those_of_the_bytes_not_of_len_of_a_buffer() -> None:
    """``len()`` of a buffer counts items, not bytes: the sizes handed to libsodium must be the bytes'.  A
    zero-byte view whose ``len()`` is 64 Mi made libsodium read 64 MiB from a one-byte buffer (a crash); a
    zero-byte "key" of ``len()`` 32 encrypted under whatever memory followed it."""
    sealed = CIPHERTEXT + TAG
    huge_empty = (ctypes.c_char * 0 * (1 << 26))()  # a buffer of no bytes whose len() is 64 Mi
    assert len(huge_empty) == 1 << 26 and memoryview(huge_empty).nbytes == 0
    with pytest.raises(VerificationError):
        _crypto.aead_decrypt(KEY, NONCE, AAD, huge_empty)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _crypto.aead_encrypt((ctypes.c_char * 0 * 32)(), NONCE, AAD, PLAINTEXT)  # type: ignore[arg-type]
    with pytest.raises(VerificationError):
        _crypto.aead_decrypt(KEY, (ctypes.c_char * 0 * 24)(), AAD, sealed)  # type: ignore[arg-type]
    # Understated: a view of 256 bytes in 8-byte items has a len() of 32; it is not a 32-byte key.
    with pytest.raises(ValueError):
        _crypto.aead_encrypt(memoryview(bytes(256)).cast("Q"), NONCE, AAD, PLAINTEXT)  # type: ignore[arg-type]
    # ... and a 32-byte key in 8-byte items is one.
    assert _crypto.aead_decrypt(memoryview(KEY).cast("Q"), NONCE, AAD, sealed) == PLAINTEXT  # type: ignore[arg-type]


def test_what_is_not_a_buffer_is_refused_not_read_as_zero_bytes() -> None:
    for bad in (3, [1, 2, 3], "text", None):
        with pytest.raises(TypeError):
            _crypto.aead_encrypt(KEY, NONCE, bad, PLAINTEXT)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            _crypto.aead_decrypt(KEY, NONCE, AAD, bad)  # type: ignore[arg-type]


def test_encrypting_with_a_mis_sized_key_or_nonce_is_refused() -> None:
    for key, nonce in ((KEY[:31], NONCE), (KEY, NONCE[:23]), (KEY, NONCE + b"\0")):
        with pytest.raises(ValueError):
            _crypto.aead_encrypt(key, nonce, AAD, PLAINTEXT)


def test_x25519_gives_the_rfc_7748_shared_secret_from_either_side() -> None:
    """RFC 7748, section 6.1: the agreement the grant hints are keyed by (SPEC 8.5)."""
    a = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    a_pub = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    b = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    b_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    k = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert _crypto.x25519(a, b_pub) == _crypto.x25519(b, a_pub) == k


def test_x25519_refuses_a_small_order_or_mis_sized_key_without_reading_past_it() -> None:
    """A key of small order (u = 0, 1: the result would be all zero) or of a size other than 32 is refused as
    VerificationError -- the binding itself checks no size, and libsodium would read 32 bytes."""
    secret = os.urandom(32)
    for public in (bytes(32), (1).to_bytes(32, "little"), os.urandom(31), b""):
        with pytest.raises(VerificationError):
            _crypto.x25519(secret, public)
    with pytest.raises(VerificationError):
        _crypto.x25519(secret[:31], os.urandom(32))
