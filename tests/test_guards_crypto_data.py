"""Guards of the Merkle verifiers, the anchor checkpoints and fork evidence, the credential checks and the anchored
status lists that no other test exercised (mutation testing: each test here fails when its guard is weakened).

Real Ed25519 keys (PyNaCl), real signed credentials and checkpoints, a real embedded ledger file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streams.anchor import ChainHead, EpochCheckpoint, ForkEvidence, build_epoch, check_fork
from streams.credentials import (
    VC_CONTEXT_V2,
    BadProof,
    CredentialExpired,
    CredentialFailure,
    CredentialPolicy,
    CredentialRevoked,
    StatusList,
    StatusListSource,
    StatusUnavailable,
    add_proof,
    canonicalize,
    issue_credential,
    issue_status_list_credential,
    verify_credential,
    verify_presentation,
)
from streams.errors import VerificationError
from streams.identity import DIDDocument, Identity, KeyResolver
from streams.ledger.base import AnchorStatus
from streams.ledger.embedded import EmbeddedLedger
from streams.merkle import EMPTY_ROOT, MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from streams.status_anchor import AnchoredStatusLists, publish_status_list
from streams.wire import Revoke, encode_frame

NOW = 1_750_000_000_000  # 2025-06-15
U1, U2 = "https://issuer.example/lists/1", "https://issuer.example/lists/2"


class _Lookup:
    """A status-list lookup answering from a fixed table (what a server, a cache or an HTTP fetch answers)."""

    def __init__(self, table: Mapping[str, Mapping[str, Any]]) -> None:
        self._table = dict(table)

    def get(self, url: str) -> Mapping[str, Any] | None:
        return self._table.get(url)


# -- Merkle ------------------------------------------------------------------------------------------------------


def test_an_inclusion_proof_claimed_at_another_index_is_refused() -> None:
    """Attack: leaf C (index 2 of [A, B, C]) with its genuine proof [H(A, B)] is claimed to be at index 1.  The
    hashing reaches the root before the path for (index 1, size 3) is used up: the proof is of another position.
    Guard: ``verify_inclusion`` requires the index bits to be used up (``sn == 0``) at the end."""
    leaves = [leaf_hash(x) for x in (b"A", b"B", b"C")]
    tree = MerkleTree(leaves)
    proof = tree.inclusion_proof(2)
    assert verify_inclusion(leaves[2], 2, 3, proof, tree.root)
    assert not verify_inclusion(leaves[2], 1, 3, proof, tree.root)


def test_consistency_from_an_empty_tree_needs_the_empty_root() -> None:
    """Attack: a claim that a tree of size 0 whose root is some arbitrary value is a prefix of a 2-leaf tree.
    Guard: ``verify_consistency(0, n, ...)`` holds only for the empty tree's root (and an empty proof)."""
    tree = MerkleTree([leaf_hash(b"A"), leaf_hash(b"B")])
    assert verify_consistency(0, 2, EMPTY_ROOT, tree.root, [])
    bogus = os.urandom(32)
    assert bogus != EMPTY_ROOT
    assert not verify_consistency(0, 2, bogus, tree.root, [])


def test_consistency_from_a_larger_tree_to_a_smaller_one_is_refused() -> None:
    """Attack: "the tree of size 3 whose root is leaf A is a prefix of the 2-leaf tree [A, B]" -- a log that
    shrank, passed off as consistent.  Guard: ``verify_consistency`` refuses ``first > second``."""
    a, b = leaf_hash(b"A"), leaf_hash(b"B")
    t2 = MerkleTree([a, b])
    assert not verify_consistency(3, 2, a, t2.root, [a, b])


# -- anchor checkpoints and fork evidence -----------------------------------------------------------------------


def _head() -> ChainHead:
    return ChainHead(os.urandom(16), 0, 1, os.urandom(32), os.urandom(32))


def _signed_successor(author: Identity, prev: EpochCheckpoint, channel: bytes, timestamp_ms: int) -> EpochCheckpoint:
    """A checkpoint of ``channel``, epoch prev+1, hash-linked to ``prev`` and signed by ``author`` (crafted by hand:
    ``build_epoch`` would not make it)."""
    u = EpochCheckpoint(channel, prev.epoch + 1, prev.tree_size, prev.root, prev.digest, timestamp_ms)
    return EpochCheckpoint(channel, u.epoch, u.tree_size, u.root, u.prev, u.timestamp_ms, author.sign(u.digest))


def test_a_checkpoint_dated_before_its_predecessor_does_not_follow_it() -> None:
    """Attack: the author signs epoch 1, hash-linked to epoch 0, with a timestamp before epoch 0's (time running
    backwards: a backdated history).  Its signature verifies.  Guard: ``verify_follows`` requires
    ``timestamp_ms >= prev.timestamp_ms``."""
    author = Identity.generate()
    channel = os.urandom(32)
    e0 = build_epoch(channel, [_head()], None, 2_000_000, author.sign).checkpoint
    same_time = _signed_successor(author, e0, channel, 2_000_000)
    same_time.verify_follows(e0)  # the honest edge: equal timestamps follow
    e1 = _signed_successor(author, e0, channel, 1_000_000)
    e1.verify(author.sign_public)  # the signature is fine
    with pytest.raises(VerificationError):
        e1.verify_follows(e0)


