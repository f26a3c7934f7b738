"""Walk targets, scan each file, assemble a :class:`Report`.

Symbolic links are followed only while they stay inside the scanned tree (for a path inside a
Hugging Face cache repository, ``models--org--name/``, the whole repository counts as the tree, since
its snapshots link into ``blobs/``). A link that leaves the tree is a finding and is not followed,
unless the caller explicitly opts in. Each underlying file is scanned once, however many links
reach it. FIFOs, devices and sockets are never opened.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainguard.core.config import ScanConfig
from trainguard.core.errors import InputError
from trainguard.core.findings import Finding, Location
from trainguard.core.report import FileResult, FileStatus, Report
from trainguard.core.rules import rule
from trainguard.scan.context import Blob, ScanContext
from trainguard.scan.policy import Policy

#: called after each file: (files done, files known so far, the file's result)
Progress = Callable[[int, int, FileResult], None]


@dataclass(frozen=True)
class _Job:
    path: str
    display: str


def _repo_root(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if p.name.startswith(("models--", "datasets--", "spaces--")):
            return p
    return None


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def iter_files(
    targets: Sequence[str], config: ScanConfig, follow_outside: bool = False
) -> Iterator[tuple[_Job | None, Finding | None, str | None]]:
    """Yield (job, finding, error) triples: files to scan, link findings, unreadable targets."""
    seen: set[tuple[int, int]] = set()
    count = 0
    for target in targets:
        p = Path(target)
        if not os.path.lexists(p):
            yield None, None, f"{target}: no such file or directory"
            continue
        root = p.resolve()
        root = _repo_root(root) or (root if root.is_dir() else root.parent)
        if p.is_dir() and not p.is_symlink():
            walker: Iterable[Path] = _walk(p)
        else:
            walker = [p]
        for fp in walker:
            count += 1
            if count > config.limits.max_files:
                yield None, rule("TG-LIM-001").finding(
                    Location(str(target)), f"more than max_files={config.limits.max_files} files"
                ), None
                return
            display = str(fp)
            try:
                if fp.is_symlink():
                    real = fp.resolve()
                    if not _within(real, root) and not follow_outside:
                        yield None, rule("TG-FS-001").finding(
                            Location(display), f"{display} -> {os.readlink(fp)} (outside {root})"
                        ), None
                        continue
                st = os.stat(fp)
            except OSError as exc:
                yield None, None, f"{display}: {exc.strerror or exc}"
                continue
            if stat.S_ISDIR(st.st_mode):
                if fp.is_symlink():
                    # a directory link inside the tree: walk it (bounded by the inode set below)
                    for sub in _walk(fp):
                        key = _key(sub)
                        if key and key not in seen:
                            seen.add(key)
                            yield _Job(str(sub), str(sub)), None, None
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # FIFOs, devices, sockets: never opened
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            yield _Job(str(fp), display), None, None


def _key(p: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(p)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _walk(top: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        d = Path(dirpath)
        for name in sorted(filenames):
            yield d / name
        for name in dirnames:
            if (d / name).is_symlink():
                yield d / name


def scan_file(path: str, display: str, config: ScanConfig) -> tuple[FileResult, list[Finding], str | None]:
    """Scan one file on disk; never raises for hostile content."""
    start = time.perf_counter()
    policy = Policy(config.allow_globals)
    ctx = ScanContext(config, policy, display)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        fr = FileResult(display, FileStatus.ERROR, note=str(exc.strerror or exc))
        return fr, [], f"{display}: {exc.strerror or exc}"
    blob = Blob(display, None, size, lambda: open(path, "rb"))
    try:
        ctx.scan(blob, 0, head)
    finally:
        ctx.close()
    status = FileStatus.SCANNED if (ctx.formats or ctx.findings) else FileStatus.SKIPPED
    fr = FileResult(display, status, ctx.formats, size, time.perf_counter() - start,
                    len(ctx.findings), "" if status is FileStatus.SCANNED else "not a model format")
    return fr, ctx.findings, None


def _scan_job(args: tuple[str, str, ScanConfig]) -> tuple[FileResult, list[Finding], str | None]:
    return scan_file(*args)


def scan_paths(
    targets: Sequence[str],
    config: ScanConfig | None = None,
    *,
    jobs: int = 1,
    progress: Progress | None = None,
    follow_outside_symlinks: bool = False,
    tool_version: str = "",
) -> Report:
    """Scan files and directories; the library entry point behind ``trainguard scan``."""
    from trainguard import __version__
    from trainguard.scan.analyzers.hf import check_directories

    config = config or ScanConfig()
    start = time.perf_counter()
    report = Report("trainguard", tool_version or __version__, [str(t) for t in targets])
    work: list[_Job] = []
    for job, finding, error in iter_files(targets, config, follow_outside_symlinks):
        if job is not None:
            work.append(job)
        if finding is not None:
            report.findings.append(finding)
        if error is not None:
            report.errors.append(error)
    if not work and not report.findings and not report.errors:
        pass
    done = 0

    def collect(fr: FileResult, findings: list[Finding], error: str | None) -> None:
        nonlocal done
        done += 1
        report.files.append(fr)
        report.findings.extend(findings)
        if error:
            report.errors.append(error)
        if progress is not None:
            progress(done, len(work), fr)

    if jobs > 1 and len(work) > 1:
        # Imported here: the process pool costs ~25 ms of start-up, and start-up is per-file time.
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            args = [(j.path, j.display, config) for j in work]
            for fr, findings, error in pool.map(_scan_job, args, chunksize=max(1, len(args) // (jobs * 8))):
                collect(fr, findings, error)
    else:
        for j in work:
            collect(*scan_file(j.path, j.display, config))
    report.findings.extend(check_directories([j.display for j in work], config))
    report.seconds = time.perf_counter() - start
    return report


def require_targets(targets: Sequence[str]) -> None:
    if not targets:
        raise InputError("no path to scan", remedy="pass one or more files or directories")
