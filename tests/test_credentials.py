"""Verifiable credentials: W3C eddsa-jcs-2022 vectors, issue/verify, revocation, presentations, the policy.

Every refusal named in THREATS property 5 is attacked here: expired, not yet valid, revoked, wrongly signed,
wrong type, untrusted issuer, replayed presentation, another holder.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import json
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import base58
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streams.credentials import (
    BSL_MIN_ENTRIES,
    BadProof,
    CredentialError,
    CredentialExpired,
    CredentialFailure,
    CredentialNotYetValid,
    CredentialPolicy,
    CredentialRevoked,
    MalformedCredential,
    PresentationMismatch,
    StatusList,
    StatusListSource,
    StatusUnavailable,
    UnknownCryptosuite,
    UnresolvableIssuer,
    add_proof,
    canonicalize,
    hash_data,
    issue_credential,
    issue_status_list_credential,
    present,
    status_list_digest,
    verify_credential,
    verify_presentation,
    verify_proof,
)
from streams.errors import DecodeError, LocalProtocolError, RejectReason, VerificationError
from streams.identity import DIDDocument, Identity, KeyResolver, PublicIdentity
from streams.policy import AllOf, AllowList, AnyOf, DenyList, SubscriptionRequest
from streams.wire import Permission

VECTORS = Path(__file__).parent / "vectors" / "w3c"

ISSUER = Identity.from_seed(bytes([1]) * 32)
HOLDER = Identity.from_seed(bytes([2]) * 32)
OTHER = Identity.from_seed(bytes([3]) * 32)
T0 = datetime(2025, 1, 1, tzinfo=UTC)
CHANNEL = bytes(range(32))
NONCE = bytes(range(100, 132))
LIST_URL = "https://issuer.example/status/1"
TYPE = "PaymentProviderCredential"


def ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


NOW = ms(T0 + timedelta(days=10))


def vector_json(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def vector_text(name: str) -> str:
    return (VECTORS / name).read_text().strip()


def vector_identity() -> Identity:
    """The W3C key pair: ``privateKeyMultibase`` is multicodec ed25519-priv (0x1300, varint 80 26) + seed."""
    raw = base58.b58decode(vector_json("keyPair.json")["privateKeyMultibase"][1:])
    assert raw[:2] == b"\x80\x26"
    return Identity.from_seed(raw[2:])


class StaticResolver:
    """A resolver for non-did:key controllers, as a deployment with did:web would plug in."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self.keys = keys

    def resolve(self, did: str) -> DIDDocument:
        if did in self.keys:
            pub = PublicIdentity.from_sign_public(self.keys[did])
            return DIDDocument(did, pub.sign_public, pub.kx_public)
        return KeyResolver().resolve(did)


def credential(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "valid_from": T0,
        "valid_until": T0 + timedelta(days=30),
        "created": T0,
    }
    args.update(kw)
    issuer = args.pop("issuer", ISSUER)
    subject = args.pop("subject", HOLDER.did)
    types = args.pop("types", [TYPE])
    claims = args.pop("claims", {"provider": "acme-pay"})
    return issue_credential(issuer, subject, types, claims, **args)


def status_lists(
    bits: StatusList | None = None, *, issuer: Identity = ISSUER, purpose: str = "revocation"
) -> StatusListSource:
    source = StatusListSource()
    source.publish(
        issue_status_list_credential(
            issuer, LIST_URL, bits or StatusList(), purpose=purpose, valid_from=T0, created=T0
        )
    )
    return source


# --- W3C test vectors (tests/vectors/w3c/README.md) ------------------------------------------------------


def test_vector_key_pair_is_the_did_key() -> None:
    assert vector_identity().did == "did:key:" + vector_json("keyPair.json")["publicKeyMultibase"]


def test_vector_intermediate_values_reproduced() -> None:
    unsigned = vector_json("unsignedJCS.json")
    canon_doc = canonicalize(unsigned)
    assert canon_doc.decode() == vector_text("canonDocJCS.txt")
    assert hashlib.sha256(canon_doc).hexdigest() == vector_text("docHashJCS.txt")
    proof_config = {**vector_json("proofOptionsJCS.json"), "@context": unsigned["@context"]}
    canon_proof = canonicalize(proof_config)
    assert canon_proof.decode() == vector_text("proofCanonJCS.txt")
    assert hash_data(canon_doc, canon_proof).hex() == vector_text("combinedHashJCS.txt")


