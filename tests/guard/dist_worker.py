"""One rank of a tiny real DDP (gloo) training job with an optional sabotage payload.

tests/guard/test_crossrank.py and test_watchdog.py start the ranks with :func:`launch`: real
separate processes forked from a ``forkserver`` that imported torch once (importing torch takes
seconds per process on a loaded machine; a fork from a server that never ran a torch op is safe,
unlike forking the test process). By hand: ``python dist_worker.py SCENARIO RANK WORLD INIT OUT``.

Each rank writes its events to OUT_DIR/rank<R>.jsonl (trainguard's JsonlSink) and, in enforce
mode, exits with status 3 when a MonitorViolation stops it. Payloads are harmless: they change
this process's own optimizer, weights or timing, the way a malicious dependency would.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from trainguard.core.events import JsonlSink
from trainguard.guard.crossrank import CrossRankConfig
from trainguard.guard.detection import MonitorViolation
from trainguard.guard.monitors import MonitorConfig, TrainingMonitor, tensor_digest
from trainguard.guard.watchdog import WatchdogConfig

STEPS = 30


def payload_sleep(seconds: float) -> None:
    time.sleep(seconds)  # PAYLOAD-SLEEP: the line the watchdog must name


def payload_hang(seconds: float) -> None:
    time.sleep(seconds)  # PAYLOAD-HANG: the line the watchdog must name


def rank_main(scenario: str, rank: int, world: int, init_file: str, out: str) -> None:
    """Process target: run one rank, record a crash to OUT/rank<R>.err, exit with its status."""
    try:
        status = run(scenario, rank, world, init_file, out)
    except BaseException:
        import traceback

        # A peer that stopped (enforce mode) makes this rank's next collective fail: record it
        # quietly, like any crash, for launch() to report when it was not expected.
        Path(out, f"rank{rank}.err").write_text(traceback.format_exc())
        os._exit(1)
    sys.stdout.flush()
    os._exit(status)  # skip interpreter teardown (daemon threads, gloo) in the forked child


def run(scenario: str, rank: int, world: int, init_file: str, out: str) -> int:
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 1))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=3e-3, weight_decay=0.01)
    warm = 5
    # A committed schedule: linear warm-up then cosine decay (legitimate lr changes every step).
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warm),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS - warm)], milestones=[warm])
    enforce = scenario.startswith("enforce")
    sink = JsonlSink(os.path.join(out, f"rank{rank}.jsonl"))
    timing = scenario == "timing"
    cfg = MonitorConfig(
        mode="enforce" if enforce else "monitor", metrics_every=5, crossrank_every=5,
        crossrank=CrossRankConfig(slow_min_excess_s=0.4),
        watchdog=WatchdogConfig(slow_factor=20.0, slow_floor_s=0.6 if timing else 30.0,
                                hang_timeout_s=2.0 if timing else 60.0, poll_s=0.05))
    mon = TrainingMonitor(sink.emit, cfg)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data shard
    x_all = torch.randn(256, 8, generator=gen)
    y_all = x_all.sum(1, keepdim=True) * 0.5
    status = 0
    try:
        for step in range(1, STEPS + 1):
            if step == 12 and scenario in ("clean", "perturb", "enforce_perturb"):
                # A new checkpoint published by rank 0 and loaded on every rank (legitimate).
                path = os.path.join(out, "ckpt.pt")
                if rank == 0:
                    torch.save(model.state_dict(), path)
                dist.barrier()
                state = torch.load(path, weights_only=True)
                digests = {k: tensor_digest(v) for k, v in state.items()}
                model.load_state_dict(state)
                mon.checkpoint_loaded(optimizer_reloaded=False)
                if scenario != "clean" and rank == 1:
                    with torch.no_grad():  # PAYLOAD: perturb weights after the load
                        model[0].weight[3, 4] += 0.05
                mon.verify_loaded(model, digests=digests)
            idx = torch.randint(0, 256, (16,), generator=gen)
            loss = nn.functional.mse_loss(ddp(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            flip = scenario in ("flip", "enforce_flip") and rank == 1 and step >= 8 \
                and step % 2 == 0
            if flip:  # PAYLOAD: flip this rank's update on some steps, restore afterwards
                for g in opt.param_groups:
                    g["lr"] = -g["lr"]
            opt.step()
            if flip:
                for g in opt.param_groups:
                    g["lr"] = -g["lr"]
            if timing and rank == 1 and step == 7:
                payload_sleep(1.0)
            if timing and rank == 1 and step == 16:
                payload_hang(2.6)
            sched.step()
            mon.step(ddp, opt, loss)
    except MonitorViolation as exc:
        print(f"rank {rank} stopped: {exc}", file=sys.stderr)
        status = 3
    finally:
        mon.close()
        sink.close()
    if status == 0:
        dist.destroy_process_group()
    return status


def launch(scenario: str, out: Path, world: int = 2, timeout: float = 180.0
           ) -> tuple[list[int | None], dict[int, list]]:
    """Start ``world`` ranks, wait like torchrun (one failing rank ends the others), and return
    the exit codes (None: killed by the launcher) and each rank's events."""
    import multiprocessing as mp

    from trainguard.core.events import read_jsonl

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "trainguard.guard.monitors",
                                "dist_worker"])
    init = out / "init"
    procs = [ctx.Process(target=rank_main, args=(scenario, r, world, str(init), str(out)))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    codes: list[int | None] = [None] * world
    while time.monotonic() < deadline and any(c is None for c in codes):
        for r, p in enumerate(procs):
            if codes[r] is None:
                codes[r] = p.exitcode
        if any(c not in (None, 0) for c in codes):
            break  # a rank stopped the job: tear the others down, as torchrun does
        time.sleep(0.05)
    for r, p in enumerate(procs):
        if codes[r] is None:
            p.kill()
        p.join()
        if codes[r] not in (0, 3, None):
            err = out / f"rank{r}.err"
            text = err.read_text() if err.exists() else ""
            raise AssertionError(f"rank {r} failed ({codes[r]}):\n{text[-3000:]}")
    events = {}
    for r in range(world):
        f = out / f"rank{r}.jsonl"
        events[r] = list(read_jsonl(f)) if f.exists() else []
    return codes, events


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
