"""Containers: zip (PyTorch, TorchScript, npz, Keras, plain), tar, 7z and compressed streams."""

from __future__ import annotations

import io
import os
import re
import tarfile
import zlib
from typing import Any, BinaryIO

from trainguard.artifacts.sniff import HEAD_SIZE
from trainguard.artifacts.streams import MissingCodec, open_compressed
from trainguard.artifacts.zipfmt import ZipArchive, ZipEntry, open_member, read_zip
from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.scan.analyzers.torch_tar import scan_legacy_tar_member
from trainguard.scan.context import Blob, ScanContext

# Members up to this size are read whole (and their CRC checked); larger ones are streamed.
_READ_WHOLE = 64 << 20
# Header disagreements listed per rule and archive before the rest are counted in one finding.
_MAX_ANOMALIES = 50
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TORCH_STORAGE = re.compile(r"^(?:[^/]+/)?data/\d+$")


def _name_tricks(name: str) -> str | None:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name):
        return "absolute path"
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        return "'..' path component"
    if _CONTROL.search(name):
        return "control character in name"
    return None


def _torch_prefix(arch: ZipArchive) -> str | None:
    """The record prefix of a PyTorch zip checkpoint (``archive/`` for torch.save), or None."""
    for e in arch.entries:
        m = re.match(r"^([^/]+/)?data\.pkl$", e.name)
        if m:
            return m.group(1) or ""
    return None


def analyze_zip(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    blob = ctx.materialize(blob)
    assert blob.size is not None
    with blob.opener() as f:
        arch = read_zip(f, blob.size, ctx.limits.max_members, ctx.limits.max_header_bytes)
        _report_anomalies(ctx, blob, arch.anomalies)
        if arch.prefix:
            ctx.add("TG-FMT-002", blob, f"{arch.prefix} byte(s) before the first zip member")
        prefix = _torch_prefix(arch)
        names = {e.name for e in arch.entries}
        torchscript = prefix is not None and (
            f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names)
        )
        if prefix is not None:
            ctx.saw("torchscript" if torchscript else "pytorch")
        policy = ctx.policy
        if torchscript:
            ctx.policy = policy.with_torchscript()
        try:
            for e in arch.entries:
                trick = _name_tricks(e.name)
                if trick:
                    ctx.add("TG-ZIP-002", blob, f"{e.name!r}: {trick}")
                if e.is_dir:
                    continue
                rel = e.name[len(prefix):] if prefix and e.name.startswith(prefix) else e.name
                if prefix is not None and _TORCH_STORAGE.match(rel):
                    continue  # tensor payload: raw bytes torch never unpickles; never read
                _scan_member(ctx, blob, f, e, depth, overlapping=arch.overlapping)
        finally:
            ctx.policy = policy
    return True


def _report_anomalies(ctx: ScanContext, blob: Blob, anomalies: list[tuple[str, str]]) -> None:
    """One finding per header disagreement, up to _MAX_ANOMALIES per rule; then a count."""
    dropped: dict[str, int] = {}
    listed: dict[str, int] = {}
    for name, desc in anomalies:
        rule_id = "TG-ZIP-002" if desc == "duplicate member name" else "TG-ZIP-001"
        if listed.get(rule_id, 0) >= _MAX_ANOMALIES:
            dropped[rule_id] = dropped.get(rule_id, 0) + 1
            continue
        listed[rule_id] = listed.get(rule_id, 0) + 1
        ctx.add(rule_id, blob, f"{name or '<archive>'}: {desc}")
    for rule_id, n in dropped.items():
        ctx.add(rule_id, blob, f"{n} more member(s) with the same kind of problem", count=n)


