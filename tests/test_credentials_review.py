"""Cold attack review of the credential, did:key and policy code: each test here failed before its fix.

Real PyNaCl keys, real files and the embedded ledger; nothing under test is mocked.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import base58
import nacl.signing
import pytest

from streams.credentials import (
    VC_CONTEXT_V2,
    BadProof,
    CredentialError,
    CredentialPolicy,
    StatusList,
    StatusListSource,
    StatusLookupFailed,
    add_proof,
    canonicalize,
    hash_data,
    issue_credential,
    issue_status_list_credential,
    verify_credential,
    verify_presentation,
)
from streams.identity import DIDDocument, Identity, KeyResolver
from streams.ledger.embedded import EmbeddedLedger
from streams.policy_file import FileStatusLists, load_policy
from streams.status_anchor import AnchoredStatusLists, publish_status_list

from .corenet import Net, ident
from .test_admission import ISSUER, T0, TYPE, _sub_with

HOLDER = Identity.from_seed(b"\x66" * 32)
ANCHORED_URL = "https://issuer.example/status/review-anchored"


def _ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


# --- 1. an anchored status list with no JCS form is "lookup failed", not "invalid": revocation hidden ---------


def _anchored_policy_file(tmp: Path) -> Path:
    (tmp / "policy.toml").write_text(f"""
