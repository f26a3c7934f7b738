"""RFC 9162 Merkle trees: hashing, tree heads, inclusion and consistency proofs.

The hashing is RFC 9162 §2.1.1 (unchanged from RFC 6962 §2.1) with SHA-256:

* leaf hash ``MTH({d(0)}) = SHA-256(0x00 || d(0))``
* interior node ``SHA-256(0x01 || MTH(left) || MTH(right))``, where for ``n > 1`` entries the
  left subtree holds the first ``k`` entries, ``k`` the largest power of two smaller than ``n``
* the empty tree ``MTH({}) = SHA-256()``.

The distinct prefixes stop a leaf from being passed off as an interior node (second preimage).
Proof generation follows §2.1.3.1 (PATH) and §2.1.4.1 (PROOF/SUBPROOF); verification follows the
step-by-step algorithms of §2.1.3.2 and §2.1.4.2, numbered as in the RFC.

:class:`MerkleTree` keeps the leaf hashes and every *complete* subtree hash (levels of a
perfect binary tree) in flat ``bytearray``\\s, 64 bytes per leaf in all. A complete subtree never
changes once its last leaf is appended, so any ``MTH(D[a:b])`` the proofs need is O(log n)
cached lookups plus the hashes along the tree's right border: an inclusion proof at 10^6 leaves
costs tens of microseconds.

Example::

    from trainguard.ledger.merkle import MerkleTree, leaf_hash, verify_inclusion
    tree = MerkleTree()
    for entry in (b"a", b"b", b"c"):
        tree.append(leaf_hash(entry))
    proof = tree.inclusion_proof(1, 3)
    verify_inclusion(leaf_hash(b"b"), 1, 3, proof, tree.root(3))   # raises ProofError if wrong
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainguard.core.errors import VerificationError

HASH_SIZE = 32
#: RFC 9162 §2.1.1: domain separation prefixes
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
#: MTH({}) (RFC 9162 §2.1.1): the hash of the empty string
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


class ProofError(VerificationError):
    """An inclusion or consistency proof does not verify (or is malformed)."""

    remedy = ("the log was changed, forked or truncated, or the proof belongs to another tree; "
              "compare against a head kept by a witness")


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x00 || entry)``."""
    return _sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x01 || left || right)``."""
    return _sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2), RFC 9162 §2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes (a straightforward reference, used for audits and tests)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    # Bottom-up over complete subtrees (stack of (size, hash)): same result as the recursive
    # definition because each merge joins two equal, aligned power-of-two subtrees, and the
    # leftover right border is folded from right to left at the end.
    stack: list[tuple[int, bytes]] = []
    for h in leaf_hashes:
        size, cur = 1, h
        while stack and stack[-1][0] == size:
            _, left = stack.pop()
            cur = node_hash(left, cur)
            size *= 2
        stack.append((size, cur))
    _, acc = stack.pop()
    while stack:
        _, left = stack.pop()
        acc = node_hash(left, acc)
    return acc


class MerkleTree:
    """An append-only Merkle tree over leaf hashes with cached complete subtrees."""

    __slots__ = ("_levels", "_right_cache")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        # _levels[j] holds the hashes of the complete subtrees of 2**j leaves, left to right,
        # 32 bytes each; _levels[0] is the leaves.
        self._levels: list[bytearray] = [bytearray()]
        # MTH(D[lo:hi]) for incomplete right-border ranges, keyed (lo, hi); valid forever since
        # leaves are never changed (only ranges with hi <= size are ever asked for).
        self._right_cache: dict[tuple[int, int], bytes] = {}
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def append(self, h: bytes) -> None:
        """Append one leaf hash (32 bytes)."""
        if len(h) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        levels = self._levels
        levels[0] += h
        count = len(levels[0]) // HASH_SIZE
        j = 0
        # Each time the count is a multiple of 2**(j+1), a new complete subtree of that height
        # has just been finished: hash its two halves once, here, and never again.
        while count % 2 == 0:
            below = levels[j]
            right = bytes(below[-HASH_SIZE:])
            left = bytes(below[-2 * HASH_SIZE:-HASH_SIZE])
            if len(levels) == j + 1:
                levels.append(bytearray())
            levels[j + 1] += node_hash(left, right)
            count //= 2
            j += 1

    def extend(self, hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes: one pass per level over the new complete subtrees (loading
        100k stored leaf hashes is one bulk call)."""
        new = list(hashes)
        if any(len(h) != HASH_SIZE for h in new):
            raise ValueError("a leaf hash is 32 bytes")
        if len(new) < 8:
            for h in new:
                self.append(h)
            return
        levels = self._levels
        levels[0] += b"".join(new)
        sha, prefix, step = _sha256, NODE_PREFIX, 2 * HASH_SIZE
        j = 0
        while True:
            below = levels[j]
            want = len(below) // step  # complete parents this level can have
            if len(levels) == j + 1:
                if want == 0:
                    return
                levels.append(bytearray())
            above = levels[j + 1]
            have = len(above) // HASH_SIZE
            if want <= have:
                return
            chunk = bytes(below[have * step:want * step])
            above += b"".join(sha(prefix + chunk[k:k + step]).digest()
                              for k in range(0, len(chunk), step))
            j += 1

    def leaf(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return bytes(self._levels[0][index * HASH_SIZE:(index + 1) * HASH_SIZE])

    def _complete(self, level: int, index: int) -> bytes:
        buf = self._levels[level]
        return bytes(buf[index * HASH_SIZE:(index + 1) * HASH_SIZE])

    def subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for the ranges RFC 9162's recursion produces (``lo`` a multiple of the
        largest power of two not above ``hi - lo``), computed from cached complete subtrees."""
        n = hi - lo
        if n <= 0:
            return EMPTY_ROOT
        if hi > self.size:
            raise ValueError(f"range [{lo}, {hi}) is beyond the tree size {self.size}")
        if n & (n - 1) == 0 and lo % n == 0:  # a complete, aligned subtree: cached
            level = n.bit_length() - 1
            return self._complete(level, lo >> level)
        cached = self._right_cache.get((lo, hi))
        if cached is not None:
            return cached
        k = _split(n)
        value = node_hash(self.subtree(lo, lo + k), self.subtree(lo + k, hi))
        if len(self._right_cache) > 4096:  # bounded: heads move on, old borders are cold
            self._right_cache.clear()
        self._right_cache[(lo, hi)] = value
        return value

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        n = self.size if size is None else size
        if not 0 <= n <= self.size:
            raise ValueError(f"tree size {n} is beyond the tree ({self.size} leaves)")
        return self.subtree(0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]), RFC 9162 §2.1.3.1, leaf-side first."""
        n = self.size if size is None else size
        if not 0 <= index < n <= self.size:
            raise ValueError(f"no leaf {index} in a tree of size {n} (have {self.size})")
        path: list[bytes] = []
        lo, hi = 0, n
        # Walk down from the root; each step records the sibling subtree. Collected root-side
        # first, then reversed, since the RFC lists the path from the leaf up.
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:  # PATH(m, D[0:k]) : MTH(D[k:n])
                path.append(self.subtree(lo + k, hi))
                hi = lo + k
            else:  # PATH(m - k, D[k:n]) : MTH(D[0:k])
                path.append(self.subtree(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """PROOF(first, D[0:second]), RFC 9162 §2.1.4.1."""
        n = self.size if second is None else second
        if not 0 <= first <= n <= self.size:
            raise ValueError(f"no consistency proof from {first} to {n} (have {self.size})")
        if first in (0, n):
            return []
        proof: list[bytes] = []
        lo, hi, m, b = 0, n, first, True
        # SUBPROOF(m, D[lo:hi], b), unrolled; appended nodes are collected deepest-last, then
        # reversed into the RFC's order (deepest first).
        while True:
            if m == hi - lo:
                if not b:
                    proof.append(self.subtree(lo, hi))
                break
            k = _split(hi - lo)
            if m <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
                proof.append(self.subtree(lo + k, hi))
                hi = lo + k
            else:  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
                proof.append(self.subtree(lo, lo + k))
                lo, m, b = lo + k, m - k, False
        proof.reverse()
        return proof


def _check_hash(h: bytes, what: str) -> None:
    if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
        raise ProofError(f"{what} is not a 32-byte SHA-256 hash")


def root_from_inclusion_proof(leaf: bytes, index: int, size: int,
                              proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1-4)."""
    _check_hash(leaf, "leaf hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
    # 1. Compare leaf_index against tree_size. If leaf_index >= tree_size, fail.
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = index, size - 1
    # 3. Set r to hash.
    r = bytes(leaf)
    # 4. For each value p in the inclusion_path array:
    for p in proof:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = node_hash(p, r)
            # ii. If LSB(fn) is not set, right-shift fn and sn until LSB(fn) is set or fn is 0.
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: set r to HASH(0x01 || r || p).
            r = node_hash(r, p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0 (the path must reach the root exactly).
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> None:
    """RFC 9162 §2.1.3.2: raise :class:`ProofError` unless ``leaf`` is entry ``index`` of the
    tree of ``size`` entries whose root is ``root``."""
    _check_hash(root, "root hash")
    # 5. ... Compare r against the root_hash. If they are equal, the proof is verified.
    if root_from_inclusion_proof(leaf, index, size, proof) != root:
        raise ProofError(f"inclusion proof of entry {index} does not lead to the root of the "
                         f"tree of size {size}")


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: raise :class:`ProofError` unless the tree of ``second`` entries with
    root ``second_root`` extends the tree of ``first`` entries with root ``first_root``."""
    _check_hash(first_root, "first root hash")
    _check_hash(second_root, "second root hash")
    for i, c in enumerate(proof):
        _check_hash(c, f"proof[{i}]")
    if not 0 <= first <= second:
        raise ProofError(f"tree size went back from {first} to {second}: the log was truncated")
    if first == second:
        # Equal sizes: the proof is empty and the roots must be equal (§2.1.4.1, m == n).
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if first_root != second_root:
            raise ProofError(f"two different roots for the same tree size {first}: a fork")
        return
    if first == 0:
        # Every tree extends the empty tree; there is nothing to prove.
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError("consistency proof is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr). Set sr to HASH(0x01 || c || sr).
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # ii. If LSB(fn) is not set, right-shift fn and sn until LSB(fn) is set or fn is 0.
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: set sr to HASH(0x01 || sr || c).
            sr = node_hash(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. Verify fr == first_hash, sr == second_hash and sn == 0.
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != first_root:
        raise ProofError(f"the first {first} entries are not the ones the older head "
                         f"committed to: history was rewritten")
    if sr != second_root:
        raise ProofError(f"consistency proof does not lead to the root of size {second}")


def _hex_hash(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * HASH_SIZE:
        raise ProofError(f"{what} must be 64 hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ProofError(f"{what} must be 64 hex digits") from None


def _hex_path(value: object, what: str, limit: int = 128) -> list[bytes]:
    # A proof for a tree of 2**64 leaves has at most 64 hashes (+1 for consistency): a longer
    # list in a proof file is hostile, not large.
    if not isinstance(value, list) or len(value) > limit:
        raise ProofError(f"{what} must be a list of at most {limit} hashes")
    return [_hex_hash(v, f"{what}[{i}]") for i, v in enumerate(value)]


def _size(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise ProofError(f"{what} must be a non-negative integer")
    return value


@dataclass(frozen=True)
class InclusionProof:
    """Entry ``index`` (leaf hash ``leaf_hash``) is in the tree of ``size`` entries with root
    ``root_hash``; ``path`` per RFC 9162 §2.1.3.1."""

    index: int
    size: int
    leaf_hash: bytes
    path: tuple[bytes, ...]
    root_hash: bytes

    def verify(self, root_hash: bytes | None = None) -> None:
        """Check the proof (against ``root_hash``, e.g. from a signed head, when given)."""
        verify_inclusion(self.leaf_hash, self.index, self.size, self.path,
                         self.root_hash if root_hash is None else root_hash)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "inclusion", "index": self.index, "size": self.size,
                "leaf_hash": self.leaf_hash.hex(), "path": [h.hex() for h in self.path],
                "root_hash": self.root_hash.hex()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InclusionProof:
        if not isinstance(data, Mapping) or data.get("type") != "inclusion":
            raise ProofError("not an inclusion proof")
        return cls(index=_size(data.get("index"), "index"), size=_size(data.get("size"), "size"),
                   leaf_hash=_hex_hash(data.get("leaf_hash"), "leaf_hash"),
                   path=tuple(_hex_path(data.get("path"), "path")),
                   root_hash=_hex_hash(data.get("root_hash"), "root_hash"))


@dataclass(frozen=True)
class ConsistencyProof:
    """The tree of ``second`` entries extends the tree of ``first`` entries (RFC 9162 §2.1.4)."""

    first: int
    second: int
    first_root: bytes
    second_root: bytes
    path: tuple[bytes, ...]

    def verify(self, first_root: bytes | None = None, second_root: bytes | None = None) -> None:
        """Check the proof, against roots from kept heads when given."""
        verify_consistency(self.first, self.second,
                           self.first_root if first_root is None else first_root,
                           self.second_root if second_root is None else second_root, self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "consistency", "first": self.first, "second": self.second,
                "first_root": self.first_root.hex(), "second_root": self.second_root.hex(),
                "path": [h.hex() for h in self.path]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConsistencyProof:
        if not isinstance(data, Mapping) or data.get("type") != "consistency":
            raise ProofError("not a consistency proof")
        return cls(first=_size(data.get("first"), "first"),
                   second=_size(data.get("second"), "second"),
                   first_root=_hex_hash(data.get("first_root"), "first_root"),
                   second_root=_hex_hash(data.get("second_root"), "second_root"),
                   path=tuple(_hex_path(data.get("path"), "path")))
