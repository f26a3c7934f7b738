"""Bounded, exact reads from binary streams.

Hostile files declare lengths they do not have (a 2**63-byte string in a 100-byte file). Every read
here either returns exactly what was asked or raises :class:`MalformedInput`, and large skips never
allocate what they skip.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

from trainguard.core.errors import MalformedInput

_CHUNK = 1 << 20


class Reader:
    """Exact reads over a binary file object, seekable or not, with a known size when seekable."""

    __slots__ = ("_f", "_pos", "_read", "_seekable", "_size")

    def __init__(self, f: BinaryIO, size: int | None = None) -> None:
        self._f = f
        self._read = f.read
        self._seekable = False
        try:
            self._seekable = f.seekable()
        except (AttributeError, OSError, ValueError):
            self._seekable = False
        # Offsets in findings come from here: a stream that cannot tell() (a pipe, a decompressor
        # without a position) is counted instead of raising io.UnsupportedOperation mid-scan.
        self._pos = 0
        if not self._seekable:
            try:
                self._pos = f.tell()
            except (AttributeError, OSError, ValueError):
                self._pos = 0
        if size is None and self._seekable:
            here = f.tell()
            size = f.seek(0, os.SEEK_END)
            f.seek(here)
        self._size = size

    @classmethod
    def from_bytes(cls, data: bytes) -> Reader:
        return cls(io.BytesIO(data), len(data))

    @property
    def size(self) -> int | None:
        return self._size

    def tell(self) -> int:
        return self._f.tell() if self._seekable else self._pos

    def remaining(self) -> int | None:
        if self._size is None:
            return None
        return self._size - self.tell()

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or MalformedInput if the stream is shorter."""
        if n < 0:
            raise MalformedInput(f"negative length {n}", self.tell())
        if self._size is not None and n > self._size - self.tell():
            raise MalformedInput(
                f"truncated: {n} bytes declared, {self._size - self.tell()} left", self.tell()
            )
        if n <= _CHUNK:
            data = self._read(n)
        else:
            parts, left = [], n
            while left:
                part = self._read(min(left, _CHUNK))
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            data = b"".join(parts)
        if not self._seekable:
            self._pos += len(data)
        if len(data) != n:
            raise MalformedInput(f"truncated: {n} bytes declared, {len(data)} read", self.tell())
        return data

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes without consuming them (seekable streams only; else empty)."""
        if not self._seekable:
            peek = getattr(self._f, "peek", None)
            return peek(n)[:n] if peek is not None else b""
        here = self._f.tell()
        data = self._read(n)
        self._f.seek(here)
        return data

    def skip(self, n: int) -> None:
        """Advance ``n`` bytes without keeping them; MalformedInput if the stream is shorter."""
        if n < 0:
            raise MalformedInput(f"negative length {n}", self.tell())
        if self._seekable and self._size is not None:
            here = self._f.tell()
            if n > self._size - here:
                raise MalformedInput(
                    f"truncated: {n} bytes declared, {self._size - here} left", here
                )
            self._f.seek(here + n)
            return
        left = n
        while left:
            part = self._read(min(left, _CHUNK))
            if not self._seekable:
                self._pos += len(part)
            if not part:
                raise MalformedInput(f"truncated: {n} bytes declared, {n - left} read", self.tell())
            left -= len(part)

    def readline(self, limit: int) -> bytes:
        """One line including its ``\\n``; MalformedInput if no newline within ``limit`` bytes."""
        line = self._f.readline(limit + 1)
        if not self._seekable:
            self._pos += len(line)
        if not line.endswith(b"\n"):
            if len(line) > limit:
                raise MalformedInput(f"line longer than {limit} bytes", self.tell())
            raise MalformedInput("truncated: line without newline", self.tell())
        return line

    def at_eof(self) -> bool:
        if self._size is not None:
            return self._f.tell() >= self._size
        return self.peek(1) == b""  # non-seekable streams are wrapped in io.BufferedReader
