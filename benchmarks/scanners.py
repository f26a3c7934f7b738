"""The scanners under comparison: how each is run and how its answer is read.

Each tool runs as the command a user types, in a subprocess, from the bench venv's ``bin/``, in a
fresh empty working directory (fickling writes ``safety_results.json`` into the cwd, modelscan reads
``./modelscan-settings.toml``), with telemetry off and no network needed.

A run ends in a :class:`Verdict`:

* ``flagged``: the tool says the input is unsafe (for a malicious case: detected; for a benign
  case: a false positive).
* ``error``: the tool crashed, timed out, or said it could not finish. An error alone is NOT a
  detection (a user sees "error", not "malicious"), and it is not a false positive either; errors
  are counted separately. A run can be flagged and errored at once (picklescan and modelscan
  report both; their exit code then says "error").
* ``skipped``: the tool said it had nothing it could scan (modelscan exit 3, picklescan or
  fickling seeing no pickle). Neither detected nor a false positive.

How each tool's answer is read (exit codes from each tool's CLI source of the pinned version):

=============  ======================================  ========================================
tool           command                                  flagged when
=============  ======================================  ========================================
trainguard     ``trainguard scan F -f json``           exit 1 (a finding >= medium, the default
                                                        ``--fail-on``); exit 2 is an error
picklescan     ``picklescan --path F``                 summary line ``Dangerous globals: N``
                                                        with N > 0 (what its exit 1 means;
                                                        "suspicious" globals alone exit 0);
                                                        exit 2 or a logged exception: error
modelaudit     ``modelaudit scan F --format json       an issue of severity warning/critical or
               --no-cache``                             a failed check of that severity (its own
                                                        exit-1 rule); exit 2 ("operational error
                                                        or inconclusive"): error
fickling       ``fickling --check-safety F``           exit 1; exit 2 (cannot parse, e.g. any
                                                        zip-based torch file): error
fickling-lib   fickling's own per-file routine for     any member not ``is_safe`` (its
               model repos (``--huggingface`` path:    ``ScanResult``; parse errors count as
               zip -> ``scan_zip_archive``, pickle ->  unsafe there); 7z/tar/npy: skipped, as
               ``scan_file``), on a local file         fickling does
modelscan      ``modelscan -p F -r json -o OUT``       ``total_issues`` > 0 in OUT; exit 2 or
                                                        ``errors`` in OUT: error; exit 3 (no
                                                        supported file): skipped
=============  ======================================  ========================================

modelaudit runs with ``--no-cache`` so that each timing is a real scan (its default caches results
by file hash, which would make repeats free).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent

#: environment of every run: telemetry off, offline, no colour, no pagers
ENV_EXTRA = {
    "PROMPTFOO_DISABLE_TELEMETRY": "1",  # modelaudit (telemetry.py: _is_disabled)
    "NO_ANALYTICS": "1",  # modelaudit
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "NO_COLOR": "1",
    "TERM": "dumb",
    "COLUMNS": "200",
    "PYTHONWARNINGS": "ignore",
}


@dataclass(frozen=True)
class Verdict:
    """How one run of one tool on one input ended."""

    flagged: bool
    error: bool = False
    skipped: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        """One word: flagged, error, skipped or clean."""
        if self.flagged:
            return "flagged"
        if self.error:
            return "error"
        return "skipped" if self.skipped else "clean"


@dataclass(frozen=True)
class Run:
    """What a subprocess left behind, for a tool's reader."""

    rc: int
    stdout: str
    stderr: str
    workdir: Path


@dataclass(frozen=True)
class Tool:
    """A scanner: its distribution name, the command for one path, and how to read the result."""

    name: str
    dist: str
    argv: Callable[[Path, Path], list[str]]
    read: Callable[[Run], Verdict]
    dirs: bool = True  # accepts a directory as input
    batch: bool = False  # the corpus goes through one process (run_batch_fickling_lib)

    @property
    def version(self) -> str:
        """The installed version of the tool's distribution."""
        try:
            return version(self.dist)
        except PackageNotFoundError:
            return "not installed"


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _last_lines(text: str, n: int = 2) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


# ----------------------------------------------------------------------------- trainguard
def _read_trainguard(r: Run) -> Verdict:
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        return Verdict(False, error=True, note=_short(_last_lines(r.stderr or r.stdout)))
    findings = doc.get("findings", [])
    note = "; ".join(
        f"{f['rule_id']}:{f['severity']} {f.get('location', {}).get('member') or ''} "
        f"{f.get('evidence', '')}".replace("  ", " ")
        for f in findings[:3]
    )
    errors = doc.get("errors") or []
    if errors and not note:
        note = _short(str(errors[0]))
    return Verdict(r.rc == 1, error=r.rc not in (0, 1), note=_short(note, 300))


