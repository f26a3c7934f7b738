"""The quick index of a snapshot: what ``env verify --quick`` needs, loadable in milliseconds.

A 47k-file snapshot is ~11 MB of JSON; decoding it costs more than the whole quick check may
(docs/env.md, target < 0.1 s). The snapshot therefore also carries, as its last member, one
string ``"quick": "tgq1:<base64>"`` (docs/env.md "Quick index") holding the same facts packed:

* the zlib stream (RFC 1950) of: a 4-byte little-endian length, a JSON header
  ``{"prefix", "cache_tag", "variables", "groups": [[dir_key, mtime_ns|null, ctime_ns|null,
  nfiles], ...], "names_bytes"}``, the file names of every group in order, NUL-separated
  (a name never holds NUL or ``/``), then the sizes and the inode change times of those files,
  each an array of little-endian int64.

Files are grouped by their directory, so that one ``open(O_DIRECTORY)`` per directory and one
``lstat(name, dir_fd=...)`` per file do the whole check without resolving the full path again
for each file. The index is inside the snapshot's bytes: the detached signature covers it. A
snapshot without it (written before it existed) is still read, by decoding the JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import zlib
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainguard.envcheck.snapfile import Snapshot

#: the member name and value prefix (version 1 of the packing)
MEMBER = "quick"
TAG = "tgq1:"
#: where the member sits in a snapshot file written by :meth:`Snapshot.to_bytes`
_LINE = b'\n "quick": "' + TAG.encode()
_END = b'"\n}\n'
#: the largest index unpacked (a 50k-file environment's is ~5 MB)
MAX_INDEX_BYTES = 256 << 20


class QuickIndexError(ValueError):
    """The quick index is malformed (the caller falls back or reports the snapshot invalid)."""


@dataclass(frozen=True)
class QuickIndex:
    """Per-directory groups of (name, size, ctime_ns), the prefix and the recorded variables."""

    prefix: str
    cache_tag: str
    variables: dict[str, str]
    #: (directory key, mtime_ns or None, ctime_ns or None, first file index, end file index);
    #: times are None for a directory the snapshot lists only as the parent of files
    groups: list[tuple[str, int | None, int | None, int, int]]
    names: list[str]
    sizes: array[int]
    ctimes: array[int]

    def full(self, key: str) -> str:
        """The path of a snapshot key (relative to the prefix, or absolute)."""
        if key.startswith("/"):
            return key
        return self.prefix if key == "." else self.prefix + "/" + key

    @staticmethod
    def child(dir_key: str, name: str) -> str:
        """The key of ``name`` inside the directory ``dir_key``."""
        if dir_key == ".":
            return name
        return dir_key + name if dir_key.endswith("/") else dir_key + "/" + name

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> QuickIndex:
        """Build the index from a decoded snapshot (old snapshots, and when writing one)."""
        by_dir: dict[str, list[tuple[str, int, int]]] = {}
        for key, rec in snap.files.items():
            parent, _, name = key.rpartition("/")
            if not parent:
                parent = "/" if key.startswith("/") else "."
            by_dir.setdefault(parent, []).append((name, rec.size, rec.ctime_ns))
        groups: list[tuple[str, int | None, int | None, int, int]] = []
        names: list[str] = []
        sizes, ctimes = array("q"), array("q")
        for d in sorted(set(by_dir) | set(snap.dirs)):
            times = snap.dirs.get(d)
            start = len(names)
            for name, size, ctime in sorted(by_dir.get(d, ())):
                names.append(name)
                sizes.append(size)
                ctimes.append(ctime)
            groups.append((d, times[1] if times else None, times[2] if times else None,
                           start, len(names)))
        return cls(snap.interpreter.prefix, snap.interpreter.cache_tag, dict(snap.variables),
                   groups, names, sizes, ctimes)

    def encode(self) -> str:
        """The ``"quick"`` member's value (``tgq1:`` + base64 of the zlib-packed index)."""
        header: dict[str, Any] = {
            "prefix": self.prefix, "cache_tag": self.cache_tag, "variables": self.variables,
            "groups": [[d, m, c, e - s] for d, m, c, s, e in self.groups],
        }
        blob = "\0".join(self.names).encode("utf-8", "surrogateescape")
        header["names_bytes"] = len(blob)
        head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        sizes, ctimes = array("q", self.sizes), array("q", self.ctimes)
        if sys.byteorder == "big":  # pragma: no cover - the packing is little-endian
            sizes.byteswap()
            ctimes.byteswap()
        raw = b"".join([len(head).to_bytes(4, "little"), head, blob, sizes.tobytes(),
                        ctimes.tobytes()])
        return TAG + base64.b64encode(zlib.compress(raw, 6)).decode("ascii")

    @classmethod
    def decode(cls, value: str | bytes) -> QuickIndex:
        """Unpack a ``"quick"`` member's value; :class:`QuickIndexError` when malformed."""
        v = value.encode("ascii", "replace") if isinstance(value, str) else value
        if not v.startswith(TAG.encode()):
            raise QuickIndexError("quick index: unknown packing")
        try:
            z = zlib.decompressobj()
            raw = z.decompress(base64.b64decode(v[len(TAG):], validate=True), MAX_INDEX_BYTES)
            if z.unconsumed_tail or not z.eof:
                raise QuickIndexError("quick index: truncated or larger than allowed")
            hlen = int.from_bytes(raw[:4], "little")
            header = json.loads(raw[4:4 + hlen])
        except (binascii.Error, zlib.error, ValueError, RecursionError) as exc:
            raise QuickIndexError(f"quick index: {str(exc)[:200]}") from None
        return cls._from_parts(header, raw, 4 + hlen)

    @classmethod
    def _from_parts(cls, header: Any, raw: bytes, pos: int) -> QuickIndex:
        def bad(what: str) -> QuickIndexError:
            return QuickIndexError(f"quick index: {what}")

        if not isinstance(header, dict):
            raise bad("header is not an object")
        prefix, tag, variables = header.get("prefix"), header.get("cache_tag"), \
            header.get("variables")
        groups_raw, nbytes = header.get("groups"), header.get("names_bytes")
        if not (isinstance(prefix, str) and isinstance(tag, str) and isinstance(groups_raw, list)
                and type(nbytes) is int and isinstance(variables, dict)
                and all(isinstance(k, str) and isinstance(x, str)
                        for k, x in variables.items())):
            raise bad("header fields of the wrong type")
        groups: list[tuple[str, int | None, int | None, int, int]] = []
        n = 0
        for g in groups_raw:
            if not (type(g) is list and len(g) == 4 and type(g[0]) is str
                    and (g[1] is None or type(g[1]) is int)
                    and (g[2] is None or type(g[2]) is int) and type(g[3]) is int and g[3] >= 0):
                raise bad("a group is not [dir, mtime_ns, ctime_ns, nfiles]")
            groups.append((g[0], g[1], g[2], n, n + g[3]))
            n += g[3]
        if nbytes < 0 or len(raw) != pos + nbytes + 16 * n:
            raise bad("lengths do not add up")
        names = raw[pos:pos + nbytes].decode("utf-8", "surrogateescape").split("\0") \
            if n else []
        if len(names) != n:
            raise bad("name count does not match the groups")
        pos += nbytes
        sizes, ctimes = array("q"), array("q")
        sizes.frombytes(raw[pos:pos + 8 * n])
        ctimes.frombytes(raw[pos + 8 * n:])
        if sys.byteorder == "big":  # pragma: no cover
            sizes.byteswap()
            ctimes.byteswap()
        return cls(prefix, tag, dict(variables), groups, names, sizes, ctimes)


def find_member(data: bytes) -> bytes | None:
    """The packed index of a snapshot file's bytes, without decoding its JSON, or None.

    Only the layout :meth:`Snapshot.to_bytes` writes is recognised (the member last, on its own
    line, after the format and version lines); anything else returns None and the caller decodes
    the JSON. Whoever can rewrite the snapshot can rewrite any of it: a signed snapshot's
    signature covers these bytes, and is checked before the index is used.
    """
    if not data.endswith(_END):
        return None
    start = data.rfind(_LINE)
    # the format lines come before the tables (sorted head members): found by memchr-fast search
    if start < 0 or data.find(b'\n "format": "trainguard.env-snapshot",\n', 0, start) < 0 \
            or data.find(b'\n "format_version": 1,\n', 0, start) < 0:
        return None
    value = data[start + len(_LINE) - len(TAG):len(data) - len(_END)]
    if b'"' in value or b"\n" in value:
        return None
    return value
