"""``streams credential issue|show|verify|revoke|status-list create``: W3C verifiable credentials from the shell.

Thin wrappers over :mod:`streams.credentials` (VC 2.0, eddsa-jcs-2022 proofs, Bitstring Status List):

* ``issue`` signs a credential about a subject DID with the issuer's keystore; with ``--status-list`` it gets
  a revocation entry in that list (the list must be the issuer's own, or nobody could check it).
* ``show`` prints a credential's fields *without* verifying anything.
* ``verify`` checks proof, validity period and status (fail closed: a credential with a status entry whose
  list is not given is refused), then optionally the issuer and type; exit 1 with the typed reason if not.
* ``status-list create`` makes an empty signed status list (131,072 entries, the BSL minimum).
* ``revoke`` sets a credential's bit and re-signs the list in place (atomically).  Publish the new file where
  verifiers fetch it; anchoring its digest (printed) makes a rollback detectable.

With ``--ledger sqlite:PATH``, ``status-list create`` and ``revoke`` also anchor the new list version there
(:mod:`streams.status_anchor`), and ``revoke`` refuses a list that was anchored there before a newer version (an
older copy put back in the file would otherwise be re-signed as the newest, undoing the revocations since);
``status-list create`` refuses an id its issuer already anchored there unless ``--force`` (the new, empty list
would become the newest version).  The ledger is opened and read before the file is written, so a bad spec or
an unusable ledger changes nothing;
if the append itself fails after the write, the error says so (the new file is in place but not anchored:
verifiers reading the ledger refuse it until the command is run again).

Claims: ``--claim k=v`` gives the string ``v``; ``--claim k:=JSON`` gives a JSON value (number, bool,
object...).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import credentials as vc
from .. import keystore
from ..errors import DecodeError, LedgerError, StreamsError
from ..identity import Identity, KeyResolver, public_key_from_did
from ._common import (
    CheckFailed,
    Result,
    UsageError,
    add_command,
    add_group,
    add_passphrase_options,
    dump_json,
    now,
    parse_time,
    printable,
    read_json_file,
    read_passphrase,
    to_ms,
    write_file_atomic,
)

if TYPE_CHECKING:
    from ..ledger.embedded import EmbeddedLedger

__all__ = ["load_status_lists", "register"]

_log = logging.getLogger("streams.cli.credential")


def _load_issuer(args: argparse.Namespace) -> Identity:
    passphrase = read_passphrase(args)
    return keystore.load_identity(args.issuer_keystore, passphrase)


def _check_did(did: str, what: str) -> str:
    try:
        public_key_from_did(did)
    except DecodeError as exc:
        raise UsageError(f"{what}: {exc}") from None
    return did


def _parse_claims(items: list[str]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--claim {item!r}: expected KEY=VALUE or KEY:=JSON")
        parsed: Any = value
        if key.endswith(":"):
            key = key[:-1]
            try:
                parsed = json.loads(value)
            except ValueError:
                raise UsageError(f"--claim {key}: value is not JSON") from None
        if not key or key in claims:
            raise UsageError(f"--claim {key!r}: empty or repeated claim name")
        claims[key] = parsed
    return claims


def _status_list_doc(path: str) -> dict[str, Any]:
    doc = read_json_file(path, "status list")
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise UsageError(f"status list {path} is not a credential with a string id")
    types = doc.get("type")
    # (A list of names, or one name: not `in` whatever it is -- a substring of a string, a TypeError of a number.)
    if "BitstringStatusListCredential" not in (types if isinstance(types, list) else [types]):
        raise UsageError(f"{path} is not a BitstringStatusListCredential")
    return doc


def load_status_lists(paths: list[str]) -> vc.StatusListSource:
    """A :class:`~streams.credentials.StatusListSource` holding the status-list credentials in ``paths``.

    Their signatures are checked when a credential is verified against them, not here.  Raises
    :class:`UsageError` for an unreadable file or one that is not a status-list credential.
    """
    source = vc.StatusListSource()
    for path in paths:
        source.publish(_status_list_doc(path))
    return source


def _summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The interesting fields of a credential document, read without verification."""
    subject = doc.get("credentialSubject")
    subject = subject if isinstance(subject, dict) else {}
    issuer = doc.get("issuer")
    status = doc.get("credentialStatus")
    return {
        "id": doc.get("id"),
        "type": doc.get("type"),
        "issuer": issuer.get("id") if isinstance(issuer, dict) else issuer,
        "subject": subject.get("id"),
        "claims": {k: v for k, v in subject.items() if k != "id"},
        "validFrom": doc.get("validFrom"),
        "validUntil": doc.get("validUntil"),
        "status": (
            {"list": status.get("statusListCredential"), "index": status.get("statusListIndex"),
             "purpose": status.get("statusPurpose")}
            if isinstance(status, dict) else status
        ),
    }


