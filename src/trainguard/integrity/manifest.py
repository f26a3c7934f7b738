"""OpenSSF model signing (OMS v1.0) manifests: resources, root digest, in-toto statements.

Format (sigstore/model-transparency ``docs/model_signing_format.md``): one in-toto Statement v1
whose subject is ``{name: <model dir basename>, digest: {sha256: ROOT}}`` and whose predicate
(type ``https://model_signing/signature/v1.0``) is ``{serialization, resources}``. ROOT is the
sha256 of the concatenated raw resource digests, in resource order.

Deliberate differences from the reference tool (``model-signing`` 1.1.1), all still verifiable by
it: resources are sorted by code point of the POSIX relative path (the format's order; the
reference sorts by path components), ``shard_size`` is always an integer, and ``ignore_paths`` is
written sorted (the reference writes set order).

Example::

    from pathlib import Path
    from trainguard.integrity.manifest import build_manifest
    m = build_manifest(Path("ckpt/step-1000"))
    print(m.root_digest().hex(), [r.name for r in m.resources])
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from trainguard.core.errors import InputError, MalformedInput, UsageError
from trainguard.integrity import hashing

if TYPE_CHECKING:
    from trainguard.integrity.cache import DigestCache

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
#: what the reference tool leaves out of every signature unless told otherwise
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
#: the reference tool's default shard size (1 GB, decimal)
DEFAULT_SHARD_SIZE = 1_000_000_000
#: hash types the OMS predicate names, mapped to hashlib names
HASH_TYPES = {"sha256": "sha256", "blake2b": "blake2b", "blake3": "blake3"}
#: upper bound on resources in one manifest (hostile bundles; a real model has far fewer)
MAX_RESOURCES = 1_000_000


@dataclass(frozen=True)
class Resource:
    """One signed item: a file (``name`` = relative POSIX path) or a shard (``path:start:end``)."""

    name: str
    algorithm: str
    digest: bytes

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "algorithm": self.algorithm, "digest": self.digest.hex()}

    @property
    def path(self) -> str:
        """The file this resource belongs to (the name without a shard suffix)."""
        return split_shard(self.name)[0] if ":" in self.name else self.name


@dataclass(frozen=True)
class Serialization:
    """How the model was turned into resources (OMS v1.0 ``predicate.serialization``)."""

    method: str = "files"
    hash_type: str = "sha256"
    allow_symlinks: bool = False
    ignore_paths: tuple[str, ...] = ()
    shard_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in ("files", "shards"):
            raise UsageError(f"unknown serialization method {self.method!r} (files or shards)")
        if self.hash_type not in HASH_TYPES:
            raise UsageError(f"unsupported hash type {self.hash_type!r} "
                             f"(use one of {', '.join(HASH_TYPES)})")
        if self.method == "shards" and (self.shard_size is None or self.shard_size <= 0):
            raise UsageError("the shards method needs a positive shard_size")

    @property
    def resource_algorithm(self) -> str:
        # The reference names shard digests "<hash>-sharded-<size>" (model_signing/_hashing/io.py).
        if self.method == "shards":
            return f"{self.hash_type}-sharded-{self.shard_size}"
        return self.hash_type

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "hash_type": self.hash_type,
                               "allow_symlinks": self.allow_symlinks}
        if self.method == "shards":
            out["shard_size"] = self.shard_size
        if self.ignore_paths:
            out["ignore_paths"] = sorted(self.ignore_paths)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Serialization:
        """Validate a signed ``serialization`` object; MalformedInput on anything unexpected."""
        if not isinstance(data, dict):
            raise MalformedInput("predicate.serialization must be an object")
        method, hash_type = data.get("method"), data.get("hash_type")
        allow = data.get("allow_symlinks", False)
        ignore = data.get("ignore_paths", [])
        size = data.get("shard_size")
        if not isinstance(method, str) or not isinstance(hash_type, str):
            raise MalformedInput("serialization.method and hash_type must be strings")
        if not isinstance(allow, bool):
            raise MalformedInput("serialization.allow_symlinks must be a boolean")
        if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
            raise MalformedInput("serialization.ignore_paths must be a list of strings")
        if len(ignore) > 10_000:
            raise MalformedInput("serialization.ignore_paths is too long")
        if method == "shards":
            # The reference wrote 1e9 as a float in some versions; accept integral floats only.
            if isinstance(size, float) and size.is_integer():
                size = int(size)
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise MalformedInput("serialization.shard_size must be a positive integer")
        try:
            return cls(method=method, hash_type=hash_type, allow_symlinks=allow,
                       ignore_paths=tuple(ignore), shard_size=size if method == "shards" else None)
        except UsageError as exc:
            raise MalformedInput(f"serialization: {exc.message}") from None


def split_shard(name: str) -> tuple[str, int, int]:
    """``"path:start:end"`` -> (path, start, end); MalformedInput if it is not one."""
    path, sep1, rest = name.rpartition(":")
    path, sep2, start = path.rpartition(":")
    if not sep1 or not sep2 or not start.isdigit() or not rest.isdigit():
        raise MalformedInput(f"shard resource name {name!r} is not path:start:end")
    s, e = int(start), int(rest)
    if e <= s:
        raise MalformedInput(f"shard resource {name!r} is empty or reversed")
    return path, s, e


shard_ranges = hashing.shard_ranges


def root_digest(resources: Iterable[Resource]) -> bytes:
    """OMS v1.0 subject digest: sha256 over the raw resource digests in resource order."""
    h = hashlib.sha256()
    for r in resources:
        h.update(r.digest)
    return h.digest()


def _check_name(name: str) -> None:
    # A signed name is later joined to the model directory: refuse anything that could escape it.
    p = PurePosixPath(name)
    if (not name or name.startswith("/") or "\\" in name or "\x00" in name
            or (any(part in ("..", "") for part in p.parts) and name != ".")):
        raise MalformedInput(f"resource name {name!r} is not a relative path inside the model")


@dataclass(frozen=True)
class Manifest:
    """A model's resources and how they were computed: the content of one OMS statement."""

    model_name: str
    serialization: Serialization
    resources: tuple[Resource, ...]
    _index: dict[str, Resource] = field(default_factory=dict, compare=False, repr=False,
                                        hash=False)

    def __post_init__(self) -> None:
        self._index.update((r.name, r) for r in self.resources)

    def root_digest(self) -> bytes:
        return root_digest(self.resources)

    def get(self, name: str) -> Resource | None:
        return self._index.get(name)

    def files(self) -> list[str]:
        """Signed file paths (shards collapsed), in manifest order."""
        seen: dict[str, None] = {}
        for r in self.resources:
            seen.setdefault(r.path, None)
        return list(seen)

    def subject(self) -> dict[str, Any]:
        return {"name": self.model_name, "digest": {"sha256": self.root_digest().hex()}}

    def statement(self) -> dict[str, Any]:
        """The in-toto Statement v1 (a plain dict, ready for canonical JSON)."""
        return {
            "_type": STATEMENT_TYPE,
            "subject": [self.subject()],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"serialization": self.serialization.to_dict(),
                          "resources": [r.to_dict() for r in self.resources]},
        }

    def payload(self) -> bytes:
        """The DSSE payload: the statement as canonical JSON (sorted keys, no whitespace)."""
        return canonical_json(self.statement())

    @classmethod
    def from_statement(cls, st: Any) -> Manifest:
        """Validate an OMS v1.0 statement; MalformedInput unless every field is as specified,
        including the root digest matching the resources (reference: ``dsse_payload_to_manifest``).
        """
        if not isinstance(st, dict):
            raise MalformedInput("statement must be a JSON object")
        if st.get("_type") != STATEMENT_TYPE:
            raise MalformedInput(f"not an in-toto Statement v1: _type {st.get('_type')!r:.80}")
        if st.get("predicateType") != PREDICATE_TYPE:
            raise MalformedInput(f"predicateType {st.get('predicateType')!r:.80} is not "
                                 f"{PREDICATE_TYPE}")
        name, digest = parse_subject(st)
        pred = st.get("predicate")
        if not isinstance(pred, dict):
            raise MalformedInput("predicate must be an object")
        ser = Serialization.from_dict(pred.get("serialization"))
        raw = pred.get("resources")
        if not isinstance(raw, list):
            raise MalformedInput("predicate.resources must be a list")
        if len(raw) > MAX_RESOURCES:
            raise MalformedInput(f"{len(raw)} resources exceed the limit of {MAX_RESOURCES}")
        out: list[Resource] = []
        names: set[str] = set()
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise MalformedInput(f"resources[{i}] must be an object")
            rname, alg, dig = item.get("name"), item.get("algorithm"), item.get("digest")
            if not all(isinstance(v, str) for v in (rname, alg, dig)):
                raise MalformedInput(f"resources[{i}]: name, algorithm, digest must be strings")
            assert isinstance(rname, str)
            assert isinstance(alg, str)
            assert isinstance(dig, str)
            if len(dig) > 256:
                raise MalformedInput(f"resources[{i}].digest is too long")
            try:
                value = bytes.fromhex(dig)
            except ValueError:
                raise MalformedInput(f"resources[{i}].digest is not hex") from None
            if ser.method == "shards":
                path, _, _ = split_shard(rname)
                _check_name(path)
            else:
                _check_name(rname)
            if rname in names:
                raise MalformedInput(f"resource {rname!r} is listed twice")
            names.add(rname)
            out.append(Resource(rname, alg, value))
        m = cls(model_name=name, serialization=ser, resources=tuple(out))
        if m.root_digest() != digest:
            raise MalformedInput("statement is inconsistent: the subject digest is not the "
                                 "digest of the listed resources")
        return m