def test_vector_signed_document_reproduced() -> None:
    signed = add_proof(
        vector_json("unsignedJCS.json"),
        vector_identity(),
        proof_purpose="assertionMethod",
        created="2023-02-24T23:36:38Z",
    )
    assert signed == vector_json("signedJCS.json")
    proof_value = signed["proof"]["proofValue"]
    assert proof_value == vector_text("sigBTC58JCS.txt")
    assert base58.b58decode(proof_value[1:]).hex() == vector_text("sigHexJCS.txt")


def test_vector_published_proof_verifies() -> None:
    did = vector_identity().did
    assert (
        verify_proof(
            vector_json("signedJCS.json"), expected_purpose="assertionMethod", resolver=KeyResolver()
        )
        == did
    )


def test_vector_published_credential_is_refused_as_issuer_does_not_control_key() -> None:
    # The current vector's issuer is https://vc.example/issuers/5678 but its key is a did:key: a streams
    # verifier requires the issuer to control the signing key (STRICT in credentials.py).
    with pytest.raises(BadProof) as info:
        verify_credential(vector_json("signedJCS.json"), NOW)
    assert info.value.failure is CredentialFailure.WRONG_SIGNER


@pytest.mark.parametrize("name", ["history/signedJCS-369f0f00.json", "history/signedJCS-4ced3573.json"])
def test_vector_earlier_published_credentials_verify(name: str) -> None:
    issuer = "https://vc.example/issuers/5678"
    resolver = StaticResolver({issuer: vector_identity().sign_public})
    vc = verify_credential(vector_json(name), NOW, resolver)
    assert vc.issuer == issuer
    assert vc.subject == "did:example:abcdefgh"
    assert vc.types == ("VerifiableCredential", "AlumniCredential")
    assert vc.claims == {"alumniOf": "The School of Examples"}
    assert vc.valid_from_ms == ms(datetime(2023, 1, 1, tzinfo=UTC))


def test_vector_signature_hex_of_earlier_generation() -> None:
    proof_value = vector_json("history/signedJCS-369f0f00.json")["proof"]["proofValue"]
    assert base58.b58decode(proof_value[1:]).hex() == vector_text("history/sigHexJCS-369f0f00.txt")


def test_vector_tampered_claim_is_refused() -> None:
    doc = vector_json("signedJCS.json")
    doc["credentialSubject"]["alumniOf"] = "Another School"
    with pytest.raises(BadProof):
        verify_proof(doc, expected_purpose="assertionMethod", resolver=KeyResolver())


# --- issue / verify ------------------------------------------------------------------------------------


def test_round_trip() -> None:
    vc = credential(credential_id="urn:uuid:1")
    assert vc["@context"] == ["https://www.w3.org/ns/credentials/v2"]
    assert vc["type"] == ["VerifiableCredential", TYPE]
    assert vc["proof"]["verificationMethod"] == f"{ISSUER.did}#{ISSUER.did[8:]}"
    assert vc["proof"]["proofValue"].startswith("z")
    out = verify_credential(json.loads(json.dumps(vc)), NOW)
    assert (out.id, out.issuer, out.subject) == ("urn:uuid:1", ISSUER.did, HOLDER.did)
    assert out.types == ("VerifiableCredential", TYPE)
    assert out.claims == {"provider": "acme-pay"}
    assert out.valid_until_ms == ms(T0 + timedelta(days=30))


def test_validity_period_boundaries() -> None:
    vc = credential()
    verify_credential(vc, ms(T0))
    verify_credential(vc, ms(T0 + timedelta(days=30)))
    with pytest.raises(CredentialNotYetValid):
        verify_credential(vc, ms(T0) - 1)
    with pytest.raises(CredentialExpired) as info:
        verify_credential(vc, ms(T0 + timedelta(days=30)) + 1)
    assert isinstance(info.value, VerificationError)
    assert info.value.reason is RejectReason.REFUSED


def test_time_zone_offsets_are_honoured() -> None:
    vc = credential(valid_from="2025-01-01T02:00:00+02:00", valid_until=None)
    verify_credential(vc, ms(T0))
    with pytest.raises(CredentialNotYetValid):
        verify_credential(vc, ms(T0) - 1)


