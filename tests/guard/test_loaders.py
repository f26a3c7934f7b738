"""The load gate: malicious pickles loaded through torch.load(weights_only=False), pickle.load,
pickle.Unpickler, numpy.load(allow_pickle=True) and joblib.load inside a guarded process.

Enforce: refused before the payload runs (its marker file is never written). Monitor: recorded
with the file's name and the loader, and the payload runs (that is what monitor means).
Payloads are harmless: ``os.system("touch <marker>")``, built at test time.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from guard_helpers import Run, run_guarded

pytestmark = [pytest.mark.torch, pytest.mark.slow]


class Marker:
    """Unpickling calls os.system('touch <path>') (the classic __reduce__ payload)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[override]
        return (os.system, (f"touch {self.path}",))


def _build(tmp: Path) -> dict[str, dict[str, str]]:
    import joblib
    import numpy as np
    import torch

    files: dict[str, dict[str, str]] = {}
    mk = tmp / "markers"
    mk.mkdir()

    def add(name: str, loader: str, marker: Path | None) -> None:
        files[name] = {"loader": loader, "marker": str(marker) if marker else ""}

    torch.save({"w": torch.ones(2), "x": Marker(mk / "torch")}, tmp / "evil.pt")
    add("evil.pt", "torch", mk / "torch")
    with open(tmp / "evil.pkl", "wb") as fh:
        pickle.dump({"x": Marker(mk / "pickle")}, fh)
    add("evil.pkl", "pickle", mk / "pickle")
    with open(tmp / "evil2.pkl", "wb") as fh:
        pickle.dump([Marker(mk / "unpickler")], fh, protocol=2)
    add("evil2.pkl", "unpickler", mk / "unpickler")
    np.save(tmp / "evil.npy", np.array([Marker(mk / "numpy")], dtype=object), allow_pickle=True)
    add("evil.npy", "numpy", mk / "numpy")
    joblib.dump({"a": np.arange(3), "x": Marker(mk / "joblib")}, tmp / "evil.joblib")
    add("evil.joblib", "joblib", mk / "joblib")
    # legitimate files through the same loaders
    torch.save({"w": torch.ones(2), "step": 3}, tmp / "good.pt")
    add("good.pt", "torch", None)
    np.save(tmp / "good.npy", np.array([1, "a", None], dtype=object), allow_pickle=True)
    add("good.npy", "numpy", None)
    joblib.dump({"a": np.arange(3)}, tmp / "good.joblib")
    add("good.joblib", "joblib", None)
    (tmp / "files.json").write_text(json.dumps(files))
    return files


LOADER_SCRIPT = """
import json, pickle, sys
import numpy, joblib, torch
files = json.load(open("files.json"))
for name, spec in files.items():
    kind = spec["loader"]
    try:
        if kind == "torch":
            torch.load(name, weights_only=False)
        elif kind == "pickle":
            with open(name, "rb") as fh:
                pickle.load(fh)
        elif kind == "unpickler":
            with open(name, "rb") as fh:
                pickle.Unpickler(fh).load()
        elif kind == "numpy":
            numpy.load(name, allow_pickle=True)
        elif kind == "joblib":
            joblib.load(name)
        print("LOADED", name, flush=True)
    except Exception as exc:
        print("REFUSED", name, type(exc).__name__, flush=True)
"""


def _run(tmp: Path, mode: str) -> tuple[Run, dict[str, dict[str, str]]]:
    files = _build(tmp)
    return run_guarded(tmp, LOADER_SCRIPT, mode=mode), files


@pytest.fixture(scope="module")
def enforce(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, dict[str, str]]]:
    return _run(tmp_path_factory.mktemp("gate-enforce"), "enforce")


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, dict[str, str]]]:
    return _run(tmp_path_factory.mktemp("gate-monitor"), "monitor")


EVIL = ["evil.pt", "evil.pkl", "evil2.pkl", "evil.npy", "evil.joblib"]
GOOD = ["good.pt", "good.npy", "good.joblib"]


@pytest.mark.parametrize("name", EVIL)
def test_enforce_refuses_before_payload_runs(enforce, name: str) -> None:
    run, files = enforce
    assert f"REFUSED {name}" in run.stdout, run.explain()
    assert not Path(files[name]["marker"]).exists(), "the payload ran"
    hits = [e for e in run.detections("TG-GRD-001") if e["subject"].endswith(name)]
    assert hits, run.explain()
    assert hits[0]["details"]["global"] in ("posix.system", "os.system")
    assert hits[0]["details"]["action"] == "blocked"


@pytest.mark.parametrize("name", GOOD)
def test_legitimate_files_load_in_enforce_mode(enforce, name: str) -> None:
    run, _files = enforce
    assert f"LOADED {name}" in run.stdout, run.explain()


def test_enforce_exit_code(enforce) -> None:
    run, _ = enforce
    assert run.rc == 77, run.explain()
    assert not [e for e in run.detections() if e["rule_id"] != "TG-GRD-001"], run.detections()


