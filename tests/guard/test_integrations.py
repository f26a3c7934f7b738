"""Lightning and Hugging Face Trainer callbacks: a tiny real training each, one injected sabotage.

Legitimate runs (with the frameworks' own LR schedules and warm-up) produce no detection; a
payload that changes the optimizer mid-training is detected at its step, and in enforce mode the
framework's training loop stops with MonitorViolation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from trainguard.core.events import Event, EventKind  # noqa: E402
from trainguard.guard.detection import MonitorViolation  # noqa: E402
from trainguard.guard.monitors import MonitorConfig  # noqa: E402

pytestmark = pytest.mark.torch


def _monitor(events: list[Event]) -> list[tuple[str | None, Any]]:
    return [(e.rule_id, e.details.get("step")) for e in events if e.kind == EventKind.GUARD_MONITOR]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- PyTorch Lightning ---------------------------------------------------------------------------

def _lightning_fit(tmp_path: Path, sabotage_at: int | None) -> list[Event]:
    pl = pytest.importorskip("lightning.pytorch")
    from trainguard.guard.integrations.lightning import TrainguardCallback

    class Tiny(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1),
                                     nn.Linear(16, 1))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if sabotage_at is not None and self.global_step == sabotage_at - 1:
                # PAYLOAD: raise weight decay in the live optimizer during step `sabotage_at`
                # (OneCycleLR rewrites lr and beta1 every step, so a payload changing those
                # lasts one step; the update-direction check is what sees one-step flips)
                self.trainer.optimizers[0].param_groups[0]["weight_decay"] = 0.5
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=20)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(160, 8, generator=gen)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    events: list[Event] = []
    cb = TrainguardCallback(events.append, MonitorConfig(watchdog=None, metrics_every=5))
    trainer = pl.Trainer(max_steps=20, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[cb],
                         default_root_dir=str(tmp_path))
    pl.seed_everything(0, verbose=False)
    trainer.fit(Tiny(), loader)
    return events


def test_lightning_clean_run_with_one_cycle_schedule_is_quiet(tmp_path: Path) -> None:
    events = _lightning_fit(tmp_path, None)
    assert _monitor(events) == []
    metrics = [e.details for e in events if e.kind == EventKind.GUARD_METRIC]
    assert [m["step"] for m in metrics] == [5, 10, 15, 20]
    assert len({m["lr"] for m in metrics}) == 4
    assert all(m["loss"] > 0 for m in metrics)


def test_lightning_detects_a_weight_decay_change(tmp_path: Path) -> None:
    events = _lightning_fit(tmp_path, 7)
    assert _monitor(events) == [("TG-GRD-101", 7)]
    d = next(e for e in events if e.rule_id == "TG-GRD-101")
    assert d.details["key"] == "weight_decay"
    assert d.details["actual"] == 0.5


# --- Hugging Face Trainer --------------------------------------------------------------------

def _hf_train(tmp_path: Path, sabotage_at: int | None, mode: str = "monitor") -> list[Event]:
    transformers = pytest.importorskip("transformers")
    from trainguard.guard.integrations.hf import TrainguardTrainerCallback

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

        def forward(self, x: Any, labels: Any = None) -> dict[str, Any]:
            out = self.net(x)
            return {"loss": nn.functional.mse_loss(out, labels), "logits": out}

    class Payload(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if sabotage_at is not None and state.global_step == sabotage_at - 1:
                kw["optimizer"].param_groups[0]["maximize"] = True  # PAYLOAD: ascend

    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(160, 8, generator=gen)
    data = [{"x": x, "labels": x.sum(0, keepdim=True)} for x in xs]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=8,
        learning_rate=1e-2, lr_scheduler_type="cosine", warmup_steps=4, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    events: list[Event] = []
    cb = TrainguardTrainerCallback(events.append, MonitorConfig(
        mode=mode, watchdog=None, metrics_every=5))
    trainer = transformers.Trainer(model=Tiny(), args=args, train_dataset=data,
                                   callbacks=[Payload(), cb])
    trainer.train()
    return events


def test_hf_clean_run_with_warmup_cosine_is_quiet(tmp_path: Path) -> None:
    events = _hf_train(tmp_path, None)
    assert _monitor(events) == []
    metrics = [e.details for e in events if e.kind == EventKind.GUARD_METRIC]
    assert [m["step"] for m in metrics] == [5, 10, 15, 20]
    assert len({m["lr"] for m in metrics}) == 4


def test_hf_detects_maximize_and_enforce_stops_training(tmp_path: Path) -> None:
    events = _hf_train(tmp_path / "monitor", 6)
    assert ("TG-GRD-102", 6) in _monitor(events)
    with pytest.raises(MonitorViolation) as info:
        _hf_train(tmp_path / "enforce", 6, mode="enforce")
    assert info.value.detections[0].rule_id == "TG-GRD-102"
