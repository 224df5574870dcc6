"""Admission policies from TOML files (THREATS property 5).

:func:`load_policy` reads a file like this one and returns a :class:`FilePolicy`, an ordinary
:class:`~streams.policy.Policy` for :class:`~streams.api.Author`::

    [policy]
    mode = "any"                 # any (default): one rule admitting is enough | all: every rule must admit
    deny = ["did:key:z6Mk..."]   # always refused, whatever the rules say

    [[policy.allow]]             # admit this DID (repeatable)
    did = "did:key:z6Mk..."
    permission = "read-write"    # read | write | read-write | audit  (default read-write)

    [[policy.credential]]        # admit a DID presenting a valid credential (repeatable)
    type = "PaymentProviderCredential"
    issuers = ["did:key:z6Mk..."]                # trusted issuers (at least one)
    permission = "write"                         # default read
    status_lists = ["status/providers.json"]     # status-list credential files, relative to this file
    status_ledger = "sqlite:ledger.db"            # optional: only the latest version anchored there counts

Semantics:

* **Deny always wins**: a listed DID is refused before any rule runs (cheaply, THREATS 8).
* ``mode = "any"``: admitted by the first rule that admits -- the allow-list first, then the credential rules
  in file order -- with that rule's permission.  ``mode = "all"``: the allow-list (if any entries) and every
  credential rule must admit; the permission is what all of them grant in common (e.g. ``read-write`` and
  ``read`` give ``read``); rules granting nothing in common refuse.
* Credential rules verify a presentation bound to the request's challenge nonce and channel
  (:class:`~streams.credentials.CredentialPolicy`).  Status-list files are re-read when they change on disk,
  so a ``streams credential revoke`` takes effect at the next subscription without a restart.  A credential
  with a status entry whose list is missing or unreadable is refused (fail closed).

Validation is strict, so that a typo cannot silently open (or close) a channel: unknown keys, wrong types,
DIDs that are not canonical Ed25519 ``did:key`` DIDs, unknown permissions, a DID both allowed and denied or
allowed twice, missing status-list files and a policy with no rule at all raise :class:`PolicyFileError`,
which names the file and the offending key (``policy.allow[1].did``).
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .credentials import CredentialPolicy, StatusListLookup, _no_duplicates
from .errors import DecodeError, LocalProtocolError
from .identity import holder_of, public_key_from_did
from .policy import (
    AllOf,
    AllowList,
    AnyOf,
    Decision,
    Policy,
    SubscriptionRequest,
    could_admit,
    denied_holders,
    evidence_holds,
    is_denied,
)
from .wire import Permission

__all__ = [
    "PERMISSIONS",
    "CredentialRule",
    "FilePolicy",
    "FileStatusLists",
    "PolicyFileError",
    "load_policy",
]

_log = logging.getLogger("streams.policy_file")

#: Permission names used in policy files.
PERMISSIONS: Final[Mapping[str, Permission]] = {
    "read": Permission.READ,
    "write": Permission.WRITE,
    "read-write": Permission.READ_WRITE,
    "audit": Permission.AUDIT,
}
_PERMISSION_NAMES: Final = {v: k for k, v in PERMISSIONS.items()}
_MAX_POLICY_FILE: Final = 1024 * 1024
_MAX_STATUS_FILE: Final = 4 * 1024 * 1024


class PolicyFileError(LocalProtocolError, ValueError):
    """A policy file cannot be read or is invalid.  ``path`` is the file, ``key`` the offending key (dotted,
    e.g. ``policy.allow[0].did``; empty if the whole file is at fault).  Fix the file; nothing was loaded."""

    def __init__(self, path: str, key: str, message: str) -> None:
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")
        self.path = path
        self.key = key


def permission_name(permission: Permission) -> str:
    """The policy-file name of ``permission`` (``read-write``...)."""
    return _PERMISSION_NAMES[permission]


# --- status lists read from files ---


class FileStatusLists:
    """A :class:`~streams.credentials.StatusListLookup` over status-list credential files.

    Each file is re-read when its size or modification time changes, so a revocation written by
    ``streams credential revoke`` is seen at the next lookup.  A file that cannot be read is logged and
    skipped: the lookup then finds nothing and the credential is refused (fail closed).  A file that reads but
    does not parse (a copy still being written, say: half a JSON document) is logged, and the version read
    before stays in use until it parses -- rather than every subscriber it admitted being revoked at the next
    re-check.  Whoever can write the file could put that older (validly signed) version back anyway; a
    ``status_ledger`` refuses any version but the latest anchored.  The signature of a list is checked by the
    credential verifier, not here.
    """

    def __init__(self, paths: tuple[Path, ...]) -> None:
        self._paths = paths
        self._cache: dict[Path, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files consulted, in order."""
        return self._paths

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            st = os.stat(path)
            # The inode too: `credential revoke` renames a new file into place, maybe within one mtime tick.
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._cache.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            with open(path, "rb") as f:
                data = f.read(_MAX_STATUS_FILE + 1)
        except OSError as exc:
            _log.warning("status list %s unreadable: %s", path, exc.strerror or type(exc).__name__)
            return None
        doc: dict[str, Any] | None = None
        try:
            if len(data) <= _MAX_STATUS_FILE:
                parsed = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
                doc = parsed if isinstance(parsed, dict) else None
        except (ValueError, RecursionError):
            doc = None
        if doc is None:
            before = self._cache.get(path)
            if before is not None and before[1] is not None:
                _log.warning("status list %s is not a JSON object (yet?): keeping the version read before", path)
                doc = before[1]
            else:
                _log.warning("status list %s is not a JSON object", path)
        self._cache[path] = (stamp, doc)
        return doc

    def get(self, url: str) -> Mapping[str, Any] | None:
        """The status-list credential whose ``id`` is ``url``, from the first file holding it, or ``None``."""
        for path in self._paths:
            doc = self._load(path)
            if doc is not None and doc.get("id") == url:
                return doc
        return None


