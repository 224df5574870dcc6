"""Keystore files and secrets at rest (THREATS 9): round trips, tampering, wrong passphrases, atomic writes.

Every test uses libsodium's minimum Argon2id cost (1 pass, 8 KiB) so the suite stays fast; the format and the
checks are the same at any cost.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any

import pytest

from streams.errors import BadPassphrase, KeystoreError, LocalProtocolError
from streams.identity import Identity
from streams.keystore import (
    MAX_MEMLIMIT,
    MAX_OPSLIMIT,
    MIN_MEMLIMIT,
    MIN_OPSLIMIT,
    derive_key,
    load_identity,
    open_secret,
    read_public,
    save_identity,
    seal_secret,
)

FAST: dict[str, int] = {"opslimit": MIN_OPSLIMIT, "memlimit": MIN_MEMLIMIT}
PASS = "correct horse battery staple"
SEED = bytes(range(32))
SALT = bytes(16)

# A keystore written by this implementation (seed = bytes(range(32)), passphrase PASS, minimum cost).  It pins
# the format: a change that cannot read it breaks every keystore already on disk.
KAT_DID = "did:key:z6MkehRgf7yJbgaGfYsdoAsKdBPE3dj2CYhowQdcjqSJgvVd"
KAT_FILE = textwrap.dedent(
    """\
    {
      "cipher": "xchacha20poly1305-ietf",
      "ciphertext": "ZBS9KWNxqbXST31QLg7CBFL6Pu6Q3YQBMsF68AqOas16XcgjosjVE4Ad+UB1kb3N",
      "did": "did:key:z6MkehRgf7yJbgaGfYsdoAsKdBPE3dj2CYhowQdcjqSJgvVd",
      "format": "streams-keystore",
      "kdf": {
        "alg": "argon2id",
        "memlimit": 8192,
        "opslimit": 1,
        "salt": "X4Z/Zljm00tGJMGyvvmGLg=="
      },
      "nonce": "2D6gvgKqwug4/PiTORS0lm+Vc3n9fnyg",
      "version": 1
    }
    """
).encode()


@pytest.fixture
def ident() -> Identity:
    return Identity.from_seed(SEED)


@pytest.fixture
def kat(tmp_path: Path) -> Path:
    path = tmp_path / "kat.json"
    path.write_bytes(KAT_FILE)
    return path


def _secret_renderings(ident: Identity) -> list[bytes]:
    seed = ident.export_seed()
    return [seed, seed.hex().encode(), base64.b64encode(seed), base64.b64encode(seed).rstrip(b"=")]


def _edit(path: Path, change: Any) -> None:
    """Apply ``change(doc)`` to the JSON document and write it back in canonical form."""
    doc = json.loads(path.read_bytes())
    change(doc)
    path.write_bytes((json.dumps(doc, sort_keys=True, indent=2) + "\n").encode())


def _flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# --- round trips ---


def test_known_answer_file_loads(kat: Path) -> None:
    assert read_public(kat) == KAT_DID
    loaded = load_identity(kat, PASS)
    assert loaded.did == KAT_DID
    assert loaded.export_seed() == SEED


@pytest.mark.parametrize("passphrase", [PASS, PASS.encode(), "pässwörd ✓", b"\x00\xff binary"])
def test_round_trip(tmp_path: Path, ident: Identity, passphrase: str | bytes) -> None:
    path = tmp_path / "id.json"
    save_identity(path, ident, passphrase, **FAST)
    assert read_public(path) == ident.did
    loaded = load_identity(path, passphrase)
    assert loaded == ident
    assert loaded.export_seed() == SEED
    assert loaded.sign(bytes(32)) == ident.sign(bytes(32))


def test_str_and_bytes_passphrases_agree(tmp_path: Path, ident: Identity) -> None:
    path = tmp_path / "id.json"
    save_identity(path, ident, "pässwörd", **FAST)
    assert load_identity(path, "pässwörd".encode()) == ident


def test_passphrase_is_nfc_normalised(tmp_path: Path, ident: Identity) -> None:
    path = tmp_path / "id.json"
    save_identity(path, ident, "caf\u00e9", **FAST)  # precomposed e-acute
    assert load_identity(path, "cafe\u0301") == ident  # e + combining acute accent


def test_each_save_uses_fresh_salt_and_nonce(tmp_path: Path, ident: Identity) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    save_identity(a, ident, PASS, **FAST)
    save_identity(b, ident, PASS, **FAST)
    da, db = json.loads(a.read_bytes()), json.loads(b.read_bytes())
    assert da["kdf"]["salt"] != db["kdf"]["salt"]
    assert da["nonce"] != db["nonce"]
    assert da["ciphertext"] != db["ciphertext"]


def test_parameters_are_stored(tmp_path: Path, ident: Identity) -> None:
    path = tmp_path / "id.json"
    save_identity(path, ident, PASS, opslimit=2, memlimit=16384)
    doc = json.loads(path.read_bytes())
    assert doc["kdf"]["opslimit"] == 2
    assert doc["kdf"]["memlimit"] == 16384
    assert load_identity(path, PASS) == ident


def test_file_holds_no_secret(tmp_path: Path, ident: Identity) -> None:
    path = tmp_path / "id.json"
    save_identity(path, ident, PASS, **FAST)
    data = path.read_bytes()
    for rendering in [*_secret_renderings(ident), PASS.encode()]:
        assert rendering not in data


def test_overwrite_replaces(tmp_path: Path, ident: Identity) -> None:
    path = tmp_path / "id.json"
    save_identity(path, ident, PASS, **FAST)
    other = Identity.from_seed(bytes(32))
    save_identity(path, other, "another passphrase", **FAST)
    assert load_identity(path, "another passphrase") == other
    with pytest.raises(BadPassphrase):
        load_identity(path, PASS)


# --- file mode and atomic writes ---


def test_mode_0600(tmp_path: Path, ident: Identity) -> None:
    path = tmp_path / "id.json"
    old_umask = os.umask(0)  # the most permissive umask: the mode must not depend on it
    try:
        save_identity(path, ident, PASS, **FAST)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_mode_0600_when_replacing_a_readable_file(tmp_path: Path, ident: Identity) -> None:
    path = tmp_path / "id.json"
    path.write_bytes(b"old")
    path.chmod(0o644)
    save_identity(path, ident, PASS, **FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_temporary_files_left(tmp_path: Path, ident: Identity) -> None:
    save_identity(tmp_path / "id.json", ident, PASS, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.json"]


def test_missing_directory(tmp_path: Path, ident: Identity) -> None:
    path = tmp_path / "no-such-dir" / "id.json"
    with pytest.raises(KeystoreError) as info:
        save_identity(path, ident, PASS, **FAST)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert not (tmp_path / "no-such-dir").exists()


def test_rename_onto_a_directory_fails_cleanly(tmp_path: Path, ident: Identity) -> None:
    """The temporary file is fully written, then the rename fails (a real EISDIR): the target directory is
    untouched and the temporary file is removed."""
    target = tmp_path / "id.json"
    target.mkdir()
    (target / "inside").write_bytes(b"keep me")
    with pytest.raises(KeystoreError) as info:
        save_identity(target, ident, PASS, **FAST)
    assert isinstance(info.value.__cause__, OSError)
    assert (target / "inside").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.json"]


def test_failed_write_leaves_old_keystore_intact(tmp_path: Path, ident: Identity) -> None:
    """A write that fails half way (file size limit: a real EFBIG from the kernel) leaves the old keystore
    byte-for-byte intact and no temporary file behind.  Runs in a child so the limit cannot hit pytest."""
    path = tmp_path / "id.json"
    old = Identity.from_seed(bytes(32))
    save_identity(path, old, PASS, **FAST)
    before = path.read_bytes()
    code = textwrap.dedent(
        f"""
        import resource, sys
        from streams.errors import KeystoreError
        from streams.identity import Identity
        from streams.keystore import save_identity
        ident = Identity.from_seed(bytes(range(32)))
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))  # CPython ignores SIGXFSZ: write gets EFBIG
        try:
            save_identity({str(path)!r}, ident, "new passphrase", opslimit=1, memlimit=8192)
        except KeystoreError as exc:
            sys.exit(0 if isinstance(exc.__cause__, OSError) else 2)
        sys.exit(1)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert path.read_bytes() == before
    assert load_identity(path, PASS) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.json"]