# ----------------------------------------------------------------------------- picklescan
_PS_DANGEROUS = re.compile(r"^Dangerous globals: (\d+)", re.M)
_PS_SUSPICIOUS = re.compile(r"^Suspicious globals: (\d+)", re.M)
_PS_SCANNED = re.compile(r"^Scanned files: (\d+)", re.M)


def _read_picklescan(r: Run) -> Verdict:
    out = r.stdout + r.stderr
    m = _PS_DANGEROUS.search(out)
    if m is None:
        return Verdict(False, error=True, note=_short(_last_lines(out)))
    dangerous = int(m.group(1))
    sm = _PS_SUSPICIOUS.search(out)
    suspicious = int(sm.group(1)) if sm else 0
    scanned = _PS_SCANNED.search(out)
    found = [ln.split(": ", 1)[-1] for ln in out.splitlines() if " FOUND" in ln]
    errored = r.rc == 2 or "Traceback" in out or "ERROR" in out
    note = f"dangerous={dangerous} suspicious={suspicious}"
    if found:
        note += " " + "; ".join(found[:3])
    if errored:
        note += " | " + _last_lines(r.stderr or out, 1)
    return Verdict(
        dangerous > 0,
        error=errored,
        skipped=bool(scanned and scanned.group(1) == "0"),
        note=_short(note, 300),
    )


# ----------------------------------------------------------------------------- modelaudit
def _read_modelaudit(r: Run) -> Verdict:
    try:
        doc = json.loads(r.stdout[r.stdout.index("{"):]) if "{" in r.stdout else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return Verdict(False, error=True, note=_short(_last_lines(r.stderr or r.stdout)))
    security = ("warning", "critical")
    issues = [i for i in doc.get("issues") or [] if str(i.get("severity")).lower() in security]
    failed = [
        c for c in doc.get("checks") or []
        if c.get("status") == "failed" and str(c.get("severity")).lower() in security
    ]
    hits = issues or failed
    note = "; ".join(f"{i.get('severity')}: {i.get('message', '')}" for i in hits[:3])
    if r.rc == 2 and not note:
        infos = list(doc.get("issues") or [])
        note = "exit 2: " + "; ".join(str(i.get("message", "")) for i in infos[:2])
    return Verdict(bool(hits), error=r.rc not in (0, 1), note=_short(note, 300))


# ----------------------------------------------------------------------------- fickling
def _read_fickling(r: Run) -> Verdict:
    # An uncaught exception also exits 1 (Python's own code), which is not fickling's "unsafe".
    crashed = "Traceback (most recent call last)" in r.stderr
    if r.rc == 2 or crashed:
        return Verdict(False, error=True, note=_short(_last_lines(r.stderr, 1)))
    return Verdict(r.rc == 1, error=r.rc not in (0, 1))


#: fickling's per-file routine from its ``--huggingface`` scan (fickling/cli.py, 0.1.12), applied
#: to local paths: the most fickling does with a model file short of its Python import hooks.
#: Takes several targets and prints one JSON line per target (its import of torch, through
#: fickling.polyglot, costs ~2.5 s, so the corpus goes through one process: see run_batch).
_FICKLING_LIB = r"""
import json, sys, time, traceback
from pathlib import Path, PurePosixPath
from fickling.cli import HF_RAW_PICKLE_EXTENSIONS, HF_ZIP_PICKLE_EXTENSIONS
from fickling.loader import scan_file, scan_zip_archive
from fickling.polyglot import find_file_properties

def scan(target):
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    unsafe, errors, scanned, notes = False, [], 0, []
    for f in files:
        ext = PurePosixPath(f.name).suffix.lower()
        props = find_file_properties(str(f))
        if props["is_torch_zip"] or props["is_standard_zip"] or ext in HF_ZIP_PICKLE_EXTENSIONS:
            results = list(scan_zip_archive(str(f), graceful=True,
                                            json_output_path="out.json").values())
        elif props["is_valid_pickle"] or ext in HF_RAW_PICKLE_EXTENSIONS:
            results = [scan_file(str(f), graceful=True, json_output_path="out.json")]
        else:
            continue
        scanned += 1
        for res in results:
            errors.extend(res.errors)
            if not res.is_safe:
                unsafe = True
                notes.append(f"{PurePosixPath(res.filepath).name} {res.severity.name}")
    return {"unsafe": unsafe, "errors": errors, "scanned": scanned, "notes": notes}

for arg in sys.argv[1:]:
    t0 = time.perf_counter()
    try:
        doc = scan(Path(arg))
    except Exception as exc:
        doc = {"unsafe": False, "errors": [f"crash: {exc!r}"], "scanned": 1, "notes": [],
               "crash": traceback.format_exc(limit=2)}
    doc.update(target=arg, seconds=time.perf_counter() - t0)
    print(json.dumps(doc), flush=True)
"""


