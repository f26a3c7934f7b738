"""The runtime guard: catch sabotage inside training processes, with attribution.

Under ``trainguard run`` the guard is installed in every Python process of the job before the
user's code runs. In a script (or a notebook) it can be installed by hand::

    import torch
    from trainguard import guard

    guard.install(mode="monitor", events="guard-events.jsonl")
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(model, opt, loss)          # monitors + tripwire re-check every K steps
    torch.save(model.state_dict(), "model.pt")
    guard.checkpoint("model.pt")             # tripwires; artifact.saved with its sha256
    print(guard.report()["detections"])      # {} for a clean run

What it installs: a PEP 578 audit hook (:mod:`.audithook`), the load gate for
torch/numpy/joblib/pickle loads (:mod:`.loaders`), tripwires on training-critical callables
(:mod:`.tripwires`) and the training monitors (:mod:`.monitors`, when present). See
docs/guard.md.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from trainguard.core.events import EventKind
from trainguard.guard.config import GuardConfig, load_guard_config
from trainguard.guard.runtime import GUARD_STARTED, GuardRuntime, GuardStopped

__all__ = ["GuardRuntime", "GuardStopped", "checkpoint", "current", "install", "report", "step"]

_CURRENT: GuardRuntime | None = None


class _Parts:
    """The installed pieces of the guard of this process."""

    audit: Any = None
    gate: Any = None
    tripwires: Any = None
    monitor: Any = None
    monitor_failed = False


_PARTS = _Parts()


def current() -> GuardRuntime | None:
    """The guard installed in this process, or None."""
    return _CURRENT


def install(mode: str | None = None, *, config: GuardConfig | Path | None = None,
            events: str | os.PathLike[str] | None = None, run_dir: Path | None = None,
            stderr: bool = True, ledger: str | None = None) -> GuardRuntime:
    """Install the guard in this process (idempotent: a second call returns the first guard).

    ``config``: a :class:`GuardConfig`, or a trainguard.toml path (default: the one that
    applies here); ``mode`` overrides its mode. Events go to ``events`` (a JSONL file) or, under
    ``trainguard run``, to a file per process in ``run_dir``; detections also to stderr; with
    ``ledger`` (a path or URL for :func:`trainguard.ledger.open_ledger`) also to the ledger,
    as they happen.
    """
    global _CURRENT  # noqa: PLW0603 - one guard per process, by design
    if _CURRENT is not None:
        return _CURRENT
    if not isinstance(config, GuardConfig):
        config = load_guard_config(config, mode=mode)
    elif mode is not None:
        from dataclasses import replace

        config = replace(config, mode=mode)
    factories = [_ledger_sink_factory(ledger)] if ledger else []
    rt = GuardRuntime(config, run_dir=run_dir, events_path=Path(events) if events else None,
                      stderr=stderr, sink_factories=factories)
    _CURRENT = rt
    rt.protect("install", _install_parts, rt)
    atexit.register(_at_exit)
    rt.emit(GUARD_STARTED, f"pid:{os.getpid()}",
            {"mode": config.mode, "argv": [str(a)[:200] for a in sys.argv[:20]],
             "executable": sys.executable,
             "audit": config.audit, "load_gate": config.load_gate,
             "tripwires": config.tripwires, "check_every": config.check_every})
    return rt


def _ledger_sink_factory(url: str) -> Any:
    def make() -> Any:
        if url.startswith(("http://", "https://")):  # `trainguard ledger serve` (clusters)
            from trainguard.ledger.client import HttpSink

            return HttpSink(url)
        from trainguard.ledger import open_ledger
        from trainguard.ledger.sink import LedgerSink

        return LedgerSink(open_ledger(url))

    return make


def _install_parts(rt: GuardRuntime) -> None:
    cfg = rt.config
    callbacks: dict[str, Any] = {}
    if cfg.tripwires:
        from trainguard.guard.tripwires import Tripwires

        _PARTS.tripwires = Tripwires(rt)
        import random  # noqa: F401 - wrapped and snapshotted now, before user code

        rt.protect("tripwire-random", _framework_ready, rt, "random")
    if cfg.load_gate:
        from trainguard.guard.loaders import LoadGate

        gate = _PARTS.gate = LoadGate(rt)
        gate.install_pickle()
    if cfg.audit or cfg.load_gate:
        from trainguard.guard.audithook import AuditHook

        hook = _PARTS.audit = AuditHook(rt)
        if not cfg.audit:  # only the load gate
            hook.handlers = {"pickle.find_class": hook.handlers["pickle.find_class"]}
        if cfg.load_gate:
            hook.find_class = _PARTS.gate.on_find_class
        hook.install()
    for name in ("torch", "numpy", "numpy.random", "joblib"):
        callbacks[name] = _make_callback(rt, name)
    from trainguard.guard.imports import PostImportHook

    PostImportHook(callbacks, rt.error).install()


def _make_callback(rt: GuardRuntime, name: str) -> Any:
    def callback(module: ModuleType) -> None:
        rt.protect(f"ready:{name}", _framework_ready, rt, name, module)

    return callback


def _framework_ready(rt: GuardRuntime, name: str, module: ModuleType | None = None) -> None:
    """A framework finished importing: wrap its loaders and seeds, take the baseline."""
    gate, tw, audit = _PARTS.gate, _PARTS.tripwires, _PARTS.audit
    if audit is not None and name == "torch" and rt.config.audit and module is not None:
        audit.wrap_save(module)
    if gate is not None and module is not None:
        if name == "torch":
            gate.install_torch(module)
        elif name == "numpy":
            gate.install_numpy(module)
        elif name == "joblib":
            gate.install_joblib(module)
    if tw is not None:
        tw.wrap_seeds()
        tw.snapshot("import")


def step(model: Any = None, optimizer: Any = None, loss: Any = None) -> None:
    """Call once per training step (after ``optimizer.step()``).

    Marks training as started (later reseeding is TG-GRD-012), runs the training monitors and,
    every ``check_every`` steps, the tripwires. In enforce mode a detection raises
    :class:`GuardStopped` here. A no-op when no guard is installed.
    """
    rt = _CURRENT
    if rt is None or not rt.active:
        return
    rt.steps += 1
    first = not rt.training_started
    rt.training_started = True
    tw = _PARTS.tripwires
    if tw is not None and (first or rt.steps % rt.config.check_every == 0):
        rt.protect("tripwires", tw.check, f"step {rt.steps}")
        if optimizer is not None:
            rt.protect("tripwires-optimizer", tw.check_optimizer, optimizer, f"step {rt.steps}")
    monitor = _monitor(rt)
    if monitor is not None:
        try:
            monitor.step(model, optimizer, loss)
        except GuardStopped:
            raise
        except Exception as exc:
            if _is_violation(exc):  # enforce mode: the monitors stop the job themselves
                rt.pending_stop = None
                raise
            rt.error("monitors", exc)
    if rt.pending_stop is not None:
        stop, rt.pending_stop = rt.pending_stop, None
        raise stop


def _is_violation(exc: Exception) -> bool:
    try:
        from trainguard.guard.detection import MonitorViolation
    except ImportError:
        return False
    return isinstance(exc, MonitorViolation)


def monitor_config(config: GuardConfig) -> Any:
    """The training monitors' config from ``[guard.monitors]`` with the guard's mode
    (ConfigError for a bad table; None when the monitors are not installed)."""
    try:
        from trainguard.guard import monitors
    except ImportError:
        return None
    config_type = getattr(monitors, "MonitorConfig", None)
    if config_type is None or not hasattr(config_type, "from_mapping"):
        return dict(config.monitors)
    table = dict(config.monitors)
    table.setdefault("mode", config.mode)
    if "enforce_min_severity" not in table:
        table["enforce_min_severity"] = config.enforce_at.label
    return config_type.from_mapping(table)


def _monitor(rt: GuardRuntime) -> Any:
    if _PARTS.monitor is not None or _PARTS.monitor_failed:
        return _PARTS.monitor
    try:
        from trainguard.guard import monitors
    except ImportError:
        _PARTS.monitor_failed = True  # the monitors are optional (guard/monitors.py)
        return None
    try:
        _PARTS.monitor = monitors.TrainingMonitor(_metric_emitter(rt),
                                                  monitor_config(rt.config))
    except Exception as exc:
        _PARTS.monitor_failed = True
        rt.error("monitors-init", exc)
    return _PARTS.monitor


def _metric_emitter(rt: GuardRuntime) -> Any:
    """The monitors' ``emit``: a ``guard.metric`` whose loss was not finite is written with
    ``"nan"``, ``"inf"`` or ``"-inf"`` (canonical JSON cannot spell them; ``null`` would read
    as "no loss known": docs/guard-monitors.md, docs/investigate.md)."""
    def emit(event: Any) -> None:
        if event.kind == EventKind.GUARD_METRIC and event.details.get("loss") is None:
            event = rt.protect("metric-loss", _spell_loss, event) or event
        rt.emit_event(event)

    return emit


def _spell_loss(event: Any) -> Any:
    import math

    from trainguard.core.events import Event

    last = getattr(_PARTS.monitor, "_last_loss", None)
    try:
        value = float(last) if last is not None else None
    except (TypeError, ValueError):
        value = None
    if value is not None and not math.isfinite(value):
        word = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return Event(event.kind, event.subject, {**dict(event.details), "loss": word},
                     event.identity, event.time, event.severity, event.rule_id)
    return event


def checkpoint(path: str | os.PathLike[str] | None = None) -> None:
    """Call when a checkpoint is written: tripwire check now, and an ``artifact.saved`` event.

    The event's subject is ``sha256:<hex>`` of the saved file (a checkpoint must be identified
    by its bytes for lineage: docs/investigate.md), with details ``path`` (absolute), ``run``
    (the job id), ``inputs`` (the digests this process loaded through the load gate), ``size``
    and ``step``. A directory (``save_pretrained``) gets one event per regular file in it (at
    most :data:`MAX_CHECKPOINT_FILES`). Hashing reads the file once, at checkpoint time only.
    """
    rt = _CURRENT
    if rt is None or not rt.active:
        return
    tw = _PARTS.tripwires
    if tw is not None:
        rt.protect("tripwires", tw.check, "checkpoint")
    if path is not None:
        rt.protect("checkpoint", _record_checkpoint, rt, Path(path))
    if rt.pending_stop is not None:
        stop, rt.pending_stop = rt.pending_stop, None
        raise stop


#: files of a checkpoint directory recorded by :func:`checkpoint`
MAX_CHECKPOINT_FILES = 1000


def _record_checkpoint(rt: GuardRuntime, path: Path) -> None:
    from trainguard.core.identity import Identity

    root = path.absolute()
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        files = files[:MAX_CHECKPOINT_FILES]
    else:
        files = [root]
    run = Identity.current(with_git=False).job
    inputs = list(rt.loaded)
    for f in files:
        digest = rt.file_digest(str(f))
        try:
            size: int | None = f.stat().st_size
        except OSError:
            size = None
        details: dict[str, Any] = {"path": str(f), "size": size, "step": rt.steps,
                                   "inputs": [d for d in inputs if d != digest]}
        if run:
            details["run"] = run
        if digest is None:
            details["message"] = "not a readable regular file: no digest"
        else:
            details["digest"] = digest
        rt.emit(EventKind.ARTIFACT_SAVED, digest or str(f), details)


def report() -> dict[str, Any]:
    """This process's guard counts (``{}`` when no guard is installed)."""
    rt = _CURRENT
    if rt is None:
        return {}
    return rt.summary()


def _at_exit() -> None:
    rt = _CURRENT
    if rt is None or not rt.active:
        return
    tw = _PARTS.tripwires
    if tw is not None:
        try:
            tw.check("exit")
        except GuardStopped:
            pass  # exiting anyway; the detection is recorded
        except Exception as exc:
            rt.error("tripwires-exit", exc)
    rt.close()