# --- the loaded policy ---


@dataclass(frozen=True)
class CredentialRule:
    """One ``[[policy.credential]]`` entry."""

    type: str  #: required credential type
    issuers: frozenset[str]  #: trusted issuer DIDs
    permission: Permission  #: granted on admission
    status_lists: tuple[Path, ...]  #: status-list files (absolute or relative to the working directory)
    #: ``sqlite:PATH``: accept a status list only if it is the latest version its issuer anchored there
    status_ledger: str | None = None


@dataclass(frozen=True)
class FilePolicy:
    """A policy loaded by :func:`load_policy`: a deny-list that always wins, then the rules (see module doc).

    ``decide`` is the :class:`~streams.policy.Policy` interface; :meth:`describe` gives the parsed file as a
    JSON-ready dict.
    """

    path: str  #: the file it was loaded from
    mode: str  #: "any" or "all"
    deny: frozenset[str]  #: always refused
    allow: Mapping[str, Permission]  #: allow-listed DIDs
    credentials: tuple[CredentialRule, ...]  #: credential rules, in file order
    _rules: Policy = field(repr=False, compare=False)
    _deny_holders: frozenset[bytes] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_deny_holders", denied_holders(self.deny))

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        """Refuse a denied DID (or its twin: :class:`~streams.policy.DenyList`) outright; otherwise the rules
        decide."""
        if is_denied(request.did, self.deny, self._deny_holders):
            return Decision.refuse("DID on the deny-list")
        return self._rules.decide(request, now_ms)

    def could_admit(self, did: str) -> bool:
        """Whether the file's rules might admit ``did`` (:func:`streams.policy.could_admit`): never a denied DID;
        with credential rules, any other (the credential decides at subscription)."""
        return not is_denied(did, self.deny, self._deny_holders) and could_admit(self._rules, did)

    def still_valid(self, evidence: bytes, now_ms: int) -> bool:
        """Whether the evidence (credentials) that admitted a subscriber still holds for the rules (see
        :func:`streams.policy.evidence_holds`); the author revokes subscribers for which it does not.  False for
        evidence no rule of the file re-checks (a file without credential rules, say)."""
        return self.evidence_verdict(evidence, now_ms) is True

    def evidence_verdict(self, evidence: bytes, now_ms: int) -> bool | None:
        """As :meth:`still_valid`, None where no rule of the file re-checks evidence (the author then judges the
        subscriber on its DID alone when the policy was replaced: ``Author.recheck_admissions``).  It wraps its
        rules: the re-check hands it the whole evidence, which it passes on (``evidence_holds``)."""
        return evidence_holds(self._rules, evidence, now_ms)

    def describe(self) -> dict[str, Any]:
        """The parsed policy as plain data (what ``streams policy check`` prints)."""
        return {
            "file": self.path,
            "mode": self.mode,
            "deny": sorted(self.deny),
            "allow": [{"did": d, "permission": permission_name(p)} for d, p in self.allow.items()],
            "credential": [
                {
                    "type": r.type,
                    "issuers": sorted(r.issuers),
                    "permission": permission_name(r.permission),
                    "status_lists": [str(p) for p in r.status_lists],
                    "status_ledger": r.status_ledger,
                }
                for r in self.credentials
            ],
        }


