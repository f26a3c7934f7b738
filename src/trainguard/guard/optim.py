"""Optimizer checks: hyperparameters against the committed config or schedule, and the direction
of each update against the optimizer's own state (rules TG-GRD-101, TG-GRD-102).

Hyperparameters (``HyperparamMonitor``): every key of every param group except ``params`` and the
implementation switches (``foreach``, ``fused``, ``capturable``, ``differentiable``) is compared
with the committed value (``expected`` from the config) or, failing that, with the value seen at
the first check. The learning rate is the one key that legitimately moves; its expected value
comes, in order, from a declared schedule (``lr_schedule(step)``), from the torch LR scheduler
driving the optimizer, or else it must stay constant. The scheduler is passed in or, when not,
found once through ``gc.get_referrers`` (guided by the ``initial_lr`` key torch schedulers add);
the monitor keeps a private copy of it (:class:`ShadowSchedule`) stepped as often as the real one,
so a payload that changes the lr right before ``scheduler.step()`` cannot make the scheduler
adopt its value. Schedulers that cannot be copied or replayed (ReduceLROnPlateau, which needs the
metric) are compared through ``get_last_lr()``.
``maximize=True`` or a negative learning rate is always TG-GRD-102 (ascent).

Update direction (``UpdateDirectionMonitor``): a payload that flips the update on *some* steps and
restores everything afterwards leaves no trace in the hyperparameters. But every first-order
optimizer moves each weight against a direction it keeps: Adam-family ``exp_avg`` (update
``-lr * m_hat / (sqrt(v_hat) + eps)``, Kingma & Ba 2015, Alg. 1), SGD's ``momentum_buffer``, or the
gradient itself. On a fixed random sample of coordinates of a few tensors per check (rotating over
all parameters) the monitor compares the weight change since the previous step with that
direction: legitimately nearly every coordinate moves against it; a flipped step moves with it.
"""

from __future__ import annotations

import gc
import math
import weakref
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trainguard.core.findings import Severity
from trainguard.guard.detection import Detection

#: implementation switches, not part of the mathematical optimizer
IGNORED_KEYS = frozenset({"params", "foreach", "fused", "capturable", "differentiable", "name"})

LrSchedule = Callable[[int], "float | Sequence[float]"]

#: consecutive coordinates per sampled run in the update-direction check
_RUN = 64


def _norm(value: Any) -> Any:
    """A comparable, JSON-friendly form of a hyperparameter value (tensors to floats)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (tuple, list)):
        return [_norm(v) for v in value]
    try:  # a 0-d tensor (tensor lr / betas are allowed by torch)
        return float(value)
    except (TypeError, ValueError):
        return repr(value)


def _close(a: Any, b: Any, rel_tol: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel_tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0) or a == b
    return bool(a == b)


def find_scheduler(optimizer: Any) -> Any | None:
    """The outermost torch LR scheduler driving this optimizer, found among its referrers.

    Composite schedulers (SequentialLR, ChainedScheduler) hold their parts, which reference the
    same optimizer; the one no other candidate contains is the one the training loop steps.
    """
    found: list[Any] = []
    for obj in gc.get_referrers(optimizer):
        owners = [obj]
        if isinstance(obj, dict):  # an instance __dict__ holding the optimizer
            owners = [o for o in gc.get_referrers(obj) if getattr(o, "__dict__", None) is obj]
        for owner in owners:
            if hasattr(owner, "get_last_lr") and getattr(owner, "optimizer", None) is optimizer \
                    and all(owner is not f for f in found):
                found.append(owner)
    inner = {id(part) for f in found for part in getattr(f, "_schedulers", ())}
    outer = [f for f in found if id(f) not in inner]
    return outer[0] if outer else None


class _ShadowOptimizer:
    """Param groups without parameters: what a scheduler copy may read and write."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        self.param_groups = groups
        self.defaults: dict[str, Any] = {}
        self.state: dict[Any, Any] = {}
        self._opt_called = True

    def step(self) -> None:
        """Never called; present because schedulers look at it."""


