"""Batched anchoring of chain heads (THREATS 7): blinded leaves, a signed checkpoint per epoch, fork evidence.

Pure: no I/O and no clock -- the timestamp and the signing callable come in as arguments.

Per epoch the author gathers the head ``(branch, publisher, seq, hash)`` of every chain that moved, turns
each into a *blinded leaf*::

    leaf = BLAKE2b-256(person="streams.v1.leaf", blind_key || branch || publisher (1 byte) || seq (8 bytes BE)
                       || head_hash)

builds one RFC 9162 Merkle tree over the sorted leaves (:mod:`streams.merkle`), and signs an
:class:`EpochCheckpoint` ``{channel, epoch, tree size, root, previous checkpoint hash, timestamp}``.  Its
deterministic msgpack encoding is the single ledger write of the epoch, under :data:`ANCHOR_TAG`.

``blind_key`` is a 32-byte secret per branch, known to the branch's members only.  Without it a leaf is a
uniformly random-looking hash, so a public ledger learns only the number of chains that moved in the epoch
(the tree size) -- not which branches, how many messages, or any content (THREATS 1).  Sorting the leaves
hides the order in which branches were created.  A member holding a head, its blind key, the checkpoint and
its :class:`InclusionProof` proves the head is anchored with :func:`verify_inclusion`.

A *fork* is two different signed messages at the same ``(channel, branch, publisher, seq)``
(:class:`ForkEvidence`, :func:`check_fork`): the frames themselves are the proof, checkable by anyone with
the publisher's public key.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from . import _crypto, merkle
from .errors import DecodeError, LocalProtocolError, VerificationError
from .wire import Checkpoint, HeadNotice, Kind, Packet, Revoke, decode_frame

__all__ = [
    "ANCHOR_TAG",
    "CHECKPOINT_VERSION",
    "GENESIS_PREV",
    "ChainHead",
    "Epoch",
    "EpochCheckpoint",
    "ForkEvidence",
    "InclusionProof",
    "blinded_leaf",
    "build_epoch",
    "chain_blind_key",
    "check_fork",
    "restore_mark_digest",
    "verify_inclusion",
]

#: Ledger tag of every anchor write (an IOTA tagged-data tag, a row tag in the embedded ledger).
ANCHOR_TAG: Final = b"streams.anchor.v1"
CHECKPOINT_VERSION: Final = 1
#: ``prev`` of the first checkpoint of a channel.
GENESIS_PREV: Final = bytes(32)

P_LEAF: Final = b"streams.v1.leaf"  #: blinded leaf
P_EPOCH: Final = b"streams.v1.epoch"  #: checkpoint digest (signed, and the link target of the next one)
P_BLIND: Final = b"streams.v1.blind"  #: blind key of a chain, derived from its AEAD key
P_RESTART: Final = b"streams.v1.rmark"  #: a member's restore mark (restore_mark_digest)

_U64: Final = (1 << 64) - 1
_MAX_PROOF: Final = 64  # a tree of 2**64 leaves has paths of at most 64 nodes


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def blinded_leaf(blind_key: bytes, branch: bytes, publisher: int, seq: int, head_hash: bytes) -> bytes:
    """The 32-byte Merkle leaf committing to one chain head, blinded by the branch's secret ``blind_key``.

    Raises :class:`~streams.errors.LocalProtocolError` on out-of-range arguments."""
    if len(blind_key) != 32 or len(branch) != 16 or len(head_hash) != 32:
        raise LocalProtocolError("blind_key and head_hash are 32 bytes, branch is 16 bytes")
    if not (0 <= publisher <= 255 and 0 <= seq <= _U64):
        raise LocalProtocolError("publisher is 0..255 and seq a 64-bit unsigned integer")
    return _crypto.hash32(P_LEAF, blind_key, branch, bytes((publisher,)), struct.pack(">Q", seq), head_hash)


def restore_mark_digest(channel: bytes, branch: bytes, publisher: int, seq: int, head_hash: bytes) -> bytes:
    """What a member signs (its restore mark, SPEC 13.5) when it restarts chain ``(branch, publisher)`` of
    ``channel`` at the anchored head ``(seq, head_hash)`` of a restore proof while its log holds nothing of that
    chain at or below it -- so its log of the chain legitimately starts after ``seq``::

        BLAKE2b-256(person="streams.v1.rmark", channel || branch || publisher (1 byte) || seq (8 BE) || head_hash)

    Only the member's key makes one: a restore flag set by whoever can write the store file (to pass a deletion
    of everything below an anchored head off as a restart) carries none.  Raises
    :class:`~streams.errors.LocalProtocolError` on out-of-range arguments."""
    if len(channel) != 32 or len(branch) != 16 or len(head_hash) != 32:
        raise LocalProtocolError("channel and head_hash are 32 bytes, branch is 16 bytes")
    if not (0 <= publisher <= 255 and 0 <= seq <= _U64):
        raise LocalProtocolError("publisher is 0..255 and seq a 64-bit unsigned integer")
    return _crypto.hash32(P_RESTART, channel, branch, bytes((publisher,)), struct.pack(">Q", seq), head_hash)


def chain_blind_key(chain_key: bytes, branch: bytes, publisher: int, key_epoch: int) -> bytes:
    """The blind key of chain ``(branch, publisher)``::

        BLAKE2b-256(person="streams.v1.blind", chain_key || branch || publisher (1 byte) || key_epoch (8 BE))

    ``chain_key`` is the chain's AEAD key of epoch ``key_epoch`` -- by convention the *latest* key epoch
    held for that publisher.  Exactly the chain's publisher and its readers (the author, READ members,
    auditors) hold that key, so exactly they can recompute and check the leaf; a ledger observer, another
    branch's member, or a member removed before the re-key cannot link a leaf to a branch (THREATS 1).  The
    derivation is one-way, so the blind key reveals nothing about the AEAD key."""
    if len(chain_key) != 32 or len(branch) != 16 or not 0 <= publisher <= 255 or not 0 <= key_epoch <= _U64:
        raise LocalProtocolError("chain_key is 32 bytes, branch 16, publisher 0..255, key_epoch a u64")
    return _crypto.hash32(P_BLIND, chain_key, branch, bytes((publisher,)), struct.pack(">Q", key_epoch))


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The head of one ``(branch, publisher)`` chain, as its members know it."""

    branch: bytes  #: 16-byte branch id
    publisher: int  #: member index, 0 is the author
    seq: int  #: sequence number of the head message
    hash: bytes  #: message hash of the head (:func:`streams.wire.message_hash`)
    blind_key: bytes  #: the branch's 32-byte blinding secret; never shown by ``repr``

    @property
    def leaf(self) -> bytes:
        """The blinded leaf of this head."""
        return blinded_leaf(self.blind_key, self.branch, self.publisher, self.seq, self.hash)

    def __repr__(self) -> str:
        return f"ChainHead(branch={self.branch.hex()}, publisher={self.publisher}, seq={self.seq})"


