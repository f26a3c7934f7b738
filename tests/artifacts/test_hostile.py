"""Hostile input for the bounded readers in ``trainguard.artifacts``.

Every reader either returns what the bytes honestly hold or raises :class:`MalformedInput` /
:class:`LimitExceeded` (or :class:`MissingCodec` for a method it cannot decode): never another
exception, never an unbounded read, never more memory than its budget. Inputs are built at test
time (tests/fixtures/hostile.py); bombs are a few MB of repeated deflate blocks.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from fixtures.hostile import (
    CEILING_S,
    MEMORY_CEILING,
    MiB,
    ZipMember,
    build_zip,
    byte_mutants,
    deflate_prefixed_zeros,
    deflate_zeros,
    eocd,
    fifield_bomb,
    gzip_wrap,
    hard_deadline,
    zip64_declaring,
    zlib_wrap,
)
from trainguard.artifacts.reader import Reader
from trainguard.artifacts.sniff import HEAD_SIZE, Format, sniff
from trainguard.artifacts.streams import Budget, MissingCodec, open_compressed
from trainguard.artifacts.zipfmt import open_member, read_zip
from trainguard.core.errors import LimitExceeded, MalformedInput

ALLOWED = (MalformedInput, LimitExceeded, MissingCodec)


def bounded(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result or the allowed exception it raised, seconds, peak traced bytes)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with hard_deadline():
            try:
                result: Any = fn()
            except ALLOWED as exc:
                result = exc
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert seconds < CEILING_S
    return result, seconds, peak


def drain(f: io.BufferedIOBase) -> int:
    n = 0
    while chunk := f.read(MiB):
        n += len(chunk)
    return n


# ---------------------------------------------------------------- exact reads


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._b.read(len(b))
        b[: len(data)] = data
        return len(data)


@pytest.mark.parametrize("seekable", [True, False])
@pytest.mark.parametrize("n", [17, 1 << 20, 1 << 31, 1 << 63, (1 << 64) - 1])
def test_reader_refuses_declared_lengths_it_does_not_have(seekable: bool, n: int) -> None:
    data = b"x" * 16
    r = Reader.from_bytes(data) if seekable else Reader(io.BufferedReader(_Unseekable(data)))
    result, _, peak = bounded(lambda: r.read(n))
    assert isinstance(result, MalformedInput)
    assert peak < MiB * 4  # never allocates what it was told to read
    r2 = Reader.from_bytes(data) if seekable else Reader(io.BufferedReader(_Unseekable(data)))
    result, _, _ = bounded(lambda: r2.skip(n))
    assert isinstance(result, MalformedInput)


def test_reader_negative_lengths_and_endless_lines() -> None:
    r = Reader.from_bytes(b"a" * 1000)
    for call in (lambda: r.read(-1), lambda: r.skip(-5), lambda: r.readline(100)):
        assert isinstance(bounded(call)[0], MalformedInput)
    assert isinstance(bounded(lambda: Reader.from_bytes(b"abc").readline(100))[0], MalformedInput)


# ---------------------------------------------------------------- format sniffing


def test_sniff_never_raises_on_garbage() -> None:
    rng = random.Random(1)
    magics = [b"", b"PK\x03\x04", b"\x80", b"\x80\x05", b"\x93NUMPY", b"GGUF", b"\x1f\x8b",
              b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"\x89HDF\r\n\x1a\n", b"{", b"x\x9c",
              b"\xff" * 8, b"\x00" * 8]
    for magic in magics:
        for size in (0, 1, 2, 9, 10, 11, 511, 512, 513, HEAD_SIZE):
            head = (magic + rng.randbytes(size))[:max(size, len(magic))]
            for declared in (0, 1, len(head), 1 << 62):
                assert isinstance(sniff(head, declared), Format)


# ---------------------------------------------------------------- zip structure


def _plain_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 50)
        z.writestr("archive/data/0", bytes(256))
        z.writestr("archive/version", "3\n")
    return out.getvalue()


def test_zip_truncated_at_every_cut_point() -> None:
    data = _plain_zip()
    for cut in range(len(data)):
        blob = data[:cut]
        result, _, _ = bounded(lambda blob=blob: read_zip(io.BytesIO(blob), len(blob), 1000))
        assert isinstance(result, MalformedInput), cut  # the end record is gone


def test_zip_central_directory_cut_keeps_end_record() -> None:
    """Bytes cut out of the central directory while the end record still points at them."""
    data = _plain_zip()
    eocd_off = data.rfind(b"PK\x05\x06")
    cd_off = struct.unpack_from("<I", data, eocd_off + 16)[0]
    for k in range(eocd_off - cd_off):
        blob = data[:cd_off + k] + data[eocd_off:]
        result, _, _ = bounded(lambda blob=blob: read_zip(io.BytesIO(blob), len(blob), 1000))
        assert isinstance(result, MalformedInput), k


def test_zip_member_count_that_lies() -> None:
    members = [ZipMember("a.pkl", b"\x80\x02N.")]
    for declared in (0, 2, 1000, 0xFFFE):
        data = build_zip(members, declared_count=declared)
        arch = read_zip(io.BytesIO(data), len(data), 100_000)
        assert [e.name for e in arch.entries] == ["a.pkl"]
        assert any("end record says" in desc for _, desc in arch.anomalies)


def test_zip64_declaring_a_million_members_is_a_limit() -> None:
    data = zip64_declaring(1_000_000)
    result, _, peak = bounded(lambda: read_zip(io.BytesIO(data), len(data), 100_000))
    assert isinstance(result, LimitExceeded)
    assert result.limit == "max_members"
    assert peak < 4 * MiB


def test_zip_with_more_members_than_allowed() -> None:
    data = build_zip([ZipMember(f"m{i}", b"") for i in range(200)])
    result, _, _ = bounded(lambda: read_zip(io.BytesIO(data), len(data), 50))
    assert isinstance(result, LimitExceeded)


@pytest.mark.parametrize(("cd_size", "cd_off"), [
    (0xFFFFFFF0, 0), (10, 0xFFFFFFF0), (0xFFFFFFFF, 0xFFFFFFFF), (1 << 20, 1 << 20),
])
def test_zip_end_record_pointing_outside_the_file(cd_size: int, cd_off: int) -> None:
    data = b"PK\x03\x04" + bytes(100) + eocd(1, cd_size, cd_off)
    result, _, peak = bounded(lambda: read_zip(io.BytesIO(data), len(data), 1000))
    assert isinstance(result, MalformedInput)
    assert peak < 4 * MiB


def test_zip64_locator_pointing_anywhere() -> None:
    for rec_off in (0, 7, 1 << 40, (1 << 64) - 1):
        loc = b"PK\x06\x07" + struct.pack("<IQI", 0, rec_off, 1)
        data = b"PK\x03\x04" + bytes(64) + loc + eocd(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
        result, _, _ = bounded(lambda data=data: read_zip(io.BytesIO(data), len(data), 1000))
        assert isinstance(result, MalformedInput), rec_off


def test_zip_entry_name_length_past_the_directory() -> None:
    data = bytearray(build_zip([ZipMember("a.pkl", b"\x80\x02N.")]))
    cen = data.find(b"PK\x01\x02")
    struct.pack_into("<H", data, cen + 28, 0xFFFF)  # name length
    result, _, _ = bounded(lambda: read_zip(io.BytesIO(bytes(data)), len(data), 1000))
    assert isinstance(result, MalformedInput)


def test_zip_local_header_offsets_pointing_anywhere() -> None:
    data = bytearray(build_zip([ZipMember("a.pkl", b"\x80\x02N."), ZipMember("b", b"x")]))
    cen = data.find(b"PK\x01\x02")
    for off in (0xFFFFFFFF, len(data) - 10, len(data) - 29, 1):
        struct.pack_into("<I", data, cen + 42, off)
        arch, _, _ = bounded(lambda: read_zip(io.BytesIO(bytes(data)), len(data), 1000))
        assert not isinstance(arch, Exception)
        assert arch.anomalies, off
        with pytest.raises(ALLOWED):  # no readable local header: a clean error, not a crash
            open_member(io.BytesIO(bytes(data)), arch.entries[0], Budget(MiB)).read()


def test_fifield_overlapping_bomb_is_reported_and_bounded() -> None:
    """D. Fifield, "A better zip bomb" (WOOT 2019): members share one kernel."""
    data = fifield_bomb(files=64, kernel_mib=16)  # ~1 GiB expanded from ~20 KB
    f = io.BytesIO(data)
    arch = read_zip(f, len(data), 1000)
    assert sum("overlap" in desc for _, desc in arch.anomalies) >= 63
    budget = Budget(64 * MiB)

    def expand_all() -> int:
        return sum(drain(open_member(f, e, budget)) for e in arch.entries)  # type: ignore[arg-type]

    result, _, peak = bounded(expand_all)
    assert isinstance(result, LimitExceeded)
    assert peak < MEMORY_CEILING


@pytest.mark.parametrize("declared", [1000, 4 << 30])
def test_classic_zip_bomb_stops_at_the_budget(declared: int) -> None:
    """A ~4 MB member of repeated deflate blocks that expands to 4 GiB."""
    bomb = deflate_zeros(4096)
    data = build_zip([ZipMember("bomb.bin", bomb, 8, declared, 0)])
    f = io.BytesIO(data)
    arch = read_zip(f, len(data), 10)
    result, seconds, peak = bounded(lambda: drain(open_member(f, arch.entries[0],  # type: ignore[arg-type]
                                                              Budget(32 * MiB))))
    assert isinstance(result, LimitExceeded)
    assert peak < MEMORY_CEILING


@pytest.mark.parametrize("corruption", ["flip", "truncate", "method", "encrypted"])
def test_zip_member_data_corrupt(corruption: str) -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = c.compress(random.Random(0).randbytes(10_000)) + c.flush()
    member = ZipMember("data.pkl", payload, 8)
    data = bytearray(build_zip([member]))
    start = data.find(b"data.pkl") + len("data.pkl")
    if corruption == "flip":
        for i in range(start + 3, start + len(payload) - 3, 7):
            data[i] ^= 0x5A
    elif corruption == "truncate":
        data = bytearray(build_zip([ZipMember("data.pkl", payload[:4000], 8, 10_000, 0)]))
    elif corruption == "method":
        data = bytearray(build_zip([ZipMember("data.pkl", payload, 99, 10_000, 0)]))
    else:
        cen = data.find(b"PK\x01\x02")
        data[cen + 8] |= 1
    f = io.BytesIO(bytes(data))
    arch = read_zip(f, len(data), 10)
    result, _, _ = bounded(lambda: drain(open_member(f, arch.entries[0], Budget(MiB))))  # type: ignore[arg-type]
    assert isinstance(result, ALLOWED)


# ---------------------------------------------------------------- compressed streams


def _lz4(data: bytes) -> bytes:
    lz4_frame = pytest.importorskip("lz4.frame")
    return bytes(lz4_frame.compress(data))


PAYLOAD = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00" + b"N0" * 4000 + b"N."
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zlib": zlib.compress,
    "lz4": _lz4,
}


@pytest.mark.parametrize("codec", sorted(COMPRESSORS))
def test_compressed_stream_truncated_and_mutated(codec: str) -> None:
    data = COMPRESSORS[codec](PAYLOAD)
    cases = [data[:cut] for cut in range(0, len(data), max(1, len(data) // 60))]
    cases += byte_mutants(data, codec, 60, 4)
    for blob in cases:
        def run(blob: bytes = blob) -> int:
            return drain(open_compressed(io.BytesIO(blob), codec, Budget(4 * MiB)))
        result, _, _ = bounded(run)
        assert isinstance(result, (int, *ALLOWED)), (codec, type(result))


def _concat_bomb(codec: str) -> bytes:
    """Streams of these formats may be concatenated; a small compressed block repeats."""
    chunk = bytes(8 * MiB)
    one = {"gzip": lambda: gzip.compress(chunk), "bz2": lambda: bz2.compress(chunk),
           "xz": lambda: lzma.compress(chunk, preset=0), "lz4": lambda: _lz4(chunk)}[codec]()
    return one * 64  # 512 MiB


@pytest.mark.parametrize("codec", ["gzip", "bz2", "xz", "lz4", "zlib", "deflate"])
def test_decompression_bombs_stop_at_the_budget(codec: str) -> None:
    if codec == "zlib":
        data = zlib_wrap(deflate_zeros(1024))
    elif codec == "deflate":
        data = deflate_prefixed_zeros(b"\x80\x04", 1024)
    elif codec == "gzip":
        data = gzip_wrap(deflate_zeros(1024))
    else:
        data = _concat_bomb(codec)
    result, _, peak = bounded(lambda: drain(open_compressed(io.BytesIO(data), codec,
                                                            Budget(32 * MiB))))
    assert isinstance(result, LimitExceeded), codec
    assert peak < MEMORY_CEILING