class ShadowSchedule:
    """A private copy of the job's LR scheduler, stepped as often as the real one.

    Why not just ``get_last_lr()``: recursive schedulers (CosineAnnealingLR, ExponentialLR, ...)
    compute the next lr from the param group's *current* lr, so a payload that changes the lr
    just before ``scheduler.step()`` is adopted by the scheduler and agrees with its
    ``get_last_lr()``. The copy (``deepcopy`` with the optimizer mapped to parameter-free
    groups) never sees the payload's change, so its lr is the one the committed schedule gives.
    """

    def __init__(self, scheduler: Any, optimizer: Any) -> None:
        import copy

        groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
                  for g in optimizer.param_groups]
        self.source = scheduler
        self.shadow_opt = _ShadowOptimizer(groups)
        self.shadow = copy.deepcopy(scheduler, {id(optimizer): self.shadow_opt})
        self.epoch_ok = isinstance(getattr(scheduler, "last_epoch", None), int) and \
            type(scheduler).__name__ != "ReduceLROnPlateau"

    def advance(self, max_steps: int = 100_000) -> bool:
        """Step the copy up to the real scheduler's epoch; False if the real one went back."""
        import warnings

        real = int(self.source.last_epoch)
        if real < int(self.shadow.last_epoch):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "step() before optimizer.step()" on the copy
            for _ in range(min(real - int(self.shadow.last_epoch), max_steps)):
                self.shadow.step()
        return True

    def expected(self, i: int, key: str) -> Any:
        return _norm(self.shadow_opt.param_groups[i].get(key))


