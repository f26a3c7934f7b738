"""A digest cache for incremental re-signing: hash only the files that changed.

An entry is keyed on what the owner of a file cannot forge without the kernel noticing:
device, inode, size and **ctime** (status-change time, in nanoseconds). Not mtime: ``touch -d`` or
``os.utime`` set mtime to anything, so a file rewritten and then given its old mtime back would
look unchanged; ctime is set by the kernel on every write, chmod, rename or utime call and cannot be
set from user space (POSIX.1-2017 ``<sys/stat.h>``, ``st_ctim``). An entry is trusted only if every
key field is equal; one that differs in any field is ignored and replaced.

Two more rules close the remaining races (the "racy git" problem, git ``Documentation/technical/
racy-git.txt``):

* a file is stat-ed before and after it is hashed, and the digest is recorded only if nothing
  changed in between (a write during hashing is not cached);
* a digest is recorded only if the file's ctime is at least :data:`RACY_NS` older than the moment
  hashing began: a second write within the same timestamp tick would otherwise leave ctime and
  size unchanged. Freshly written files are simply hashed again next time.

Location: ``$TRAINGUARD_CACHE_DIR/digests-v1.bin``, else ``$XDG_CACHE_HOME/trainguard/...``, else
``~/.cache/trainguard/digests-v1.bin``. The file is written atomically (temp file + rename) with
mode 0600, and a cache file not owned by the current user or writable by others is not read
(whoever can write the cache can make a signer skip hashing). It is only ever an accelerator: a
missing, truncated or corrupt cache file is an empty cache.

Example::

    from pathlib import Path
    from trainguard.integrity.cache import DigestCache
    from trainguard.integrity.hashing import digest_files
    cache = DigestCache.open()                   # default location
    digests = digest_files(sorted(Path("run/ckpt").rglob("*")), cache=cache)
    cache.save()
"""

from __future__ import annotations

import json
import os
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.integrity.hashing import file_digest

#: a file changed less than this before hashing is not cached (coarsest common timestamp tick:
#: FAT has 2 s; ext4/xfs update ctime from the coarse clock, a few milliseconds)
RACY_NS = 2_000_000_000
_MAGIC = b"TGDC\x02\n"
# dev, ino, size, ctime_ns, hashed_at_ns, kind length, value length
_REC = struct.Struct("<QQQqqBI")
#: the kind under which tensor manifests (canonical JSON) are cached
MANIFEST_KIND = "tensor-manifest-v1"
_MAX_VALUE = 64 << 20
_MAX_ENTRIES = 2_000_000
_MAX_FILE = 256 << 20


@dataclass(frozen=True)
class StatKey:
    """The fields an entry is keyed on."""

    dev: int
    ino: int
    size: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


#: an entry: (size, ctime_ns, hashed_at_ns, value), under the key (dev, ino, kind); plain tuples
#: because a cache of 100,000 files is decoded on every re-sign
_Entry = tuple[int, int, int, bytes]


def default_path() -> Path:
    """Where the cache lives unless told otherwise (see the module docstring)."""
    env = os.environ.get("TRAINGUARD_CACHE_DIR")
    if env:
        return Path(env) / "digests-v1.bin"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "trainguard" / "digests-v1.bin"


