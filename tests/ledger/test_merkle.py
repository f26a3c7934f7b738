"""RFC 9162 Merkle hashing and proofs: the published CT vectors and property tests.

Vectors: the RFC 6962 reference tree of 8 leaves from transparency-dev/merkle
(testonly/constants.go, proof/verify_test.go), also used by certificate-transparency-go.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.ledger.merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
                                      "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
H = bytes.fromhex
# (leaf index 0-based, tree size, path) from proof/verify_test.go (its leaf numbers are 1-based)
INCLUSION = [
    (0, 8, [H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (5, 8, [H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 3, [H("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (1, 5, [H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
    (0, 1, []),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, [H("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            H("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 5, [H("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            H("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
    (6, 7, [H("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            H("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            H("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
]
SOME_HASH = H("abacaba000000000000000000000000000000000000000000060061e00123456")


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    return MerkleTree(leaf_hash(x) for x in LEAVES)


def test_prefixes_and_empty_root() -> None:
    assert EMPTY_ROOT == ROOTS[0] == hashlib.sha256(b"").digest()
    assert leaf_hash(b"") == ROOTS[1]  # 0x00 prefix
    assert node_hash(leaf_hash(LEAVES[0]), leaf_hash(LEAVES[1])) == ROOTS[2]  # 0x01 prefix


def test_roots_match_rfc6962_vectors(tree: MerkleTree) -> None:
    hashes = [leaf_hash(x) for x in LEAVES]
    for n in range(9):
        assert tree.root(n) == ROOTS[n], n
        assert root_of(hashes[:n]) == ROOTS[n], n


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_vectors(tree: MerkleTree, index: int, size: int, path: list[bytes]) -> None:
    assert tree.inclusion_proof(index, size) == path
    leaf = leaf_hash(LEAVES[index])
    verify_inclusion(leaf, index, size, path, ROOTS[size])
    # The corruptions transparency-dev's verifier test probes: all must fail.
    probes = [(index - 1, size, leaf, path, ROOTS[size]),
              (index + 1, size, leaf, path, ROOTS[size]),
              (index ^ 2, size, leaf, path, ROOTS[size]),
              (index, size * 2, leaf, path, ROOTS[size]),
              (index, size // 2, leaf, path, ROOTS[size]),
              (index, size, leaf_hash(b"WrongLeaf"), path, ROOTS[size]),
              (index, size, leaf, path, ROOTS[0]), (index, size, leaf, path, SOME_HASH),
              (index, size, leaf, [*path, ROOTS[size]], ROOTS[size]),
              (index, size, leaf, [ROOTS[size], *path], ROOTS[size])]
    for i in range(len(path)):
        bad = list(path)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((index, size, leaf, bad, ROOTS[size]))
    if path:
        probes.append((index, size, leaf, path[:-1], ROOTS[size]))
    if len(path) > 1:
        probes.append((index, size, leaf, [path[0], SOME_HASH, *path[1:]], ROOTS[size]))
    for i, (pi, ps, pl, pp, pr) in enumerate(probes):
        if (pi, ps) == (index, size) and pp == path and pl == leaf and pr == ROOTS[size]:
            continue
        with pytest.raises(ProofError):  # probe i must not verify
            verify_inclusion(pl, pi, ps, pp, pr)


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY)
def test_consistency_vectors(tree: MerkleTree, first: int, second: int,
                             path: list[bytes]) -> None:
    assert tree.consistency_proof(first, second) == path
    verify_consistency(first, second, ROOTS[first], ROOTS[second], path)
    if not path:
        return
    r1, r2 = ROOTS[first], ROOTS[second]
    probes = [(first - 1, second, r1, r2, path), (first + 1, second, r1, r2, path),
              (first ^ 2, second, r1, r2, path), (first, second * 2, r1, r2, path),
              (first, second // 2, r1, r2, path), (first, second, SOME_HASH, r2, path),
              (first, second, r1, SOME_HASH, path), (first, second, r2, r1, path),
              (first, second, r1, r2, []), (first, second, r1, r2, [*path, r1]),
              (first, second, r1, r2, [*path, r2]), (first, second, r1, r2, [r1, *path]),
              (first, second, r1, r2, [r2, *path]), (first, second, r1, r2, [path[0], *path]),
              (first, second, r1, r2, path[:-1])]
    for i in range(len(path)):
        bad = list(path)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((first, second, r1, r2, bad))
    for p in probes:
        with pytest.raises(ProofError):
            verify_consistency(*p)


@pytest.mark.parametrize(("first", "second", "r1", "r2", "proof", "ok"), [
    (0, 0, ROOTS[0], ROOTS[0], [], True),
    (0, 1, ROOTS[0], ROOTS[1], [], True),
    (1, 1, ROOTS[1], ROOTS[1], [], True),
    (0, 0, ROOTS[0], SOME_HASH, [], False),
    (1, 1, ROOTS[1], SOME_HASH, [], False),
    (1, 0, ROOTS[1], ROOTS[0], [], False),  # time travel to the past
    (2, 1, ROOTS[2], ROOTS[1], [], False),
    (1, 2, ROOTS[1], ROOTS[2], [], False),  # empty proof
    (0, 1, ROOTS[0], ROOTS[1], [ROOTS[0]], False),  # proof must be empty
    (1, 1, ROOTS[1], ROOTS[1], [ROOTS[0]], False),
])
def test_consistency_edge_cases(first: int, second: int, r1: bytes, r2: bytes,
                                proof: list[bytes], ok: bool) -> None:
    if ok:
        verify_consistency(first, second, r1, r2, proof)
    else:
        with pytest.raises(ProofError):
            verify_consistency(first, second, r1, r2, proof)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (5, 3)])
def test_inclusion_out_of_range_fails(index: int, size: int) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(SOME_HASH, index, size, [], ROOTS[0])


def test_wrong_hash_sizes_fail() -> None:
    with pytest.raises(ProofError):
        verify_inclusion(b"short", 0, 1, [], ROOTS[1])
    with pytest.raises(ProofError):
        verify_inclusion(ROOTS[1], 0, 1, [], b"")
    with pytest.raises(ProofError):
        verify_consistency(1, 2, ROOTS[1], ROOTS[2], [b"x" * 31])


def _tree(n: int) -> tuple[MerkleTree, list[bytes]]:
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    return MerkleTree(hashes), hashes


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 600).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_every_inclusion_proof_verifies(case: tuple[int, int]) -> None:
    n, i = case
    tree, hashes = _tree(n)
    root = tree.root()
    assert root == root_of(hashes)
    proof = tree.inclusion_proof(i, n)
    verify_inclusion(hashes[i], i, n, proof, root)
    # the same leaf at another index, or another leaf, must not verify
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(b"not in the tree"), i, n, proof, root)
    if n > 1:
        with pytest.raises(ProofError):
            verify_inclusion(hashes[i], (i + 1) % n, n, proof, root)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 600).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, 10_000),
                        st.integers(0, 255))))
def test_mutated_inclusion_proof_fails(case: tuple[int, int, int, int]) -> None:
    n, i, where, bit = case
    tree, hashes = _tree(n)
    proof = tree.inclusion_proof(i, n)
    if not proof:
        return
    j = where % len(proof)
    bad = list(proof)
    bad[j] = bytes([bad[j][0] ^ (1 << (bit % 8))]) + bad[j][1:]
    with pytest.raises(ProofError):
        verify_inclusion(hashes[i], i, n, bad, tree.root())
    with pytest.raises(ProofError):
        verify_inclusion(hashes[i], i, n, proof[:-1], tree.root())
    with pytest.raises(ProofError):
        verify_inclusion(hashes[i], i, n, [*proof, proof[0]], tree.root())


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 600).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_every_consistency_proof_verifies_and_mutations_fail(case: tuple[int, int]) -> None:
    n, m = case
    tree, hashes = _tree(n)
    proof = tree.consistency_proof(m, n)
    verify_consistency(m, n, tree.root(m), tree.root(n), proof)
    assert tree.root(m) == root_of(hashes[:m])
    if proof:
        bad = list(proof)
        bad[-1] = bytes([bad[-1][0] ^ 1]) + bad[-1][1:]
        with pytest.raises(ProofError):
            verify_consistency(m, n, tree.root(m), tree.root(n), bad)
        # a rewritten older history (another first root) must not verify
        with pytest.raises(ProofError):
            verify_consistency(m, n, leaf_hash(b"forged"), tree.root(n), proof)
    if 0 < m < n:
        with pytest.raises(ProofError):
            verify_consistency(m, n, tree.root(m), tree.root(n), proof[:-1])


def test_proof_objects_round_trip_and_reject_hostile_json() -> None:
    tree, _ = _tree(10)
    inc = InclusionProof(3, 10, tree.leaf(3), tuple(tree.inclusion_proof(3, 10)), tree.root())
    assert InclusionProof.from_dict(inc.to_dict()) == inc
    inc.verify()
    con = ConsistencyProof(4, 10, tree.root(4), tree.root(10), tuple(tree.consistency_proof(4)))
    assert ConsistencyProof.from_dict(con.to_dict()) == con
    con.verify()
    for bad in ({}, [], {"type": "inclusion"}, {**inc.to_dict(), "path": ["zz"] * 2},
                {**inc.to_dict(), "path": ["00" * 32] * 1000}, {**inc.to_dict(), "index": -1},
                {**inc.to_dict(), "size": True}, {**inc.to_dict(), "root_hash": "ab"}):
        with pytest.raises(ProofError):
            InclusionProof.from_dict(bad)  # type: ignore[arg-type]
    with pytest.raises(ProofError):
        ConsistencyProof.from_dict({**con.to_dict(), "first_root": 5})


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 70), min_size=1, max_size=30))
def test_bulk_extend_equals_one_by_one(chunks: list[int]) -> None:
    total = sum(chunks)
    _, hashes = _tree(total)
    bulk, pos = MerkleTree(), 0
    for k in chunks:
        bulk.extend(hashes[pos:pos + k])
        pos += k
        assert bulk.root() == root_of(hashes[:pos])
    one = MerkleTree()
    for h in hashes:
        one.append(h)
    for m in range(0, total + 1, max(1, total // 17)):
        assert bulk.root(m) == one.root(m)
    for i in range(0, total, max(1, total // 13)):
        assert bulk.inclusion_proof(i) == one.inclusion_proof(i)