class HyperparamMonitor:
    """Checks optimizer hyperparameters per param group (see module docstring)."""

    def __init__(self, *, expected: Mapping[str, Any] | None = None,
                 expected_groups: Sequence[Mapping[str, Any]] | None = None,
                 lr_schedule: LrSchedule | None = None, rel_tol: float = 1e-6) -> None:
        self.expected = {k: _norm(v) for k, v in (expected or {}).items()}
        self.expected_groups = [{k: _norm(v) for k, v in g.items()} for g in expected_groups or ()]
        self.lr_schedule = lr_schedule
        self.rel_tol = rel_tol
        self._baseline: list[dict[str, Any]] | None = None
        self._reported_lr: dict[int, float] = {}
        self._scheduler: Any = None
        self._searched: weakref.WeakSet[Any] = weakref.WeakSet()
        self._shadow: ShadowSchedule | None = None

    def expect_reset(self) -> None:
        """Accept the current values as the new baseline at the next check (a new run phase)."""
        self._baseline = None
        self._reported_lr.clear()
        self._shadow = None

    def set_scheduler(self, scheduler: Any) -> None:
        self._scheduler = scheduler

    def _committed(self, i: int) -> dict[str, Any]:
        out = dict(self.expected)
        if i < len(self.expected_groups):
            out.update(self.expected_groups[i])
        return out

    def _scheduler_for(self, optimizer: Any) -> Any | None:
        sched = self._scheduler
        if sched is not None and getattr(sched, "optimizer", optimizer) is optimizer:
            return sched
        if optimizer not in self._searched and any(
                "initial_lr" in g for g in optimizer.param_groups):
            self._searched.add(optimizer)
            self._scheduler = find_scheduler(optimizer)
        return self._scheduler

    def check(self, step: int, optimizer: Any, scheduler: Any | None = None) -> list[Detection]:
        """Compare every param group now; one detection per change (not per step)."""
        if scheduler is not None:
            self._scheduler = scheduler
        groups = [{k: _norm(v) for k, v in g.items() if k not in IGNORED_KEYS}
                  for g in optimizer.param_groups]
        out: list[Detection] = []
        if self._baseline is None or len(self._baseline) != len(groups):
            if self._baseline is not None:
                out.append(Detection("TG-GRD-101", Severity.MEDIUM,
                                     f"optimizer param groups changed from {len(self._baseline)} "
                                     f"to {len(groups)} at step {step}",
                                     {"groups_before": len(self._baseline),
                                      "groups_after": len(groups)}))
            self._baseline = []
            for i, g in enumerate(groups):
                committed = self._committed(i)
                for key, want in committed.items():
                    if key != "lr" and key in g and not _close(g[key], want, self.rel_tol):
                        out.append(self._changed(step, i, key, want, g[key],
                                                 source="config"))
                self._baseline.append(dict(g))  # a config mismatch is reported once, above
        sched = self._scheduler_for(optimizer)
        shadow = self._shadow_for(sched, optimizer, step, out)
        # OneCycleLR/CyclicLR with cycle_momentum legitimately move betas/momentum too: those
        # come from the shadow schedule like the lr (or are not judged without one).
        cycled = {"betas", "momentum"} if getattr(sched, "cycle_momentum", False) else set()
        for i, g in enumerate(groups):
            base = self._baseline[i]
            for key in sorted(set(g) | set(base)):
                if key == "lr" or key in cycled:
                    if key in cycled and shadow is not None and key in g and not _close(
                            g[key], shadow.expected(i, key), self.rel_tol) \
                            and base.get(f"reported:{key}") != g[key]:
                        base[f"reported:{key}"] = g[key]
                        out.append(self._changed(step, i, key, shadow.expected(i, key), g[key],
                                                 source="scheduler copy"))
                    continue
                if not _close(g.get(key), base.get(key), self.rel_tol):
                    out.append(self._changed(step, i, key, base.get(key), g.get(key),
                                                 source="baseline"))
                    base[key] = g.get(key)  # report each change once
            out.extend(self._check_lr(step, i, g, base, sched, shadow=shadow))
        return out

    def _shadow_for(self, sched: Any, optimizer: Any, step: int, out: list[Detection]
                    ) -> ShadowSchedule | None:
        if sched is None:
            return None
        sh = self._shadow
        if sh is None or sh.source is not sched:
            try:
                sh = self._shadow = ShadowSchedule(sched, optimizer)
            except Exception:  # an uncopyable scheduler: fall back to get_last_lr()
                self._shadow = None
                return None
        if not sh.epoch_ok:
            return None
        if not sh.advance():
            out.append(Detection("TG-GRD-101", Severity.MEDIUM,
                                 f"LR scheduler {type(sched).__name__} went back from epoch "
                                 f"{sh.shadow.last_epoch} to {sched.last_epoch} at step {step}",
                                 {"key": "last_epoch", "expected": int(sh.shadow.last_epoch),
                                  "actual": int(sched.last_epoch)}))
            self._shadow = None
            return None
        return sh

    def _changed(self, step: int, i: int, key: str, want: Any, got: Any, *,
                 source: str) -> Detection:
        if key == "maximize" and got is True:
            return Detection("TG-GRD-102", Severity.CRITICAL,
                             f"optimizer param group {i} set to maximize the loss at step {step}",
                             {"group": i, "key": key, "expected": want, "actual": got})
        return Detection("TG-GRD-101", Severity.HIGH,
                         f"optimizer {key} of param group {i} is {got!r}, expected {want!r} "
                         f"({source}) at step {step}",
                         {"group": i, "key": key, "expected": want, "actual": got,
                          "expected_from": source})

    def _check_lr(self, step: int, i: int, g: dict[str, Any], base: dict[str, Any],
                  sched: Any | None, *, shadow: ShadowSchedule | None) -> list[Detection]:
        lr = g.get("lr")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool):
            return []
        if lr < 0:
            if self._reported_lr.get(i) == lr:
                return []
            self._reported_lr[i] = lr
            return [Detection("TG-GRD-102", Severity.CRITICAL,
                              f"learning rate of param group {i} is negative ({lr}) at step "
                              f"{step}: updates ascend the loss",
                              {"group": i, "key": "lr", "actual": lr})]
        want: float | None
        source: str
        if self.lr_schedule is not None:
            value = self.lr_schedule(step)
            want = float(value[i] if isinstance(value, Sequence) else value)
            source = "declared schedule"
        elif shadow is not None:
            want = shadow.expected(i, "lr")
            if not isinstance(want, float):
                return []
            source = f"scheduler {type(sched).__name__}"
        elif sched is not None:
            try:
                want = float(sched.get_last_lr()[i])
            except (IndexError, AttributeError, TypeError, ValueError):
                return []
            source = f"scheduler {type(sched).__name__}"
        else:
            committed = self._committed(i).get("lr")
            want = committed if isinstance(committed, float) else base.get("lr")
            source = "config" if committed is not None else "constant (no scheduler)"
            if want is None:
                base["lr"] = lr
                return []
        if _close(lr, want, self.rel_tol):
            self._reported_lr.pop(i, None)
            return []
        if self._reported_lr.get(i) == lr:
            return []
        self._reported_lr[i] = lr
        return [Detection("TG-GRD-101", Severity.HIGH,
                          f"learning rate of param group {i} is {lr:.6g}, expected {want:.6g} "
                          f"({source}) at step {step}",
                          {"group": i, "key": "lr", "expected": want, "actual": lr,
                           "expected_from": source})]


