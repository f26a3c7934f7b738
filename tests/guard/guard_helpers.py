"""Helpers for the runtime-guard tests: run a script under the real `trainguard run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable

#: a small but real training loop; PAYLOAD_HOOK marks where a test's payload import goes
TRAIN = """
import os, sys
import torch
from trainguard import guard

torch.manual_seed(0)
{before}
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
opt = torch.optim.{optim}(model.parameters(), lr=1e-2)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
for i in range({steps}):
    x = torch.randn(16, 8)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    guard.step(model, opt, loss)
{after}
print("TRAINING-DONE", flush=True)
"""


def train_script(before: str = "", after: str = "", *, optim: str = "AdamW",
                 steps: int = 4) -> str:
    return TRAIN.format(before=textwrap.dedent(before), after=textwrap.dedent(after),
                        optim=optim, steps=steps)


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)
    tmp: Path = Path()

    def detections(self, rule: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("severity") and e.get("kind") != "guard.error"
                and (rule is None or e.get("rule_id") == rule)]

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == "guard.error"]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]

    def explain(self) -> str:
        return (f"rc={self.rc}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n"
                f"{self.stderr[-6000:]}")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_guarded(tmp: Path, script: str | None = None, *, mode: str = "monitor",
                config: str | None = None, files: dict[str, str] | None = None,
                args: list[str] | None = None, cmd: list[str] | None = None,
                env: dict[str, str] | None = None, timeout: float = 300) -> Run:
    """Write the script (and files, and trainguard.toml) into ``tmp`` and run it guarded."""
    tmp.mkdir(parents=True, exist_ok=True)
    if script is not None:
        (tmp / "train.py").write_text(script, encoding="utf-8")
    for name, text in (files or {}).items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text), encoding="utf-8")
    if config is not None:
        (tmp / "trainguard.toml").write_text(textwrap.dedent(config), encoding="utf-8")
    events = tmp / "events.jsonl"
    argv = [PY, "-m", "trainguard.cli.main", "run", "--skip-env-check", "--events", str(events),
            "--mode", mode, *(args or []), "--", *(cmd or [PY, "train.py"])]
    # a session of its own: a hung job is killed with all its processes
    with subprocess.Popen(argv, cwd=tmp, env=env or clean_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _kill_guarded(tmp)  # torchrun puts workers in sessions of their own
            out, err = proc.communicate()
            err += f"\n[test harness: killed after {timeout} s]"
    evs = []
    if events.exists():
        for line in events.read_text(encoding="utf-8").splitlines():
            if line.strip():
                evs.append(json.loads(line))
    return Run(proc.returncode, out, err, evs, tmp)


def _kill_guarded(tmp: Path) -> None:
    """Kill every process that wrote a guard event file under ``tmp`` (and still runs)."""
    for f in tmp.glob("events.jsonl.d/proc/*-*.jsonl"):
        try:
            pid = int(f.stem.rsplit("-", 1)[1])
            if Path(f"/proc/{pid}/cwd").resolve() == tmp.resolve():
                os.kill(pid, signal.SIGKILL)
        except (ValueError, OSError):
            pass


def site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"])
