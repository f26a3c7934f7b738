"""Reading a torch pickle as data: the manifest's view of ``data.pkl`` (never executed).

:class:`Walker` flattens the symbolic value that :class:`ManifestMachine` (the scan machine of
``scan/pickle``, plus dict-like calls that keep their items and large byte constants digested as
they stream past) builds, into dotted names of tensors (storage, offset, size, stride) and
scalars. See :mod:`trainguard.integrity.tensors` for what the digests cover.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from trainguard.artifacts.zipfmt import STORED, ZipEntry
from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.scan.pickle.machine import PickleMachine
from trainguard.scan.pickle.values import (
    BigBytes,
    Call,
    Global,
    Opaque,
    PersistentRef,
    SymDict,
    SymList,
    SymSet,
    describe,
)

#: torch storage class -> (safetensors dtype name, bytes per element)
_STORAGE_DTYPES = {
    "FloatStorage": ("F32", 4), "DoubleStorage": ("F64", 8), "HalfStorage": ("F16", 2),
    "BFloat16Storage": ("BF16", 2), "LongStorage": ("I64", 8), "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2), "CharStorage": ("I8", 1), "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1), "ComplexFloatStorage": ("C64", 8),
    "ComplexDoubleStorage": ("C128", 16), "UInt16Storage": ("U16", 2),
    "UInt32Storage": ("U32", 4), "UInt64Storage": ("U64", 8),
    "Float8_e4m3fnStorage": ("F8_E4M3", 1), "Float8_e5m2Storage": ("F8_E5M2", 1),
    "UntypedStorage": ("U8", 1),
}
#: torch dtype attribute -> (dtype name, bytes per element), for _rebuild_tensor_v3
_TORCH_DTYPES = {
    "float32": ("F32", 4), "float": ("F32", 4), "float64": ("F64", 8), "double": ("F64", 8),
    "float16": ("F16", 2), "half": ("F16", 2), "bfloat16": ("BF16", 2), "int64": ("I64", 8),
    "long": ("I64", 8), "int32": ("I32", 4), "int": ("I32", 4), "int16": ("I16", 2),
    "short": ("I16", 2), "int8": ("I8", 1), "uint8": ("U8", 1), "bool": ("BOOL", 1),
    "complex64": ("C64", 8), "complex128": ("C128", 16), "uint16": ("U16", 2),
    "uint32": ("U32", 4), "uint64": ("U64", 8), "float8_e4m3fn": ("F8_E4M3", 1),
    "float8_e5m2": ("F8_E5M2", 1),
}
_REBUILD_TENSOR = frozenset({"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor",
                             "torch._utils._rebuild_tensor_v3"})
_REBUILD_PARAM = frozenset({"torch._utils._rebuild_parameter",
                            "torch._utils._rebuild_parameter_with_state"})
_NP_RECONSTRUCT = frozenset({"numpy.core.multiarray._reconstruct",
                             "numpy._core.multiarray._reconstruct"})
_NP_SCALAR = frozenset({"numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"})
_ORDERED = frozenset({"collections.OrderedDict", "builtins.dict", "__builtin__.dict"})


@dataclass(frozen=True)
class ManifestLimits:
    """Bounds on what one checkpoint may cost to describe."""

    max_tensors: int = 1_000_000
    max_nodes: int = 5_000_000
    max_depth: int = 64
    max_members: int = 1_000_000
    max_pickle_bytes: int = 1 << 30
    max_pickle_opcodes: int = 50_000_000
    max_header_bytes: int = 100_000_000
    max_expanded_bytes: int = 64 << 30
    #: scalar lists longer than this are digested instead of listed
    max_list: int = 32
    max_str: int = 1024


@dataclass
class TensorRef:
    """Where one tensor's bytes are: a file range, or a (possibly compressed) zip member slice."""

    name: str
    dtype: str
    itemsize: int
    shape: tuple[int, ...]
    stride: tuple[int, ...] | None
    #: byte span in the storage (or data area) that the tensor views
    start: int
    end: int
    #: file offset of the storage's first byte (stored zip member / safetensors data), or -1
    base: int = -1
    member: ZipEntry | None = None
    storage: str | None = None
    storage_offset: int = 0


@dataclass
class Parsed:
    """A parsed checkpoint: tensors with their locations, scalars, notes."""

    format: str
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    #: tensors digested from inline pickle bytes (numpy arrays): name -> manifest entry
    inline: dict[str, dict[str, Any]] = field(default_factory=dict)
    scalars: dict[str, Any] = field(default_factory=dict)
    byteorder: str = "little"
    unsupported: str | None = None