def test_flipped_proof_value_is_refused() -> None:
    vc = credential()
    pv = vc["proof"]["proofValue"]
    vc["proof"]["proofValue"] = pv[:10] + ("2" if pv[10] != "2" else "3") + pv[11:]
    with pytest.raises(BadProof) as info:
        verify_credential(vc, NOW)
    assert info.value.reason is RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("credentialSubject", "provider"), "evil-pay"),
        (("credentialSubject", "id"), OTHER.did),
        (("validUntil",), "2099-01-01T00:00:00Z"),
        (("type",), ["VerifiableCredential", TYPE, "Admin"]),
        (("proof", "created"), "2025-01-02T00:00:00Z"),
    ],
)
def test_changed_after_signing_is_refused(path: tuple[str, ...], value: Any) -> None:
    vc = credential()
    target = vc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(BadProof):
        verify_credential(vc, NOW)


def test_signed_by_another_key_in_the_issuers_name_is_refused() -> None:
    vc = credential()
    del vc["proof"]
    forged = add_proof(vc, OTHER, proof_purpose="assertionMethod", created=T0)
    with pytest.raises(BadProof) as info:
        verify_credential(forged, NOW)
    assert info.value.failure is CredentialFailure.WRONG_SIGNER


def test_verification_method_naming_another_key_is_refused() -> None:
    vc = credential()
    vc["proof"]["verificationMethod"] = f"{ISSUER.did}#{OTHER.did[8:]}"
    with pytest.raises(UnresolvableIssuer):
        verify_credential(vc, NOW)


def test_unresolvable_issuer() -> None:
    vc = credential()
    vc["proof"]["verificationMethod"] = "did:web:issuer.example#key-1"
    with pytest.raises(UnresolvableIssuer):
        verify_credential(vc, NOW)


@pytest.mark.parametrize(
    ("field", "value"), [("cryptosuite", "eddsa-rdfc-2022"), ("type", "Ed25519Signature2020")]
)
def test_unknown_cryptosuite(field: str, value: str) -> None:
    vc = credential()
    vc["proof"][field] = value
    with pytest.raises(UnknownCryptosuite):
        verify_credential(vc, NOW)


def test_wrong_proof_purpose_is_refused() -> None:
    vc = credential()
    del vc["proof"]
    signed = add_proof(vc, ISSUER, proof_purpose="authentication", created=T0)
    with pytest.raises(BadProof):
        verify_credential(signed, NOW)


def test_appended_context_is_refused() -> None:
    vc = credential()
    vc["@context"].append("https://evil.example/context")
    with pytest.raises(BadProof):
        verify_credential(vc, NOW)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda vc: vc.pop("proof"),
        lambda vc: vc.__setitem__("proof", [vc["proof"]]),
        lambda vc: vc.__setitem__("@context", ["https://www.w3.org/2018/credentials/v1"]),
        lambda vc: vc.__setitem__("type", ["Whatever"]),
        lambda vc: vc.__setitem__("issuer", 7),
        lambda vc: vc.__setitem__("credentialSubject", "x"),
        lambda vc: vc.__setitem__("validFrom", "2025-01-01"),
        lambda vc: vc.__setitem__("validFrom", "2025-02-30T00:00:00Z"),
        lambda vc: vc["credentialSubject"].__setitem__("n", float("nan")),
        lambda vc: vc["credentialSubject"].__setitem__("n", 2**60),
    ],
)
def test_malformed_is_a_typed_error(mutate: Any) -> None:
    vc = credential()
    mutate(vc)
    with pytest.raises(MalformedCredential) as info:
        verify_credential(vc, NOW)
    assert isinstance(info.value, DecodeError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [None, [], "{}", 3, b"{}"])
def test_not_an_object(value: Any) -> None:
    with pytest.raises(MalformedCredential):
        verify_credential(value, NOW)


def test_issue_argument_errors() -> None:
    with pytest.raises(LocalProtocolError):
        credential(claims={"id": "did:key:x"})
    with pytest.raises(LocalProtocolError):
        credential(valid_from=datetime(2025, 1, 1))  # naive
    with pytest.raises(LocalProtocolError):
        credential(status=(LIST_URL, -1))