@pytest.mark.parametrize(
    ("passphrase", "limits"),
    [
        (None, FAST),
        (12345, FAST),
        (["list"], FAST),
        ("", FAST),
        (b"", FAST),
        (PASS, {"opslimit": 0, "memlimit": MIN_MEMLIMIT}),
        (PASS, {"opslimit": MAX_OPSLIMIT + 1, "memlimit": MIN_MEMLIMIT}),
        (PASS, {"opslimit": MIN_OPSLIMIT, "memlimit": MIN_MEMLIMIT - 1}),
        (PASS, {"opslimit": MIN_OPSLIMIT, "memlimit": MAX_MEMLIMIT + 1}),
        (PASS, {"opslimit": True, "memlimit": MIN_MEMLIMIT}),
        (PASS, {"opslimit": 1.0, "memlimit": MIN_MEMLIMIT}),
    ],
)
def test_bad_arguments_leave_existing_file_unchanged(
    tmp_path: Path, ident: Identity, passphrase: Any, limits: dict[str, Any]
) -> None:
    path = tmp_path / "id.json"
    path.write_bytes(KAT_FILE)
    with pytest.raises(LocalProtocolError):
        save_identity(path, ident, passphrase, **limits)
    assert path.read_bytes() == KAT_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.json"]


def test_save_needs_an_identity(tmp_path: Path) -> None:
    with pytest.raises(LocalProtocolError):
        save_identity(tmp_path / "x.json", SEED, PASS, **FAST)  # type: ignore[arg-type]
    assert not (tmp_path / "x.json").exists()


