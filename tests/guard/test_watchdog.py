"""Watchdog and step timing: a slow or hung rank is reported with its stacks and code location.

In one process the training thread itself sleeps (a payload); across two real DDP (gloo) ranks,
rank 1 sleeps once and later hangs, and the job must name rank 1, the steps, and the payload's
lines, while rank 0 (which only waited) shows where it waited.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from trainguard.core.events import Event, EventKind
from trainguard.guard.detection import Detection
from trainguard.guard.monitors import MonitorConfig, TrainingMonitor
from trainguard.guard.timing import StepTimer
from trainguard.guard.watchdog import Watchdog, WatchdogConfig, thread_stacks

FAST = WatchdogConfig(slow_factor=5.0, slow_floor_s=0.3, hang_timeout_s=0.9, poll_s=0.02)


def sabotage_sleep(seconds: float) -> None:
    time.sleep(seconds)  # the payload line the watchdog must name


def _collect() -> tuple[list[tuple[Detection, int]], Any]:
    got: list[tuple[Detection, int]] = []
    return got, lambda d, step: got.append((d, step))


def test_slow_then_hung_step_dumps_stacks_with_location() -> None:
    got, emit = _collect()
    wd = Watchdog(emit, FAST)
    wd.start()
    try:
        wd.beat(4, 0.01)
        sabotage_sleep(1.3)
    finally:
        wd.stop()
    assert [(d.rule_id, step) for d, step in got] == [("TG-GRD-110", 5), ("TG-GRD-111", 5)]
    for d, _ in got:
        assert d.details["location"].startswith(f"{__file__}:")
        assert d.details["location"].endswith("in sabotage_sleep")
        main = [s for name, s in d.details["stacks"].items() if name.startswith("MainThread")]
        assert main
        assert "in sabotage_sleep" in main[0][-1]
        assert not any(n.startswith("trainguard-watchdog") for n in d.details["stacks"])
        Event.now(EventKind.GUARD_MONITOR, "t", d.details)  # JSON-clean details
    assert got[1][0].details["elapsed_s"] >= 0.9


def test_normal_steps_and_pauses_are_quiet() -> None:
    got, emit = _collect()
    # Generous thresholds: a loaded machine may stall a 20 ms step for a few hundred ms.
    wd = Watchdog(emit, WatchdogConfig(slow_floor_s=1.0, hang_timeout_s=1.2, poll_s=0.02))
    wd.start()
    try:
        for step in range(10):
            time.sleep(0.02)
            wd.beat(step, 0.02)
        wd.pause()  # evaluation / checkpointing: not judged
        time.sleep(1.5)
    finally:
        wd.stop()
    assert got == []


def test_slow_threshold_follows_the_typical_step() -> None:
    got, emit = _collect()
    wd = Watchdog(emit, WatchdogConfig(slow_factor=3.0, slow_floor_s=0.05, hang_timeout_s=60,
                                       poll_s=0.02))
    wd.start()
    try:
        wd.beat(1, 0.2)  # typical 0.2 s: a 0.4 s step is not slow
        time.sleep(0.4)
        wd.beat(2, 0.2)
        time.sleep(0.75)  # 3.75 typical steps: slow
    finally:
        wd.stop()
    assert [(d.rule_id, step) for d, step in got] == [("TG-GRD-110", 3)]


def test_faulthandler_backup_dump(tmp_path: Path) -> None:
    path = tmp_path / "stacks.txt"
    wd = Watchdog(lambda d, s: None, WatchdogConfig(hang_timeout_s=0.3, poll_s=0.05,
                                                    dump_file=str(path)))
    wd.start()
    try:
        wd.beat(1, 0.01)
        sabotage_sleep(0.8)
    finally:
        wd.stop()
    text = path.read_text()
    assert "sabotage_sleep" in text
    assert "test_watchdog.py" in text


def test_watchdog_survives_a_failing_sink() -> None:
    calls = {"n": 0}

    def broken(d: Detection, step: int) -> None:
        calls["n"] += 1
        raise OSError("sink gone")

    wd = Watchdog(broken, FAST)
    wd.start()
    try:
        wd.beat(1, 0.01)
        time.sleep(1.1)
        assert wd._thread is not None
        assert wd._thread.is_alive()
    finally:
        wd.stop()
    assert calls["n"] == 2


def test_monitor_wires_the_watchdog_and_timer() -> None:
    events: list[Event] = []
    mon = TrainingMonitor(events.append, MonitorConfig(watchdog=FAST, metrics_every=3))

    class Opt:
        param_groups: list[dict[str, Any]] = [{"params": [], "lr": 0.1}]
        state: dict[Any, Any] = {}

    try:
        for step in range(1, 4):
            if step == 2:
                sabotage_sleep(0.5)
            mon.step(None, Opt(), float(step))
    finally:
        mon.close()
    slow = [e for e in events if e.kind == EventKind.GUARD_MONITOR]
    assert [(e.rule_id, e.details["step"]) for e in slow] == [("TG-GRD-110", 2)]
    metric = next(e for e in events if e.kind == EventKind.GUARD_METRIC)
    assert metric.details["step"] == 3
    assert metric.details["lr"] == 0.1


def test_step_timer_phases_and_window() -> None:
    t = StepTimer(window=3)
    t.end_guard()
    for _ in range(5):
        with t.phase("data"):
            time.sleep(0.001)
        t.begin_guard()
        t.end_guard()
    assert len(t.recent) == 3
    assert t.typical_work_s() is not None
    assert t.take_phases()["data"] > 0.004
    assert t.take_phases() == {}
    assert len(t.take_arrivals()) == 5
    assert t.take_arrivals() == []


def test_thread_stacks_names_threads() -> None:
    stacks = thread_stacks()
    assert any(name.startswith("MainThread") for name in stacks)


# --- real 2-rank DDP job over gloo ----------------------------------------------------------

@pytest.mark.torch
@pytest.mark.slow
def test_slow_and_hung_rank_are_named_with_their_stacks(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import dist_worker

    codes, events = dist_worker.launch("timing", tmp_path)
    assert codes == [0, 0]
    mon = {r: [e for e in evs if e.kind == EventKind.GUARD_MONITOR] for r, evs in events.items()}
    # Every rank's cross-rank gather names rank 1 at the steps where it fell behind. A loaded
    # machine (CI with other work) can make an ordinary step slow too: those are allowed, the
    # sabotaged steps must be there.
    for r in (0, 1):
        slow = {(e.details["slow_rank"], e.details["slow_step"]) for e in mon[r]
                if "slow_rank" in e.details}
        assert {(1, 7), (1, 16)} <= slow
    # Rank 1's own watchdog dumps its stack inside the payloads, with the rank; stacks taken
    # outside a payload (a step slowed by machine load) are not part of this assertion.
    wd1 = [(e.rule_id, e.details["step"], e.details["location"]) for e in mon[1]
           if e.details.get("source") == "watchdog" and "payload" in e.details["location"]]
    assert [(rid, step) for rid, step, _ in wd1] == [
        ("TG-GRD-110", 7), ("TG-GRD-110", 16), ("TG-GRD-111", 16)]
    assert "in payload_sleep" in wd1[0][2]
    assert "in payload_hang" in wd1[2][2]
    assert all(e.identity.rank == 1 for e in mon[1])
    # Rank 0 only waited: its watchdog shows it blocked in the training loop, not in a payload.
    wd0 = [e.details["location"] for e in mon[0] if e.details.get("source") == "watchdog"]
    assert wd0
    assert all("payload" not in loc for loc in wd0)
