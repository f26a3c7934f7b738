"""Training-framework callbacks that run the training monitors at every optimizer step.

PyTorch Lightning::

    import lightning.pytorch as pl
    from trainguard.guard.integrations.lightning import TrainguardCallback
    trainer = pl.Trainer(max_steps=100, callbacks=[TrainguardCallback()])

Hugging Face Trainer::

    from transformers import Trainer
    from trainguard.guard.integrations.hf import TrainguardTrainerCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[TrainguardTrainerCallback()])

Each module imports its framework only when it is imported itself. Both take ``emit`` (default:
the process's guard runtime when ``trainguard run`` or ``trainguard.guard.install`` set one up,
else stderr), a :class:`~trainguard.guard.monitors.MonitorConfig`, or a ready ``monitor``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainguard.core.events import Event, StderrSink


def default_emit() -> Callable[[Event], None]:
    """The installed guard runtime's event entry point, or a stderr sink (detections only)."""
    try:
        from trainguard import guard

        current = getattr(guard, "current", None)
        runtime: Any = current() if callable(current) else None
        emit = getattr(runtime, "emit_event", None)
        if callable(emit):
            return emit  # type: ignore[no-any-return]
    except Exception:  # noqa: S110 - no runtime installed (or it failed): use stderr
        pass
    return StderrSink().emit
