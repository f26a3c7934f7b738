"""`trainguard run` propagates the guard to every Python process of the job through the
environment: multiprocessing spawn children, torchrun workers (gloo, 2 ranks), subprocesses; it
chains to an existing sitecustomize and passes the command's exit status through."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from guard_helpers import PY, clean_env, run_guarded

from trainguard.guard.launcher import EXIT_GUARD_STOPPED

#: a parent that starts a spawn child which runs a shell command (tests append their own tail)
SPAWN_CHILD_SCRIPT = """
import multiprocessing as mp, os

def child():
    os.system("true")

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=child)
    p.start()
    p.join()
"""


def test_exit_status_passes_through(tmp_path: Path) -> None:
    run = run_guarded(tmp_path, "import sys\nsys.exit(5)\n")
    assert run.rc == 5, run.explain()
    started = run.kinds("guard.started")
    assert len(started) == 1
    assert run.kinds("run.started")
    assert run.kinds("run.finished")


def test_non_python_command_and_its_python_children(tmp_path: Path) -> None:
    run = run_guarded(tmp_path, "print('child', flush=True)\n",
                      cmd=["sh", "-c", f"{PY} train.py && exit 3"])
    assert run.rc == 3, run.explain()
    assert len(run.kinds("guard.started")) == 1  # sh is not Python; its python child is


def test_killed_by_signal_is_128_plus_n(tmp_path: Path) -> None:
    run = run_guarded(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    assert run.rc == 128 + signal.SIGTERM, run.explain()
    # a process signalling itself from its own code is recorded (TG-GRD-005, target self)
    assert run.detections("TG-GRD-005")[0]["details"]["target"] == "self"


def test_guard_reaches_spawn_children_with_attribution(tmp_path: Path) -> None:
    script = SPAWN_CHILD_SCRIPT + '    print("PARENT", os.getpid(), "CHILD", p.pid, flush=True)\n'
    run = run_guarded(tmp_path, script)
    assert run.rc == 0, run.explain()
    pids = {e["identity"]["pid"] for e in run.kinds("guard.started")}
    child_pid = int(run.stdout.split("CHILD")[1].split()[0])
    assert child_pid in pids, run.explain()
    hits = run.detections("TG-GRD-004")
    assert [h["identity"]["pid"] for h in hits] == [child_pid]
    assert hits[0]["details"]["location"]["file"].endswith("train.py")
    assert hits[0]["details"]["location"]["line"] == 5


def test_existing_sitecustomize_still_runs(tmp_path: Path) -> None:
    user_site = tmp_path / "usersite"
    user_site.mkdir()
    (user_site / "sitecustomize.py").write_text(
        "import os\nos.environ['USER_SITECUSTOMIZE_RAN'] = '1'\n")
    env = clean_env() | {"PYTHONPATH": str(user_site)}
    script = ("import os, sys\nfrom trainguard import guard\n"
              "print('RAN', os.environ.get('USER_SITECUSTOMIZE_RAN'),"
              " 'GUARD', guard.current() is not None, flush=True)\n")
    run = run_guarded(tmp_path, script, env=env)
    assert "RAN 1 GUARD True" in run.stdout, run.explain()


def test_nested_run_does_not_recurse(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "job.py").write_text("print('INNER-OK', flush=True)\n")
    script = f"""
import subprocess, sys
rc = subprocess.call([sys.executable, "-m", "trainguard.cli.main", "run", "--skip-env-check",
                      "--events", "{inner}/ev.jsonl", "--", sys.executable, "{inner}/job.py"])
sys.exit(rc)
"""
    run = run_guarded(tmp_path, script)
    assert run.rc == 0, run.explain()
    assert "INNER-OK" in run.stdout


TORCHRUN_WORKER = """
import os
import torch
import torch.distributed as dist
from trainguard import guard

dist.init_process_group("gloo")
rank = dist.get_rank()
if rank == 1:
    import payload                       # only rank 1 is sabotaged
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for i in range(3):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
    opt.step()
    guard.step(model, opt, loss)