class DigestCache:
    """Digests by (device, inode, size, ctime); thread-safe; :meth:`save` writes it back."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[tuple[int, int, str], _Entry] = {}
        self._lock = threading.Lock()
        self._dirty = False
        #: counters, for progress output and tests
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ file I/O
    @classmethod
    def open(cls, path: Path | None = None) -> DigestCache:
        """The cache stored at ``path`` (default :func:`default_path`); empty if unusable."""
        cache = cls(path or default_path())
        cache._load()
        return cache

    def _load(self) -> None:
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_FILE:
                return
            if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
                return  # someone else could have written it: not trusted
            data = os.read(fd, st.st_size)
        finally:
            os.close(fd)
        self._entries = _decode(data)

    def save(self) -> None:
        """Write the cache atomically (mode 0600) if anything was added."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            data = _encode(self._entries)
            self._dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".digests-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ lookups
    def lookup(self, st: os.stat_result, algorithm: str) -> bytes | None:
        """The cached digest for a file with this stat, or None unless every key field matches."""
        e = self._entries.get((st.st_dev, st.st_ino, algorithm))
        if e is None or e[0] != st.st_size or e[1] != st.st_ctime_ns:
            return None
        if e[1] + RACY_NS > e[2]:
            return None  # recorded while racy (a cache file written by other code)
        return e[3]

    def cached(self, st: os.stat_result, kind: str) -> bytes | None:
        """:meth:`lookup`, counted in :attr:`hits` (a miss is counted where it is computed)."""
        hit = self.lookup(st, kind)
        if hit is not None:
            self._count(hit=True)
        return hit

    def _count(self, *, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def record(self, before: os.stat_result, after: os.stat_result, algorithm: str,
               digest: bytes, hashed_at_ns: int) -> bool:
        """Remember a digest if the file did not change while hashing and is not racy."""
        key = StatKey.of(before)
        if StatKey.of(after) != key or key.ctime_ns + RACY_NS > hashed_at_ns:
            return False
        with self._lock:
            self._entries[(key.dev, key.ino, algorithm)] = (key.size, key.ctime_ns, hashed_at_ns,
                                                            digest)
            self._dirty = True
        return True

    def digest(self, path: Path, algorithm: str = "sha256") -> bytes:
        """The file's digest: from the cache when its key matches, else hashed (and recorded).

        The digest is computed from the descriptor that was stat-ed, so the bytes hashed are
        those of the inode the entry is keyed on.
        """
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            before = os.fstat(fd)
            hit = self.cached(before, algorithm)
            if hit is not None:
                return hit
            self._count(hit=False)
            # wall clock, as ctime is: hashing "began" no later than the stat above
            hashed_at = time.time_ns()
            d = file_digest(path, algorithm, fd=fd)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        self.record(before, after, algorithm, d, hashed_at)
        return d

    def manifest(self, path: Path, compute: Callable[[int], dict[str, Any] | None]
                 ) -> dict[str, Any] | None:
        """A file's tensor manifest, cached like a digest (same key, same rules).

        ``compute(fd)`` builds it from the open descriptor that was stat-ed. ``None`` (not a
        checkpoint) is cached too: re-signing 2,000 small files then opens none of them.
        """
        hit = self.cached(os.stat(path), MANIFEST_KIND)  # a hit opens nothing
        if hit is not None:
            value: dict[str, Any] | None = json.loads(hit)
            return value
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NONBLOCK", 0))
        try:
            before = os.fstat(fd)
            self._count(hit=False)
            hashed_at = time.time_ns()
            result = compute(fd)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        text = json.dumps(result, sort_keys=True, separators=(",", ":"), allow_nan=False)
        if len(text) <= _MAX_VALUE:
            self.record(before, after, MANIFEST_KIND, text.encode(), hashed_at)
        return result


def _encode(entries: dict[tuple[int, int, str], _Entry]) -> bytes:
    parts = [_MAGIC, struct.pack("<I", len(entries))]
    pack = _REC.pack
    for (dev, ino, kind), (size, ctime, hashed_at, value) in entries.items():
        k = kind.encode()
        parts += (pack(dev, ino, size, ctime, hashed_at, len(k), len(value)), k, value)
    return b"".join(parts)


def _decode(data: bytes) -> dict[tuple[int, int, str], _Entry]:
    """Entries of a cache file; anything malformed yields an empty cache (it is a cache)."""
    out: dict[tuple[int, int, str], _Entry] = {}
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
        return out
    (count,) = struct.unpack_from("<I", data, len(_MAGIC))
    pos = len(_MAGIC) + 4
    if count > _MAX_ENTRIES:
        return out
    unpack, rec = _REC.unpack_from, _REC.size
    kinds: dict[bytes, str] = {}
    try:
        for _ in range(count):
            dev, ino, size, ctime, hashed_at, klen, vlen = unpack(data, pos)
            pos += rec
            raw = data[pos:pos + klen]
            kind = kinds.get(raw)
            if kind is None:
                kind = kinds[raw] = raw.decode("ascii")
            pos += klen
            value = data[pos:pos + vlen]
            pos += vlen
            if len(value) != vlen or vlen == 0:
                return {}
            out[(dev, ino, kind)] = (size, ctime, hashed_at, value)
    except (struct.error, UnicodeDecodeError):
        return {}
    return out