def _read_upto(m: BinaryIO, limit: int) -> bytes:
    """At most ``limit`` bytes, read in chunks: memory follows what the member really holds,
    not what its header claims."""
    parts: list[bytes] = []
    got = 0
    while got < limit:
        part = m.read(min(1 << 20, limit - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _scan_member(ctx: ScanContext, blob: Blob, f: BinaryIO, e: ZipEntry, depth: int, *,
                 overlapping: bool = False) -> None:
    if overlapping and e.method == 0:
        # Members that share bytes: stored ones are no decompression, yet reading the same
        # bytes once per central directory entry is the same bomb; charge them to the budget.
        ctx.budget.charge(e.csize)
    try:
        if e.usize <= _READ_WHOLE:
            with open_member(f, e, ctx.budget) as m:
                data = _read_upto(m, _READ_WHOLE + 1)
            if len(data) != e.usize:
                ctx.add("TG-ZIP-001", blob, f"{e.name}: {len(data)} bytes, central directory "
                        f"says {e.usize}")
            if e.method in (0, 8) and zlib.crc32(data) != e.crc:
                ctx.add("TG-ZIP-001", blob, f"{e.name}: CRC-32 mismatch (PyTorch ignores it)")
            child = blob.child_bytes(e.name, data)
        else:
            def opener(e: ZipEntry = e) -> BinaryIO:
                return open_member(f, e, ctx.budget)
            # a stored member is exactly its compressed bytes, whatever usize claims
            child = blob.child(e.name, e.csize if e.method == 0 else e.usize, opener,
                               seekable=e.method == 0)
    except MissingCodec as exc:
        ctx.add("TG-FMT-003", blob, f"{e.name}: {exc}")
        return
    except MalformedInput as exc:
        ctx.add("TG-FMT-001", blob, f"{e.name}: {exc.message}")
        return
    ctx.scan(child, depth + 1)


def analyze_tar(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    blob = ctx.materialize(blob)
    assert blob.size is not None
    count = 0
    files: list[tarfile.TarInfo] = []
    broken: str | None = None
    with blob.opener() as f:
        # tarfile reads GNU long names and pax headers whole, at whatever size the header
        # declares: every read it makes goes through a guard bounded by max_header_bytes.
        guarded = _HeaderReads(f, ctx.limits.max_header_bytes)
        try:
            tf = tarfile.open(fileobj=guarded, mode="r:")  # noqa: SIM115 - closed by `with tf`
        except _TAR_ERRORS as exc:
            raise MalformedInput(f"tar: {exc}") from None
        with tf:
            while True:
                try:
                    member = tf.next()
                except _TAR_ERRORS as exc:
                    # keep what was listed: members before the damage are still scanned
                    broken = f"tar: {exc}"
                    break
                if member is None:
                    break
                count += 1
                if count > ctx.limits.max_members:
                    raise LimitExceeded("max_members", ctx.limits.max_members, "tar archive")
                trick = _name_tricks(member.name)
                if trick:
                    ctx.add("TG-ZIP-002", blob, f"{member.name!r}: {trick}")
                if member.issym() or member.islnk():
                    lt = _name_tricks(member.linkname)
                    if lt:
                        ctx.add("TG-ZIP-002", blob, f"{member.name!r} links to "
                                f"{member.linkname!r}: {lt}")
                    continue
                if member.isfile():
                    files.append(member)
            if broken is None:
                broken = _tar_end_problem(f, tf.offset, blob.size)
            if broken is not None:
                ctx.add("TG-FMT-001", blob, broken)
            # torch < 0.4 wrote checkpoints as tar files whose 'storages' and 'tensors' members
            # interleave pickles with raw tensor bytes (torch/serialization.py legacy_load).
            legacy = {"storages", "tensors", "pickle"} <= {m.name for m in files}
            if legacy:
                ctx.saw("torch-legacy-tar")
            for member in files:
                start, size = member.offset_data, member.size
                if start + size > blob.size:
                    ctx.add("TG-FMT-001", blob, f"{member.name!r}: member data runs past the end "
                            f"of the archive ({size} bytes declared)", offset=start)
                    size = max(0, blob.size - start)

                def opener(start: int = start, size: int = size) -> BinaryIO:
                    from trainguard.artifacts.streams import SubFile

                    return io.BufferedReader(SubFile(f, start, size))  # type: ignore[arg-type]

                child = blob.child(member.name, size, opener)
                if legacy and member.name in ("storages", "tensors"):
                    scan_legacy_tar_member(ctx, child, member.name, depth + 1)
                else:
                    ctx.scan(child, depth + 1)
    ctx.saw("tar")
    return True


# tarfile raises TarError subclasses for bad headers, but also ValueError (GNU sparse maps,
# pax numbers), UnicodeError, OverflowError and OSError (a seek past 2**63) for hostile ones.
_TAR_ERRORS = (tarfile.TarError, ValueError, OverflowError, OSError, EOFError)
_TAR_TAIL = 64 << 10


def _tar_end_problem(f: BinaryIO, end: int, size: int) -> str | None:
    """Why the bytes after the last member are not an end-of-archive marker, or None.

    POSIX ustar ends with zero blocks (tarfile stops quietly at a truncated or damaged header,
    so a cut archive would otherwise pass as complete).
    """
    if end + 512 > size:
        return "tar: no end-of-archive marker after the last member (truncated archive)"
    f.seek(end)
    tail = f.read(_TAR_TAIL)
    if tail.count(0) == len(tail):
        return None
    return (f"tar: {size - end} byte(s) after the last member are not an end-of-archive "
            "marker (truncated or damaged header, or appended data)")


class _HeaderReads(io.RawIOBase):
    """The archive as tarfile sees it: any single read over ``limit`` bytes is refused.

    tarfile only reads headers through it (member data is read through SubFile), so the bound
    is on metadata: a 64 GiB GNU long-name header costs a finding, not 64 GiB of memory.
    """

    def __init__(self, f: BinaryIO, limit: int) -> None:
        super().__init__()
        self._f = f
        self._limit = limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if n is None or n < 0 or n > self._limit:
            raise LimitExceeded("max_header_bytes", self._limit,
                                f"tar header of {n} bytes")
        return self._f.read(n)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def analyze_compressed(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    from trainguard.artifacts.sniff import Format, sniff

    codec = {Format.GZIP: "gzip", Format.BZ2: "bz2", Format.XZ: "xz", Format.ZLIB: "zlib",
             Format.LZ4: "lz4"}[sniff(head, blob.size or 1 << 62)]

    def opener() -> BinaryIO:
        src = blob.opener()
        return open_compressed(src, codec, ctx.budget)

    child = blob.child(f"<{codec}>", None, opener, seekable=False)
    with opener() as f:
        inner_head = _read_head(f)
    if not inner_head:
        raise MalformedInput(f"empty {codec} stream")
    ctx.saw(codec)
    ctx.scan(child, depth + 1, inner_head)
    return True


def _read_head(f: BinaryIO) -> bytes:
    """The first HEAD_SIZE bytes of a decompressed stream, or fewer if it breaks after them: a
    stream cut in its trailer still gets its content analyzed (and the break reported there)."""
    read1 = getattr(f, "read1", f.read)  # one decompressor call at a time
    parts: list[bytes] = []
    got = 0
    while got < HEAD_SIZE:
        try:
            part = read1(HEAD_SIZE - got)
        except MalformedInput:
            if got:
                break
            raise
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def analyze_7z(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    try:
        import py7zr  # optional extra: trainguard[7z]
    except ImportError:
        raise MissingCodec("7z", "7z") from None
    blob = ctx.materialize(blob)
    with blob.opener() as f:
        try:
            with py7zr.SevenZipFile(f, mode="r") as z:
                if z.needs_password():
                    raise MissingCodec("encrypted 7z archive",
                                       "none: encrypted archives cannot be scanned")
                infos = [i for i in z.list() if not i.is_directory]
                if len(infos) > ctx.limits.max_members:
                    raise LimitExceeded("max_members", ctx.limits.max_members, "7z archive")
                declared = sum(int(i.uncompressed or 0) for i in infos)
                if declared > ctx.budget.limit - ctx.budget.used:
                    raise LimitExceeded("max_expanded_bytes", ctx.budget.limit,
                                        f"7z archive declares {declared} bytes")
                members = _read_7z(ctx, blob, z)
        except (LimitExceeded, MalformedInput, MissingCodec):
            raise
        except Exception as exc:
            # py7zr parses hostile bytes with struct, lzma, zlib, bz2 and its own checks, and
            # lets their exceptions through (LZMAError, struct.error, IndexError, ...)
            raise MalformedInput(f"7z: {type(exc).__name__}: {exc}") from None
    ctx.saw("7z")
    for name, member in sorted(members.items()):
        trick = _name_tricks(name)
        if trick:
            ctx.add("TG-ZIP-002", blob, f"{name!r}: {trick}")
        ctx.scan(member, depth + 1)
    return True


def _read_7z(ctx: ScanContext, blob: Blob, z: Any) -> dict[str, Blob]:
    """Every member of an open py7zr archive as a blob (py7zr < 1.0 ``readall``, 1.x factory).

    py7zr 1.x writes members through a factory: each write is charged to the decompression
    budget and lands in a spooled temp file, so a member that inflates past what it declared
    ends in LimitExceeded, not in memory exhaustion.
    """
    readall = getattr(z, "readall", None)
    if readall is not None:  # bounded by the declared-size check of the caller
        return {name: blob.child_bytes(name, bio.read())
                for name, bio in (readall() or {}).items()}
    from py7zr.io import Py7zIO, WriterFactory

    budget = ctx.budget

    class Spooled(Py7zIO):
        def __init__(self) -> None:
            self.f = ctx.spool()
            self.n = 0

        def write(self, s: bytes | bytearray) -> int:
            budget.charge(len(s))
            self.n += len(s)
            return self.f.write(s)

        def read(self, size: int | None = None) -> bytes:
            return self.f.read(-1 if size is None else size)

        def seek(self, offset: int, whence: int = 0) -> int:
            return self.f.seek(offset, whence)

        def flush(self) -> None:
            self.f.flush()

        def size(self) -> int:
            return self.n

    class Factory(WriterFactory):
        def __init__(self) -> None:
            self.products: dict[str, Spooled] = {}

        def create(self, filename: str) -> Py7zIO:
            product = self.products[filename] = Spooled()
            return product

    factory = Factory()
    z.extractall(factory=factory)  # noqa: S202 - into the factory above, never to disk paths
    return {name: ctx.spooled_blob(p.f, blob.path, blob.member_path(name))
            for name, p in factory.products.items()}
