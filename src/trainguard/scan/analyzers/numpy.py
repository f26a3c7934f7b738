"""NumPy ``.npy`` (``.npz`` members arrive here through the zip analyzer).

The header is a Python dict literal (numpy/lib/format.py), parsed with ``ast.literal_eval`` as
numpy itself does, after bounding its length. Object arrays are pickles written right after the
header: they are scanned as pickles, and the file is flagged because loading needs
``allow_pickle=True``.
"""

from __future__ import annotations

import ast
import math
import re
import struct
from typing import BinaryIO

from trainguard.core.errors import MalformedInput
from trainguard.scan.analyzers.pickles import analyze_pickle
from trainguard.scan.context import Blob, ScanContext

# numpy 2 refuses headers over 10,000 bytes by default (max_header_size); allow some slack.
_MAX_HEADER = 1 << 20
# A simple dtype string as numpy writes it (dtype.str): byte order, kind, item size, unit.
_DESCR = re.compile(r"^[<>|=]?([a-zA-Z?])(\d+)(\[\w+\])?$")


def parse_npy_header(data: bytes) -> tuple[dict[str, object], int]:
    """(header dict, offset of the array data) of an .npy byte prefix."""
    if len(data) < 10 or not data.startswith(b"\x93NUMPY"):
        raise MalformedInput("not an .npy file")
    major = data[6]
    if major == 1:
        (hlen,) = struct.unpack_from("<H", data, 8)
        start = 10
    elif major in (2, 3):
        if len(data) < 12:
            raise MalformedInput("truncated .npy header")
        (hlen,) = struct.unpack_from("<I", data, 8)
        start = 12
    else:
        raise MalformedInput(f"unknown .npy format version {major}")
    if hlen > _MAX_HEADER:
        raise MalformedInput(f".npy header of {hlen} bytes is implausibly large")
    raw = data[start:start + hlen]
    if len(raw) != hlen:
        raise MalformedInput("truncated .npy header")
    try:
        text = raw.decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise MalformedInput(f".npy header is not a literal dict: {type(exc).__name__}") from None
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= set(header):
        raise MalformedInput(".npy header lacks descr/fortran_order/shape")
    return header, start + hlen


def _has_object(descr: object) -> bool:
    if isinstance(descr, str):
        return descr.lstrip("<>|=").startswith("O")
    if isinstance(descr, list):
        for field in descr:
            if isinstance(field, tuple) and len(field) >= 2 and _has_object(field[1]):
                return True
        return False
    return True  # unknown descriptor: assume numpy would need pickle


def analyze_npy(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    with blob.opener() as f:
        prefix = f.read(12)
        if len(prefix) >= 12 and prefix[6] in (2, 3):
            hlen = struct.unpack_from("<I", prefix, 8)[0]
        elif len(prefix) >= 10:
            hlen = struct.unpack_from("<H", prefix, 8)[0]
        else:
            raise MalformedInput("truncated .npy header")
        if hlen > _MAX_HEADER:
            raise MalformedInput(f".npy header of {hlen} bytes is implausibly large")
        data = prefix + f.read(hlen)
    header, data_offset = parse_npy_header(data)
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise MalformedInput(f".npy shape {shape!r} invalid")
    if _has_object(header["descr"]):
        ctx.add("TG-NPY-001", blob, f"dtype {_short(header['descr'])} needs allow_pickle=True",
                offset=data_offset)

        inner = _window(blob, data_offset)
        with inner.opener() as f:
            inner_head = f.read(16)
        analyze_pickle(ctx, inner, depth + 1, inner_head)
        return True
    itemsize = _itemsize(header["descr"])
    if itemsize is not None and blob.size is not None:
        # numpy.load reads prod(shape) items and fails on a short file: a truncated array
        need = math.prod(shape) * itemsize
        have = blob.size - data_offset
        if have < need:
            ctx.add("TG-FMT-001", blob, f"array data truncated: {have} bytes, the header needs "
                    f"{need}", offset=data_offset)
    return True


def _itemsize(descr: object) -> int | None:
    """Bytes per item of a simple dtype string ('<f8', '<U10', '|S3'); None when not simple."""
    if not isinstance(descr, str):
        return None
    m = _DESCR.match(descr)
    if m is None:
        return None
    size = int(m.group(2))
    return size * 4 if m.group(1) == "U" else size


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _window(blob: Blob, offset: int) -> Blob:
    """The bytes of ``blob`` from ``offset`` on, as a blob of their own (offsets restart at 0)."""
    import io

    from trainguard.artifacts.streams import SubFile

    def opener() -> BinaryIO:
        f = blob.opener()
        if blob.seekable and blob.size is not None:
            return io.BufferedReader(SubFile(f, offset, blob.size - offset))  # type: ignore[arg-type]
        f.read(offset)
        return f

    size = blob.size - offset if blob.size is not None else None
    return Blob(blob.path, blob.member, size, opener, blob.seekable)
