"""Cross-rank fingerprints: the verdict logic, the fingerprints, and real 2-rank DDP (gloo) jobs.

The distributed jobs run tests/guard/dist_worker.py in separate processes (real torch.distributed
over gloo, a tiny DDP model): a clean run with a warm-up + cosine schedule and a new checkpoint
loaded on all ranks (no detection), weights perturbed after load on rank 1 (rank 1 named), and an
update flipped on rank 1 in enforce mode (rank 1 stops the job).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import dist_worker  # noqa: E402

from trainguard.core.events import EventKind  # noqa: E402
from trainguard.guard.crossrank import (  # noqa: E402
    CrossRankChecker,
    CrossRankConfig,
    Fingerprinter,
    divergent_ranks,
    group_ranks,
)

pytestmark = pytest.mark.torch


# --- verdicts (pure) -------------------------------------------------------------------------

def test_majority_names_the_divergent_rank() -> None:
    rows = [[1.0, 2.0], [1.0, 2.0], [1.0, 2.5], [1.0, 2.0]]
    assert group_ranks(rows, 0.0) == [[0, 1, 3], [2]]
    assert divergent_ranks(rows, [False] * 4, 0.0) == ([2], False)


def test_two_ranks_tie_is_broken_by_the_rank_that_caught_something_itself() -> None:
    rows = [[1.0], [1.5]]
    assert divergent_ranks(rows, [False, True], 0.0) == ([1], False)
    assert divergent_ranks(rows, [False, False], 0.0) == ([0, 1], True)
    assert divergent_ranks([[1.0], [1.0]], [False, True], 0.0) == ([], False)


def test_tolerance() -> None:
    rows = [[1.0], [1.0 + 1e-9]]
    assert divergent_ranks(rows, [False, False], 0.0)[0] == [0, 1]
    assert divergent_ranks(rows, [False, False], 1e-6) == ([], False)


def _gathered(arrivals: list[list[float]], fps: list[list[float]]) -> list[list[float]]:
    return [[len(f) / 2, len(a), 0.0, *a, *f] for a, f in zip(arrivals, fps)]


def test_slow_rank_from_arrival_jumps_despite_ddp_resync() -> None:
    # Rank 1 falls 1 s behind at the 3rd step; DDP's all-reduce then re-synchronises both.
    base = [100.0 + 0.02 * i for i in range(5)]
    a0 = [base[0], base[1], base[2], base[3] + 1.0, base[4] + 1.0]
    a1 = [base[0], base[1], base[2] + 1.0, base[3] + 1.0, base[4] + 1.0]
    checker = CrossRankChecker(CrossRankConfig(slow_min_excess_s=0.1))
    found = checker.judge(10, ["w"], _gathered([a0, a1], [[1.0, 2.0], [1.0, 2.0]]))
    assert [(d.rule_id, d.details["slow_rank"], d.details["slow_step"]) for d in found] == [
        ("TG-GRD-110", 1, 8)]


def test_clock_offset_between_hosts_is_not_slowness() -> None:
    a0 = [100.0 + 0.02 * i for i in range(5)]
    a1 = [t + 5.0 for t in a0]  # rank 1's clock is 5 s ahead
    checker = CrossRankChecker()
    assert checker.judge(5, ["w"], _gathered([a0, a1], [[1.0, 2.0], [1.0, 2.0]])) == []
    assert checker.judge(10, ["w"], _gathered([[t + 0.1 for t in a0], [t + 0.1 for t in a1]],
                                              [[1.0, 2.0], [1.0, 2.0]])) == []


def test_divergence_reported_once_per_episode() -> None:
    checker = CrossRankChecker()
    g = _gathered([[1.0], [1.0]], [[1.0, 2.0], [1.0, 3.0]])
    g[1][2] = 1.0  # rank 1 is a suspect
    first = checker.judge(10, ["w"], g)
    assert [(d.rule_id, d.details["divergent_ranks"], d.details["tensors"]) for d in first] == [
        ("TG-GRD-105", [1], ["w"])]
    assert checker.judge(20, ["w"], g) == []


# --- fingerprints --------------------------------------------------------------------------------

def test_fingerprint_sees_every_element_and_spares_the_global_rng() -> None:
    fp = Fingerprinter(cap=64)
    t = torch.randn(1000)  # 15 rows of 64 and a tail of 40
    state = torch.get_rng_state()
    ref = fp.tensor("w", t)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(fp.tensor("w", t.clone()), ref)
    for i in (0, 500, 959, 960, 999):  # body rows and the tail
        u = t.clone()
        u[i] += 1e-3
        assert not torch.equal(fp.tensor("w", u), ref), i
    swapped = t.clone()
    swapped[:64], swapped[64:128] = t[64:128].clone(), t[:64].clone()
    assert not torch.equal(fp.tensor("w", swapped), ref)  # row weights: order matters
    assert fp.tensor("b", torch.randn(3, dtype=torch.bfloat16)).shape == (2,)


# --- real 2-rank DDP jobs over gloo ----------------------------------------------------------

def _monitor_events(events: dict[int, list[Any]]) -> dict[int, list[tuple[str | None, Any]]]:
    return {r: [(e.rule_id, e.details.get("step")) for e in evs
                if e.kind == EventKind.GUARD_MONITOR] for r, evs in events.items()}


@pytest.mark.slow
def test_clean_ddp_run_with_schedule_and_new_checkpoint_is_quiet(tmp_path: Path) -> None:
    codes, events = dist_worker.launch("clean", tmp_path)
    assert codes == [0, 0]
    assert _monitor_events(events) == {0: [], 1: []}
    for r in (0, 1):
        metrics = [e for e in events[r] if e.kind == EventKind.GUARD_METRIC]
        assert [m.details["step"] for m in metrics] == [5, 10, 15, 20, 25, 30]
        assert all(m.details["rank"] == r and m.identity.rank == r for m in metrics)
        assert len({m.details["lr"] for m in metrics}) == 6  # warm-up + cosine moved the lr


@pytest.mark.slow
def test_weights_perturbed_after_load_on_one_rank_name_that_rank(tmp_path: Path) -> None:
    codes, events = dist_worker.launch("perturb", tmp_path)
    assert codes == [0, 0]
    got = _monitor_events(events)
    # Rank 1 catches its own load (before step 12's update), then every rank names rank 1.
    assert got[1] == [("TG-GRD-106", 11), ("TG-GRD-105", 15)]
    assert got[0] == [("TG-GRD-105", 15)]
    for r in (0, 1):
        d = next(e for e in events[r] if e.rule_id == "TG-GRD-105")
        assert d.details["divergent_ranks"] == [1]
        assert d.details["ambiguous"] is False
        assert d.details["tensors"][0] == "module.0.weight"
        assert d.identity.rank == r


@pytest.mark.slow
def test_update_flipped_on_one_rank_stops_the_job_in_enforce_mode(tmp_path: Path) -> None:
    codes, events = dist_worker.launch("enforce_flip", tmp_path)
    assert codes[1] == 3  # rank 1 raised MonitorViolation; the launcher ended rank 0
    got = _monitor_events(events)
    assert got[1] == [("TG-GRD-102", 8)]
    assert got[0] == []
    d = next(e for e in events[1] if e.rule_id == "TG-GRD-102")
    assert d.identity.rank == 1
    assert d.details["agreement"] < 0.5


def test_subgroup_positions_are_reported_as_global_ranks() -> None:
    # A data-parallel group of global ranks 2 and 6 (e.g. one tensor-parallel slice).
    checker = CrossRankChecker()
    g = _gathered([[1.0], [1.0]], [[1.0, 2.0], [1.0, 3.0]])
    g[0][2] = 1.0
    (d,) = checker.judge(10, ["w"], g, ranks=[2, 6])
    assert d.details["divergent_ranks"] == [2]
    assert d.details["group_ranks"] == [2, 6]


def test_only_replicas_are_fingerprinted(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainguard.guard import monitors

    seen: list[bool] = []

    def fake_check(step: int, model: Any, optimizer: Any, **kw: Any) -> list[Any]:
        seen.append(kw["replicas"])
        return []

    model = torch.nn.Linear(2, 2)
    for replicated, want in ((None, False), (True, True), (False, False)):
        cfg = monitors.MonitorConfig(watchdog=None, crossrank=CrossRankConfig(
            replicated=replicated))
        mon = monitors.TrainingMonitor(lambda e: None, cfg)
        monkeypatch.setattr(mon.crossrank, "check", fake_check)
        # A plain module (no DDP wrapper): sharded or model-parallel jobs look like this.
        mon._crossrank(10, model, None)
        assert seen[-1] is want
        mon.close()
