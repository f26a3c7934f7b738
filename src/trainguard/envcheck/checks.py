"""``trainguard env verify``: the environment against its RECORDs and, stronger, a snapshot.

Steps (each names the file it is about):
1. RECORD rows (PEP 376/627): missing files, sizes, hashes; malformed rows and rows that leave
   the environment are reported and never followed; RECORDs written long after the installer's
   INSTALLER file, or differing from the snapshot, are "rewritten after install".
2. Files no RECORD owns (importable code dropped into site-packages).
3. ``__pycache__`` headers against their sources (PEP 552).
4. Startup hooks: executable ``.pth`` lines, ``.pth`` path entries outside the environment,
   sitecustomize/usercustomize.
5. Group/world-writable files and directories; loader variables; the lock file.
6. With a snapshot: every file's digest, files added and removed, distributions, interpreter.

Hashing runs in a background thread (``digest_files``, one thread per core) while the cheap
checks run, so a full verify costs about as much as hashing the bytes once.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainguard.core.findings import Finding, Severity
from trainguard.core.report import FileResult, FileStatus, Report
from trainguard.envcheck.common import (  # noqa: F401 - re-exported (older import paths)
    CODE_SUFFIXES,
    MAX_PER_RULE,
    RISKY_VARIABLES,
    Collector,
    EnvPolicy,
    _is_code,
    check_variables,
)
from trainguard.envcheck.hooks import find_customize, known_pth_reason, read_pth
from trainguard.envcheck.inventory import Entry, Inventory, collect
from trainguard.envcheck.lock import TOOLING, Lock
from trainguard.envcheck.probe import probe
from trainguard.envcheck.pyc import check_pyc, source_for
from trainguard.envcheck.records import normalize_name
from trainguard.envcheck.snapfile import (
    FileRecord,
    Snapshot,
    hash_entries,
    interpreter_digest,
)

#: without a snapshot, files this large are hashed as soon as the walk ends (nearly all of
#: them are in a RECORD, and they are most of the bytes)
EARLY_BYTES = 256 << 10


def verify_environment(python: str | os.PathLike[str] | None = None, *,
                       snapshot: Snapshot | None = None, lock: Lock | None = None,
                       policy: EnvPolicy | None = None, workers: int | None = None,
                       environ: dict[str, str] | None = None,
                       progress: Callable[[Path, int], None] | None = None,
                       collector: Collector | None = None) -> Report:
    """Full verification of the environment of ``python`` (see the module docstring)."""
    from trainguard import __version__
    from trainguard.integrity.hashing import digest_files

    t0 = time.perf_counter()
    policy = policy or EnvPolicy()
    c = collector or Collector()
    interp = probe(python if python is not None or snapshot is None
                   else snapshot.interpreter.executable)
    batches: list[tuple[threading.Thread, dict[str, Any]]] = []
    early: set[str] = set()

    def start_early(inv_: Inventory) -> None:
        # Right after the walk, before RECORDs are parsed: most bytes get hashed whatever the
        # RECORDs say (every snapshot file of the same size; without a snapshot the big files)
        if snapshot is not None:
            sel = [e for k, e in inv_.files.items() if e.kind == "file"
                   and (r := snapshot.files.get(k)) is not None and r.size == e.size]
        else:
            sel = [e for e in inv_.files.values() if e.kind == "file" and e.size >= EARLY_BYTES]
        early.update(e.path for e in sel)
        batches.append(_hash_in_background(sel, digest_files, workers, progress))

    inv = collect(interp, after_walk=start_early)

    # 1. plan the hashing: RECORD rows with a sha256 whose size matches, and snapshot files
    expect_record: dict[str, tuple[str, bytes, str]] = {}  # key -> (algo, digest, dist name)
    other_algo: list[tuple[str, str, bytes, str]] = []
    for dist in inv.distributions:
        where = dist.record or dist.dist_info
        if dist.record is None:
            c.add("TG-ENV-019", dist.dist_info, f"{dist.name} {dist.version} has no RECORD")
        for prob in dist.problems:
            c.add("TG-ENV-017", where, f"row {prob.row}: {prob.reason}"
                  + (f": {prob.text!r}" if prob.text else ""), distribution=dist.name)
        for ent in dist.entries:
            k = inv.nkey(ent.path)
            e = inv.files.get(k)
            if e is None:
                if k in inv.errors:
                    c.add("TG-ENV-021", ent.path, inv.errors[k])
                else:
                    c.add("TG-ENV-002", ent.path, f"listed in {dist.name} {dist.version}'s "
                          "RECORD", severity=Severity.LOW if k.endswith(".pyc") else None,
                          distribution=dist.name)
                continue
            if ent.digest is None:
                continue
            if e.kind != "file":
                what = f"a link to {e.target!r}" if e.kind == "link" else "not a regular file"
                c.add("TG-ENV-001", ent.path, f"is {what}, RECORD of {dist.name} lists a file",
                      distribution=dist.name)
                continue
            if ent.size is not None and e.size != ent.size:
                c.add("TG-ENV-001", ent.path, f"size {e.size} bytes, RECORD of {dist.name} "
                      f"{dist.version} says {ent.size}", distribution=dist.name)
                continue
            if ent.algorithm == "sha256":
                expect_record[k] = ("sha256", ent.digest, dist.name)
            else:
                other_algo.append((k, ent.algorithm or "", ent.digest, dist.name))
    snap_hash: set[str] = set()
    if snapshot is not None:
        for k, rec in snapshot.files.items():
            e = inv.files.get(k)
            if e is None:
                if k in inv.errors:
                    c.add("TG-ENV-021", inv.path(k), inv.errors[k])
                else:
                    c.add("TG-ENV-012", inv.path(k), "present when the snapshot was taken",
                          severity=Severity.LOW if k.endswith(".pyc") else None)
            elif e.kind != rec.kind or (e.kind == "link" and e.target != rec.digest):
                c.add(_changed_rule(k), inv.path(k), f"was a {rec.kind} ({rec.digest}), now a "
                      f"{e.kind}" + (f" to {e.target!r}" if e.target is not None else ""))
            elif e.kind == "file" and e.size != rec.size:
                c.add(_changed_rule(k), inv.path(k), f"size {e.size} bytes, snapshot has "
                      f"{rec.size}")
            elif e.kind == "file":
                snap_hash.add(k)

    # 2. hash what the early batch did not cover, in the background while the checks run
    rest = [inv.files[k] for k in set(expect_record) | snap_hash | _pth_keys(inv)
            if inv.files[k].path not in early]
    batches.append(_hash_in_background(rest, digest_files, workers, progress))
    _check_unowned(c, inv, snapshot)
    if snapshot is None:
        _check_pycs(c, inv)  # overlaps the hashing; with a snapshot it waits for the digests
    _check_permissions(c, inv)
    _check_record_times(c, inv, policy)
    check_variables(c, snapshot, environ)
    if lock is not None:
        check_lock(c, inv, lock)
    if snapshot is not None:
        _check_interpreter(c, inv, snapshot)
        _check_distributions(c, inv, snapshot)
    digests: dict[str, bytes] = {}
    for worker, result in batches:
        worker.join()
        if "exc" in result:
            raise result["exc"]
        digests.update(result["d"])
        for path_s, why in result["bad"].items():
            c.add("TG-ENV-021", path_s, why)

    # 3. compare digests
    for k, (_algo, want, dname) in expect_record.items():
        got = digests.get(inv.files[k].path)
        if got is not None and got != want:
            c.add("TG-ENV-001", inv.files[k].path, f"sha256 {got.hex()[:16]}..., RECORD of "
                  f"{dname} says {want.hex()[:16]}...", distribution=dname)
    for k, algo, want, dname in other_algo:
        try:
            got = _digest_with(inv, k, algo)
        except (OSError, ValueError) as exc:
            c.add("TG-ENV-021", inv.path(k), str(exc))
            continue
        if got != want:
            c.add("TG-ENV-001", inv.path(k), f"{algo} differs from RECORD of {dname}")
    if snapshot is not None:
        for k in snap_hash:
            got = digests.get(inv.files[k].path)
            if got is not None and got.hex() != snapshot.files[k].digest:
                c.add(_changed_rule(k), inv.path(k), f"sha256 {got.hex()[:16]}..., snapshot "
                      f"has {str(snapshot.files[k].digest)[:16]}...")
        snap_files = snapshot.files

        def unchanged(key: str) -> bool:
            got = digests.get(inv.files[key].path)
            return got is not None and key in snap_files and got.hex() == snap_files[key].digest

        _check_pycs(c, inv, unchanged)
    check_hooks(c, inv, digests, expect_record, policy=policy, snap=snapshot)

    report = Report(tool="trainguard", version=__version__, targets=[str(inv.prefix)])
    report.findings = c.finish()
    report.files = _dist_results(inv, report.findings)
    report.seconds = time.perf_counter() - t0
    return report


def _hash_in_background(entries: list[Entry], digest_files: Callable[..., dict[Path, bytes]],
                        workers: int | None, progress: Callable[[Path, int], None] | None,
                        ) -> tuple[threading.Thread, dict[str, Any]]:
    """Start hashing ``entries`` (biggest first) in a thread; join it, then read the dict."""
    result: dict[str, Any] = {"d": {}, "bad": {}}
    todo = sorted(entries, key=lambda e: -e.size)

    def run() -> None:
        try:
            result["d"], result["bad"] = hash_entries(todo, digest_files, workers, progress)
        except BaseException as exc:  # re-raised in the caller's thread
            result["exc"] = exc

    t = threading.Thread(target=run, name="trainguard-env-hash", daemon=True)
    t.start()
    return t, result


def _digest_with(inv: Inventory, key: str, algo: str) -> bytes:
    from trainguard.integrity.hashing import open_regular

    h = hashlib.new(algo)
    # never a FIFO or device swapped in after the walk, never a link (it was a file when lstat-ed)
    fd, _size = open_regular(inv.path(key), follow_symlinks=False)
    with os.fdopen(fd, "rb", closefd=True) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def _changed_rule(key: str) -> str:
    # a RECORD that differs from the snapshot is the "rewritten after install" signal
    return "TG-ENV-004" if key.endswith(".dist-info/RECORD") else "TG-ENV-011"


def _pth_keys(inv: Inventory) -> set[str]:
    sites = {str(d) for d in inv.site_dirs}
    return {k for k, e in inv.files.items()
            if e.kind == "file" and k.endswith(".pth") and os.path.dirname(e.path) in sites}


def _in_site(inv: Inventory, e: Entry) -> bool:
    return any(e.path.startswith(str(d) + os.sep) for d in inv.site_dirs)


def _check_unowned(c: Collector, inv: Inventory, snap: Snapshot | None) -> None:
    """TG-ENV-003 (unowned) and, with a snapshot, TG-ENV-013 (added since)."""
    tag = inv.interpreter.cache_tag
    for k, e in inv.files.items():
        if snap is not None and k in snap.files:
            continue
        in_meta = "/__pycache__/" in f"/{k}" and source_for(e.path, tag) is not None
        if snap is not None:
            if in_meta:
                c.add("TG-ENV-013", e.path, "compiled after the snapshot was taken; its header "
                      "matches the source but its code cannot be checked", severity=Severity.LOW)
            else:
                c.add("TG-ENV-013", e.path, f"a {e.kind} of {e.size} bytes",
                      severity=Severity.HIGH if _is_code(k) else None)
            continue
        if k in inv.owners or not _in_site(inv, e) or in_meta:
            continue
        parts = k.split("/")
        if any(p.endswith((".dist-info", ".egg-info")) for p in parts[:-1]):
            continue
        if "__pycache__" in parts[:-1]:
            continue  # a cache entry for another interpreter or an orphan: never imported
        if k.endswith(".pth") and e.kind == "file" and read_pth(Path(e.path)).exec_lines:
            continue  # TG-ENV-006 names it
        c.add("TG-ENV-003", e.path, f"a {e.kind} of {e.size} bytes no distribution lists",
              severity=None if _is_code(k) else Severity.LOW)


def _check_pycs(c: Collector, inv: Inventory,
                unchanged: Callable[[str], bool] | None = None) -> None:
    """TG-ENV-005 for each __pycache__ entry; pairs where ``unchanged`` says both the .pyc and
    its source still have their snapshot digests are skipped (nothing about them changed)."""
    tag, magic = inv.interpreter.cache_tag, inv.interpreter.magic
    for k, e in inv.files.items():
        if e.kind != "file" or not k.endswith(".pyc"):
            continue
        src = source_for(e.path, tag)
        if src is None:
            continue
        src_key = inv.nkey(src)
        se = inv.files.get(src_key)
        if se is None:
            continue  # an orphan cache entry is never imported
        if unchanged is not None and unchanged(k) and unchanged(src_key):
            continue
        # the walk's lstat of a regular source saves a stat per file; a link is followed
        st = (se.mtime_ns // 1_000_000_000, se.size) if se.kind == "file" else None
        prob = check_pyc(e.path, src, magic, st)
        if prob is not None:
            c.add("TG-ENV-005", e.path, f"{prob.reason} ({os.path.basename(src)})",
                  severity=Severity.HIGH if prob.runs_stale else Severity.MEDIUM,
                  source=str(src))


def _check_permissions(c: Collector, inv: Inventory) -> None:
    for e in [*inv.dirs.values(), *inv.files.values()]:
        if e.kind == "link" or not e.mode & 0o022:
            continue
        who = "world" if e.mode & 0o002 else "group"
        c.add("TG-ENV-008", e.path, f"{e.kind} is {who}-writable (mode {e.mode:04o})",
              severity=Severity.HIGH if who == "world" else None, mode=f"{e.mode:04o}")


def _check_record_times(c: Collector, inv: Inventory, policy: EnvPolicy) -> None:
    """TG-ENV-004 heuristic: installers write INSTALLER just before RECORD, both fresh."""
    for dist in inv.distributions:
        if dist.record is None:
            continue
        rec = inv.files.get(inv.key(dist.record))
        ref = inv.files.get(inv.key(dist.dist_info / "INSTALLER"))
        if rec is None or ref is None:
            continue
        late = (rec.ctime_ns - ref.ctime_ns) / 1e9
        if late > policy.record_slack_seconds:
            c.add("TG-ENV-004", dist.record, f"RECORD changed {late:.0f} s after INSTALLER was "
                  f"written (allowed: {policy.record_slack_seconds:g} s)", distribution=dist.name)


def check_lock(c: Collector, inv: Inventory, lock: Lock) -> None:
    """TG-ENV-009/010 for every installed distribution (tooling and editable installs exempt)."""
    for dist in inv.distributions:
        name = normalize_name(dist.name)
        if dist.editable or (name in TOOLING and name not in lock.packages):
            continue
        if name not in lock.packages:
            c.add("TG-ENV-009", dist.dist_info, f"{dist.name} {dist.version} is not in "
                  f"{lock.path.name}", distribution=dist.name)
        elif (want := lock.packages[name]) is not None and want != dist.version:
            c.add("TG-ENV-010", dist.dist_info, f"{dist.name} {dist.version} installed, "
                  f"{lock.path.name} locks {want}", distribution=dist.name)


def _check_interpreter(c: Collector, inv: Inventory, snap: Snapshot) -> None:
    a, b = snap.interpreter, inv.interpreter
    for what, old, new in (("executable", a.executable, b.executable),
                           ("version", a.version, b.version), ("prefix", a.prefix, b.prefix)):
        if old != new:
            c.add("TG-ENV-015", b.executable, f"{what} is {new!r}, snapshot has {old!r}")
    digest = interpreter_digest(b)
    if digest != snap.interpreter_sha256:
        c.add("TG-ENV-015", os.path.realpath(b.executable), f"sha256 {digest[:16]}..., "
              f"snapshot has {snap.interpreter_sha256[:16]}...")


def _check_distributions(c: Collector, inv: Inventory, snap: Snapshot) -> None:
    old = {normalize_name(d["name"]): d for d in snap.distributions}
    new = {d.key: d for d in inv.distributions}
    for k in sorted(set(old) | set(new)):
        if k not in new:
            c.add("TG-ENV-014", inv.path(str(old[k].get("dist_info", k))),
                  f"{old[k]['name']} {old[k]['version']} was removed")
        elif k not in old:
            c.add("TG-ENV-014", new[k].dist_info, f"{new[k].name} {new[k].version} was added")
        elif old[k]["version"] != new[k].version:
            c.add("TG-ENV-014", new[k].dist_info, f"{new[k].name} {old[k]['version']} -> "
                  f"{new[k].version}")


def hook_records(inv: Inventory, files: dict[str, FileRecord]) -> list[dict[str, Any]]:
    """The startup hooks of an environment, for a snapshot (what runs at every start)."""
    out: list[dict[str, Any]] = []
    for k in sorted(_pth_keys(inv)):
        pth = read_pth(Path(inv.files[k].path))
        if pth.exec_lines or pth.path_lines:
            owner = inv.owners.get(k)
            out.append({"path": k, "kind": "pth", "exec_lines": list(pth.exec_lines),
                        "path_lines": list(pth.path_lines),
                        "owner": inv.distributions[owner].name if owner is not None else None,
                        "sha256": files[k].digest if k in files else None})
    for p in find_customize(_hook_dirs(inv)):
        out.append({"path": inv.key(p), "kind": p.name.split(".")[0]})
    return out


def _hook_dirs(inv: Inventory) -> list[Path]:
    dirs = [*inv.site_dirs, *(Path(p) for p in inv.interpreter.sys_path if p)]
    for k in _pth_keys(inv):
        dirs += [Path(p) for p in read_pth(Path(inv.files[k].path)).path_lines]
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def check_hooks(c: Collector, inv: Inventory, digests: dict[str, bytes],
                expect_record: dict[str, tuple[str, bytes, str]], *, policy: EnvPolicy,
                snap: Snapshot | None) -> None:
    """TG-ENV-006 (executable .pth), TG-ENV-022 (outside paths), TG-ENV-007 (customize)."""
    prefix = os.path.normpath(inv.prefix)
    for k in sorted(_pth_keys(inv)):
        e = inv.files[k]
        pth = read_pth(Path(e.path))
        got = digests.get(e.path)
        owner_i = inv.owners.get(k)
        owner = inv.distributions[owner_i] if owner_i is not None else None
        record_ok = got is not None and k in expect_record and expect_record[k][1] == got
        if snap is not None and k in snap.files:
            record_ok = record_ok and got is not None and got.hex() == snap.files[k].digest
        allowed = known_pth_reason(Path(e.path), owner, record_ok) or (
            "allow-listed digest" if got is not None and got.hex() in policy.allow_pth else None)
        if pth.problem:
            c.add("TG-ENV-006", e.path, pth.problem)
        if pth.exec_lines and not allowed:
            who = f"owned by {owner.name}" if owner else "owned by no distribution"
            c.add("TG-ENV-006", e.path, f"{len(pth.exec_lines)} executable line(s), {who}: "
                  f"{pth.exec_lines[0][:160]!r}",
                  sha256=got.hex() if got is not None else None)
        if allowed:
            continue
        for line in pth.path_lines:
            if line != prefix and not line.startswith(prefix + os.sep):
                c.add("TG-ENV-022", e.path, f"adds {line[:300]!r} to sys.path")
    for p in find_customize(_hook_dirs(inv)):
        c.add("TG-ENV-007", p, f"{p.name.split('.')[0]} is imported at every interpreter start")


def _dist_results(inv: Inventory, findings: list[Finding]) -> list[FileResult]:
    per: dict[str, int] = {}
    for f in findings:
        d = f.details.get("distribution")
        if isinstance(d, str):
            per[d] = per.get(d, 0) + 1
    sizes: dict[int, int] = {}
    for k, o in inv.owners.items():
        e = inv.files.get(k)
        if e is not None:
            sizes[o] = sizes.get(o, 0) + e.size
    out: list[FileResult] = []
    for i, dist in enumerate(inv.distributions):
        out.append(FileResult(str(dist.dist_info), FileStatus.SCANNED, ["dist-info"],
                              sizes.get(i, 0),
                              0.0, per.get(dist.name, 0), f"{dist.name} {dist.version}"))
    return out