@dataclass(frozen=True, slots=True)
class EpochCheckpoint:
    """A signed commitment to the Merkle root of one epoch's blinded heads, linked to the previous one.

    ``digest = BLAKE2b-256(person="streams.v1.epoch", msgpack([version, channel, epoch, tree_size, root,
    prev, timestamp_ms]))`` is what the author signs and what the next checkpoint's ``prev`` names."""

    channel: bytes  #: 32-byte channel id
    epoch: int  #: 0, 1, 2, ... per channel
    tree_size: int  #: number of leaves
    root: bytes  #: RFC 9162 Merkle tree hash of the sorted leaves
    prev: bytes  #: digest of the previous checkpoint, :data:`GENESIS_PREV` for epoch 0
    timestamp_ms: int  #: author's clock when the epoch was cut, milliseconds since the Unix epoch
    sig: bytes = b""  #: Ed25519 signature of :attr:`digest` by the author

    def _fields(self) -> list[Any]:
        return [CHECKPOINT_VERSION, self.channel, self.epoch, self.tree_size, self.root, self.prev,
                self.timestamp_ms]

    @property
    def digest(self) -> bytes:
        """The signed digest, also this checkpoint's identity in the hash chain of checkpoints."""
        return _crypto.hash32(P_EPOCH, _packb(self._fields()))

    def encode(self) -> bytes:
        """The deterministic msgpack encoding: the ledger payload of the epoch."""
        return _packb([*self._fields(), self.sig])

    @classmethod
    def decode(cls, data: bytes) -> EpochCheckpoint:
        """Parse a ledger payload.  Raises :class:`~streams.errors.DecodeError` unless ``data`` is the
        canonical encoding of a well-formed checkpoint (signature not checked: see :meth:`verify`)."""
        try:
            v = msgpack.unpackb(data, raw=False, use_list=True, max_bin_len=4096, max_str_len=0,
                                max_array_len=16, max_map_len=0, max_ext_len=0)
        except Exception as exc:  # any msgpack failure on hostile input means "malformed"
            raise DecodeError("checkpoint: not valid msgpack") from exc
        if not isinstance(v, list) or len(v) != 8 or v[0] != CHECKPOINT_VERSION or type(v[0]) is not int:
            raise DecodeError("checkpoint: expected [1, channel, epoch, size, root, prev, ts, sig]")
        _, channel, epoch, size, root, prev, ts, sig = v
        for b, n in ((channel, 32), (root, 32), (prev, 32), (sig, 64)):
            if not isinstance(b, bytes) or len(b) != n:
                raise DecodeError("checkpoint: bad field length")
        for i in (epoch, size, ts):
            if type(i) is not int or not 0 <= i <= _U64:
                raise DecodeError("checkpoint: bad integer field")
        cp = cls(channel, epoch, size, root, prev, ts, sig)
        if cp.encode() != data:
            raise DecodeError("checkpoint: not in canonical encoding")
        return cp

    def verify(self, author_public: bytes) -> None:
        """Raise :class:`~streams.errors.VerificationError` unless signed by ``author_public``."""
        _crypto.verify(author_public, self.digest, self.sig)

    def verify_follows(self, prev: EpochCheckpoint | None) -> None:
        """Raise :class:`~streams.errors.VerificationError` unless this checkpoint directly follows ``prev``
        (``None``: it must be the channel's first)."""
        if prev is None:
            ok = self.epoch == 0 and self.prev == GENESIS_PREV
        else:
            ok = (self.channel == prev.channel and self.epoch == prev.epoch + 1
                  and _crypto.ct_equal(self.prev, prev.digest) and self.timestamp_ms >= prev.timestamp_ms)
        if not ok:
            raise VerificationError("checkpoint does not follow the previous one")


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Proof that one blinded leaf is in an epoch's tree (RFC 9162 section 2.1.3)."""

    epoch: int
    index: int  #: position of the leaf in the sorted leaves
    tree_size: int
    path: tuple[bytes, ...]  #: ``PATH(index, D[tree_size])``, leaf level first