def _text(summary: Mapping[str, Any]) -> str:
    lines = []
    for key, value in summary.items():
        if value is None or value == {}:
            continue
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        lines.append(f"{key}: {printable(shown)}")  # (show prints fields of a file nobody verified)
    return "\n".join(lines)


# --- commands ---


def _issue(args: argparse.Namespace) -> Result:
    subject = _check_did(args.subject, "--subject")
    claims = _parse_claims(args.claim or [])
    valid_from = parse_time(args.valid_from, "--valid-from") if args.valid_from else now()
    valid_until = parse_time(args.valid_until, "--valid-until") if args.valid_until else None
    if valid_until is not None and valid_until <= valid_from:
        raise UsageError("--valid-until must be after --valid-from")
    if (args.status_list is None) != (args.status_index is None):
        raise UsageError("--status-list and --status-index go together")
    issuer = _load_issuer(args)
    status: tuple[str, int] | None = None
    purpose = "revocation"
    if args.status_list is not None:
        lst = _status_list_doc(args.status_list)
        if lst.get("issuer") != issuer.did:
            # verify_credential only trusts a status list signed by the credential's own issuer (STRICT).
            raise UsageError(f"status list {args.status_list} belongs to another issuer")
        list_subject = lst.get("credentialSubject")
        bits = vc.StatusList.decode(list_subject.get("encodedList") if isinstance(list_subject, dict) else None)
        if not 0 <= args.status_index < bits.size:
            raise UsageError(f"--status-index must be in 0..{bits.size - 1}")
        list_purpose = list_subject.get("statusPurpose") if isinstance(list_subject, dict) else None
        if bits.get(args.status_index):
            # Such a credential would fail every verification from the start.  (Indices already given to other
            # credentials are the issuer's bookkeeping: a status list does not record them.)
            raise UsageError(f"index {args.status_index} is already set ({list_purpose or 'revocation'}) in "
                             f"{args.status_list}: give each credential an index of its own")
        purpose = list_purpose if isinstance(list_purpose, str) else "revocation"
        status = (lst["id"], args.status_index)
    doc = vc.issue_credential(
        issuer, subject, args.type, claims, valid_from=valid_from, valid_until=valid_until, status=status,
        status_purpose=purpose, created=now(), credential_id=args.id,
    )
    write_file_atomic(args.out, dump_json(doc), overwrite=args.force)
    _log.info("issued %s credential for %s to %s", ",".join(args.type), subject, args.out)
    summary = _summary(doc)
    return Result({"ok": True, "file": args.out, **summary}, f"wrote {args.out}\n{_text(summary)}")


def _show(args: argparse.Namespace) -> Result:
    doc = read_json_file(args.file, "credential")
    if not isinstance(doc, dict):
        raise UsageError(f"{args.file} is not a JSON object")
    summary = _summary(doc)
    # "verified": false says this command did not check it (`credential verify` does), not that it failed.
    return Result({"ok": True, "verified": False, **summary},
                  _text(summary) + "\n(not verified: use `streams credential verify`)")


