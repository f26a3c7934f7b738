"""Runs: what one run was (code, environment, config, inputs, detections, loss curve), the choice
of a baseline run, and the difference between two runs.

Run facts come from the run.started event's details (``git_commit``, ``env_digest``,
``config``, ``config_digest``, ``hyperparameters``, ``lineage``), falling back to the identity of
the run's events (Identity.git_commit, Identity.env_digest), and from guard.metric ``lr``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainguard.core.events import Event, EventKind
from trainguard.core.identity import Identity
from trainguard.investigate.timeline import MetricPoint, clip, is_detection, metric_points
from trainguard.ledger.lineage import ArtifactEvent, Lineage, details_str

#: flattened config keys kept per run (a hostile config must not blow up the diff)
MAX_CONFIG_KEYS = 2000
MAX_CONFIG_DEPTH = 8
#: configuration keys that are hyperparameters wherever they appear (last dotted component)
HYPER_KEYS = frozenset({
    "lr", "learning_rate", "betas", "beta1", "beta2", "eps", "epsilon", "weight_decay",
    "momentum", "dampening", "nesterov", "batch_size", "global_batch_size", "micro_batch_size",
    "gradient_accumulation_steps", "warmup_steps", "max_steps", "epochs", "seed", "dropout",
    "clip_grad_norm", "max_grad_norm", "grad_clip", "label_smoothing", "optimizer", "scheduler",
    "lr_scheduler", "lr_schedule", "min_lr", "max_lr", "precision", "dtype"})


def flatten(value: Any, prefix: str = "", out: dict[str, str] | None = None,
            depth: int = 0) -> dict[str, str]:
    """Nested config -> ``{"a.b": "<canonical JSON of the leaf>"}`` (bounded in keys and depth)."""
    out = {} if out is None else out
    if isinstance(value, Mapping) and depth < MAX_CONFIG_DEPTH:
        for k in sorted(value, key=str):
            if len(out) >= MAX_CONFIG_KEYS:
                break
            flatten(value[k], f"{prefix}.{clip(str(k), 80)}" if prefix else clip(str(k), 80),
                    out, depth + 1)
    elif len(out) < MAX_CONFIG_KEYS:
        try:
            text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)
        out[prefix or "(value)"] = clip(text, 200)
    return out


@dataclass(frozen=True)
class RunProfile:
    """What is known about one run."""

    run: str
    #: identity of run.started, else of the run's first event
    identity: Identity | None
    users: tuple[str, ...]
    started: float
    finished: float | None
    #: source order of the first event of the run
    first_seq: int
    git_commit: str | None
    env_digest: str | None
    config_digest: str | None
    lineage_key: str | None
    config: Mapping[str, str]
    hyperparameters: Mapping[str, str]
    loads: tuple[ArtifactEvent, ...]
    produced: tuple[ArtifactEvent, ...]
    detections: tuple[tuple[int, Event], ...]
    metrics: tuple[MetricPoint, ...]
    #: a run.started event was recorded (a "run" seen only through artifact events is not one)
    declared: bool = False
    has_metrics: bool = False
    events: tuple[tuple[int, Event], ...] = field(repr=False, default=())

    @property
    def clean(self) -> bool:
        return not self.detections

    def who(self) -> str:
        return self.identity.short() if self.identity is not None else "unknown"

    def lr_by_step(self) -> dict[int, float]:
        return {p.step: p.lr for p in self.metrics if p.lr is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run, "who": self.who(),
            "identity": self.identity.to_dict() if self.identity else None,
            "users": list(self.users), "started": self.started, "finished": self.finished,
            "git_commit": self.git_commit, "env_digest": self.env_digest,
            "config_digest": self.config_digest, "lineage": self.lineage_key,
            "config": dict(self.config), "hyperparameters": dict(self.hyperparameters),
            "loaded": [{"path": a.path, "digest": a.digest, "role": a.role, "seq": a.seq}
                       for a in self.loads],
            "produced": [{"path": a.path, "digest": a.digest, "seq": a.seq}
                         for a in self.produced],
            "detections": len(self.detections), "metric_points": len(self.metrics),
        }


def _most_common(values: list[str | None]) -> str | None:
    counted = Counter(v for v in values if v)
    if not counted:
        return None
    best = max(counted.values())
    return min(v for v, c in counted.items() if c == best)  # deterministic on ties


def profile_run(run: str, events: Sequence[tuple[int, Event]], lineage: Lineage, *,
                light: bool = False) -> RunProfile:
    """Profile ``run`` from its events (``(seq, event)`` pairs, source order). ``light`` skips
    the loss curve (enough to choose a baseline; :attr:`RunProfile.has_metrics` still says
    whether there is one)."""
    started_ev = next((ev for _, ev in events if ev.kind == EventKind.RUN_STARTED), None)
    finished_ev = next((ev for _, ev in reversed(events) if ev.kind == EventKind.RUN_FINISHED),
                       None)
    d: Mapping[str, Any] = started_ev.details if started_ev is not None else {}
    idents = [ev.identity for _, ev in events if ev.identity is not None]
    identity = started_ev.identity if started_ev is not None and started_ev.identity else (
        idents[0] if idents else None)
    git = details_str(d, "git_commit") or _most_common([i.git_commit for i in idents])
    env = details_str(d, "env_digest") or _most_common([i.env_digest for i in idents])
    config = flatten(d.get("config")) if isinstance(d.get("config"), Mapping) else {}
    hyper = flatten(d.get("hyperparameters")) if isinstance(d.get("hyperparameters"),
                                                            Mapping) else {}
    for key, value in config.items():
        if key.rsplit(".", 1)[-1] in HYPER_KEYS:
            hyper.setdefault(key, value)
    return RunProfile(
        run=run, identity=identity,
        users=tuple(dict.fromkeys(i.user for i in idents)),
        started=started_ev.time if started_ev is not None else min(ev.time for _, ev in events),
        finished=finished_ev.time if finished_ev is not None else None,
        first_seq=events[0][0],
        git_commit=git, env_digest=env,
        config_digest=details_str(d, "config_digest"),
        lineage_key=details_str(d, "lineage") or details_str(d, "experiment")
        or details_str(d, "project"),
        config=config, hyperparameters=hyper,
        loads=tuple(lineage.loads_by_run(run)), produced=tuple(lineage.produced_by_run(run)),
        detections=tuple((s, ev) for s, ev in events if is_detection(ev)),
        metrics=() if light else tuple(metric_points(events)),
        has_metrics=any(ev.kind == EventKind.GUARD_METRIC for _, ev in events),
        declared=started_ev is not None,
        events=tuple(events))


def match_tier(candidate: RunProfile, target: RunProfile) -> int:
    """How closely ``candidate`` shares the target's code/config lineage (0 = unrelated):
    3 same declared lineage (run.started ``lineage``/``experiment``/``project``), 2 same config
    digest or git commit, 1 loads an artifact from the same path."""
    if candidate.lineage_key and candidate.lineage_key == target.lineage_key:
        return 3
    if (candidate.config_digest and candidate.config_digest == target.config_digest) or (
            candidate.git_commit and candidate.git_commit == target.git_commit):
        return 2
    paths = {a.path for a in target.loads if a.path}
    if any(a.path in paths for a in candidate.loads):
        return 1
    return 0


def pick_baseline(target: RunProfile, runs: Sequence[RunProfile]) -> tuple[RunProfile | None,
                                                                          str]:
    """The last good run before ``target``: a run (run.started or loss samples recorded) that
    started earlier, with no detections, sharing its lineage (highest :func:`match_tier` wins,
    then the latest start, then the run id). Returns the run and why it was chosen (or why none
    was)."""
    scored = []
    for r in runs:
        if r.run == target.run or not r.clean or not (r.declared or r.has_metrics):
            continue
        if (r.started, r.first_seq) >= (target.started, target.first_seq):
            continue
        tier = match_tier(r, target)
        if tier:
            scored.append((tier, r.started, r.first_seq, r.run, r))
    if not scored:
        return None, "no earlier run without detections shares its lineage"
    tier, _, _, _, best = max(scored, key=lambda t: t[:4])
    why = {3: "same declared lineage", 2: "same config digest or git commit",
           1: "loads artifacts from the same paths"}[tier]
    return best, f"auto: latest earlier run without detections ({why})"


@dataclass(frozen=True)
class Difference:
    """One way the bad run differs from the baseline."""

    #: code | environment | config | hyperparameters | lr | inputs | identity | guard
    area: str
    key: str
    baseline: str | None
    bad: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"area": self.area, "key": self.key, "baseline": self.baseline, "bad": self.bad}


def input_key(a: ArtifactEvent) -> str:
    """How loads are matched between runs: by path, else by digest."""
    return a.path or a.digest or f"#{a.seq}"


def _loads_by_key(p: RunProfile) -> dict[str, ArtifactEvent]:
    out: dict[str, ArtifactEvent] = {}
    for a in p.loads:
        out.setdefault(input_key(a), a)
    return out


def diff_runs(base: RunProfile, bad: RunProfile, lineage: Lineage) -> list[Difference]:
    """Differences in code, environment, config, hyperparameters, observed lr, inputs (and their
    producers), launching user and guard detections, in that order."""
    out: list[Difference] = []

    def add(area: str, key: str, a: str | None, b: str | None) -> None:
        if a != b:
            out.append(Difference(area, key, a, b))

    add("code", "git_commit", base.git_commit, bad.git_commit)
    add("environment", "env_digest", base.env_digest, bad.env_digest)
    add("config", "config_digest", base.config_digest, bad.config_digest)
    for area, old, new in (("config", base.config, bad.config),
                           ("hyperparameters", base.hyperparameters, bad.hyperparameters)):
        for key in sorted(set(old) | set(new)):
            if area == "config" and key.rsplit(".", 1)[-1] in HYPER_KEYS:
                continue  # reported once, as a hyperparameter
            add(area, key, old.get(key), new.get(key))
    blr, xlr = base.lr_by_step(), bad.lr_by_step()
    for step in sorted(set(blr) & set(xlr)):
        if abs(blr[step] - xlr[step]) > 1e-12 + 1e-6 * abs(blr[step]):
            add("lr", f"step {step}", f"{blr[step]:.6g}", f"{xlr[step]:.6g}")
            break
    old_in, new_in = _loads_by_key(base), _loads_by_key(bad)
    for key in sorted(set(old_in) | set(new_in)):
        a, b = old_in.get(key), new_in.get(key)
        add("inputs", key, _describe_input(a, lineage), _describe_input(b, lineage))
    add("identity", "user", base.identity.user if base.identity else None,
        bad.identity.user if bad.identity else None)
    old_rules = Counter(ev.rule_id or ev.kind for _, ev in base.detections)
    new_rules = Counter(ev.rule_id or ev.kind for _, ev in bad.detections)
    for rule in sorted(set(old_rules) | set(new_rules)):
        add("guard", clip(rule, 60), str(old_rules.get(rule, 0)), str(new_rules.get(rule, 0)))
    return out


def _describe_input(a: ArtifactEvent | None, lineage: Lineage) -> str | None:
    if a is None:
        return None
    if a.digest is None:
        return "(no digest recorded)"
    producers = [p.who for p in lineage.producers_of(a.digest)]
    by = f" by {', '.join(dict.fromkeys(producers))}" if producers else " (producer unknown)"
    return f"{a.digest[:19]}…{by}"