@dataclass(frozen=True, slots=True)
class Epoch:
    """The result of :func:`build_epoch`: the signed checkpoint to write, and a proof for every head."""

    checkpoint: EpochCheckpoint
    proofs: dict[tuple[bytes, int], InclusionProof]  #: keyed by ``(branch, publisher)``

    @property
    def payload(self) -> bytes:
        """The ledger payload (write it with tag :data:`ANCHOR_TAG`)."""
        return self.checkpoint.encode()


def build_epoch(
    channel: bytes,
    heads: Sequence[ChainHead],
    prev: EpochCheckpoint | None,
    timestamp_ms: int,
    sign: Callable[[bytes], bytes],
) -> Epoch:
    """Cut an epoch over ``heads``: sorted blinded leaves, one Merkle tree, a checkpoint signed with ``sign``
    (e.g. ``Identity.sign``) linked to ``prev``, and the inclusion proof of every head.

    Raises :class:`~streams.errors.LocalProtocolError` if ``heads`` is empty, names a chain twice, or if
    ``prev`` belongs to another channel or is later than ``timestamp_ms``."""
    if len(channel) != 32:
        raise LocalProtocolError("channel id is 32 bytes")
    if not heads:
        raise LocalProtocolError("an epoch needs at least one head")
    keys = [(h.branch, h.publisher) for h in heads]
    if len(set(keys)) != len(keys):
        raise LocalProtocolError("a chain appears twice in one epoch")
    if prev is not None and (prev.channel != channel or timestamp_ms < prev.timestamp_ms):
        raise LocalProtocolError("prev is from another channel or later than this epoch")
    if not 0 <= timestamp_ms <= _U64:
        raise LocalProtocolError("timestamp out of range")
    # Sorted leaves: the order carries no information about the branches (THREATS 1).
    ordered = sorted(zip((h.leaf for h in heads), keys, strict=True))
    leaves = [leaf for leaf, _ in ordered]
    tree = merkle.MerkleTree(leaves)
    epoch = 0 if prev is None else prev.epoch + 1
    unsigned = EpochCheckpoint(channel, epoch, tree.size, tree.root,
                               GENESIS_PREV if prev is None else prev.digest, timestamp_ms)
    checkpoint = EpochCheckpoint(channel, epoch, tree.size, tree.root, unsigned.prev, timestamp_ms,
                                 sign(unsigned.digest))
    proofs = {
        key: InclusionProof(epoch, i, tree.size, tuple(tree.inclusion_proof(i)))
        for i, (_, key) in enumerate(ordered)
    }
    return Epoch(checkpoint, proofs)