class HashedBytes:
    """A byte constant too large to keep, digested while it was skipped."""

    __slots__ = ("digest", "length")

    def __init__(self, length: int, digest: str) -> None:
        self.length = length
        self.digest = digest


class ManifestMachine(PickleMachine):
    """The scan machine, plus what a manifest needs: dict-like calls keep their items, and large
    byte constants are digested instead of dropped."""

    def _call(self, func: object, args: object, kind: str, offset: int) -> object:
        result = super()._call(func, args, kind, offset)
        if isinstance(func, Global) and func.qualname in _ORDERED and isinstance(result, Call):
            # OrderedDict() then SETITEMS: keep the items like a dict's (state_dict containers)
            d = SymDict()
            if isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], (SymList,
                                                                                  tuple)):
                d.pairs = [tuple(p) for p in args[0]  # type: ignore[misc]
                           if isinstance(p, tuple) and len(p) == 2]
            return d
        return result

    def _const_bytes(self, n: int, offset: int) -> object:
        if n <= 1 << 16:
            return super()._const_bytes(n, offset)
        h = hashlib.sha256()
        left = n
        while left:
            part = self.r.read(min(left, 1 << 20))
            h.update(part)
            left -= len(part)
        return HashedBytes(n, h.hexdigest())

    def _push_unicode(self, n: int, offset: int) -> None:
        if n <= 1 << 16:
            super()._push_unicode(n, offset)
            return
        # protocol 2 writes bytes as _codecs.encode(<text>, "latin1"): large numpy arrays
        # arrive as long strings; digest their UTF-8 bytes as they stream past
        self.stack.append(self._const_bytes(n, offset))