# --- Bitstring Status List ------------------------------------------------------------------------------


def test_status_list_encoding() -> None:
    bits = StatusList()
    assert bits.size == BSL_MIN_ENTRIES
    bits.set(0)
    bits.set(9)
    encoded = bits.encode()
    assert encoded.startswith("u")
    assert "=" not in encoded
    raw = gzip.decompress(base64.urlsafe_b64decode(encoded[1:] + "=" * (-len(encoded[1:]) % 4)))
    assert raw[:2] == b"\x80\x40"  # BSL 3.1: index 0 is the left-most bit
    back = StatusList.decode(encoded)
    assert [i for i in range(16) if back.get(i)] == [0, 9]
    bits.clear(0)
    assert not bits.get(0)
    assert bits.get(9)
    with pytest.raises(LocalProtocolError):
        StatusList(1024)
    with pytest.raises(LocalProtocolError):
        bits.get(BSL_MIN_ENTRIES)


@pytest.mark.parametrize(
    "encoded",
    [
        "zabc",
        "u!!!",
        "u" + "A" * 10,
        "u" + StatusList().encode()[1:-4],  # truncated gzip
    ],
)
def test_status_list_bad_encodings(encoded: str) -> None:
    with pytest.raises(StatusUnavailable):
        StatusList.decode(encoded)


def test_status_list_too_short_or_bomb() -> None:
    def enc(raw: bytes) -> str:
        return "u" + base64.urlsafe_b64encode(gzip.compress(raw)).rstrip(b"=").decode()

    with pytest.raises(StatusUnavailable):
        StatusList.decode(enc(bytes(1024)))
    with pytest.raises(StatusUnavailable):
        StatusList.decode(enc(bytes(8 << 20)))  # 8 MiB of zeros: a gzip bomb of ~8 KiB


def test_revocation() -> None:
    bits = StatusList()
    vc = credential(status=(LIST_URL, 42))
    assert vc["credentialStatus"] == {
        "id": f"{LIST_URL}#42",
        "type": "BitstringStatusListEntry",
        "statusPurpose": "revocation",
        "statusListIndex": "42",
        "statusListCredential": LIST_URL,
    }
    verify_credential(vc, NOW, status_lists=status_lists(bits))
    bits.set(41)
    bits.set(43)
    verify_credential(vc, NOW, status_lists=status_lists(bits))
    bits.set(42)
    with pytest.raises(CredentialRevoked) as info:
        verify_credential(vc, NOW, status_lists=status_lists(bits))
    assert info.value.failure is CredentialFailure.REVOKED
    bits.clear(42)
    verify_credential(vc, NOW, status_lists=status_lists(bits))


def test_suspension() -> None:
    bits = StatusList()
    bits.set(7)
    vc = credential(status=(LIST_URL, 7), status_purpose="suspension")
    with pytest.raises(CredentialRevoked) as info:
        verify_credential(vc, NOW, status_lists=status_lists(bits, purpose="suspension"))
    assert info.value.failure is CredentialFailure.SUSPENDED
    with pytest.raises(StatusUnavailable):  # a revocation list says nothing about suspension
        verify_credential(vc, NOW, status_lists=status_lists(bits, purpose="revocation"))


def test_status_fails_closed() -> None:
    vc = credential(status=(LIST_URL, 1))
    with pytest.raises(StatusUnavailable):
        verify_credential(vc, NOW)  # no status lists at all
    with pytest.raises(StatusUnavailable):
        verify_credential(vc, NOW, status_lists=StatusListSource())  # list not published
    with pytest.raises(StatusUnavailable):
        verify_credential(vc, NOW, status_lists=status_lists(issuer=OTHER))  # someone else's list
    far = credential(status=(LIST_URL, BSL_MIN_ENTRIES))
    with pytest.raises(StatusUnavailable):
        verify_credential(far, NOW, status_lists=status_lists())  # STATUS_RANGE_ERROR


