"""Golden JSON and SARIF reports of a fixed small input (tests/cli/golden/).

A change in output shows up as a diff of these files, to be reviewed. To rewrite them after an
intended change::

    TRAINGUARD_UPDATE_GOLDEN=1 python -m pytest tests/cli/test_golden.py

Volatile fields are normalised before comparing: durations (``seconds``), the tool version and
absolute paths. In SARIF, the rule table lists every registered rule (checked in
test_scan_cli.py::test_sarif_shape); the golden keeps only the rules its results use, re-indexed,
so that adding an unrelated rule does not rewrite it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run, build_golden_input, validate

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TRAINGUARD_UPDATE_GOLDEN") == "1"


def _scrub_paths(value: Any, root: str) -> Any:
    if isinstance(value, str):
        return value.replace(root, "<tmp>")
    if isinstance(value, list):
        return [_scrub_paths(v, root) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_paths(v, root) for k, v in value.items()}
    return value


def normalize_json(doc: dict[str, Any], root: Path) -> dict[str, Any]:
    doc = _scrub_paths(doc, str(root))
    doc["seconds"] = 0.0
    doc["tool"]["version"] = "<version>"
    for f in doc["files"]:
        f["seconds"] = 0.0
    return doc


def normalize_sarif(doc: dict[str, Any], root: Path) -> dict[str, Any]:
    doc = _scrub_paths(doc, str(root))
    doc = _scrub_paths(doc, root.as_uri())
    (run,) = doc["runs"]
    driver = run["tool"]["driver"]
    driver["version"] = "<version>"
    used = sorted({r["ruleId"] for r in run["results"]})
    by_id = {r["id"]: r for r in driver["rules"]}
    driver["rules"] = [by_id[i] for i in used]
    for r in run["results"]:
        r["ruleIndex"] = used.index(r["ruleId"])
    return doc


def _compare(name: str, actual: dict[str, Any]) -> None:
    path = GOLDEN / name
    text = json.dumps(actual, indent=2, sort_keys=True) + "\n"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing; run with TRAINGUARD_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    assert text == expected, (
        f"{name} differs from the golden file; if the change is intended, rerun with "
        "TRAINGUARD_UPDATE_GOLDEN=1 and review the diff"
    )


@pytest.fixture
def golden_args(tmp_path: Path) -> list[str]:
    # relative targets (the cwd is tmp_path, see conftest) plus one that does not exist
    build_golden_input(tmp_path)
    return ["golden-input", "golden-input/missing.pt"]


def test_json_golden(run: Run, golden_args: list[str], tmp_path: Path) -> None:
    r = run("scan", "-f", "json", *golden_args)
    assert r.code == 1
    doc = json.loads(r.out)
    validate(doc)
    _compare("scan.json", normalize_json(doc, tmp_path))


def test_sarif_golden(run: Run, golden_args: list[str], tmp_path: Path) -> None:
    r = run("scan", "-f", "sarif", *golden_args)
    assert r.code == 1
    _compare("scan.sarif", normalize_sarif(json.loads(r.out), tmp_path))


def test_json_golden_with_absolute_paths(run: Run, golden_args: list[str], tmp_path: Path) -> None:
    """Absolute targets give the same report once the temporary directory is normalised."""
    r = run("scan", "-f", "json", *(str(tmp_path / a) for a in golden_args))
    doc = normalize_json(json.loads(r.out), tmp_path)
    expected = json.loads((GOLDEN / "scan.json").read_text())

    def strip(value: Any) -> Any:
        return json.loads(json.dumps(value).replace("<tmp>/", ""))

    assert strip(doc) == strip(expected)
