"""safetensors: validate the header the way the reference implementation reads it.

Format (huggingface/safetensors, ``safetensors/src/tensor.rs``): an 8-byte little-endian u64 ``N``,
``N`` bytes of UTF-8 JSON, then the data area. The JSON is an object mapping tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data area) plus an
optional ``__metadata__`` map of strings. ``read_metadata`` rejects headers over 100,000,000 bytes,
sorts tensors by offsets and requires them to tile the data area exactly: each begins where the
previous one ended, its byte count equals ``prod(shape) * bits(dtype) / 8`` and the last one ends
at the end of the file.

Only the header is read; tensor data never is. Every problem is a TG-ST-001 finding naming the
tensor, since a loader either refuses the file or, for readers less strict than the reference
(duplicate names, overlapping tensors), reads different bytes than a reviewer expects.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from trainguard.artifacts.reader import Reader
from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.scan.context import Blob, ScanContext

#: tensor.rs MAX_HEADER_SIZE: loaders refuse bigger headers
MAX_HEADER_SIZE = 100_000_000
#: usize is 64 bits on every platform the reference builds for
_USIZE = 1 << 64
#: findings listed per file before the rest are summarised
_MAX_PROBLEMS = 20

#: dtype -> bits per element (tensor.rs ``Dtype::bitsize``, safetensors 0.8)
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # serde refuses duplicate struct fields and keeps the last of duplicate tensor names; other
    # readers keep the first: either way two readers can see two different tensors
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
    return d


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # serde_json refuses NaN/Infinity


def parse_header(raw: bytes) -> dict[str, Any]:
    """The header object, or MalformedInput saying why the reference loader would refuse it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedInput(f"header is not UTF-8 (byte {exc.start})", 8 + exc.start) from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _Duplicate as exc:
        raise MalformedInput(f"duplicate key {exc.key!r} in the header", 8) from None
    except RecursionError:
        raise MalformedInput("header JSON is nested too deeply", 8) from None
    except ValueError as exc:
        raise MalformedInput(f"header is not valid JSON: {exc}", 8) from None
    if not isinstance(doc, dict):
        raise MalformedInput(f"header is a JSON {type(doc).__name__}, not an object", 8)
    return doc


def _uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _USIZE


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False  # a lone surrogate escape ("\ud800"): serde_json refuses it
    return True


def validate_header(doc: dict[str, Any], data_len: int | None) -> list[tuple[str | None, str]]:
    """Problems as (tensor name or None, description), in the reference loader's order."""
    problems: list[tuple[str | None, str]] = []
    tensors: list[tuple[int, int, str, int]] = []  # begin, end, name, expected bytes
    for name, info in doc.items():
        if not _utf8(name):
            problems.append((name, "name is not valid Unicode"))
            continue
        if name == "__metadata__":
            if info is not None and not (
                isinstance(info, dict)
                and all(isinstance(v, str) and _utf8(k) and _utf8(v) for k, v in info.items())
            ):
                problems.append((None, "__metadata__ is not a map of strings to strings"))
            continue
        if not isinstance(info, dict):
            problems.append((name, f"entry is a JSON {type(info).__name__}, not a tensor"))
            continue
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if missing:
            problems.append((name, f"missing {', '.join(missing)}"))
            continue
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            problems.append((name, f"unknown dtype {str(dtype)[:40]!r}"))
            continue
        if not isinstance(shape, list) or not all(_uint(d) for d in shape):
            problems.append((name, f"shape {str(shape)[:60]} is not a list of non-negative "
                             "integers"))
            continue
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(
            _uint(o) for o in offsets
        ):
            problems.append((name, f"data_offsets {str(offsets)[:60]} is not [begin, end]"))
            continue
        elements = 1
        for d in shape:
            elements *= d
        bits = elements * DTYPE_BITS[dtype]
        if elements >= _USIZE or bits >= _USIZE:
            problems.append((name, f"shape {shape} overflows the element count"))
            continue
        if bits % 8:
            problems.append((name, f"{elements} x {dtype} does not end on a byte boundary"))
            continue
        tensors.append((offsets[0], offsets[1], name, bits // 8))
    # tensor.rs Metadata::validate: sorted by offsets, tensors must tile the data area
    tensors.sort()
    start = 0
    for begin, end, name, expected in tensors:
        if end < begin:
            problems.append((name, f"data_offsets [{begin}, {end}] end before they begin"))
            continue
        if begin != start:
            kind = "overlaps the previous tensor" if begin < start else (
                f"leaves a gap of {begin - start} bytes before it")
            problems.append((name, f"data_offsets [{begin}, {end}] {kind}"))
        if end - begin != expected:
            problems.append((name, f"data_offsets [{begin}, {end}] hold {end - begin} bytes, "
                             f"dtype and shape need {expected}"))
        if data_len is not None and end > data_len:
            problems.append((name, f"data_offsets [{begin}, {end}] run past the data area "
                             f"({data_len} bytes): truncated file or bad offsets"))
        start = max(start, end)
    if data_len is not None and start < data_len:
        problems.append((None, f"{data_len - start} bytes after the last tensor are not covered "
                         "by the header (hidden data; the reference loader refuses the file)"))
    return problems


def analyze_safetensors(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    """Validate a safetensors header; never reads tensor data."""
    if len(head) < 8:
        return False
    (n,) = struct.unpack_from("<Q", head)
    size = blob.size
    ctx.saw("safetensors")
    if n > MAX_HEADER_SIZE:
        ctx.add("TG-ST-001", blob, f"header length {n} is over the {MAX_HEADER_SIZE}-byte limit "
                "of safetensors loaders", offset=0)
        return True
    if size is not None and n > size - 8:
        ctx.add("TG-ST-001", blob, f"header length {n} runs past the end of the file ({size} "
                "bytes): truncated or corrupt", offset=0)
        return True
    if n > ctx.limits.max_header_bytes:
        raise LimitExceeded("max_header_bytes", ctx.limits.max_header_bytes,
                            f"safetensors header of {n} bytes")
    try:
        with blob.opener() as f:
            reader = Reader(f, size if blob.seekable else None)
            reader.skip(8)
            raw = reader.read(n)
        doc = parse_header(raw)
    except MalformedInput as exc:
        ctx.add("TG-ST-001", blob, exc.message, offset=exc.offset)
        return True
    data_len = None if size is None else size - 8 - n
    problems = validate_header(doc, data_len)
    for tensor, text in problems[:_MAX_PROBLEMS]:
        if tensor is None:
            ctx.add("TG-ST-001", blob, text, offset=8)
        else:
            ctx.add("TG-ST-001", blob, f"tensor {tensor!r}: {text}", offset=8, tensor=tensor)
    if len(problems) > _MAX_PROBLEMS:
        ctx.add("TG-ST-001", blob, f"{len(problems) - _MAX_PROBLEMS} more header problems",
                offset=8, count=len(problems) - _MAX_PROBLEMS)
    return True
