"""What is installed: distributions, every file under the site directories (lstat only, links
never followed), files RECORDs place elsewhere in the environment, and the interpreter itself.

Paths are keyed relative to the environment prefix (``lib/python3.11/site-packages/six.py``)
so that snapshots of the same environment on two nodes compare equal; paths outside the prefix
keep their absolute form.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from trainguard.core.errors import LimitExceeded
from trainguard.envcheck.probe import Interpreter
from trainguard.envcheck.records import Distribution, find_distributions

#: entries visited under the site directories (a torch env has ~25k; hostile trees are bounded)
MAX_ENTRIES = 2_000_000
#: directory depth below a site directory
MAX_DEPTH = 64


class Entry(NamedTuple):
    """One file-system entry as ``lstat`` saw it (a tuple: 50k of them per verify)."""

    path: str
    #: "file", "link", "dir" or "other" (FIFO, socket, device)
    kind: str
    size: int
    mode: int
    mtime_ns: int
    ctime_ns: int
    #: a symbolic link's target text (never followed)
    target: str | None = None

    @classmethod
    def from_stat(cls, path: str, st: os.stat_result) -> Entry:
        m = st.st_mode
        kind = ("file" if stat.S_ISREG(m) else "link" if stat.S_ISLNK(m)
                else "dir" if stat.S_ISDIR(m) else "other")
        target = None
        if kind == "link":
            try:
                target = os.readlink(path)
            except OSError:
                target = ""
        return cls(path, kind, st.st_size, stat.S_IMODE(m), st.st_mtime_ns, st.st_ctime_ns, target)


@dataclass
class Inventory:
    """An environment as found on disk: the input of snapshot and verify."""

    interpreter: Interpreter
    prefix: Path
    site_dirs: list[Path]
    distributions: list[Distribution]
    #: every non-directory entry, by key
    files: dict[str, Entry] = field(default_factory=dict)
    #: every directory (site dirs, their subdirectories, and their parents up to the prefix)
    dirs: dict[str, Entry] = field(default_factory=dict)
    #: file key -> index of the owning distribution in ``distributions``
    owners: dict[str, int] = field(default_factory=dict)
    #: paths that could not be listed or stat'ed, with the reason
    errors: dict[str, str] = field(default_factory=dict)

    def key(self, path: Path | str) -> str:
        return path_key(path, self.prefix)

    def nkey(self, norm_path: str) -> str:
        """:meth:`key` of a path that is already absolute and normalised (no normpath)."""
        head = str(self.prefix) + os.sep
        return norm_path[len(head):] if norm_path.startswith(head) else norm_path

    def path(self, key: str) -> str:
        return str(key_path(key, self.prefix))


def path_key(path: Path | str, prefix: Path) -> str:
    """``path`` relative to ``prefix`` with '/' separators, or absolute when outside it."""
    p = os.path.normpath(path)
    r = os.path.normpath(prefix)
    if p == r:
        return "."
    if p.startswith(r + os.sep):
        return p[len(r) + 1:].replace(os.sep, "/")
    return p.replace(os.sep, "/")


def key_path(key: str, prefix: Path) -> Path:
    if key == ".":
        return prefix
    return Path(key) if key.startswith("/") else prefix / key


def walk(root: str, *, max_entries: int = MAX_ENTRIES) -> Iterator[tuple[Entry, bool]]:
    """Every entry under ``root`` (``root`` excluded), depth first; yields (entry, ok).

    Symbolic links are reported, never followed, so link loops cannot trap the walk. An entry
    that cannot be stat'ed, or a directory that cannot be listed, is yielded with ``ok=False``.
    """
    stack: list[tuple[str, int]] = [(root, 0)]
    seen = 0
    while stack:
        d, depth = stack.pop()
        try:
            with os.scandir(d) as it:
                items = list(it)
        except OSError:
            if d != root:
                yield Entry(d, "dir", 0, 0, 0, 0), False
            continue
        for de in items:
            seen += 1
            if seen > max_entries:
                raise LimitExceeded("max_env_entries", max_entries, f"under {root}")
            p = de.path
            try:
                st = de.stat(follow_symlinks=False)
            except OSError:
                yield Entry(p, "other", 0, 0, 0, 0), False
                continue
            e = Entry.from_stat(p, st)
            yield e, True
            if e.kind == "dir":
                if depth + 1 >= MAX_DEPTH:
                    yield e, False
                    continue
                stack.append((p, depth + 1))


def collect(interp: Interpreter, *,
            after_walk: Callable[[Inventory], None] | None = None) -> Inventory:
    """Find the distributions and every file of the environment ``interp`` reported.

    ``after_walk(inv)`` runs once the site directories are walked and before RECORDs are read
    (verify starts hashing there, so the two overlap).
    """
    prefix = Path(os.path.normpath(interp.prefix))
    site_dirs = [Path(os.path.normpath(d)) for d in interp.existing_site_dirs()
                 if not d.is_symlink()]
    inv = Inventory(interp, prefix, site_dirs, [])
    head = str(prefix) + os.sep
    cut = len(head)
    for sd in site_dirs:
        _add_dir_chain(inv, sd)
        for e, ok in walk(str(sd)):
            # scandir joins normalised parts: slicing gives the key without normpath per file
            k = e.path[cut:] if e.path.startswith(head) else e.path
            if not ok:
                inv.errors[k] = "cannot be read"
                continue
            (inv.dirs if e.kind == "dir" else inv.files)[k] = e
    if after_walk is not None:
        after_walk(inv)
    dists = inv.distributions = find_distributions(site_dirs, prefix)
    # Files RECORDs put outside the site directories (console scripts in bin/, headers, data).
    for i, dist in enumerate(dists):
        for ent in dist.entries:
            k = ent.path[cut:] if ent.path.startswith(head) else ent.path  # normalised
            inv.owners.setdefault(k, i)
            if k not in inv.files and k not in inv.errors:
                _add_one(inv, ent.path)
        if dist.record is not None:
            inv.owners.setdefault(inv.key(dist.record), i)
    if interp.is_venv:
        # The venv's own files: pyvenv.cfg and bin/ (python links, activate scripts, entry points).
        _add_one(inv, prefix / "pyvenv.cfg")
        scripts = Path(interp.scripts)
        _add_dir_chain(inv, scripts)
        try:
            names = sorted(os.listdir(scripts))
        except OSError:
            names = []
        for n in names:
            _add_one(inv, scripts / n)
    return inv


def _add_one(inv: Inventory, path: Path | str) -> None:
    k = inv.key(path)
    try:
        e = Entry.from_stat(str(path), os.lstat(path))
    except FileNotFoundError:
        return
    except OSError as exc:
        inv.errors[k] = exc.strerror or str(exc)
        return
    if e.kind != "dir":
        inv.files[k] = e


def _add_dir_chain(inv: Inventory, d: Path) -> None:
    """The directory and its parents up to the prefix (their permissions matter too)."""
    cur = d
    prefix = os.path.normpath(inv.prefix)
    while True:
        k = inv.key(cur)
        if k not in inv.dirs:
            with contextlib.suppress(OSError):
                inv.dirs[k] = Entry.from_stat(str(cur), os.lstat(cur))
        if os.path.normpath(cur) == prefix or not os.path.normpath(cur).startswith(prefix):
            break
        cur = cur.parent
