"""GGUF (llama.cpp models): header, every metadata key/value and the tensor table, with bounds.

Layout (ggml docs/gguf.md, ggml/src/gguf.cpp): magic ``GGUF``; u32 version (1-3); tensor count and
key/value count (u32 in v1, u64 since v2); the key/value pairs (string key, u32 value type, value;
arrays are u32 element type + count + elements); the tensor infos (name, u32 n_dims, dims, u32 ggml
type, u64 offset); padding to ``general.alignment``; tensor data, which is never read here.

Every declared length is checked against the bytes that are left before anything is read or
allocated, and the metadata as a whole is bounded by ``[scan.limits] max_header_bytes``. Chat
templates (``tokenizer.chat_template`` and ``tokenizer.chat_template.<name>``) go to the template
checker: llama-cpp-python rendered them without a sandbox (CVE-2024-34359).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.scan.analyzers.templates import check_template
from trainguard.scan.context import Blob, ScanContext

GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
#: gguf.cpp GGML_MAX_DIMS
_MAX_DIMS = 4
#: nested arrays: gguf.cpp refuses any, gguf-py reads them; allow a few levels
_MAX_ARRAY_DEPTH = 4
#: metadata keys and tensor names are short identifiers; bigger ones are garbage or hostile
_MAX_KEY = 1 << 16
_CHUNK = 1 << 20
_TEMPLATE_KEY = "tokenizer.chat_template"

# GGUF value types (gguf.h enum gguf_type) -> fixed size in bytes; 8 (string), 9 (array) apart
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4

# ggml types -> (block size in elements, bytes per block): ggml.c type_traits / gguf-py
# GGML_QUANT_SIZES. 31-33 and 36-38 are retired repacked layouts still found in older files.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 31: ("Q4_0_4_4", 32, 18), 32: ("Q4_0_4_8", 32, 18),
    33: ("Q4_0_8_8", 32, 18), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    36: ("IQ4_NL_4_4", 32, 18), 37: ("IQ4_NL_4_8", 32, 18), 38: ("IQ4_NL_8_8", 32, 18),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}


class _Cursor:
    """Exact little/big-endian reads through a window buffer; every length checked first."""

    def __init__(self, f: BinaryIO, size: int | None, limit: int, seekable: bool) -> None:
        self._f = f
        self._size = size
        self._limit = limit
        self._seekable = seekable
        self._buf = b""
        self._off = 0
        self.pos = 0  # absolute offset of the next byte
        self.order = "<"
        self._structs: dict[str, struct.Struct] = {}

    def left(self) -> int | None:
        return None if self._size is None else self._size - self.pos

    def _need(self, n: int, what: str) -> None:
        if n < 0:
            raise MalformedInput(f"negative length for {what}", self.pos)
        if self._size is not None and n > self._size - self.pos:
            raise MalformedInput(f"truncated: {what} needs {n} bytes, {self._size - self.pos} "
                                 "left", self.pos)
        self.need_room(n)

    def need_room(self, n: int) -> None:
        """LimitExceeded now if ``n`` more bytes would pass the metadata limit."""
        if self.pos + n > self._limit:
            raise LimitExceeded("max_header_bytes", self._limit, "GGUF metadata")

    def take(self, n: int, what: str) -> bytes:
        self._need(n, what)
        avail = len(self._buf) - self._off
        if avail < n:
            more = self._f.read(max(n - avail, _CHUNK))
            self._buf = self._buf[self._off:] + more
            self._off = 0
            if len(self._buf) < n:
                raise MalformedInput(f"truncated: {what} needs {n} bytes, {len(self._buf)} "
                                     "left", self.pos)
        data = self._buf[self._off:self._off + n]
        self._off += n
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self._need(n, what)
        avail = len(self._buf) - self._off
        if n <= avail:
            self._off += n
        elif self._seekable and self._size is not None:
            self._f.seek(self.pos + n)
            self._buf, self._off = b"", 0
        else:
            left = n - avail
            self._buf, self._off = b"", 0
            while left:
                part = self._f.read(min(left, _CHUNK))
                if not part:
                    raise MalformedInput(f"truncated: {what}", self.pos)
                left -= len(part)
        self.pos += n

    def unpack(self, fmt: str, what: str) -> int:
        st = self._structs.get(fmt)
        if st is None:
            st = self._structs[fmt] = struct.Struct(self.order + fmt)
        (value,) = st.unpack(self.take(st.size, what))
        return int(value)

    def skip_strings(self, count: int, wide: bool, what: str) -> None:
        """Skip ``count`` length-prefixed strings (token lists: the hot loop of a GGUF file)."""
        st = struct.Struct(self.order + ("Q" if wide else "I"))
        width, unpack_from = st.size, st.unpack_from
        done = 0
        while done < count:
            # fast path: whole strings already in the buffer (bytes that exist in the file)
            buf, off = self._buf, self._off
            end = len(buf)
            while done < count and off + width <= end:
                (n,) = unpack_from(buf, off)
                if off + width + n > end:
                    break
                off += width + n
                done += 1
            self.pos += off - self._off
            self._off = off
            self.need_room(0)
            if done < count:
                (n,) = st.unpack(self.take(width, what))
                self.skip(n, what)
                done += 1


class _Gguf:
    """One pass over the metadata of a GGUF file."""

    def __init__(self, ctx: ScanContext, blob: Blob, cur: _Cursor) -> None:
        self.ctx = ctx
        self.blob = blob
        self.cur = cur
        self.version = 0
        self.alignment = _DEFAULT_ALIGNMENT

    def length(self, what: str) -> int:
        """A length or count field: u32 in GGUF v1, u64 since v2."""
        return self.cur.unpack("I" if self.version == 1 else "Q", what)

    def string(self, what: str, keep: bool) -> bytes | None:
        n = self.length(f"{what} length")
        if keep:
            return self.cur.take(n, what)
        self.cur.skip(n, what)
        return None

    def header(self) -> tuple[int, int]:
        cur = self.cur
        if cur.take(4, "magic") != GGUF_MAGIC:
            raise MalformedInput("not a GGUF file (bad magic)", 0)
        raw = cur.take(4, "version")
        version = struct.unpack("<I", raw)[0]
        if version & 0xFFFF == 0:
            # written on a big-endian host (gguf.cpp and gguf-py detect it the same way)
            cur.order = ">"
            version = struct.unpack(">I", raw)[0]
        if not 1 <= version <= 3:
            raise MalformedInput(f"unsupported GGUF version {version}", 4)
        self.version = version
        n_tensors = self.length("tensor count")
        n_kv = self.length("key/value count")
        left = cur.left()
        # a key/value takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor info
        # 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset)
        if left is not None and (n_kv * 13 > left or n_tensors * 24 > left):
            raise MalformedInput(f"{n_kv} key/value pairs and {n_tensors} tensors cannot fit in "
                                 f"{left} bytes", 8)
        cur.need_room(n_kv * 13 + n_tensors * 24)
        return n_tensors, n_kv

    def value(self, vtype: int, key: str, keep: bool, depth: int = 0) -> object:
        """Read (or skip) one value; returns it when ``keep`` and it is a string/u32/array."""
        cur = self.cur
        size = _SCALAR_SIZE.get(vtype)
        if size is not None:
            if keep and vtype == _UINT32:
                return cur.unpack("I", key)
            cur.skip(size, key)
            return None
        if vtype == _STRING:
            return self.string(key, keep)
        if vtype != _ARRAY:
            raise MalformedInput(f"{key}: unknown value type {vtype}", cur.pos)
        if depth >= _MAX_ARRAY_DEPTH:
            raise MalformedInput(f"{key}: arrays nested deeper than {_MAX_ARRAY_DEPTH}", cur.pos)
        etype = cur.unpack("I", f"{key} element type")
        count = self.length(f"{key} element count")
        esize = _SCALAR_SIZE.get(etype)
        if esize is not None:
            cur.skip(count * esize, f"{key}: {count} elements of {esize} bytes")
            return None
        # even an empty string or array takes its length field
        minimum = (4 if self.version == 1 else 8) + (4 if etype == _ARRAY else 0)
        left = cur.left()
        if left is not None and count * minimum > left:
            raise MalformedInput(f"{key}: {count} elements cannot fit in {left} bytes", cur.pos)
        cur.need_room(count * minimum)
        if etype == _STRING and not keep:
            cur.skip_strings(count, self.version != 1, key)
            return None
        items = []
        for _ in range(count):
            item = self.value(etype, key, keep, depth + 1)
            if keep and item is not None:
                items.append(item)
        return items if keep else None

    def metadata(self, n_kv: int) -> None:
        seen: set[str] = set()
        for _ in range(n_kv):
            start = self.cur.pos
            klen = self.length("key length")
            if klen > _MAX_KEY:
                raise MalformedInput(f"key of {klen} bytes", start)
            key = _utf8(self.cur.take(klen, "key"), "metadata key", start)
            vtype = self.cur.unpack("I", f"{key} type")
            keep = key.startswith(_TEMPLATE_KEY) or key == "general.alignment"
            where = self.cur.pos
            value = self.value(vtype, key, keep)
            if key in seen:
                # gguf.cpp refuses the file; other readers keep the first or the last value
                self.ctx.add("TG-FMT-001", self.blob, f"duplicate metadata key {key!r}",
                             offset=start)
            seen.add(key)
            if key == "general.alignment":
                if vtype != _UINT32 or not isinstance(value, int) or value <= 0 or (
                    value & (value - 1)
                ):
                    raise MalformedInput(f"general.alignment must be a power-of-two u32, got "
                                         f"{value!r}", start)
                self.alignment = value
            elif keep:
                for readings in _template_texts(value):
                    for text in readings:  # one finding per template, whichever reading shows it
                        before = len(self.ctx.findings)
                        check_template(self.ctx, self.blob, text, f"GGUF metadata {key}",
                                       offset=where)
                        if len(self.ctx.findings) > before:
                            break

    def tensors(self, n_tensors: int, file_size: int | None) -> None:
        cur = self.cur
        infos: list[tuple[str, int, int]] = []  # name, offset, bytes
        names: set[str] = set()
        for _ in range(n_tensors):
            start = cur.pos
            nlen = self.length("tensor name length")
            if nlen > _MAX_KEY:
                raise MalformedInput(f"tensor name of {nlen} bytes", start)
            name = _utf8(cur.take(nlen, "tensor name"), "tensor name", start)
            if name in names:
                raise MalformedInput(f"duplicate tensor name {name!r}", start)
            names.add(name)
            n_dims = cur.unpack("I", f"tensor {name} n_dims")
            if n_dims > _MAX_DIMS:
                raise MalformedInput(f"tensor {name!r} has {n_dims} dimensions (max "
                                     f"{_MAX_DIMS})", start)
            dims = [self.length(f"tensor {name} dims") for _ in range(n_dims)]
            ttype = cur.unpack("I", f"tensor {name} type")
            offset = cur.unpack("Q", f"tensor {name} offset")
            if ttype not in GGML_TYPES:
                raise MalformedInput(f"tensor {name!r} has unknown ggml type {ttype}", start)
            tname, block, type_size = GGML_TYPES[ttype]
            elements = 1
            for d in dims:
                elements *= d
            if any(d >= 1 << 63 for d in dims) or elements >= 1 << 63:
                raise MalformedInput(f"tensor {name!r} shape {dims} overflows", start)
            if dims and dims[0] % block:
                raise MalformedInput(f"tensor {name!r} ({tname}) row of {dims[0]} elements is not "
                                     f"a multiple of the block size {block}", start)
            infos.append((name, offset, elements // block * type_size))
        data_start = -(-cur.pos // self.alignment) * self.alignment
        expected = 0
        for name, offset, nbytes in infos:
            # gguf.cpp: each tensor starts where the previous one ends, padded to the alignment
            if offset != expected:
                raise MalformedInput(f"tensor {name!r} at data offset {offset}, expected "
                                     f"{expected} (overlapping or out of order)")
            expected += -(-nbytes // self.alignment) * self.alignment
            if file_size is not None and data_start + offset + nbytes > file_size:
                raise MalformedInput(f"tensor {name!r} data [{data_start + offset}, "
                                     f"{data_start + offset + nbytes}) lies beyond the end of "
                                     f"the file ({file_size} bytes)")


def _utf8(raw: bytes, what: str, offset: int) -> str:
    """Keys and names are UTF-8 (gguf.md: gguf_string_t); gguf-py refuses anything else."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput(f"{what} {raw[:60]!r} is not UTF-8", offset) from None


def _template_texts(value: object) -> list[list[str]]:
    """The templates in a metadata value, each as the readings a loader might decode."""
    raw = value if isinstance(value, list) else [value]
    texts = []
    for item in raw:
        if not isinstance(item, bytes):
            continue
        try:
            texts.append([item.decode("utf-8")])
        except UnicodeDecodeError:
            # readers differ on invalid UTF-8: dropping bytes can join '__cl\xffass__' into a
            # dunder, replacing them cannot; check both readings
            texts.append([item.decode("utf-8", "ignore"), item.decode("utf-8", "replace")])
    return texts


def analyze_gguf(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    """Validate a GGUF file's metadata and tensor table; check its chat templates."""
    if not head.startswith(GGUF_MAGIC):
        return False
    with blob.opener() as f:
        cur = _Cursor(f, blob.size, ctx.limits.max_header_bytes, blob.seekable)
        g = _Gguf(ctx, blob, cur)
        n_tensors, n_kv = g.header()
        ctx.saw("gguf")
        g.metadata(n_kv)
        g.tensors(n_tensors, blob.size)
    return True