def parse_subject(st: Mapping[str, Any]) -> tuple[str, bytes]:
    """(name, sha256 digest) of a statement's single subject; MalformedInput otherwise."""
    subjects = st.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise MalformedInput("statement must have exactly one subject")
    name, dig = subjects[0].get("name"), subjects[0].get("digest")
    if not isinstance(name, str) or not isinstance(dig, dict) or not isinstance(
            dig.get("sha256"), str):
        raise MalformedInput("subject needs a name and a sha256 digest")
    try:
        value = bytes.fromhex(dig["sha256"])
    except ValueError:
        raise MalformedInput("subject digest is not hex") from None
    if len(value) != 32:
        raise MalformedInput("subject sha256 digest must be 32 bytes")
    return name, value


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: equal statements give equal payload bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def model_name(model_path: Path) -> str:
    """The subject name: the model directory's basename (reference: resolved if empty or ..)."""
    name = model_path.name
    if not name or name == "..":
        name = model_path.resolve().name
    return name


def is_ignored(rel: str, ignore_paths: Iterable[str]) -> bool:
    """True if ``rel`` is an ignore path or lies under one (a directory ignores its children)."""
    for ig in ignore_paths:
        ig = ig.strip("/")
        if ig in ("", "."):
            return True
        if rel == ig or rel.startswith(ig + "/"):
            return True
    return False


