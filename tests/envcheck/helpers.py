"""Real virtual environments for the env tests: built with ``python -m venv`` and pip from the
local package index/cache, once per session; each test works on its own copy."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from trainguard import envcheck
from trainguard.core.findings import Severity
from trainguard.core.report import Report


def make_venv(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   capture_output=True, timeout=300)
    return root / "bin" / "python"


def pip_install(python: Path, *args: str) -> None:
    """pip (the test runner's) installing into another interpreter's environment."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         "--disable-pip-version-check", *args],
        capture_output=True, text=True, timeout=900, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install {args} failed:\n{proc.stdout}\n{proc.stderr}")


@dataclass(frozen=True)
class Env:
    """A venv on disk and where its parts are."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site(self) -> Path:
        return next((self.root / "lib").glob("python3*/site-packages"))

    def dist_info(self, name: str) -> Path:
        return next(self.site.glob(f"{name}-*.dist-info"))

    def copy(self, dest: Path) -> Env:
        shutil.copytree(self.root, dest, symlinks=True)
        return Env(dest)


def rewrite_record(env: Env, dist: str, rel: str) -> None:
    """Do what an attacker who edited ``rel`` does next: put its new hash into RECORD."""
    data = (env.site / rel).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record = env.dist_info(dist) / "RECORD"
    rows = []
    for line in record.read_text().splitlines():
        if line.split(",")[0] == rel:
            line = f"{rel},sha256={digest},{len(data)}"
        rows.append(line)
    record.write_text("\n".join(rows) + "\n")


def verify(env: Env, **kw: object) -> Report:
    kw.setdefault("environ", {})
    return envcheck.verify(env.python, **kw)  # type: ignore[arg-type]


def snapshot_to(env: Env, path: Path, **kw: object) -> Path:
    kw.setdefault("environ", {})
    envcheck.save_snapshot(envcheck.snapshot(env.python, **kw), path)  # type: ignore[arg-type]
    return path


def hits(report: Report, rule_id: str) -> list[str]:
    """Locations (file names) of the findings under ``rule_id``."""
    return [f.location.path for f in report.findings if f.rule_id == rule_id]


def names(report: Report, rule_id: str) -> set[str]:
    return {os.path.basename(p) for p in hits(report, rule_id)}


def failing(report: Report, at: Severity = Severity.MEDIUM) -> list[str]:
    return [f"{f.rule_id} {f.location.path}: {f.evidence}" for f in report.at_or_above(at)]
