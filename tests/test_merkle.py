"""RFC 9162 Merkle tree: known-answer vectors and properties.

Known answers.  The eight leaf inputs and the roots of the trees over their first n entries (n = 0..8), the
inclusion paths for (leaf 0, size 8), (leaf 5, size 8), (leaf 2, size 3), (leaf 1, size 5) and the
consistency proofs (1, 8), (2, 5), (2, 8), (6, 8) are the RFC 6962 reference test data of the Certificate
Transparency implementations (certificate-transparency ``merkle_tree_test.cc`` and the Go
``transparency-dev/merkle`` ``TestInclusionProof``/``TestConsistencyProof`` tables, reproduced in many
repositories).  RFC 9162 section 2.1 defines the same tree as RFC 6962 section 2.1, so they apply unchanged.
The size-0, -1 and -2 roots are also re-derived from the definitions in the test itself.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_tree_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

INPUTS = [
    bytes.fromhex(h)
    for h in [
        "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"
    ]
]
LEAVES = [leaf_hash(x) for x in INPUTS]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 3): ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    (1, 5): [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}
CONSISTENCY = {
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
    (2, 8): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}


def _hex(xs: list[bytes]) -> list[str]:
    return [x.hex() for x in xs]


def _flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x80]) + b[i + 1 :]


# --- definitions, by hand -----------------------------------------------------------------------------------


def test_small_trees_follow_the_definitions() -> None:
    # RFC 9162 section 2.1.1: MTH({}) = SHA-256(); leaf = SHA-256(0x00 || d); node = SHA-256(0x01 || l || r).
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert node_hash(LEAVES[0], LEAVES[1]) == hashlib.sha256(b"\x01" + LEAVES[0] + LEAVES[1]).digest()
    assert root_from_leaf_hashes(LEAVES[:3]) == node_hash(node_hash(LEAVES[0], LEAVES[1]), LEAVES[2])
    # the domain separation is what makes a two-leaf root differ from the leaf hash of the concatenation
    assert root_from_leaf_hashes(LEAVES[:2]) != leaf_hash(LEAVES[0] + LEAVES[1])


# --- known answers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(9))
def test_roots(n: int) -> None:
    assert merkle_tree_hash(INPUTS[:n]).hex() == ROOTS[n]
    assert MerkleTree(LEAVES[:n]).root.hex() == ROOTS[n]


@pytest.mark.parametrize(("index", "size"), sorted(INCLUSION))
def test_inclusion_vectors(index: int, size: int) -> None:
    proof = inclusion_proof(LEAVES, index, size)
    assert _hex(proof) == INCLUSION[(index, size)]
    assert MerkleTree(LEAVES[:size]).inclusion_proof(index) == proof
    assert verify_inclusion(LEAVES[index], index, size, proof, bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize(("first", "second"), sorted(CONSISTENCY))
def test_consistency_vectors(first: int, second: int) -> None:
    proof = consistency_proof(LEAVES, first, second)
    assert _hex(proof) == CONSISTENCY[(first, second)]
    assert verify_consistency(first, second, bytes.fromhex(ROOTS[first]), bytes.fromhex(ROOTS[second]), proof)


def test_every_pair_of_the_vector_trees_verifies() -> None:
    roots = [bytes.fromhex(r) for r in ROOTS]
    for size in range(1, 9):
        for index in range(size):
            proof = inclusion_proof(LEAVES, index, size)
            assert verify_inclusion(LEAVES[index], index, size, proof, roots[size])
    for first in range(9):
        for second in range(first, 9):
            proof = consistency_proof(LEAVES, first, second)
            assert verify_consistency(first, second, roots[first], roots[second], proof)
            assert (proof == []) == (first in (0, second))


def test_range_errors() -> None:
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES, 8)
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES, 0, 9)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES, 5, 4)
    with pytest.raises(ValueError):
        MerkleTree([b"short"])
    assert not verify_inclusion(LEAVES[0], 0, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(LEAVES[0], -1, 1, [], LEAVES[0])
    assert not verify_consistency(3, 2, bytes(32), bytes(32), [])


def test_the_verifiers_answer_false_for_arguments_of_the_wrong_type() -> None:
    """Predicates over untrusted input (the module docstring): a float, text or bool where an int goes, or a
    proof that is no list or tuple of hashes, is False -- never an exception, nor True (``0.0`` passed as the
    index of the one leaf of a tree used to verify)."""
    tree = MerkleTree(LEAVES[:4])
    good = tree.inclusion_proof(1)
    assert verify_inclusion(LEAVES[1], 1, 4, good, tree.root)
    assert verify_inclusion(LEAVES[0], 0, 1, [], LEAVES[0])
    wrong: list[tuple[object, object, object]] = [
        (1.0, 4, good), ("1", 4, good), (True, 4, good), (1, 4.0, good), (1, "4", good),
        (1, 4, None), (1, 4, b"".join(good)), (1, 4, iter(good)), (1, 4, [*good[:-1], "x"]),
    ]
    for index, size, proof in wrong:
        assert verify_inclusion(LEAVES[1], index, size, proof, tree.root) is False  # type: ignore[arg-type]
    assert verify_inclusion(LEAVES[0], 0.0, 1, [], LEAVES[0]) is False  # type: ignore[arg-type]
    cons = consistency_proof(LEAVES, 1, 4)
    assert verify_consistency(1, 4, LEAVES[0], tree.root, cons)
    for first, second, proof in [(1.0, 4, cons), (1, 4.0, cons), ("1", 4, cons), (1, 4, None), (1, 4, iter(cons))]:
        assert verify_consistency(first, second, LEAVES[0], tree.root, proof) is False  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------------------------

hash32 = st.binary(min_size=32, max_size=32)


@settings(max_examples=150, deadline=None)
@given(st.lists(hash32, min_size=1, max_size=70), st.data())
def test_inclusion_proofs_verify_and_tampering_fails(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    tree = MerkleTree(leaves)
    assert tree.root == root_from_leaf_hashes(leaves)
    index = data.draw(st.integers(0, n - 1))
    proof = inclusion_proof(leaves, index)
    assert tree.inclusion_proof(index) == proof
    assert verify_inclusion(leaves[index], index, n, proof, tree.root)
    # any altered leaf, root or proof element fails
    byte = data.draw(st.integers(0, 31))
    assert not verify_inclusion(_flip(leaves[index], byte), index, n, proof, tree.root)
    assert not verify_inclusion(leaves[index], index, n, proof, _flip(tree.root, byte))
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:k], _flip(proof[k], byte), *proof[k + 1 :]]
        assert not verify_inclusion(leaves[index], index, n, bad, tree.root)
        assert not verify_inclusion(leaves[index], index, n, proof[:-1], tree.root)
    assert not verify_inclusion(leaves[index], index, n, [*proof, tree.root], tree.root)
    # another index fails unless that leaf is the same value and sits in an identical position of the fold
    other = data.draw(st.integers(0, n - 1))
    if other != index and leaves[other] != leaves[index]:
        assert not verify_inclusion(leaves[other], index, n, proof, tree.root)


@settings(max_examples=150, deadline=None)
@given(st.lists(hash32, min_size=2, max_size=70), st.data())
def test_consistency_proofs_verify_and_tampering_fails(leaves: list[bytes], data: st.DataObject) -> None:
    second = data.draw(st.integers(2, len(leaves)))
    first = data.draw(st.integers(1, second - 1))
    r1, r2 = root_from_leaf_hashes(leaves[:first]), root_from_leaf_hashes(leaves[:second])
    proof = consistency_proof(leaves, first, second)
    assert verify_consistency(first, second, r1, r2, proof)
    byte = data.draw(st.integers(0, 31))
    assert not verify_consistency(first, second, _flip(r1, byte), r2, proof)
    assert not verify_consistency(first, second, r1, _flip(r2, byte), proof)
    k = data.draw(st.integers(0, len(proof) - 1))
    bad = [*proof[:k], _flip(proof[k], byte), *proof[k + 1 :]]
    assert not verify_consistency(first, second, r1, r2, bad)
    assert not verify_consistency(first, second, r1, r2, proof[:-1])
    # a history rewritten inside the first tree is not a prefix any more
    i = data.draw(st.integers(0, first - 1))
    rewritten = [*leaves[:i], _flip(leaves[i], byte), *leaves[i + 1 :]]
    forged = consistency_proof(rewritten, first, second)
    assert not verify_consistency(first, second, root_from_leaf_hashes(rewritten[:first]), r2, forged)
