"""Secrets at rest (minimal placeholder; the full keystore file format lands with the identity work)."""

from __future__ import annotations

import os

import nacl.bindings as _b
import nacl.exceptions
import nacl.pwhash

from .errors import KeystoreError

OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


def derive_key(passphrase: str | bytes, salt: bytes, opslimit: int = OPSLIMIT, memlimit: int = MEMLIMIT) -> bytes:
    """Argon2id: a 32-byte key from a passphrase."""
    pw = passphrase.encode() if isinstance(passphrase, str) else passphrase
    return bytes(nacl.pwhash.argon2id.kdf(32, pw, salt, opslimit=opslimit, memlimit=memlimit))


def seal_secret(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XChaCha20-Poly1305 with a random nonce, prefixed."""
    nonce = os.urandom(24)
    return nonce + bytes(_b.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key))


def open_secret(key: bytes, blob: bytes, aad: bytes) -> bytes:
    try:
        return bytes(_b.crypto_aead_xchacha20poly1305_ietf_decrypt(blob[24:], aad, blob[:24], key))
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise KeystoreError("secret does not open: wrong passphrase or altered data") from exc