# --- parsing ---


class _Reader:
    """Strict accessors that raise PolicyFileError naming the file and key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> PolicyFileError:
        return PolicyFileError(self.path, key, message)

    def table(self, value: object, key: str, allowed: frozenset[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        for k in value:
            if k not in allowed:
                raise self.fail(f"{key}.{k}" if key else k, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, "must be a non-empty string")
        return value

    def strings(self, value: object, key: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(key, "must be an array of strings")
        return [self.string(v, f"{key}[{i}]") for i, v in enumerate(value)]

    def did(self, value: object, key: str) -> str:
        did = self.string(value, key)
        try:
            public_key_from_did(did)
        except DecodeError as exc:
            raise self.fail(key, f"not a valid Ed25519 did:key ({exc})") from None
        return did

    def permission(self, value: object, key: str) -> Permission:
        if not isinstance(value, str) or value not in PERMISSIONS:
            raise self.fail(key, f"must be one of {', '.join(PERMISSIONS)}")
        return PERMISSIONS[value]


_TOP: Final = frozenset({"policy"})
_POLICY: Final = frozenset({"mode", "deny", "allow", "credential"})
_ALLOW: Final = frozenset({"did", "permission"})
_CRED: Final = frozenset({"type", "issuers", "permission", "status_lists", "status_ledger"})


def _status_list_path(r: _Reader, base: Path, value: str, key: str) -> Path:
    path = Path(value) if os.path.isabs(value) else base / value
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(_MAX_STATUS_FILE + 1).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except OSError as exc:
        raise r.fail(key, f"cannot read status list {value}: {exc.strerror or type(exc).__name__}") from None
    except (ValueError, RecursionError):
        raise r.fail(key, f"status list {value} is not JSON (or holds a key twice in one object)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise r.fail(key, f"status list {value} is not a credential with an id")
    return path


def _status_lookup(rule: CredentialRule) -> StatusListLookup | None:
    if not rule.status_lists:
        return None
    files = FileStatusLists(rule.status_lists)
    if rule.status_ledger is None:
        return files
    from .ledger.embedded import EmbeddedLedger
    from .status_anchor import AnchoredStatusLists

    return AnchoredStatusLists(EmbeddedLedger(rule.status_ledger[len("sqlite:"):]), files)


def load_policy(path: str | os.PathLike[str]) -> FilePolicy:
    """Read and validate the TOML policy file ``path`` (format in the module docstring).

    Raises :class:`PolicyFileError` (a :class:`~streams.errors.LocalProtocolError` and ``ValueError``) naming
    the file and key for anything unreadable, malformed or ambiguous.
    """
    name = os.fspath(path)
    r = _Reader(name)
    try:
        with open(name, "rb") as f:
            raw = f.read(_MAX_POLICY_FILE + 1)
    except OSError as exc:
        raise r.fail("", f"cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > _MAX_POLICY_FILE:
        raise r.fail("", "file is too large")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise r.fail("", "not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise r.fail("", f"not valid TOML: {exc}") from None
    except RecursionError:  # (arrays nested deeper than the parser goes)
        raise r.fail("", "not valid TOML: nested too deeply") from None
    r.table(doc, "", _TOP)
    if "policy" not in doc:
        raise r.fail("policy", "missing [policy] table")
    pol = r.table(doc["policy"], "policy", _POLICY)

    mode = pol.get("mode", "any")
    if mode not in ("any", "all"):
        raise r.fail("policy.mode", 'must be "any" or "all"')

    deny: set[str] = set()
    deny_raw = pol.get("deny", [])
    if not isinstance(deny_raw, list):
        raise r.fail("policy.deny", "must be an array of DIDs")
    for i, v in enumerate(deny_raw):
        deny.add(r.did(v, f"policy.deny[{i}]"))

    deny_set, deny_holders = frozenset(deny), denied_holders(deny)
    allow: dict[str, Permission] = {}
    allowed_holders: set[bytes] = set()
    allow_raw = pol.get("allow", [])
    if not isinstance(allow_raw, list):
        raise r.fail("policy.allow", "must be an array of tables ([[policy.allow]])")
    for i, entry in enumerate(allow_raw):
        key = f"policy.allow[{i}]"
        t = r.table(entry, key, _ALLOW)
        if "did" not in t:
            raise r.fail(f"{key}.did", "missing")
        did = r.did(t["did"], f"{key}.did")
        if did in allow:
            raise r.fail(f"{key}.did", "DID is allowed twice")
        holder = holder_of(did)
        if holder is not None and holder in allowed_holders:
            # (Whoever holds one holds both and signs as either: one entry's permission would be the other's.)
            raise r.fail(f"{key}.did", "DID is allowed twice: as itself and as its twin (the same key negated: the "
                                       "same holder)")
        if holder is not None:
            allowed_holders.add(holder)
        if is_denied(did, deny_set, deny_holders):
            raise r.fail(f"{key}.did", "DID is both allowed and denied (as itself or as its twin, the same key "
                                       "negated: the same holder)")
        allow[did] = r.permission(t.get("permission", "read-write"), f"{key}.permission")

    base = Path(name).parent
    rules: list[CredentialRule] = []
    cred_raw = pol.get("credential", [])
    if not isinstance(cred_raw, list):
        raise r.fail("policy.credential", "must be an array of tables ([[policy.credential]])")
    for i, entry in enumerate(cred_raw):
        key = f"policy.credential[{i}]"
        t = r.table(entry, key, _CRED)
        for required in ("type", "issuers"):
            if required not in t:
                raise r.fail(f"{key}.{required}", "missing")
        ctype = r.string(t["type"], f"{key}.type")
        if not isinstance(t["issuers"], list) or not t["issuers"]:
            raise r.fail(f"{key}.issuers", "must be a non-empty array of DIDs")
        issuers = frozenset(r.did(v, f"{key}.issuers[{j}]") for j, v in enumerate(t["issuers"]))
        lists = tuple(
            _status_list_path(r, base, v, f"{key}.status_lists[{j}]")
            for j, v in enumerate(r.strings(t.get("status_lists", []), f"{key}.status_lists"))
        )
        status_ledger: str | None = None
        if "status_ledger" in t:
            spec = r.string(t["status_ledger"], f"{key}.status_ledger")
            if not lists:
                # It vouches for status lists: with none, it would check nothing (and look as if it did).
                raise r.fail(f"{key}.status_ledger", "needs status_lists (the lists whose versions it anchors)")
            if not spec.startswith("sqlite:"):
                raise r.fail(f"{key}.status_ledger", "must be sqlite:PATH (an embedded ledger)")
            ledger_file = spec[len("sqlite:"):]
            lpath = Path(ledger_file) if os.path.isabs(ledger_file) else base / ledger_file
            if not lpath.is_file():
                raise r.fail(f"{key}.status_ledger", f"no embedded ledger at {ledger_file}")
            status_ledger = f"sqlite:{lpath}"
        rules.append(CredentialRule(ctype, issuers, r.permission(t.get("permission", "read"), f"{key}.permission"),
                                    lists, status_ledger))

    if not allow and not rules:
        raise r.fail("policy", "admits nobody: add [[policy.allow]] or [[policy.credential]] entries")

    compiled: list[Policy] = []
    if allow:
        compiled.append(AllowList(dict(allow)))
    for rule in rules:
        compiled.append(
            CredentialPolicy(
                credential_type=rule.type,
                trusted_issuers=rule.issuers,
                permission=rule.permission,
                # Fail closed when no list is configured: a credential with a status entry is then refused.
                status_lists=_status_lookup(rule),
            )
        )
    combined: Policy = AnyOf(tuple(compiled)) if mode == "any" else AllOf(tuple(compiled))
    return FilePolicy(name, mode, frozenset(deny), dict(allow), tuple(rules), combined)
