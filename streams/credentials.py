"""Verifiable credentials for admission by DID (THREATS property 5).

What this module implements, and where each rule comes from:

* **Credentials** in the W3C *Verifiable Credentials Data Model v2.0* ("VC DM", https://www.w3.org/TR/vc-data-model-2.0/)
  JSON form: ``@context``, ``type``, ``issuer``, ``validFrom``/``validUntil``, ``credentialSubject``,
  ``credentialStatus``.
* **Proofs**: W3C *Verifiable Credential Data Integrity 1.0* ("DI", https://www.w3.org/TR/vc-data-integrity/)
  ``DataIntegrityProof`` with the ``eddsa-jcs-2022`` cryptosuite of *Data Integrity EdDSA Cryptosuites v1.0*
  ("EDDSA", https://www.w3.org/TR/vc-di-eddsa/, section 3.3).  Canonicalisation is JCS (RFC 8785, through the
  ``rfc8785`` package); keys are ``did:key`` Ed25519 keys; ``proofValue`` is multibase base58btc (``z``).
* **Presentations** (VC DM section 4.13) carry a DI proof with ``proofPurpose`` ``authentication`` and the
  ``challenge``/``domain`` options (DI section 2.1).  ``streams`` binds them to the author's subscription
  challenge nonce and to the channel id, so a presentation recorded once cannot be replayed to another author,
  channel or moment.
* **Revocation**: W3C *Bitstring Status List v1.0* ("BSL",
  https://www.w3.org/TR/vc-bitstring-status-list/).  The status-list credential is itself signed with
  eddsa-jcs-2022 by the same issuer; :func:`status_list_digest` gives the digest to anchor on the ledger so
  that a revocation cannot be hidden.
* :class:`CredentialPolicy` is an admission :class:`~streams.policy.Policy`.

Everything here is pure: no clock (time comes in as ``now_ms``), no I/O, no randomness.  Every failure while
verifying hostile input raises a :class:`CredentialError` subclass, never a bare ``KeyError``/``TypeError``.

Deliberate strictness beyond the specifications (each is marked ``STRICT`` below):

* a proof's ``@context``, when present, must *equal* the document's ``@context`` (EDDSA 3.3.2 only asks for a
  prefix; the extra entries would be unsigned bytes);
* a credential's proof must be made by a key of its ``issuer``, a presentation's by a key of its ``holder``;
* a single proof per document (no proof sets or chains);
* a credential that carries a ``credentialStatus`` is refused when its status list cannot be checked
  (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import enum
import gzip
import hashlib
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

import base58
import nacl.exceptions
import nacl.signing
import rfc8785

from .errors import DecodeError, LocalProtocolError, PolicyUnavailable, RejectReason, StreamsError, VerificationError
from .identity import DIDDocument, DIDResolver, Identity, KeyResolver
from .policy import Decision, SubscriptionRequest
from .wire import Permission

__all__ = [
    "BSL_MIN_ENTRIES",
    "CRYPTOSUITE",
    "MAX_CREDENTIALS_PER_PRESENTATION",
    "MAX_PRESENTATION_BYTES",
    "VC_CONTEXT_V2",
    "BadProof",
    "CredentialError",
    "CredentialExpired",
    "CredentialFailure",
    "CredentialNotYetValid",
    "CredentialPolicy",
    "CredentialRevoked",
    "MalformedCredential",
    "PresentationMismatch",
    "ResolutionFailed",
    "StatusList",
    "StatusListLookup",
    "StatusListSource",
    "StatusLookupFailed",
    "StatusUnavailable",
    "UnknownCryptosuite",
    "UnresolvableIssuer",
    "VerifiedCredential",
    "add_proof",
    "canonicalize",
    "hash_data",
    "issue_credential",
    "issue_status_list_credential",
    "present",
    "status_list_digest",
    "verify_credential",
    "verify_presentation",
    "verify_proof",
]

_log = logging.getLogger("streams.credentials")

#: VC DM 2.0 section 4.3: the first ``@context`` entry of every credential and presentation.
VC_CONTEXT_V2 = "https://www.w3.org/ns/credentials/v2"
#: EDDSA section 3.3: the cryptosuite identifier.
CRYPTOSUITE = "eddsa-jcs-2022"
_PROOF_TYPE = "DataIntegrityProof"
#: BSL section 3.1 (Bitstring Generation Algorithm): "a minimum bitstring length of 131,072" entries (16 KiB),
#: which gives group privacy to the holders sharing one list.
BSL_MIN_ENTRIES = 131072
#: Largest presentation accepted by :func:`verify_presentation`; refused before parsing (THREATS 8).
MAX_PRESENTATION_BYTES = 64 * 1024
#: Most credentials one presentation may carry; each costs a signature check (THREATS 8).
MAX_CREDENTIALS_PER_PRESENTATION = 8
#: Largest decompressed status list (bytes); bounds a gzip bomb in ``encodedList`` (THREATS 8).
_MAX_STATUS_LIST_BYTES = 1 << 21

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ED25519_PUB = b"\xed\x01"  # multicodec ed25519-pub (EDDSA 2.1.1, Multikey)


# ------------------------------------------------------------------------------------------------------------
# Errors


class CredentialFailure(enum.Enum):
    """Why a credential or presentation was refused.  The value is a short text safe to log."""

    MALFORMED = "malformed"  #: not a well-formed VC, VP, proof or status list
    UNKNOWN_CRYPTOSUITE = "unknown cryptosuite"  #: proof type / cryptosuite other than eddsa-jcs-2022
    UNRESOLVABLE_ISSUER = "unresolvable verification method"  #: the signer's DID does not resolve
    BAD_PROOF = "bad proof"  #: the signature does not verify over the canonical document
    WRONG_SIGNER = "not signed by the issuer or holder"  #: valid signature, but by someone else's key
    NOT_YET_VALID = "not yet valid"  #: ``now`` is before ``validFrom``
    EXPIRED = "expired"  #: ``now`` is after ``validUntil`` (or after the proof's ``expires``)
    REVOKED = "revoked"  #: the revocation bit is set in the issuer's status list
    SUSPENDED = "suspended"  #: the suspension bit is set in the issuer's status list
    STATUS_UNAVAILABLE = "status unavailable"  #: the status list is missing, invalid or too short
    WRONG_CHALLENGE = "presentation bound to another challenge or domain"  #: replay from elsewhere
    WRONG_HOLDER = "presentation holder is not the requester"  #: presented by another party


_REJECT = {
    CredentialFailure.MALFORMED: RejectReason.MALFORMED,
    CredentialFailure.BAD_PROOF: RejectReason.BAD_SIGNATURE,
    CredentialFailure.WRONG_SIGNER: RejectReason.BAD_SIGNATURE,
    CredentialFailure.WRONG_CHALLENGE: RejectReason.BAD_CHALLENGE,
}


class CredentialError(VerificationError):
    """A credential, presentation or status list did not verify.

    ``failure`` says why (a :class:`CredentialFailure`); ``reason`` is the matching wire
    :class:`~streams.errors.RejectReason`.  The caller should refuse whatever the credential was meant to
    authorise; nothing else needs undoing (verification has no side effects).
    """

    failure: CredentialFailure

    def __init__(self, message: str, failure: CredentialFailure) -> None:
        super().__init__(message, _REJECT.get(failure, RejectReason.REFUSED))
        self.failure = failure

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take fewer constructor arguments; rebuild through the base so errors survive pickling
        # (e.g. when a verifier runs in a worker process).
        return (_restore_error, (type(self), str(self), self.failure))


def _restore_error(cls: type[CredentialError], message: str, failure: CredentialFailure) -> CredentialError:
    err = cls.__new__(cls)
    CredentialError.__init__(err, message, failure)
    return err


class MalformedCredential(CredentialError, DecodeError):
    """The document is not a well-formed credential, presentation, proof or status list."""

    def __init__(self, message: str) -> None:
        super().__init__(message, CredentialFailure.MALFORMED)


class UnknownCryptosuite(CredentialError):
    """The proof is not a ``DataIntegrityProof`` with cryptosuite ``eddsa-jcs-2022``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, CredentialFailure.UNKNOWN_CRYPTOSUITE)


