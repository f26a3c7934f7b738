"""Cross-rank fingerprints: data-parallel replicas must hold identical weights and optimizer state.

Every ``every`` steps each rank computes a fingerprint of each parameter (and of each optimizer
state tensor shaped like it): two random projections over the *whole* tensor, computed on the
tensor's own device. The flattened tensor is viewed as rows of ``cap`` elements and multiplied by
a fixed pseudo-random ``cap x 2`` matrix, and the row results are combined with fixed random row
weights, so every element counts, the cost is one pass over memory, and the random data kept is at
most ``cap x 2`` plus one weight per row. The projection vectors come from private generators
seeded by the tensor's name and size (identical on every rank; the global RNG is never touched).

The fingerprints, plus each rank's step arrival times and whether it caught something itself, go to
every rank in one ``all_gather`` (gloo on CPU, NCCL on GPU). Replicas of a DDP job run the same
kernels on the same values, so fingerprints are compared exactly by default (``rtol``). Ranks that
disagree with the majority are named (rule TG-GRD-105); with two ranks there is no majority, and
the rank that already caught something itself (a failed load check, a flipped update) is named,
else both are named and ``ambiguous`` is set.

The same gather names a slow rank (TG-GRD-110). Step *durations* cannot: in DDP the fast ranks
wait for the slow one inside the gradient all-reduce, so every rank's step takes as long. Arrival
*times* can: each rank records the wall-clock time it reaches the end of each step, and the rank
that falls behind the first arrival by a jump of more than ``slow_min_excess_s`` (and
``slow_factor`` typical step durations) at some step is the one the others waited for. Jumps, not
lags, are compared, so a constant clock offset between hosts cancels out.

Megatron-LM hashes weights across replicas in the same spirit. A deterministic sabotage that hits
every replica equally is invisible to this check (the update-direction and hyperparameter checks
are there for that).
"""

from __future__ import annotations

import statistics
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trainguard.core.findings import Severity
from trainguard.guard.detection import Detection

#: header fields per rank in the gathered vector: number of tensors, number of arrival times,
#: whether this rank already caught something itself; then the arrival times, then fingerprints
_HEADER = ("tensors", "arrivals", "suspect")


@dataclass(frozen=True)
class CrossRankConfig:
    #: elements per projection row (the size of the random projection vectors)
    cap: int = 4096
    #: relative tolerance for equal fingerprints (0 = exact; raise for heterogeneous hardware)
    rtol: float = 0.0
    #: also fingerprint optimizer state tensors shaped like their parameter (off by default: it
    #: triples the cost with AdamW, and diverging state shows in the weights one step later)
    optimizer_state: bool = False
    #: whose weights must be equal: None = auto (the model is wrapped in DistributedDataParallel:
    #: its process group), True = every rank holds a full replica (plain data parallelism
    #: without a DDP wrapper, e.g. the HF Trainer's unwrapped model), False = never compare.
    #: Sharded or model-parallel jobs (FSDP, ZeRO, tensor/pipeline parallel) hold different
    #: tensors per rank by design: auto skips them; only the step-time check runs there.
    replicated: bool | None = None
    #: slow rank: fell behind by ``slow_factor`` typical steps and ``slow_min_excess_s`` at a step
    slow_factor: float = 3.0
    slow_min_excess_s: float = 0.1