def list_files(model_path: Path, *, ignore_paths: Iterable[str] = (),
               allow_symlinks: bool = False, special: list[str] | None = None) -> list[str]:
    """Relative POSIX paths of the regular files under ``model_path``, sorted by code point.

    The model path itself may be a symbolic link (``latest -> step-1000``). Inside it, a symlink
    is an error unless ``allow_symlinks`` (then it is followed, as the reference does); sockets,
    FIFOs and devices are always an error: their content is not a file's. With ``special`` such
    entries are appended there instead of raising (verification reports them as changes).
    """
    ignore = list(ignore_paths)
    if model_path.is_file():
        return ["."]
    if not model_path.is_dir():
        raise InputError(f"cannot read model {model_path}: not a file or directory")
    out: list[str] = []

    def bad(rel: str, why: str, remedy: str = "") -> None:
        if special is not None:
            special.append(rel)
            return
        raise InputError(f"{model_path / rel} {why}", remedy=remedy or None)

    def walk(d: Path, prefix: str, depth: int) -> None:
        if depth > 256:
            raise InputError(f"{d}: directories nest deeper than 256 levels (a symlink loop?)")
        try:
            entries = list(os.scandir(d))
        except OSError as exc:
            raise InputError(f"cannot list {d}: {exc.strerror or exc}") from None
        for e in entries:
            rel = f"{prefix}{e.name}"
            if is_ignored(rel, ignore):
                continue
            if e.is_symlink():
                if not allow_symlinks:
                    bad(rel, "is a symbolic link", "remove it, or sign with --allow-symlinks")
                elif e.is_dir():
                    walk(Path(e.path), rel + "/", depth + 1)
                elif e.is_file():
                    out.append(rel)
                else:
                    bad(rel, "is a dangling or special link")
            elif e.is_dir(follow_symlinks=False):
                walk(Path(e.path), rel + "/", depth + 1)
            elif e.is_file(follow_symlinks=False):
                out.append(rel)
            else:
                bad(rel, "is not a regular file (socket, FIFO or device)")

    walk(model_path, "", 0)
    out.sort()  # code-point order of the names, as the format specifies
    return out


