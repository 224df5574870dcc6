"""Status lists anchored on the ledger: a hidden (rolled back) revocation is refused, forged anchors ignored,
re-appended old anchors of the issuer ignored whatever the ledger order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest

from streams import _crypto
from streams.credentials import (
    CredentialPolicy,
    StatusList,
    StatusListSource,
    canonicalize,
    issue_credential,
    issue_status_list_credential,
    present,
    status_list_digest,
)
from streams.errors import DecodeError, LocalProtocolError, VerificationError
from streams.identity import Identity
from streams.ledger.embedded import EmbeddedLedger
from streams.policy import SubscriptionRequest
from streams.policy_file import load_policy
from streams.status_anchor import (
    P_STATUS,
    STATUS_TAG,
    AnchoredStatusLists,
    decode_status_anchor,
    next_status_version,
    publish_status_list,
    status_anchor_payload,
)

ISSUER, HOLDER, MALLORY = (Identity.from_seed(bytes([n]) * 32) for n in (71, 72, 73))
URL = "https://issuer.example/status/anchored"
TYPE = "PaymentProviderCredential"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = int((T0 + timedelta(days=1)).timestamp() * 1000)
CHANNEL, NONCE = b"\x07" * 32, b"\x08" * 16


def _list(bits: StatusList, issuer: Identity = ISSUER) -> dict[str, Any]:
    return issue_status_list_credential(issuer, URL, bits, valid_from=T0)


def _first_format_anchor(issuer: Identity, vc: dict[str, Any]) -> bytes:
    """An anchor as the first format wrote it: [1, list_id, issuer, digest, sig], no version."""
    digest = status_list_digest(vc)
    part = msgpack.packb([1, vc["id"], issuer.did, digest], use_bin_type=True)
    return msgpack.packb([1, vc["id"], issuer.did, digest, issuer.sign(_crypto.hash32(P_STATUS, part))],
                         use_bin_type=True)


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
    forged = bytearray(status_anchor_payload(ISSUER, v1, 2))
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
        status_anchor_payload(MALLORY, _list(StatusList()), 1)
    with pytest.raises(LocalProtocolError):
        status_anchor_payload(ISSUER, _list(StatusList()), 0)  # versions start at 1 (0 is the first format)


def test_versions_count_up_per_list_and_issuer(ledger: EmbeddedLedger) -> None:
    v = _list(StatusList())
    assert next_status_version(ledger, URL, ISSUER.did) == 1
    publish_status_list(ledger, ISSUER, v)
    publish_status_list(ledger, ISSUER, v)
    publish_status_list(ledger, MALLORY, _list(StatusList(), MALLORY))  # another issuer's list of that id
    assert next_status_version(ledger, URL, ISSUER.did) == 3
    assert next_status_version(ledger, URL, MALLORY.did) == 2
    assert next_status_version(ledger, URL + "/other", ISSUER.did) == 1
    assert decode_status_anchor(ledger.read("2")[1]).version == 2


def _policy_file(tmp_path: Path, ledger_path: Path) -> Path:
    (tmp_path / "policy.toml").write_text(f"""
