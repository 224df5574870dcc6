"""Encrypted keystore files for an :class:`~streams.identity.Identity`; helpers to encrypt secrets at rest.

A keystore holds one identity's 32-byte seed, encrypted under a passphrase (THREATS 9: "at rest they are
encrypted under a passphrase with a memory-hard KDF").

File format (version 1)
-----------------------
UTF-8 JSON, written canonically -- keys sorted, two-space indent, ASCII only, one trailing newline -- so that
the file has exactly one valid byte string for its content::

    {
      "cipher": "xchacha20poly1305-ietf",
      "ciphertext": "<base64, 48 bytes: the encrypted 32-byte seed and the 16-byte tag>",
      "did": "did:key:z6Mk...",
      "format": "streams-keystore",
      "kdf": {
        "alg": "argon2id",
        "memlimit": 268435456,
        "opslimit": 3,
        "salt": "<base64, 16 bytes>"
      },
      "nonce": "<base64, 24 bytes>",
      "version": 1
    }

* key = Argon2id(passphrase, salt, opslimit, memlimit), 32 bytes (libsodium ``crypto_pwhash``, alg 2);
* ciphertext = XChaCha20-Poly1305-IETF(key, nonce, seed) with associated data = the *header*: the document
  without ``nonce`` and ``ciphertext``, serialised as compact canonical JSON (sorted keys, separators
  ``,`` and ``:``).  The format name, version, DID and KDF parameters are therefore authenticated.
* base64 is standard, padded, and must be canonical.
* ``did`` is public information, readable without the passphrase (:func:`read_public`).  It is *not*
  authenticated until the passphrase opens the file.

Reading is strict: unknown or missing fields, wrong types, non-canonical JSON or base64 and out-of-range KDF
parameters are refused before the KDF runs, so an edited file cannot make us spend more than
``MAX_OPSLIMIT`` passes over ``MAX_MEMLIMIT`` bytes (THREATS 8).  Together with the AEAD this means that
changing any byte of a keystore makes :func:`load_identity` fail.

Passphrases may be ``str`` (encoded as UTF-8 after Unicode NFC normalisation, so the same typed passphrase
opens the file whatever the input method; a ``str`` UTF-8 cannot encode -- a lone surrogate, which is how Python
carries bytes that are not UTF-8 from the environment -- is refused with LocalProtocolError) or ``bytes`` (used
as is).

Neither the passphrase nor the seed ever appears in an exception, log or ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import logging
import os
import stat
import tempfile
import unicodedata
from typing import Any, Final

import nacl.exceptions
import nacl.pwhash.argon2id as _argon2id

from . import _crypto
from .errors import BadPassphrase, DecodeError, KeystoreError, LocalProtocolError, VerificationError
from .identity import Identity, public_key_from_did

log = logging.getLogger("streams.keystore")

__all__ = [
    "DEFAULT_MEMLIMIT",
    "DEFAULT_OPSLIMIT",
    "FORMAT",
    "KEY_SIZE",
    "MAX_MEMLIMIT",
    "MAX_OPSLIMIT",
    "MIN_MEMLIMIT",
    "MIN_OPSLIMIT",
    "SALT_SIZE",
    "VERSION",
    "derive_key",
    "load_identity",
    "open_secret",
    "read_public",
    "save_identity",
    "seal_secret",
]

FORMAT: Final = "streams-keystore"
VERSION: Final = 1
_KDF_ALG: Final = "argon2id"
_CIPHER: Final = "xchacha20poly1305-ietf"

#: Argon2id passes used by :func:`save_identity` unless told otherwise (libsodium's "moderate").
DEFAULT_OPSLIMIT: Final[int] = _argon2id.OPSLIMIT_MODERATE
#: Argon2id memory in bytes used by :func:`save_identity` unless told otherwise (256 MiB, "moderate").
DEFAULT_MEMLIMIT: Final[int] = _argon2id.MEMLIMIT_MODERATE
#: Smallest accepted parameters (libsodium's minimum: 1 pass, 8 KiB).  Only for tests: they protect nothing.
MIN_OPSLIMIT: Final[int] = _argon2id.OPSLIMIT_MIN
MIN_MEMLIMIT: Final[int] = _argon2id.MEMLIMIT_MIN
#: Largest accepted parameters (16 passes, 1 GiB, libsodium's "sensitive" memory): bounds the work an edited
#: or hostile keystore can make us do (THREATS 8).
MAX_OPSLIMIT: Final = 16
MAX_MEMLIMIT: Final[int] = _argon2id.MEMLIMIT_SENSITIVE

SALT_SIZE: Final[int] = _argon2id.SALTBYTES  #: 16 bytes
KEY_SIZE: Final = _crypto.KEY_SIZE  #: 32 bytes
_NONCE_SIZE: Final = _crypto.NONCE_SIZE  #: 24 bytes
_TAG_SIZE: Final = _crypto.TAG_SIZE
_SEED_SIZE: Final = 32
#: A version-1 keystore is well under 1 KiB; refuse to read anything much larger.
_MAX_FILE: Final = 16 * 1024

_TOP_KEYS: Final = frozenset({"cipher", "ciphertext", "did", "format", "kdf", "nonce", "version"})
_KDF_KEYS: Final = frozenset({"alg", "memlimit", "opslimit", "salt"})


# --- generic helpers (also used by the SQLite store) ---


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    """The passphrase as the KDF takes it.  Raises LocalProtocolError for one that is not ``str``/``bytes``, or a
    ``str`` UTF-8 cannot encode (a lone surrogate: how Python carries bytes that are not UTF-8 from the environment
    or a terminal).  Nothing of the passphrase is in the error, its cause or its context: UnicodeEncodeError's text
    shows one of its characters and where, and the exception holds the whole string."""
    if isinstance(passphrase, str):
        try:
            return unicodedata.normalize("NFC", passphrase).encode("utf-8")
        except UnicodeEncodeError:
            pass  # (raised below, outside this block: no __context__)
        raise LocalProtocolError("a passphrase must be text UTF-8 can encode (it holds bytes that are not UTF-8?)")
    if isinstance(passphrase, (bytes, bytearray)):
        return bytes(passphrase)
    raise LocalProtocolError("a passphrase is str or bytes")


def _check_limits(opslimit: object, memlimit: object) -> tuple[int, int]:
    """Return the limits if they are integers in the accepted range; otherwise raise LocalProtocolError."""
    if type(opslimit) is not int or not MIN_OPSLIMIT <= opslimit <= MAX_OPSLIMIT:
        raise LocalProtocolError(f"opslimit must be an integer in {MIN_OPSLIMIT}..{MAX_OPSLIMIT}")
    if type(memlimit) is not int or not MIN_MEMLIMIT <= memlimit <= MAX_MEMLIMIT:
        raise LocalProtocolError(f"memlimit must be an integer in {MIN_MEMLIMIT}..{MAX_MEMLIMIT} bytes")
    return opslimit, memlimit


def derive_key(passphrase: str | bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    """A 32-byte key from ``passphrase`` with Argon2id (``salt``: 16 random bytes, stored beside the data).

    ``opslimit`` is the number of passes and ``memlimit`` the memory in bytes; both must lie within
    ``MIN_*..MAX_*``.  Raises :class:`~streams.errors.LocalProtocolError` for a passphrase that is not
    ``str``/``bytes`` (or a ``str`` UTF-8 cannot encode), a salt that is not 16 bytes, or limits out of range --
    validate values read from disk first and report those as :class:`~streams.errors.KeystoreError`.  Raises
    :class:`~streams.errors.KeystoreError` if libsodium cannot run the KDF (e.g. out of memory).
    """
    pw = _passphrase_bytes(passphrase)
    if not isinstance(salt, bytes) or len(salt) != SALT_SIZE:
        raise LocalProtocolError(f"an Argon2id salt is {SALT_SIZE} bytes")
    ops, mem = _check_limits(opslimit, memlimit)
    try:
        return bytes(_argon2id.kdf(KEY_SIZE, pw, salt, ops, mem))
    except (nacl.exceptions.CryptoError, MemoryError) as exc:
        # Never chain text that could mention the inputs; libsodium's messages do not, but be explicit.
        raise KeystoreError("Argon2id key derivation failed") from exc


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise LocalProtocolError(f"a secret-sealing key is {KEY_SIZE} bytes")
    return key


def seal_secret(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt ``plaintext`` under ``key`` (32 bytes, e.g. from :func:`derive_key`), binding ``aad``.

    Returns ``nonce (24 random bytes) || XChaCha20-Poly1305 ciphertext and tag``: ``len(plaintext) + 40``
    bytes.  ``aad`` should name what the secret is and where it lives (table, row id), so a sealed value
    cannot be moved to another place unnoticed.  Raises LocalProtocolError for a key of the wrong size.
    """
    _check_key(key)
    nonce = os.urandom(_NONCE_SIZE)  # random 192-bit nonces: no counter state to lose (THREATS 4)
    return nonce + _crypto.aead_encrypt(key, nonce, bytes(aad), bytes(plaintext))


