"""From real commands to an investigation, with nothing hand-built in between.

Only the command line is used: `trainguard keygen`, `trainguard sign`, `trainguard ledger append`,
`trainguard run --ledger L` (twice: a clean run A and a sabotaged run B of the same training
script) and `trainguard investigate`. The events investigate reads are the ones those commands
emit (docs/investigate.md, "Event details keys relied on"): the signer's ``artifact.signed``
(``file_digests``), the launcher's ``run.started`` and input verification, the load gate's
``artifact.loaded`` and ``guard.checkpoint``'s ``artifact.saved`` (digest subject, inputs).

How the sabotage gets another identity: between the runs, base.pt is modified and re-saved by a
tiny script, and its save recorded with `trainguard ledger append artifact.saved sha256:... ` run
with ``USER``/``LOGNAME=mallory`` and ``TRAINGUARD_HOST=gpu-07``. Identity.current() reads the
user through ``getpass.getuser()`` (LOGNAME, USER, ...) and the host from ``TRAINGUARD_HOST``,
so the ledger entry names mallory@gpu-07, as it would on mallory's own account. Alice signs
base.pt the same way (``USER=alice``), and her signature and save are appended from
`trainguard sign --events`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.torch, pytest.mark.slow]

PY = sys.executable

TRAIN = """
import sys
import torch
from trainguard import guard

torch.manual_seed(0)
state = torch.load("base.pt", weights_only=True)
model = torch.nn.Linear(8, 1)
model.load_state_dict(state)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(64, 8)
y = x @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1)
for step in range(12):
    loss = (model(x) - y).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    guard.step(model, opt, loss)
torch.save(model.state_dict(), sys.argv[1])
guard.checkpoint(sys.argv[1])
"""

BASE = """
import torch
torch.manual_seed(1)
torch.save(torch.nn.Linear(8, 1).state_dict(), "base.pt")
"""

# mallory's edit: the same tensors, scaled; a plausible-looking checkpoint
TAMPER = """
import torch
state = torch.load("base.pt", weights_only=True)
torch.save({k: v * 40.0 for k, v in state.items()}, "base.pt")
"""

CONFIG = """
[trust]
[trust.roles.engineer]
[trust.identities.alice]
key = "alice.pub"
roles = ["engineer"]
[[trust.rules]]
roles = ["engineer"]

