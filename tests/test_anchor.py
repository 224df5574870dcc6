"""Anchoring core (THREATS 7 and 1): blinded leaves, signed epoch checkpoints, inclusion, fork evidence."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import merkle
from streams.anchor import (
    ANCHOR_TAG,
    GENESIS_PREV,
    ChainHead,
    EpochCheckpoint,
    ForkEvidence,
    InclusionProof,
    blinded_leaf,
    build_epoch,
    check_fork,
    verify_inclusion,
)
from streams.errors import DecodeError, LocalProtocolError, VerificationError
from streams.identity import Identity
from streams.wire import HeadNotice, Packet, encode_frame

AUTHOR = Identity.from_seed(bytes(range(32)))
OTHER = Identity.from_seed(bytes(range(1, 33)))
CHANNEL = bytes([7]) * 32


def _head(i: int, seq: int = 5) -> ChainHead:
    def h(n: int, tag: bytes) -> bytes:
        return hashlib.sha256(tag + bytes([i])).digest()[:n]

    return ChainHead(h(16, b"branch"), i % 3, seq, h(32, b"head"), blind_key=h(32, b"k"))


def test_blinded_leaf_is_the_documented_hash() -> None:
    # leaf = BLAKE2b-256(person="streams.v1.leaf", blind_key || branch || publisher(1) || seq(8 BE) || head)
    h = _head(3, seq=0x0102030405060708)
    expect = hashlib.blake2b(
        h.blind_key + h.branch + b"\x00" + bytes.fromhex("0102030405060708") + h.hash,
        digest_size=32,
        person=b"streams.v1.leaf",
    ).digest()
    assert h.leaf == expect
    assert "blind" not in repr(h)
    assert h.blind_key.hex() not in repr(h)


def test_leaf_binds_every_field_and_the_blind_key() -> None:
    base = (bytes(32), bytes(16), 1, 2, bytes(32))
    ref = blinded_leaf(*base)
    variants = [
        (bytes([1]) + bytes(31), *base[1:]),
        (base[0], bytes([1]) + bytes(15), *base[2:]),
        (*base[:2], 2, *base[3:]),
        (*base[:3], 3, base[4]),
        (*base[:4], bytes([1]) + bytes(31)),
    ]
    assert len({ref, *(blinded_leaf(*v) for v in variants)}) == 6
    with pytest.raises(LocalProtocolError):
        blinded_leaf(bytes(31), bytes(16), 0, 0, bytes(32))
    with pytest.raises(LocalProtocolError):
        blinded_leaf(bytes(32), bytes(16), 256, 0, bytes(32))


def test_epoch_proves_every_head_and_links_checkpoints() -> None:
    heads = [_head(i) for i in range(11)]
    e0 = build_epoch(CHANNEL, heads, None, 1000, AUTHOR.sign)
    cp = e0.checkpoint
    assert (cp.epoch, cp.tree_size, cp.prev) == (0, 11, GENESIS_PREV)
    cp.verify(AUTHOR.sign_public)
    cp.verify_follows(None)
    # the root is the RFC 9162 tree hash of the sorted blinded leaves: nothing else enters it
    assert cp.root == merkle.root_from_leaf_hashes(sorted(h.leaf for h in heads))
    for h in heads:
        verify_inclusion(h, e0.proofs[(h.branch, h.publisher)], cp, AUTHOR.sign_public)
    # next epoch links to this one
    moved = [_head(2, seq=9), _head(4, seq=6)]
    e1 = build_epoch(CHANNEL, moved, cp, 2000, AUTHOR.sign)
    assert e1.checkpoint.epoch == 1
    assert e1.checkpoint.prev == cp.digest
    e1.checkpoint.verify_follows(cp)
    with pytest.raises(VerificationError):
        e1.checkpoint.verify_follows(None)
    with pytest.raises(VerificationError):
        cp.verify_follows(e1.checkpoint)


def test_forged_or_mismatched_inclusion_is_refused() -> None:
    heads = [_head(i) for i in range(6)]
    e = build_epoch(CHANNEL, heads, None, 1, AUTHOR.sign)
    cp, h = e.checkpoint, heads[2]
    proof = e.proofs[(h.branch, h.publisher)]
    with pytest.raises(VerificationError):  # another author key
        verify_inclusion(h, proof, cp, OTHER.sign_public)
    with pytest.raises(VerificationError):  # a head that was not anchored (later seq)
        verify_inclusion(_head(2, seq=6), proof, cp, AUTHOR.sign_public)
    wrong = ChainHead(h.branch, h.publisher, h.seq, h.hash, bytes(32))
    with pytest.raises(VerificationError):  # the right head with a wrong blind key
        verify_inclusion(wrong, proof, cp, AUTHOR.sign_public)
    with pytest.raises(VerificationError):  # a proof for another epoch
        verify_inclusion(h, InclusionProof(1, proof.index, proof.tree_size, proof.path), cp,
                         AUTHOR.sign_public)
    forged = EpochCheckpoint(cp.channel, cp.epoch, cp.tree_size, bytes(32), cp.prev, cp.timestamp_ms, cp.sig)
    with pytest.raises(VerificationError):  # a checkpoint whose root was swapped keeps no valid signature
        verify_inclusion(h, proof, forged, AUTHOR.sign_public)


def test_build_epoch_refuses_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        build_epoch(CHANNEL, [], None, 0, AUTHOR.sign)
    with pytest.raises(LocalProtocolError):
        build_epoch(CHANNEL, [_head(1), _head(1, seq=7)], None, 0, AUTHOR.sign)
    cp = build_epoch(CHANNEL, [_head(1)], None, 50, AUTHOR.sign).checkpoint
    with pytest.raises(LocalProtocolError):
        build_epoch(CHANNEL, [_head(1)], cp, 49, AUTHOR.sign)
    with pytest.raises(LocalProtocolError):
        build_epoch(bytes(32), [_head(1)], cp, 60, AUTHOR.sign)


def test_checkpoint_encoding_round_trips_and_is_strict() -> None:
    e = build_epoch(CHANNEL, [_head(i) for i in range(3)], None, 123456, AUTHOR.sign)
    data = e.payload
    assert EpochCheckpoint.decode(data) == e.checkpoint
    assert ANCHOR_TAG == b"streams.anchor.v1"
    # the public payload names no branch and carries no head hash (THREATS 1)
    for h in [_head(i) for i in range(3)]:
        assert h.branch not in data
        assert h.hash not in data
        assert h.leaf not in data
    for bad in (b"", b"\xc1", data[:-1], data + b"\x00", b"\x91\x01"):
        with pytest.raises(DecodeError):
            EpochCheckpoint.decode(bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_checkpoint_decoder_raises_only_decode_error(data: bytes) -> None:
    try:
        cp = EpochCheckpoint.decode(data)
    except DecodeError:
        return
    assert cp.encode() == data


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.data())
def test_every_proof_of_any_epoch_verifies_and_bit_flips_fail(n: int, data: st.DataObject) -> None:
    heads = [_head(i, seq=data.draw(st.integers(0, 2**64 - 1))) for i in range(n)]
    e = build_epoch(CHANNEL, heads, None, 0, AUTHOR.sign)
    for h in heads:
        verify_inclusion(h, e.proofs[(h.branch, h.publisher)], e.checkpoint, AUTHOR.sign_public)
    h = heads[data.draw(st.integers(0, n - 1))]
    p = e.proofs[(h.branch, h.publisher)]
    if p.path:
        k = data.draw(st.integers(0, len(p.path) - 1))
        path = list(p.path)
        path[k] = bytes([path[k][0] ^ 1]) + path[k][1:]
        with pytest.raises(VerificationError):
            verify_inclusion(h, InclusionProof(p.epoch, p.index, p.tree_size, tuple(path)), e.checkpoint,
                             AUTHOR.sign_public)


# --- forks --------------------------------------------------------------------------------------------------


def _packet(seq: int, body: bytes, signer: Identity = AUTHOR, channel: bytes = CHANNEL) -> bytes:
    head = Packet(channel, bytes(16), 0, seq, bytes(32), 0, bytes(24))
    return encode_frame(head, body, sign=signer.sign).raw


def test_fork_evidence_is_checked() -> None:
    a, b = _packet(4, b"one"), _packet(4, b"two")
    assert check_fork(ForkEvidence(a, b), AUTHOR.sign_public) == (CHANNEL, bytes(16), 0, 4)
    with pytest.raises(VerificationError):  # the same message twice is no fork
        check_fork(ForkEvidence(a, a), AUTHOR.sign_public)
    with pytest.raises(VerificationError):  # different seqs are no fork
        check_fork(ForkEvidence(a, _packet(5, b"two")), AUTHOR.sign_public)
    with pytest.raises(VerificationError):  # another channel is no fork
        check_fork(ForkEvidence(a, _packet(4, b"two", channel=bytes(32))), AUTHOR.sign_public)
    with pytest.raises(VerificationError):  # a frame signed by someone else proves nothing against AUTHOR
        check_fork(ForkEvidence(a, _packet(4, b"two", signer=OTHER)), AUTHOR.sign_public)
    unsigned = encode_frame(Packet(CHANNEL, bytes(16), 0, 4, bytes(32), 0, bytes(24)), b"x").raw
    with pytest.raises(VerificationError):  # unsigned (amortized-mode) packets are not evidence
        check_fork(ForkEvidence(a, unsigned), AUTHOR.sign_public)
    with pytest.raises(DecodeError):
        check_fork(ForkEvidence(a, a[:-1]), AUTHOR.sign_public)


def test_a_signed_head_notice_contradicting_a_packet_is_a_fork() -> None:
    a = _packet(4, b"one")
    honest = encode_frame(HeadNotice(CHANNEL, bytes(16), 0, 4, encode_frame_hash(a), 0), sign=AUTHOR.sign).raw
    with pytest.raises(VerificationError):
        check_fork(ForkEvidence(a, honest), AUTHOR.sign_public)
    lying = encode_frame(HeadNotice(CHANNEL, bytes(16), 0, 4, bytes(32), 0), sign=AUTHOR.sign).raw
    assert check_fork(ForkEvidence(a, lying), AUTHOR.sign_public)[3] == 4


def encode_frame_hash(raw: bytes) -> bytes:
    from streams.wire import decode_frame

    return decode_frame(raw).hash