class Fingerprinter:
    """Random-projection fingerprints of named tensors, with cached projection data per device."""

    def __init__(self, cap: int = 4096) -> None:
        self.cap = cap
        # (name, numel, device) -> (rows, cols, row weights, cols x 2 matrix, tail matrix)
        self._cache: dict[tuple[str, int, Any], tuple[int, int, Any, Any, Any]] = {}

    def _plan(self, name: str, n: int, device: Any) -> tuple[int, int, Any, Any, Any]:
        key = (name, n, device)  # torch.device hashes cheaply (no str() per call)
        hit = self._cache.get(key)
        if hit is None:
            import torch

            g = torch.Generator().manual_seed(zlib.crc32(f"{name}:{n}".encode()))
            cols = min(n, self.cap)
            rows = max(1, n // cols)
            mat = torch.randn(cols, 2, generator=g, dtype=torch.float32).to(device)
            roww = torch.randn(rows, generator=g, dtype=torch.float32).to(device)
            tail = n - rows * cols
            hit = self._cache[key] = (rows, cols, roww, mat, mat[:tail] if tail else None)
        return hit

    def tensor(self, name: str, t: Any) -> Any:
        """A 2-element float32 tensor on ``t``'s device."""
        # bf16/fp16/int state -> float32 on its device (float32 is returned as is, no copy)
        flat = t.detach().reshape(-1).float()
        n = flat.numel()
        if n == 0:
            return flat.new_zeros(2)
        rows, cols, roww, mat, tail = self._plan(name, n, flat.device)
        # (roww @ body) @ mat == roww @ (body @ mat), but one memory-bound matrix-vector pass
        # instead of a skinny matrix product: ~10x faster on CPU. The pass over the tensor is
        # the floor of this check (~1.6 ms per 10 MB on one CPU core; microseconds on a GPU).
        body = flat if tail is None else flat[: rows * cols]
        fp = (roww @ body.view(rows, cols)) @ mat
        if tail is not None:
            fp = fp + flat[rows * cols:] @ tail
        return fp

    def model(self, named: Iterable[tuple[str, Any]]) -> tuple[list[str], Any]:
        """Names and one vector of ``2 * len(names)`` fingerprints, on the tensors' device."""
        import torch

        names: list[str] = []
        parts: list[Any] = []
        for name, t in named:
            names.append(name)
            parts.append(self.tensor(name, t))
        if not parts:
            return names, torch.zeros(0, dtype=torch.float64)
        dev = parts[0].device
        return names, torch.cat([p if p.device == dev else p.to(dev) for p in parts])


def named_state(model: Any, optimizer: Any | None, with_optimizer: bool) -> list[tuple[str, Any]]:
    """(name, tensor) for parameters and buffers, and optimizer state shaped like a parameter."""
    out: list[tuple[str, Any]] = []
    pname: dict[int, str] = {}
    for name, p in model.named_parameters():
        out.append((name, p))
        pname[id(p)] = name
    for name, b in model.named_buffers():
        if b.is_floating_point():
            out.append((f"buffer:{name}", b))
    if with_optimizer and optimizer is not None:
        for p, st in optimizer.state.items():
            owner = pname.get(id(p))
            if owner is None:
                continue
            for key in sorted(st):
                v = st[key]
                if hasattr(v, "shape") and v.shape == p.shape:
                    out.append((f"optim:{owner}:{key}", v))
    return out


def _same(a: float, b: float, rtol: float) -> bool:
    return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))


def group_ranks(rows: Sequence[Sequence[float]], rtol: float) -> list[list[int]]:
    """Partition ranks into groups of equal fingerprints (within ``rtol``), largest first."""
    groups: list[list[int]] = []
    for r, row in enumerate(rows):
        for grp in groups:
            ref = rows[grp[0]]
            if len(ref) == len(row) and all(_same(a, b, rtol)
                                            for a, b in zip(ref, row, strict=True)):
                grp.append(r)
                break
        else:
            groups.append([r])
    groups.sort(key=lambda g: (-len(g), g[0]))
    return groups


def divergent_ranks(rows: Sequence[Sequence[float]], load_failed: Sequence[bool],
                    rtol: float) -> tuple[list[int], bool]:
    """Ranks that disagree with the majority, and whether the verdict is ambiguous."""
    groups = group_ranks(rows, rtol)
    if len(groups) <= 1:
        return [], False
    if len(groups[0]) > len(groups[1]):
        return sorted(r for g in groups[1:] for r in g), False
    # A tie (two ranks, or two equal camps): prefer ranks whose own load check failed.
    failed = [r for r in range(len(rows)) if load_failed[r]]
    if failed and len(failed) < len(rows):
        return failed, False
    return sorted(r for g in groups for r in g), True


def differing_tensors(names: Sequence[str], rows: Sequence[Sequence[float]], bad: Sequence[int],
                      good: Sequence[int], *, rtol: float, limit: int = 8) -> list[str]:
    """Names of tensors whose fingerprints differ between a bad rank and a good one."""
    if not bad or not good:
        return []
    a, b = rows[bad[0]], rows[good[0]]
    out: list[str] = []
    for i, name in enumerate(names):
        x, y = a[2 * i:2 * i + 2], b[2 * i:2 * i + 2]
        if not all(_same(p, q, rtol) for p, q in zip(x, y, strict=False)):
            out.append(name)
            if len(out) >= limit:
                break
    return out