dist.barrier()
dist.destroy_process_group()
print("RANK-DONE", rank, flush=True)
"""

TORCHRUN_PAYLOAD = """\
import torch
_orig = torch.optim.SGD.step
def slow_step(self, closure=None):        # line 3
    return _orig(self, closure)
torch.optim.SGD.step = slow_step
"""


@pytest.mark.torch
@pytest.mark.slow
def test_torchrun_workers_are_guarded_and_the_rank_is_named(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    run = run_guarded(
        tmp_path, TORCHRUN_WORKER, files={"payload.py": TORCHRUN_PAYLOAD},
        config="[guard]\ncheck_every = 1\n",
        cmd=[str(torchrun), "--standalone", "--nproc-per-node", "2", "train.py"])
    assert run.rc == 0, run.explain()
    assert run.stdout.count("RANK-DONE") == 2
    ranks = {e["identity"]["rank"] for e in run.kinds("guard.started")}
    assert {0, 1} <= ranks, run.explain()  # the torchrun agent itself is guarded too (no rank)
    hits = run.detections("TG-GRD-010")
    assert [h["identity"]["rank"] for h in hits] == [1], run.explain()
    assert hits[0]["details"]["location"]["line"] == 3
    assert "rank 1" in run.stderr  # named in the final report
    jobs = {e["identity"]["job"] for e in run.events if e.get("identity")}
    assert len(jobs) == 1  # one job id across launcher, agent and ranks


@pytest.mark.torch
@pytest.mark.slow
def test_torchrun_enforce_stops_the_sabotaged_rank(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    run = run_guarded(
        tmp_path, TORCHRUN_WORKER, files={"payload.py": TORCHRUN_PAYLOAD}, mode="enforce",
        config="[guard]\ncheck_every = 1\n",
        cmd=[str(torchrun), "--standalone", "--nproc-per-node", "2", "train.py"],
        timeout=240)
    assert run.rc == EXIT_GUARD_STOPPED, run.explain()
    assert "RANK-DONE 1" not in run.stdout
    hit = run.detections("TG-GRD-010")[0]
    assert hit["identity"]["rank"] == 1
    assert hit["details"]["action"] == "blocked"


def test_events_reach_the_ledger_from_every_process(tmp_path: Path) -> None:
    from trainguard.ledger import open_ledger

    script = SPAWN_CHILD_SCRIPT + '    os.system("true")\n'
    db = tmp_path / "ledger.db"
    run = run_guarded(tmp_path, script, args=["--ledger", str(db)])
    assert run.rc == 0, run.explain()
    ledger = open_ledger(db)
    events = [entry.event for entry in ledger.entries()]
    kinds = [e.kind for e in events]
    assert "run.started" in kinds
    assert "run.finished" in kinds
    hits = [e for e in events if e.rule_id == "TG-GRD-004"]
    assert len({e.identity.pid for e in hits if e.identity}) == 2  # parent and spawn child
    assert len({e.identity.job for e in events if e.identity}) == 1
    # the ledger holds what the merged JSONL file holds
    assert len(events) == len(run.events)
    ledger.verify()


def test_the_env_check_targets_the_jobs_interpreter(tmp_path: Path) -> None:
    """The environment checked before launch is the one the command runs in: a python named
    directly, or the interpreter of a console script's #! line (torchrun, accelerate)."""
    from trainguard.guard.launcher import job_interpreter

    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    py = bin_dir / "python3"
    py.write_text("")
    py.chmod(0o755)
    script = bin_dir / "torchrun"
    script.write_text(f"#!{py}\nimport sys\n")
    script.chmod(0o755)
    env_script = bin_dir / "accelerate"
    env_script.write_text("#!/usr/bin/env python3\n")
    env_script.chmod(0o755)
    env = {"PATH": str(bin_dir)}
    assert job_interpreter(["python3", "train.py"], env) == py
    assert job_interpreter(["torchrun", "--nproc-per-node", "2", "train.py"], env) == py
    assert job_interpreter(["accelerate", "launch"], env) == py
    assert job_interpreter(["no-such-command"], env) == Path(sys.executable)
    assert job_interpreter(["sh", "-c", "true"], {"PATH": "/bin:/usr/bin"}) == Path(sys.executable)
