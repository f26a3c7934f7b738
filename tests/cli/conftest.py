"""Fixtures of the CLI tests: in-process and console-script runners, isolated config, inputs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import CUSTOM_CLASS, MALICIOUS, TRAILING, Result, Run, clean_pickle, trainguard_exe

from trainguard.cli.main import main


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Call the real CLI entry point in-process: ``run("scan", path, "-f", "json")``."""

    def _run(*args: str | Path) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return _run


@pytest.fixture
def run_exe() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the console script in a subprocess (stdin closed, stdout/stderr pipes: no TTY)."""

    def _run(*args: str | Path, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if k != "TRAINGUARD_CONFIG"}
        full_env.update(env or {})
        return subprocess.run(
            [*trainguard_exe(), *map(str, args)], capture_output=True, text=True,
            stdin=subprocess.DEVNULL, cwd=cwd, env=full_env, timeout=120, check=False,
        )

    return _run


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No trainguard.toml from the developer's environment leaks into a test."""
    monkeypatch.delenv("TRAINGUARD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """One pickle per outcome in ``tmp_path/in``: clean, evil (critical), custom (medium),
    trailing (low)."""
    d = tmp_path / "in"
    d.mkdir()
    out = {}
    for name, data in {"clean.pkl": clean_pickle(), "evil.pkl": MALICIOUS,
                       "custom.pkl": CUSTOM_CLASS, "trailing.pkl": TRAILING}.items():
        p = d / name
        p.write_bytes(data)
        out[name.removesuffix(".pkl")] = p
    return out
