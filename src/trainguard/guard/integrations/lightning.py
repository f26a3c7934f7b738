"""PyTorch Lightning callback: the training monitors at every optimizer step.

Example::

    import lightning.pytorch as pl
    from trainguard.core.events import JsonlSink
    from trainguard.guard.integrations.lightning import TrainguardCallback
    from trainguard.guard.monitors import MonitorConfig

    cb = TrainguardCallback(emit=JsonlSink("events.jsonl").emit,
                            config=MonitorConfig(mode="enforce"))
    pl.Trainer(max_steps=100, callbacks=[cb]).fit(model, loader)

``on_train_batch_end`` runs after the optimizer step of the batch (Lightning steps the LR
scheduler in the same loop iteration, and both update lr and ``get_last_lr`` together). With
gradient accumulation the monitor runs once per optimizer step (``trainer.global_step``
changes). The first optimizer and its first scheduler are monitored. In enforce mode a detection
raises :class:`~trainguard.guard.detection.MonitorViolation`, which ends ``trainer.fit``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl

from trainguard.core.events import Event
from trainguard.guard.integrations import default_emit
from trainguard.guard.monitors import MonitorConfig, TrainingMonitor


class TrainguardCallback(pl.Callback):  # type: ignore[misc]
    """Runs :class:`TrainingMonitor` after each optimizer step of ``trainer.fit``."""

    def __init__(self, emit: Callable[[Event], None] | None = None,
                 config: MonitorConfig | None = None, *,
                 monitor: TrainingMonitor | None = None) -> None:
        super().__init__()
        self._emit = emit
        self._config = config
        self.monitor = monitor
        self._last_global_step = -1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is None:
            self.monitor = TrainingMonitor(self._emit or default_emit(), self._config)
        self._last_global_step = trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.monitor is None or trainer.global_step == self._last_global_step:
            return  # no optimizer step happened (gradient accumulation)
        self._last_global_step = trainer.global_step
        if not trainer.optimizers:
            return
        loss: Any = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        configs = getattr(trainer, "lr_scheduler_configs", None) or []
        sched = configs[0].scheduler if configs else None
        # The strategy's model is the DistributedDataParallel wrapper under DDP: its process
        # group is what the cross-rank check compares (sharded strategies are skipped).
        model = getattr(trainer.strategy, "model", None) or pl_module
        self.monitor.step(model, trainer.optimizers[0],
                          loss.detach() if hasattr(loss, "detach") else loss, scheduler=sched)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.monitor is not None:
            self.monitor.close()
