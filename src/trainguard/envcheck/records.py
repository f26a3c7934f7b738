"""Installed distributions, read from ``*.dist-info`` directories as bytes (never imported).

PEP 376 / PEP 627 (the recording-installed-packages spec): RECORD is a CSV of
``path,algorithm=urlsafe-b64-digest-without-padding,size``; paths are relative to the directory
that holds the ``.dist-info`` (or absolute); RECORD itself and ``.pyc`` files carry no hash.
``INSTALLER`` names the tool, ``direct_url.json`` (PEP 610) says where an install came from and
whether it is editable. Everything here is bounded: a hostile RECORD cannot cost unbounded time
or memory, and a row naming a path outside the environment is reported, never followed.
"""

from __future__ import annotations

import binascii
import csv
import errno
import io
import json
import os
import re
import stat
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, NamedTuple

#: RECORD files larger than this are not parsed (torch's is ~3 MB)
MAX_RECORD_BYTES = 64 << 20
#: small metadata files (METADATA headers, INSTALLER, direct_url.json) read at most this much
MAX_META_BYTES = 1 << 20
#: a RECORD field longer than this is garbage, not a path or digest
MAX_FIELD = 8192
#: hash algorithms an installer may write (hashlib.algorithms_guaranteed minus md5/sha1)
RECORD_ALGORITHMS = ("sha256", "sha384", "sha512", "sha224", "blake2b", "blake2s",
                     "sha3_256", "sha3_384", "sha3_512")

_NAME_NORM = re.compile(r"[-_.]+")


def normalize_name(name: str) -> str:
    """PEP 503 normalised project name (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return _NAME_NORM.sub("-", name).lower()


class RecordEntry(NamedTuple):
    """One RECORD row: the path as written, the absolute path it names, hash and size.

    (A tuple: a torch environment has ~25k rows and they are read at every verify.)
    """

    raw: str
    #: the absolute, normalised path (links not resolved)
    path: str
    algorithm: str | None
    digest: bytes | None
    size: int | None


@dataclass(frozen=True)
class RecordProblem:
    """A RECORD row that was not followed, and why."""

    row: int
    text: str
    reason: str


@dataclass(frozen=True)
class Distribution:
    """An installed distribution found through its ``.dist-info`` directory."""

    name: str
    version: str
    dist_info: Path
    installer: str | None
    direct_url: dict[str, Any] | None
    #: None when the distribution has no RECORD (legacy or hand-made)
    record: Path | None
    entries: tuple[RecordEntry, ...] = ()
    problems: tuple[RecordProblem, ...] = field(default=(), hash=False, compare=False)

    @property
    def key(self) -> str:
        return normalize_name(self.name)

    @property
    def editable(self) -> bool:
        """PEP 660 / PEP 610: installed in editable (development) mode."""
        d = self.direct_url or {}
        info = d.get("dir_info")
        return isinstance(info, dict) and info.get("editable") is True


def read_regular(path: Path | str, limit: int) -> bytes:
    """Up to ``limit`` bytes of a regular file; OSError for anything else.

    Opened without following a final link and without blocking (a FIFO planted as METADATA
    must not hang the check), then confirmed to be a regular file before reading.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_small(path: Path, limit: int = MAX_META_BYTES) -> bytes | None:
    try:
        return read_regular(path, limit)
    except OSError:
        return None


_B64URL = re.compile(r"[A-Za-z0-9_-]+\Z")


def _decode_digest(text: str) -> bytes:
    # PEP 376: urlsafe base64 without '=' padding; restore it and decode strictly (binascii
    # directly: base64.b64decode's wrapper costs more than the decoding for 25k short digests)
    if _B64URL.match(text) is None or len(text) % 4 == 1:
        raise ValueError("not urlsafe base64 without padding")
    return binascii.a2b_base64(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4))


def parse_record(data: bytes, base: Path, root: Path) -> tuple[list[RecordEntry],
                                                                 list[RecordProblem]]:
    """Parse RECORD bytes; rows naming paths outside ``root`` (the environment) are problems.

    ``base`` is the directory relative paths start from (the site directory).
    """
    entries: list[RecordEntry] = []
    problems: list[RecordProblem] = []
    text = data.decode("utf-8", "replace")
    root_s = os.path.normpath(root)
    root_sep = root_s + os.sep
    base_s = os.path.normpath(base) + os.sep
    reader = csv.reader(io.StringIO(text))
    row_no = 0
    try:
        for row_no, row in enumerate(reader, 1):
            _parse_row(row_no, row, entries, problems, base, base_s, root_s, root_sep)
    except csv.Error as exc:
        problems.append(RecordProblem(row_no + 1, "", f"unparsable CSV: {exc}"))
    return entries, problems