# --- wrong passphrase, missing and malformed files ---


@pytest.mark.parametrize("wrong", ["", "correct horse battery stapl", PASS + " ", PASS.upper(), b"\x00"])
def test_wrong_passphrase(kat: Path, wrong: str | bytes) -> None:
    with pytest.raises(BadPassphrase) as info:
        load_identity(kat, wrong)
    assert isinstance(info.value, ValueError)


def test_errors_never_show_passphrase_or_seed(kat: Path, ident: Identity) -> None:
    secret_words = "tr0ub4dor-and-3-unique-w0rds"
    with pytest.raises(BadPassphrase) as info:
        load_identity(kat, secret_words)
    texts = [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
    for text in texts:
        assert secret_words not in text
        assert PASS not in text
        for rendering in _secret_renderings(ident):
            assert rendering.decode("latin-1") not in text


def test_missing_file(tmp_path: Path) -> None:
    for call in (lambda p: load_identity(p, PASS), read_public):
        with pytest.raises(KeystoreError) as info:
            call(tmp_path / "absent.json")
        assert not isinstance(info.value, BadPassphrase)
        assert isinstance(info.value.__cause__, FileNotFoundError)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError) as info:
        load_identity(tmp_path, PASS)
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n",
        b"\x00" * 64,
        os.urandom(256),
        b"[]\n",
        b'"streams-keystore"\n',
        b"null\n",
        b"{}\n",
        b"[" * 5000 + b"]" * 5000,
        KAT_FILE.replace(b"\n", b"\r\n"),
        KAT_FILE.rstrip(b"\n"),
        KAT_FILE + b"\n",
        KAT_FILE + b" ",
        b" " + KAT_FILE,
        b"\xef\xbb\xbf" + KAT_FILE,  # UTF-8 byte order mark
        KAT_FILE + b" " * 20000,  # over the size limit
    ],
)
def test_garbage_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    with pytest.raises(KeystoreError) as info:
        load_identity(path, PASS)
    assert not isinstance(info.value, BadPassphrase)
    with pytest.raises(KeystoreError):
        read_public(path)


def test_every_truncation_refused(kat: Path) -> None:
    for n in range(len(KAT_FILE)):
        kat.write_bytes(KAT_FILE[:n])
        with pytest.raises(KeystoreError):
            load_identity(kat, PASS)


@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80])
def test_every_byte_edit_detected(kat: Path, mask: int) -> None:
    """Changing any single byte of the file makes loading fail (THREATS 9: integrity of keys at rest)."""
    for i in range(len(KAT_FILE)):
        edited = bytearray(KAT_FILE)
        edited[i] ^= mask
        kat.write_bytes(bytes(edited))
        with pytest.raises(KeystoreError):
            load_identity(kat, PASS)


