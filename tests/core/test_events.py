"""Events and identities: the shared shape every capability reports in (ARCHITECTURE.md)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainguard.core.events import (
    EVENT_SCHEMA,
    Event,
    EventKind,
    JsonlSink,
    MultiSink,
    StderrSink,
    canonical_json,
    read_jsonl,
)
from trainguard.core.findings import Severity
from trainguard.core.identity import Identity, git_commit


def test_event_round_trips_through_json() -> None:
    ev = Event.now(EventKind.ARTIFACT_LOADED, "sha256:" + "ab" * 32,
                   {"path": "ckpt.pt", "n": [1, 2.5]}, severity=Severity.HIGH, rule_id="TG-GRD-001")
    data = json.loads(ev.to_json())
    assert data["schema"] == EVENT_SCHEMA
    assert data["identity"]["pid"] == os.getpid()
    back = Event.from_dict(data)
    assert back == ev
    assert back.details == ev.details
    assert back.severity is Severity.HIGH


def test_canonical_json_is_order_independent_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == \
        canonical_json({"a": [1, {"c": 3, "d": 2}], "b": 1})
    assert canonical_json({"é": "ü"}) == '{"é":"ü"}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": math.nan})


@pytest.mark.parametrize("details", [{"x": math.inf}, {"x": object()}, {1: "a"}, {"x": b"raw"}])
def test_event_details_must_be_plain_json(details: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        Event(kind="k", subject="s", details=details)


def test_deeply_nested_details_are_refused_not_recursed_forever() -> None:
    deep: dict = {}  # type: ignore[type-arg]
    cur = deep
    for _ in range(10_000):
        cur["x"] = {}
        cur = cur["x"]
    with pytest.raises(ValueError, match="nested too deeply"):
        Event(kind="k", subject="s", details=deep)


@pytest.mark.parametrize("bad", [
    [], {"schema": "other"}, {"kind": 1, "subject": "s"},
    {"kind": "k", "subject": "s", "time": "x"},
    {"kind": "k", "subject": "s", "details": []},
    {"kind": "k", "subject": "s", "severity": "worst"},
    {"kind": "k", "subject": "s", "identity": {"user": "u", "host": "h", "pid": "1"}},
])
def test_malformed_event_records_raise_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        Event.from_dict(bad)  # type: ignore[arg-type]


def test_jsonl_sink_and_reader(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "events.jsonl"
    sink = JsonlSink(path)
    events = [Event.now(EventKind.GUARD_METRIC, "run-1", {"step": i, "loss": 1.0 / (i + 1)})
              for i in range(5)]
    for ev in events:
        sink.emit(ev)
    sink.close()
    assert list(read_jsonl(path)) == events
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"events.jsonl:6"):
        list(read_jsonl(path))


def test_stderr_sink_prints_detections_only() -> None:
    out = io.StringIO()
    sink = StderrSink(stream=out)
    sink.emit(Event.now(EventKind.GUARD_METRIC, "run", {"loss": 1.0}))
    sink.emit(Event.now(EventKind.GUARD_TRIPWIRE, "torch.optim.AdamW.step",
                        {"message": "replaced by evil.py:3"}, severity=Severity.CRITICAL,
                        rule_id="TG-GRD-003"))
    text = out.getvalue()
    assert text.count("\n") == 1
    assert "CRITICAL TG-GRD-003 guard.tripwire torch.optim.AdamW.step" in text
    assert "replaced by evil.py:3" in text


def test_multisink_survives_a_broken_sink(tmp_path: Path) -> None:
    class Broken:
        def emit(self, event: Event) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            raise OSError("still full")

    good = JsonlSink(tmp_path / "e.jsonl")
    multi = MultiSink([Broken(), good])
    multi.emit(Event.now("x.y", "s"))
    multi.close()
    assert len(list(read_jsonl(tmp_path / "e.jsonl"))) == 1
    assert len(multi.errors) == 2


def test_identity_reads_scheduler_variables() -> None:
    env = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_NTASKS": "8",
           "SLURM_LOCALID": "1", "SLURMD_NODENAME": "gpu-07"}
    ident = Identity.current(env=env, with_git=False)
    assert (ident.job, ident.rank, ident.world_size, ident.local_rank) == ("4242", 3, 8, 1)
    assert ident.scheduler == "slurm"
    assert ident.host == "gpu-07"
    torchrun = Identity.current(env={"TORCHELASTIC_RUN_ID": "r1", "RANK": "1", "WORLD_SIZE": "2",
                                     "LOCAL_RANK": "1"}, with_git=False)
    assert (torchrun.job, torchrun.rank, torchrun.scheduler) == ("r1", 1, "torchrun")
    assert Identity.current(env={"RANK": "not-a-number"}, with_git=False).rank is None
    assert Identity.from_dict(torchrun.to_dict()) == torchrun
    assert torchrun.short().endswith("[job=r1,rank=1]")


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_git_commit_is_read_without_running_git(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src" / "deep").mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    assert git_commit(repo / "src" / "deep") is None  # unborn branch
    (repo / "f").write_text("x")
    _git(repo, "add", "f")
    _git(repo, "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_commit(repo / "src" / "deep") == head
    _git(repo, "pack-refs", "--all")  # the ref now lives in packed-refs only
    assert git_commit(repo) == head
    _git(repo, "checkout", "-q", "--detach")
    assert git_commit(repo) == head
    wt = tmp_path / "wt"
    _git(repo, "worktree", "add", "-q", str(wt), "-b", "side")
    assert git_commit(wt) == head


def test_process_identity_is_per_process(tmp_path: Path) -> None:
    code = ("from trainguard.core.events import Event; import os, json;"
            "print(json.dumps([Event.now('a.b','s').identity.pid, os.getpid()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "RANK": "5"})
    pid, real = json.loads(out.stdout)
    assert pid == real != os.getpid()