def verify_inclusion(
    head: ChainHead, proof: InclusionProof, checkpoint: EpochCheckpoint, author_public: bytes
) -> None:
    """Check that ``head`` is committed by ``checkpoint`` and that the author signed it.

    Raises :class:`~streams.errors.VerificationError` if the signature, the epoch, the tree size or the
    Merkle path (RFC 9162 section 2.1.3.2) does not hold.  Whether the checkpoint is *on the ledger* is a
    separate check: read it back from the ledger and compare (see :mod:`streams.ledger`)."""
    checkpoint.verify(author_public)
    if proof.epoch != checkpoint.epoch or proof.tree_size != checkpoint.tree_size:
        raise VerificationError("inclusion proof is for another epoch or tree")
    if len(proof.path) > _MAX_PROOF:
        raise VerificationError("inclusion proof too long")
    if not merkle.verify_inclusion(head.leaf, proof.index, proof.tree_size, proof.path, checkpoint.root):
        raise VerificationError("head is not in the anchored tree")


# --- forks -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForkEvidence:
    """Two encoded frames claiming different messages at one ``(channel, branch, publisher, seq)``.

    Accepted frame kinds: PACKET (signed), CHECKPOINT (whose hash is the message at its seq), HEAD (a signed
    claim that ``hash`` is the message at ``seq``) and REVOKE (the author's signed claim that ``last_hash`` is
    the final message of its chain on the branch, at ``last_seq`` >= 1: publisher 0)."""

    frame_a: bytes
    frame_b: bytes


def _claim(raw: bytes, signer_public: bytes) -> tuple[tuple[bytes, bytes, int, int], bytes]:
    """``((channel, branch, publisher, seq), claimed message hash)`` of one signed frame."""
    frame = decode_frame(raw)
    if frame.kind not in (Kind.PACKET, Kind.CHECKPOINT, Kind.HEAD, Kind.REVOKE):
        raise VerificationError("fork evidence must be PACKET, CHECKPOINT, HEAD or REVOKE frames")
    if len(frame.sig) != 64:
        raise VerificationError("fork evidence frames must be signed")
    _crypto.verify(signer_public, frame.hash, frame.sig)
    head = frame.head
    if isinstance(head, Revoke):
        if head.last_seq < 1:
            raise VerificationError("a REVOKE of an empty chain claims no message")
        return (head.channel, head.branch, 0, head.last_seq), head.last_hash
    if isinstance(head, HeadNotice):
        claimed = head.hash
    else:
        assert isinstance(head, Packet | Checkpoint)
        claimed = frame.hash
    return (head.channel, head.branch, head.publisher, head.seq), claimed


def check_fork(evidence: ForkEvidence, signer_public: bytes) -> tuple[bytes, bytes, int, int]:
    """Verify fork evidence against the publisher's Ed25519 key and return the forked position
    ``(channel, branch, publisher, seq)``.

    Raises :class:`~streams.errors.VerificationError` if either frame is unsigned or not signed by
    ``signer_public``, the positions differ, or both frames claim the same message (no fork); raises
    :class:`~streams.errors.DecodeError` if a frame is malformed."""
    pos_a, hash_a = _claim(evidence.frame_a, signer_public)
    pos_b, hash_b = _claim(evidence.frame_b, signer_public)
    if pos_a != pos_b:
        raise VerificationError("the frames are at different positions: not a fork")
    if _crypto.ct_equal(hash_a, hash_b):
        raise VerificationError("the frames claim the same message: not a fork")
    return pos_a