def open_secret(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Decrypt a value made by :func:`seal_secret` with the same ``key`` and ``aad``.

    Raises :class:`~streams.errors.KeystoreError` if the blob is too short, was altered, was sealed under
    another key or with other associated data -- these cases are indistinguishable by design.  (It is not
    :class:`~streams.errors.BadPassphrase`: the caller knows whether a wrong passphrase is plausible.)
    Raises LocalProtocolError for a key of the wrong size.
    """
    _check_key(key)
    if not isinstance(blob, bytes) or len(blob) < _NONCE_SIZE + _TAG_SIZE:
        raise KeystoreError("sealed secret is truncated")
    try:
        return _crypto.aead_decrypt(key, blob[:_NONCE_SIZE], bytes(aad), blob[_NONCE_SIZE:])
    except VerificationError:
        raise KeystoreError("sealed secret does not authenticate (altered, wrong key or place)") from None


# --- the file format ---


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, field: str, size: int) -> bytes:
    if not isinstance(value, str):
        raise KeystoreError(f"keystore field {field} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise KeystoreError(f"keystore field {field} is not valid base64") from exc
    if _b64(raw) != value:
        raise KeystoreError(f"keystore field {field} is not canonical base64")
    if len(raw) != size:
        raise KeystoreError(f"keystore field {field} must be {size} bytes")
    return raw


def _header(did: str, opslimit: int, memlimit: int, salt: bytes) -> dict[str, Any]:
    return {
        "cipher": _CIPHER,
        "did": did,
        "format": FORMAT,
        "kdf": {"alg": _KDF_ALG, "memlimit": memlimit, "opslimit": opslimit, "salt": _b64(salt)},
        "version": VERSION,
    }


def _aad(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _dump(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


class _Parsed:
    __slots__ = ("aad", "ciphertext", "did", "memlimit", "nonce", "opslimit", "salt")

    def __init__(
        self, did: str, opslimit: int, memlimit: int, salt: bytes, nonce: bytes, ciphertext: bytes, aad: bytes
    ) -> None:
        self.did, self.opslimit, self.memlimit, self.salt = did, opslimit, memlimit, salt
        self.nonce, self.ciphertext, self.aad = nonce, ciphertext, aad


def _parse(data: bytes) -> _Parsed:
    """Strictly parse a keystore file; raise KeystoreError for anything but a canonical version-1 file."""
    try:
        doc = json.loads(data.decode("ascii"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise KeystoreError("keystore is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise KeystoreError("keystore must be a JSON object")
    if doc.get("format") != FORMAT:
        raise KeystoreError("not a streams keystore")
    if type(doc.get("version")) is not int or doc["version"] != VERSION:
        raise KeystoreError("unsupported keystore version")
    if set(doc) != _TOP_KEYS:
        raise KeystoreError("keystore fields are missing or unknown")
    kdf = doc["kdf"]
    if not isinstance(kdf, dict) or set(kdf) != _KDF_KEYS or kdf["alg"] != _KDF_ALG:
        raise KeystoreError("keystore KDF must be argon2id with opslimit, memlimit and salt")
    if doc["cipher"] != _CIPHER:
        raise KeystoreError("unsupported keystore cipher")
    try:
        opslimit, memlimit = _check_limits(kdf["opslimit"], kdf["memlimit"])
    except LocalProtocolError as exc:
        raise KeystoreError(f"keystore KDF parameters out of range: {exc}") from None
    did = doc["did"]
    try:
        public_key_from_did(did)
    except DecodeError as exc:
        raise KeystoreError("keystore DID is not a valid Ed25519 did:key") from exc
    salt = _unb64(kdf["salt"], "kdf.salt", SALT_SIZE)
    nonce = _unb64(doc["nonce"], "nonce", _NONCE_SIZE)
    ciphertext = _unb64(doc["ciphertext"], "ciphertext", _SEED_SIZE + _TAG_SIZE)
    if _dump(doc) != data:
        # Whitespace, key order, escapes or duplicate keys differ from what save_identity writes.
        raise KeystoreError("keystore is not in canonical form")
    aad = _aad(_header(did, opslimit, memlimit, salt))
    return _Parsed(did, opslimit, memlimit, salt, nonce, ciphertext, aad)


def _read(path: str | os.PathLike[str]) -> _Parsed:
    try:
        # O_NONBLOCK: a FIFO at the path is refused below, not waited on for a writer (forever).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
            data = _read_all(fd, _MAX_FILE + 1) if stat.S_ISREG(mode) else b""
        finally:
            os.close(fd)
    except OSError as exc:
        # The OSError names the path, not the contents; chain it so the caller sees why.
        raise KeystoreError(f"cannot read keystore {os.fspath(path)}: {exc.strerror or type(exc).__name__}") from exc
    if not stat.S_ISREG(mode):
        raise KeystoreError(f"keystore {os.fspath(path)} is not a regular file")
    if len(data) > _MAX_FILE:
        raise KeystoreError(f"keystore file {os.fspath(path)} is too large")
    parsed = _parse(data)
    _warn_if_exposed(log, "keystore", os.fspath(path), mode)
    return parsed


def _warn_if_exposed(logger: logging.Logger, what: str, path: str, mode: int) -> None:
    """Log a warning if a file of secrets (a keystore, a store: both made 0600) has group or other permission bits
    set.  Not refused: its secrets are sealed, but the seal is only as strong as the passphrase against offline
    guessing by whoever can copy the file (THREATS 9).  The warning names the path and mode, nothing of the file."""
    if mode & 0o077:
        logger.warning("%s %s is open to group or others (mode %04o): whoever can read it can try passphrases "
                       "against it offline; make it private (chmod 600)", what, path, stat.S_IMODE(mode))


def _read_all(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``, until its end."""
    chunks: list[bytes] = []
    while limit > 0:
        chunk = os.read(fd, limit)
        if not chunk:
            break
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


def read_public(path: str | os.PathLike[str]) -> str:
    """The DID stored in a keystore, without the passphrase.

    The DID is not authenticated until the passphrase opens the file: use it to pick a keystore, not to trust
    one.  Raises :class:`~streams.errors.KeystoreError` if the file is missing, unreadable or malformed.
    """
    return _read(path).did


def load_identity(path: str | os.PathLike[str], passphrase: str | bytes) -> Identity:
    """Open a keystore written by :func:`save_identity`.

    Raises:

    * :class:`~streams.errors.BadPassphrase` if the AEAD does not open: a wrong passphrase, *or* a file whose
      salt, nonce, ciphertext, DID or KDF parameters were altered into other well-formed values -- the two
      cannot be told apart.
    * :class:`~streams.errors.KeystoreError` (the base of BadPassphrase) if the file is missing or
      unreadable (the ``OSError`` is chained), truncated, not canonical version-1 JSON, or has out-of-range
      KDF parameters.  The KDF is not run in these cases.
    * :class:`~streams.errors.LocalProtocolError` if ``passphrase`` is neither ``str`` nor ``bytes``, or is a
      ``str`` UTF-8 cannot encode.
    """
    pw = _passphrase_bytes(passphrase)
    parsed = _read(path)
    key = derive_key(pw, parsed.salt, parsed.opslimit, parsed.memlimit)
    try:
        seed = _crypto.aead_decrypt(key, parsed.nonce, parsed.aad, parsed.ciphertext)
    except VerificationError:
        # ``from None``: nothing about the inputs belongs in the traceback.
        raise BadPassphrase("wrong passphrase, or the keystore was altered") from None
    identity = Identity.from_seed(seed)
    if identity.did != parsed.did:  # cannot happen unless the AEAD was broken; be loud if it does
        raise KeystoreError("keystore DID does not match its key")
    return identity


def save_identity(
    path: str | os.PathLike[str],
    identity: Identity,
    passphrase: str | bytes,
    *,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
) -> None:
    """Write ``identity`` to ``path``, encrypted under ``passphrase``; the file's mode is 0600.

    The write is atomic: a temporary file in the same directory is written and fsynced, then renamed over
    ``path`` and the directory fsynced.  After a crash ``path`` holds either the old keystore or the new one.

    ``opslimit`` (passes) and ``memlimit`` (bytes) are the Argon2id cost, stored in the file; the defaults are
    libsodium's "moderate" (3 passes, 256 MiB).  Lower them only in tests.

    Raises :class:`~streams.errors.LocalProtocolError` -- before touching the file system -- for an empty
    passphrase, one that is not ``str``/``bytes`` (or a ``str`` UTF-8 cannot encode), or limits outside
    ``MIN_*..MAX_*``; and
    :class:`~streams.errors.KeystoreError`, with the ``OSError`` chained, if the file cannot be written
    (``path`` and its directory are then left as they were).
    """
    if not isinstance(identity, Identity):
        raise LocalProtocolError("save_identity needs an Identity")
    pw = _passphrase_bytes(passphrase)
    if not pw:
        raise LocalProtocolError("refusing to encrypt a keystore under an empty passphrase")
    ops, mem = _check_limits(opslimit, memlimit)
    salt = os.urandom(SALT_SIZE)
    nonce = os.urandom(_NONCE_SIZE)
    header = _header(identity.did, ops, mem, salt)
    key = derive_key(pw, salt, ops, mem)
    ciphertext = _crypto.aead_encrypt(key, nonce, _aad(header), identity.export_seed())
    data = _dump({**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)})
    _atomic_write(os.fspath(path), data)


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp: str | None = None
    try:
        # mkstemp creates the file with mode 0600 and O_EXCL, whatever the umask.
        fd, tmp = tempfile.mkstemp(prefix=".keystore-", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        # Make the rename itself durable (POSIX: a rename is persisted by fsyncing the directory).
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise KeystoreError(f"cannot write keystore: {exc.strerror or type(exc).__name__}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):  # best effort: a stray temp file holds only ciphertext
                os.unlink(tmp)
