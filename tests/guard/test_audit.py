"""PEP 578 audit events under `trainguard run`: payload actions are detected with the payload's
file:line; legitimate imports and training produce no detection.

Each scenario is one real guarded process (CPU torch), run once per module and asserted on by
several tests.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from guard_helpers import Run, run_guarded, site_packages, train_script

pytestmark = [pytest.mark.torch, pytest.mark.slow]

# A payload module the training script imports: each action sits on a known line.
PAYLOAD = """\
import os, socket, subprocess, sys, signal, time
MARK = os.environ["TG_TEST_MARK"]
def act():
    subprocess.run(["true"])                                  # line 4
    os.system("true")                                         # line 5
    child = subprocess.Popen(["sleep", "30"])                 # line 6
    os.kill(os.getppid(), signal.SIGCONT)                     # line 7
    child.kill()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))                           # line 11
    except OSError:
        pass
    s.close()
    with open(MARK, "w") as fh:                               # line 15
        fh.write("x")
    os.remove(MARK)                                           # line 17
    exec(compile("y = 1", "<payload>", "exec"))               # line 18
    exec("exec('z = 2')")                                     # line 19
    import torch
    fn = torch.nn.functional.relu
    fn.__code__ = (lambda input, inplace=False: input).__code__   # line 22
"""


@pytest.fixture(scope="module")
def monitor_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("audit-monitor")
    mark = site_packages() / f"tg_guard_test_{uuid.uuid4().hex}.txt"
    script = train_script(before="import payload\npayload.act()\n")
    env_extra = {"TG_TEST_MARK": str(mark)}
    from guard_helpers import clean_env

    env = clean_env() | env_extra
    try:
        return run_guarded(tmp, script, files={"payload.py": PAYLOAD}, env=env)
    finally:
        mark.unlink(missing_ok=True)


def _at(run: Run, rule: str, line: int) -> list[dict]:
    hits = [e for e in run.detections(rule)
            if e["details"]["location"]["file"].endswith("payload.py")
            and e["details"]["location"]["line"] == line]
    assert hits, f"no {rule} at payload.py:{line}\n" + run.explain()
    return hits


def test_job_completes_in_monitor_mode(monitor_run: Run) -> None:
    assert monitor_run.rc == 0, monitor_run.explain()
    assert "TRAINING-DONE" in monitor_run.stdout
    assert not monitor_run.errors(), monitor_run.errors()


def test_subprocess_and_system_attributed(monitor_run: Run) -> None:
    _at(monitor_run, "TG-GRD-004", 4)
    _at(monitor_run, "TG-GRD-004", 5)
    hits = _at(monitor_run, "TG-GRD-004", 6)
    assert hits[0]["details"]["argv"] == ["sleep", "30"]
    assert all(e["details"]["action"] == "recorded" for e in monitor_run.detections())


def test_kill_attributed(monitor_run: Run) -> None:
    hit = _at(monitor_run, "TG-GRD-005", 7)[0]
    assert hit["details"]["target"] == "other"
    # killing its own child is recorded without severity
    assert any(e["details"].get("target") == "child" for e in monitor_run.kinds("guard.audit")
               if not e.get("severity"))


def test_network_connect_attributed(monitor_run: Run) -> None:
    hit = _at(monitor_run, "TG-GRD-006", 11)[0]
    assert hit["subject"] == "192.0.2.1:9"


def test_write_into_site_packages(monitor_run: Run) -> None:
    _at(monitor_run, "TG-GRD-007", 15)
    _at(monitor_run, "TG-GRD-007", 17)


def test_dynamic_code(monitor_run: Run) -> None:
    _at(monitor_run, "TG-GRD-003", 18)
    hits = _at(monitor_run, "TG-GRD-003", 19)
    # the inner exec is run by code that is itself not from a file: high
    assert any(e["severity"] == "high" for e in monitor_run.detections("TG-GRD-003")
               if e["details"]["location"]["kind"] == "dynamic"), hits


def test_code_object_swap(monitor_run: Run) -> None:
    hit = _at(monitor_run, "TG-GRD-014", 22)[0]
    assert "relu" in hit["subject"]


def test_events_carry_identity_and_job(monitor_run: Run) -> None:
    det = monitor_run.detections()[0]
    assert det["identity"]["job"].startswith("tg-")
    assert det["identity"]["pid"] > 0
    assert "trainguard run: final report" in monitor_run.stderr


@pytest.fixture(scope="module")
def enforce_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("audit-enforce")
    script = """
