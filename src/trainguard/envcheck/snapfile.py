"""Environment snapshots: every file's digest and metadata, kept outside the environment.

Format ``trainguard.env-snapshot`` version 1 (docs/env.md). ``files`` maps a path key (relative
to the prefix) to an array ``[kind, size, mode, mtime_ns, ctime_ns, digest, owner]`` (field names
in ``file_fields``): arrays keep a 25k-file snapshot small and quick to load, which is what the
``--quick`` check at every job start pays for. ``digest`` is the sha256 hex of a regular file, a
link's target text, or null. A detached signature (``SNAP.sig``) signs the snapshot's exact bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from trainguard.core.errors import InputError, VerificationError
from trainguard.envcheck.common import LOADER_VARIABLES, loader_variables  # noqa: F401
from trainguard.envcheck.probe import Interpreter

if TYPE_CHECKING:
    from trainguard.envcheck.inventory import Entry, Inventory
    from trainguard.envcheck.quickindex import QuickIndex

FORMAT = "trainguard.env-snapshot"
FORMAT_VERSION = 1
SIGNATURE_FORMAT = "trainguard.env-snapshot-signature"
FILE_FIELDS = ("kind", "size", "mode", "mtime_ns", "ctime_ns", "digest", "owner")
#: largest snapshot file read (a torch environment's is ~4 MB)
MAX_SNAPSHOT_BYTES = 512 << 20
class FileRecord(NamedTuple):
    """One file of a snapshot (a tuple: tens of thousands are loaded at every quick check)."""

    kind: str
    size: int
    mode: int
    mtime_ns: int
    ctime_ns: int
    digest: str | None
    owner: int

    def to_list(self) -> list[Any]:
        return list(self)


@dataclass
class Snapshot:
    """A parsed snapshot (see the module docstring for the on-disk form)."""

    interpreter: Interpreter
    interpreter_sha256: str
    variables: dict[str, str]
    distributions: list[dict[str, Any]]
    hooks: list[dict[str, Any]]
    files: dict[str, FileRecord]
    dirs: dict[str, tuple[int, int, int]]
    environment_digest: str
    created: str = ""
    tool_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> Path:
        return Path(self.interpreter.prefix)

    def path(self, key: str) -> Path:
        from trainguard.envcheck.inventory import key_path

        return key_path(key, self.prefix)

    def to_dict(self) -> dict[str, Any]:
        from trainguard import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": self.created,
            "tool": {"name": "trainguard", "version": self.tool_version or __version__},
            "environment_digest": self.environment_digest,
            "algorithm": "sha256",
            "interpreter": {**self.interpreter.to_dict(), "sha256": self.interpreter_sha256},
            "variables": self.variables,
            "distributions": self.distributions,
            "hooks": self.hooks,
            "file_fields": list(FILE_FIELDS),
            "files": {k: v.to_list() for k, v in sorted(self.files.items())},
            "dirs": {k: list(v) for k, v in sorted(self.dirs.items())},
            **self.extra,
        }

    def to_bytes(self) -> bytes:
        # one line per file keeps diffs of two snapshot files readable
        d = self.to_dict()
        tables = {name: d.pop(name) for name in ("dirs", "files")}
        head = json.dumps(d, indent=1, sort_keys=True, ensure_ascii=False)
        parts = [head[:-2]]
        for name, table in tables.items():
            body = ",\n".join(f"  {json.dumps(k, ensure_ascii=False)}: "
                               f"{json.dumps(v, ensure_ascii=False)}" for k, v in table.items())
            parts.append(f',\n "{name}": {{\n{body}\n }}')
        # the quick index last, on one line (quickindex.find_member reads it without the JSON)
        from trainguard.envcheck.quickindex import MEMBER, QuickIndex

        parts.append(f',\n "{MEMBER}": "{QuickIndex.from_snapshot(self).encode()}"')
        return ("".join(parts) + "\n}\n").encode("utf-8")


def environment_digest(interp_sha256: str, interp: Interpreter,
                       files: dict[str, FileRecord]) -> str:
    """sha256 over the interpreter and every file's kind and digest (never times or modes).

    Two environments with the same interpreter and the same bytes at the same relative paths have
    the same digest, wherever their prefix is.
    """
    from trainguard.core.events import canonical_json

    body = {
        "interpreter": {"implementation": interp.implementation, "version": interp.version,
                        "sha256": interp_sha256},
        "files": [[k, r.kind, r.digest] for k, r in sorted(files.items())],
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


def distribution_digest(keys: list[str], files: dict[str, FileRecord]) -> str:
    """sha256 over a distribution's files (path key and digest), sorted by key."""
    from trainguard.core.events import canonical_json

    body = [[k, files[k].digest if k in files else None] for k in sorted(keys)]
    return hashlib.sha256(canonical_json(body)).hexdigest()