class Walker:
    """Flattens the unpickled (symbolic) value into dotted names of tensors and scalars."""

    def __init__(self, parsed: Parsed, limits: ManifestLimits, members: dict[str, ZipEntry],
                 prefix: str) -> None:
        self.p = parsed
        self.limits = limits
        self.members = members
        self.prefix = prefix
        self.nodes = 0
        self.on_path: set[int] = set()
        #: containers already walked, by id: a second reference (pickle memo) is recorded as
        #: {"same_as": first name}, so shared references cost linear, not exponential, work
        self.seen: dict[int, str] = {}

    def walk(self, v: object, name: str, depth: int) -> None:
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise LimitExceeded("max_nodes", self.limits.max_nodes, "values in the checkpoint")
        if depth > self.limits.max_depth:
            raise LimitExceeded("max_depth", self.limits.max_depth, f"nesting at {name!r}")
        if id(v) in self.on_path:
            self.p.scalars[name] = {"cycle": True}
            return
        if isinstance(v, SymDict):
            if self._again(v, name):
                return
            self._enter(v, [(self._key(k), val) for k, val in v.pairs], name, depth)
        elif isinstance(v, (SymList, tuple, SymSet)):
            items = list(v)
            self.nodes += len(items)
            if _all_plain(items):
                self.p.scalars[name] = self._plain_list(items)
            elif not self._again(v, name):
                self._enter(v, [(str(i), x) for i, x in enumerate(items)], name, depth)
        elif isinstance(v, Call):
            self._call(v, name, depth)
        else:
            self.p.scalars[name] = self._scalar(v)

    def _again(self, container: object, name: str) -> bool:
        first = self.seen.get(id(container))
        if first is not None:
            self.p.scalars[name] = {"same_as": first}
            return True
        self.seen[id(container)] = name
        return False

    def _enter(self, container: object, pairs: list[tuple[str, object]], name: str,
               depth: int) -> None:
        if not pairs:
            self.p.scalars[name] = {"empty": type(container).__name__.replace("Sym", "").lower()}
            return
        self.on_path.add(id(container))
        try:
            for k, val in pairs:
                self.walk(val, f"{name}.{k}" if name else k, depth + 1)
        finally:
            self.on_path.discard(id(container))

    @staticmethod
    def _key(k: object) -> str:
        if isinstance(k, str):
            return k
        if isinstance(k, (int, float, bool)) or k is None:
            return str(k)
        return describe(k)

    def _plain_list(self, items: list[object]) -> object:
        vals = [self._scalar(x) for x in items]
        if len(vals) <= self.limits.max_list:
            return vals
        text = json.dumps(vals, sort_keys=True, separators=(",", ":"))
        return {"items": len(vals), "digest": hashlib.sha256(text.encode()).hexdigest()}

    def _scalar(self, v: object) -> object:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, int):
            return v if abs(v) < 1 << 63 else {"int": str(v)[:4300]}
        if isinstance(v, float):
            return v if math.isfinite(v) else {"float": repr(v)}
        if isinstance(v, str):
            return bounded_str(v, self.limits)
        if isinstance(v, (bytes, bytearray)):
            return {"bytes": len(v), "digest": hashlib.sha256(v).hexdigest()}
        if isinstance(v, HashedBytes):
            return {"bytes": v.length, "digest": v.digest}
        if isinstance(v, Global):
            return {"global": v.qualname}
        if isinstance(v, (BigBytes, Opaque, PersistentRef)):
            return {"opaque": describe(v)}
        return {"opaque": describe(v)}

    # ---------------------------------------------------------------- calls: tensors and objects
    def _call(self, c: Call, name: str, depth: int) -> None:
        qual = c.func.qualname if isinstance(c.func, Global) else ""
        args = c.args if isinstance(c.args, tuple) else ()
        if qual in _REBUILD_PARAM and args and isinstance(args[0], Call):
            self._call(args[0], name, depth)
            return
        if qual == "torch._tensor._rebuild_from_type_v2" and len(args) >= 3 \
                and isinstance(args[0], Global) and isinstance(args[2], tuple):
            self._call(Call(args[0], args[2], "call", c.offset), name, depth)
            return
        if qual in _REBUILD_TENSOR:
            self._tensor(qual, args, name)
            return
        if qual in _NP_RECONSTRUCT:
            self._ndarray(c, name)
            return
        if qual in _NP_SCALAR and len(args) == 2:
            self.p.scalars[name] = self._np_scalar(args[0], args[1])
            return
        if qual.startswith(("torch._utils._rebuild", "torch._tensor._rebuild")):
            self.p.scalars[name] = {"tensor": qual, "unsupported": True}
            return
        # any other object: its type, its constructor arguments and its attribute state
        self.p.scalars[name] = {"object": qual or describe(c.func)}
        if args:
            self.walk(tuple(args), f"{name}.args", depth + 1)
        state = c.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], SymDict):
            state = state[0]
        if isinstance(state, SymDict):
            self._enter(state, [(self._key(k), val) for k, val in state.pairs], name, depth)
        elif state is not None:
            self.walk(state, f"{name}.state", depth + 1)

    def _tensor(self, qual: str, args: tuple[object, ...], name: str) -> None:
        if len(self.p.tensors) >= self.limits.max_tensors:
            raise LimitExceeded("max_tensors", self.limits.max_tensors, "tensors in data.pkl")
        if len(args) < 4 or not isinstance(args[0], PersistentRef):
            raise MalformedInput(f"tensor {name!r}: {qual} without a storage")
        pid = args[0].pid
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], Global) and isinstance(pid[2], str)
                and _uint(pid[4])):
            raise MalformedInput(f"tensor {name!r}: storage id {describe(pid)} is not "
                                 "('storage', class, key, location, numel)")
        storage_cls, key, numel = pid[1].name, pid[2], int(pid[4])
        known = _STORAGE_DTYPES.get(storage_cls)
        if known is None:
            raise MalformedInput(f"tensor {name!r}: unknown storage class {pid[1].qualname}")
        dtype, itemsize = known
        storage_bytes = numel * itemsize
        if qual.endswith("_v3") and len(args) >= 7 and isinstance(args[6], Global):
            tdt = _TORCH_DTYPES.get(args[6].name)
            if tdt is None:
                raise MalformedInput(f"tensor {name!r}: unknown dtype {args[6].qualname}")
            dtype, itemsize = tdt
        offset, shape, stride = args[1], args[2], args[3]
        if not (_uint(offset) and isinstance(shape, tuple) and isinstance(stride, tuple)
                and len(shape) == len(stride) and len(shape) <= 64
                and all(_uint(s) for s in shape) and all(_uint(s) for s in stride)):
            raise MalformedInput(f"tensor {name!r}: bad offset/size/stride "
                                 f"{describe(offset)}, {describe(shape)}, {describe(stride)}")
        assert isinstance(offset, int)
        sh = tuple(int(s) for s in shape)  # type: ignore[call-overload]
        sd = tuple(int(s) for s in stride)  # type: ignore[call-overload]
        if any(s == 0 for s in sh):
            extent = 0
        else:
            extent = 1 + sum((a - 1) * b for a, b in zip(sh, sd, strict=True))
        # an empty tensor views no bytes, wherever its offset points (torch allows that)
        start, end = (offset * itemsize, (offset + extent) * itemsize) if extent else (0, 0)
        if extent and end > storage_bytes:
            raise MalformedInput(f"tensor {name!r}: views bytes [{start}, {end}) of a "
                                 f"{storage_bytes}-byte storage {key!r}")
        member = self.members.get(f"{self.prefix}data/{key}")
        if member is None:
            raise MalformedInput(f"tensor {name!r}: storage member data/{key} is missing")
        if member.usize != storage_bytes:
            raise MalformedInput(f"tensor {name!r}: storage data/{key} holds {member.usize} "
                                 f"bytes, its id declares {storage_bytes}")
        base = member.data_offset if member.method == STORED and member.csize == member.usize \
            else -1
        if member.data_offset < 0:
            raise MalformedInput(f"storage member data/{key} has no readable local header")
        self.p.tensors[name] = TensorRef(name, dtype, itemsize, sh, sd, start, end, base=base,
                                         member=member, storage=key, storage_offset=offset)

    def _ndarray(self, c: Call, name: str) -> None:
        # numpy ndarray.__reduce__: _reconstruct(ndarray, (0,), b'b') then BUILD with
        # (version, shape, dtype, is_fortran, raw bytes) (numpy/_core/src/multiarray/methods.c)
        st = c.state
        if not (isinstance(st, tuple) and len(st) == 5):
            self.p.scalars[name] = {"object": "numpy.ndarray", "opaque": describe(st)}
            return
        shape = list(st[1]) if isinstance(st[1], tuple) and all(_uint(s) for s in st[1]) else []
        dt = _np_dtype_name(st[2])
        raw = _latin1(st[4])
        entry: dict[str, Any] = {"dtype": f"numpy:{dt}", "shape": shape, "inline": True}
        if isinstance(raw, (bytes, bytearray)):
            entry.update(digest=hashlib.sha256(raw).hexdigest(), nbytes=len(raw))
        elif isinstance(raw, HashedBytes):
            entry.update(digest=raw.digest, nbytes=raw.length)
        else:  # object arrays pickle a list of items instead of bytes
            entry.update(digest=None, note=f"object array {describe(raw)}")
        self.p.inline[name] = entry

    @staticmethod
    def _np_scalar(dtype: object, data: object) -> object:
        dt = _np_dtype_name(dtype)
        fmts = {"f8": "d", "f4": "f", "i8": "q", "i4": "i", "u8": "Q", "u4": "I", "b1": "?"}
        data = _latin1(data)
        if isinstance(data, bytes) and dt[1:] in fmts and len(data) == struct.calcsize(
                fmts[dt[1:]]):
            order = ">" if dt[0] == ">" else "<"
            value = struct.unpack(order + fmts[dt[1:]], data)[0]
            if isinstance(value, float) and not math.isfinite(value):
                return {"float": repr(value)}
            return value
        return {"numpy": dt, "digest": hashlib.sha256(data).hexdigest()
                if isinstance(data, bytes) else None}


