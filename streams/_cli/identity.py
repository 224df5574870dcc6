"""``streams identity create|show``: make an identity in an encrypted keystore, and show its public keys.

``create`` writes a new Ed25519 identity to a keystore file (mode 0600) encrypted under a passphrase with
Argon2id at libsodium's "moderate" cost (THREATS 9).  ``--kdf-fast`` (not shown in ``--help``) uses the
minimum cost instead: it exists for tests only and protects nothing.

``show`` needs no passphrase: the DID is stored in clear in the keystore.  It is not authenticated until the
passphrase opens the file, so use it to tell keystores apart, not as proof of what key the file holds.
"""

from __future__ import annotations

import argparse
import logging
import os

from .. import keystore
from ..identity import Identity, PublicIdentity, x25519_multibase
from ._common import Result, UsageError, add_command, add_group, add_passphrase_options, read_passphrase

__all__ = ["register"]

_log = logging.getLogger("streams.cli.identity")


def _public_doc(did: str, path: str) -> dict[str, object]:
    pub = PublicIdentity.from_did(did)
    return {"ok": True, "did": did, "x25519": x25519_multibase(pub.kx_public), "keystore": path}


def _create(args: argparse.Namespace) -> Result:
    path: str = args.keystore
    if os.path.lexists(path) and not args.force:
        # Overwriting a keystore destroys the identity it holds; nothing can bring it back.
        raise UsageError(f"{path} exists; refusing to replace an identity (use --force)")
    passphrase = read_passphrase(args, confirm=True)
    if args.kdf_fast:
        _log.warning("--kdf-fast: minimal Argon2id cost; this keystore is NOT protected (tests only)")
        ops, mem = keystore.MIN_OPSLIMIT, keystore.MIN_MEMLIMIT
    else:
        ops, mem = keystore.DEFAULT_OPSLIMIT, keystore.DEFAULT_MEMLIMIT
    identity = Identity.generate()
    _log.info("writing keystore %s (Argon2id opslimit=%d memlimit=%d)", path, ops, mem)
    keystore.save_identity(path, identity, passphrase, opslimit=ops, memlimit=mem)
    doc = _public_doc(identity.did, path)
    return Result(doc, f"created {path}\ndid: {doc['did']}\nx25519: {doc['x25519']}")


def _show(args: argparse.Namespace) -> Result:
    did = keystore.read_public(args.keystore)
    doc = _public_doc(did, args.keystore)
    return Result(doc, f"did: {doc['did']}\nx25519: {doc['x25519']}")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``streams identity create|show``."""
    group = add_group(subparsers, "identity", help="create and show identities (encrypted keystore files)")
    c = add_command(
        group,
        "create",
        _create,
        help="create a new identity in an encrypted keystore file (mode 0600)",
        description=(
            "Create a new Ed25519 identity (did:key) and write it to a keystore file encrypted under a\n"
            "passphrase (Argon2id, libsodium 'moderate': 3 passes, 256 MiB).  The passphrase is read from\n"
            "an environment variable, a file, or the terminal -- never from the command line.  A store made\n"
            "from the keystore holds the same seed under the same passphrase at a lower cost ('interactive':\n"
            "2 passes, 64 MiB, paid at every start): keep stores as private as keystores (README)."
        ),
    )
    c.add_argument("--keystore", required=True, metavar="PATH", help="keystore file to create")
    c.add_argument("--force", action="store_true", help="replace an existing keystore (its identity is lost)")
    # Tests only: the minimum Argon2id cost makes a keystore as weak as its passphrase.
    c.add_argument("--kdf-fast", action="store_true", help=argparse.SUPPRESS)
    add_passphrase_options(c, "new keystore")

    s = add_command(
        group,
        "show",
        _show,
        help="print the DID and X25519 key of a keystore (no passphrase needed)",
        description=(
            "Print the DID and the X25519 key-agreement key (multibase) of a keystore, without the\n"
            "passphrase.  The DID is stored in clear and is authenticated only when the passphrase opens\n"
            "the file."
        ),
    )
    s.add_argument("--keystore", required=True, metavar="PATH", help="keystore file")
