"""``trainguard env verify --quick``: size and ctime of every file against a snapshot.

No hashing and no interpreter probe: one ``open(O_DIRECTORY)`` and ``fstat`` per directory and
one ``lstat(name, dir_fd=...)`` per file of the snapshot's quick index
(:mod:`trainguard.envcheck.quickindex`). Writing, replacing, renaming, re-linking or chmod-ing
a file changes its inode change time (``st_ctime``, POSIX.1-2017 <sys/stat.h>), which no
unprivileged user can set back; a directory whose mtime or ctime changed is listed to name the
entries that appeared in it. Meant for every job start; a full verify settles what it flags.
Imports only the light modules: this runs before every job.
"""

from __future__ import annotations

import os
import stat
import time

from trainguard.core.findings import Severity
from trainguard.core.report import Report
from trainguard.envcheck.common import Collector, _is_code, check_variables
from trainguard.envcheck.quickindex import QuickIndex

#: files per thread below which a second thread costs more than it saves
_PER_THREAD = 4096
_DIR_FLAGS = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
              | getattr(os, "O_CLOEXEC", 0))

#: (what, dir_key, name, info): one disagreement found by a worker
Result = tuple[str, str, str, object]


def _scan_groups(idx: QuickIndex, groups: list[tuple[str, int | None, int | None, int, int]]
                 ) -> list[Result]:
    """Check the files (and recorded directories) of ``groups``; return the disagreements."""
    out: list[Result] = []
    lstat, names, sizes, ctimes = os.lstat, idx.names, idx.sizes, idx.ctimes
    for dkey, mtime, ctime, a, b in groups:
        dpath = idx.full(dkey)
        try:
            fd = os.open(dpath, _DIR_FLAGS)
        except OSError as exc:
            # gone, replaced by a link or a file, or unreadable: say so, then check the files
            # one path at a time (they are reported missing, or checked through whatever is
            # there now)
            try:
                dst: os.stat_result | None = os.lstat(dpath)
            except OSError:
                dst = None  # gone: its files are reported missing
            if mtime is not None and dst is not None:
                moved = dst.st_mtime_ns != mtime or dst.st_ctime_ns != ctime
                if not stat.S_ISDIR(dst.st_mode) and (moved or not stat.S_ISLNK(dst.st_mode)):
                    # a link recorded as the prefix itself is fine while it is unchanged
                    out.append(("notdir", dkey, "", stat.filemode(dst.st_mode)))
                elif stat.S_ISDIR(dst.st_mode):
                    out.append(("error", dkey, "", exc.strerror or str(exc)))
            for i in range(a, b):
                _check_one(out, dkey, names[i], (sizes[i], ctimes[i]),
                           idx.full(idx.child(dkey, names[i])))
            continue
        try:
            if mtime is not None:
                dst = os.fstat(fd)
                if dst.st_mtime_ns != mtime or dst.st_ctime_ns != ctime:
                    out.append(("dirchanged", dkey, "", None))
            for name, size, ctime_ns in zip(names[a:b], sizes[a:b], ctimes[a:b], strict=True):
                try:
                    st = lstat(name, dir_fd=fd)
                except FileNotFoundError:
                    out.append(("missing", dkey, name, None))
                    continue
                except OSError as exc:
                    out.append(("error", dkey, name, exc.strerror or str(exc)))
                    continue
                if st.st_ctime_ns != ctime_ns or st.st_size != size:
                    out.append(("changed", dkey, name, (size, st.st_size)))
        finally:
            os.close(fd)
    return out


def _check_one(out: list[Result], dkey: str, name: str, expect: tuple[int, int],
               path: str) -> None:
    size, ctime = expect
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        out.append(("missing", dkey, name, None))
        return
    except OSError as exc:
        out.append(("error", dkey, name, exc.strerror or str(exc)))
        return
    if st.st_ctime_ns != ctime or st.st_size != size:
        out.append(("changed", dkey, name, (size, st.st_size)))


def _split(idx: QuickIndex, parts: int) -> list[list[tuple[str, int | None, int | None, int,
                                                             int]]]:
    """``parts`` runs of groups with about the same number of files (+1 per directory)."""
    total = len(idx.names) + len(idx.groups)
    chunks: list[list[tuple[str, int | None, int | None, int, int]]] = [[]]
    acc = 0
    for g in idx.groups:
        chunks[-1].append(g)
        acc += g[4] - g[3] + 1
        if acc >= total * len(chunks) / parts and len(chunks) < parts:
            chunks.append([])
    return [c for c in chunks if c]


