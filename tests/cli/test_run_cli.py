"""`trainguard run` through the real entry point: help, usage errors, report formats, exit
status (commands here are not Python or are tiny: no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PY = sys.executable


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env.pop("PYTHONPATH", None)
    return subprocess.run([PY, "-m", "trainguard.cli.main", "run", *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_help_teaches(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--help")
    assert proc.returncode == 0
    for text in ("--mode", "--events", "--input", "--signature", "--skip-env-check",
                 "Examples:", "torchrun", "77"):
        assert text in proc.stdout


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == 2


def test_input_without_signature_is_a_usage_error(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--input", "m", "--", "true")
    assert proc.returncode == 2
    assert "--signature" in proc.stderr


def test_exit_status_and_text_report(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--skip-env-check", "--", "sh", "-c", "exit 4")
    assert proc.returncode == 4
    assert "trainguard run: final report" in proc.stderr
    assert "detections: none" in proc.stderr
    events = list((tmp_path / ".trainguard" / "runs").glob("*/events.jsonl"))
    assert len(events) == 1
    kinds = [json.loads(x)["kind"] for x in events[0].read_text().splitlines()]
    assert kinds[0] == "run.started"
    assert kinds[-1] == "run.finished"


def test_json_report_to_file(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = _run(tmp_path, "--skip-env-check", "-f", "json", "-o", str(out), "--events",
                str(tmp_path / "ev.jsonl"), "--", PY, "-c", "import os; os.system('true')")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["by_rule"] == {"TG-GRD-004": 1}
    assert report["guarded_processes"] == 1
    assert report["detections"][0]["details"]["location"]["file"] == "<string>"


def test_options_after_the_command_belong_to_the_command(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--skip-env-check", "-q", PY, "-c",
                "import sys; print(sys.argv[1:])", "--mode", "x")
    assert proc.returncode == 0, proc.stderr
    assert "['--mode', 'x']" in proc.stdout


def test_declared_input_that_cannot_verify_refuses_launch_in_enforce(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"weights")
    (tmp_path / "model.sig").write_text("{}")
    marker = tmp_path / "ran"
    proc = _run(tmp_path, "--skip-env-check", "--mode", "enforce", "--input", str(model),
                "--signature", str(tmp_path / "model.sig"), "--", "touch", str(marker))
    assert proc.returncode == 77, proc.stderr
    assert not marker.exists()
    assert "NOT verified" in proc.stderr
    # monitor mode launches and records the failure
    proc = _run(tmp_path, "--skip-env-check", "--input", str(model), "--signature",
                str(tmp_path / "model.sig"), "--", "touch", str(marker))
    assert proc.returncode == 0
    assert marker.exists()
    assert "TG-GRD-016" in proc.stderr


def test_env_check_runs_before_launch(tmp_path: Path) -> None:
    proc = _run(tmp_path, "-f", "json", "--", "true")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr[proc.stderr.index("{"):])
    assert any(note.startswith("environment check") for note in report["pre_launch"])


def test_declared_input_with_a_valid_signature_launches(tmp_path: Path) -> None:
    from trainguard.integrity.keys import PrivateKey
    from trainguard.integrity.signing import sign

    key = PrivateKey.generate("p256")
    (tmp_path / "alice.pub").write_bytes(key.public_key().pem)
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"weights")
    sign(model, key=key, output=tmp_path / "model.sig")
    (tmp_path / "trainguard.toml").write_text(
        '[trust]\n[trust.roles.engineer]\n[trust.identities.alice]\nkey = "alice.pub"\n'
        'roles = ["engineer"]\n[[trust.rules]]\nroles = ["engineer"]\n')
    marker = tmp_path / "ran"
    proc = _run(tmp_path, "--skip-env-check", "--mode", "enforce", "--input", str(model),
                "--signature", str(tmp_path / "model.sig"), "--", "touch", str(marker))
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
    assert f"input {model}: verified" in proc.stderr