class UnresolvableIssuer(CredentialError):
    """The proof's verification method cannot be resolved to an Ed25519 key."""

    def __init__(self, message: str) -> None:
        super().__init__(message, CredentialFailure.UNRESOLVABLE_ISSUER)


class ResolutionFailed(UnresolvableIssuer, PolicyUnavailable):
    """The DID resolver itself failed: it raised something other than a "does not resolve" error (a
    :class:`~streams.errors.StreamsError`, ``ValueError`` or ``LookupError``) -- its network, its disk, a did:web
    host that does not answer.  A subscription is refused (fail closed), but a re-check of one already admitted
    cannot decide now: :meth:`CredentialPolicy.still_valid` raises it, and the re-check leaves that subscriber as
    it is until the next one (unless what needs no lookup decides)."""


class BadProof(CredentialError):
    """The signature is invalid (``BAD_PROOF``) or was made by a key the issuer/holder does not control
    (``WRONG_SIGNER``)."""

    def __init__(self, message: str, failure: CredentialFailure = CredentialFailure.BAD_PROOF) -> None:
        super().__init__(message, failure)


class CredentialExpired(CredentialError):
    """``now`` is past ``validUntil`` (VC DM 4.9) or past the proof's ``expires`` (DI 2.1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, CredentialFailure.EXPIRED)


class CredentialNotYetValid(CredentialError):
    """``now`` is before ``validFrom`` (VC DM 4.9)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, CredentialFailure.NOT_YET_VALID)


class CredentialRevoked(CredentialError):
    """The issuer's status list marks the credential revoked (or suspended)."""

    def __init__(self, message: str, failure: CredentialFailure = CredentialFailure.REVOKED) -> None:
        super().__init__(message, failure)


class StatusUnavailable(CredentialError):
    """The credential's status cannot be checked: no status list, an invalid one, or an index out of range.
    ``streams`` fails closed: such a credential is refused."""

    def __init__(self, message: str) -> None:
        super().__init__(message, CredentialFailure.STATUS_UNAVAILABLE)


class StatusLookupFailed(StatusUnavailable, PolicyUnavailable):
    """The status-list lookup itself failed (it raised: its ledger, disk or network): a subscription is refused
    (fail closed), but a re-check of one already admitted cannot decide now -- :meth:`CredentialPolicy.still_valid`
    raises it, and the re-check leaves that subscriber as it is until the next one (unless what needs no lookup
    decides)."""


class PresentationMismatch(CredentialError):
    """A presentation answers another challenge or domain (``WRONG_CHALLENGE``), or another party holds it
    (``WRONG_HOLDER``)."""


# ------------------------------------------------------------------------------------------------------------
# Small helpers: canonical form, time, multibase


def canonicalize(value: object) -> bytes:
    """JCS (RFC 8785) canonical UTF-8 bytes of a JSON value.

    Raises :class:`MalformedCredential` for anything that has no JCS form (non-string keys, NaN, integers
    beyond 2**53, lone surrogates, non-JSON objects, absurd nesting).
    """
    try:
        return rfc8785.dumps(value)  # type: ignore[arg-type]
    except (ValueError, TypeError, RecursionError) as exc:  # rfc8785.CanonicalizationError is a ValueError
        raise MalformedCredential("value has no JCS canonical form") from exc


def hash_data(transformed_document: bytes, canonical_proof_config: bytes) -> bytes:
    """EDDSA 3.3.5 (Hashing): ``SHA-256(canonicalProofConfig) || SHA-256(transformedDocument)``, 64 bytes."""
    return hashlib.sha256(canonical_proof_config).digest() + hashlib.sha256(transformed_document).digest()


_DATETIME = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)