def _parse_row(row_no: int, row: list[str], entries: list[RecordEntry],  # noqa: PLR0917
               problems: list[RecordProblem], base: Path, base_s: str, root_s: str,
               root_sep: str) -> None:
    """One RECORD row into ``entries`` or ``problems``."""
    if not row or (len(row) == 1 and not row[0].strip()):
        return
    if len(row) != 3 or len(row[0]) > MAX_FIELD or len(row[1]) > MAX_FIELD or len(
            row[2]) > MAX_FIELD:
        problems.append(RecordProblem(row_no, ",".join(row)[:200],
                                      "not three fields of sane length"))
        return
    raw, hash_field, size_field = row
    if not raw or "\x00" in raw:
        problems.append(RecordProblem(row_no, ",".join(row)[:200], "empty path or NUL byte"))
        return
    # Normalise without touching the file system (no symlink resolution: a link is judged
    # by where it sits, and its target is never followed). Most rows are plain relative
    # paths: joined directly; anything with '.', '..', '//' or a leading '/' is normalised.
    if raw[0] != "/" and raw[-1] != "/" and "//" not in raw and "/." not in "/" + raw:
        full = base_s + raw  # no '.', '..' or empty component: already normal
    else:
        full = os.path.normpath(os.path.join(base, raw))
    if full != root_s and not full.startswith(root_sep):
        problems.append(RecordProblem(row_no, ",".join(row)[:200],
                                      "path leaves the environment"))
        return
    algo: str | None = None
    digest: bytes | None = None
    if hash_field:
        algo, sep, b64 = hash_field.partition("=")
        try:
            if not sep or algo not in RECORD_ALGORITHMS:
                raise ValueError(f"unsupported hash {algo!r}")
            digest = _decode_digest(b64)
        except (ValueError, binascii.Error) as exc:
            problems.append(RecordProblem(row_no, ",".join(row)[:200],
                                          f"bad hash field: {exc}"))
            return
    size: int | None = None
    if size_field:
        if not (size_field.isascii() and size_field.isdigit()) or len(size_field) > 18:
            problems.append(RecordProblem(row_no, ",".join(row)[:200], "bad size field"))
            return
        size = int(size_field)
    entries.append(RecordEntry(raw, full, algo, digest, size))


def _metadata(dist_info: Path) -> tuple[str, str]:
    data = _read_small(dist_info / "METADATA") or _read_small(dist_info / "PKG-INFO") or b""
    # Only the header block matters; HeaderParser never evaluates anything.
    head = data.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    msg = HeaderParser().parsestr(head)
    name = str(msg.get("Name") or "").strip()
    version = str(msg.get("Version") or "").strip()
    if not name or not version:
        # fall back on the directory name: NAME-VERSION.dist-info (the wheel spec's escaping)
        stem = dist_info.name.rsplit(".", 1)[0]
        n, _, v = stem.partition("-")
        name, version = name or n, version or v
    return name[:200], version[:100]


def read_distribution(dist_info: Path, root: Path) -> Distribution:
    """Read one ``.dist-info`` (or ``.egg-info``) directory; never raises for bad content."""
    name, version = _metadata(dist_info)
    inst = _read_small(dist_info / "INSTALLER", 256)
    installer = inst.decode("utf-8", "replace").strip() if inst else None
    direct_url: dict[str, Any] | None = None
    du = _read_small(dist_info / "direct_url.json")
    if du:
        try:
            parsed = json.loads(du)
            direct_url = parsed if isinstance(parsed, dict) else None
        except (ValueError, RecursionError):
            direct_url = None
    record = dist_info / "RECORD"
    if not record.is_file() or record.is_symlink():
        return Distribution(name, version, dist_info, installer, direct_url, None)
    problems: list[RecordProblem] = []
    try:
        size = record.stat().st_size
        if size > MAX_RECORD_BYTES:
            problems.append(RecordProblem(0, "", f"RECORD is {size} bytes (limit "
                                                 f"{MAX_RECORD_BYTES}); not parsed"))
            return Distribution(name, version, dist_info, installer, direct_url, record,
                                (), tuple(problems))
        data = read_regular(record, MAX_RECORD_BYTES)
    except OSError as exc:
        problems.append(RecordProblem(0, "", f"cannot read RECORD: {exc.strerror or exc}"))
        return Distribution(name, version, dist_info, installer, direct_url, record, (),
                            tuple(problems))
    entries, more = parse_record(data, dist_info.parent, root)
    return Distribution(name, version, dist_info, installer, direct_url, record,
                        tuple(entries), tuple(problems + more))


def find_distributions(site_dirs: list[Path], root: Path) -> list[Distribution]:
    """Every ``*.dist-info`` and ``*.egg-info`` directory directly in the site directories.

    ``root`` bounds where RECORD rows may point (the environment's prefix, or the site directory
    when it lies outside the prefix).
    """
    out: list[Distribution] = []
    for site in site_dirs:
        try:
            names = sorted(os.listdir(site))
        except OSError:
            continue
        bound = root if _inside(site, root) else site
        for n in names:
            if n.endswith((".dist-info", ".egg-info")):
                p = site / n
                if p.is_dir() and not p.is_symlink():
                    out.append(read_distribution(p, bound))
    return out


def _inside(path: Path, root: Path) -> bool:
    p, r = os.path.normpath(path), os.path.normpath(root)
    return p == r or p.startswith(r + os.sep)