def _verify(args: argparse.Namespace) -> Result:
    doc = read_json_file(args.file, "credential")
    trusted = {_check_did(d, "--trusted-issuer") for d in args.trusted_issuer or []}
    at = parse_time(args.at, "--at") if args.at else now()
    lists = load_status_lists(args.status_list) if args.status_list else None
    # Raises a CredentialError (exit 1, with its CredentialFailure) when the proof, period or status fail.
    cred = vc.verify_credential(doc, to_ms(at), status_lists=lists)
    if trusted and cred.issuer not in trusted:
        raise CheckFailed("credential issuer is not trusted", "untrusted issuer")
    if args.type and args.type not in cred.types:
        raise CheckFailed(f"credential is not of type {args.type}", "wrong type")
    if args.subject and cred.subject != args.subject:
        raise CheckFailed("credential is about another subject", "wrong subject")
    summary = _summary(cred.document)
    return Result({"ok": True, **summary}, f"valid\n{_text(summary)}")


def _status_list_create(args: argparse.Namespace) -> Result:
    try:
        bits = vc.StatusList(args.size)
    except ValueError:
        raise UsageError(f"--size must be a multiple of 8, at least {vc.BSL_MIN_ENTRIES}") from None
    issuer = _load_issuer(args)
    t = now()
    doc = vc.issue_status_list_credential(issuer, args.id, bits, purpose=args.purpose, valid_from=t, created=t)
    with _StatusLedger(args, issuer, args.id) as ledger:
        if not args.force:
            ledger.require_new()
        write_file_atomic(args.out, dump_json(doc), overwrite=args.force)
        anchor = ledger.anchor(doc, f"{args.out} was written")
    digest = vc.status_list_digest(doc).hex()
    data = {"ok": True, "file": args.out, "id": args.id, "issuer": issuer.did, "size": bits.size,
            "purpose": args.purpose, "digest": digest, "anchor": anchor}
    return Result(data, f"wrote {args.out}\nid: {args.id}\nsize: {bits.size}\ndigest: {digest}")


class _StatusLedger:
    """``--ledger``: opened (and read, to number the next version) on entry, *before* the caller writes the
    list file, so that a bad spec or an unusable ledger leaves the file untouched.  :meth:`anchor` then
    anchors the written version, signed by the issuer (a rollback is then refused by verifiers that read the
    ledger, see :mod:`streams.status_anchor`)."""

    def __init__(self, args: argparse.Namespace, issuer: Identity, list_id: str) -> None:
        self._spec: str | None = args.ledger
        self._issuer = issuer
        self._list_id = list_id
        self._ledger: EmbeddedLedger | None = None

    def __enter__(self) -> _StatusLedger:
        if self._spec is None:
            return self
        kind, _, path = self._spec.partition(":")
        if kind != "sqlite" or not path:
            # Verifiers read status anchors by ledger position, which only the embedded ledger offers.
            raise UsageError("--ledger takes sqlite:PATH (status lists are anchored on an embedded ledger)")
        from ..ledger.embedded import EmbeddedLedger
        from ..status_anchor import next_status_version

        self._ledger = EmbeddedLedger(path)  # LedgerError if it cannot be opened
        try:
            next_status_version(self._ledger, self._list_id, self._issuer.did)  # can it be read?
        except BaseException:
            self._ledger.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ledger is not None:
            self._ledger.close()

    def require_new(self) -> None:
        """Refuse (:class:`UsageError`) to anchor a new, empty list under an id its issuer already anchored on the
        ledger: verifiers reading it would take the empty list as the newest version, undoing every revocation
        on the old one (``--force`` says that is meant).  Nothing to check without a ledger."""
        if self._ledger is None:
            return
        from ..status_anchor import next_status_version

        version = next_status_version(self._ledger, self._list_id, self._issuer.did)
        if version > 1:
            raise UsageError(
                f"status list {self._list_id} is already anchored on {self._spec} (version {version - 1}): a new "
                "empty list would be its newest version and undo every revocation on it; revoke on the current "
                "list, or use --force if that is what you want"
            )

    def require_current(self, doc: dict[str, Any], path: str) -> None:
        """Refuse (:class:`UsageError`) to change ``doc`` if its issuer anchored it on the ledger and then a newer
        version: an older copy put back in the file would otherwise be re-signed and anchored as the newest,
        undoing the revocations made since.  Nothing to check without a ledger."""
        if self._ledger is None:
            return
        from ..status_anchor import superseded_status_digests

        if vc.status_list_digest(doc) in superseded_status_digests(self._ledger, self._list_id, self._issuer.did):
            raise UsageError(
                f"status list {path} is an older version than the one last anchored on {self._spec}: changing it "
                "would undo the changes made since; get the latest list first"
            )

    def anchor(self, doc: dict[str, Any], written: str) -> str | None:
        """Anchor ``doc``; returns the anchor id (``None`` without ``--ledger``).  ``written`` says what was
        already done, for the error raised if the append fails."""
        if self._ledger is None:
            return None
        from ..status_anchor import publish_status_list

        try:
            return publish_status_list(self._ledger, self._issuer, doc)
        except StreamsError as exc:
            raise LedgerError(
                f"{written}, but anchoring it on {self._spec} failed ({exc}): verifiers that read that ledger "
                "refuse this list until it is anchored; run the command again"
            ) from exc


