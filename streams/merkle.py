"""RFC 9162 Merkle trees: the tree hash, inclusion proofs and consistency proofs.  Pure; no I/O.

This is the tree of RFC 9162 section 2.1 (the same as RFC 6962 section 2.1) with SHA-256:

* leaf hash ``HASH(0x00 || d)`` and node hash ``HASH(0x01 || left || right)`` -- the one-byte prefixes
  domain-separate leaves from interior nodes, so no leaf can pass for a subtree (second-preimage defence,
  RFC 9162 section 2.1.1);
* ``MTH({}) = HASH()`` for the empty tree.

Functions named after the RFC take the list ``D[n]`` of *leaf hashes* (already passed through
:func:`leaf_hash`), because the anchoring code commits to 32-byte blinded leaves; use
:func:`merkle_tree_hash` to hash raw entries.  The recursive functions follow the RFC text literally and are
the reference; :class:`MerkleTree` builds the levels once (``O(n)``) and answers inclusion proofs in
``O(log n)`` -- the tests check that both agree.

The verifiers return ``bool`` and never raise on malformed proofs: they are predicates over untrusted input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "merkle_tree_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
_LEAF: Final = b"\x00"  # RFC 9162 section 2.1.1: leaf prefix
_NODE: Final = b"\x01"  # RFC 9162 section 2.1.1: interior node prefix
#: ``MTH({}) = SHA-256()`` (RFC 9162 section 2.1.1).
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """``MTH({d(0)}) = SHA-256(0x00 || d(0))`` -- the hash of one leaf entry."""
    return hashlib.sha256(_LEAF + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)`` -- an interior node."""
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n > 1``), the ``k`` of RFC 9162 section 2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """``MTH(D[n])`` over leaf hashes (RFC 9162 section 2.1.1)."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = _split(n)
    return node_hash(root_from_leaf_hashes(hashes[:k]), root_from_leaf_hashes(hashes[k:]))


def merkle_tree_hash(entries: Sequence[bytes]) -> bytes:
    """``MTH(D[n])`` over raw entries: each is leaf-hashed first."""
    return root_from_leaf_hashes([leaf_hash(e) for e in entries])


def _check_size(hashes: Sequence[bytes], size: int | None) -> int:
    if size is None:
        return len(hashes)
    if not 0 <= size <= len(hashes):
        raise ValueError("tree size out of range")
    return size


def inclusion_proof(hashes: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """``PATH(m, D[n])`` (RFC 9162 section 2.1.3.1) for leaf ``index`` in the tree of the first ``size``
    leaf hashes (default: all).  Raises ``ValueError`` if ``index`` is not a leaf of that tree."""
    n = _check_size(hashes, size)
    if not 0 <= index < n:
        raise ValueError("leaf index out of range")
    return _path(index, hashes[:n])


def _path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []  # PATH(0, {d(0)}) = {}
    k = _split(n)
    if m < k:  # PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])
        return [*_path(m, d[:k]), root_from_leaf_hashes(d[k:])]
    # PATH(m, D[n]) = PATH(m - k, D[k:n]) : MTH(D[0:k])
    return [*_path(m - k, d[k:]), root_from_leaf_hashes(d[:k])]


def consistency_proof(hashes: Sequence[bytes], first: int, second: int | None = None) -> list[bytes]:
    """``PROOF(m, D[n])`` (RFC 9162 section 2.1.4.1): proves the tree of the first ``first`` leaves is a
    prefix of the tree of the first ``second`` leaves.  Empty when ``first`` is 0 or equals ``second``
    (nothing to prove).  Raises ``ValueError`` unless ``0 <= first <= second <= len(hashes)``."""
    n = _check_size(hashes, second)
    if not 0 <= first <= n:
        raise ValueError("first tree size out of range")
    if first in (0, n):
        return []
    return _subproof(first, hashes[:n], True)


def _subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        # SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])}
        return [] if b else [root_from_leaf_hashes(d)]
    k = _split(n)
    if m <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
        return [*_subproof(m, d[:k], b), root_from_leaf_hashes(d[k:])]
    # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
    return [*_subproof(m - k, d[k:], False), root_from_leaf_hashes(d[:k])]


def _is_hash(x: object) -> bool:
    return isinstance(x, bytes) and len(x) == HASH_SIZE


def _is_path(proof: object) -> bool:
    """A list or tuple of hashes (not a str, bytes, None or a generator: a predicate over untrusted input takes
    no input it could choke on)."""
    return isinstance(proof, (list, tuple)) and all(_is_hash(p) for p in proof)


def _is_size(x: object) -> bool:
    return type(x) is int and x >= 0  # (not a bool, a float, a str)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: does ``proof`` show that leaf hash ``leaf`` is at ``index`` in the tree of
    ``size`` leaves whose root is ``root``?"""
    if not (_is_hash(leaf) and _is_hash(root) and _is_path(proof) and _is_size(index) and _is_size(size)):
        return False
    # 1. leaf_index >= tree_size: fail.
    if not 0 <= index < size:
        return False
    # 2-3. fn = leaf_index, sn = tree_size - 1, r = hash.
    fn, sn, r = index, size - 1, leaf
    # 4. for each p in inclusion_path:
    for p in proof:
        if sn == 0:  # a. proof longer than the path: fail
            return False
        if fn & 1 or fn == sn:  # b. p is a left sibling
            r = node_hash(p, r)
            if not fn & 1:  # skip the levels where our node has no right sibling
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:  # c. p is a right sibling
            r = node_hash(r, p)
        fn >>= 1  # d.
        sn >>= 1
    # 5. sn must be 0 and r the root.
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: does ``proof`` show the tree of size ``first`` with root ``first_root`` is a
    prefix of the tree of size ``second`` with root ``second_root``?

    The degenerate cases the RFC leaves to the caller are decided here: ``first == second`` needs an empty
    proof and equal roots; ``first == 0`` needs an empty proof (the empty tree is a prefix of every tree) and
    ``first_root`` must be :data:`EMPTY_ROOT`."""
    if not (_is_hash(first_root) and _is_hash(second_root) and _is_path(proof) and _is_size(first)
            and _is_size(second)):
        return False
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    # 1. an empty consistency_path fails.
    if not proof:
        return False
    path = list(proof)
    # 2. If first is an exact power of 2, prepend first_hash to the path.
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, shift fn and sn right until it is not.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value in the path.
    fr = sr = path[0]
    # 6. for each subsequent value c:
    for c in path[1:]:
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:  # c.
            sr = node_hash(sr, c)
        fn >>= 1  # d.
        sn >>= 1
    # 7. fr == first_hash, sr == second_hash and sn == 0.
    return sn == 0 and fr == first_root and sr == second_root


class MerkleTree:
    """A fixed tree over leaf hashes, built level by level in ``O(n)``.

    Bottom-up pairing that carries an unpaired last node up unchanged yields exactly the left-balanced tree
    of RFC 9162 section 2.1.1: node ``i`` of level ``j`` is ``MTH`` of leaves ``[i*2^j, min((i+1)*2^j, n))``.
    """

    __slots__ = ("_levels",)

    def __init__(self, hashes: Sequence[bytes]) -> None:
        if not all(_is_hash(h) for h in hashes):
            raise ValueError("leaf hashes must be 32 bytes")
        levels = [list(hashes)]
        while len(levels[-1]) > 1:
            below = levels[-1]
            up = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            if len(below) % 2:
                up.append(below[-1])
            levels.append(up)
        self._levels = levels

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        """``MTH(D[n])``."""
        return self._levels[-1][0] if self.size else EMPTY_ROOT

    def inclusion_proof(self, index: int) -> list[bytes]:
        """``PATH(index, D[n])`` (RFC 9162 section 2.1.3.1), equal to :func:`inclusion_proof`."""
        if not 0 <= index < self.size:
            raise ValueError("leaf index out of range")
        proof: list[bytes] = []
        i = index
        for level in self._levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):  # a carried-up node has no sibling on this level
                proof.append(level[sibling])
            i >>= 1
        return proof