[guard.monitors]
metrics_every = 1
"""


def _env(user: str | None = None, host: str | None = None, job: str | None = None
         ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if user is not None:
        env["USER"] = env["LOGNAME"] = user
    if host is not None:
        env["TRAINGUARD_HOST"] = host
    if job is not None:
        env["TRAINGUARD_JOB_ID"] = job
    return env


def _cli(cwd: Path, *args: str, env: dict[str, str], ok: tuple[int, ...] = (0,)
         ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([PY, "-m", "trainguard.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode in ok, (args, proc.returncode, proc.stdout[-3000:],
                                   proc.stderr[-3000:])
    return proc


def _py(cwd: Path, code: str, env: dict[str, str]) -> None:
    proc = subprocess.run([PY, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def test_real_commands_then_investigate_names_the_tampered_base_and_mallory(
        tmp_path: Path) -> None:
    pytest.importorskip("torch")
    w = tmp_path
    ledger = str(w / "ledger.db")
    (w / "train.py").write_text(TRAIN, encoding="utf-8")
    (w / "trainguard.toml").write_text(CONFIG, encoding="utf-8")
    (w / "out").mkdir()
    alice, mallory = _env("alice", "lab-01"), _env("mallory", "gpu-07")

    # alice produces and signs the base model; her events go to the ledger
    _py(w, BASE, alice)
    _cli(w, "keygen", "-o", "alice.key", env=alice)
    _cli(w, "sign", "base.pt", "--key", "alice.key", "--events", "signed.jsonl", env=alice)
    good = _sha256(w / "base.pt")
    _cli(w, "ledger", "append", "artifact.saved", good, "--details",
         json.dumps({"path": str(Path(os.path.realpath(w)) / "base.pt")}), "--ledger", ledger,
         env=alice)
    _cli(w, "ledger", "append", "--from-jsonl", "signed.jsonl", "--ledger", ledger, env=alice)
    signed = _events(w / "signed.jsonl")[0]
    assert signed["details"]["file_digests"] == {".": good}

    # the environment the runs are checked against and run in: a small real venv (snapshots
    # are quick) whose .pth adds the test environment's torch and trainguard by path (a plain
    # path line: nothing executes). The launcher checks the job's own interpreter, so the job
    # runs with this venv's python.
    subprocess.run([PY, "-m", "venv", "--without-pip", str(w / "venv")], check=True,
                   timeout=120)
    job_py = str(w / "venv" / "bin" / "python")
    import torch

    import trainguard as tg

    paths = [str(Path(torch.__file__).parents[1]), str(Path(tg.__file__).parents[1])]
    site = next((w / "venv" / "lib").glob("python3*/site-packages"))
    (site / "test-env.pth").write_text("\n".join(paths) + "\n", encoding="utf-8")
    _cli(w, "env", "snapshot", "--python", str(w / "venv"), "-o", "env.json", env=alice)
    env_digest = json.loads((w / "env.json").read_text(encoding="utf-8"))["environment_digest"]

    # run A: clean
    run_args = ["run", "--env-snapshot", "env.json", "--ledger", ledger, "--input", "base.pt",
                "--signature", "base.pt.sig"]
    _cli(w, *run_args, "--events", "A.jsonl", "--", job_py, "train.py", "out/a.pt",
         env=_env("alice", "lab-01", "run-A"))
    a_events = _events(w / "A.jsonl")
    started = next(e for e in a_events if e["kind"] == "run.started")
    assert started["subject"] == "run-A"
    assert started["details"]["config_digest"] == _sha256(w / "trainguard.toml")
    assert started["details"]["config"]["guard"]["monitors"]["metrics_every"] == 1
    verified = next(e for e in a_events if e["kind"] == "artifact.verified")
    assert verified["subject"] == good
    assert Path(verified["details"]["path"]).is_absolute()
    loaded = [e for e in a_events if e["kind"] == "artifact.loaded"]
    assert [(e["subject"], e["details"]["loader"]) for e in loaded] == [(good, "torch.load")]
    saved = next(e for e in a_events if e["kind"] == "artifact.saved")
    assert saved["subject"] == _sha256(w / "out" / "a.pt")
    assert saved["details"]["inputs"] == [good]
    assert saved["details"]["run"] == "run-A"
    assert {e["identity"]["job"] for e in a_events} == {"run-A"}
    assert started["details"]["env_digest"] == env_digest
    workers = [e for e in a_events if e["kind"] == "guard.started"]
    assert workers
    assert {e["identity"]["env_digest"] for e in workers} == {env_digest}

    # mallory rewrites base.pt and records the save under her identity
    _py(w, TAMPER, mallory)
    evil = _sha256(w / "base.pt")
    assert evil != good
    _cli(w, "ledger", "append", "artifact.saved", evil, "--details",
         json.dumps({"path": str(Path(os.path.realpath(w)) / "base.pt")}), "--ledger", ledger,
         env=mallory)

    # run B: the same job, on the tampered base (monitor mode: it runs, and is recorded)
    _cli(w, *run_args, "--events", "B.jsonl", "--", job_py, "train.py", "out/b.pt",
         env=_env("alice", "lab-01", "run-B"))
    b_events = _events(w / "B.jsonl")
    failed = next(e for e in b_events if e["kind"] == "artifact.verify_failed")
    assert failed["subject"] == evil
    assert failed["details"]["expected"] == good

    proc = _cli(w, "investigate", "run-B", "--ledger", ledger, "-f", "json", env=alice,
                ok=(1,))
    report = json.loads(proc.stdout)
    assert report["baseline"]["run"] == "run-A"
    top = report["causes"][0]
    assert top["category"] == "artifact"
    assert top["digest"] == evil
    assert Path(top["path"]).name == "base.pt"
    assert top["identities"][0]["role"] == "producer"
    assert top["identities"][0]["identity"]["user"] == "mallory"
    assert top["identities"][0]["identity"]["host"] == "gpu-07"
    assert any(a["role"] == "signed the original" for a in top["identities"])
    assert all(c["score"] < top["score"] for c in report["causes"][1:])
    # the clean run stays clean when investigated from the same ledger
    clean = _cli(w, "investigate", "run-A", "--ledger", ledger, "-f", "json", env=alice)
    assert json.loads(clean.stdout)["causes"] == []


NAN_TRAIN = """
import math, torch
from trainguard import guard

guard.install(mode="monitor", events="nan.jsonl", stderr=False)
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(6):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 3:
        loss = loss * math.inf
    if step == 4:
        loss = loss * math.nan
    guard.step(model, opt, loss)
"""


def test_non_finite_losses_are_spelled_and_read_as_non_finite(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    env = _env("alice", "lab-01", "run-nan")
    (tmp_path / "trainguard.toml").write_text("[guard.monitors]\nmetrics_every = 1\n",
                                              encoding="utf-8")
    _py(tmp_path, NAN_TRAIN, env)
    metrics = [e for e in _events(tmp_path / "nan.jsonl") if e["kind"] == "guard.metric"]
    by_step = {e["details"]["step"]: e["details"]["loss"] for e in metrics}
    assert "inf" in by_step.values(), by_step
    assert "nan" in by_step.values(), by_step
    assert all(isinstance(v, float) for v in by_step.values() if v not in ("inf", "nan"))
    proc = _cli(tmp_path, "investigate", "run-nan", "--events", "nan.jsonl", "-f", "json",
                env=env, ok=(1,))
    report = json.loads(proc.stdout)
    assert any(a["kind"] == "loss_nonfinite" for a in report["anomalies"]), report["anomalies"]
