"""Hashing files near the machine's limit.

Why it is fast (measured in ``benchmarks/bench_signing.py``):

* one sequential ``preadv`` loop per file into a buffer reused by the thread (no allocation or
  zero-filling per file: a fresh 4 MiB buffer costs more than hashing a 100 KiB file), small files
  read whole in one system call;
* hashlib releases the GIL while it hashes more than 2 KiB, so plain threads keep every core busy,
  on different files or on different shards of one file; no process pool (its start-up alone is
  longer than hashing 2,000 small files), and threads are started only when there is work for them;
* the per-file Python work is one ``open``/``fstat``/``read``/``close``; the optional
  :class:`~trainguard.integrity.cache.DigestCache` skips files whose (device, inode, size, ctime)
  did not change since they were last hashed.

Example::

    from pathlib import Path
    from trainguard.integrity.hashing import digest_files, file_digest, shard_digests
    one = file_digest(Path("model.safetensors"))              # bytes (sha256)
    many = digest_files([Path("a"), Path("b")], workers=2)     # {Path: bytes}
    shards = shard_digests(Path("model.safetensors"), 1_000_000_000)  # [(start, end, bytes)]
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from trainguard.integrity.cache import DigestCache

#: read size for large files: per-call overhead vanishes, and the buffer stays in L2/L3 caches
CHUNK = 1 << 20
#: files up to this size are read whole in one call
_WHOLE = 1 << 20

#: algorithms accepted by name (OMS v1.0 allows sha256 and blake2b; blake3 when installed)
ALGORITHMS = ("sha256", "sha384", "sha512", "blake2b", "blake3")

#: ``progress(path, nbytes)``: called after each file (or shard) from worker threads
Progress = Callable[[Path, int], None]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO (or a device) swapped in where a file was expected returns at once
# instead of waiting for a writer (POSIX open(2)); it has no effect on reads of a regular file,
# and anything that is not one is refused right after the open (fstat), before any read
_SAFE_FLAGS = _OPEN_FLAGS | getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_local = threading.local()
T = TypeVar("T")
R = TypeVar("R")


def new_hasher(algorithm: str = "sha256") -> Any:
    """A fresh hash object (hashlib's, or blake3's); ValueError for an algorithm we refuse."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported hash algorithm {algorithm!r} (use one of {ALGORITHMS})")
    if algorithm == "blake3":
        try:
            import blake3  # optional: OMS ``hash_type: blake3``
        except ImportError:  # pragma: no cover - blake3 is in the test environment
            raise ValueError("hash algorithm 'blake3' needs the 'blake3' package") from None
        return blake3.blake3()
    return hashlib.new(algorithm)


def _buffer() -> memoryview:
    """This thread's reusable read buffer."""
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = memoryview(bytearray(CHUNK))
        _local.view = view
    return view


def _hash_fd(fd: int, h: Any, offset: int, length: int | None, path: object) -> None:
    """Feed ``length`` bytes at ``offset`` (or everything from ``offset``) of ``fd`` into ``h``."""
    view = _buffer()
    pos = offset
    remaining = length
    while remaining is None or remaining > 0:
        want = CHUNK if remaining is None else min(CHUNK, remaining)
        n = os.preadv(fd, [view[:want]], pos)
        if n == 0:
            if remaining:
                raise OSError(f"{path}: file shrank while hashing")
            break
        h.update(view[:n])
        pos += n
        if remaining is not None:
            remaining -= n


class NotRegularFileError(OSError):
    """A path to be hashed is a FIFO, socket, device or directory (never read: it could block
    forever or never end). An :class:`OSError` (``EINVAL``), so callers that report unreadable
    files report it too."""