@pytest.mark.parametrize("name", EVIL)
def test_monitor_records_with_file_name(monitor, name: str) -> None:
    run, files = monitor
    assert f"LOADED {name}" in run.stdout, run.explain()
    assert Path(files[name]["marker"]).exists()  # monitor mode does not stop
    hits = [e for e in run.detections("TG-GRD-001") if e["subject"].endswith(name)]
    assert hits, run.explain()
    d = hits[0]["details"]
    assert d["action"] == "recorded"
    expected_loader = {"torch": "torch.load", "pickle": "pickle.load", "numpy": "numpy.load",
                       "joblib": "joblib.load", "unpickler": "pickle"}[files[name]["loader"]]
    assert d["loader"] == expected_loader
    # the wrapped loaders know the file; a bare Unpickler is named by the last file read
    assert d["file_guessed"] is (name == "evil2.pkl")


def test_monitor_payload_process_attributed_to_the_load(monitor) -> None:
    run, _ = monitor
    during = run.detections("TG-GRD-002")
    loading = {Path(e["details"]["loading"]).name for e in during}
    assert {"evil.pt", "evil.pkl", "evil.npy", "evil.joblib"} <= loading, run.explain()
    assert monitor[0].rc == 0


def test_ipc_unpickling_is_not_gated(tmp_path: Path) -> None:
    """multiprocessing (spawn) sends the job's own classes between processes: not a load."""
    script = """
import multiprocessing as mp

class Box:
    def __init__(self, v):
        self.v = v

def work(v):
    return Box(v * 2)

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        print("SUM", sum(b.v for b in pool.map(work, range(5))), flush=True)
"""
    run = run_guarded(tmp_path, script, mode="enforce")
    assert run.rc == 0, run.explain()
    assert "SUM 20" in run.stdout
    assert run.detections() == []


def test_signed_artifact_without_verifier_or_bad_signature_is_refused(tmp_path: Path) -> None:
    """Verify-before-load fails closed: a signature that cannot be checked refuses the load."""
    import torch

    model = tmp_path / "pretrained"
    model.mkdir()
    torch.save({"w": torch.ones(2)}, model / "weights.pt")
    (tmp_path / "pretrained.sig").write_text("{not a bundle")
    config = """
    [guard]
    signed = [{ path = "pretrained", signature = "pretrained.sig" }]
    """
    script = """
import torch
try:
    torch.load("pretrained/weights.pt", weights_only=True)
    print("LOADED")
except Exception as exc:
    print("REFUSED", type(exc).__name__)
"""
    run = run_guarded(tmp_path, script, mode="enforce", config=config)
    assert "REFUSED LoadRefused" in run.stdout, run.explain()
    hits = run.detections("TG-GRD-013")
    assert hits, run.explain()
    assert hits[0]["subject"].endswith("weights.pt")
    assert run.rc == 77


@pytest.mark.slow
def test_signed_checkpoint_loads_and_tampered_copy_is_refused(tmp_path: Path) -> None:
    """A new pretrained checkpoint published with its signature is not flagged; the same
    checkpoint changed after signing is refused before torch.load reads it (enforce)."""
    import shutil

    import torch

    from trainguard.integrity.keys import PrivateKey
    from trainguard.integrity.signing import sign

    key = PrivateKey.generate("p256")
    (tmp_path / "alice.pub").write_bytes(key.public_key().pem)
    good = tmp_path / "pretrained"
    good.mkdir()
    torch.save({"w": torch.arange(4.0)}, good / "weights.pt")
    sign(good, key=key, output=tmp_path / "pretrained.sig")
    bad = tmp_path / "tampered"
    shutil.copytree(good, bad)
    sign(bad, key=key, output=tmp_path / "tampered.sig")
    torch.save({"w": -torch.arange(4.0)}, bad / "weights.pt")  # changed after signing
    config = """
    [trust]
    [trust.roles.engineer]
    [trust.identities.alice]
    key = "alice.pub"
    roles = ["engineer"]
    [[trust.rules]]
    roles = ["engineer"]

    [guard]
    signed = [{ path = "pretrained", signature = "pretrained.sig" },
              { path = "tampered", signature = "tampered.sig" }]
    """
    script = """
import torch
for name in ("pretrained", "tampered"):
    try:
        state = torch.load(name + "/weights.pt", weights_only=True)
        print("LOADED", name, state["w"].tolist(), flush=True)
    except Exception as exc:
        print("REFUSED", name, type(exc).__name__, flush=True)
"""
    run = run_guarded(tmp_path, script, mode="enforce", config=config)
    assert "LOADED pretrained [0.0, 1.0, 2.0, 3.0]" in run.stdout, run.explain()
    assert "REFUSED tampered LoadRefused" in run.stdout, run.explain()
    verified = run.kinds("artifact.verified")
    assert [Path(e["details"]["path"]).parent.name for e in verified] == ["pretrained"]
    hits = run.detections("TG-GRD-013")
    assert [Path(e["subject"]).parent.name for e in hits] == ["tampered"], run.explain()
    assert run.rc == 77
