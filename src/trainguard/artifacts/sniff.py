"""Format detection by content (magic bytes and structure), never by file name.

Loaders do not look at extensions either: ``torch.load`` reads a zip if the first bytes are
``PK\\x03\\x04`` and a pickle otherwise, whatever the file is called.
"""

from __future__ import annotations

import enum
import struct
import zlib

HEAD_SIZE = 4096
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# HDF5 spec, "Disk Format: Level 0A": the superblock sits at 0 or, after a user block, at
# 512, 1024, 2048... (powers of two); offsets within the sniffed head are checked.
_HDF5_OFFSETS = (0, 512, 1024, 2048)


class Format(str, enum.Enum):
    PICKLE = "pickle"
    ZIP = "zip"
    TAR = "tar"
    GZIP = "gzip"
    BZ2 = "bz2"
    XZ = "xz"
    ZLIB = "zlib"
    LZ4 = "lz4"
    SEVENZIP = "7z"
    NUMPY = "npy"
    SAFETENSORS = "safetensors"
    GGUF = "gguf"
    HDF5 = "hdf5"
    PROTOBUF = "protobuf"  # ONNX or TensorFlow SavedModel, decided by structure
    JSON = "json"
    UNKNOWN = "unknown"


# First bytes of protocol 0/1 pickles: MARK, GLOBAL, EMPTY_DICT/LIST/TUPLE, INST, ... A pickle
# without a PROTO opcode starts with one of these.
_P0_START = frozenset(b"(c}])NIJKLSTUVXFMGhgijqr\x80")


def _looks_like_zlib(head: bytes) -> bool:
    if len(head) < 2:
        return False
    cmf, flg = head[0], head[1]
    if not (cmf & 0x0F == 8 and (cmf >> 4) <= 7 and (cmf * 256 + flg) % 31 == 0):
        return False
    # Two header bytes are a weak signature: about 1 in 31 protocol 0 pickles starting with MARK
    # '(' passes it. A real zlib stream's head also inflates without error.
    try:
        zlib.decompressobj().decompress(head, 1 << 16)
    except zlib.error:
        return False
    return True


def _fits_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return 2 <= n <= size - 8 and head[8:10] in (b'{"', b"{}")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack_from("<Q", head)
    if 2 <= n <= size - 8 and head[8:9] == b"{":
        return True
    # A header object after a length that does not fit (truncated or hostile file) is still
    # safetensors, so the analyzer reports it instead of the file passing as unknown; eight
    # printable bytes before '{"' are text, not a length.
    printable = all(32 <= b < 127 or b in (9, 10, 13) for b in head[:8])
    return head[8:10] in (b'{"', b"{}") and not printable


def _looks_like_tar(head: bytes) -> bool:
    if len(head) < 512:
        return False
    if head[257:262] == b"ustar":
        return True
    # v7 tar: checksum field is octal digits and the stored checksum matches
    try:
        stored = int(head[148:156].split(b"\0")[0].strip() or b"x", 8)
    except ValueError:
        return False
    calc = sum(head[:148]) + 8 * 32 + sum(head[156:512])
    return stored == calc and head[0] != 0


def _looks_like_protobuf(head: bytes) -> bool:
    # ONNX ModelProto starts with ir_version (field 1, varint: 0x08) or another low field;
    # SavedModel with saved_model_schema_version (0x08) or meta_graphs (0x12).
    return len(head) >= 4 and head[0] in (0x08, 0x12, 0x0A, 0x1A, 0x22, 0x3A)


def sniff(head: bytes, size: int) -> Format:
    """Best guess of the format of a stream whose first bytes are ``head``."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return Format.ZIP
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        # a safetensors header length of 128, 384, 640... starts with the same two bytes; a
        # pickle never has a length-sized u64 up front followed by '{'
        if _fits_safetensors(head, size):
            return Format.SAFETENSORS
        return Format.PICKLE
    if head.startswith(b"\x93NUMPY"):
        return Format.NUMPY
    if head.startswith(b"GGUF"):
        return Format.GGUF
    if any(head[o:o + 8] == _HDF5_MAGIC for o in _HDF5_OFFSETS):
        return Format.HDF5
    if head.startswith(b"\x1f\x8b"):
        return Format.GZIP
    if head.startswith(b"BZh") and len(head) > 3 and head[3:4].isdigit():
        return Format.BZ2
    if head.startswith((b"\xfd7zXZ\x00", b"\x5d\x00\x00")):
        return Format.XZ
    if head.startswith(b"\x04\x22\x4d\x18"):
        return Format.LZ4
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return Format.SEVENZIP
    if _looks_like_tar(head):
        return Format.TAR
    if _looks_like_safetensors(head, size):
        return Format.SAFETENSORS
    if _looks_like_zlib(head):
        return Format.ZLIB
    stripped = head.lstrip(b" \t\r\n\xef\xbb\xbf")
    if stripped[:1] in (b"{", b"["):
        return Format.JSON
    if head[:1] and head[0] in _P0_START:
        return Format.PICKLE
    if _looks_like_protobuf(head):
        return Format.PROTOBUF
    return Format.UNKNOWN


def is_text(head: bytes) -> bool:
    """Heuristic: printable UTF-8 without NULs (source code, configs, READMEs)."""
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 4  # a character cut at the end of the window
    return True