def open_regular(path: Path | str, *, follow_symlinks: bool = True) -> tuple[int, int]:
    """``(fd, size)`` of a regular file opened for reading; :class:`NotRegularFileError` for
    anything else. Never blocks on a FIFO; with ``follow_symlinks=False`` a symbolic link as the
    last component is refused too (``ELOOP``, O_NOFOLLOW)."""
    fd = os.open(path, _SAFE_FLAGS | (0 if follow_symlinks else _NOFOLLOW))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file "
                                      f"({stat.filemode(st.st_mode)[0]!r} in ls -l terms)",
                                      str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def file_digest(path: Path, algorithm: str = "sha256", *, offset: int = 0,
                length: int | None = None, fd: int | None = None,
                follow_symlinks: bool = True) -> bytes:
    """Digest of a file (or of ``length`` bytes at ``offset``), read in large chunks.

    With ``fd`` the open descriptor is read (with ``os.pread``: position-independent, so threads
    may share it) instead of opening ``path``: the caller can hash exactly the bytes it then uses.
    Opening ``path`` never blocks and never reads anything but a regular file
    (:func:`open_regular`: a FIFO, socket or device raises :class:`NotRegularFileError`, an
    ``OSError``); symbolic links are followed unless ``follow_symlinks=False``.
    """
    return _digest_and_size(path, algorithm, offset=offset, length=length, fd=fd,
                            follow_symlinks=follow_symlinks)[0]


def _digest_and_size(path: Path, algorithm: str = "sha256", *, offset: int = 0,
                     length: int | None = None, fd: int | None = None,
                     follow_symlinks: bool = True) -> tuple[bytes, int]:
    """:func:`file_digest` and the file's size as fstat gave it (-1 with a caller's ``fd``)."""
    h = new_hasher(algorithm)
    own = fd is None
    size = -1
    if fd is None:
        fd, size = open_regular(path, follow_symlinks=follow_symlinks)
    try:
        if own and offset == 0 and length is None and size <= _WHOLE:
            # the whole file in one read; the loop below then only confirms end of file
            # (a short read or a file that grew is still hashed to its end)
            data = os.read(fd, size)
            h.update(data)
            offset = len(data)
        _hash_fd(fd, h, offset, length, path)
    finally:
        if own:
            os.close(fd)
    return bytes(h.digest()), size


def _run(items: Sequence[T], fn: Callable[[T], R], workers: int | None) -> list[R]:
    """``[fn(x) for x in items]`` on up to ``workers`` threads, in order; the first error wins.

    Threads pull the next index from a shared counter, so one slow item does not hold back a
    pre-assigned batch; no ``concurrent.futures`` import on the path of a one-file call.
    """
    n = len(items)
    workers = min(max(1, workers or os.cpu_count() or 1), n)
    if workers <= 1:
        return [fn(x) for x in items]
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    lock = threading.Lock()
    nxt = [0]

    def worker() -> None:
        while True:
            with lock:
                i = nxt[0]
                if i >= n or errors:
                    return
                nxt[0] = i + 1
            try:
                results[i] = fn(items[i])
            except BaseException as exc:  # re-raised in the caller's thread
                with lock:
                    errors.append(exc)
                return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers - 1)]
    for t in threads:
        t.start()
    worker()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def digest_files(
    paths: Iterable[Path],
    algorithm: str = "sha256",
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    cache: DigestCache | None = None,
    sizes: Mapping[Path, int] | None = None,
    follow_symlinks: bool = True,
) -> dict[Path, bytes]:
    """Digests of many files, hashed by ``workers`` threads (default: CPU count).

    ``progress(path, size)`` is called after each file (from worker threads). With ``cache``,
    a file whose (device, inode, size, ctime) match an entry is not read again, and new digests
    are recorded there (the caller saves the cache). ``sizes`` (path -> bytes, e.g. from a walk
    the caller already did) orders the work without a ``stat`` per file; a file missing from it
    sorts last. Each file is opened as :func:`file_digest` does (never a FIFO or device: an
    ``OSError``); ``follow_symlinks=False`` also refuses links.
    """
    items = list(paths)
    new_hasher(algorithm)  # fail on a bad name before any thread starts
    stats: dict[Path, os.stat_result] = {}
    if sizes is not None and cache is None:
        # the caller's sizes give the order (largest first: a big file started last would
        # leave one core idle at the end); the size for progress comes from the open's fstat
        order = sorted(items, key=lambda p: -sizes.get(p, 0))
    else:
        # one stat per file: the size order, the cache lookup (a hit opens nothing), progress
        for p in items:
            with contextlib.suppress(OSError):  # reported by the worker that opens it
                stats[p] = os.stat(p)
        order = sorted(items, key=lambda p: -stats[p].st_size if p in stats else 0)

    def one(p: Path) -> tuple[Path, bytes]:
        st = stats.get(p)
        hit = cache.cached(st, algorithm) if cache is not None and st is not None else None
        size = st.st_size if st is not None else -1
        if hit is not None:
            d = hit
        elif cache is not None:
            d = cache.digest(p, algorithm)
        else:
            d, size = _digest_and_size(p, algorithm, follow_symlinks=follow_symlinks)
        if progress is not None:
            progress(p, size if size >= 0 else os.stat(p).st_size)
        return p, d

    got = dict(_run(order, one, workers))
    return {p: got[p] for p in items}


