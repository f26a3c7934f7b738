"""``trainguard diff`` through the real entry point: exit codes, text and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import Run

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.ones(4), "opt": {"param_groups": [{"lr": 0.1}]}, "step": 3}, a)
    torch.save({"w": torch.tensor([1.0, 2.0, 1.0, 1.0]), "opt": {"param_groups": [{"lr": 0.2}]},
                "step": 3}, b)
    return a, b


def test_identical_exits_0(run: Run, pair: tuple[Path, Path]) -> None:
    a, _ = pair
    r = run("diff", a, a)
    assert r.code == 0
    assert "identical" in r.out


def test_different_exits_1_text(run: Run, pair: tuple[Path, Path]) -> None:
    r = run("diff", *pair, "--values")
    assert r.code == 1
    assert "tensor w" in r.out
    assert "max|diff|=1" in r.out
    assert "opt.param_groups.0.lr  0.1 -> 0.2" in r.out


def test_json_and_output_file(run: Run, pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    r = run("diff", *pair, "-f", "json", "-o", out, "--values", "-j", "1")
    assert r.code == 1
    doc = json.loads(out.read_text())
    assert doc["identical"] is False
    names = {c["name"] for c in doc["files"][0]["changes"]}
    assert names == {"w", "opt.param_groups.0.lr"}


def test_all_lists_same_files(run: Run, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "same.txt").write_text("s")
    assert "same.txt" not in run("diff", tmp_path / "a", tmp_path / "b").out
    r = run("diff", tmp_path / "a", tmp_path / "b", "--all")
    assert r.code == 0
    assert "= same.txt" in r.out


def test_errors_exit_2(run: Run, pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = pair
    assert run("diff", a, tmp_path / "missing").code == 2
    assert run("diff", a, tmp_path).code == 2
    assert run("diff", a).code == 2
