"""Seekable, read-only windows over files: a slice of a file object, or a file descriptor.

Kept apart from :mod:`trainguard.artifacts.streams` so that opening a file imports no
decompressor (start-up time is most of a one-file scan).
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes; subclasses say how to read at a position."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self._length = length
        self._pos = 0

    def _read_at(self, pos: int, n: int) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._length - self._pos)
        if n <= 0:
            return 0
        data = self._read_at(self._pos, n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


class SubFile(_Window):
    """A window ``[start, start+length)`` of a seekable file object."""

    def __init__(self, f: BinaryIO, start: int, length: int) -> None:
        super().__init__(length)
        self._f = f
        self._start = start

    def _read_at(self, pos: int, n: int) -> bytes:
        self._f.seek(self._start + pos)
        return self._f.read(n)


class FdFile(_Window):
    """A whole file read by descriptor with ``pread``: every reader keeps its own position, and
    the file is never opened again by name (so it cannot be swapped for a FIFO mid-scan)."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__(size)
        self._fd = fd

    def _read_at(self, pos: int, n: int) -> bytes:
        return os.pread(self._fd, n, pos)