def shard_ranges(size: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``size`` bytes in shards of ``shard_size``.

    The same split as OMS v1.0 ``shards`` serialization (model_signing ``_endpoints``): every
    shard but the last is ``shard_size`` long; an empty file has no shards.
    """
    if shard_size <= 0:
        raise ValueError(f"shard size must be positive, got {shard_size}")
    return [(s, min(s + shard_size, size)) for s in range(0, size, shard_size)]


def digest_shards(
    paths: Iterable[Path],
    shard_size: int,
    algorithm: str = "sha256",
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict[Path, list[tuple[int, int, bytes]]]:
    """Shard digests of many files: every shard of every file is one unit of work, so two cores
    hash one huge file in half the time. Result per file: ``[(start, end, digest), ...]``."""
    new_hasher(algorithm)
    items = list(paths)
    work: list[tuple[Path, int, int, int]] = []  # path, fd, start, end
    fds: dict[Path, int] = {}
    try:
        for p in items:
            # one descriptor per file shared by its shards (pread has no shared position): the
            # shards of one file all come from the same inode even if the name is replaced
            fd, size = open_regular(p)
            fds[p] = fd
            for s, e in shard_ranges(size, shard_size):
                work.append((p, fd, s, e))

        def one(w: tuple[Path, int, int, int]) -> bytes:
            p, fd, s, e = w
            d = file_digest(p, algorithm, offset=s, length=e - s, fd=fd)
            if progress is not None:
                progress(p, e - s)
            return d

        digests = _run(work, one, workers)
    finally:
        for fd in fds.values():
            os.close(fd)
    out: dict[Path, list[tuple[int, int, bytes]]] = {p: [] for p in items}
    for (p, _fd, s, e), d in zip(work, digests, strict=True):
        out[p].append((s, e, d))
    return out


def shard_digests(path: Path, shard_size: int, algorithm: str = "sha256",
                  workers: int | None = None,
                  progress: Progress | None = None) -> list[tuple[int, int, bytes]]:
    """``[(start, end, digest), ...]`` of one file's shards, hashed by ``workers`` threads."""
    return digest_shards([path], shard_size, algorithm, workers=workers,
                         progress=progress)[path]


def range_digests(path: Path, ranges: Sequence[tuple[int, int]], algorithm: str = "sha256", *,
                  fd: int | None = None, workers: int | None = 1) -> list[bytes]:
    """Digests of byte ranges ``[start, end)`` of one file (tensor data), in the given order.

    Ranges are hashed largest first by ``workers`` threads sharing one descriptor; overlapping
    ranges (tensors sharing storage) are each hashed. ValueError for a range outside the file.
    """
    new_hasher(algorithm)
    own = fd is None
    if fd is None:
        fd, size = open_regular(path)
    try:
        if not own:
            size = os.fstat(fd).st_size
        for s, e in ranges:
            if s < 0 or e < s or e > size:
                raise ValueError(f"{path}: range [{s}, {e}) outside the file ({size} bytes)")
        order = sorted(range(len(ranges)), key=lambda i: ranges[i][0] - ranges[i][1])

        def one(i: int) -> bytes:
            s, e = ranges[i]
            h = new_hasher(algorithm)
            _hash_fd(fd, h, s, e - s, path)
            return bytes(h.digest())

        got = _run(order, one, workers)
    finally:
        if own:
            os.close(fd)
    out: list[bytes] = [b""] * len(ranges)
    for i, d in zip(order, got, strict=True):
        out[i] = d
    return out