# Edits that keep the file well formed: only the AEAD can notice them, and it does.
SEMANTIC_EDITS: dict[str, Any] = {
    "salt": lambda d: d["kdf"].__setitem__("salt", _flip_b64(d["kdf"]["salt"])),
    "nonce": lambda d: d.__setitem__("nonce", _flip_b64(d["nonce"])),
    "ciphertext": lambda d: d.__setitem__("ciphertext", _flip_b64(d["ciphertext"])),
    "opslimit": lambda d: d["kdf"].__setitem__("opslimit", 2),
    "memlimit": lambda d: d["kdf"].__setitem__("memlimit", 16384),
    "did (another valid did:key)": lambda d: d.__setitem__("did", Identity.from_seed(bytes(32)).did),
}


@pytest.mark.parametrize("edit", list(SEMANTIC_EDITS.values()), ids=list(SEMANTIC_EDITS))
def test_well_formed_edit_detected_by_aead(kat: Path, edit: Any) -> None:
    _edit(kat, edit)
    assert kat.read_bytes() != KAT_FILE
    read_public(kat)  # still well formed: only the passphrase check can notice
    with pytest.raises(BadPassphrase):
        load_identity(kat, PASS)


def test_did_edit_is_not_trusted_by_read_public_alone(kat: Path) -> None:
    """read_public is documented as unauthenticated; load_identity is what binds the DID."""
    other = Identity.from_seed(bytes(32)).did
    _edit(kat, lambda d: d.__setitem__("did", other))
    assert read_public(kat) == other
    with pytest.raises(BadPassphrase):
        load_identity(kat, PASS)


def _drop(key: str) -> Any:
    return lambda d: d.pop(key)


STRUCTURAL_EDITS: dict[str, Any] = {
    "format": lambda d: d.__setitem__("format", "other-keystore"),
    "version 2": lambda d: d.__setitem__("version", 2),
    "version as string": lambda d: d.__setitem__("version", "1"),
    "version as bool": lambda d: d.__setitem__("version", True),
    "cipher": lambda d: d.__setitem__("cipher", "aes-256-gcm"),
    "kdf alg": lambda d: d["kdf"].__setitem__("alg", "scrypt"),
    "kdf not an object": lambda d: d.__setitem__("kdf", "argon2id"),
    "extra field": lambda d: d.__setitem__("comment", "hello"),
    "extra kdf field": lambda d: d["kdf"].__setitem__("parallelism", 1),
    "missing nonce": _drop("nonce"),
    "missing did": _drop("did"),
    "missing ciphertext": _drop("ciphertext"),
    "missing salt": lambda d: d["kdf"].pop("salt"),
    "opslimit 0": lambda d: d["kdf"].__setitem__("opslimit", 0),
    "opslimit huge": lambda d: d["kdf"].__setitem__("opslimit", 2**32),
    "opslimit float": lambda d: d["kdf"].__setitem__("opslimit", 1.0),
    "memlimit too small": lambda d: d["kdf"].__setitem__("memlimit", 4096),
    "memlimit 4 TiB": lambda d: d["kdf"].__setitem__("memlimit", 4 << 40),
    "memlimit negative": lambda d: d["kdf"].__setitem__("memlimit", -8192),
    "did invalid": lambda d: d.__setitem__("did", "did:key:z6Mk"),
    "did not a string": lambda d: d.__setitem__("did", 7),
    "did with newline": lambda d: d.__setitem__("did", d["did"] + "\n"),
    "salt short": lambda d: d["kdf"].__setitem__("salt", base64.b64encode(bytes(15)).decode()),
    "nonce long": lambda d: d.__setitem__("nonce", base64.b64encode(bytes(25)).decode()),
    "ciphertext short": lambda d: d.__setitem__("ciphertext", d["ciphertext"][:-4]),
    "ciphertext empty": lambda d: d.__setitem__("ciphertext", ""),
    "nonce not base64": lambda d: d.__setitem__("nonce", "*" * 32),
    "nonce url-safe alphabet": lambda d: d.__setitem__(
        "nonce", base64.urlsafe_b64encode(b"\xfb\xff" * 12).decode()
    ),
    "nonce unpadded": lambda d: d.__setitem__("nonce", base64.b64encode(bytes(24)).decode() + "="),
    "salt non-canonical padding bits": lambda d: d["kdf"].__setitem__(
        "salt", d["kdf"]["salt"][:-3] + chr(ord(d["kdf"]["salt"][-3]) + 1) + "=="
    ),
    "nonce as bytes list": lambda d: d.__setitem__("nonce", list(bytes(24))),
}


