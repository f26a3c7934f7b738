"""Tripwires: replaced optimizer steps, global hooks and reseeding are detected and named
(monitor) or stopped (enforce); torch's own wrapping of `step` is not a detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from guard_helpers import Run, run_guarded, train_script

from trainguard.guard.config import GuardConfig
from trainguard.guard.runtime import GuardRuntime, GuardStopped
from trainguard.guard.tripwires import Tripwires, code_digest

pytestmark = pytest.mark.torch

PAYLOAD = """\
import torch
_orig = torch.optim.AdamW.step

def flipped_step(self, closure=None):                        # line 4
    return _orig(self, closure)

def patch():
    torch.optim.AdamW.step = flipped_step

def perturb(module, args, output):                           # line 10
    return output

def add_hook():
    torch.nn.modules.module.register_module_forward_hook(perturb)

def reseed():
    torch.manual_seed(1234)                                  # line 17
"""

CONFIG = """
[guard]
check_every = 1
"""


@pytest.fixture(scope="module")
def monitor_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("tripwire-monitor")
    before = "import payload\npayload.patch()\npayload.add_hook()\n"
    after = """
    payload.reseed()
    x = torch.randn(16, 8)
    opt.step = (lambda *a, **k: None)
    guard.step(model, opt, model(x).sum())
    """
    return run_guarded(tmp, train_script(before, after), config=CONFIG,
                       files={"payload.py": PAYLOAD})


@pytest.mark.slow
def test_monitor_run_completes(monitor_run: Run) -> None:
    assert monitor_run.rc == 0, monitor_run.explain()
    assert "TRAINING-DONE" in monitor_run.stdout
    assert not monitor_run.errors(), monitor_run.errors()


@pytest.mark.slow
def test_replaced_step_names_the_replacing_function(monitor_run: Run) -> None:
    hits = [e for e in monitor_run.detections("TG-GRD-010")
            if e["subject"] == "torch.optim.AdamW.step"]
    assert len(hits) == 1, monitor_run.explain()
    loc = hits[0]["details"]["location"]
    assert loc["file"].endswith("payload.py")
    assert loc["line"] == 4
    assert "flipped_step" in hits[0]["details"]["message"]
    assert hits[0]["details"]["where"] == "step 1"


@pytest.mark.slow
def test_global_hook_detected(monitor_run: Run) -> None:
    hits = monitor_run.detections("TG-GRD-011")
    assert len(hits) == 1, monitor_run.explain()
    assert hits[0]["details"]["location"]["line"] == 10
    assert hits[0]["subject"].endswith("_global_forward_hooks")


@pytest.mark.slow
def test_reseed_after_start_detected_with_caller(monitor_run: Run) -> None:
    hits = monitor_run.detections("TG-GRD-012")
    assert len(hits) == 1, monitor_run.explain()
    loc = hits[0]["details"]["location"]
    assert loc["file"].endswith("payload.py")
    assert loc["line"] == 17
    assert hits[0]["details"]["seed"] == "1234"
    setup = [e for e in monitor_run.kinds("guard.seed") if e["subject"] == "torch.manual_seed"]
    assert setup
    assert setup[0]["details"]["phase"] == "setup"


@pytest.mark.slow
def test_instance_step_replacement_detected(monitor_run: Run) -> None:
    hits = [e for e in monitor_run.detections("TG-GRD-010")
            if "(instance)" in e["subject"]]
    assert hits, monitor_run.explain()
    assert hits[0]["details"]["location"]["file"].endswith("train.py")


@pytest.mark.slow
def test_torch_own_wrappers_are_not_detections(monitor_run: Run) -> None:
    # the LR scheduler wraps opt.step, torch wraps AdamW.step (profile hook) on first use and
    # torch._dynamo wraps torch.manual_seed: only the payload's changes are reported
    subjects = sorted(e["subject"] for e in monitor_run.detections("TG-GRD-010"))
    assert subjects == ["AdamW(instance).step", "torch.optim.AdamW.step"], subjects


@pytest.mark.slow
def test_enforce_stops_the_job_at_the_next_check(tmp_path: Path) -> None:
    run = run_guarded(tmp_path, train_script("import payload\npayload.patch()\n"),
                      mode="enforce", config=CONFIG, files={"payload.py": PAYLOAD})
    assert run.rc == 77, run.explain()
    assert "TRAINING-DONE" not in run.stdout
    assert "GuardStopped" in run.stderr
    assert "TG-GRD-010" in run.stderr
    assert run.detections("TG-GRD-010")[0]["details"]["action"] == "blocked"


@pytest.mark.slow
def test_enforce_refuses_reseed_after_start(tmp_path: Path) -> None:
    after = """
    from trainguard.guard import GuardStopped
    try:
        payload.reseed()
        print("RESEEDED")
    except GuardStopped as exc:
        print("STOPPED", exc.rule_id)
    """
    run = run_guarded(tmp_path, train_script("import payload\n", after), mode="enforce",
                      files={"payload.py": PAYLOAD})
    assert "STOPPED TG-GRD-012" in run.stdout, run.explain()
    assert run.rc == 77


# ---------------------------------------------------------------------- in-process units
def _runtime(tmp: Path, mode: str = "monitor") -> GuardRuntime:
    return GuardRuntime(GuardConfig(mode=mode), events_path=tmp / "e.jsonl", stderr=False)


def _events(tmp: Path) -> list[dict]:
    p = tmp / "e.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_patched_before_snapshot_fails_the_origin_check(tmp_path: Path) -> None:
    import torch

    def evil(self, closure=None):
        return None

    original = torch.optim.SGD.__dict__["step"]
    torch.optim.SGD.step = evil
    rt = _runtime(tmp_path)
    try:
        Tripwires(rt).snapshot("import")
    finally:
        torch.optim.SGD.step = original
        rt.close()
    hits = [e for e in _events(tmp_path) if e["rule_id"] == "TG-GRD-010"]
    assert [e["subject"] for e in hits] == ["torch.optim.SGD.step"]
    assert hits[0]["details"]["check"] == "origin"
    assert hits[0]["details"]["location"]["file"] == __file__


def test_profile_wrapper_is_unwrapped_but_not_trusted_blindly(tmp_path: Path) -> None:
    import torch

    rt = _runtime(tmp_path, "enforce")
    tw = Tripwires(rt)
    tw.snapshot("import")
    original = torch.optim.Adam.__dict__["step"]
    try:
        # what torch itself does on the first instantiation: not a change
        torch.optim.Adam.step = torch.optim.Optimizer.profile_hook_step(original)
        assert tw.check("step 1") == 0

        def evil(self, closure=None):
            return None

        # a payload hiding behind torch's wrapper is still a change, and enforce stops it
        torch.optim.Adam.step = torch.optim.Optimizer.profile_hook_step(evil)
        with pytest.raises(GuardStopped):
            tw.check("step 2")
    finally:
        torch.optim.Adam.step = original
        rt.close()
    hits = [e for e in _events(tmp_path) if e["rule_id"] == "TG-GRD-010"]
    # every optimizer class that inherits Adam.step (AdamW does in recent torch) is named
    subjects = {e["subject"] for e in hits}
    assert "torch.optim.Adam.step" in subjects
    assert all(issubclass(getattr(torch.optim, s.split(".")[2]), torch.optim.Adam)
               for s in subjects)


def test_code_digest_sees_code_not_identity() -> None:
    def a(x):
        return x + 1

    def b(x):
        return x + 1

    def c(x):
        return x - 1

    assert code_digest(a.__code__) != code_digest(c.__code__)
    # same text, different qualname: different functions
    assert code_digest(a.__code__) != code_digest(b.__code__)
    assert code_digest(a.__code__) == code_digest(a.__code__.replace())
