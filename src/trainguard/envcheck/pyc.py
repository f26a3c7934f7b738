"""Does a ``__pycache__`` file still belong to its source? (PEP 3147 names, PEP 552 headers.)

A .pyc starts with 16 bytes: the interpreter's magic number, a flags word, then either the
source's mtime and size (flags 0, timestamp pycs) or an 8-byte SipHash of the source (flags bit
0: hash-based; bit 1: checked). CPython recompiles a timestamp pyc whose mtime/size disagree and
a *checked* hash pyc whose hash disagrees, but it runs an *unchecked* hash pyc as it is: a stale
one executes code the source no longer shows. Only the header is compared here; a .pyc forged
with a copied header is caught by comparing its digest with a snapshot.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

#: X.cpython-311.pyc, X.cpython-311.opt-1.pyc (PEP 3147, PEP 488)
_PYC_NAME = re.compile(r"^(?P<stem>[^.]+)\.(?P<tag>[^.]+)(?:\.opt-[12])?\.pyc$")
#: largest source file hashed for a hash-based pyc check
MAX_SOURCE_BYTES = 64 << 20


@dataclass(frozen=True)
class PycProblem:
    pyc: str
    source: str
    reason: str
    #: True when CPython would run the stale code (unchecked hash-based pyc)
    runs_stale: bool = False


def source_for(pyc: str, cache_tag: str) -> str | None:
    """The source of a ``__pycache__`` file compiled for ``cache_tag``, or None."""
    cache_dir, name = os.path.split(pyc)
    pkg_dir, cache_name = os.path.split(cache_dir)
    if cache_name != "__pycache__":
        return None
    m = _PYC_NAME.match(name)
    if m is None or m.group("tag") != cache_tag:
        return None  # another interpreter's cache: this one never reads it
    return os.path.join(pkg_dir, m.group("stem") + ".py")


def _source_hash(magic: bytes, source: bytes) -> bytes | None:
    # importlib.util.source_hash keys SipHash with the *running* interpreter's magic; _imp takes
    # the key explicitly, so another interpreter's pycs can be checked too (CPython Python/import.c)
    try:
        import _imp

        return bytes(_imp.source_hash(int.from_bytes(magic, "little"), source))
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - not CPython
        return None


def read_header(pyc: str) -> bytes:
    """The first 16 bytes of a file (OSError if it cannot be read)."""
    fd = os.open(pyc, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        return os.read(fd, 16)
    finally:
        os.close(fd)


def check_pyc(pyc: str, source: str, magic_hex: str,
              source_stat: tuple[int, int] | None = None) -> PycProblem | None:
    """Compare a pyc header with its source; None when they agree or Python would ignore it.

    ``source_stat`` is the source's (mtime in whole seconds, size) when the caller already has
    it (saves a system call per file).
    """
    try:
        head = read_header(pyc)
        if source_stat is None:
            st = os.stat(source)
            source_stat = (int(st.st_mtime), st.st_size)
    except FileNotFoundError:
        return None  # an orphan cache entry is never imported
    except OSError as exc:
        return PycProblem(pyc, source, f"cannot read: {exc.strerror or exc}")
    magic = bytes.fromhex(magic_hex)
    if len(head) < 16 or head[:4] != magic:
        return None  # CPython rejects it and recompiles (bad magic or truncated)
    (flags,) = struct.unpack("<I", head[4:8])
    src_mtime, src_size = source_stat
    if flags & 0b1 == 0:
        mtime, size = struct.unpack("<II", head[8:16])
        if mtime != src_mtime & 0xFFFFFFFF or size != src_size & 0xFFFFFFFF:
            return PycProblem(pyc, source, f"timestamp header (mtime {mtime}, size {size}) does "
                              f"not match the source (mtime {src_mtime}, size {src_size}): the "
                              "source changed after compilation")
        return None
    checked = bool(flags & 0b10)
    if src_size > MAX_SOURCE_BYTES:
        return PycProblem(pyc, source, "source too large to hash; hash-based pyc not checked",
                          runs_stale=not checked)
    from trainguard.integrity.hashing import open_regular

    try:
        # never a FIFO or device swapped in for the source (it could block forever)
        fd, _size = open_regular(source)
        with os.fdopen(fd, "rb", closefd=True) as fh:
            data = fh.read(MAX_SOURCE_BYTES)
    except OSError as exc:
        return PycProblem(pyc, source, f"cannot read source: {exc.strerror or exc}")
    want = _source_hash(magic, data)
    if want is None or want == head[8:16]:
        return None
    kind = "checked" if checked else "unchecked"
    return PycProblem(pyc, source, f"{kind} hash-based pyc was compiled from other source"
                      + ("" if checked else "; CPython runs it without checking"),
                      runs_stale=not checked)