def _fickling_lib_verdict(doc: dict[str, Any]) -> Verdict:
    note = "; ".join(doc["notes"][:3] + doc["errors"][:1])
    return Verdict(
        bool(doc["unsafe"]),
        error=bool(doc["errors"]),
        skipped=doc["scanned"] == 0,
        note=_short(note, 300),
    )


def _read_fickling_lib(r: Run) -> Verdict:
    try:
        doc = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Verdict(False, error=True, note=_short(_last_lines(r.stderr or r.stdout)))
    return _fickling_lib_verdict(doc)


def run_batch_fickling_lib(paths: list[Path], timeout: float) -> dict[str, tuple[float, Verdict]]:
    """fickling-lib over many targets in one process: {target: (in-process seconds, verdict)}.

    The seconds exclude the interpreter start and imports (paid once for the batch).
    """
    env = {**os.environ, **ENV_EXTRA}
    out: dict[str, tuple[float, Verdict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fickling-lib-") as wd:
        argv = [str(BIN / "python"), "-c", _FICKLING_LIB, *(str(p.resolve()) for p in paths)]
        try:
            proc = subprocess.run(argv, cwd=wd, env=env, capture_output=True, text=True,
                                  errors="replace", timeout=timeout, check=False)
            stdout = proc.stdout
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    for line in stdout.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        out[doc["target"]] = (doc["seconds"], _fickling_lib_verdict(doc))
    return out


# ----------------------------------------------------------------------------- modelscan
def _read_modelscan(r: Run) -> Verdict:
    out = r.workdir / "modelscan.json"
    if r.rc == 3:
        return Verdict(False, skipped=True, note="no supported files")
    try:
        doc = json.loads(out.read_text())
    except (OSError, ValueError):
        return Verdict(False, error=True, note=_short(_last_lines(r.stdout + r.stderr)))
    issues = doc.get("issues") or []
    errs = doc.get("errors") or []
    note = "; ".join(f"{i.get('severity')}: {i.get('description')}" for i in issues[:3])
    if errs:
        note += " | errors: " + "; ".join(str(e.get("description", e)) for e in errs[:2])
    total = int(doc.get("summary", {}).get("total_issues", len(issues)))
    return Verdict(total > 0, error=r.rc not in (0, 1) or bool(errs), note=_short(note, 300))


# ----------------------------------------------------------------------------- registry
TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("trainguard", "trainguard",
             lambda p, w: [str(BIN / "trainguard"), "scan", str(p), "-f", "json"],
             _read_trainguard),
        Tool("picklescan", "picklescan",
             lambda p, w: [str(BIN / "picklescan"), "--path", str(p)], _read_picklescan),
        Tool("modelaudit", "modelaudit",
             lambda p, w: [str(BIN / "modelaudit"), "scan", str(p), "--format", "json",
                           "--no-cache"],
             _read_modelaudit),
        Tool("fickling", "fickling",
             lambda p, w: [str(BIN / "fickling"), "--check-safety", "--json-output",
                           str(w / "fickling.json"), str(p)],
             _read_fickling, dirs=False),
        Tool("fickling-lib", "fickling",
             lambda p, w: [str(BIN / "python"), "-c", _FICKLING_LIB, str(p)], _read_fickling_lib,
             batch=True),
        Tool("modelscan", "modelscan",
             lambda p, w: [str(BIN / "modelscan"), "-p", str(p), "-r", "json", "-o",
                           str(w / "modelscan.json")],
             _read_modelscan),
    )
}


def run_tool(tool: Tool, path: Path, timeout: float, extra_args: tuple[str, ...] = ()
             ) -> tuple[float, int, Verdict]:
    """Run ``tool`` on ``path`` once; return (wall seconds, exit code, verdict)."""
    if not tool.dirs and path.is_dir():
        return 0.0, -1, Verdict(False, skipped=True, note="the CLI takes one file, not a folder")
    env = {**os.environ, **ENV_EXTRA}
    with tempfile.TemporaryDirectory(prefix=f"bench-{tool.name}-") as wd:
        workdir = Path(wd)
        argv = [*tool.argv(path.resolve(), workdir), *extra_args]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True,
                                  errors="replace", timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return time.perf_counter() - t0, -1, Verdict(False, error=True,
                                                          note=f"timeout after {timeout:g} s")
        seconds = time.perf_counter() - t0
        verdict = tool.read(Run(proc.returncode, proc.stdout, proc.stderr, workdir))
        return seconds, proc.returncode, verdict


def environment() -> dict[str, Any]:
    """Versions and machine facts to store with the results."""
    import platform

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "tools": {name: t.version for name, t in TOOLS.items()},
    }
