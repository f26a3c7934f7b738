"""GuardRuntime: events, budgets, enforce refusals and surviving its own failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from guard_helpers import run_guarded

from trainguard.core.errors import ConfigError
from trainguard.guard.config import GuardConfig, parse_guard_config
from trainguard.guard.frames import CodeLocation
from trainguard.guard.runtime import GuardRuntime, GuardStopped

LOC = CodeLocation("/x/payload.py", 7, "act", "project")


def _events(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_detection_is_written_with_location(tmp_path: Path) -> None:
    rt = GuardRuntime(GuardConfig(), events_path=tmp_path / "e.jsonl", stderr=False)
    rt.detect("TG-GRD-004", "true", "started program 'true'", location=LOC)
    rt.close()
    ev = _events(tmp_path / "e.jsonl")
    det = [e for e in ev if e["rule_id"] == "TG-GRD-004"][0]
    assert det["severity"] == "medium"  # the rule's default
    assert det["details"]["location"] == {"file": "/x/payload.py", "line": 7, "function": "act",
                                          "kind": "project"}
    assert det["details"]["action"] == "recorded"
    assert ev[-1]["kind"] == "guard.summary"
    assert ev[-1]["details"]["detections"] == {"TG-GRD-004": 1}


def test_enforce_raises_at_threshold_only(tmp_path: Path) -> None:
    rt = GuardRuntime(GuardConfig(mode="enforce"), events_path=tmp_path / "e.jsonl",
                      stderr=False)
    rt.detect("TG-GRD-004", "true", "medium: recorded", location=LOC)  # below "high"
    with pytest.raises(GuardStopped) as info:
        rt.detect("TG-GRD-010", "torch.optim.AdamW.step", "replaced", location=LOC)
    assert info.value.rule_id == "TG-GRD-010"
    with pytest.raises(GuardStopped):
        rt.detect("TG-GRD-004", "x", "forced", location=LOC, force_block=True)
    assert rt.blocked == 2
    rt.close()
    actions = [e["details"].get("action") for e in _events(tmp_path / "e.jsonl")
               if e["severity"]]
    assert actions == ["recorded", "blocked", "blocked"]


def test_repeats_and_budget_are_bounded(tmp_path: Path) -> None:
    cfg = GuardConfig(max_repeats=3, max_events=50)
    rt = GuardRuntime(cfg, events_path=tmp_path / "e.jsonl", stderr=False)
    for _ in range(1000):
        rt.detect("TG-GRD-007", "/env/x", "same", location=LOC)
    for i in range(1000):
        rt.detect("TG-GRD-007", f"/env/{i}", "distinct", location=LOC)
    rt.close()
    ev = _events(tmp_path / "e.jsonl")
    assert len(ev) == 51  # 50 + the summary, always written
    summary = ev[-1]["details"]
    assert summary["detections"]["TG-GRD-007"] == 2000
    assert summary["suppressed_repeats"] == 997
    assert summary["events_dropped"] == 1000 - 47  # repeats are counted, not dropped


def test_internal_error_reported_once_and_swallowed(tmp_path: Path) -> None:
    rt = GuardRuntime(GuardConfig(), events_path=tmp_path / "e.jsonl", stderr=False)

    def boom() -> None:
        raise RuntimeError("bug in a check")

    for _ in range(5):
        assert rt.protect("check-x", boom) is None
    assert rt.error_count == 5
    rt.close()
    errors = [e for e in _events(tmp_path / "e.jsonl") if e["kind"] == "guard.error"]
    assert len(errors) == 1
    assert "bug in a check" in errors[0]["details"]["message"]


def test_guard_stopped_passes_through_protect(tmp_path: Path) -> None:
    rt = GuardRuntime(GuardConfig(mode="enforce"), events_path=tmp_path / "e.jsonl",
                      stderr=False)

    def stop() -> None:
        raise GuardStopped("no", rule_id="TG-GRD-010")

    with pytest.raises(GuardStopped):
        rt.protect("x", stop)
    rt.close()


def test_unwritable_sink_does_not_raise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rt = GuardRuntime(GuardConfig(), events_path=blocker / "sub" / "e.jsonl", stderr=False)
    rt.detect("TG-GRD-004", "true", "x", location=LOC)
    rt.detect("TG-GRD-004", "true", "x", location=LOC)
    rt.close()
    assert capsys.readouterr().err.count("cannot write guard events") == 1


@pytest.mark.parametrize(("table", "message"), [
    ({"mode": "block"}, "mode"),
    ({"bogus": 1}, "unknown key"),
    ({"check_every": 0}, "positive"),
    ({"allow_exec": "git"}, "list"),
    ({"allow_connect": ["10.0.0.0/33"]}, "bad network"),
    ({"allow_connect": ["host:99999"]}, "bad port"),
    ({"signed": [{"path": "a"}]}, r"signed\[0\]"),
    ({"enforce_at": "severe"}, "enforce_at"),
    ({"audit": "yes"}, "true or false"),
])
def test_config_errors(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_guard_config(table)


def test_config_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    cfg = parse_guard_config({"protected_paths": ["ckpt"], "signed": [
        {"path": "m", "signature": "m.sig"}]}, base=tmp_path)
    assert cfg.protected_paths == (tmp_path / "ckpt",)
    assert cfg.signed[0].signature == tmp_path / "m.sig"


def test_guard_failure_inside_a_hook_does_not_kill_the_job(tmp_path: Path) -> None:
    """A bug in one audit handler: the action goes ahead, one guard.error, the job finishes."""
    script = """
import os
from trainguard import guard
from trainguard.guard import _PARTS

def broken(args):
    raise ZeroDivisionError("guard bug")

_PARTS.audit.handlers["os.system"] = broken
for _ in range(3):
    os.system("true")
_PARTS.tripwires.check = lambda where: 1 / 0
guard.step()
guard.checkpoint()
print("JOB-DONE", flush=True)
"""
    run = run_guarded(tmp_path, script, mode="enforce")
    assert run.rc == 0, run.explain()
    assert "JOB-DONE" in run.stdout
    # (the training monitors also report, as their own guard.error events, that guard.step()
    # was given no optimizer)
    errors = [e for e in run.errors() if "check" not in e["details"]]
    assert {e["subject"] for e in errors} == {"audit:os.system", "tripwires",
                                              "tripwires-exit"}, errors
    assert "guard errors (the job continued)" in run.stderr
