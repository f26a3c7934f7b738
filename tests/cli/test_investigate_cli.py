"""``trainguard investigate``: exit codes, formats, sources (ledger, JSONL, both), errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run

from investigate.helpers import dig, open_test_ledger, synthetic_events, write_jsonl


@pytest.fixture
def sabotaged(tmp_path: Path) -> dict[str, Path]:
    events = synthetic_events()
    db = tmp_path / "ledger.db"
    ledger = open_test_ledger(db)
    ledger.append_many(events)
    ledger.close()
    return {"ledger": db, "jsonl": write_jsonl(tmp_path / "events.jsonl", events),
            "clean": write_jsonl(tmp_path / "clean.jsonl", synthetic_events(tamper=False))}


def test_text_names_the_tampered_artifact_and_identity(run: Run,
                                                       sabotaged: dict[str, Path]) -> None:
    r = run("investigate", "B", "--ledger", sabotaged["ledger"])
    assert r.code == 1, r.err
    first = next(line for line in r.out.splitlines() if line.startswith("  1. "))
    assert "ckpt/base.pt" in first
    assert "producer: mallory@gpu-07" in r.out.split("  2. ")[0]
    assert "baseline: A" in r.out


def test_clean_run_exits_0(run: Run, sabotaged: dict[str, Path]) -> None:
    r = run("investigate", "B", "--events", sabotaged["clean"])
    assert r.code == 0, r.out + r.err
    assert "nothing suspicious" in r.out


def test_json_and_html_to_files(run: Run, sabotaged: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = run("investigate", "B", "--events", sabotaged["jsonl"], "-f", "json", "-o", out)
    assert r.code == 1
    assert r.out == ""
    doc = json.loads(out.read_text())
    assert doc["causes"][0]["identities"][0]["identity"]["user"] == "mallory"
    assert doc["exit_code"] == 1
    html = tmp_path / "r.html"
    r = run("investigate", "B", "--ledger", sabotaged["ledger"], "--format", "html",
            "--output", html)
    assert r.code == 1
    assert "<svg" in html.read_text()


def test_ledger_and_events_merge_without_duplicates(run: Run,
                                                    sabotaged: dict[str, Path]) -> None:
    r = run("investigate", "B", "--ledger", sabotaged["ledger"], "--events", sabotaged["jsonl"],
            "--events", sabotaged["jsonl"], "-f", "json")
    doc = json.loads(r.out)
    assert doc["events_read"] == len(synthetic_events())


def test_baseline_trusted_user_and_artifact_target(run: Run, sabotaged: dict[str, Path]) -> None:
    r = run("investigate", "B", "--events", sabotaged["jsonl"], "--baseline", "A", "-f", "json")
    assert json.loads(r.out)["baseline_reason"] == "given with --baseline"
    r = run("investigate", "B", "--events", sabotaged["jsonl"], "--trusted-user", "alice",
            "-f", "json")
    reasons = json.loads(r.out)["causes"][0]["reasons"]
    assert any("low-trust" in x and "mallory" in x for x in reasons)
    r = run("investigate", dig("base-evil"), "--events", sabotaged["jsonl"])
    assert r.code == 1
    assert "artifact" in r.out.splitlines()[0]


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "no run or artifact"),
    (["B", "--baseline", "nope"], "baseline run"),
    (["B", "--events", "missing.jsonl"], "cannot read events file"),
    (["B", "-f", "sarif"], "Invalid value"),
])
def test_errors_exit_2(run: Run, sabotaged: dict[str, Path], args: list[str],
                       message: str) -> None:
    extra = [] if "--events" in args else ["--events", str(sabotaged["jsonl"])]
    r = run("investigate", *args, *extra)
    assert r.code == 2
    assert message in r.err


def test_empty_record_exits_2(run: Run, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = run("investigate", "A", "--events", empty)
    assert r.code == 2
    assert "empty" in r.err
    db = tmp_path / "new.db"
    open_test_ledger(db).close()
    r = run("investigate", "A", "--ledger", db)
    assert r.code == 2
    assert "empty" in r.err


def test_help_teaches(run: Run) -> None:
    r = run("investigate", "--help")
    assert r.code == 0
    for word in ("Examples:", "--ledger", "--events", "--baseline", "-f html", "Exit codes"):
        assert word in r.out


def test_console_script(run_exe: Callable[..., Any], sabotaged: dict[str, Path]) -> None:
    p = run_exe("investigate", "B", "--events", sabotaged["jsonl"], "-f", "json")
    assert p.returncode == 1, p.stderr
    assert json.loads(p.stdout)["causes"][0]["path"] == "ckpt/base.pt"


def test_default_ledger_from_environment(run: Run, sabotaged: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINGUARD_LEDGER", str(sabotaged["ledger"]))
    assert run("investigate", "B").code == 1
    monkeypatch.setenv("TRAINGUARD_LEDGER", str(tmp_path / "none.db"))
    r = run("investigate", "B")
    assert r.code == 2
    assert "no ledger" in r.err
    assert not (tmp_path / "none.db").exists()  # investigating never creates a ledger
