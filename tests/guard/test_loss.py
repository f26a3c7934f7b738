"""Loss anomaly detection: NaN/inf, spikes, and divergence after descent, with few false positives.

The divergence rule is tested on the losses of real training loops (torch, CPU): a legitimate
warm-up + cosine or step-decay schedule must not fire; a sign-flipped update from step N must.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from trainguard.guard.loss import LossConfig, LossMonitor


def feed(values: list[float], config: LossConfig | None = None) -> list[tuple[str, int]]:
    mon = LossMonitor(config)
    out = []
    for step, v in enumerate(values, 1):
        out += [(d.rule_id, step) for d in mon.observe(step, v)]
    return out


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_is_critical(bad: float) -> None:
    values = [1.0] * 5 + [bad]
    assert feed(values) == [("TG-GRD-107", 6)]
    d = LossMonitor().observe(1, bad)[0]
    assert d.severity.label == "critical"
    assert d.details["loss_text"] == str(bad)


def test_spike_is_flagged_at_its_step_and_not_repeated() -> None:
    rng = random.Random(0)
    values = [2.0 + rng.gauss(0, 0.05) for _ in range(60)]
    values[40] = 9.0
    values[45] = 9.5  # inside the cooldown: one detection per episode
    assert feed(values) == [("TG-GRD-108", 41)]


def test_negative_losses_spike_relative_to_their_level() -> None:
    rng = random.Random(1)
    values = [-5.0 + rng.gauss(0, 0.05) for _ in range(40)]
    values[30] = 3.0
    assert feed(values) == [("TG-GRD-108", 31)]


@pytest.mark.parametrize("seed", range(40))
def test_noisy_descent_has_no_false_positives(seed: int) -> None:
    rng = random.Random(seed)
    # A decaying loss with heavy-tailed noise (occasional 1.5x batches) and a plateau.
    values = [0.5 + 2.0 * math.exp(-s / 80) * (1.5 if rng.random() < 0.03 else 1.0)
              + abs(rng.gauss(0, 0.08)) for s in range(400)]
    assert feed(values) == []


# --- real training loops -----------------------------------------------------------------------

torch_mark = pytest.mark.torch


def _losses(steps: int, *, sched: str | None = None, flip_from: int | None = None) -> list[float]:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        scheduler: Any = None
        if sched == "warmup-cosine":
            scheduler = torch.optim.lr_scheduler.SequentialLR(opt, [
                torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=30),
                torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps - 30)], milestones=[30])
        elif sched == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.1)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(1024, 8, generator=gen)
        y = torch.sin(x.sum(1, keepdim=True))
        out = []
        for step in range(1, steps + 1):
            idx = torch.randint(0, 1024, (32,), generator=gen)
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if flip_from is not None and step >= flip_from:
                for g in opt.param_groups:
                    g["maximize"] = True  # PAYLOAD: ascend from here on
            opt.step()
            if scheduler is not None:
                scheduler.step()
            out.append(float(loss.detach()))
        return out
    finally:
        torch.set_num_threads(threads)


@torch_mark
@pytest.mark.parametrize("sched", [None, "warmup-cosine", "step"])
def test_legitimate_schedules_do_not_fire(sched: str | None) -> None:
    assert feed(_losses(240, sched=sched)) == []


@torch_mark
def test_sign_flipped_training_diverges_and_is_caught_soon() -> None:
    losses = _losses(240, flip_from=120)
    found = feed(losses)
    steps = [s for r, s in found if r == "TG-GRD-109"]
    assert steps, found
    assert 120 < steps[0] <= 120 + 2 * LossConfig().trend_window
    assert all(s > 120 for _, s in found)  # nothing before the sabotage
