"""``streams policy check``: validate a TOML policy file and, optionally, dry-run a decision.

With ``--did`` the policy decides a :class:`~streams.policy.SubscriptionRequest` from that DID, exactly as an
author would, on a fresh random challenge nonce and channel id.  A credential presentation is bound to that
nonce and channel (THREATS 5), so the holder must sign one for this dry run: ``--credential`` (repeatable: all
go in one presentation, as a subscriber meeting several credential rules of a ``mode = "all"`` policy sends
them) needs the holder's keystore (``--holder-keystore``, whose DID must be ``--did``).

Exit status: 0 valid file (and admitted, with ``--did``), 1 refused, 2 invalid file or usage error.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import credentials as vc
from .. import keystore
from ..errors import DecodeError
from ..identity import public_key_from_did
from ..policy import SubscriptionRequest
from ..policy_file import FilePolicy, load_policy, permission_name
from ._common import (
    Result,
    UsageError,
    add_command,
    add_group,
    add_passphrase_options,
    now,
    read_json_file,
    read_passphrase,
    to_ms,
)

__all__ = ["register"]


def _describe_text(policy: FilePolicy) -> str:
    d = policy.describe()
    lines = [f"policy {d['file']}: mode {d['mode']}"]
    lines += [f"  deny  {did}" for did in d["deny"]]
    lines += [f"  allow {a['did']} ({a['permission']})" for a in d["allow"]]
    for c in d["credential"]:
        lists = f", status lists {', '.join(c['status_lists'])}" if c["status_lists"] else ""
        if c["status_ledger"]:
            lists += f", status ledger {c['status_ledger']}"
        lines.append(f"  credential {c['type']} from {', '.join(c['issuers'])} ({c['permission']}){lists}")
    return "\n".join(lines)


def _status_list_warnings(policy: FilePolicy, now_ms: int) -> list[str]:
    """What would keep a rule's status lists from serving it: a file that does not read or verify, or a list
    published by an issuer the rule does not trust (a credential is checked only against its own issuer's
    list: every credential with a status entry of that rule would be refused)."""
    warnings = []
    for rule in policy.credentials:
        for path in rule.status_lists:
            try:
                doc = read_json_file(str(path), "status list")
                if not isinstance(doc, dict):
                    raise UsageError("not a JSON object")
                issuer = vc.verify_credential(doc, now_ms).issuer
            except UsageError as exc:
                warnings.append(f"credential {rule.type}: {exc}")
                continue
            except vc.CredentialError as exc:
                warnings.append(f"credential {rule.type}: status list {path} does not verify: {exc}")
                continue
            if issuer not in rule.issuers:
                warnings.append(f"credential {rule.type}: status list {path} is published by {issuer}, not by an "
                                "issuer of this rule: a credential is checked against its own issuer's list only, "
                                "so this one serves none, and a credential of the rule whose list is missing is "
                                "refused (status unavailable)")
    return warnings


def _check(args: argparse.Namespace) -> Result:
    policy = load_policy(args.file)
    warnings = _status_list_warnings(policy, to_ms(now()))
    data: dict[str, object] = {"ok": True, "policy": policy.describe(), "warnings": warnings}
    if not any(getattr(args, n, False) for n in ("json", "global_json", "group_json")):  # (else in the document)
        for w in warnings:
            print(f"streams: warning: {w}", file=sys.stderr)
    text = _describe_text(policy)
    if args.did is None:
        if args.credential or args.holder_keystore:
            raise UsageError("--credential and --holder-keystore need --did")
        return Result(data, text)
    try:
        sign_public = public_key_from_did(args.did)
    except DecodeError as exc:
        raise UsageError(f"--did: {exc}") from None
    at = now()
    nonce, channel = os.urandom(16), os.urandom(32)  # what a real author's challenge would carry
    presentation = b""
    if args.credential:
        if not args.holder_keystore:
            raise UsageError("--credential needs --holder-keystore: the holder signs a presentation")
        holder = keystore.load_identity(args.holder_keystore, read_passphrase(args))
        if holder.did != args.did:
            raise UsageError("--holder-keystore holds another DID than --did")
        creds = []
        for path in args.credential:
            cred = read_json_file(path, "credential")
            if not isinstance(cred, dict):
                raise UsageError(f"{path} is not a JSON object")
            creds.append(cred)
        presentation = vc.present(holder, creds, challenge=nonce, domain=channel, created=at)
    request = SubscriptionRequest(channel, args.did, sign_public, presentation, nonce)
    decision = policy.decide(request, to_ms(at))
    data["ok"] = decision.admit  # as the exit status: the dry run's answer was "no"
    data["decision"] = {
        "did": args.did,
        "admit": decision.admit,
        "reason": decision.reason,
        "permission": permission_name(decision.permission) if decision.admit else None,
    }
    verdict = f"admit ({permission_name(decision.permission)})" if decision.admit else "refuse"
    return Result(data, f"{text}\n{args.did}: {verdict}: {decision.reason}", 0 if decision.admit else 1)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``streams policy check``."""
    group = add_group(subparsers, "policy", help="check admission policy files (TOML)")
    c = add_command(group, "check", _check, help="validate a policy file; with --did, dry-run a decision",
                    description=__doc__)
    c.add_argument("file", metavar="FILE", help="policy file (TOML, see streams.policy_file)")
    c.add_argument("--did", metavar="DID", help="decide a subscription request from this DID")
    c.add_argument("--credential", action="append", metavar="FILE",
                   help="a credential the DID presents (repeatable: one presentation; needs --holder-keystore)")
    c.add_argument("--holder-keystore", metavar="PATH", help="keystore of --did, to sign the presentation")
    add_passphrase_options(c, "holder keystore")
