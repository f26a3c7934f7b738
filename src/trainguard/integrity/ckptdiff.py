"""``trainguard diff A B``: what differs between two checkpoints, never executing either.

Files are paired by relative path (two files are compared directly). Identical bytes (same
sha256) end the comparison of a pair. Otherwise both sides are described by
:func:`~trainguard.integrity.tensors.tensor_manifest` (tensors by name with digests, optimizer
hyperparameters, RNG states, counters) or, for JSON files (``trainer_state.json``,
``config.json``), by their flattened keys, and compared. With ``values=True`` each changed tensor
of equal dtype and shape is also measured: maximum absolute difference, relative L2 distance
``||new - old|| / ||old||`` and the fraction of elements whose bytes changed, computed from the
raw bytes with numpy (imported only then).

Example::

    from trainguard.integrity.ckptdiff import diff
    result = diff("runs/a/checkpoint-100", "runs/b/checkpoint-100", values=True)
    for f in result.files:
        for change in f.changes:
            print(f.path, change["name"], change.get("stats"))
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.artifacts.streams import Budget
from trainguard.core.errors import InputError, LimitExceeded, MalformedInput, UsageError
from trainguard.integrity.hashing import digest_files
from trainguard.integrity.tensors import (
    Parsed,
    TensorRef,
    build_manifest,
    compare_manifests,
    parse_checkpoint,
    read_span,
)

#: JSON files larger than this are compared by digest only
MAX_JSON_BYTES = 16 << 20
#: a non-contiguous tensor's span is read whole for value statistics up to this size
MAX_STRIDED_BYTES = 1 << 30
#: contiguous tensors are compared in chunks of this many bytes
_STATS_CHUNK = 32 << 20

_NP_DTYPES = {"F64": "f8", "F32": "f4", "F16": "f2", "I64": "i8", "I32": "i4", "I16": "i2",
              "I8": "i1", "U8": "u1", "U16": "u2", "U32": "u4", "U64": "u8", "BOOL": "u1",
              "BF16": "u2"}


@dataclass(frozen=True)
class FileDiff:
    """One pair of files: ``status`` is ``same`` (equal bytes), ``equivalent`` (bytes differ, but
    every tensor, value and archive member is equal: torch.save writes a random serialization
    id), ``changed``, ``added`` or ``removed``."""

    path: str
    status: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    format: str | None = None
    old_digest: str | None = None
    new_digest: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "status": self.status, "format": self.format,
                             "old_digest": self.old_digest, "new_digest": self.new_digest,
                             "changes": self.changes}
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class DiffResult:
    """The comparison of two checkpoints (files or directories)."""

    old: str
    new: str
    files: list[FileDiff]

    @property
    def identical(self) -> bool:
        """No file added, removed or changed in content (``same`` or ``equivalent``)."""
        return all(f.status in ("same", "equivalent") for f in self.files)

    @property
    def bytes_identical(self) -> bool:
        return all(f.status == "same" for f in self.files)

    def summary(self) -> dict[str, int]:
        out = {"files": len(self.files), "same": 0, "equivalent": 0, "changed": 0, "added": 0,
               "removed": 0,
               "tensors_changed": 0, "scalars_changed": 0}
        for f in self.files:
            out[f.status] = out.get(f.status, 0) + 1
            for c in f.changes:
                if c["kind"] == "tensor":
                    out["tensors_changed"] += 1
                elif c["kind"] == "scalar":
                    out["scalars_changed"] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new, "identical": self.identical,
                "bytes_identical": self.bytes_identical,
                "summary": self.summary(), "files": [f.to_dict() for f in self.files]}


def diff(old: str | os.PathLike[str], new: str | os.PathLike[str], *, values: bool = False,
         workers: int | None = None,
         progress: Callable[[Path, int], None] | None = None) -> DiffResult:
    """Compare two checkpoint files or two directories of them (see the module docstring).

    Raises :class:`InputError` for a path that cannot be read and :class:`UsageError` for a file
    compared with a directory.
    """
    a, b = Path(old), Path(new)
    for p in (a, b):
        if not p.exists():
            raise InputError(f"{p}: no such file or directory")
    if a.is_dir() != b.is_dir():
        raise UsageError(f"cannot compare a file with a directory: {a}, {b}",
                         remedy="give two files or two directories")
    if a.is_dir():
        left, right = _files(a), _files(b)
    else:
        left, right = {a.name: a}, {a.name: b}
    both = sorted(set(left) & set(right))
    try:
        digests = digest_files([left[r] for r in both] + [right[r] for r in both],
                               workers=workers, progress=progress)
    except OSError as exc:
        raise InputError(f"{exc.filename or ''}: {exc.strerror or exc}") from None
    out: list[FileDiff] = []
    for rel in sorted(set(left) | set(right)):
        if rel not in right:
            out.append(FileDiff(rel, "removed", note="only in the old checkpoint"))
        elif rel not in left:
            out.append(FileDiff(rel, "added", note="only in the new checkpoint"))
        else:
            da, db = digests[left[rel]].hex(), digests[right[rel]].hex()
            if da == db:
                out.append(FileDiff(rel, "same", old_digest=da, new_digest=db))
            else:
                out.append(_compare_pair(rel, left[rel], right[rel], da, db, values))
    return DiffResult(str(a), str(b), out)


def _files(root: Path) -> dict[str, Path]:
    """Regular files under ``root`` by POSIX relative path; links and devices are not followed."""
    out: dict[str, Path] = {}
    errors: list[OSError] = []
    for dirpath, _dirs, names in os.walk(root, onerror=errors.append, followlinks=False):
        for name in names:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[p.relative_to(root).as_posix()] = p
    if errors:
        raise InputError(f"{errors[0].filename}: {errors[0].strerror or errors[0]}")
    return out


def _compare_pair(rel: str, a: Path, b: Path, da: str, db: str, values: bool  # noqa: PLR0917
                  ) -> FileDiff:
    try:
        pa, pb = parse_checkpoint(a), parse_checkpoint(b)
        if pa is None and pb is None:
            return _compare_json(rel, a, b, da, db)
        ma = build_manifest(a, pa) if pa is not None else None
        mb = build_manifest(b, pb) if pb is not None else None
    except (MalformedInput, LimitExceeded) as exc:
        return FileDiff(rel, "changed", old_digest=da, new_digest=db,
                        note=f"bytes differ; changes not located: {exc.message}")
    changes = compare_manifests(ma, mb)
    if values and pa is not None and pb is not None:
        for c in changes:
            ra, rb = pa.tensors.get(c["name"]), pb.tensors.get(c["name"])
            if c["kind"] == "tensor" and c["change"] == "changed" and ra and rb:
                c["stats"] = tensor_stats(a, ra, pa, b, rb, pb)
    either = pb or pa
    fmt = either.format if either is not None else None
    if not changes and ma is not None and mb is not None and not ma.get("unsupported") \
            and not mb.get("unsupported"):
        return FileDiff(rel, "equivalent", [], fmt, da, db, "bytes differ; every tensor, value "
                        "and archive member is equal (container layout, serialization id)")
    return FileDiff(rel, "changed", changes, fmt, da, db)


def _compare_json(rel: str, a: Path, b: Path, da: str, db: str) -> FileDiff:
    fa, fb = _flat_json(a), _flat_json(b)
    if fa is None or fb is None:
        return FileDiff(rel, "changed", old_digest=da, new_digest=db,
                        note="bytes differ (not a checkpoint or JSON file)")
    changes = compare_manifests({"format": "json", "tensors": {}, "scalars": fa},
                                {"format": "json", "tensors": {}, "scalars": fb})
    for c in changes:
        c["category"] = "metadata"
    if not changes:
        return FileDiff(rel, "equivalent", [], "json", da, db,
                        "bytes differ; every JSON value is equal (formatting)")
    return FileDiff(rel, "changed", changes, "json", da, db)


def _flat_json(path: Path) -> dict[str, Any] | None:
    if path.stat().st_size > MAX_JSON_BYTES:
        return None
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        return None
    out: dict[str, Any] = {}
    budget = [200_000]

    def walk(v: Any, name: str, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > 64:
            out[name or "$"] = {"truncated": True}
            return
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(x, f"{name}.{k}" if name else str(k), depth + 1)
        elif isinstance(v, list) and v and not all(
                isinstance(x, (int, float, str, bool)) or x is None for x in v):
            for i, x in enumerate(v):
                walk(x, f"{name}.{i}" if name else str(i), depth + 1)
        elif isinstance(v, float) and not math.isfinite(v):
            out[name] = {"float": repr(v)}
        else:
            out[name or "$"] = v

    walk(doc, "", 0)
    return out


# ------------------------------------------------------------------------------ value statistics
def tensor_stats(a: Path, ra: TensorRef, pa: Parsed, b: Path, rb: TensorRef,  # noqa: PLR0917
                 pb: Parsed) -> dict[str, Any]:
    """How much one tensor changed: elements, changed (bytes differ), fraction_changed,
    max_abs_diff, rel_l2 (``||new - old|| / ||old||``), nonfinite (non-finite values in the new
    tensor where the old one was finite). ``{"skipped": reason}`` when not computable."""
    if ra.dtype != rb.dtype or ra.shape != rb.shape:
        return {"skipped": "dtype or shape changed"}
    if ra.dtype not in _NP_DTYPES:
        return {"skipped": f"no numeric comparison for dtype {ra.dtype}"}
    try:
        import numpy as np
    except ImportError:
        return {"skipped": "numpy is not installed"}
    n = 1
    for s in ra.shape:
        n *= s
    acc = _Acc()
    try:
        with a.open("rb") as fa, b.open("rb") as fb:
            contiguous = all(r.stride is None or r.end - r.start == n * r.itemsize
                             for r in (ra, rb))
            if contiguous:
                step = max(1, _STATS_CHUNK // ra.itemsize) * ra.itemsize
                for off in range(0, n * ra.itemsize, step):
                    m = min(step, n * ra.itemsize - off)
                    acc.add(*(_as_float(np, _read(f, r, off, m), r.dtype, p.byteorder)
                              for f, r, p in ((fa, ra, pa), (fb, rb, pb))))
            else:
                if max(ra.end - ra.start, rb.end - rb.start) > MAX_STRIDED_BYTES:
                    return {"skipped": "strided view too large to compare"}
                acc.add(*(_strided(np, f, r, p) for f, r, p in ((fa, ra, pa), (fb, rb, pb))))
    except (MalformedInput, LimitExceeded, OSError, ValueError) as exc:
        return {"skipped": f"tensor bytes unreadable: {exc}"}
    return acc.result(n)


class _Acc:
    def __init__(self) -> None:
        self.changed = 0
        self.max_abs = 0.0
        self.ssd = 0.0
        self.ssa = 0.0
        self.nonfinite = 0

    def add(self, x: Any, y: Any) -> None:
        import numpy as np

        xr, yr = x[1], y[1]
        x, y = x[0], y[0]
        self.changed += int(np.count_nonzero(xr != yr))
        fx, fy = np.isfinite(x), np.isfinite(y)
        self.nonfinite += int(np.count_nonzero(fx & ~fy))
        both = fx & fy
        d = np.abs(y[both] - x[both])
        if d.size:
            self.max_abs = max(self.max_abs, float(d.max()))
            self.ssd += float(np.dot(d, d))
        xa = x[fx]
        self.ssa += float(np.dot(xa, xa))

    def result(self, n: int) -> dict[str, Any]:
        rel = math.sqrt(self.ssd) / math.sqrt(self.ssa) if self.ssa > 0 else (
            0.0 if self.ssd == 0 else None)
        return {"elements": n, "changed": self.changed,
                "fraction_changed": self.changed / n if n else 0.0,
                "max_abs_diff": self.max_abs, "rel_l2": rel, "nonfinite": self.nonfinite}


def _read(f: Any, r: TensorRef, off: int, n: int) -> bytes:
    sub = TensorRef(r.name, r.dtype, r.itemsize, r.shape, None, r.start + off, r.start + off + n,
                    r.base, r.member)
    return read_span(f, sub, Budget(1 << 62))


def _as_float(np: Any, raw: bytes, dtype: str, byteorder: str) -> tuple[Any, Any]:
    """(values as float64, raw element integers for the byte comparison)."""
    order = ">" if byteorder == "big" else "<"
    code = _NP_DTYPES[dtype]
    ints = np.frombuffer(raw, dtype=order + code if code[0] in "fiu" and code[1] != "1"
                         else code)
    if dtype == "BF16":
        # bfloat16 is the upper half of a float32 (IEEE 754 binary32 with 16 mantissa bits cut)
        vals = (ints.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    else:
        vals = ints.astype(np.float64)
    raw_ints = ints if code[0] != "f" else ints.view(f"{order}u{code[1]}")
    return vals, raw_ints


def _strided(np: Any, f: Any, r: TensorRef, p: Parsed) -> tuple[Any, Any]:
    raw = read_span(f, r, Budget(1 << 62))
    vals, ints = _as_float(np, raw, r.dtype, p.byteorder)
    stride = r.stride or ()
    from numpy.lib.stride_tricks import as_strided

    def view(arr: Any) -> Any:
        strides = tuple(s * arr.itemsize for s in stride)
        return as_strided(arr, shape=r.shape, strides=strides, writeable=False).reshape(-1)

    return view(vals), view(ints)