def test_a_checkpoint_of_another_channel_does_not_follow_this_channels_checkpoint() -> None:
    """Attack: a checkpoint of channel B, signed by the same author key and naming channel A's epoch-0 digest as
    its predecessor, passed off as A's epoch 1.  Guard: ``verify_follows`` requires the same channel."""
    author = Identity.generate()
    ch_a, ch_b = os.urandom(32), os.urandom(32)
    a0 = build_epoch(ch_a, [_head()], None, 1_000, author.sign).checkpoint
    _signed_successor(author, a0, ch_a, 2_000).verify_follows(a0)  # the same link on A's own channel follows
    b1 = _signed_successor(author, a0, ch_b, 2_000)
    b1.verify(author.sign_public)
    with pytest.raises(VerificationError):
        b1.verify_follows(a0)


def test_two_revokes_of_an_empty_chain_are_not_fork_evidence() -> None:
    """Attack: two author-signed REVOKEs of one branch with ``last_seq`` 0 (an empty chain: they claim no message)
    that differ in ``last_hash`` (e.g. issued in two grant epochs) presented as "two messages at seq 0".
    Guard: ``check_fork`` refuses a REVOKE of an empty chain as evidence."""
    author = Identity.generate()
    ch, br, grant = os.urandom(32), os.urandom(16), os.urandom(32)
    a = encode_frame(Revoke(ch, br, 0, grant, 0, grant), b"", author.sign).raw
    b = encode_frame(Revoke(ch, br, 1, grant, 0, os.urandom(32)), b"", author.sign).raw
    with pytest.raises(VerificationError):
        check_fork(ForkEvidence(a, b), author.sign_public)


# -- credentials --------------------------------------------------------------------------------------------------


def test_a_credential_whose_proof_expired_is_refused_though_its_validity_has_not_ended() -> None:
    """Attack: a credential whose Data Integrity proof carries ``expires`` 2024-01-01 is shown in 2025 (its
    ``validUntil``, 2030, is far away).  Guard: a proof past its ``expires`` raises CredentialExpired."""
    issuer, holder = Identity.generate(), Identity.generate()
    vc = {"@context": [VC_CONTEXT_V2], "type": ["VerifiableCredential", "Member"], "issuer": issuer.did,
          "validFrom": "2023-01-01T00:00:00Z", "validUntil": "2030-01-01T00:00:00Z",
          "credentialSubject": {"id": holder.did}}
    signed = add_proof(vc, issuer, proof_purpose="assertionMethod", created="2023-01-01T00:00:00Z",
                       expires="2024-01-01T00:00:00Z")
    before = int(datetime(2023, 6, 1, tzinfo=UTC).timestamp() * 1000)
    assert verify_credential(signed, before).subject == holder.did  # valid while the proof is
    after = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
    with pytest.raises(CredentialExpired):
        verify_credential(signed, after)


def test_a_status_list_answered_for_another_list_id_is_unavailable() -> None:
    """Attack: the issuer keeps two lists; the credential's entry names list 1, where its bit is set (revoked).  A
    status-list lookup answers the request for list 1 with the issuer's genuine, signed list 2 (bit clear): the
    revocation would be hidden.  Guard: the list credential's ``id`` must be the URL the entry names."""
    issuer, holder = Identity.generate(), Identity.generate()
    revoked = StatusList()
    revoked.set(5)
    l1 = issue_status_list_credential(issuer, U1, revoked, valid_from="2024-01-01T00:00:00Z")
    l2 = issue_status_list_credential(issuer, U2, StatusList(), valid_from="2024-01-01T00:00:00Z")
    vc = issue_credential(issuer, holder.did, ["Member"], {}, valid_from="2024-01-01T00:00:00Z", status=(U1, 5))
    with pytest.raises(CredentialRevoked):
        verify_credential(vc, NOW, status_lists=_Lookup({U1: l1, U2: l2}))
    with pytest.raises(StatusUnavailable):
        verify_credential(vc, NOW, status_lists=_Lookup({U1: l2}))


