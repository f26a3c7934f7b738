"""Per-tensor digests of checkpoints, read without unpickling anything.

``tensor_manifest(path)`` names every tensor of a safetensors file or a PyTorch zip checkpoint
(``torch.save``, format of torch >= 1.6) with the digest of its bytes, and lists the checkpoint's
scalars: optimizer hyperparameters (``optimizer.param_groups.0.lr``, ``...betas``), counters
(``step``, ``epoch``), strings, and digests of RNG states. Two manifests compared with
``compare_manifests`` say which tensor or hyperparameter changed.

What is read, and how:

* safetensors: the header (``u64`` length + JSON), validated like the reference loader does
  (``scan/analyzers/safetensors.py``); each tensor's digest is the sha256 of its
  ``data_offsets`` byte range.
* PyTorch zip: ``<prefix>/data.pkl`` runs through the symbolic pickle machine of ``scan/pickle``
  (never executed). A tensor is a call to ``torch._utils._rebuild_tensor_v2/v3`` (possibly inside
  ``_rebuild_parameter``) whose first argument is a persistent id ``("storage", <storage class>,
  key, location, numel)`` (torch/serialization.py ``_save``/``_load``); its bytes live in the zip
  member ``<prefix>/data/<key>``. The digest is the sha256 of **the storage slice the tensor
  views**: from ``storage_offset`` to the last element it can reach through its size and stride
  (``(offset + 1 + sum((size_i - 1) * stride_i)) * itemsize``). For a contiguous tensor that is
  exactly its data; tensors that share a storage (views, tied weights) each digest their own slice,
  so a changed byte names every tensor that sees it. Bytes inside a storage that no tensor views
  are covered only by the file digest; every other zip member (version records, storages no
  tensor uses, anything hidden there) is digested as scalar ``__zip__/<member>``, bytes after
  the pickle's STOP as ``__trailing__``.
* numpy arrays pickled inline (``numpy.random.get_state()``) are digested from their pickled bytes;
  Python's ``random.getstate()`` tuple becomes a digest of its integers.
* a plain pickle (protocol 2-5) gives its scalars and inline arrays the same way (format
  ``pickle``).

Legacy (pre-1.6, non-zip) torch files and TorchScript archives return a manifest whose
``unsupported`` note says only the file digest covers them. Hostile input raises
:class:`MalformedInput` or :class:`LimitExceeded` after bounded work.

Example::

    from trainguard.integrity.tensors import compare_manifests, tensor_manifest
    old = tensor_manifest("ckpt-100/pytorch_model.bin")
    new = tensor_manifest("copy/pytorch_model.bin")
    for change in compare_manifests(old, new):
        print(change["change"], change["kind"], change["name"])
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from trainguard.artifacts.reader import Reader
from trainguard.artifacts.streams import Budget
from trainguard.artifacts.zipfmt import ZipEntry, open_member, read_zip
from trainguard.core.errors import InputError, LimitExceeded, MalformedInput
from trainguard.integrity.ckptwalk import (
    ManifestLimits,
    ManifestMachine,
    Parsed,
    TensorRef,
    Walker,
    bounded_str,
    contiguous,
)
from trainguard.integrity.hashing import range_digests

if TYPE_CHECKING:
    from trainguard.integrity.cache import DigestCache

MANIFEST_VERSION = 1


def tensor_manifest(path: str | os.PathLike[str], *, limits: ManifestLimits | None = None,
                    cache: DigestCache | None = None) -> dict[str, Any] | None:
    """The JSON-serialisable tensor manifest of a checkpoint, or None for other files.

    Shape: ``{"version": 1, "format": "safetensors"|"torch"|..., "hash": "sha256",
    "tensors": {name: {"dtype", "shape", "digest", "nbytes"}}, "scalars": {dotted key: value}}``,
    plus ``"unsupported": note`` for formats whose tensors cannot be located. With ``cache`` a
    file whose (device, inode, size, ctime) did not change is not read again.
    """
    p = Path(path)
    if cache is not None:
        return cache.manifest(p, lambda fd: _manifest_fd(p, fd, limits))
    fd = _open(p)
    try:
        return _manifest_fd(p, fd, limits)
    finally:
        os.close(fd)


def _manifest_fd(path: Path, fd: int, limits: ManifestLimits | None) -> dict[str, Any] | None:
    parsed = _parse_fd(path, fd, limits or ManifestLimits())
    if parsed is None:
        return None
    return build_manifest(path, parsed, limits, fd=fd)


def build_manifest(path: Path, parsed: Parsed, limits: ManifestLimits | None = None, *,
                   fd: int | None = None) -> dict[str, Any]:
    """The manifest of an already parsed checkpoint (digests its tensors' bytes, read from
    ``fd`` when given: the descriptor it was parsed from)."""
    refs = list(parsed.tensors.values())
    digests = _digest_refs(path, refs, limits or ManifestLimits(), fd)
    tensors: dict[str, Any] = {}
    for ref, d in zip(refs, digests, strict=True):
        entry: dict[str, Any] = {"dtype": ref.dtype, "shape": list(ref.shape), "digest": d,
                                 "nbytes": ref.end - ref.start}
        if ref.storage is not None:
            entry["storage"] = ref.storage
            entry["storage_offset"] = ref.storage_offset
        if ref.stride is not None and ref.stride != contiguous(ref.shape):
            entry["stride"] = list(ref.stride)
        tensors[ref.name] = entry
    tensors.update(parsed.inline)
    out: dict[str, Any] = {"version": MANIFEST_VERSION, "format": parsed.format,
                           "hash": "sha256", "tensors": dict(sorted(tensors.items())),
                           "scalars": dict(sorted(parsed.scalars.items()))}
    if parsed.byteorder != "little":
        out["byteorder"] = parsed.byteorder
    if parsed.unsupported:
        out["unsupported"] = parsed.unsupported
    return out


def parse_checkpoint(path: Path, limits: ManifestLimits | None = None) -> Parsed | None:
    """Locate the tensors and scalars of a checkpoint (no digests yet); None if not one."""
    fd = _open(path)
    try:
        return _parse_fd(path, fd, limits or ManifestLimits())
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    return fd


def _parse_fd(path: Path, fd: int, limits: ManifestLimits) -> Parsed | None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file")
    # Only the formats torch.save and safetensors write are recognised, by their first bytes
    # (a full content sniff costs more than the rest for thousands of small files).
    head = os.pread(fd, 16, 0)
    with open(fd, "rb", closefd=False) as f:
        if head[:4] == b"PK\x03\x04":
            return _parse_torch_zip(f, st.st_size, limits)
        if len(head) >= 10 and head[8:9] == b"{":
            (n,) = struct.unpack_from("<Q", head)
            if n <= st.st_size - 8:
                return _parse_safetensors(f, st.st_size, limits)
        if head.startswith(_LEGACY_MAGIC):
            return Parsed("torch-legacy", unsupported="legacy (pre-1.6) torch serialization: "
                          "tensors are not located; only the file digest covers it")
        if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            return _parse_pickle(f, st.st_size, limits)
    return None


#: torch/serialization.py _legacy_save: pickle.dump(MAGIC_NUMBER, f, protocol=2) comes first
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def _parse_pickle(f: BinaryIO, size: int, limits: ManifestLimits) -> Parsed:
    """A plain pickle (``pickle.dump`` of a dict of values): its scalars and inline arrays."""
    if size > limits.max_pickle_bytes:
        raise LimitExceeded("max_pickle_bytes", limits.max_pickle_bytes, f"pickle of {size} bytes")
    f.seek(0)
    p = Parsed("pickle")
    Walker(p, limits, {}, "").walk(_run_pickle(f.read(size), "pickle", limits, p), "", 0)
    return p


def _run_pickle(data: bytes, what: str, limits: ManifestLimits, p: Parsed) -> object:
    """The symbolic value of a pickle; bytes after its STOP (which loaders never read, so a
    place to hide data) are digested as scalar ``__trailing__``."""
    machine = ManifestMachine(Reader.from_bytes(data), max_opcodes=limits.max_pickle_opcodes)
    res = machine.run()
    if res.limit is not None:
        raise res.limit
    if res.error is not None or not res.completed:
        raise MalformedInput(f"{what}: {res.error or 'pickle did not complete'}",
                             res.error_offset)
    if res.end < len(data):
        rest = data[res.end:]
        p.scalars["__trailing__"] = {"bytes": len(rest), "digest": hashlib.sha256(rest).hexdigest()}
    return res.value


# ------------------------------------------------------------------------------ safetensors
def _parse_safetensors(f: BinaryIO, size: int, limits: ManifestLimits) -> Parsed:
    from trainguard.scan.analyzers.safetensors import DTYPE_BITS, parse_header, validate_header

    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(limits.max_header_bytes, size - 8):
        raise MalformedInput(f"safetensors header length {n} is larger than the file or the "
                             f"{limits.max_header_bytes}-byte limit", 0)
    f.seek(8)
    doc = parse_header(Reader(f, size).read(n))
    data_len = size - 8 - n
    problems = validate_header(doc, data_len)
    if problems:
        tensor, text = problems[0]
        raise MalformedInput(f"safetensors header: {f'tensor {tensor!r}: ' if tensor else ''}"
                             f"{text}", 8)
    p = Parsed("safetensors")
    if len(doc) > limits.max_tensors:
        raise LimitExceeded("max_tensors", limits.max_tensors, "safetensors header")
    for name, info in doc.items():
        if name == "__metadata__":
            for k, v in (info or {}).items():
                p.scalars[f"__metadata__.{k}"] = bounded_str(v, limits)
            continue
        begin, end = info["data_offsets"]
        bits = DTYPE_BITS[info["dtype"]]
        p.tensors[name] = TensorRef(name, info["dtype"], max(1, bits // 8), tuple(info["shape"]),
                                    None, begin, end, base=8 + n)
    return p


# ------------------------------------------------------------------------------ torch zip
def _parse_torch_zip(f: BinaryIO, size: int, limits: ManifestLimits) -> Parsed | None:
    f.seek(0)
    arch = read_zip(f, size, limits.max_members, limits.max_header_bytes)
    by_name = {e.name: e for e in arch.entries}
    pkl = [e for e in arch.entries if e.name == "data.pkl" or
           (e.name.endswith("/data.pkl") and e.name.count("/") == 1)]
    if not pkl:
        return None
    entry = pkl[0]
    prefix = entry.name[: -len("data.pkl")]
    if f"{prefix}constants.pkl" in by_name or any(n.startswith(f"{prefix}code/") for n in by_name):
        return Parsed("torchscript", unsupported="TorchScript archive: tensors are not located; "
                      "only the file digest covers it")
    p = Parsed("torch")
    order = by_name.get(f"{prefix}byteorder")
    if order is not None and order.usize <= 16:
        with open_member(f, order, Budget(1 << 10)) as m:
            p.byteorder = m.read(16).decode("ascii", "replace").strip() or "little"
    if entry.usize > limits.max_pickle_bytes:
        raise LimitExceeded("max_pickle_bytes", limits.max_pickle_bytes,
                            f"{entry.name} of {entry.usize} bytes")
    budget = Budget(limits.max_expanded_bytes)
    with open_member(f, entry, budget) as m:
        data = m.read(limits.max_pickle_bytes + 1)
    Walker(p, limits, by_name, prefix).walk(_run_pickle(data, entry.name, limits, p), "", 0)
    _other_members(f, p, arch.entries, prefix, entry, budget)
    return p


#: members that differ between two saves of the same object (torch >= 2.1 writes a random id)
_VOLATILE = frozenset({".data/serialization_id"})


def _other_members(f: BinaryIO, p: Parsed, entries: list[ZipEntry], prefix: str,  # noqa: PLR0917
                   pkl: ZipEntry, budget: Budget) -> None:
    """Digest every member that is neither data.pkl nor a storage some tensor views, as scalar
    ``__zip__/<name>``: version records, and bytes a loader ignores but an attacker may hide."""
    used = {id(r.member) for r in p.tensors.values()}
    for e in entries:
        if e is pkl or id(e) in used or e.is_dir:
            continue
        rel = e.name[len(prefix):] if e.name.startswith(prefix) else e.name
        if rel in _VOLATILE:
            continue
        if e.data_offset < 0:
            p.scalars[f"__zip__/{rel}"] = {"unreadable": True}
            continue
        h = hashlib.sha256()
        n = 0
        with open_member(f, e, budget) as m:
            while chunk := m.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
        p.scalars[f"__zip__/{rel}"] = {"bytes": n, "digest": h.hexdigest()}


# ------------------------------------------------------------------------------ digests
def _digest_refs(path: Path, refs: list[TensorRef], limits: ManifestLimits,
                 fd_in: int | None = None) -> list[str]:
    """sha256 (hex) of each tensor's byte span, one thread per CPU over the file's ranges."""
    direct = [r for r in refs if r.base >= 0]
    out: dict[int, str] = {}
    fd = os.dup(fd_in) if fd_in is not None else _open(path)
    try:
        ranges = [(r.base + r.start, r.base + r.end) for r in direct]
        try:
            ds = range_digests(path, ranges, fd=fd, workers=None)
        except ValueError as exc:  # a range outside the file: the file changed or lies
            raise MalformedInput(str(exc)) from None
        for r, d in zip(direct, ds, strict=True):
            out[id(r)] = d.hex()
        budget = Budget(limits.max_expanded_bytes)
        with open(fd, "rb", closefd=False) as f:
            for r in refs:
                if r.base < 0:
                    out[id(r)] = hashlib.sha256(read_span(f, r, budget)).hexdigest()
    finally:
        os.close(fd)
    return [out[id(r)] for r in refs]


def read_span(f: BinaryIO, ref: TensorRef, budget: Budget) -> bytes:
    """The bytes of a tensor's span (for compressed members and for value diffs)."""
    n = ref.end - ref.start
    if ref.base >= 0:
        f.seek(ref.base + ref.start)
        data = f.read(n)
    else:
        assert ref.member is not None
        with open_member(f, ref.member, budget) as m:
            reader = Reader(m)
            reader.skip(ref.start)
            data = reader.read(n) if n else b""
    if len(data) != n:
        raise MalformedInput(f"tensor {ref.name!r}: {len(data)} of {n} bytes readable")
    return data