def resolve(model_path: Path, rel: str) -> Path:
    return model_path if rel == "." else model_path / rel


def hash_resources(model_path: Path, files: Iterable[str], ser: Serialization, *,
                   workers: int | None = None,
                   progress: Callable[[Path, int], None] | None = None,
                   contents: Mapping[str, bytes | memoryview] | None = None,
                   cache: DigestCache | None = None) -> list[Resource]:
    """Resources of ``files`` under ``ser`` (file or shard digests), in the order given.

    ``contents`` maps a relative path to bytes the caller already holds: those bytes are hashed
    instead of the file (verify-before-load hashes exactly what it will load). ``cache`` (files
    method only) skips files whose (device, inode, size, ctime) did not change.
    """
    alg = HASH_TYPES[ser.hash_type]
    rels = list(files)
    held = dict(contents or {})
    # one Path per file (thousands of small files: pathlib construction is a visible cost)
    paths = {r: resolve(model_path, r) for r in rels if r not in held}
    todo = list(paths.values())
    try:
        if ser.method == "files":
            digests = hashing.digest_files(todo, alg, workers=workers, progress=progress,
                                           cache=cache)
            out = []
            for r in rels:
                d = _digest_bytes(alg, held[r]) if r in held else digests[paths[r]]
                out.append(Resource(r, ser.resource_algorithm, d))
            return out
        assert ser.shard_size is not None
        shards = hashing.digest_shards(todo, ser.shard_size, alg, workers=workers,
                                       progress=progress)
    except OSError as exc:
        raise InputError(f"cannot hash {exc.filename or model_path}: "
                         f"{exc.strerror or exc}") from None
    out = []
    for r in rels:
        if r in held:
            view = memoryview(held[r])
            parts = [(s, e, _digest_bytes(alg, view[s:e]))
                     for s, e in shard_ranges(len(view), ser.shard_size)]
        else:
            parts = shards[paths[r]]
        out += [Resource(f"{r}:{s}:{e}", ser.resource_algorithm, d) for s, e, d in parts]
    return out


def _digest_bytes(alg: str, data: bytes | memoryview) -> bytes:
    h = hashing.new_hasher(alg)
    h.update(data)
    return bytes(h.digest())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def build_manifest(model_path: Path, *, method: str = "files", hash_type: str = "sha256",
                   shard_size: int = DEFAULT_SHARD_SIZE, ignore_paths: Iterable[str] = (),
                   ignore_git_paths: bool = True, allow_symlinks: bool = False,
                   workers: int | None = None,
                   progress: Callable[[Path, int], None] | None = None,
                   cache: DigestCache | None = None,
                   files: list[str] | None = None) -> Manifest:
    """Hash a model (directory or single file) into an OMS v1.0 manifest.

    ``ignore_paths`` are relative to the model directory; with ``ignore_git_paths`` the git
    metadata paths are left out too (as the reference does) and recorded as ignored. ``files``
    is the result of :func:`list_files` with those same ignore paths, when the caller already
    walked the tree.
    """
    ignored = {p.strip("/") for p in ignore_paths if p.strip("/")}
    if ignore_git_paths:
        ignored.update(GIT_PATHS)
    ser = Serialization(method=method, hash_type=hash_type, allow_symlinks=allow_symlinks,
                        ignore_paths=tuple(sorted(ignored)),
                        shard_size=shard_size if method == "shards" else None)
    if files is None:
        files = list_files(model_path, ignore_paths=ignored, allow_symlinks=allow_symlinks)
    resources = hash_resources(model_path, files, ser, workers=workers, progress=progress,
                               cache=cache)
    return Manifest(model_name=model_name(model_path), serialization=ser,
                    resources=tuple(resources))
