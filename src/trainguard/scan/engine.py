"""Walk targets, scan each file, assemble a :class:`Report`.

Symbolic links are followed only while they stay inside the scanned tree (for a path inside a
Hugging Face cache repository, ``models--org--name/``, the whole repository counts as the tree,
since its snapshots link into ``blobs/``). A link that leaves the tree is a finding and is not
followed, unless the caller explicitly opts in. Each underlying file is scanned once, however many
links reach it. FIFOs, devices and sockets are never opened.
"""

from __future__ import annotations

import io
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from trainguard.artifacts.windows import FdFile
from trainguard.core.config import ScanConfig
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
    walked: set[tuple[int, int]] = set()  # directories entered through links (loops end here)
    count = 0
    for target in targets:
        p = Path(target)
        if not os.path.lexists(p):
            yield None, None, f"{target}: no such file or directory"
            continue
        try:
            root = p.resolve()
            root = _repo_root(root) or (root if root.is_dir() else root.parent)
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            yield None, None, f"{target}: {_reason(exc)}"
            continue
        errors: list[str] = []
        deferred: list[tuple[tuple[int, int], Path]] = []
        queue: deque[tuple[Path, bool]] = deque()
        if p.is_dir() and not p.is_symlink():
            queue.extend((fp, False) for fp in _walk(p, errors))
        else:
            queue.append((p, True))
        while queue or errors:
            while errors:
                yield None, None, errors.pop(0)
            if not queue:
                break
            fp, named = queue.popleft()
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
            except (OSError, RuntimeError) as exc:
                yield None, None, f"{display}: {_reason(exc)}"
                continue
            if stat.S_ISDIR(st.st_mode):
                # a directory link inside the tree: its entries get the same checks as any
                # other (links out of the tree, devices), and each directory is entered once
                if (fp.is_symlink() or named) and (st.st_dev, st.st_ino) not in walked:
                    walked.add((st.st_dev, st.st_ino))
                    queue.extend((sub, False) for sub in _walk(fp, errors))
                continue
            if not stat.S_ISREG(st.st_mode):
                if named:  # named on the command line: say why nothing was read
                    yield None, None, f"{display}: not a regular file (FIFO, device or socket); " \
                        "not opened"
                continue  # FIFOs, devices, sockets: never opened
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            if not named and _in_hub_blobs(fp):
                # a Hugging Face cache blob: report it under the snapshot name that links to
                # it (config.json, not blobs/<sha>), so wait until the snapshots were walked
                deferred.append((key, fp))
                continue
            seen.add(key)
            yield _Job(str(fp), display), None, None
        for key, fp in deferred:
            if key not in seen:  # a blob no snapshot names (an old revision)
                seen.add(key)
                yield _Job(str(fp), str(fp)), None, None


def _in_hub_blobs(path: Path) -> bool:
    """True for ``models--org--name/blobs/<sha>`` in a Hugging Face hub cache."""
    parent = path.parent
    return parent.name == "blobs" and parent.parent.name.startswith(
        ("models--", "datasets--", "spaces--"))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return "symbolic link loop" if "loop" in str(exc).lower() else str(exc)


def _walk(top: Path, errors: list[str]) -> Iterator[Path]:
    def onerror(exc: OSError) -> None:  # a directory that cannot be listed is not skipped quietly
        errors.append(f"{exc.filename}: {exc.strerror or exc}")

    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror, followlinks=False):
        dirnames.sort()
        d = Path(dirpath)
        for name in sorted(filenames):
            yield d / name
        for name in dirnames:
            if (d / name).is_symlink():
                yield d / name


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
    | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def scan_file(
    path: str, display: str, config: ScanConfig
) -> tuple[FileResult, list[Finding], str | None]:
    """Scan one file on disk; never raises for hostile content.

    Only regular files are read: a FIFO, device or socket (checked before opening, and again on
    the open descriptor) is an input error, never a read that blocks or never ends.
    """
    start = time.perf_counter()
    policy = Policy(config.allow_globals)
    ctx = ScanContext(config, policy, display)

    def error(reason: str) -> tuple[FileResult, list[Finding], str | None]:
        return FileResult(display, FileStatus.ERROR, note=reason), [], f"{display}: {reason}"

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return error("not a regular file (FIFO, device or socket); not opened")
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        return error(str(exc.strerror or exc))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between the check and the open
            return error("not a regular file (FIFO, device or socket); not opened")
        size = st.st_size
        head = os.pread(fd, 4096, 0)

        def opener() -> BinaryIO:
            return io.BufferedReader(FdFile(fd, size))  # type: ignore[return-value]

        blob = Blob(display, None, size, opener)
        ctx.scan(blob, 0, head)
        ctx.finish()
    except OSError as exc:
        return error(str(exc.strerror or exc))
    finally:
        ctx.close()
        os.close(fd)
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
        from concurrent.futures.process import BrokenProcessPool

        finished = 0
        try:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                args = [(j.path, j.display, config) for j in work]
                chunks = max(1, len(args) // (jobs * 8))
                for fr, findings, error in pool.map(_scan_job, args, chunksize=chunks):
                    collect(fr, findings, error)
                    finished += 1
        except BrokenProcessPool:
            # a worker was killed (out of memory, a signal): the files it had not reported are
            # errors of this run, never silently clean
            for j in work[finished:]:
                reason = "scan worker process died before reporting this file"
                collect(FileResult(j.display, FileStatus.ERROR, note=reason), [],
                        f"{j.display}: {reason}")
    else:
        for j in work:
            collect(*scan_file(j.path, j.display, config))
    report.findings.extend(check_directories([j.display for j in work], config))
    report.seconds = time.perf_counter() - start
    return report