@pytest.mark.parametrize("edit", list(STRUCTURAL_EDITS.values()), ids=list(STRUCTURAL_EDITS))
def test_structural_edit_refused_before_kdf(kat: Path, edit: Any) -> None:
    _edit(kat, edit)
    with pytest.raises(KeystoreError) as info:
        load_identity(kat, PASS)
    assert not isinstance(info.value, BadPassphrase)
    with pytest.raises(KeystoreError):
        read_public(kat)


def test_out_of_range_memlimit_reports_range(kat: Path) -> None:
    # Refused by the range check, not by an attempt to allocate 4 TiB.
    _edit(kat, lambda d: d["kdf"].__setitem__("memlimit", 4 << 40))
    with pytest.raises(KeystoreError, match="out of range"):
        load_identity(kat, PASS)


@pytest.mark.parametrize(
    "text",
    [
        # same content, other layouts
        json.dumps(json.loads(KAT_FILE), sort_keys=True) + "\n",
        json.dumps(json.loads(KAT_FILE), sort_keys=True, indent=4) + "\n",
        json.dumps(json.loads(KAT_FILE), sort_keys=True, indent=2, ensure_ascii=False).replace(": ", ":  ")
        + "\n",
        json.dumps(dict(reversed(list(json.loads(KAT_FILE).items()))), indent=2) + "\n",  # key order
        # a duplicated key (JSON parsers disagree on which one wins)
        KAT_FILE.decode().replace('"version": 1', '"version": 1,\n  "version": 1'),
        # an escaped character
        KAT_FILE.decode().replace('"format": "streams-keystore"', '"format": "streams-k\\u0065ystore"'),
    ],
)
def test_non_canonical_layout_refused(kat: Path, text: str) -> None:
    assert text.encode() != KAT_FILE
    assert json.loads(text) == json.loads(KAT_FILE)  # same content: only the layout differs
    kat.write_text(text)
    with pytest.raises(KeystoreError) as info:
        load_identity(kat, PASS)
    assert not isinstance(info.value, BadPassphrase)


# --- derive_key, seal_secret, open_secret ---


def test_derive_key_is_deterministic_and_input_sensitive() -> None:
    k = derive_key(PASS, SALT, 1, 8192)
    assert len(k) == 32
    assert derive_key(PASS.encode(), SALT, 1, 8192) == k
    others = {
        derive_key(PASS + "!", SALT, 1, 8192),
        derive_key(PASS, b"\x01" + SALT[1:], 1, 8192),
        derive_key(PASS, SALT, 2, 8192),
        derive_key(PASS, SALT, 1, 16384),
    }
    assert k not in others
    assert len(others) == 4


@pytest.mark.parametrize(
    ("passphrase", "salt", "ops", "mem"),
    [
        (PASS, bytes(15), 1, 8192),
        (PASS, bytes(17), 1, 8192),
        (PASS, "0" * 16, 1, 8192),
        (None, SALT, 1, 8192),
        (PASS, SALT, 0, 8192),
        (PASS, SALT, MAX_OPSLIMIT + 1, 8192),
        (PASS, SALT, 1, 8191),
        (PASS, SALT, 1, MAX_MEMLIMIT + 1),
    ],
)
def test_derive_key_refuses_bad_arguments(passphrase: Any, salt: Any, ops: int, mem: int) -> None:
    with pytest.raises(LocalProtocolError):
        derive_key(passphrase, salt, ops, mem)


KEY = bytes(range(100, 132))
AAD = b"streams.store/secrets/row=7"


@pytest.mark.parametrize("plaintext", [b"", b"x", bytes(range(256)) * 4])
def test_seal_round_trip(plaintext: bytes) -> None:
    blob = seal_secret(KEY, plaintext, AAD)
    assert len(blob) == len(plaintext) + 40
    assert open_secret(KEY, blob, AAD) == plaintext


def test_seal_uses_fresh_nonces() -> None:
    assert seal_secret(KEY, b"same", AAD) != seal_secret(KEY, b"same", AAD)


def test_open_refuses_other_key_or_place() -> None:
    blob = seal_secret(KEY, b"branch key", AAD)
    for key, aad in [(bytes(32), AAD), (KEY, AAD + b"8"), (KEY, b""), (KEY[:-1] + b"\x00", AAD)]:
        with pytest.raises(KeystoreError) as info:
            open_secret(key, blob, aad)
        assert not isinstance(info.value, BadPassphrase)


