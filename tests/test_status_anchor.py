"""Status lists anchored on the ledger: a hidden (rolled back) revocation is refused, forged anchors ignored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streams.credentials import (
    CredentialPolicy,
    StatusList,
    StatusListSource,
    issue_credential,
    issue_status_list_credential,
    present,
)
from streams.errors import DecodeError, LocalProtocolError, VerificationError
from streams.identity import Identity
from streams.ledger.embedded import EmbeddedLedger
from streams.policy import SubscriptionRequest
from streams.status_anchor import (
    STATUS_TAG,
    AnchoredStatusLists,
    decode_status_anchor,
    publish_status_list,
    status_anchor_payload,
)

ISSUER, HOLDER, MALLORY = (Identity.from_seed(bytes([n]) * 32) for n in (71, 72, 73))
URL = "https://issuer.example/status/anchored"
TYPE = "PaymentProviderCredential"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = int((T0 + timedelta(days=1)).timestamp() * 1000)
CHANNEL, NONCE = b"\x07" * 32, b"\x08" * 16


def _list(bits: StatusList) -> dict[str, Any]:
    return issue_status_list_credential(ISSUER, URL, bits, valid_from=T0)


def _request() -> SubscriptionRequest:
    cred = issue_credential(ISSUER, HOLDER.did, [TYPE], {}, valid_from=T0, status=(URL, 5), created=T0)
    vp = present(HOLDER, cred, challenge=NONCE, domain=CHANNEL, created=T0 + timedelta(hours=1))
    return SubscriptionRequest(CHANNEL, HOLDER.did, HOLDER.sign_public, vp, NONCE)


@pytest.fixture
def ledger(tmp_path: Path) -> EmbeddedLedger:
    return EmbeddedLedger(tmp_path / "ledger.db")


def test_only_the_latest_anchored_version_is_used(ledger: EmbeddedLedger) -> None:
    bits = StatusList()
    v1 = _list(bits)
    publish_status_list(ledger, ISSUER, v1)
    served = StatusListSource()  # what the verifier is handed (by a cache, a relay, the issuer's web server)
    served.publish(v1)
    policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=AnchoredStatusLists(ledger, served))
    assert policy.decide(_request(), NOW).admit
    # The issuer revokes and anchors the new version; the verifier is still handed the old list (hidden
    # revocation): refused, because it is not the latest anchored version.
    bits.set(5)
    v2 = _list(bits)
    publish_status_list(ledger, ISSUER, v2)
    d = policy.decide(_request(), NOW)
    assert not d.admit
    assert "status" in d.reason
    # With the current list the revocation itself refuses.
    served.publish(v2)
    d = policy.decide(_request(), NOW)
    assert not d.admit
    assert "revoked" in d.reason


def test_unanchored_list_fails_closed(ledger: EmbeddedLedger) -> None:
    served = StatusListSource()
    served.publish(_list(StatusList()))
    lookup = AnchoredStatusLists(ledger, served)
    assert lookup.get(URL) is None
    policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lookup)
    assert not policy.decide(_request(), NOW).admit


def test_anchors_not_signed_by_the_issuer_are_ignored(ledger: EmbeddedLedger) -> None:
    v1 = _list(StatusList())
    publish_status_list(ledger, ISSUER, v1)
    # Mallory anchors a "newer version" of the issuer's list: a payload claiming the issuer, signed by Mallory.
    forged = bytearray(status_anchor_payload(ISSUER, v1))
    forged[-64:] = MALLORY.sign(b"\0" * 32)
    ledger.append(STATUS_TAG, bytes(forged))
    ledger.append(STATUS_TAG, b"\x93garbage")
    served = StatusListSource()
    served.publish(v1)
    lookup = AnchoredStatusLists(ledger, served)
    assert lookup.get(URL) == v1  # the issuer's anchor still counts; the forged ones were skipped
    with pytest.raises(VerificationError):
        decode_status_anchor(bytes(forged))
    with pytest.raises(DecodeError):
        decode_status_anchor(b"\x93garbage")


def test_only_the_issuer_can_make_an_anchor_payload() -> None:
    with pytest.raises(LocalProtocolError):
        status_anchor_payload(MALLORY, _list(StatusList()))
