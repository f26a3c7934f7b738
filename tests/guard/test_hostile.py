"""Hostile conditions for `trainguard run` and the guard: malformed config, unwritable or
scribbled-on event files, event floods, a payload attacking the guard's own state."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from guard_helpers import PY, clean_env, run_guarded

from trainguard.guard.report import merge


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "trainguard.cli.main", "run", *args], cwd=tmp,
                          env=clean_env(), capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("toml", [
    "[guard\nmode = 'enforce'",                 # not TOML
    "[guard]\nmode = 'block'\n",                # bad value
    "[guard]\nunknown_key = 1\n",               # typo must not weaken the policy silently
    "[guard]\nsigned = 'x'\n",
    "[guard.monitors]\nno_such_monitor = 1\n",  # the monitors' table is checked before launch
    "guard = 3\n",
])
def test_malformed_config_is_a_usage_error_before_launch(tmp_path: Path, toml: str) -> None:
    (tmp_path / "trainguard.toml").write_text(toml)
    marker = tmp_path / "ran"
    proc = _cli(tmp_path, "--skip-env-check", "--", "touch", str(marker))
    assert proc.returncode == 2, proc.stderr
    assert "trainguard: error:" in proc.stderr
    assert not marker.exists()  # nothing was launched


def test_unwritable_events_path_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = _cli(tmp_path, "--skip-env-check", "--events", str(blocker / "e.jsonl"), "--",
                "true")
    assert proc.returncode == 2
    assert "cannot write guard events" in proc.stderr


def test_events_removed_mid_run_the_job_continues(tmp_path: Path) -> None:
    script = """
import os, shutil
run_dir = os.environ["TRAINGUARD_RUN_DIR"]
os.system("true")                       # recorded while the file exists
shutil.rmtree(run_dir + "/proc")
open(run_dir + "/proc", "w").close()    # now the directory cannot be re-created either
from trainguard import guard
guard.current().sink.sinks[0].close()   # force a re-open on the next event
os.system("true; true")
print("JOB-DONE", flush=True)
"""
    run = run_guarded(tmp_path, script)
    assert "JOB-DONE" in run.stdout, run.explain()
    assert run.rc == 0
    assert "cannot write guard events" in run.stderr


def test_event_flood_is_bounded(tmp_path: Path) -> None:
    script = """
import os
for i in range(20000):
    try:
        os.remove(os.path.join(os.environ["PROTECTED"], "f%d" % (i % 3000)))
    except OSError:
        pass
print("JOB-DONE", flush=True)
"""
    protected = tmp_path / "other-job"
    protected.mkdir()
    env = clean_env() | {"PROTECTED": str(protected)}
    run = run_guarded(tmp_path, script, env=env,
                      config=f'[guard]\nprotected_paths = ["{protected}"]\nmax_events = 500\n'
                             'max_repeats = 2\n')
    assert run.rc == 0, run.explain()
    hits = run.detections("TG-GRD-008")
    assert len(hits) <= 500
    summary = run.kinds("guard.summary")[0]["details"]
    assert summary["detections"]["TG-GRD-008"] == 20000
    assert summary["events_dropped"] > 0
    assert summary["suppressed_repeats"] > 0
    assert "repeats only counted" in run.stderr


def test_scribbled_event_files_are_counted_not_fatal(tmp_path: Path) -> None:
    proc_dir = tmp_path / "proc"
    proc_dir.mkdir()
    good = {"schema": "trainguard.event", "kind": "guard.started", "subject": "pid:1",
            "time": 1.0, "details": {}, "identity": None, "severity": None, "rule_id": None}
    (proc_dir / "a.jsonl").write_text(json.dumps(good) + "\n{not json\n" + "[" * 100000
                                      + "\n" + json.dumps({"kind": 3}) + "\n")
    (proc_dir / "b.jsonl").write_bytes(b"\xff\xfe garbage\n")
    summary = merge(proc_dir, tmp_path / "merged.jsonl", "monitor")
    assert summary.events == 1
    assert summary.unreadable_lines == 4
    assert len((tmp_path / "merged.jsonl").read_text().splitlines()) == 1


def test_payload_disabling_the_guard_is_visible(tmp_path: Path) -> None:
    """Code execution inside the job can switch its guard off (documented limit); the
    tripwire check at exit cannot run then, but the record still shows the guard started
    and the process summary is missing its later events. Here: the payload sets
    active=False; what it did before is on record."""
    script = """
import os
from trainguard import guard
os.system("true")
guard.current().active = False
os.system("true; true")
print("JOB-DONE", flush=True)
"""
    run = run_guarded(tmp_path, script)
    assert run.rc == 0
    assert len(run.detections("TG-GRD-004")) == 1
    assert not run.kinds("guard.summary")  # no clean summary from that process
