"""Builders for the investigation tests: identities, events, ledgers, and the clean/sabotaged
training scenario (real torch checkpoints, real digests)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.events import Event, EventKind, EventSink, JsonlSink, MultiSink
from trainguard.core.findings import Severity
from trainguard.core.identity import Identity

COMMIT = "3f2a9c1d" * 5
ENV = "sha256:" + "e0" * 32


def who(user: str, job: str | None = None, **kw: Any) -> Identity:
    """An identity as a job on a cluster would record it."""
    return Identity(user=user, host=kw.pop("host", f"{user}-node"), pid=kw.pop("pid", 4242),
                    job=job, git_commit=kw.pop("git_commit", COMMIT),
                    env_digest=kw.pop("env_digest", ENV), **kw)


def dig(tag: str) -> str:
    """A well-formed sha256 digest derived from ``tag``."""
    return "sha256:" + hashlib.sha256(tag.encode()).hexdigest()


class Clock:
    """Deterministic, increasing event times."""

    def __init__(self, start: float = 1_764_560_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def ev(kind: str, subject: str, details: dict[str, Any] | None = None, *,
       identity: Identity | None = None, t: float = 0.0, severity: Severity | None = None,
       rule_id: str | None = None) -> Event:
    return Event(kind=kind, subject=subject, details=details or {}, identity=identity, time=t,
                 severity=severity, rule_id=rule_id)


def open_test_ledger(path: Path) -> Any:
    """The real SQLite ledger at ``path``."""
    from trainguard.ledger import open_ledger

    return open_ledger(path)


class LedgerAppendSink:
    """An EventSink appending to a ledger (the ledger's own sink when it exists)."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger

    def emit(self, event: Event) -> None:
        self.ledger.append(event)

    def close(self) -> None:
        pass


@dataclass
class Scenario:
    """What :func:`sabotage_scenario` built."""

    base: Path
    good_digest: str
    evil_digest: str
    ckpt_a: Path
    ckpt_b: Path
    losses: dict[str, list[float]]
    events: list[Event]


def _sha(path: Path) -> str:
    from trainguard.integrity.hashing import file_digest

    return "sha256:" + file_digest(path).hex()


def _train(job: str, ident: Identity, base: Path, out: Path, emit: Any, clock: Clock,
           steps: int = 8) -> tuple[list[float], str]:
    import torch

    config = {"model": "mlp-8-16-1", "optimizer": {"name": "sgd", "lr": 0.05}, "steps": steps}
    emit(Event(EventKind.RUN_STARTED, job, {"config": config, "config_digest": dig("cfg-v1"),
                                             "git_commit": COMMIT}, ident, clock()))
    loaded = _sha(base)
    state = torch.load(base, weights_only=True)  # the test's own file, written just above
    emit(Event(EventKind.ARTIFACT_LOADED, loaded, {"path": str(base), "run": job}, ident, clock()))
    model = _model()
    model.load_state_dict(state)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        value = float(loss.item())
        losses.append(value)
        emit(Event(EventKind.GUARD_METRIC, f"run:{job}",
                   {"step": step, "loss": value if value == value else "nan",
                    "lr": opt.param_groups[0]["lr"]}, ident, clock()))
    torch.save(model.state_dict(), out)
    emit(Event(EventKind.ARTIFACT_SAVED, _sha(out), {"path": str(out), "run": job,
                                                     "inputs": [loaded], "step": steps},
               ident, clock()))
    emit(Event(EventKind.RUN_FINISHED, job, {"status": "ok"}, ident, clock()))
    return losses, loaded


def _model() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def sabotage_scenario(root: Path, sinks: list[EventSink]) -> Scenario:
    """A clean run A, then a checkpoint re-saved by mallory, then run B from it.

    alice saves and signs ``base.pt``; job A (alice) trains from it; mallory loads ``base.pt``,
    scales every weight by 3 and saves it over the same path (artifact.saved by mallory: a digest
    alice never signed); job B (alice) trains from the tampered file and its loss diverges.
    """
    import torch

    events: list[Event] = []
    sink = MultiSink(list(sinks))

    def emit(e: Event) -> None:
        events.append(e)
        sink.emit(e)

    clock = Clock()
    alice = who("alice")
    base = root / "base.pt"
    torch.save(_model().state_dict(), base)
    good = _sha(base)
    emit(Event(EventKind.ARTIFACT_SAVED, good, {"path": str(base), "run": "prep", "step": 0},
               alice.with_(job="prep"), clock()))
    emit(Event(EventKind.ARTIFACT_SIGNED, good, {"path": str(base), "signer": "alice@lab.example"},
               alice.with_(job="prep", signer="alice@lab.example"), clock()))
    loss_a, _ = _train("A", alice.with_(job="A"), base, root / "ckpt_A.pt", emit, clock)
    # mallory's "fix": same path, weights scaled, saved from a notebook outside any job
    state = torch.load(base, weights_only=True)
    torch.save({k: v * 3 for k, v in state.items()}, base)
    evil = _sha(base)
    emit(Event(EventKind.ARTIFACT_SAVED, evil, {"path": str(base)},
               who("mallory", host="gpu-07", pid=999), clock()))
    loss_b, _ = _train("B", alice.with_(job="B"), base, root / "ckpt_B.pt", emit, clock)
    sink.close()
    assert good != evil
    return Scenario(base, good, evil, root / "ckpt_A.pt", root / "ckpt_B.pt",
                    {"A": loss_a, "B": loss_b}, events)


def write_jsonl(path: Path, events: list[Event]) -> Path:
    sink = JsonlSink(path)
    for e in events:
        sink.emit(e)
    sink.close()
    return path


def now() -> float:
    return time.time()


def synthetic_events(*, tamper: bool = True, clock: Clock | None = None) -> list[Event]:
    """The sabotage scenario without torch: prep (alice saves+signs base.pt), run A from it,
    (mallory re-saves base.pt), run B from the current base.pt. Losses: A decreases from 1.0; B
    starts 4x higher when tampered."""
    clock = clock or Clock()
    alice, mallory = who("alice"), who("mallory", host="gpu-07")
    good, evil = dig("base-good"), dig("base-evil")
    out = [
        ev(EventKind.ARTIFACT_SAVED, good, {"path": "ckpt/base.pt", "run": "prep"},
           identity=alice.with_(job="prep"), t=clock()),
        ev(EventKind.ARTIFACT_SIGNED, good, {"path": "ckpt/base.pt", "signer": "alice"},
           identity=alice.with_(job="prep"), t=clock()),
    ]

    def run(job: str, digest: str, scale: float) -> None:
        ident = alice.with_(job=job)
        out.append(ev(EventKind.RUN_STARTED, job, {"config": {"lr": 0.1, "steps": 10},
                                                   "config_digest": dig("cfg")},
                      identity=ident, t=clock()))
        out.append(ev(EventKind.ARTIFACT_LOADED, digest, {"path": "ckpt/base.pt"},
                      identity=ident, t=clock()))
        for step in range(10):
            out.append(ev(EventKind.GUARD_METRIC, f"run:{job}",
                          {"step": step, "loss": scale * (1.0 - 0.05 * step), "lr": 0.1},
                          identity=ident, t=clock()))
        out.append(ev(EventKind.ARTIFACT_SAVED, dig(f"out-{job}"),
                      {"path": f"ckpt/{job}.pt", "inputs": [digest]}, identity=ident, t=clock()))
        out.append(ev(EventKind.RUN_FINISHED, job, {"status": "ok"}, identity=ident, t=clock()))

    run("A", good, 1.0)
    if tamper:
        out.append(ev(EventKind.ARTIFACT_SAVED, evil, {"path": "ckpt/base.pt"},
                      identity=mallory, t=clock()))
    run("B", evil if tamper else good, 4.0 if tamper else 1.0)
    return out