class CrossRankChecker:
    """Gathers fingerprints and timing across ranks; every rank reaches the same verdict."""

    def __init__(self, config: CrossRankConfig | None = None) -> None:
        self.config = config or CrossRankConfig()
        self.fp = Fingerprinter(self.config.cap)
        self._last_lag: list[float] | None = None
        self._last_verdict: tuple[int, ...] = ()

    def check(self, step: int, model: Any, optimizer: Any | None, *, arrivals: Sequence[float],
              suspect: bool, replicas: bool = True, group: Any = None) -> list[Detection]:
        """Collective over ``group`` (default: the world): every member must call it at the same
        step. With ``replicas=False`` only step times are gathered (no fingerprints)."""
        import torch
        import torch.distributed as dist

        cfg = self.config
        names: list[str] = []
        fps = torch.zeros(0, dtype=torch.float64)
        if replicas:
            names, fps = self.fp.model(named_state(model, optimizer, cfg.optimizer_state))
        device = fps.device
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        head = torch.tensor([float(len(names)), float(len(arrivals)), float(suspect),
                             *arrivals], dtype=torch.float64, device=device)
        mine = torch.cat([head, fps.to(device=device, dtype=torch.float64)])
        world = dist.get_world_size(group)
        # Lengths first, so ranks whose models differ in structure still gather without a hang.
        size = torch.tensor([mine.numel()], dtype=torch.int64, device=device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=group)
        # Two host reads per check (not one per rank): this collective runs every ``every``
        # steps and its verdict needs the values, so it is the one place the guard waits on
        # the device stream (NCCL); the per-step checks never do (monitors.py, _Deferred).
        lengths = [int(x) for x in torch.cat(sizes).tolist()]
        padded = torch.full((max(lengths),), float("nan"), dtype=torch.float64, device=device)
        padded[: mine.numel()] = mine
        bufs = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(bufs, padded, group=group)
        table = torch.stack(bufs).cpu().tolist()
        gathered = [row[:n] for row, n in zip(table, lengths, strict=True)]
        ranks = None
        if group is not None and group is not dist.group.WORLD:
            ranks = [dist.get_global_rank(group, i) for i in range(world)]
        return self.judge(step, names, gathered, ranks=ranks)

    def judge(self, step: int, names: Sequence[str], gathered: Sequence[Sequence[float]], *,
              ranks: Sequence[int] | None = None) -> list[Detection]:
        """Verdicts from every rank's gathered vector (pure: unit-testable without processes).

        ``ranks`` maps positions in a sub-group to global ranks (the names events use).
        """
        out = self._judge(step, names, gathered)
        if ranks is None:
            return out
        glob = list(ranks)
        fixed = []
        for d in out:
            det = dict(d.details)
            if "divergent_ranks" in det:
                det["divergent_ranks"] = [glob[r] for r in det["divergent_ranks"]]
            if "slow_rank" in det:
                det["slow_rank"] = glob[det["slow_rank"]]
            det["group_ranks"] = glob
            fixed.append(Detection(d.rule_id, d.severity, d.message, det))
        return fixed

    def _judge(self, step: int, names: Sequence[str], gathered: Sequence[Sequence[float]]
               ) -> list[Detection]:
        cfg = self.config
        h = len(_HEADER)
        narr = [int(g[1]) for g in gathered]
        rows = [list(g[h + n:]) for g, n in zip(gathered, narr, strict=True)]
        suspects = [bool(g[2]) for g in gathered]
        out: list[Detection] = []
        bad, ambiguous = divergent_ranks(rows, suspects, cfg.rtol)
        # One detection per divergence (the same ranks stay divergent until re-synchronised).
        verdict = tuple(bad)
        repeated = verdict == self._last_verdict
        self._last_verdict = verdict
        if bad and not repeated:
            good = [r for r in range(len(rows)) if r not in bad] or [
                r for r in range(len(rows)) if r != bad[0]]
            tensors = differing_tensors(names, rows, bad, good, rtol=cfg.rtol)
            who = ", ".join(str(r) for r in bad)
            out.append(Detection(
                "TG-GRD-105", Severity.CRITICAL,
                (f"weights or optimizer state differ between ranks {who} at step {step}"
                 if ambiguous else
                 f"rank {who} holds weights or optimizer state that differ from the other ranks "
                 f"at step {step}"),
                {"divergent_ranks": bad, "ambiguous": ambiguous, "tensors": tensors,
                 "world_size": len(rows)}))
        if len(set(narr)) == 1 and narr[0] > 0 and len(gathered) >= 2:
            out += self._slow(step, [list(g[h:h + narr[0]]) for g in gathered])
        return out

    def _slow(self, step: int, arrivals: list[list[float]]) -> list[Detection]:
        cfg = self.config
        world, n = len(arrivals), len(arrivals[0])
        lags = [[arrivals[r][j] - min(a[j] for a in arrivals) for j in range(n)]
                for r in range(world)]
        durations = [arrivals[r][j] - arrivals[r][j - 1] for r in range(world)
                     for j in range(1, n)]
        typical = statistics.median(durations) if durations else 0.0
        prev = self._last_lag if self._last_lag is not None and len(self._last_lag) == world \
            else [lag[0] for lag in lags]
        self._last_lag = [lag[-1] for lag in lags]
        out: list[Detection] = []
        for r in range(world):
            series = [prev[r], *lags[r]]
            jumps = [series[j + 1] - series[j] for j in range(n)]
            j = max(range(n), key=lambda i: jumps[i])
            jump = jumps[j]
            if jump > cfg.slow_min_excess_s and jump > cfg.slow_factor * typical:
                at = step - n + 1 + j
                out.append(Detection(
                    "TG-GRD-110", Severity.MEDIUM,
                    f"rank {r} is slow: it reached the end of step {at} {jump:.3f}s behind the "
                    f"other ranks (typical step {typical:.3f}s)",
                    {"slow_rank": r, "slow_step": at, "behind_s": jump,
                     "typical_step_s": typical, "step": at}))
        return out