def interpreter_digest(interp: Interpreter) -> str:
    """sha256 of the interpreter executable (links resolved: the bytes that run)."""
    from trainguard.integrity.hashing import file_digest

    try:
        return file_digest(Path(os.path.realpath(interp.executable))).hex()
    except OSError as exc:
        raise InputError(f"cannot read interpreter {interp.executable}: {exc}") from None


def take_snapshot(python: str | os.PathLike[str] | None = None, *, workers: int | None = None,
                  progress: Callable[[Path, int], None] | None = None,
                  environ: dict[str, str] | None = None) -> tuple[Snapshot, Inventory]:
    """Inspect the environment of ``python`` (never importing its packages) and hash it all."""
    from trainguard.envcheck.checks import hook_records
    from trainguard.envcheck.inventory import collect
    from trainguard.envcheck.probe import probe
    from trainguard.integrity.hashing import digest_files

    inv = collect(probe(python))
    regular = sorted((e for e in inv.files.values() if e.kind == "file"),
                     key=lambda e: -e.size)  # biggest first: both cores stay busy to the end
    digests, unreadable = hash_entries(regular, digest_files, workers, progress)
    files: dict[str, FileRecord] = {}
    bad_keys = sorted(inv.errors)
    for k, e in inv.files.items():
        if e.path in unreadable:
            bad_keys.append(k)
            continue
        dig = (digests[e.path].hex() if e.kind == "file" and e.path in digests
               else e.target if e.kind == "link" else None)
        files[k] = FileRecord(e.kind, e.size, e.mode, e.mtime_ns, e.ctime_ns, dig,
                              inv.owners.get(k, -1))
    owned: dict[int, list[str]] = {}
    for k, i in inv.owners.items():
        owned.setdefault(i, []).append(k)
    dists = []
    for i, dist in enumerate(inv.distributions):
        rec = inv.key(dist.record) if dist.record else None
        dists.append({
            "name": dist.name, "version": dist.version, "installer": dist.installer,
            "direct_url": dist.direct_url, "editable": dist.editable,
            "dist_info": inv.key(dist.dist_info),
            "record": rec, "record_sha256": files[rec].digest if rec in files else None,
            "files": len(owned.get(i, [])),
            "digest": distribution_digest(owned.get(i, []), files),
        })
    isha = interpreter_digest(inv.interpreter)
    snap = Snapshot(
        interpreter=inv.interpreter, interpreter_sha256=isha,
        variables=loader_variables(environ), distributions=dists,
        hooks=hook_records(inv, files), files=files,
        dirs={k: (e.mode, e.mtime_ns, e.ctime_ns) for k, e in inv.dirs.items()},
        environment_digest=environment_digest(isha, inv.interpreter, files),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if bad_keys:
        snap.extra["unreadable"] = sorted(bad_keys)
    return snap, inv


def hash_entries(entries: list[Entry], digest_files: Callable[..., dict[Path, bytes]],
                 workers: int | None,
                 progress: Callable[[Path, int], None] | None) -> tuple[dict[str, bytes],
                                                                        dict[str, str]]:
    """sha256 of regular files by path string, with the parallel hasher; if one file fails,
    the files are hashed one by one so that a single unreadable file does not lose the rest."""
    paths = [Path(e.path) for e in entries]
    try:
        # sizes from the walk order the work (no second stat per file); links are not followed
        # (each entry was a regular file when lstat-ed: a link swapped in since is refused)
        got = digest_files(paths, workers=workers, progress=progress,
                           sizes={p: e.size for e, p in zip(entries, paths, strict=True)},
                           follow_symlinks=False)
        return {e.path: got[p] for e, p in zip(entries, paths, strict=True)}, {}
    except OSError:
        pass
    from trainguard.integrity.hashing import file_digest

    out: dict[str, bytes] = {}
    bad: dict[str, str] = {}
    for e, p in zip(entries, paths, strict=True):
        try:
            out[e.path] = file_digest(p, follow_symlinks=False)
        except OSError as exc:
            bad[e.path] = exc.strerror or str(exc)
    return out, bad


# ------------------------------------------------------------------------------- reading


def _bad(path: Path, what: str) -> InputError:
    return InputError(f"{path} is not a valid trainguard env snapshot: {what}",
                      remedy="use a file written by `trainguard env snapshot -o`")


def load_snapshot(path: str | os.PathLike[str]) -> tuple[Snapshot, bytes]:
    """Read and validate a snapshot; returns it with its exact bytes (for the signature)."""
    p = Path(path)
    data = read_snapshot_bytes(p)
    return decode_snapshot(data, p), data


def read_snapshot_bytes(p: Path) -> bytes:
    """A snapshot file's exact bytes (bounded by :data:`MAX_SNAPSHOT_BYTES`)."""
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_SNAPSHOT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read snapshot {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise _bad(p, f"larger than {MAX_SNAPSHOT_BYTES} bytes")
    return data


def decode_snapshot(data: bytes, p: Path) -> Snapshot:
    """Decode and validate a snapshot file's bytes."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _bad(p, f"not JSON ({str(exc)[:200]})") from None
    return parse_snapshot(doc, p)


def load_quick_index(data: bytes, p: Path) -> QuickIndex:
    """The quick index of a snapshot file's bytes: unpacked from its ``quick`` member when it
    has one (milliseconds), else built from the decoded JSON (snapshots written before it)."""
    from trainguard.envcheck.quickindex import QuickIndex, QuickIndexError, find_member

    member = find_member(data)
    if member is not None:
        try:
            return QuickIndex.decode(member)
        except QuickIndexError as exc:
            raise _bad(p, str(exc)) from None
    return QuickIndex.from_snapshot(decode_snapshot(data, p))


def parse_snapshot(doc: Any, where: Path = Path("<snapshot>")) -> Snapshot:
    """Validate a decoded snapshot document (types of every field used)."""
    if not isinstance(doc, dict):
        raise _bad(where, "top level is not an object")
    if doc.get("format") != FORMAT:
        raise _bad(where, f"format is {str(doc.get('format'))[:80]!r}, not {FORMAT!r}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise _bad(where, f"format_version {str(doc.get('format_version'))[:20]} is not "
                          f"supported (this trainguard reads {FORMAT_VERSION})")
    try:
        interp_raw = doc.get("interpreter")
        if not isinstance(interp_raw, dict):
            raise ValueError("interpreter must be an object")
        interp = Interpreter.from_dict(interp_raw)
        isha = _str(interp_raw.get("sha256"), "interpreter.sha256")
        variables = doc.get("variables")
        if not isinstance(variables, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in variables.items()):
            raise ValueError("variables must map strings to strings")
        dists = doc.get("distributions")
        if not isinstance(dists, list) or not all(
                isinstance(d, dict) and isinstance(d.get("name"), str)
                and isinstance(d.get("version"), str) for d in dists):
            raise ValueError("distributions must be objects with a name and a version")
        hooks = doc.get("hooks")
        if not isinstance(hooks, list) or not all(
                isinstance(h, dict) and isinstance(h.get("path"), str) for h in hooks):
            raise ValueError("hooks must be objects with a path")
        files_raw = doc.get("files")
        if not isinstance(files_raw, dict):
            raise ValueError("files must be an object")
        files = {_str(k, "file key"): _file_record(k, v) for k, v in files_raw.items()}
        dirs_raw = doc.get("dirs", {})
        if not isinstance(dirs_raw, dict):
            raise ValueError("dirs must be an object")
        dirs: dict[str, tuple[int, int, int]] = {}
        for k, v in dirs_raw.items():
            if not (isinstance(v, list) and len(v) == 3 and all(_is_int(x) for x in v)):
                raise ValueError(f"dirs[{k[:100]!r}] must be three integers")
            dirs[k] = (v[0], v[1], v[2])
        env_digest = _str(doc.get("environment_digest"), "environment_digest")
    except ValueError as exc:
        raise _bad(where, str(exc)) from None
    tool = doc.get("tool")
    return Snapshot(interp, isha, dict(variables), list(dists), list(hooks), files, dirs,
                    env_digest, created=str(doc.get("created", ""))[:64],
                    tool_version=str(tool.get("version", "")) if isinstance(tool, dict) else "")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _str(x: object, what: str) -> str:
    if not isinstance(x, str):
        raise ValueError(f"{what} must be a string")
    return x


_KINDS = frozenset({"file", "link", "other"})


def _file_record(key: str, v: object) -> FileRecord:
    # ``type(x) is int`` also refuses bools; one expression keeps 50k checks cheap
    if type(v) is not list or len(v) != 7:
        raise ValueError(f"files[{key[:100]!r}] must be an array of {len(FILE_FIELDS)}")
    kind, size, mode, mtime, ctime, digest, owner = v
    if (type(kind) is not str or kind not in _KINDS or type(size) is not int
            or type(mode) is not int or type(mtime) is not int or type(ctime) is not int
            or type(owner) is not int
            or not (digest is None or type(digest) is str)):
        raise ValueError(f"files[{key[:100]!r}] has a field of the wrong type")
    return FileRecord(kind, size, mode, mtime, ctime, digest, owner)


# ------------------------------------------------------------------------------- signatures


def _signed_message(snapshot_bytes: bytes) -> bytes:
    # domain separation: this signature can never be replayed as another trainguard signature
    return b"trainguard env-snapshot v1\n" + hashlib.sha256(snapshot_bytes).hexdigest().encode()


def sign_snapshot(snapshot_bytes: bytes, key: Any) -> bytes:
    """The detached signature document (JSON bytes) for ``snapshot_bytes`` under ``key``."""
    sig = key.sign(_signed_message(snapshot_bytes))
    pub = key.public_key()
    doc = {
        "format": SIGNATURE_FORMAT, "format_version": 1, "key_id": pub.key_id,
        "algorithm": f"ecdsa-{pub.curve}",
        "snapshot_sha256": hashlib.sha256(snapshot_bytes).hexdigest(),
        "signature": base64.b64encode(sig).decode("ascii"),
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def verify_snapshot_signature(snapshot_bytes: bytes, signature_doc: bytes, pub: Any) -> None:
    """Raise :class:`VerificationError` unless the detached signature verifies under ``pub``."""
    try:
        doc = json.loads(signature_doc[: 1 << 20])
        if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
            raise ValueError("not a trainguard snapshot signature")
        sig = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise VerificationError(f"unusable snapshot signature: {str(exc)[:200]}") from None
    if doc.get("snapshot_sha256") != hashlib.sha256(snapshot_bytes).hexdigest():
        raise VerificationError("the snapshot's bytes changed after it was signed")
    pub.verify(_signed_message(snapshot_bytes), sig)