class UpdateDirectionMonitor:
    """Sampled sign agreement between each weight change and the optimizer's direction.

    Cost per check is O(sample x tensors_per_check), independent of the model size: the sampled
    coordinates of each tensor are fixed once (a private generator, with replacement), the
    tensors rotate in fixed chunks, each chunk's weight sample is kept as one concatenated
    snapshot, and one reduction gives (agreeing, total) as a single 2-element device tensor that
    monitors.py reads without blocking the stream. Only when the optimizer's parameter count
    changes is the parameter list (and chunking) rebuilt.
    """

    def __init__(self, *, sample: int = 1024, tensors_per_check: int = 4,
                 min_agreement: float = 0.5, min_coords: int = 32) -> None:
        self.sample = sample
        self.tensors_per_check = max(1, tensors_per_check)
        self.min_agreement = min_agreement
        self.min_coords = min_coords
        self._idx: dict[int, Any] = {}
        #: (chunk index, step it was taken, concatenated float32 weight sample) or None
        self._prev_snap: tuple[int, int, Any] | None = None
        self._cursor = 0
        self._params: list[Any] = []
        self._chunks: list[list[Any]] = []
        #: id(param) -> its param group (stateless SGD: the sign of the update)
        self._group: dict[int, Mapping[str, Any]] = {}
        self._count = -1

    def expect_reset(self) -> None:
        """Weights were legitimately replaced (checkpoint load): drop the snapshots."""
        self._prev_snap = None

    def _indices(self, p: Any) -> Any:
        key = id(p)
        idx = self._idx.get(key)
        if idx is None or idx.device != p.device:
            import torch

            n = p.numel()
            # A private generator seeded by position: never touches the global RNG streams.
            # Runs of _RUN consecutive coordinates at random offsets (with replacement: O(sample),
            # unlike a permutation of n): the training step has just pushed the weights and the
            # optimizer state out of the caches, and 1,024 scattered reads are 1,024 cache misses
            # (~0.1 ms per tensor on a CPU); runs of 64 floats touch 16x fewer cache lines.
            g = torch.Generator().manual_seed(zlib.crc32(f"{len(self._idx)}:{n}".encode()))
            if n > self.sample:
                run = min(_RUN, self.sample)
                starts = torch.randint(n - run + 1, (-(-self.sample // run), 1), generator=g)
                idx = (starts + torch.arange(run)).reshape(-1)[: self.sample]
            else:
                idx = torch.arange(n)
            idx = self._idx[key] = idx.to(p.device)
        return idx

    def _sample(self, t: Any, idx: Any) -> Any:
        # index_select copies, so a snapshot is never a view of the live weights. A
        # non-contiguous tensor goes through torch.take (logical flat indexing, O(sample)) rather
        # than reshape(-1), which would copy the whole tensor.
        t = t.detach()
        if t.is_contiguous():
            return t.view(-1).index_select(0, idx)
        return t.take(idx)

    def _param_list(self, optimizer: Any) -> list[Any]:
        groups = optimizer.param_groups
        count = sum(len(g["params"]) for g in groups)  # O(groups), not O(parameters)
        if count != self._count:
            self._count = count
            self._params = [p for g in groups for p in g["params"] if p.requires_grad]
            self._group = {id(p): g for g in groups for p in g["params"]}
            per = self.tensors_per_check
            self._chunks = [self._params[i:i + per] for i in range(0, len(self._params), per)]
            self._prev_snap = None
            self._cursor = 0
        return self._params

    def _direction(self, p: Any, optimizer: Any) -> tuple[Any, float]:
        st = optimizer.state.get(p, {})
        d = st.get("exp_avg")
        if d is None:
            d = st.get("momentum_buffer")
        if d is not None:
            return d, 1.0
        # Stateless SGD: the update is -lr * grad, or +lr * grad when maximizing.
        group = self._group.get(id(p), {})
        return p.grad, -1.0 if group.get("maximize") else 1.0

    def _snapshot(self, chunk: list[Any]) -> Any:
        import torch

        parts = [self._sample(p, self._indices(p)) for p in chunk]
        dev = parts[0].device
        return torch.cat([t if t.device == dev else t.to(dev) for t in parts]).float()

    def check(self, step: int, optimizer: Any, names: Mapping[int, str] | None = None, *,
              snapshot: bool = True) -> tuple[list[Detection], Any]:
        """Sample now; returns ([], pending) where pending is judged by :meth:`judge` once its
        device values are on the host (monitors.py defers that on CUDA).

        The chunk whose snapshot was taken at ``step - 1`` is judged, then the rotation moves
        on and (with ``snapshot``, i.e. when the next call comes at ``step + 1``) the next chunk
        is sampled. Without a one-step-old snapshot only the current chunk is sampled, so with
        ``every = K`` the calls at steps nK - 1 and nK judge each chunk in turn.
        """
        if not self._param_list(optimizer):
            return [], None
        import torch

        nchunks = len(self._chunks)
        pending = None
        with torch.no_grad():
            prev, self._prev_snap = self._prev_snap, None
            if prev is not None and prev[1] == step - 1 and prev[0] < nchunks:
                c = prev[0]
                now = self._chunks[c]
                current = self._snapshot(now)
                dev = current.device
                dirs: list[Any] = []
                for p in now:
                    idx = self._indices(p)
                    d, sign = self._direction(p, optimizer)
                    if d is None or not hasattr(d, "shape") or d.shape != p.shape:
                        # no direction to compare with: zeros, which count for nothing
                        dirs.append(torch.zeros(idx.numel(), device=dev))
                        continue
                    dd = self._sample(d, idx)
                    dd = dd if dd.device == dev else dd.to(dev)
                    dirs.append(dd if sign > 0 else -dd)
                prod = (current - prev[2]) * torch.cat(dirs).float()
                counts = torch.stack([(prod < 0).sum(), (prod != 0).sum()])
                pending = (step, [names.get(id(p), "?") for p in now] if names else [],
                           counts[0], counts[1])
                self._cursor = (c + 1) % nchunks
                if not snapshot:
                    return [], pending
                if self._cursor == c:  # a single chunk: its sample now is the next snapshot
                    self._prev_snap = (c, step, current)
                    return [], pending
            c = self._cursor % nchunks
            self._prev_snap = (c, step, self._snapshot(self._chunks[c]))
        return [], pending

    def judge(self, pending: tuple[int, list[str], Any, Any]) -> list[Detection]:
        """Turn a pending (step, tensors, agreeing, total) into detections (values now on host)."""
        step, tensors, agree, total = pending
        total_i, agree_i = int(total), int(agree)
        if total_i < self.min_coords:
            return []
        frac = agree_i / total_i
        if frac >= self.min_agreement:
            return []
        return [Detection(
            "TG-GRD-102", Severity.CRITICAL,
            f"optimizer update at step {step} moved {100 * (1 - frac):.0f}% of sampled weights "
            "along, not against, the optimizer's descent direction (a flipped or forged update)",
            {"agreement": frac, "coordinates": total_i, "tensors": tensors})]