def _parse_time_ms(value: object, what: str) -> int:
    """Milliseconds since the epoch of an XML Schema ``dateTimeStamp`` (a date-time with a time zone), as
    VC DM 4.9 requires for ``validFrom``/``validUntil`` and DI 2.1 for ``created``/``expires``."""
    if not isinstance(value, str):
        raise MalformedCredential(f"{what} is not a string")
    m = _DATETIME.fullmatch(value)  # (match's "$" also takes a trailing newline)
    if m is None:
        raise MalformedCredential(f"{what} is not an XML Schema dateTimeStamp")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac, tz = m.group(7), m.group(8)
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    try:
        offset = timedelta(0)
        if tz != "Z":
            hours, minutes = int(tz[1:3]), int(tz[4:6])
            if hours > 14 or minutes > 59 or (hours == 14 and minutes):  # (XML Schema: -14:00 to +14:00)
                raise ValueError("time zone offset out of range")
            offset = timedelta(hours=hours, minutes=minutes) * (1 if tz[0] == "+" else -1)
        dt = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))
    except (ValueError, OverflowError) as exc:
        raise MalformedCredential(f"{what} is not a valid date-time") from exc
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def _format_time(value: datetime | str, what: str) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` for an aware datetime; a string is checked and passed through."""
    if isinstance(value, str):
        try:
            _parse_time_ms(value, what)
        except MalformedCredential as exc:
            raise LocalProtocolError(f"{what} must be an XML Schema dateTimeStamp") from exc
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise LocalProtocolError(f"{what} must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b58_multibase(data: bytes) -> str:
    return "z" + base58.b58encode(data).decode("ascii")


def _decode_proof_value(value: object) -> bytes:
    """EDDSA 3.3.2 step 3: the multibase (base58btc, ``z``) decoding of ``proofValue``; 64 signature bytes."""
    if not isinstance(value, str) or not value.startswith("z") or len(value) > 100:
        raise BadProof("proofValue is not a base58btc multibase signature")
    try:
        sig = base58.b58decode(value[1:])
    except ValueError as exc:
        raise BadProof("proofValue is not valid base58btc") from exc
    if len(sig) != 64:
        raise BadProof("proofValue is not a 64-byte Ed25519 signature")
    return bytes(sig)


def _verification_method(identity: Identity) -> str:
    """The did:key verification method id: ``did:key:<mb>#<mb>`` (did:key spec, "Document Creation")."""
    did = identity.did
    return f"{did}#{did[len('did:key:') :]}"


def _as_str_list(value: object, what: str) -> list[str]:
    """A JSON string or array of strings as a list (``type`` may be either, VC DM 4.5)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise MalformedCredential(f"{what} is not a string or a non-empty array of strings")


def _require_dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedCredential(f"{what} is not a JSON object")
    return value


def _context_of(document: Mapping[str, Any]) -> list[Any]:
    """VC DM 4.3: ``@context`` is an ordered list whose first item is the v2 context URL."""
    ctx = document.get("@context")
    if not isinstance(ctx, list) or not ctx or ctx[0] != VC_CONTEXT_V2:
        raise MalformedCredential(f"@context must be a list starting with {VC_CONTEXT_V2}")
    if not all(isinstance(c, str | dict) for c in ctx):
        raise MalformedCredential("@context entries must be URLs or objects")
    return ctx


# ------------------------------------------------------------------------------------------------------------
# Data Integrity proofs: eddsa-jcs-2022 (EDDSA 3.3)


def add_proof(
    document: Mapping[str, Any],
    signer: Identity,
    *,
    proof_purpose: str,
    created: datetime | str,
    challenge: str | None = None,
    domain: str | None = None,
    expires: datetime | str | None = None,
) -> dict[str, Any]:
    """Return a copy of ``document`` with an eddsa-jcs-2022 ``DataIntegrityProof`` by ``signer`` added.

    Follows EDDSA 3.3.1 (Create Proof): the proof options are ``type``, ``cryptosuite``, ``created``,
    ``verificationMethod`` (``did:key:z6Mk...#z6Mk...``), ``proofPurpose`` and the optional ``challenge``,
    ``domain`` and ``expires``; the proof configuration is those options plus the document's ``@context``
    (3.3.6); the signature is Ed25519 (RFC 8032, pure) over :func:`hash_data` (3.3.5, 3.3.7).

    Raises :class:`~streams.errors.LocalProtocolError` if ``document`` already has a proof, has no JCS form,
    or a time is not a valid date-time.
    """
    if "proof" in document:
        raise LocalProtocolError("document already carries a proof")
    options: dict[str, Any] = {
        "type": _PROOF_TYPE,
        "cryptosuite": CRYPTOSUITE,
        "created": _format_time(created, "created"),
        "verificationMethod": _verification_method(signer),
        "proofPurpose": proof_purpose,
    }
    if expires is not None:
        options["expires"] = _format_time(expires, "expires")
    if challenge is not None:
        options["challenge"] = challenge
    if domain is not None:
        options["domain"] = domain
    unsecured = dict(document)
    # EDDSA 3.3.6 (Proof Configuration) step: proofConfig.@context = unsecuredDocument.@context.  The created
    # proof carries it too, as in the specification's test vectors (Appendix, eddsa-jcs-2022).
    if "@context" in unsecured:
        options["@context"] = unsecured["@context"]
    try:
        transformed = canonicalize(unsecured)  # EDDSA 3.3.4 (Transformation)
        proof_config = canonicalize(options)  # EDDSA 3.3.6 (Proof Configuration)
    except MalformedCredential as exc:
        raise LocalProtocolError("document or proof options have no JCS canonical form") from exc
    key = nacl.signing.SigningKey(signer.export_seed())
    signature = key.sign(hash_data(transformed, proof_config)).signature  # EDDSA 3.3.7 (Proof Serialization)
    proof = dict(options)
    proof["proofValue"] = _b58_multibase(bytes(signature))
    unsecured["proof"] = proof
    return unsecured


@dataclass(frozen=True, slots=True)
class _VerifiedProof:
    controller: str  #: the DID (or URL) that controls the verification method
    proof: dict[str, Any]


def verify_proof(
    document: Mapping[str, Any],
    *,
    expected_purpose: str,
    resolver: DIDResolver,
    now_ms: int | None = None,
) -> str:
    """Verify the single eddsa-jcs-2022 proof on ``document``; return the verification method's controller.

    Implements EDDSA 3.3.2 (Verify Proof) with the checks of DI 4.3 (Verify Proof) that apply: proof type and
    cryptosuite, ``proofPurpose`` equal to ``expected_purpose``, a resolvable verification method, the
    ``expires`` option when ``now_ms`` is given.  The caller must still check that the returned controller
    is the party the document speaks for (issuer or holder).

    Raises :class:`MalformedCredential`, :class:`UnknownCryptosuite`, :class:`UnresolvableIssuer`,
    :class:`BadProof` or :class:`CredentialExpired`.
    """
    verified = _verify_proof(document, expected_purpose=expected_purpose, resolver=resolver, now_ms=now_ms)
    return verified.controller


def _verify_proof(
    document: Mapping[str, Any], *, expected_purpose: str, resolver: DIDResolver, now_ms: int | None
) -> _VerifiedProof:
    if not isinstance(document, Mapping):
        raise MalformedCredential("document is not a JSON object")
    raw_proof = document.get("proof")
    if isinstance(raw_proof, list):
        raise MalformedCredential("proof sets and chains are not supported")  # STRICT: one proof
    proof = _require_dict(raw_proof, "proof")
    # EDDSA 3.3.4 / 3.3.6: anything but DataIntegrityProof + eddsa-jcs-2022 is an error.
    if proof.get("type") != _PROOF_TYPE or proof.get("cryptosuite") != CRYPTOSUITE:
        raise UnknownCryptosuite("proof is not a DataIntegrityProof with cryptosuite eddsa-jcs-2022")
    purpose = proof.get("proofPurpose")
    if purpose != expected_purpose:
        raise BadProof("proof has the wrong proofPurpose")  # DI 4.3: purpose must match the expected one
    if "created" in proof:
        _parse_time_ms(proof["created"], "proof.created")  # EDDSA 3.3.6: created must be a dateTimeStamp
    if "expires" in proof:
        expires_ms = _parse_time_ms(proof["expires"], "proof.expires")
        if now_ms is not None and now_ms > expires_ms:
            raise CredentialExpired("proof has expired")
    signature = _decode_proof_value(proof.get("proofValue"))

    options = {k: v for k, v in proof.items() if k != "proofValue"}  # EDDSA 3.3.2 step 2
    unsecured = {k: v for k, v in document.items() if k != "proof"}  # EDDSA 3.3.2 step 1
    if "@context" in options:
        # EDDSA 3.3.2 step 4 requires the document's @context to *start with* the proof's, then signs over the
        # proof's.  STRICT: we require equality, so no unsigned context entry rides along -- equality of the JCS
        # forms, not Python's ==, for which true == 1 and 0 == false (the document would then differ from what
        # was signed).
        if "@context" not in document or canonicalize(options["@context"]) != canonicalize(document["@context"]):
            raise BadProof("proof @context does not match the document's @context")
        unsecured["@context"] = options["@context"]

    controller, public = _resolve_method(proof.get("verificationMethod"), resolver)
    transformed = canonicalize(unsecured)  # EDDSA 3.3.4
    proof_config = canonicalize(options)  # EDDSA 3.3.6
    try:
        nacl.signing.VerifyKey(public).verify(hash_data(transformed, proof_config), signature)  # EDDSA 3.3.8
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
        raise BadProof("signature does not verify") from exc
    return _VerifiedProof(controller, proof)


def _resolve_method(method: object, resolver: DIDResolver) -> tuple[str, bytes]:
    """Resolve a verification method URL ``<controller>#<fragment>`` to (controller, Ed25519 public key)."""
    if not isinstance(method, str) or method.count("#") != 1 or len(method) > 2048:
        raise MalformedCredential("verificationMethod is not a URL with one fragment")
    controller, fragment = method.split("#")
    if not controller or not fragment:
        raise MalformedCredential("verificationMethod has an empty controller or fragment")
    try:
        doc: DIDDocument = resolver.resolve(controller)
    except (StreamsError, ValueError, LookupError) as exc:
        raise UnresolvableIssuer("verification method controller does not resolve") from exc
    except Exception as exc:  # the resolver could not answer (its network, its disk): no answer now
        why = f"verification method controller could not be resolved ({type(exc).__name__})"
        raise ResolutionFailed(why) from exc
    public = bytes(doc.sign_public)
    if len(public) != 32:
        raise UnresolvableIssuer("resolved key is not an Ed25519 public key")
    # did:key (https://w3c-ccg.github.io/did-method-key/): the only verification method is <did>#<multibase>.
    if controller.startswith("did:key:") and fragment != controller[len("did:key:") :]:
        raise UnresolvableIssuer("did:key verification method fragment is not the key")
    if fragment.startswith("z6Mk") and fragment != _b58_multibase(_ED25519_PUB + public):
        raise UnresolvableIssuer("verification method fragment names another key")
    return controller, public


# ------------------------------------------------------------------------------------------------------------
# Credentials


@dataclass(frozen=True, eq=False)
class VerifiedCredential:
    """A credential whose proof, validity period and status were all checked at ``now_ms``."""

    id: str | None  #: the credential's ``id``, if it has one
    issuer: str  #: the issuer's DID (the controller of the key that signed it)
    subject: str | None  #: ``credentialSubject.id``
    types: tuple[str, ...]  #: every ``type`` entry, ``VerifiableCredential`` included
    claims: dict[str, Any]  #: ``credentialSubject`` without its ``id`` (a copy)
    valid_from_ms: int | None  #: ``validFrom`` in ms since the epoch
    valid_until_ms: int | None  #: ``validUntil`` in ms since the epoch
    document: dict[str, Any] = field(repr=False)  #: the whole signed document


def issue_credential(
    issuer: Identity,
    subject_did: str,
    types: Sequence[str],
    claims: Mapping[str, Any],
    *,
    valid_from: datetime | str,
    valid_until: datetime | str | None = None,
    status: tuple[str, int] | None = None,
    status_purpose: str = "revocation",
    created: datetime | str | None = None,
    credential_id: str | None = None,
) -> dict[str, Any]:
    """Issue a VC DM 2.0 credential about ``subject_did``, signed by ``issuer`` with eddsa-jcs-2022.

    ``types`` are added after ``VerifiableCredential``; ``claims`` go into ``credentialSubject`` next to its
    ``id``.  ``status`` is ``(status list credential URL, index)`` and adds a ``BitstringStatusListEntry``
    (BSL 2.1).  ``created`` (the proof's creation time) defaults to ``valid_from``: this module never reads
    the clock.

    Raises :class:`~streams.errors.LocalProtocolError` for bad arguments (a claim named ``id``, a naive
    datetime, a negative status index, claims with no JSON form).
    """
    if "id" in claims:
        raise LocalProtocolError("claims must not contain 'id'; the subject's id is subject_did")
    all_types = ["VerifiableCredential", *(t for t in types if t != "VerifiableCredential")]
    vc: dict[str, Any] = {"@context": [VC_CONTEXT_V2]}
    if credential_id is not None:
        vc["id"] = credential_id
    vc["type"] = all_types
    vc["issuer"] = issuer.did
    vc["validFrom"] = _format_time(valid_from, "valid_from")
    if valid_until is not None:
        vc["validUntil"] = _format_time(valid_until, "valid_until")
    vc["credentialSubject"] = {"id": subject_did, **claims}
    if status is not None:
        url, index = status
        if not isinstance(index, int) or index < 0:
            raise LocalProtocolError("status list index must be a non-negative integer")
        vc["credentialStatus"] = {
            "id": f"{url}#{index}",
            "type": "BitstringStatusListEntry",
            "statusPurpose": status_purpose,
            "statusListIndex": str(index),  # BSL 2.1: a string holding an integer
            "statusListCredential": url,
        }
    return add_proof(
        vc, issuer, proof_purpose="assertionMethod", created=created if created is not None else valid_from
    )


def verify_credential(
    vc: Mapping[str, Any],
    now_ms: int,
    resolver: DIDResolver | None = None,
    status_lists: StatusListLookup | None = None,
) -> VerifiedCredential:
    """Verify a credential completely at time ``now_ms``.

    Checks, in order (cheap ones first, THREATS 8): shape (VC DM 4.3 ``@context``, 4.5 ``type``, 4.7
    ``issuer``, 4.4 ``credentialSubject``, the form of the validity dates), the eddsa-jcs-2022 proof with purpose
    ``assertionMethod`` made by a key the issuer controls, the validity period (VC DM 4.9; after the proof, so an
    unsigned document never gets a more specific answer than :class:`BadProof`), then every
    ``BitstringStatusListEntry`` against ``status_lists`` (BSL 3.2).  A credential with a status entry is refused
    when ``status_lists`` is ``None`` (fail closed).

    Raises a :class:`CredentialError` subclass and nothing else; the caller should refuse the credential.
    """
    return _verify_credential(vc, now_ms, resolver or KeyResolver(), status_lists, check_status=True)


def _issuer_of(doc: Mapping[str, Any]) -> object:
    """A credential's issuer as written (VC DM 4.7: a URL, or an object with an ``id``); not checked here."""
    raw = doc.get("issuer")
    return raw.get("id") if isinstance(raw, dict) else raw


def _verify_credential(
    vc: Mapping[str, Any],
    now_ms: int,
    resolver: DIDResolver,
    status_lists: StatusListLookup | None,
    *,
    check_status: bool,
) -> VerifiedCredential:
    doc = _require_dict(vc, "credential")
    _context_of(doc)
    types = _as_str_list(doc.get("type"), "type")
    if "VerifiableCredential" not in types:
        raise MalformedCredential("type does not include VerifiableCredential")
    issuer = _issuer_of(doc)
    if not isinstance(issuer, str) or not issuer:
        raise MalformedCredential("issuer is not a URL or an object with an id")
    cred_id = doc.get("id")
    if cred_id is not None and not isinstance(cred_id, str):
        raise MalformedCredential("id is not a string")
    # STRICT: one subject object (VC DM allows an array; streams admits one DID per credential).
    subject = _require_dict(doc.get("credentialSubject"), "credentialSubject")
    subject_id = subject.get("id")
    if subject_id is not None and not isinstance(subject_id, str):
        raise MalformedCredential("credentialSubject.id is not a string")
    valid_from = _parse_time_ms(doc["validFrom"], "validFrom") if "validFrom" in doc else None
    valid_until = _parse_time_ms(doc["validUntil"], "validUntil") if "validUntil" in doc else None

    verified = _verify_proof(doc, expected_purpose="assertionMethod", resolver=resolver, now_ms=now_ms)
    if verified.controller != issuer:  # STRICT: the issuer must control the signing key
        raise BadProof("credential is not signed by its issuer", CredentialFailure.WRONG_SIGNER)

    # VC DM 4.9: valid from validFrom (inclusive) until validUntil (inclusive).  Checked after the proof so
    # that an unsigned document never yields a more specific answer than "bad proof".
    if valid_from is not None and now_ms < valid_from:
        raise CredentialNotYetValid("credential is not valid yet")
    if valid_until is not None and now_ms > valid_until:
        raise CredentialExpired("credential has expired")

    if check_status:
        _check_status(doc, issuer, now_ms, resolver, status_lists)

    return VerifiedCredential(
        id=cred_id,
        issuer=issuer,
        subject=subject_id,
        types=tuple(types),
        claims={k: v for k, v in subject.items() if k != "id"},
        valid_from_ms=valid_from,
        valid_until_ms=valid_until,
        document=dict(doc),
    )


# ------------------------------------------------------------------------------------------------------------
# Bitstring Status List (BSL)


class StatusList:
    """A W3C Bitstring Status List: one bit per credential, ``True`` meaning the status (e.g. revoked) is set.

    Bit ``i`` is bit ``7 - i % 8`` of byte ``i // 8``: BSL 3.1 puts index 0 at "the left-most bit".
    """

    __slots__ = ("_bits",)

    def __init__(self, size: int = BSL_MIN_ENTRIES) -> None:
        if size < BSL_MIN_ENTRIES or size % 8:
            raise LocalProtocolError(f"a status list holds a multiple of 8 entries, >= {BSL_MIN_ENTRIES}")
        self._bits = bytearray(size // 8)

    @property
    def size(self) -> int:
        """Number of entries."""
        return len(self._bits) * 8

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.size:
            raise LocalProtocolError("status list index out of range")
        return index // 8, 0x80 >> (index % 8)

    def get(self, index: int) -> bool:
        """Whether entry ``index`` is set."""
        byte, mask = self._locate(index)
        return bool(self._bits[byte] & mask)

    def set(self, index: int, value: bool = True) -> None:
        """Set (or with ``value=False`` clear) entry ``index``."""
        byte, mask = self._locate(index)
        if value:
            self._bits[byte] |= mask
        else:
            self._bits[byte] &= ~mask & 0xFF

    def clear(self, index: int) -> None:
        """Clear entry ``index``."""
        self.set(index, False)

    def encode(self) -> str:
        """BSL 3.1 (Bitstring Generation): GZIP, then multibase base64url without padding (``u`` prefix).
        The gzip header carries no timestamp, so the encoding is deterministic."""
        packed = gzip.compress(bytes(self._bits), mtime=0)
        return "u" + base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, encoded: object) -> StatusList:
        """BSL 3.3 (Bitstring Expansion) of an ``encodedList``.

        Raises :class:`StatusUnavailable` for bad multibase or gzip, a list shorter than the BSL minimum
        (STATUS_LIST_LENGTH_ERROR) or longer than our bound (a gzip bomb, THREATS 8).
        """
        if not isinstance(encoded, str) or not re.fullmatch(r"u[A-Za-z0-9_-]*", encoded):
            raise StatusUnavailable("encodedList is not multibase base64url")
        body = encoded[1:]
        try:
            packed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
            raw = inflater.decompress(packed, _MAX_STATUS_LIST_BYTES + 1)
        except (binascii.Error, ValueError, zlib.error) as exc:
            raise StatusUnavailable("encodedList is not a gzip-compressed bitstring") from exc
        if len(raw) > _MAX_STATUS_LIST_BYTES or not inflater.eof or inflater.unused_data:
            raise StatusUnavailable("encodedList is too large or has trailing data")
        if len(raw) * 8 < BSL_MIN_ENTRIES:
            raise StatusUnavailable("status list is shorter than the BSL minimum")
        out = cls.__new__(cls)
        out._bits = bytearray(raw)
        return out


class StatusListLookup(Protocol):
    """Where verifiers find status-list credentials: ``get(url)`` returns the credential or ``None``.  A lookup
    that raises is reported as :class:`StatusLookupFailed` (a :class:`StatusUnavailable`): a subscription is
    refused, but a re-check cannot decide now (:meth:`CredentialPolicy.still_valid` raises it; the subscriber is
    left as it is), so raise only when the list could not be fetched -- return ``None`` for a list that is there
    but unusable.

    ``get`` is called synchronously, on the author's event loop, at every subscription and periodic re-check that
    holds a credential with a status entry: while it runs, nothing else of the party does.  Answer from memory or
    local files (as :class:`StatusListSource` and policy files' ``status_lists`` do); a list served over a
    network is fetched by a task or thread of the application's own and handed in here, never fetched in
    ``get``."""

    def get(self, url: str) -> Mapping[str, Any] | None: ...


class StatusListSource:
    """An in-memory :class:`StatusListLookup`: status-list credential ``id`` -> the signed credential.

    Publishing returns :func:`status_list_digest`, the value to anchor on the ledger (done elsewhere).
    """

    def __init__(self) -> None:
        self._lists: dict[str, dict[str, Any]] = {}

    def publish(self, status_list_credential: Mapping[str, Any]) -> bytes:
        """Store (or replace) a status-list credential under its ``id``; return its digest for anchoring.

        Raises :class:`~streams.errors.LocalProtocolError` if it has no string ``id``.
        """
        list_id = status_list_credential.get("id")
        if not isinstance(list_id, str):
            raise LocalProtocolError("a status list credential needs a string id")
        self._lists[list_id] = dict(status_list_credential)
        return status_list_digest(status_list_credential)

    def get(self, url: str) -> Mapping[str, Any] | None:
        """The status-list credential published under ``url``, or ``None``."""
        return self._lists.get(url)


def status_list_digest(vc: Mapping[str, Any]) -> bytes:
    """SHA-256 of the JCS form of a (signed) status-list credential: what the ledger anchors, so that the
    issuer cannot show different lists to different verifiers or silently roll a revocation back."""
    return hashlib.sha256(canonicalize(dict(vc))).digest()


def issue_status_list_credential(
    issuer: Identity,
    list_id: str,
    status_list: StatusList,
    *,
    purpose: str = "revocation",
    valid_from: datetime | str,
    valid_until: datetime | str | None = None,
    created: datetime | str | None = None,
) -> dict[str, Any]:
    """A signed ``BitstringStatusListCredential`` (BSL 2.2) with id ``list_id`` holding ``status_list``.

    Re-issue it (with a later ``created``) after every :meth:`StatusList.set`/``clear``; publish it and anchor
    :func:`status_list_digest` of it.
    """
    vc: dict[str, Any] = {
        "@context": [VC_CONTEXT_V2],
        "id": list_id,
        "type": ["VerifiableCredential", "BitstringStatusListCredential"],
        "issuer": issuer.did,
        "validFrom": _format_time(valid_from, "valid_from"),
    }
    if valid_until is not None:
        vc["validUntil"] = _format_time(valid_until, "valid_until")
    vc["credentialSubject"] = {
        "id": f"{list_id}#list",
        "type": "BitstringStatusList",
        "statusPurpose": purpose,
        "encodedList": status_list.encode(),
    }
    return add_proof(
        vc, issuer, proof_purpose="assertionMethod", created=created if created is not None else valid_from
    )


_STATUS_FAILURE = {"revocation": CredentialFailure.REVOKED, "suspension": CredentialFailure.SUSPENDED}


def _check_status(doc: Mapping[str, Any], issuer: str, now_ms: int, resolver: DIDResolver,
                  status_lists: StatusListLookup | None) -> None:
    """Every ``credentialStatus`` entry of a credential whose proof verified (BSL 3.2).

    An entry whose lookup failed (:class:`StatusLookupFailed`: no answer now) does not stop the others: one that
    answers (revoked, suspended, an invalid list) decides whatever the unreachable list would say, so that whoever
    makes one list unreachable cannot keep a credential revoked in another one "undecided".  The lookup failure is
    raised only if no entry answered."""
    if "credentialStatus" in doc:
        entries = doc["credentialStatus"]
        failed: StatusLookupFailed | None = None
        for entry in entries if isinstance(entries, list) else [entries]:
            try:
                _check_status_entry(entry, issuer, now_ms, resolver, status_lists)
            except StatusLookupFailed as exc:
                failed = failed or exc
        if failed is not None:
            raise failed


def _check_status_entry(
    entry: object,
    issuer: str,
    now_ms: int,
    resolver: DIDResolver,
    status_lists: StatusListLookup | None,
) -> None:
    """BSL 3.2 (Validate Algorithm) for one ``credentialStatus`` entry of a credential by ``issuer``."""
    e = _require_dict(entry, "credentialStatus")
    if e.get("type") != "BitstringStatusListEntry":
        # An unknown status mechanism cannot be checked: fail closed.
        raise StatusUnavailable("unsupported credentialStatus type")
    purpose = e.get("statusPurpose")
    url = e.get("statusListCredential")
    raw_index = e.get("statusListIndex")
    if not isinstance(purpose, str) or not isinstance(url, str):
        raise MalformedCredential("status entry lacks statusPurpose or statusListCredential")
    if not isinstance(raw_index, str) or not re.fullmatch(r"0|[1-9][0-9]{0,9}", raw_index):
        raise MalformedCredential("statusListIndex is not a string holding a non-negative integer")
    if e.get("statusSize", 1) != 1:
        raise StatusUnavailable("only statusSize 1 is supported")
    index = int(raw_index)
    if purpose not in _STATUS_FAILURE:
        raise StatusUnavailable("unsupported statusPurpose")  # e.g. "message": no admit/refuse meaning
    if status_lists is None:
        raise StatusUnavailable("credential has a status entry but no status lists were given")
    try:
        list_vc = status_lists.get(url)
    except Exception as exc:  # a lookup that fails (its ledger, its disk, its network): unavailable, fail closed
        raise StatusLookupFailed(f"status list lookup failed ({type(exc).__name__})") from exc
    if list_vc is None:
        raise StatusUnavailable("status list credential not found")
    try:
        # BSL 3.2 step: verify all proofs of the status list credential (its own status is not checked:
        # status lists are not themselves revocable here).
        verified = _verify_credential(list_vc, now_ms, resolver, None, check_status=False)
    except ResolutionFailed as exc:  # its issuer could not be resolved now: no answer, as for a failed lookup
        raise StatusLookupFailed("status list issuer could not be resolved") from exc
    except CredentialError as exc:
        raise StatusUnavailable(f"status list credential does not verify ({exc.failure.value})") from exc
    if "BitstringStatusListCredential" not in verified.types or verified.id != url:
        raise StatusUnavailable("status list credential has the wrong type or id")
    # STRICT: only the credential's issuer may revoke it (or un-revoke it).
    if verified.issuer != issuer:
        raise StatusUnavailable("status list is not published by the credential's issuer")
    claims = verified.claims
    list_purposes = claims.get("statusPurpose")
    purposes = [list_purposes] if isinstance(list_purposes, str) else list_purposes
    if (
        claims.get("type") != "BitstringStatusList"
        or not isinstance(purposes, list)
        or purpose not in purposes
    ):
        raise StatusUnavailable("status list purpose does not match the entry (STATUS_VERIFICATION_ERROR)")
    bits = StatusList.decode(claims.get("encodedList"))
    if index >= bits.size:
        raise StatusUnavailable("statusListIndex beyond the list (STATUS_RANGE_ERROR)")
    if bits.get(index):
        raise CredentialRevoked(f"credential status is set ({purpose})", _STATUS_FAILURE[purpose])


# ------------------------------------------------------------------------------------------------------------
# Presentations (VC DM 4.13) bound to a challenge and a domain (DI 2.1)


def _challenge_text(value: str | bytes) -> str:
    return value.hex() if isinstance(value, bytes) else value


def present(
    holder: Identity,
    credentials: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    challenge: str | bytes,
    domain: str | bytes,
    created: datetime | str,
) -> bytes:
    """A compact (JCS) VerifiablePresentation of ``credentials`` by ``holder``, bound to one challenge/domain.

    The proof is eddsa-jcs-2022 with ``proofPurpose`` ``authentication`` and the ``challenge`` and ``domain``
    options (DI 2.1); bytes are hex-encoded.  In ``streams`` the challenge is the author's subscription nonce
    and the domain the channel id, so the bytes are useless for any other subscription (THREATS 3, 5).

    Raises :class:`~streams.errors.LocalProtocolError` if there are too many credentials or the result
    exceeds :data:`MAX_PRESENTATION_BYTES`.
    """
    creds = [dict(credentials)] if isinstance(credentials, Mapping) else [dict(c) for c in credentials]
    if len(creds) > MAX_CREDENTIALS_PER_PRESENTATION:
        raise LocalProtocolError("too many credentials for one presentation")
    vp: dict[str, Any] = {
        "@context": [VC_CONTEXT_V2],
        "type": ["VerifiablePresentation"],
        "holder": holder.did,
        "verifiableCredential": creds,
    }
    signed = add_proof(
        vp,
        holder,
        proof_purpose="authentication",
        created=created,
        challenge=_challenge_text(challenge),
        domain=_challenge_text(domain),
    )
    data = canonicalize(signed)
    if len(data) > MAX_PRESENTATION_BYTES:
        raise LocalProtocolError("presentation exceeds MAX_PRESENTATION_BYTES")
    return data


class _DuplicateKey(ValueError):
    """A JSON object with a key twice: ambiguous (parsers disagree on which value counts), refused wherever this
    package reads a credential, a presentation or a status list."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey("duplicate key")  # ambiguous JSON: parsers disagree on which one wins
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedCredential("presentation is not bytes")
    if len(data) > MAX_PRESENTATION_BYTES:
        raise MalformedCredential("presentation is too large")
    try:
        return json.loads(
            bytes(data).decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MalformedCredential("presentation is not strict UTF-8 JSON") from exc


def verify_presentation(
    data: bytes,
    *,
    expected_holder_did: str,
    challenge: str | bytes,
    domain: str | bytes,
    now_ms: int,
    resolver: DIDResolver | None = None,
    status_lists: StatusListLookup | None = None,
) -> list[VerifiedCredential]:
    """Verify a presentation made by :func:`present` and every credential in it; return the credentials.

    The presentation must be held by ``expected_holder_did`` and signed by a key that DID controls, with
    ``proofPurpose`` ``authentication`` and exactly this ``challenge`` and ``domain`` (bytes compare as hex).
    Each credential is checked by :func:`verify_credential` at ``now_ms``.

    Raises a :class:`CredentialError` subclass and nothing else (:class:`PresentationMismatch` for a replay
    or another holder); the caller should refuse the request.
    """
    return _verify_presentation(data, expected_holder_did, challenge, domain, now_ms, resolver or KeyResolver(),
                                status_lists, None)[0]


def _verify_presentation(
    data: bytes,
    expected_holder_did: str,
    challenge: str | bytes,
    domain: str | bytes,
    now_ms: int,
    resolver: DIDResolver,
    status_lists: StatusListLookup | None,
    screen: Callable[[object], str | None] | None,
) -> tuple[list[VerifiedCredential], str | None]:
    """:func:`verify_presentation`; ``screen(credential)`` (the document as sent, unchecked) names why a caller
    has no use for a credential, or ``None``: a credential it names a reason for is left out unverified -- no
    DID resolution, signature check or status-list lookup of an issuer the caller does not trust (THREATS 8) --
    and the last such reason is returned with the credentials that verified."""
    vp = _require_dict(_parse_json(data), "presentation")
    _context_of(vp)
    if "VerifiablePresentation" not in _as_str_list(vp.get("type"), "type"):
        raise MalformedCredential("type does not include VerifiablePresentation")
    holder = vp.get("holder")
    holder_id = holder.get("id") if isinstance(holder, dict) else holder
    if not isinstance(holder_id, str):
        raise MalformedCredential("presentation holder is not a DID")
    if holder_id != expected_holder_did:
        raise PresentationMismatch("presentation holder is not the requester", CredentialFailure.WRONG_HOLDER)
    creds = vp.get("verifiableCredential", [])
    creds = creds if isinstance(creds, list) else [creds]
    if len(creds) > MAX_CREDENTIALS_PER_PRESENTATION:
        raise MalformedCredential("too many credentials in the presentation")
    proof = _require_dict(vp.get("proof"), "proof")
    # Cheap replay check before any signature work (THREATS 8); the proof check below makes it binding.
    if proof.get("challenge") != _challenge_text(challenge) or proof.get("domain") != _challenge_text(domain):
        raise PresentationMismatch(
            "presentation is bound to another challenge or domain", CredentialFailure.WRONG_CHALLENGE
        )
    verified = _verify_proof(vp, expected_purpose="authentication", resolver=resolver, now_ms=now_ms)
    if verified.controller != holder_id:
        raise BadProof("presentation is not signed by its holder", CredentialFailure.WRONG_SIGNER)
    out: list[VerifiedCredential] = []
    why: str | None = None
    for c in creds:
        reason = screen(c) if screen is not None else None
        if reason is None:
            out.append(verify_credential(c, now_ms, resolver, status_lists))
        else:
            why = reason
    return out, why


# ------------------------------------------------------------------------------------------------------------
# Admission policy


@dataclass(frozen=True)
class CredentialPolicy:
    """Admit a requester that presents a valid credential of type ``credential_type`` about its own DID,
    issued by one of ``trusted_issuers`` (THREATS 5).

    The presentation (``request.credential``) must be bound to the request's challenge nonce
    (``challenge = request.nonce.hex()``) and channel (``domain = request.channel.hex()``), held and signed by
    the requester's DID.  The credential must verify at ``now_ms``, be unexpired and, if it carries a
    status entry, not revoked or suspended in its issuer's status list found in ``status_lists``.

    Combine with :class:`~streams.policy.AllOf` / :class:`~streams.policy.AnyOf` and the allow/deny lists.
    ``Decision.reason`` is for the author's log (and is logged at INFO on ``streams.credentials``); it never
    contains keys, and the requester itself is only told that it was refused.
    """

    credential_type: str  #: the ``type`` entry the credential must carry
    trusted_issuers: frozenset[str]  #: issuer DIDs whose credentials are accepted
    permission: Permission = Permission.READ  #: granted on admission
    status_lists: StatusListLookup | None = None  #: where status-list credentials are found (fail closed)
    resolver: DIDResolver = field(default_factory=KeyResolver)  #: resolves issuer and holder DIDs

    def decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        """Admit with :attr:`permission` or refuse with a reason for the author's log."""
        decision = self._decide(request, now_ms)
        _log.info(
            "credential policy: %s %s: %s",
            "admit" if decision.admit else "refuse",
            request.did,
            decision.reason,
        )
        return decision

    def _decide(self, request: SubscriptionRequest, now_ms: int) -> Decision:
        if not request.credential:
            return Decision.refuse("no credential presented")
        if not request.nonce:
            return Decision.refuse("no challenge nonce to bind the presentation to")
        try:
            creds, screened = _verify_presentation(
                request.credential, request.did, request.nonce.hex(), request.channel.hex(), now_ms,
                self.resolver, self.status_lists, lambda doc: self._no_use(doc, request.did),
            )
        except CredentialError as exc:
            return Decision.refuse(f"credential refused: {exc.failure.value}")
        why = screened or "no credential presented"
        for cred in creds:
            # The same checks again, on the credential as verified (the screen read it unchecked); and one with no
            # subject id, which the screen leaves to this, is about no DID.
            no_use = self._no_use(cred.document, request.did)
            if no_use is None and cred.subject != request.did:
                no_use = "credential is about another DID"
            if no_use is None:
                return Decision(
                    True, f"valid {self.credential_type} credential from a trusted issuer", self.permission,
                    canonicalize(cred.document),
                )
            why = no_use
        return Decision.refuse(why)

    def _no_use(self, doc: object, did: str) -> str | None:
        """Why a credential as sent (unchecked) cannot admit ``did`` whatever its proof and status say, or
        ``None``: its type, issuer and subject are read before anything is verified or looked up, so that a
        credential of an issuer this policy does not trust costs no DID resolution, signature check or status-list
        lookup (THREATS 8).  Malformed fields are left to the verification, which names them."""
        if not isinstance(doc, dict):
            return None
        types = doc.get("type")
        if isinstance(types, str):
            types = [types]
        if isinstance(types, list) and all(isinstance(t, str) for t in types) and self.credential_type not in types:
            return "credential is not of the required type"
        issuer = _issuer_of(doc)
        if isinstance(issuer, str) and issuer not in self.trusted_issuers:
            return "credential issuer is not trusted"
        subject = doc.get("credentialSubject")
        if isinstance(subject, dict) and isinstance(subject.get("id"), str) and subject["id"] != did:
            return "credential is about another DID"
        return None

    def still_valid(self, evidence: bytes, now_ms: int) -> bool:
        """Whether the credential that admitted a subscriber (the decision's ``evidence``) still holds at
        ``now_ms``: not revoked in its issuer's current status list, not expired.  The author calls this to cut
        off subscriptions whose credential was revoked (issue: "revoking a credential revokes the subscriptions
        it admitted").  Raises :class:`StatusLookupFailed` if the status-list lookup raised, :class:`ResolutionFailed`
        if the DID resolver did: no answer now."""
        resolver: DIDResolver = self.resolver or KeyResolver()
        try:
            doc = _require_dict(_parse_json(evidence), "credential")
            # Everything that needs no lookup first -- not even of the issuer's DID: an issuer no longer trusted
            # (who may also serve its DID document and the status list its credentials name) cannot keep its
            # subscribers in by making a lookup fail.  (The evidence verified when it was taken; the proof is
            # checked again below, so only a refusal is decided on the unchecked fields.)
            issuer = _issuer_of(doc)
            if (not isinstance(issuer, str) or issuer not in self.trusted_issuers
                    or self.credential_type not in _as_str_list(doc.get("type"), "type")
                    or ("validUntil" in doc and now_ms > _parse_time_ms(doc["validUntil"], "validUntil"))):
                return False
            cred = _verify_credential(doc, now_ms, resolver, None, check_status=False)
        except PolicyUnavailable:
            raise  # the resolver could not answer (ResolutionFailed): tried again at the next re-check
        except CredentialError:
            return False
        # (Its type and issuer, checked above, are what the verified credential holds.)
        try:
            _check_status(cred.document, cred.issuer, now_ms, resolver, self.status_lists)
        except StatusLookupFailed:
            raise  # no answer now: the re-check leaves this subscriber as it is (tried again at the next one)
        except CredentialError:
            return False
        return True
