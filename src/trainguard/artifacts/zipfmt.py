"""A zip reader that reads archives the way PyTorch does, and reports where readers disagree.

PyTorch's reader (caffe2/serialize/inline_container.cc over miniz) trusts the central directory,
ignores CRCs, flag bits and local header names, and supports stored and deflated members. Python's
``zipfile`` refuses mismatched local names and bad CRCs, so scanners built on it either crash or
skip exactly the files an attacker crafted (FIELD-NOTES: zip name mismatch, bad CRCs, flag bits).
This reader follows the central directory (APPNOTE.TXT 4.3.12), takes data offsets from the local
header's own length fields (4.3.7), and records every disagreement as an anomaly instead of failing.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from trainguard.artifacts.streams import Budget, MissingCodec, SubFile, open_compressed
from trainguard.core.errors import LimitExceeded, MalformedInput

_EOCD = b"PK\x05\x06"
_EOCD64_LOC = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_CEN = b"PK\x01\x02"
_LOC = b"PK\x03\x04"
_MAX_COMMENT = 0xFFFF
STORED, DEFLATED, BZIP2, LZMA, ZSTD = 0, 8, 12, 14, 93
_METHODS = {STORED: "stored", DEFLATED: "deflate", BZIP2: "bz2"}


@dataclass
class ZipEntry:
    name: str
    method: int
    flags: int
    crc: int
    csize: int
    usize: int
    local_offset: int
    data_offset: int = -1
    local_name: str | None = None
    local_method: int | None = None

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 0x1)

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")


@dataclass
class ZipArchive:
    entries: list[ZipEntry]
    #: (member name or "", description) of structural oddities
    anomalies: list[tuple[str, str]] = field(default_factory=list)
    #: bytes before the first local header (self-extracting stubs, polyglots)
    prefix: int = 0
    #: some members share bytes (an overlapping-file zip bomb, or a crafted archive)
    overlapping: bool = False


def _u16(b: bytes, o: int) -> int:
    return int(struct.unpack_from("<H", b, o)[0])


def _u32(b: bytes, o: int) -> int:
    return int(struct.unpack_from("<I", b, o)[0])


def _u64(b: bytes, o: int) -> int:
    return int(struct.unpack_from("<Q", b, o)[0])


def _decode_name(raw: bytes, flags: int) -> str:
    if flags & 0x800:
        return raw.decode("utf-8", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def find_eocd(f: BinaryIO, size: int) -> tuple[int, bytes] | None:
    """Offset and bytes of the end-of-central-directory record, searching the comment window."""
    window = min(size, 22 + _MAX_COMMENT)
    f.seek(size - window)
    tail = f.read(window)
    pos = tail.rfind(_EOCD)
    while pos >= 0:
        if len(tail) - pos >= 22:
            return size - window + pos, tail[pos:pos + 22]
        pos = tail.rfind(_EOCD, 0, pos)
    return None


def read_zip(f: BinaryIO, size: int, max_members: int,
             max_directory_bytes: int = 256 << 20) -> ZipArchive:
    """Parse the central directory of a zip file (seekable ``f`` of ``size`` bytes).

    The directory is read into memory, so its declared size is bounded by
    ``max_directory_bytes`` ([scan.limits] max_header_bytes) as well as by the file size.
    """
    found = find_eocd(f, size)
    if found is None:
        raise MalformedInput("zip end-of-central-directory record not found")
    eocd_off, eocd = found
    count = _u16(eocd, 10)
    cd_size = _u32(eocd, 12)
    cd_off = _u32(eocd, 16)
    anomalies: list[tuple[str, str]] = []
    cd_end = eocd_off
    # APPNOTE 4.3.14-4.3.15: a zip64 locator right before the EOCD record points at the zip64 end
    # record. Writers such as PyTorch's (miniz) emit it even when the 32-bit fields suffice.
    needs64 = count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_off == 0xFFFFFFFF
    loc = b""
    if eocd_off >= 20:
        f.seek(eocd_off - 20)
        loc = f.read(20)
    if loc[:4] == _EOCD64_LOC:
        rec_off = _u64(loc, 8)
        if rec_off + 56 > size:
            raise MalformedInput("zip64 end record out of bounds")
        f.seek(rec_off)
        rec = f.read(56)
        if rec[:4] != _EOCD64:
            raise MalformedInput("zip64 end record signature wrong")
        count = _u64(rec, 32)
        cd_size = _u64(rec, 40)
        cd_off = _u64(rec, 48)
        cd_end = rec_off
    elif needs64:
        raise MalformedInput("zip64 locator missing")
    # Data prepended to the archive shifts every offset (Python's zipfile 'concat').
    prefix = cd_end - cd_size - cd_off
    if prefix < 0 or cd_off + cd_size > size:
        raise MalformedInput("zip central directory out of bounds")
    if count > max_members:
        raise LimitExceeded("max_members", max_members, f"zip declares {count} members")
    if cd_size > max_directory_bytes:
        raise LimitExceeded("max_header_bytes", max_directory_bytes,
                            f"zip central directory of {cd_size} bytes")
    f.seek(cd_off + prefix)
    cd = f.read(cd_size)
    if len(cd) != cd_size:
        raise MalformedInput("zip central directory truncated")
    entries: list[ZipEntry] = []
    pos = 0
    while pos + 46 <= len(cd) and cd[pos:pos + 4] == _CEN:
        if len(entries) >= max_members:
            raise LimitExceeded("max_members", max_members, "zip central directory")
        flags, method = _u16(cd, pos + 8), _u16(cd, pos + 10)
        crc, csize, usize = _u32(cd, pos + 16), _u32(cd, pos + 20), _u32(cd, pos + 24)
        nlen, xlen, clen = _u16(cd, pos + 28), _u16(cd, pos + 30), _u16(cd, pos + 32)
        local = _u32(cd, pos + 42)
        name_raw = cd[pos + 46:pos + 46 + nlen]
        extra = cd[pos + 46 + nlen:pos + 46 + nlen + xlen]
        if len(name_raw) != nlen:
            raise MalformedInput("zip central directory entry truncated")
        usize, csize, local = _zip64_extra(extra, usize, csize, local)
        entries.append(ZipEntry(_decode_name(name_raw, flags), method, flags, crc, csize, usize,
                                local + prefix))
        pos += 46 + nlen + xlen + clen
    if len(entries) != count:
        anomalies.append(("", f"central directory holds {len(entries)} entries, end record "
                              f"says {count}"))
    arch = ZipArchive(entries, anomalies, prefix)
    _read_local_headers(f, size, arch)
    return arch


def _zip64_extra(extra: bytes, usize: int, csize: int, local: int) -> tuple[int, int, int]:
    """APPNOTE 4.5.3: the zip64 extra field carries the values whose 32-bit fields are all ones."""
    i = 0
    while i + 4 <= len(extra):
        tag, ln = _u16(extra, i), _u16(extra, i + 2)
        body = extra[i + 4:i + 4 + ln]
        if tag == 0x0001:
            j = 0
            if usize == 0xFFFFFFFF and j + 8 <= len(body):
                usize = _u64(body, j)
                j += 8
            if csize == 0xFFFFFFFF and j + 8 <= len(body):
                csize = _u64(body, j)
                j += 8
            if local == 0xFFFFFFFF and j + 8 <= len(body):
                local = _u64(body, j)
            break
        i += 4 + ln
    return usize, csize, local


def _read_local_headers(f: BinaryIO, size: int, arch: ZipArchive) -> None:
    seen: dict[str, int] = {}
    spans: list[tuple[int, int, str]] = []
    for e in arch.entries:
        if e.name in seen:
            arch.anomalies.append((e.name, "duplicate member name"))
        seen[e.name] = seen.get(e.name, 0) + 1
        if e.local_offset + 30 > size:
            arch.anomalies.append((e.name, "local header out of bounds"))
            continue
        f.seek(e.local_offset)
        hdr = f.read(30)
        if hdr[:4] != _LOC:
            arch.anomalies.append((e.name, "local header signature missing"))
            continue
        nlen, xlen = _u16(hdr, 26), _u16(hdr, 28)
        local_name = _decode_name(f.read(nlen), _u16(hdr, 6))
        e.local_name = local_name
        e.local_method = _u16(hdr, 8)
        e.data_offset = e.local_offset + 30 + nlen + xlen
        if local_name != e.name:
            arch.anomalies.append(
                (e.name, f"local header names {local_name!r}, central directory {e.name!r}")
            )
        if e.local_method != e.method:
            arch.anomalies.append((e.name, f"compression method {e.local_method} locally, "
                                           f"{e.method} centrally"))
        if e.data_offset + e.csize > size:
            arch.anomalies.append((e.name, "member data runs past the end of the file"))
        if e.method == STORED and e.csize != e.usize:
            arch.anomalies.append((e.name, f"stored member of {e.csize} bytes claims {e.usize} "
                                           "uncompressed"))
        spans.append((e.local_offset, e.data_offset + e.csize, e.name))
    spans.sort()
    reach, owner = -1, ""
    for start, end, name in spans:
        if start < reach:  # starts inside an earlier member, not only the one just before
            arch.overlapping = True
            arch.anomalies.append((name, f"member data overlaps {owner!r} "
                                         "(overlapping-file zip bomb)"))
        if end > reach:
            reach, owner = end, name


def open_member(f: BinaryIO, e: ZipEntry, budget: Budget) -> BinaryIO:
    """A bounded reader of a member's uncompressed bytes (central directory method and sizes)."""
    if e.data_offset < 0:
        raise MalformedInput(f"member {e.name!r} has no readable local header")
    if e.encrypted:
        raise MissingCodec("encrypted zip member", "none: encrypted members cannot be scanned")
    raw = SubFile(f, e.data_offset, e.csize)
    if e.method == STORED:
        return io.BufferedReader(raw)  # type: ignore[return-value]
    codec = _METHODS.get(e.method)
    if codec is None:
        raise MissingCodec(f"zip compression method {e.method}", "none: unsupported method")
    return open_compressed(raw, codec, budget)  # type: ignore[arg-type]
