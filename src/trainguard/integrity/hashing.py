"""Hashing files near the machine's limit.

Large sequential reads into one reused buffer (hashlib releases the GIL while it hashes, so
threads hash different files on different cores), no per-file Python work beyond open/read.

Example::

    from pathlib import Path
    from trainguard.integrity.hashing import digest_files, file_digest
    one = file_digest(Path("model.safetensors"))            # bytes (sha256)
    many = digest_files([Path("a"), Path("b")], workers=2)   # {Path: bytes}
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: read size: large enough that per-call overhead vanishes, small enough to stay in L2/L3 caches
CHUNK = 4 << 20

#: algorithms accepted by name (OMS v1.0 allows sha256 and blake2b; blake3 when installed)
ALGORITHMS = ("sha256", "sha384", "sha512", "blake2b")


def new_hasher(algorithm: str = "sha256") -> hashlib._Hash:
    """A fresh hashlib object; ValueError for an algorithm we do not accept."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported hash algorithm {algorithm!r} (use one of {ALGORITHMS})")
    return hashlib.new(algorithm)


def file_digest(path: Path, algorithm: str = "sha256", *, offset: int = 0,
                length: int | None = None, fd: int | None = None) -> bytes:
    """Digest of a file (or of ``length`` bytes at ``offset``), read in large chunks.

    With ``fd`` the open descriptor is read (with ``os.pread``: position-independent, so threads
    may share it) instead of opening ``path``: the caller can hash exactly the bytes it then uses.
    """
    h = new_hasher(algorithm)
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    assert fd is not None
    try:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        pos = offset
        remaining = length
        while remaining is None or remaining > 0:
            want = CHUNK if remaining is None else min(CHUNK, remaining)
            n = os.preadv(fd, [view[:want]], pos) if hasattr(os, "preadv") else _pread_into(
                fd, view[:want], pos)
            if n == 0:
                if remaining:
                    raise OSError(f"{path}: file shrank while hashing")
                break
            h.update(view[:n])
            pos += n
            if remaining is not None:
                remaining -= n
    finally:
        if own:
            os.close(fd)
    return h.digest()


def _pread_into(fd: int, view: memoryview, pos: int) -> int:  # pragma: no cover - no preadv
    data = os.pread(fd, len(view), pos)
    view[: len(data)] = data
    return len(data)


def digest_files(
    paths: Iterable[Path],
    algorithm: str = "sha256",
    *,
    workers: int | None = None,
    progress: Callable[[Path, int], None] | None = None,
) -> dict[Path, bytes]:
    """Digests of many files, hashed by ``workers`` threads (default: CPU count).

    ``progress(path, size)`` is called after each file (from worker threads).
    """
    items = list(paths)
    workers = max(1, workers or os.cpu_count() or 1)

    def one(p: Path) -> tuple[Path, bytes]:
        d = file_digest(p, algorithm)
        if progress is not None:
            progress(p, p.stat().st_size)
        return p, d

    if workers == 1 or len(items) <= 1:
        return dict(one(p) for p in items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, items))
