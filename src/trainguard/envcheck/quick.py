"""``trainguard env verify --quick``: size and ctime of every file against a snapshot.

No hashing and no interpreter probe: one ``lstat`` per file and directory recorded in the
snapshot. Writing, replacing, renaming, re-linking or chmod-ing a file changes its inode change
time (``st_ctime``), which no unprivileged user can set back; a directory whose mtime or ctime
changed is listed to name the entries that appeared in it. Meant for every job start; a full
verify settles what quick mode flags.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from trainguard.core.findings import Severity
from trainguard.core.report import Report
from trainguard.envcheck.checks import Collector, _is_code, check_variables
from trainguard.envcheck.pyc import source_for
from trainguard.envcheck.snapfile import FileRecord, Snapshot


def _stat_chunk(items: list[tuple[str, FileRecord]],
                full: Callable[[str], str]) -> list[tuple[str, str, str, object]]:
    """(what, key, path, info) for each file whose lstat disagrees with the snapshot."""
    out: list[tuple[str, str, str, object]] = []
    lstat = os.lstat
    for key, rec in items:
        p = full(key)
        try:
            st = lstat(p)
        except FileNotFoundError:
            out.append(("missing", key, p, None))
            continue
        except OSError as exc:
            out.append(("error", key, p, exc.strerror or str(exc)))
            continue
        if st.st_ctime_ns != rec.ctime_ns or st.st_size != rec.size:
            out.append(("changed", key, p, (st.st_size, st.st_mtime_ns, st.st_ctime_ns)))
    return out


def _new_entry(c: Collector, path: str, key: str, tag: str) -> None:
    if key.endswith(".pyc") and source_for(path, tag) is not None:
        c.add("TG-ENV-013", path, "compiled after the snapshot was taken", severity=Severity.LOW)
    else:
        c.add("TG-ENV-013", path, "appeared after the snapshot was taken",
              severity=Severity.HIGH if _is_code(key) else None)


def quick_verify(snap: Snapshot, *, environ: dict[str, str] | None = None,
                 collector: Collector | None = None, workers: int | None = None) -> Report:
    """Compare the environment with ``snap`` by metadata only (see the module docstring)."""
    from trainguard import __version__

    t0 = time.perf_counter()
    c = collector or Collector()
    prefix = snap.interpreter.prefix
    lstat = os.lstat
    sep = os.sep

    def full(key: str) -> str:
        return key if key.startswith("/") else (prefix if key == "." else prefix + sep + key)

    items = list(snap.files.items())
    nthreads = max(1, min(workers or os.cpu_count() or 1, len(items) // 4096 + 1))
    step = max(1, -(-len(items) // nthreads))
    chunks = [items[i:i + step] for i in range(0, len(items), step)]
    if nthreads == 1:
        results = [_stat_chunk(ch, full) for ch in chunks]
    else:
        # lstat releases the GIL: two threads halve the wall time on a cold dentry cache
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=nthreads) as pool:
            results = list(pool.map(lambda ch: _stat_chunk(ch, full), chunks))
    for res in results:
        for what, key, p, info in res:
            if what == "missing":
                c.add("TG-ENV-012", p, "present when the snapshot was taken",
                      severity=Severity.LOW if key.endswith(".pyc") else None)
            elif what == "error":
                c.add("TG-ENV-021", p, str(info))
            else:
                rec = snap.files[key]
                assert isinstance(info, tuple)
                size, mtime_ns, ctime_ns = info
                what_changed = []
                if size != rec.size:
                    what_changed.append(f"size {rec.size} -> {size}")
                if mtime_ns != rec.mtime_ns:
                    what_changed.append("mtime changed")
                if ctime_ns != rec.ctime_ns:
                    what_changed.append("ctime changed")
                c.add("TG-ENV-020", p, ", ".join(what_changed))
    tag = snap.interpreter.cache_tag
    for key, (_mode, mtime, ctime) in snap.dirs.items():
        p = full(key)
        try:
            st = lstat(p)
        except OSError:
            continue  # the files inside it are reported missing
        if st.st_mtime_ns == mtime and st.st_ctime_ns == ctime:
            continue
        try:
            names = os.listdir(p)
        except OSError as exc:
            c.add("TG-ENV-021", p, exc.strerror or str(exc))
            continue
        base = "" if key == "." else key + "/"
        for n in sorted(names):
            k = base + n
            if k in snap.files or k in snap.dirs:
                continue
            np = full(k)
            if n == "__pycache__" and os.path.isdir(np) and not os.path.islink(np):
                # a new cache directory: the interpreter compiled sources after the snapshot
                try:
                    inner = sorted(os.listdir(np))
                except OSError as exc:
                    c.add("TG-ENV-021", np, exc.strerror or str(exc))
                    continue
                for m in inner:
                    _new_entry(c, os.path.join(np, m), f"{k}/{m}", tag)
            else:
                _new_entry(c, np, k, tag)
    check_variables(c, snap, environ)
    report = Report(tool="trainguard", version=__version__, targets=[prefix])
    report.findings = c.finish()
    report.seconds = time.perf_counter() - t0
    return report