import os, socket, subprocess
from trainguard.guard import GuardStopped
def attempt(name, fn):
    try:
        fn()
        print("RAN", name, flush=True)
    except GuardStopped as exc:
        print("STOPPED", name, exc.rule_id, flush=True)
attempt("system", lambda: exec("import os; os.system('touch ran-system')"))
attempt("popen", lambda: exec("import subprocess; subprocess.run(['touch', 'ran-popen'])"))
attempt("project-popen", lambda: subprocess.run(["true"]))
"""
    return run_guarded(tmp, script, mode="enforce")


def test_enforce_blocks_dynamic_process_start(enforce_run: Run) -> None:
    out = enforce_run.stdout
    assert "STOPPED system TG-GRD-004" in out or "STOPPED system TG-GRD-003" in out, \
        enforce_run.explain()
    assert not (enforce_run.tmp / "ran-system").exists()
    assert not (enforce_run.tmp / "ran-popen").exists()
    # a program started by the project's own code is medium: recorded, not blocked by default
    assert "RAN project-popen" in out
    assert enforce_run.rc == 77, enforce_run.explain()
    assert any(e["details"]["action"] == "blocked" for e in enforce_run.detections())


def test_legitimate_imports_and_training_produce_no_detection(tmp_path: Path) -> None:
    """Importing torch, transformers and lightning, training with an LR schedule and a
    DataLoader with worker processes, torch.save into the job's own output directory."""
    out = tmp_path / "ckpt" / "mine"
    config = f"""
    [guard]
    protected_paths = ["{tmp_path / 'ckpt'}"]
    output_dirs = ["{out}"]
    check_every = 1
    """
    before = """
    import numpy, transformers, lightning, random
    from torch.utils.data import DataLoader, TensorDataset
    numpy.random.seed(1)
    random.seed(1)
    data = DataLoader(TensorDataset(torch.randn(64, 8)), batch_size=16, num_workers=2)
    for (batch,) in data:
        pass
    """
    after = f"""
    os.makedirs("{out}", exist_ok=True)
    torch.save(model.state_dict(), "{out}/model.pt")
    guard.checkpoint("{out}/model.pt")
    state = torch.load("{out}/model.pt", weights_only=False)
    """
    run = run_guarded(tmp_path, train_script(before, after), config=config)
    assert run.rc == 0, run.explain()
    assert run.detections() == [], run.detections()
    assert run.errors() == [], run.errors()
    seeds = run.kinds("guard.seed")
    assert {e["subject"] for e in seeds} >= {"torch.manual_seed", "numpy.random.seed",
                                             "random.seed"}
    assert all(e["details"]["phase"] == "setup" for e in seeds)
    assert run.kinds("artifact.saved")


def test_write_to_protected_checkpoint(tmp_path: Path) -> None:
    other = tmp_path / "ckpt" / "other-job"
    other.mkdir(parents=True)
    config = f"""
    [guard]
    protected_paths = ["{tmp_path / 'ckpt'}"]
    output_dirs = ["{tmp_path / 'ckpt' / 'mine'}"]
    """
    after = f"""
    torch.save(model.state_dict(), "{other}/model.pt")
    with open("{other}/notes.txt", "a") as fh:
        fh.write("x")
    """
    run = run_guarded(tmp_path, train_script(after=after), config=config)
    assert run.rc == 0, run.explain()
    hits = run.detections("TG-GRD-008")
    assert {Path(e["subject"]).name for e in hits} == {"model.pt", "notes.txt"}, run.explain()
    assert all(e["details"]["location"]["file"].endswith("train.py") for e in hits)