# ------------------------------------------------------------------------------ comparison
def category(name: str) -> str:
    """What a dotted name is about: ``optimizer``, ``rng``, ``metadata`` or ``weights``."""
    parts = name.lower().split(".")
    if any(p in ("optimizer", "optimizer_states", "optim", "param_groups", "exp_avg",
                 "exp_avg_sq", "momentum_buffer", "lr_scheduler", "scheduler") for p in parts):
        return "optimizer"
    if any(p in ("rng", "rng_state", "rng_states", "random_state", "generator", "python",
                 "numpy", "cuda", "cpu", "mps", "torch_rng_state", "numpy_rng_state")
           for p in parts[:2]) or "rng" in parts:
        return "rng"
    if parts[0].startswith(("__zip__/", "__trailing__")) or parts[0] in (
            "__metadata__", "step", "epoch", "global_step", "metadata", "args", "config",
            "hyper_parameters", "version"):
        return "metadata"
    return "weights"


def compare_manifests(old: dict[str, Any] | None,
                      new: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What differs between two manifests: one dict per changed, added or removed tensor/scalar.

    Each change: ``{"kind": "tensor"|"scalar"|"format", "name", "change": "changed"|"added"|
    "removed", "category": "weights"|"optimizer"|"rng"|"metadata", "old", "new"}`` and, for a
    changed tensor, ``"fields"`` (which of dtype, shape, digest differ).
    """
    if old is None and new is None:
        return []
    old = old or {"format": None, "tensors": {}, "scalars": {}}
    new = new or {"format": None, "tensors": {}, "scalars": {}}
    changes: list[dict[str, Any]] = []
    if old.get("format") != new.get("format"):
        changes.append({"kind": "format", "name": "", "change": "changed", "category": "metadata",
                        "old": old.get("format"), "new": new.get("format")})
    for kind, key in (("tensor", "tensors"), ("scalar", "scalars")):
        a: dict[str, Any] = old.get(key) or {}
        b: dict[str, Any] = new.get(key) or {}
        for name in sorted(set(a) | set(b)):
            base = {"kind": kind, "name": name, "category": category(name)}
            if name not in b:
                changes.append({**base, "change": "removed", "old": a[name], "new": None})
            elif name not in a:
                changes.append({**base, "change": "added", "old": None, "new": b[name]})
            elif kind == "tensor":
                fields = [f for f in ("dtype", "shape", "digest")
                          if a[name].get(f) != b[name].get(f)]
                if fields:
                    changes.append({**base, "change": "changed", "fields": fields,
                                    "old": _brief(a[name]), "new": _brief(b[name])})
            elif a[name] != b[name]:
                changes.append({**base, "change": "changed", "old": a[name], "new": b[name]})
    return changes


def _brief(t: dict[str, Any]) -> dict[str, Any]:
    return {k: t.get(k) for k in ("dtype", "shape", "digest")}


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


__all__ = ["ManifestLimits", "Parsed", "TensorRef", "build_manifest", "category",
           "compare_manifests",
           "manifest_digest", "parse_checkpoint", "read_span", "tensor_manifest"]