def _revoke(args: argparse.Namespace) -> Result:
    lst = _status_list_doc(args.status_list)
    issuer = _load_issuer(args)
    # Re-signing a list we cannot verify would launder whatever an attacker wrote into it: check it first.
    controller = vc.verify_proof(lst, expected_purpose="assertionMethod", resolver=KeyResolver())
    if controller != issuer.did or lst.get("issuer") != issuer.did:
        raise UsageError(f"status list {args.status_list} is not signed by this issuer")
    subject = lst.get("credentialSubject")
    if not isinstance(subject, dict):
        raise UsageError(f"status list {args.status_list} has no credentialSubject")
    bits = vc.StatusList.decode(subject.get("encodedList"))
    purpose = subject.get("statusPurpose")
    if not isinstance(purpose, str):
        raise UsageError(f"status list {args.status_list} has no single statusPurpose")
    if not 0 <= args.index < bits.size:
        raise UsageError(f"--index must be in 0..{bits.size - 1}")
    if args.clear and purpose != "suspension":
        # BSL 2.1: "revocation ... This status is not reversible."  Only a suspension can be lifted.
        raise UsageError("only a suspension list entry can be cleared; revocation is final")
    was = bits.get(args.index)
    bits.set(args.index, not args.clear)
    new = vc.issue_status_list_credential(
        issuer, lst["id"], bits, purpose=purpose, valid_from=lst.get("validFrom") or now(),
        valid_until=lst.get("validUntil"), created=now(),
    )
    with _StatusLedger(args, issuer, lst["id"]) as ledger:
        ledger.require_current(lst, args.status_list)
        write_file_atomic(args.status_list, dump_json(new), overwrite=True)
        _log.info("status list %s: index %d %s", lst["id"], args.index, "cleared" if args.clear else "set")
        anchor = ledger.anchor(new, f"{args.status_list} was rewritten (index {args.index} "
                                    f"{'cleared' if args.clear else 'set'})")
    digest = vc.status_list_digest(new).hex()
    data = {"ok": True, "file": args.status_list, "id": lst["id"], "index": args.index, "purpose": purpose,
            "set": not args.clear, "was_set": was, "digest": digest, "anchor": anchor}
    verb = "cleared" if args.clear else ("revoked" if purpose == "revocation" else "suspended")
    anchored = f"\nanchored on {args.ledger.split(':', 1)[0]} ledger entry {anchor}" if anchor is not None else ""
    return Result(data, f"{verb} index {args.index} in {args.status_list}\ndigest: {digest}{anchored}")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``streams credential ...``."""
    group = add_group(subparsers, "credential", help="issue, show, verify and revoke verifiable credentials",
                      description=__doc__)

    i = add_command(group, "issue", _issue, help="issue a credential about a DID, signed by the issuer's keystore",
                    description=(
                        "Issue a W3C VC 2.0 credential (eddsa-jcs-2022 proof) about --subject, signed with the\n"
                        "issuer's keystore, and write it to --out.  With --status-list (the issuer's own list)\n"
                        "and --status-index it gets a revocation entry there: an index already set in the list\n"
                        "is refused, and each credential needs an index of its own (the list does not record\n"
                        "which are given).  Claims: --claim k=v gives the string v; --claim k:=JSON gives a JSON\n"
                        "value (number, bool, object...)."))
    i.add_argument("--issuer-keystore", required=True, metavar="PATH", help="the issuer's keystore")
    i.add_argument("--subject", required=True, metavar="DID", help="the did:key the credential is about")
    i.add_argument("--type", required=True, action="append", metavar="T",
                   help="credential type, e.g. PaymentProviderCredential (repeatable)")
    i.add_argument("--claim", action="append", metavar="K=V", help="a claim: K=string or K:=JSON (repeatable)")
    i.add_argument("--valid-from", metavar="ISO", help="start of validity (default now)")
    i.add_argument("--valid-until", metavar="ISO", help="end of validity (default: none)")
    i.add_argument("--id", metavar="URL", help="the credential's id")
    i.add_argument("--status-list", metavar="FILE", help="the issuer's status-list credential file")
    i.add_argument("--status-index", type=int, metavar="N", help="this credential's index in the status list")
    i.add_argument("--out", required=True, metavar="FILE", help="where to write the credential (JSON)")
    i.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_passphrase_options(i, "issuer keystore")

    s = add_command(group, "show", _show, help="print a credential's fields (does NOT verify it)")
    s.add_argument("file", metavar="FILE", help="credential file (JSON)")

    v = add_command(group, "verify", _verify,
                    help="verify a credential: proof, validity period, status; exit 1 if it fails",
                    description=(
                        "Verify a credential at --at (default now).  A credential with a status entry is\n"
                        "refused unless its status list is given (fail closed).  Exit 0 valid, 1 invalid\n"
                        "(with the reason, e.g. 'revoked', 'bad proof', 'expired'), 2 usage error."))
    v.add_argument("file", metavar="FILE", help="credential file (JSON)")
    v.add_argument("--status-list", action="append", metavar="FILE", help="status-list credential (repeatable)")
    v.add_argument("--trusted-issuer", action="append", metavar="DID", help="accept only these issuers (repeatable)")
    v.add_argument("--type", metavar="T", help="require this credential type")
    v.add_argument("--subject", metavar="DID", help="require this subject DID")
    v.add_argument("--at", metavar="ISO", help="verify at this time instead of now")

    r = add_command(group, "revoke", _revoke,
                    help="set a credential's bit in a status list and re-sign the list in place")
    r.add_argument("--issuer-keystore", required=True, metavar="PATH", help="the issuer's keystore")
    r.add_argument("--status-list", required=True, metavar="FILE", help="the status-list credential to update")
    r.add_argument("--index", required=True, type=int, metavar="N", help="the credential's status index")
    r.add_argument("--clear", action="store_true", help="lift a suspension instead (suspension lists only)")
    r.add_argument("--ledger", metavar="SPEC", help="also anchor the new list version: sqlite:PATH")
    add_passphrase_options(r, "issuer keystore")

    sl = add_group(group, "status-list", help="manage Bitstring Status List credentials")
    c = add_command(sl, "create", _status_list_create, help="create an empty signed status list")
    c.add_argument("--issuer-keystore", required=True, metavar="PATH", help="the issuer's keystore")
    c.add_argument("--id", required=True, metavar="URL", help="the list's id (URL credentials will point to)")
    c.add_argument("--out", required=True, metavar="FILE", help="where to write the list (JSON)")
    c.add_argument("--purpose", choices=("revocation", "suspension"), default="revocation",
                   help="status purpose (default revocation)")
    c.add_argument("--size", type=int, default=vc.BSL_MIN_ENTRIES, help=argparse.SUPPRESS)
    c.add_argument("--ledger", metavar="SPEC", help="also anchor the list on this ledger: sqlite:PATH")
    c.add_argument("--force", action="store_true", help="replace --out, or with --ledger anchor a new list under an "
                   "id already anchored (either un-revokes everything on the old list!)")
    add_passphrase_options(c, "issuer keystore")
