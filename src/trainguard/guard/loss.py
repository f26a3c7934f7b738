"""Robust loss anomaly detection: non-finite loss, spikes, and divergence after descent.

Rules (core/rules_guard.py): TG-GRD-107 non-finite loss, TG-GRD-108 spike, TG-GRD-109 a loss that
turns upward after it was going down (what a flipped or ascending update does).

Why robust statistics: training loss is noisy and heavy-tailed, and legitimate schedule changes
(warm-up, step decay, cosine) change its level and slope. Median and MAD (median absolute
deviation, scaled by 1.4826 to estimate a normal sigma) over a sliding window ignore the outliers
that a mean and standard deviation would chase, and every rule needs *both* a relative and a
statistical margin before it fires, then waits ``cooldown`` steps before firing again. Megatron-LM's
check (NaN fatal, spike = 10x the max) misses a 25% sign flip; the divergence rule looks at the
trend of medians instead, which a flipped update turns upward within a few windows.

Example::

    from trainguard.guard.loss import LossMonitor, LossConfig
    mon = LossMonitor(LossConfig(window=50))
    for step, loss in enumerate([2.0, 1.9, 1.8, float("nan")], 1):
        for d in mon.observe(step, loss):
            print(d.rule_id, d.message)          # TG-GRD-107 loss is nan at step 4
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from trainguard.core.findings import Severity
from trainguard.guard.detection import Detection

_MAD_SIGMA = 1.4826  # MAD -> sigma for normal data


def _median(values: list[float]) -> float:
    """statistics.median without its type dispatch (this runs every step on short lists)."""
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2


@dataclass(frozen=True)
class LossConfig:
    """Thresholds of the loss monitor (defaults chosen for few false positives)."""

    #: steps of history kept (spike baseline and the divergence windows come from it)
    window: int = 60
    #: steps needed before spikes or divergence are judged (warm-up noise is ignored)
    min_history: int = 20
    #: a spike is ``loss > median * spike_ratio`` AND ``loss > median + spike_z * sigma``
    spike_ratio: float = 2.0
    spike_z: float = 8.0
    #: divergence: windows of ``trend_window`` steps; the last window's median rises above the
    #: previous one by ``rise_ratio`` (relative) and ``rise_z`` standard errors, and above the one
    #: before (by half that), after the loss had been going down (that one higher than the middle)
    trend_window: int = 20
    rise_ratio: float = 0.10
    rise_z: float = 6.0
    #: steps after a detection during which the same rule stays quiet
    cooldown: int = 50


class LossMonitor:
    """Feeds on ``(step, loss)`` and returns detections; holds only a bounded window."""

    def __init__(self, config: LossConfig | None = None) -> None:
        self.config = config or LossConfig()
        size = max(self.config.window, 3 * self.config.trend_window)
        self._hist: deque[float] = deque(maxlen=size)
        self._last_fired: dict[str, int] = {}

    def reset(self) -> None:
        """Forget the history (a new phase of training: a freshly loaded checkpoint, a new task)."""
        self._hist.clear()
        self._last_fired.clear()

    def _quiet(self, rule_id: str, step: int) -> bool:
        last = self._last_fired.get(rule_id)
        return last is not None and step - last < self.config.cooldown

    def _fire(self, rule_id: str, step: int) -> bool:
        if self._quiet(rule_id, step):
            return False
        self._last_fired[rule_id] = step
        return True

    def observe(self, step: int, loss: float) -> list[Detection]:
        """Judge one loss value (call once per optimizer step, or on every logged loss)."""
        cfg = self.config
        out: list[Detection] = []
        if not math.isfinite(loss):
            # Non-finite loss is always fatal: the weights are about to become NaN.
            if self._fire("TG-GRD-107", step):
                out.append(Detection("TG-GRD-107", Severity.CRITICAL,
                                     f"loss is {loss} at step {step}",
                                     {"loss_text": str(loss)}))
            return out  # never let NaN into the window
        hist = self._hist
        if len(hist) >= cfg.min_history:
            window = list(hist)[-cfg.window:]
            med = _median(window)
            sigma = _MAD_SIGMA * _median([abs(x - med) for x in window])
            # A flat window (MAD 0) falls back to a tiny fraction of the level so a constant
            # loss does not make every wiggle infinitely significant.
            sigma = max(sigma, 1e-3 * abs(med), 1e-12)
            # ``med + (ratio - 1) * |med|`` is ``med * ratio`` for positive losses and stays
            # meaningful for negative ones (log-likelihoods).
            over_ratio = loss > med + (cfg.spike_ratio - 1.0) * abs(med)
            if over_ratio and loss > med + cfg.spike_z * sigma and self._fire("TG-GRD-108", step):
                out.append(Detection("TG-GRD-108", Severity.MEDIUM,
                                     f"loss spike at step {step}: {loss:.4g} vs median {med:.4g}",
                                     {"loss": loss, "median": med,
                                      "robust_z": (loss - med) / sigma}))
        hist.append(loss)
        d = self._divergence(step)
        if d is not None:
            out.append(d)
        return out

    def _divergence(self, step: int) -> Detection | None:
        cfg = self.config
        n = cfg.trend_window
        if len(self._hist) < max(3 * n, cfg.min_history):
            return None
        values = list(self._hist)[-3 * n:]
        w0, w1, w2 = values[:n], values[n:2 * n], values[2 * n:]
        m0, m1, m2 = _median(w0), _median(w1), _median(w2)
        # Noise of a window median: sigma * 1.2533 / sqrt(n) (median of normal samples); sigma
        # from the MAD of the last two windows around their own medians (removes the trend).
        resid = [x - m1 for x in w1] + [x - m2 for x in w2]
        sigma = _MAD_SIGMA * _median([abs(r) for r in resid])
        se = max(sigma * 1.2533 / math.sqrt(n), 1e-12)
        was_descending = m1 < m0
        margin = max(cfg.rise_ratio * abs(m1), cfg.rise_z * se)
        # Up clearly from the last window AND above where it was two windows ago: noise on a
        # plateau makes the first alone happen now and then; a real ascent does both.
        rising = m2 > m1 + margin and m2 > m0 + margin / 2
        if was_descending and rising and self._fire("TG-GRD-109", step):
            return Detection(
                "TG-GRD-109", Severity.HIGH,
                f"loss turned upward at step {step} after descending: window medians "
                f"{m0:.4g} -> {m1:.4g} -> {m2:.4g}",
                {"medians": [m0, m1, m2], "trend_window": n, "standard_error": se,
                 "first_step_of_rise": step - n + 1})
        return None