def _new_entry(c: Collector, path: str, key: str, tag: str) -> None:
    from trainguard.envcheck.pyc import source_for

    if key.endswith(".pyc") and source_for(path, tag) is not None:
        c.add("TG-ENV-013", path, "compiled after the snapshot was taken", severity=Severity.LOW)
    else:
        c.add("TG-ENV-013", path, "appeared after the snapshot was taken",
              severity=Severity.HIGH if _is_code(key) else None)


def _added(c: Collector, idx: QuickIndex, changed_dirs: list[str]) -> None:
    """TG-ENV-013 for the entries of changed directories that the snapshot does not list."""
    known: dict[str, set[str]] = {}
    for dkey, _m, _c, a, b in idx.groups:
        known.setdefault(dkey, set()).update(idx.names[a:b])
        if dkey not in (".", "/") and not dkey.startswith("/"):
            parent, _, name = dkey.rpartition("/")
            known.setdefault(parent or ".", set()).add(name)
    for dkey in changed_dirs:
        p = idx.full(dkey)
        try:
            names = os.listdir(p)
        except OSError as exc:
            c.add("TG-ENV-021", p, exc.strerror or str(exc))
            continue
        have = known.get(dkey, set())
        for n in sorted(names):
            if n in have:
                continue
            k = idx.child(dkey, n)
            np = idx.full(k)
            if n == "__pycache__" and os.path.isdir(np) and not os.path.islink(np):
                # a new cache directory: the interpreter compiled sources after the snapshot
                try:
                    inner = sorted(os.listdir(np))
                except OSError as exc:
                    c.add("TG-ENV-021", np, exc.strerror or str(exc))
                    continue
                for m in inner:
                    _new_entry(c, os.path.join(np, m), f"{k}/{m}", idx.cache_tag)
            else:
                _new_entry(c, np, k, idx.cache_tag)


def quick_verify_index(idx: QuickIndex, *, environ: dict[str, str] | None = None,
                       collector: Collector | None = None, workers: int | None = None,
                       t0: float | None = None) -> Report:
    """Compare the environment with a quick index by metadata only (module docstring)."""
    from trainguard import __version__

    t0 = time.perf_counter() if t0 is None else t0
    c = collector or Collector()
    nthreads = max(1, min(workers or os.cpu_count() or 1, 2,
                          len(idx.names) // _PER_THREAD + 1))
    chunks = _split(idx, nthreads)
    if len(chunks) <= 1:
        results = [_scan_groups(idx, ch) for ch in chunks]
    else:
        # lstat and open release the GIL: two threads overlap the system calls (more threads
        # only contend for the GIL on the Python side of each call)
        import threading

        results = [[] for _ in chunks]

        def work(i: int) -> None:
            results[i] = _scan_groups(idx, chunks[i])

        threads = [threading.Thread(target=work, args=(i,), daemon=True)
                   for i in range(1, len(chunks))]
        for t in threads:
            t.start()
        work(0)
        for t in threads:
            t.join()
    changed_dirs: list[str] = []
    for res in results:
        for what, dkey, name, info in res:
            key = idx.child(dkey, name) if name else dkey
            p = idx.full(key)
            if what == "missing":
                c.add("TG-ENV-012", p, "present when the snapshot was taken",
                      severity=Severity.LOW if key.endswith(".pyc") else None)
            elif what == "error":
                c.add("TG-ENV-021", p, str(info))
            elif what == "dirchanged":
                changed_dirs.append(dkey)
            elif what == "notdir":
                c.add("TG-ENV-020", p, f"a directory when the snapshot was taken, now {info}")
            else:
                assert isinstance(info, tuple)
                old, new = info
                c.add("TG-ENV-020", p, f"size {old} -> {new}" if old != new
                      else "ctime changed (rewritten, replaced, re-linked or chmod-ed)")
    if changed_dirs:
        _added(c, idx, changed_dirs)
    check_variables(c, idx, environ)
    report = Report(tool="trainguard", version=__version__, targets=[idx.prefix])
    report.findings = c.finish()
    report.seconds = time.perf_counter() - t0
    return report


def quick_verify(snap: object, *, environ: dict[str, str] | None = None,
                 collector: Collector | None = None, workers: int | None = None) -> Report:
    """Quick check against a decoded :class:`~trainguard.envcheck.snapfile.Snapshot` (or an
    already unpacked :class:`QuickIndex`)."""
    t0 = time.perf_counter()
    idx = snap if isinstance(snap, QuickIndex) else QuickIndex.from_snapshot(snap)  # type: ignore[arg-type]
    return quick_verify_index(idx, environ=environ, collector=collector, workers=workers, t0=t0)