def test_status_list_credential_is_verified() -> None:
    bits = StatusList()
    bits.set(5)
    source = status_lists(bits)
    list_vc = copy.deepcopy(source.get(LIST_URL))
    assert list_vc is not None
    list_vc["credentialSubject"]["encodedList"] = StatusList().encode()  # un-revoke without the issuer's key
    forged = StatusListSource()
    forged.publish(list_vc)
    vc = credential(status=(LIST_URL, 5))
    with pytest.raises(CredentialRevoked):
        verify_credential(vc, NOW, status_lists=source)
    with pytest.raises(StatusUnavailable) as info:
        verify_credential(vc, NOW, status_lists=forged)
    assert isinstance(info.value.__cause__, BadProof)


def test_status_list_digest_changes_with_revocation() -> None:
    bits = StatusList()
    source = StatusListSource()
    first = source.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    bits.set(3)
    second = issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0)
    assert status_list_digest(second) == hashlib.sha256(canonicalize(second)).digest()
    assert first != status_list_digest(second)
    # deterministic: the same list re-issued at the same time has the same digest
    assert status_list_digest(second) == status_list_digest(
        issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0)
    )


# --- presentations ----------------------------------------------------------------------------------------


def presentation(holder: Identity = HOLDER, vcs: Any = None, **kw: Any) -> bytes:
    args: dict[str, Any] = {"challenge": NONCE, "domain": CHANNEL, "created": T0 + timedelta(days=10)}
    args.update(kw)
    return present(holder, credential() if vcs is None else vcs, **args)


def verify_vp(data: bytes, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "expected_holder_did": HOLDER.did,
        "challenge": NONCE.hex(),
        "domain": CHANNEL.hex(),
        "now_ms": NOW,
    }
    args.update(kw)
    return verify_presentation(data, **args)


def test_presentation_round_trip() -> None:
    data = presentation()
    vp = json.loads(data)
    assert vp["type"] == ["VerifiablePresentation"]
    assert vp["holder"] == HOLDER.did
    assert vp["proof"]["proofPurpose"] == "authentication"
    assert (vp["proof"]["challenge"], vp["proof"]["domain"]) == (NONCE.hex(), CHANNEL.hex())
    assert data == canonicalize(vp)  # compact: the JCS form
    [vc] = verify_vp(data)
    assert vc.subject == HOLDER.did
    assert vc.issuer == ISSUER.did


@pytest.mark.parametrize(
    "kw",
    [
        {"challenge": bytes(32).hex()},
        {"domain": bytes(32).hex()},
        {"challenge": CHANNEL.hex(), "domain": NONCE.hex()},
    ],
)
def test_presentation_replayed_elsewhere_is_refused(kw: dict[str, str]) -> None:
    with pytest.raises(PresentationMismatch) as info:
        verify_vp(presentation(), **kw)
    assert info.value.failure is CredentialFailure.WRONG_CHALLENGE
    assert info.value.reason is RejectReason.BAD_CHALLENGE


def test_presentation_with_rewritten_challenge_is_refused() -> None:
    vp = json.loads(presentation(challenge=bytes(32)))
    vp["proof"]["challenge"] = NONCE.hex()  # a recorded presentation retargeted at a new challenge
    with pytest.raises(BadProof):
        verify_vp(canonicalize(vp))


def test_presentation_holder_mismatch_is_refused() -> None:
    with pytest.raises(PresentationMismatch) as info:
        verify_vp(presentation(), expected_holder_did=OTHER.did)
    assert info.value.failure is CredentialFailure.WRONG_HOLDER
    vp = json.loads(presentation())
    vp["holder"] = OTHER.did  # claim to be OTHER while signed by HOLDER
    with pytest.raises(BadProof):
        verify_vp(canonicalize(vp), expected_holder_did=OTHER.did)


def test_presentation_carries_credential_errors() -> None:
    with pytest.raises(CredentialExpired):
        verify_vp(presentation(), now_ms=ms(T0 + timedelta(days=31)))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"a":1,"a":2}',
        b'{"x":NaN}',
        b"[" * 5000 + b"]" * 5000,
        b" " * (64 * 1024 + 1),
    ],
)
def test_presentation_malformed_bytes(data: bytes) -> None:
    with pytest.raises(MalformedCredential):
        verify_vp(data)


# --- the admission policy -------------------------------------------------------------------------------


def request(did: str = HOLDER.did, cred: bytes | None = None, nonce: bytes = NONCE) -> SubscriptionRequest:
    ident = {HOLDER.did: HOLDER, OTHER.did: OTHER}[did]
    return SubscriptionRequest(
        channel=CHANNEL,
        did=did,
        sign_public=ident.sign_public,
        credential=presentation(ident) if cred is None else cred,
        nonce=nonce,
    )


