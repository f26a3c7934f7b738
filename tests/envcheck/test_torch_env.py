"""A real environment with torch (the interpreter running the tests), read-only: snapshot, full
verify against RECORDs and the snapshot, quick verify. Nothing of it is imported."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from trainguard import envcheck
from trainguard.core.findings import Severity

pytestmark = [pytest.mark.torch, pytest.mark.slow]


@pytest.fixture(scope="module")
def torch_python() -> Path:
    if importlib.util.find_spec("torch") is None:  # finds, does not import
        pytest.skip("torch is not installed in the test environment")
    return Path(sys.executable)


def test_torch_environment_snapshot_and_verify(torch_python: Path, tmp_path: Path) -> None:
    snap = envcheck.snapshot(torch_python, environ={})
    assert "torch" in {d["name"] for d in snap.distributions}
    libs = [k for k in snap.files if k.endswith("libtorch_cpu.so")]
    assert libs
    assert snap.files[libs[0]].digest is not None
    path = tmp_path / "torch-env.json"
    envcheck.save_snapshot(snap, path)
    # other processes may compile or install into a shared dev env meanwhile: only what is at
    # or above the default threshold must be absent
    for kw in ({}, {"against": path}, {"against": path, "quick": True}):
        report = envcheck.verify(torch_python, environ={}, **kw)  # type: ignore[arg-type]
        bad = [f"{f.rule_id} {f.location.path}: {f.evidence}"
               for f in report.at_or_above(Severity.MEDIUM)]
        assert not bad, (kw, bad[:20])