def test_a_presentation_signed_by_someone_other_than_its_holder_is_refused() -> None:
    """Attack: Eve builds a presentation whose holder is Alice, carrying Alice's credential, bound to the right
    challenge and domain, and signs it with her own key (the proof verifies under Eve's did:key).  Guard: the
    presentation's proof must be made by its holder (BadProof, WRONG_SIGNER)."""
    issuer, alice, eve = Identity.generate(), Identity.generate(), Identity.generate()
    vc = issue_credential(issuer, alice.did, ["Member"], {}, valid_from="2024-01-01T00:00:00Z")
    vp = {"@context": [VC_CONTEXT_V2], "type": ["VerifiablePresentation"], "holder": alice.did,
          "verifiableCredential": [vc]}

    def present_signed_by(signer: Identity) -> bytes:
        return canonicalize(add_proof(vp, signer, proof_purpose="authentication", created="2025-01-01T00:00:00Z",
                                      challenge="c0ffee", domain="d00d"))

    [cred] = verify_presentation(present_signed_by(alice), expected_holder_did=alice.did, challenge="c0ffee",
                                 domain="d00d", now_ms=NOW)
    assert cred.subject == alice.did
    with pytest.raises(BadProof) as info:
        verify_presentation(present_signed_by(eve), expected_holder_did=alice.did, challenge="c0ffee",
                            domain="d00d", now_ms=NOW)
    assert info.value.failure is CredentialFailure.WRONG_SIGNER


class _DownResolver(KeyResolver):
    """A DID resolver that cannot answer (e.g. a did:web host unreachable, or made so by the issuer)."""

    def resolve(self, did: str) -> DIDDocument:
        raise OSError("network unreachable")


def test_still_valid_cuts_off_an_expired_credential_while_the_resolver_is_down() -> None:
    """Damage: the DID resolver cannot answer while the author re-checks a subscriber whose credential expired.
    Guard: ``still_valid`` decides "expired" from the document before any lookup, so it answers False (cut off)
    instead of raising PolicyUnavailable ("no answer now", which keeps the subscriber)."""
    issuer, alice = Identity.generate(), Identity.generate()
    vc = issue_credential(issuer, alice.did, ["Member"], {}, valid_from="2024-01-01T00:00:00Z",
                          valid_until="2024-06-01T00:00:00Z")
    policy = CredentialPolicy("Member", frozenset({issuer.did}), resolver=_DownResolver())
    assert policy.still_valid(canonicalize(vc), NOW) is False


@pytest.mark.parametrize("bit_set", [False, True], ids=["bit clear", "bit set"])
def test_a_status_entry_with_the_message_purpose_fails_closed(bit_set: bool) -> None:
    """Attack: the issuer's status entry has ``statusPurpose`` "message", which has no admit/refuse meaning.
    Guard: an unsupported purpose is StatusUnavailable whatever its bit (not accepted with the bit clear, and no
    KeyError escaping with it set)."""
    issuer, holder = Identity.generate(), Identity.generate()
    url = "https://issuer.example/msg"
    sl = StatusList()
    if bit_set:
        sl.set(3)
    lst = issue_status_list_credential(issuer, url, sl, purpose="message", valid_from="2024-01-01T00:00:00Z")
    vc = issue_credential(issuer, holder.did, ["Member"], {}, valid_from="2024-01-01T00:00:00Z", status=(url, 3),
                          status_purpose="message")
    with pytest.raises(StatusUnavailable):
        verify_credential(vc, NOW, status_lists=_Lookup({url: lst}))


# -- anchored status lists ---------------------------------------------------------------------------------------


class _PendingLedger(EmbeddedLedger):
    """An embedded ledger on which the writes named in ``pending`` are not final yet (as on a ledger that
    confirms later, e.g. IOTA before a milestone)."""

    pending: set[str]

    def status(self, anchor_id: str) -> AnchorStatus:
        if anchor_id in getattr(self, "pending", set()):
            return AnchorStatus(False, None, None)
        return super().status(anchor_id)


def test_an_unconfirmed_newer_status_list_version_is_not_served(tmp_path: Path) -> None:
    """Attack: the issuer's list v1 (bit 7 set: revoked) is anchored and confirmed; a v2 (bit clear) is written
    but not final, and the list server hands out v2.  Guard: ``AnchoredStatusLists`` counts confirmed anchors only,
    so v2 is not the latest anchored version and is not served (until it is confirmed)."""
    issuer = Identity.generate()
    url = "https://issuer.example/l"
    s1 = StatusList()
    s1.set(7)
    v1 = issue_status_list_credential(issuer, url, s1, valid_from="2024-01-01T00:00:00Z")
    v2 = issue_status_list_credential(issuer, url, StatusList(), valid_from="2024-01-01T00:00:00Z",
                                      created="2024-02-01T00:00:00Z")
    ledger = _PendingLedger(tmp_path / "ledger.db")
    try:
        publish_status_list(ledger, issuer, v1)
        a2 = publish_status_list(ledger, issuer, v2)
        ledger.pending = {a2}
        source = StatusListSource()
        source.publish(v2)
        lists = AnchoredStatusLists(ledger, source)
        assert lists.get(url) is None
        ledger.pending = set()  # v2 confirmed: from now on it is the anchored version
        assert lists.get(url) is not None
    finally:
        ledger.close()