POLICY = CredentialPolicy(TYPE, frozenset({ISSUER.did}), Permission.READ)


def test_policy_admits_valid_credential() -> None:
    d = POLICY.decide(request(), NOW)
    assert d.admit
    assert d.permission is Permission.READ


def test_policy_with_revocation() -> None:
    bits = StatusList()
    source = StatusListSource()
    source.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), Permission.READ_WRITE, status_lists=source)
    req = request(cred=presentation(vcs=credential(status=(LIST_URL, 9))))
    assert policy.decide(req, NOW).admit
    bits.set(9)
    source.publish(issue_status_list_credential(ISSUER, LIST_URL, bits, valid_from=T0))
    d = policy.decide(req, NOW)
    assert not d.admit
    assert "revoked" in d.reason
    # without any status source the policy fails closed
    assert not POLICY.decide(req, NOW).admit


@pytest.mark.parametrize(
    ("req", "now", "why"),
    [
        (lambda: request(cred=b""), NOW, "no credential"),
        (lambda: request(nonce=b""), NOW, "no challenge"),
        (lambda: request(), ms(T0 + timedelta(days=31)), "expired"),
        (lambda: request(), ms(T0) - 1, "not yet valid"),
        (lambda: request(cred=presentation(vcs=credential(types=["OtherCredential"]))), NOW, "type"),
        (lambda: request(cred=presentation(vcs=credential(issuer=OTHER))), NOW, "issuer"),
        (lambda: request(cred=presentation(vcs=[])), NOW, "no credential"),
        (lambda: request(nonce=bytes(32)), NOW, "another challenge"),
        (lambda: request(did=OTHER.did, cred=presentation()), NOW, "holder"),
        # OTHER presents HOLDER's credential as its own: the presentation is fine, the subject is not
        (lambda: request(did=OTHER.did, cred=presentation(OTHER)), NOW, "another DID"),
    ],
)
def test_policy_refusals(req: Any, now: int, why: str) -> None:
    d = POLICY.decide(req(), now)
    assert not d.admit
    assert why in d.reason
    assert ISSUER.did not in d.reason
    assert TYPE not in d.reason


def test_policy_bad_signature_refused() -> None:
    vc = credential()
    vc["credentialSubject"]["provider"] = "evil"
    d = POLICY.decide(request(cred=presentation(vcs=vc)), NOW)
    assert not d.admit
    assert "bad proof" in d.reason


class CountingLookup:
    """A status-list source that counts its lookups (a real StatusListSource behind it)."""

    def __init__(self, source: StatusListSource) -> None:
        self.source = source
        self.urls: list[str] = []

    def get(self, url: str) -> Any:
        self.urls.append(url)
        return self.source.get(url)


class CountingResolver(KeyResolver):
    def __init__(self) -> None:
        self.dids: list[str] = []

    def resolve(self, did: str) -> DIDDocument:
        self.dids.append(did)
        return super().resolve(did)


@pytest.mark.parametrize(
    ("vc", "why"),
    [
        # An issuer the policy does not trust names the trusted issuer's status list (its credential is well
        # signed by its own key): the list must not be looked up and verified for it, nor its DID resolved.
        (lambda: credential(issuer=OTHER, status=(LIST_URL, 9)), "issuer is not trusted"),
        (lambda: credential(types=["OtherCredential"], status=(LIST_URL, 9)), "type"),
        (lambda: credential(subject=OTHER.did, status=(LIST_URL, 9)), "another DID"),
    ],
)
def test_policy_checks_nothing_of_a_credential_it_has_no_use_for(vc: Any, why: str) -> None:
    """THREATS 8 (cheap checks first): a credential whose issuer, type or subject cannot admit the requester is
    refused on those fields, before its issuer's DID is resolved, its proof checked or its status list looked up
    -- those cost the author work (and, with a resolver or a status source of a deployment, lookups) that any
    requester could ask for with a credential it signed itself."""
    lookup = CountingLookup(status_lists())
    resolver = CountingResolver()
    policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), Permission.READ, status_lists=lookup,
                              resolver=resolver)
    d = policy.decide(request(cred=presentation(vcs=vc())), NOW)
    assert not d.admit
    assert why in d.reason
    assert lookup.urls == []
    assert resolver.dids == [HOLDER.did]  # the presentation's own proof only
    # The same credential from the trusted issuer, about the requester, is looked up and admitted.
    d = policy.decide(request(cred=presentation(vcs=credential(status=(LIST_URL, 9)))), NOW)
    assert d.admit
    assert lookup.urls == [LIST_URL]


