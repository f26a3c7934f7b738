"""Containers: zip (PyTorch, TorchScript, npz, Keras, plain), tar, 7z and compressed streams."""

from __future__ import annotations

import io
import re
import tarfile
import zlib
from typing import BinaryIO

from trainguard.artifacts.sniff import HEAD_SIZE
from trainguard.artifacts.streams import MissingCodec, open_compressed
from trainguard.artifacts.zipfmt import ZipArchive, ZipEntry, open_member, read_zip
from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.scan.analyzers.torch_tar import scan_legacy_tar_member
from trainguard.scan.context import Blob, ScanContext

# Members up to this size are read whole (and their CRC checked); larger ones are streamed.
_READ_WHOLE = 64 << 20
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
        arch = read_zip(f, blob.size, ctx.limits.max_members)
        for name, desc in arch.anomalies:
            rule_id = "TG-ZIP-002" if desc == "duplicate member name" else "TG-ZIP-001"
            ctx.add(rule_id, blob, f"{name or '<archive>'}: {desc}")
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
                if prefix is not None and _TORCH_STORAGE.match(e.name[len(prefix):] if e.name.startswith(prefix) else e.name):
                    continue  # tensor payload: raw bytes torch never unpickles; never read
                _scan_member(ctx, blob, f, e, depth)
        finally:
            ctx.policy = policy
    return True


def _scan_member(ctx: ScanContext, blob: Blob, f: BinaryIO, e: ZipEntry, depth: int) -> None:
    try:
        if e.usize <= _READ_WHOLE:
            with open_member(f, e, ctx.budget) as m:
                data = m.read(_READ_WHOLE + 1)
            if len(data) != e.usize:
                ctx.add("TG-ZIP-001", blob, f"{e.name}: {len(data)} bytes, central directory "
                        f"says {e.usize}")
            if e.method in (0, 8) and zlib.crc32(data) != e.crc:
                ctx.add("TG-ZIP-001", blob, f"{e.name}: CRC-32 mismatch (PyTorch ignores it)")
            child = Blob.from_bytes(blob.path, _join(blob, e.name), data)
        else:
            def opener(e: ZipEntry = e) -> BinaryIO:
                return open_member(f, e, ctx.budget)
            child = blob.child(e.name, e.usize, opener, seekable=e.method == 0)
    except MissingCodec as exc:
        ctx.add("TG-FMT-003", blob, f"{e.name}: {exc}")
        return
    except MalformedInput as exc:
        ctx.add("TG-FMT-001", blob, f"{e.name}: {exc.message}")
        return
    ctx.scan(child, depth + 1)


def _join(blob: Blob, name: str) -> str:
    return f"{blob.member}!/{name}" if blob.member else name


def analyze_tar(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    blob = ctx.materialize(blob)
    count = 0
    files: list[tarfile.TarInfo] = []
    with blob.opener() as f:
        try:
            tf = tarfile.open(fileobj=f, mode="r:")
        except tarfile.TarError as exc:
            raise MalformedInput(f"tar: {exc}") from None
        with tf:
            while True:
                try:
                    member = tf.next()
                except tarfile.TarError as exc:
                    raise MalformedInput(f"tar: {exc}") from None
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
            # torch < 0.4 wrote checkpoints as tar files whose 'storages' and 'tensors' members
            # interleave pickles with raw tensor bytes (torch/serialization.py legacy_load).
            legacy = {"storages", "tensors", "pickle"} <= {m.name for m in files}
            if legacy:
                ctx.saw("torch-legacy-tar")
            for member in files:
                start, size = member.offset_data, member.size

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


def analyze_compressed(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    from trainguard.artifacts.sniff import Format, sniff

    codec = {Format.GZIP: "gzip", Format.BZ2: "bz2", Format.XZ: "xz", Format.ZLIB: "zlib",
             Format.LZ4: "lz4"}[sniff(head, blob.size or 1 << 62)]

    def opener() -> BinaryIO:
        src = blob.opener()
        return open_compressed(src, codec, ctx.budget)

    child = blob.child(f"<{codec}>", None, opener, seekable=False)
    with opener() as f:
        inner_head = f.read(HEAD_SIZE)
    if not inner_head:
        raise MalformedInput(f"empty {codec} stream")
    ctx.saw(codec)
    ctx.scan(child, depth + 1, inner_head)
    return True


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
                    raise MissingCodec("encrypted 7z archive", "none: encrypted archives cannot be scanned")
                infos = [i for i in z.list() if not i.is_directory]
                if len(infos) > ctx.limits.max_members:
                    raise LimitExceeded("max_members", ctx.limits.max_members, "7z archive")
                declared = sum(int(i.uncompressed or 0) for i in infos)
                ctx.budget.charge(declared)
                data = z.readall() or {}
        except (py7zr.exceptions.Bad7zFile, py7zr.exceptions.ArchiveError, EOFError,
                KeyError, ValueError, OSError) as exc:
            raise MalformedInput(f"7z: {exc}") from None
    ctx.saw("7z")
    for name, bio in sorted(data.items()):
        payload = bio.read()
        trick = _name_tricks(name)
        if trick:
            ctx.add("TG-ZIP-002", blob, f"{name!r}: {trick}")
        ctx.scan(Blob.from_bytes(blob.path, _join(blob, name), payload), depth + 1)
    return True