def test_open_detects_every_bit_flip() -> None:
    blob = seal_secret(KEY, b"sixteen byte key", AAD)
    for i in range(len(blob)):
        for bit in range(8):
            edited = bytearray(blob)
            edited[i] ^= 1 << bit
            with pytest.raises(KeystoreError):
                open_secret(KEY, bytes(edited), AAD)


def test_open_refuses_truncation_and_extension() -> None:
    blob = seal_secret(KEY, b"secret", AAD)
    for n in range(len(blob)):
        with pytest.raises(KeystoreError):
            open_secret(KEY, blob[:n], AAD)
    with pytest.raises(KeystoreError):
        open_secret(KEY, blob + b"\x00", AAD)


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), "k" * 32])
def test_seal_and_open_refuse_bad_key_size(key: Any) -> None:
    with pytest.raises(LocalProtocolError):
        seal_secret(key, b"x", AAD)
    with pytest.raises(LocalProtocolError):
        open_secret(key, bytes(64), AAD)


def test_sealed_blob_does_not_contain_plaintext() -> None:
    plaintext = b"A" * 64
    assert plaintext[:16] not in seal_secret(KEY, plaintext, AAD)


@pytest.mark.parametrize("passphrase", [None, 1234, ["pass"]])
def test_load_refuses_non_text_passphrase(kat: Path, passphrase: Any) -> None:
    with pytest.raises(LocalProtocolError):
        load_identity(kat, passphrase)


def test_fifo_instead_of_file(tmp_path: Path) -> None:
    """A FIFO at the keystore's path is refused as not a regular file, naming it; reading it used to block the
    process forever, waiting for a writer (the child runs under a timeout that only guards the test run)."""
    p = tmp_path / "me.ks"
    os.mkfifo(p)
    code = textwrap.dedent("""
        import sys
        from streams.keystore import load_identity, read_public
        for call in (lambda: load_identity(sys.argv[1], "pw"), lambda: read_public(sys.argv[1])):
            try:
                call()
            except Exception as exc:
                print(type(exc).__name__, exc)
    """)
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(root)}).stdout.splitlines()
    assert len(out) == 2, out
    for line in out:
        assert line.startswith("KeystoreError") and "me.ks" in line and "not a regular file" in line, line


def test_a_passphrase_utf8_cannot_encode_is_a_typed_error_that_shows_none_of_it(kat: Path, ident: Identity,
                                                                                 tmp_path: Path) -> None:
    """A str passphrase holding a lone surrogate -- what Python makes of bytes that are not UTF-8 in the
    environment (``--passphrase-env``) or on a terminal -- has no UTF-8 form.  It raised UnicodeEncodeError (not a
    StreamsError: the CLI printed a traceback), whose text gave away a character of the passphrase and its
    position, and which carried the whole passphrase (``.object``).  Now: LocalProtocolError, with nothing of the
    passphrase in its text, cause or context -- for a keystore and a store alike (a store's open does not call it
    a damaged store)."""
    from streams.store import Store

    bad = "sekr3t-\udcff-pass"
    made = Store.create(tmp_path / "s.db", ident, PASS, role="author", channel=b"c" * 32, author_did=ident.did,
                        **FAST)
    made.close()
    calls = [lambda: load_identity(kat, bad), lambda: save_identity(tmp_path / "new.ks", ident, bad, **FAST),
             lambda: derive_key(bad, SALT, MIN_OPSLIMIT, MIN_MEMLIMIT),
             lambda: Store.create(tmp_path / "t.db", ident, bad, role="author", channel=b"c" * 32,
                                  author_did=ident.did, **FAST),
             lambda: Store.open(tmp_path / "s.db", bad)]
    for call in calls:
        with pytest.raises(LocalProtocolError) as info:
            call()
        chain: list[BaseException] = []
        exc: BaseException | None = info.value
        while exc is not None:
            chain.append(exc)
            exc = exc.__cause__ or exc.__context__
        for e in chain:
            assert not isinstance(e, UnicodeError), chain
            for text in (str(e), repr(e)):
                assert "sekr3t" not in text and "dcff" not in text and "position" not in text, text
    assert not (tmp_path / "new.ks").exists() and not (tmp_path / "t.db").exists()