def _latin1(v: object) -> object:
    """``_codecs.encode(text, "latin1")``, the way protocol 2 writes bytes, folded to bytes."""
    if isinstance(v, Call) and isinstance(v.func, Global) and v.func.qualname in (
            "_codecs.encode", "codecs.encode") and isinstance(v.args, tuple) and len(v.args) == 2:
        text = v.args[0]
        if isinstance(text, str):
            try:
                return text.encode("latin1")
            except UnicodeEncodeError:
                return v
        if isinstance(text, HashedBytes):
            return text
    return v


def _np_dtype_name(dtype: object) -> str:
    """``numpy.dtype('u4', False, True)`` with BUILD state ``(3, '<', ...)`` -> ``'<u4'``."""
    if isinstance(dtype, Call) and isinstance(dtype.args, tuple) and dtype.args \
            and isinstance(dtype.args[0], str):
        order = "<"
        if isinstance(dtype.state, tuple) and len(dtype.state) > 1 \
                and dtype.state[1] in ("<", ">", "|", "="):
            order = str(dtype.state[1])
        return order + dtype.args[0][:16]
    return "?"


def _uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62


def _all_plain(items: list[object]) -> bool:
    return all(x is None or isinstance(x, (bool, int, float, str)) for x in items)


def bounded_str(v: object, limits: ManifestLimits) -> object:
    if not isinstance(v, str):
        return {"opaque": describe(v)}
    if len(v) <= limits.max_str:
        return v
    return {"chars": len(v), "digest": hashlib.sha256(v.encode("utf-8", "surrogatepass"))
            .hexdigest()}


def contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    out: list[int] = []
    acc = 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(out))