[policy]
[[policy.credential]]
type = "{TYPE}"
issuers = ["{ISSUER.did}"]
status_lists = ["sl.json"]
status_ledger = "sqlite:{ledger_path.name}"
""")
    return tmp_path / "policy.toml"


def test_reappending_the_issuers_old_anchor_does_not_roll_a_revocation_back(tmp_path: Path) -> None:
    # Real files and the embedded ledger, as `credential revoke --ledger` and a policy file use them.
    ledger = EmbeddedLedger(tmp_path / "ledger.db")
    bits = StatusList()
    v1 = _list(bits)
    (tmp_path / "sl.json").write_bytes(canonicalize(v1))
    first = publish_status_list(ledger, ISSUER, v1)
    policy = load_policy(_policy_file(tmp_path, tmp_path / "ledger.db"))
    admitted = policy.decide(_request(), NOW)
    assert admitted.admit
    bits.set(5)
    v2 = _list(bits)
    (tmp_path / "sl.json").write_bytes(canonicalize(v2))
    publish_status_list(ledger, ISSUER, v2)
    assert not policy.still_valid(admitted.evidence, NOW)
    # The attacker, without any key, re-appends the issuer's public anchor of v1 (twice, and a first-format
    # anchor of v1 too) and puts v1 back in place of the list file.
    tag, data = ledger.read(first)
    ledger.append(tag, data)
    ledger.append(tag, data)
    ledger.append(STATUS_TAG, _first_format_anchor(ISSUER, v1))
    (tmp_path / "sl.json").write_bytes(canonicalize(v1))
    d = policy.decide(_request(), NOW)
    assert not d.admit
    assert "status" in d.reason
    assert not policy.still_valid(admitted.evidence, NOW)
    # A verifier that starts now, reading the ledger from the start, is not fooled either.
    fresh = load_policy(tmp_path / "policy.toml")
    assert not fresh.decide(_request(), NOW).admit
    # The current list is accepted (and revokes).
    (tmp_path / "sl.json").write_bytes(canonicalize(v2))
    d = fresh.decide(_request(), NOW)
    assert (d.admit, "revoked" in d.reason) == (False, True)
    assert AnchoredStatusLists(ledger, _source(v2)).get(URL) == v2
    ledger.close()


def _source(vc: dict[str, Any]) -> StatusListSource:
    served = StatusListSource()
    served.publish(vc)
    return served


def test_another_signers_anchor_of_the_same_list_id_does_not_displace_the_issuers(ledger: EmbeddedLedger) -> None:
    v1 = _list(StatusList())
    publish_status_list(ledger, ISSUER, v1)
    policy = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=AnchoredStatusLists(ledger, _source(v1)))
    admitted = policy.decide(_request(), NOW)
    assert admitted.admit
    # Mallory (anyone may write the ledger) anchors her own list under the issuer's list id, at a high version.
    fake = _list(StatusList(), MALLORY)
    ledger.append(STATUS_TAG, status_anchor_payload(MALLORY, fake, 2**64 - 1))
    assert policy.decide(_request(), NOW).admit
    assert policy.still_valid(admitted.evidence, NOW)
    # Handing out Mallory's (anchored) list instead does not help her either: it is not the issuer's list.
    d = CredentialPolicy(TYPE, frozenset({ISSUER.did}),
                         status_lists=AnchoredStatusLists(ledger, _source(fake))).decide(_request(), NOW)
    assert not d.admit
    assert "status" in d.reason


def test_first_format_anchors_count_as_version_zero(ledger: EmbeddedLedger) -> None:
    bits = StatusList()
    v1 = _list(bits)
    ledger.append(STATUS_TAG, _first_format_anchor(ISSUER, v1))
    ledger.append(STATUS_TAG, _first_format_anchor(ISSUER, v1))  # a duplicate is harmless
    assert decode_status_anchor(_first_format_anchor(ISSUER, v1)).version == 0
    assert AnchoredStatusLists(ledger, _source(v1)).get(URL) == v1  # a lone first-format anchor still counts
    # A revocation anchored in the first format: the ledger cannot say which of the two came last (either can
    # be re-appended by anyone), so neither counts (fail closed)...
    bits.set(5)
    v2 = _list(bits)
    ledger.append(STATUS_TAG, _first_format_anchor(ISSUER, v2))
    ledger.append(STATUS_TAG, _first_format_anchor(ISSUER, v1))
    assert AnchoredStatusLists(ledger, _source(v1)).get(URL) is None
    assert AnchoredStatusLists(ledger, _source(v2)).get(URL) is None
    # ... until the issuer anchors the current version with a version number.
    assert next_status_version(ledger, URL, ISSUER.did) == 1
    publish_status_list(ledger, ISSUER, v2)
    ledger.append(STATUS_TAG, _first_format_anchor(ISSUER, v1))
    assert AnchoredStatusLists(ledger, _source(v1)).get(URL) is None
    assert AnchoredStatusLists(ledger, _source(v2)).get(URL) == v2


def test_two_lists_anchored_under_one_version_fail_closed(ledger: EmbeddedLedger) -> None:
    bits = StatusList()
    v1 = _list(bits)
    ledger.append(STATUS_TAG, status_anchor_payload(ISSUER, v1, 1))
    bits.set(5)
    v2 = _list(bits)
    ledger.append(STATUS_TAG, status_anchor_payload(ISSUER, v2, 1))  # two revocations that raced
    lookup = AnchoredStatusLists(ledger, _source(v1))
    assert lookup.get(URL) is None
    assert AnchoredStatusLists(ledger, _source(v2)).get(URL) is None
    publish_status_list(ledger, ISSUER, v2)  # version 2
    assert lookup.get(URL) is None
    assert AnchoredStatusLists(ledger, _source(v2)).get(URL) == v2


def test_a_damaged_row_in_the_status_ledger_does_not_hide_a_later_revocation(ledger: EmbeddedLedger,
                                                                              tmp_path: Path) -> None:
    """The embedded ledger's file refuses UPDATE and DELETE, not INSERT: whoever can write it can add a row of the
    wrong types, which reads as a damaged entry.  Scanning the status anchors passes over it (as a row of
    another tag): it must not make every later lookup fail, which would leave the subscribers of a list revoked
    after it in place at every re-check (a failed lookup decides nothing)."""
    import sqlite3

    bits = StatusList()
    v1 = _list(bits)
    publish_status_list(ledger, ISSUER, v1)
    db = sqlite3.connect(tmp_path / "ledger.db")
    (n,) = db.execute("SELECT max(position) FROM entries").fetchone()
    db.execute("INSERT INTO entries VALUES (?, ?, 'not bytes', 0, zeroblob(32), zeroblob(32))", (n + 1, STATUS_TAG))
    db.commit()
    db.close()
    bits.set(5)
    v2 = _list(bits)
    publish_status_list(ledger, ISSUER, v2)
    served = StatusListSource()
    served.publish(v2)
    lookup = AnchoredStatusLists(ledger, served)
    assert lookup.get(URL) == v2
    d = CredentialPolicy(TYPE, frozenset({ISSUER.did}), status_lists=lookup).decide(_request(), NOW)
    assert not d.admit and "revoked" in d.reason
    assert next_status_version(ledger, URL, ISSUER.did) == 3