def test_policy_admits_by_a_usable_credential_beside_one_it_has_no_use_for() -> None:
    lookup = CountingLookup(status_lists())
    policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), Permission.READ, status_lists=lookup)
    vcs = [credential(issuer=OTHER, status=(LIST_URL, 1)), credential(status=(LIST_URL, 2))]
    d = policy.decide(request(cred=presentation(vcs=vcs)), NOW)
    assert d.admit
    assert lookup.urls == [LIST_URL]  # the trusted issuer's entry only
    # A usable credential with a bad proof still refuses the whole presentation, as before.
    bad = credential()
    bad["credentialSubject"]["provider"] = "evil"
    d = policy.decide(request(cred=presentation(vcs=[credential(issuer=OTHER), bad])), NOW)
    assert not d.admit
    assert "bad proof" in d.reason


def test_policy_combinators() -> None:
    deny_holder = DenyList(frozenset({HOLDER.did}))
    assert not AllOf((POLICY, deny_holder)).decide(request(), NOW).admit
    assert AllOf((POLICY, DenyList(frozenset({OTHER.did})))).decide(request(), NOW).admit
    either = AnyOf((AllowList.of([OTHER.did], Permission.AUDIT), POLICY))
    d = either.decide(request(did=OTHER.did, cred=b""), NOW)
    assert d.admit
    assert d.permission is Permission.AUDIT
    d = either.decide(request(), NOW)
    assert d.admit
    assert d.permission is Permission.READ
    assert not either.decide(request(nonce=bytes(32)), NOW).admit


# --- fuzzing: hostile input is refused with a typed error, never anything else --------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=8) | st.floats()
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
SIGNED = credential(status=(LIST_URL, 3))
SOURCE = status_lists()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(SIGNED)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    doc: Any = copy.deepcopy(SIGNED)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = None
        target: Any = doc
        try:
            for key in path:
                if not isinstance(target, (dict, list)):
                    # An earlier mutation replaced a container on this path with a scalar; a string would
                    # even index (``"abc"[0]``), leaving a parent that cannot be assigned to.
                    raise TypeError(key)
                parent, target = target, target[key]
        except (KeyError, IndexError, TypeError):
            continue
        op = draw(st.sampled_from(["replace", "delete", "insert"]))
        if not path:
            doc = draw(JSON) if op == "replace" else doc
            continue
        if op == "replace":
            parent[path[-1]] = draw(JSON)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(target, dict):
            target[draw(st.text(max_size=6))] = draw(JSON)
        elif isinstance(target, list):
            target.insert(draw(st.integers(0, len(target))), draw(JSON))
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_credential_never_verifies(doc: Any) -> None:
    assume(doc != SIGNED)
    with pytest.raises(CredentialError):
        verify_credential(doc, NOW, status_lists=SOURCE)


def test_unmutated_fuzz_seed_verifies() -> None:
    verify_credential(copy.deepcopy(SIGNED), NOW, status_lists=SOURCE)


PRESENTED = presentation(vcs=SIGNED)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_presentation_bytes_never_verify(data: st.DataObject) -> None:
    raw = bytearray(PRESENTED)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    assume(bytes(raw) != PRESENTED)
    try:
        verify_vp(bytes(raw), status_lists=SOURCE)
    except CredentialError:
        return
    # A byte change can leave the JSON meaning intact (e.g. whitespace is not JCS but parses the same, or an
    # escape is re-spelt); only then may it verify.
    assert json.loads(bytes(raw)) == json.loads(PRESENTED)


def test_errors_survive_pickling() -> None:
    for err in [
        MalformedCredential("m"),
        BadProof("b", CredentialFailure.WRONG_SIGNER),
        CredentialExpired("e"),
    ]:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert (str(back), back.failure, back.reason) == (str(err), err.failure, err.reason)