[policy]
[[policy.credential]]
type = "{TYPE}"
issuers = ["{ISSUER.did}"]
status_lists = ["sl.json"]
status_ledger = "sqlite:ledger.db"
""")
    return tmp / "policy.toml"


def _anchored_list(bits: StatusList) -> dict[str, Any]:
    return issue_status_list_credential(ISSUER, ANCHORED_URL, bits, valid_from=T0)


def test_a_status_list_file_without_a_jcs_form_does_not_keep_a_revoked_subscriber(tmp_path: Path) -> None:
    # The threat the status ledger exists for (README, status_ledger): whoever serves or can write the status
    # list file (a relay, a cache, a mirror) must not be able to hide a revocation.  Putting the old list back is
    # refused; but a list with one value that has no JCS form (a NaN, an integer beyond 2**53) made
    # AnchoredStatusLists.get raise while computing the digest, and that was reported as a *failed lookup*
    # (StatusLookupFailed, a PolicyUnavailable): the re-check leaves the subscriber "undecided" -- at every
    # re-check, for as long as the file stays so -- instead of cutting it off for an invalid list.
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    bits = StatusList()
    v1 = _anchored_list(bits)
    (tmp_path / "sl.json").write_bytes(canonicalize(v1))
    publish_status_list(ledger, ISSUER, v1)
    policy = load_policy(_anchored_policy_file(tmp_path))
    net = Net.make(policy=policy, n_subs=1)
    cred = issue_credential(ISSUER, ident(10).did, [TYPE], {"name": "p"}, valid_from=T0,
                            valid_until=T0 + timedelta(days=365), status=(ANCHORED_URL, 3), created=T0)
    _sub_with(net, "s0", cred)
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    # The issuer revokes s0 and anchors the new list version...
    bits.set(3)
    v2 = _anchored_list(bits)
    publish_status_list(ledger, ISSUER, v2)
    # ...and the party serving the file, instead of v2, hands out v1 with one non-JCS value added.
    tampered = dict(v1, padding=float("nan"))
    (tmp_path / "sl.json").write_text(json.dumps(tampered))
    undecided: list[tuple[str, str]] = []
    revoked = net.author.recheck(net.now, undecided=undecided)
    assert b0 in revoked, undecided
    assert undecided == []
    # The lookup itself answers "no such anchored list", as for any other list that is not the anchored one.
    assert AnchoredStatusLists(ledger, FileStatusLists((tmp_path / "sl.json",))).get(ANCHORED_URL) is None
    ledger.close()


# --- 2. a proof's @context compared with Python ==: true and 1 are "equal", so the document is not the signed one


def test_a_context_changed_from_1_to_true_after_signing_is_refused() -> None:
    # STRICT in credentials.py: the proof's @context must *equal* the document's, "so no unsigned context entry
    # rides along"; the signature is then checked over the proof's copy.  The comparison was Python ==, for which
    # True == 1 and False == 0: a document whose @context differs from the signed one in such a value verified,
    # and VerifiedCredential.document (the evidence an author keeps) held a @context its issuer never signed.
    doc = {
        "@context": [VC_CONTEXT_V2, {"@protected": 1, "ex": "https://ex.example/#"}],
        "type": ["VerifiableCredential", TYPE],
        "issuer": ISSUER.did,
        "validFrom": "2023-11-01T00:00:00Z",
        "credentialSubject": {"id": HOLDER.did},
    }
    signed = json.loads(json.dumps(add_proof(doc, ISSUER, proof_purpose="assertionMethod", created=T0)))
    now = _ms(T0 + timedelta(days=1))
    assert verify_credential(signed, now).document["@context"] == doc["@context"]
    tampered = json.loads(json.dumps(signed))
    tampered["@context"][1]["@protected"] = True
    assert canonicalize(tampered["@context"]) != canonicalize(signed["proof"]["@context"])
    with pytest.raises(BadProof):
        verify_credential(tampered, now)
    # The same for a presentation (its holder's proof).
    vp = {"@context": [VC_CONTEXT_V2, {"x": 0}], "type": ["VerifiablePresentation"], "holder": HOLDER.did,
          "verifiableCredential": [signed]}
    vp = json.loads(json.dumps(add_proof(vp, HOLDER, proof_purpose="authentication", created=T0, challenge="c",
                                         domain="d")))
    assert verify_presentation(json.dumps(vp).encode(), expected_holder_did=HOLDER.did, challenge="c",
                               domain="d", now_ms=now)
    vp["@context"][1]["x"] = False
    with pytest.raises(BadProof):
        verify_presentation(json.dumps(vp).encode(), expected_holder_did=HOLDER.did, challenge="c", domain="d",
                            now_ms=now)


# --- 3. a credential with two status entries: an unreachable list must not hide the other's revocation ----------

SUSPENSION_URL = "https://issuer.example/status/review-suspension"
REVOCATION_URL = "https://issuer.example/status/review-revocation"


class _Unreachable:
    """A status-list lookup over a StatusListSource whose ``down`` lists cannot be fetched (their host refuses)."""

    def __init__(self, src: StatusListSource) -> None:
        self.src = src
        self.down: set[str] = set()

    def get(self, url: str) -> Any:
        if url in self.down:
            raise OSError("connection refused")
        return self.src.get(url)


def _two_entry_credential(subject: str) -> dict[str, Any]:
    """A credential with a suspension entry and a revocation entry (BSL 2.1 allows several), in that order."""
    unsigned = issue_credential(ISSUER, subject, [TYPE], {"name": "p"}, valid_from=T0,
                                valid_until=T0 + timedelta(days=365), created=T0)
    del unsigned["proof"]
    unsigned["credentialStatus"] = [
        {"id": f"{url}#3", "type": "BitstringStatusListEntry", "statusPurpose": purpose, "statusListIndex": "3",
         "statusListCredential": url}
        for url, purpose in ((SUSPENSION_URL, "suspension"), (REVOCATION_URL, "revocation"))
    ]
    return add_proof(unsigned, ISSUER, proof_purpose="assertionMethod", created=T0)


def test_a_revoked_entry_decides_even_when_another_entrys_list_is_unreachable() -> None:
    # The issuer revokes the credential in its revocation list.  Whoever serves the suspension list (a relay, a
    # cache, the network) makes that list unreachable.  _check_status stopped at the first entry whose lookup
    # failed (StatusLookupFailed: "cannot answer now"), so the re-check left the subscriber in -- at every
    # re-check, as long as that list stays down -- although the other entry already answers "revoked", which
    # no answer of the suspension list could undo (as for an AllOf with one revoked credential).
    revoked_bits, src = StatusList(), StatusListSource()
    src.publish(issue_status_list_credential(ISSUER, SUSPENSION_URL, StatusList(), purpose="suspension",
                                             valid_from=T0))
    src.publish(issue_status_list_credential(ISSUER, REVOCATION_URL, revoked_bits, valid_from=T0))
    lists = _Unreachable(src)
    policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lists)
    net = Net.make(policy=policy, n_subs=1)
    _sub_with(net, "s0", _two_entry_credential(ident(10).did))
    b0 = net.author.branch_of(ident(10).did)
    assert b0 is not None
    revoked_bits.set(3)
    src.publish(issue_status_list_credential(ISSUER, REVOCATION_URL, revoked_bits, valid_from=T0))
    lists.down = {SUSPENSION_URL}
    undecided: list[tuple[str, str]] = []
    revoked = net.author.recheck(net.now, undecided=undecided)
    assert b0 in revoked, undecided
    # With nothing revoked, an unreachable list still leaves the subscriber undecided (not revoked).
    revoked_bits.clear(3)
    src.publish(issue_status_list_credential(ISSUER, REVOCATION_URL, revoked_bits, valid_from=T0))
    with pytest.raises(StatusLookupFailed):
        verify_credential(_two_entry_credential(ident(10).did), _ms(T0 + timedelta(days=1)), status_lists=lists)


# --- 4. a DID resolver that cannot answer (a did:web host down) must not stop the whole re-check ---------------

WEB_ISSUER = "did:web:issuer.example"
WEB_KEY = Identity.from_seed(b"\x77" * 32)
STATUS_URL = "https://issuer.example/status/review-web"


class _WebResolver:
    """did:web as a deployment would plug it in (the W3C vectors' issuer needs one too): ``WEB_ISSUER`` resolves
    to ``WEB_KEY`` while its web host answers; did:key as usual."""

    def __init__(self) -> None:
        self.down = False

    def resolve(self, did: str) -> DIDDocument:
        if did == WEB_ISSUER:
            if self.down:
                raise OSError("connection refused")  # its host does not answer (or the network is cut)
            return DIDDocument(did, WEB_KEY.sign_public, WEB_KEY.kx_public)
        return KeyResolver().resolve(did)


def _web_credential(subject: str) -> dict[str, Any]:
    """A credential issued by ``WEB_ISSUER`` (eddsa-jcs-2022, verification method ``did:web:...#key-1``)."""
    unsigned = {"@context": [VC_CONTEXT_V2], "type": ["VerifiableCredential", TYPE], "issuer": WEB_ISSUER,
                "validFrom": "2023-11-01T00:00:00Z", "credentialSubject": {"id": subject}}
    options = {"type": "DataIntegrityProof", "cryptosuite": "eddsa-jcs-2022", "created": "2023-11-01T00:00:00Z",
               "verificationMethod": f"{WEB_ISSUER}#key-1", "proofPurpose": "assertionMethod",
               "@context": [VC_CONTEXT_V2]}
    signature = nacl.signing.SigningKey(WEB_KEY.export_seed()).sign(
        hash_data(canonicalize(unsigned), canonicalize(options))).signature
    return {**unsigned, "proof": {**options, "proofValue": "z" + base58.b58encode(bytes(signature)).decode()}}


def test_an_unreachable_issuer_host_neither_stops_the_recheck_nor_keeps_a_distrusted_issuers_subscriber() -> None:
    # A resolver that cannot answer raised its own exception (OSError) straight through verify_credential
    # (documented: "a CredentialError subclass and nothing else") and CredentialPolicy.still_valid, so the
    # author's re-check failed as a whole ("nothing changed"): while one issuer's host is down -- or made to look
    # down by that issuer -- no subscriber at all is cut off, not even one whose credential another issuer revoked.
    # And still_valid resolved the issuer's DID before checking that it is still trusted, so an issuer the author
    # no longer trusts kept its subscriber in by not answering (README: "unless what needs no lookup decides --
    # ... its issuer no longer trusted").
    bits, src = StatusList(), StatusListSource()
    src.publish(issue_status_list_credential(ISSUER, STATUS_URL, bits, valid_from=T0))
    resolver = _WebResolver()
    both = frozenset({ISSUER.did, WEB_ISSUER})
    net = Net.make(policy=CredentialPolicy(TYPE, both, status_lists=src, resolver=resolver), n_subs=2)
    _sub_with(net, "s0", issue_credential(ISSUER, ident(10).did, [TYPE], {}, valid_from=T0, status=(STATUS_URL, 3),
                                          created=T0))
    _sub_with(net, "s1", _web_credential(ident(11).did))
    b0, b1 = net.author.branch_of(ident(10).did), net.author.branch_of(ident(11).did)
    assert b0 is not None and b1 is not None
    # s0's issuer revokes it; s1's issuer's host stops answering.
    bits.set(3)
    src.publish(issue_status_list_credential(ISSUER, STATUS_URL, bits, valid_from=T0))
    resolver.down = True
    undecided: list[tuple[str, str]] = []
    revoked = net.author.recheck(net.now, undecided=undecided)
    assert b0 in revoked  # cut off as its issuer said
    assert b1 not in revoked and [d for d, _ in undecided] == [ident(11).did]  # cannot be decided now
    # The author stops trusting the did:web issuer: that needs no lookup, s1 is cut off though its host is down.
    net.author.policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=src, resolver=resolver)
    assert b1 in net.author.recheck(net.now)
    # A subscription is still refused while the issuer cannot be resolved, with a CredentialError.
    with pytest.raises(CredentialError):
        verify_credential(_web_credential(ident(11).did), net.now, resolver)


@pytest.mark.parametrize("value", ["2030-01-01T00:00:00Z\n", "2030-01-01T00:00:00+14:59", "2030-01-01T00:00:00-14:30",
                                   "2030-01-01T00:00:00+14:01"])
def test_a_date_time_beyond_xml_schema_is_refused(value: str) -> None:
    """XML Schema's dateTimeStamp ends where the text ends (a regex's "$" also takes a trailing newline) and its
    time zones run from -14:00 to +14:00 (up to +14:59 passed).  Refused when issuing, and when verifying a
    credential whose issuer signed one."""
    from streams.credentials import MalformedCredential, issue_credential, verify_credential
    from streams.errors import LocalProtocolError

    issuer, subject = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    with pytest.raises(LocalProtocolError, match="dateTimeStamp"):
        issue_credential(issuer, subject.did, ["T"], {}, valid_from="2025-01-01T00:00:00Z", valid_until=value)
    good = issue_credential(issuer, subject.did, ["T"], {}, valid_from="2025-01-01T00:00:00Z",
                            valid_until="2030-01-01T00:00:00+14:00")
    assert verify_credential(good, 1767225600000).valid_until_ms == 1893405600000
    # Another issuer's tool wrote the odd value and signed it: the verifier refuses it all the same.
    odd = {k: v for k, v in good.items() if k != "proof"}
    odd["validUntil"] = value
    signed = add_proof(odd, issuer, proof_purpose="assertionMethod", created="2025-01-01T00:00:00Z")
    with pytest.raises(MalformedCredential, match="validUntil"):
        verify_credential(signed, 1767225600000)
