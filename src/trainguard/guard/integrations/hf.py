"""Hugging Face ``transformers.Trainer`` callback: the training monitors at every optimizer step.

Example::

    from transformers import Trainer
    from trainguard.core.events import JsonlSink
    from trainguard.guard.integrations.hf import TrainguardTrainerCallback

    cb = TrainguardTrainerCallback(emit=JsonlSink("events.jsonl").emit)
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()

``on_step_end`` runs after ``optimizer.step()``, ``lr_scheduler.step()`` and ``zero_grad`` (the
update-direction check uses the optimizer's state, so zeroed gradients do not matter). The Trainer
does not pass the per-step loss to callbacks; the loss monitor judges the losses the Trainer logs
(``on_log``, every ``logging_steps``). Callbacks get the unwrapped model, so under plain DDP set
``MonitorConfig(crossrank=CrossRankConfig(replicated=True))`` to compare weights across ranks (not
for FSDP or DeepSpeed ZeRO, where ranks hold different shards). In enforce mode a detection raises
:class:`~trainguard.guard.detection.MonitorViolation` out of ``trainer.train()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from trainguard.core.events import Event
from trainguard.guard.integrations import default_emit
from trainguard.guard.monitors import MonitorConfig, TrainingMonitor


class TrainguardTrainerCallback(TrainerCallback):  # type: ignore[misc]
    """Runs :class:`TrainingMonitor` after each optimizer step of ``Trainer.train``."""

    def __init__(self, emit: Callable[[Event], None] | None = None,
                 config: MonitorConfig | None = None, *,
                 monitor: TrainingMonitor | None = None) -> None:
        self._emit = emit
        self._config = config
        self.monitor = monitor

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is None:
            self.monitor = TrainingMonitor(self._emit or default_emit(), self._config)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        opt = kwargs.get("optimizer")
        if self.monitor is None or opt is None:
            return
        # Accelerate wraps the optimizer; the param groups and state live on the inner one.
        inner = getattr(opt, "optimizer", opt)
        sched = kwargs.get("lr_scheduler")
        self.monitor.step(kwargs.get("model"), inner, None,
                          scheduler=getattr(sched, "scheduler", sched))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if self.monitor is not None and logs and isinstance(logs.get("loss"), (int, float)):
            self.monitor.observe_loss(float(logs["loss"]), step=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
