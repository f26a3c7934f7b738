"""Streams over parts of files and over decompressors, all bounded.

Decompression output is charged to a :class:`Budget` shared by everything under one top-level file,
so a zip bomb or a gzip-in-zip-in-tar chain ends in :class:`LimitExceeded` after a bounded amount
of work, never in an out-of-memory kill.
"""

from __future__ import annotations

import io
import zlib
from typing import Any, BinaryIO

from trainguard.artifacts.windows import FdFile, SubFile
from trainguard.core.errors import LimitExceeded, MalformedInput

__all__ = ["Budget", "FdFile", "MissingCodec", "SubFile", "buffered", "open_compressed"]

_CHUNK = 1 << 20


class Budget:
    """Bytes that decompression may still produce for one top-level input."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise LimitExceeded("max_expanded_bytes", self.limit, "decompressed output too large")


class _ZlibReader(io.RawIOBase):
    """Pull-based reader over ``zlib.decompressobj`` with bounded output per call."""

    def __init__(self, src: BinaryIO, dec: Any, budget: Budget, what: str) -> None:
        super().__init__()
        self._src = src
        self._dec = dec
        self._budget = budget
        self._what = what
        self._pending = b""
        self._eof = False
        self._pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _feed(self, n: int) -> bytes:
        dec = self._dec
        while True:
            if self._pending:
                data, self._pending = self._pending, b""
            elif dec.eof:
                return b""
            else:
                data = self._src.read(_CHUNK)
                if not data:
                    raise MalformedInput(f"truncated {self._what} stream", self._pos)
            try:
                out = dec.decompress(data, n)
            except zlib.error as exc:
                raise MalformedInput(f"corrupt {self._what} stream: {exc}", self._pos) from None
            self._pending = dec.unconsumed_tail
            if out:
                return bytes(out)
            if dec.eof:
                return b""

    def readinto(self, b: Any) -> int:
        if self._eof:
            return 0
        out = self._feed(len(b))
        if not out:
            self._eof = True
            return 0
        self._budget.charge(len(out))
        b[: len(out)] = out
        self._pos += len(out)
        return len(out)


class _CountingReader(io.RawIOBase):
    """Charges a budget for everything read through a stdlib decompressing file object."""

    def __init__(self, inner: io.BufferedIOBase | BinaryIO, budget: Budget, what: str) -> None:
        super().__init__()
        self._inner = inner
        self._read1 = getattr(inner, "read1", inner.read)
        self._budget = budget
        self._what = what
        self._pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        try:
            # read1: one step of the decompressor, so bytes decoded before a failure (a cut
            # trailer) reach the caller instead of vanishing with a buffered read's exception
            data = self._read1(len(b))
        except _decompress_errors() as exc:  # evaluated only when something was raised
            # gzip raises BadGzipFile (OSError) and EOFError, bz2 OSError, lzma LZMAError, lz4
            # RuntimeError ("LZ4F_decompress failed"): all of them mean corrupt input.
            raise MalformedInput(f"corrupt {self._what} stream: {exc}", self._pos) from None
        self._budget.charge(len(data))
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _decompress_errors() -> tuple[type[BaseException], ...]:
    import lzma  # imported late: most scans never decompress anything

    return (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError, RuntimeError)


def buffered(raw: io.RawIOBase) -> io.BufferedReader:
    return io.BufferedReader(raw, buffer_size=_CHUNK)


def open_compressed(src: BinaryIO, codec: str, budget: Budget) -> io.BufferedReader:
    """A bounded, buffered reader of the decompressed content of ``src``.

    codec: ``deflate`` (raw, zip members), ``zlib``, ``gzip``, ``bz2``, ``xz`` (also .lzma),
    ``lz4``.
    """
    if codec == "deflate":
        return buffered(_ZlibReader(src, zlib.decompressobj(-15), budget, codec))
    if codec == "zlib":
        return buffered(_ZlibReader(src, zlib.decompressobj(), budget, codec))
    if codec == "gzip":
        import gzip

        return buffered(_CountingReader(gzip.GzipFile(fileobj=src, mode="rb"), budget, codec))
    if codec == "bz2":
        import bz2

        return buffered(_CountingReader(bz2.BZ2File(src, mode="rb"), budget, codec))
    if codec == "xz":
        import lzma

        return buffered(_CountingReader(lzma.LZMAFile(src, mode="rb"), budget, codec))
    if codec == "lz4":
        try:
            import lz4.frame  # optional extra: trainguard[lz4]
        except ImportError:
            raise MissingCodec("lz4", "lz4") from None
        return buffered(_CountingReader(lz4.frame.LZ4FrameFile(src, mode="rb"), budget, codec))
    raise MissingCodec(codec, codec)


class MissingCodec(Exception):
    """An optional decompressor is not installed."""

    def __init__(self, codec: str, extra: str) -> None:
        super().__init__(f"{codec} support is not installed (pip install 'trainguard[{extra}]')")
        self.codec = codec
        self.extra = extra
