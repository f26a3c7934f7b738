"""Per-tensor manifests: every tamper class is detected and located, from real checkpoints."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest

from fixtures.checkpoints import (
    flip_byte,
    member_offset,
    rng_state,
    save_torch,
    storage_key,
    train_state,
)
from trainguard.integrity.tensors import compare_manifests, manifest_digest, tensor_manifest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


def _manifest(path: Path) -> dict[str, Any]:
    m = tensor_manifest(path)
    assert m is not None
    return m


def _names(changes: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(c["kind"], c["name"], c["change"]) for c in changes]


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return save_torch(train_state(), tmp_path / "ckpt.pt")


def test_manifest_names_model_optimizer_scalars_and_rng(ckpt: Path) -> None:
    m = _manifest(ckpt)
    assert m["format"] == "torch"
    t, s = m["tensors"], m["scalars"]
    for name in ("model.0.weight", "model.0.bias", "model.2.weight", "optimizer.state.0.exp_avg",
                 "optimizer.state.0.exp_avg_sq", "optimizer.state.0.step", "rng.cpu",
                 "rng.numpy.1"):
        assert name in t, name
    assert s["optimizer.param_groups.0.lr"] == pytest.approx(1e-3)
    assert s["optimizer.param_groups.0.betas"] == [0.9, 0.999]
    assert s["optimizer.param_groups.0.eps"] == pytest.approx(1e-8)
    assert s["optimizer.param_groups.0.weight_decay"] == pytest.approx(0.01)
    assert s["step"] == 2
    assert s["epoch"] == 1
    assert s["run_name"] == "unit-test"
    assert s["rng.numpy.0"] == "MT19937"
    assert s["rng.python.1"]["items"] == 625
    assert t["model.0.weight"]["dtype"] == "F32"
    assert t["model.0.weight"]["shape"] == [8, 4]
    # the manifest is JSON and stable
    assert manifest_digest(m) == manifest_digest(_manifest(ckpt))


def test_digests_are_sha256_of_tensor_bytes(ckpt: Path) -> None:
    m = _manifest(ckpt)
    state = torch.load(ckpt, weights_only=False)
    for name, tensor in state["model"].items():
        want = hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()
        assert m["tensors"][f"model.{name}"]["digest"] == want
    cpu = state["rng"]["cpu"].numpy().tobytes()
    assert m["tensors"]["rng.cpu"]["digest"] == hashlib.sha256(cpu).hexdigest()
    np_bytes = state["rng"]["numpy"][1].tobytes()
    assert m["tensors"]["rng.numpy.1"]["digest"] == hashlib.sha256(np_bytes).hexdigest()


def test_identical_saves_compare_equal(tmp_path: Path) -> None:
    a = save_torch(train_state(), tmp_path / "a.pt")
    b = save_torch(train_state(), tmp_path / "b.pt")
    assert compare_manifests(_manifest(a), _manifest(b)) == []


@pytest.mark.parametrize("tensor", ["model.2.weight", "optimizer.state.1.exp_avg_sq", "rng.cpu"])
def test_flipped_byte_names_exactly_that_tensor(ckpt: Path, tensor: str) -> None:
    before = _manifest(ckpt)
    key = storage_key(before, tensor)
    flip_byte(ckpt, member_offset(ckpt, f"/data/{key}") + 3)
    changes = compare_manifests(before, _manifest(ckpt))
    assert _names(changes) == [("tensor", tensor, "changed")]
    assert changes[0]["fields"] == ["digest"]


def test_replaced_tensor(tmp_path: Path) -> None:
    state = train_state()
    a = save_torch(state, tmp_path / "a.pt")
    state["model"]["0.bias"] = torch.zeros(8)
    b = save_torch(state, tmp_path / "b.pt")
    changes = compare_manifests(_manifest(a), _manifest(b))
    assert _names(changes) == [("tensor", "model.0.bias", "changed")]
    assert changes[0]["category"] == "weights"


def test_reshaped_and_retyped_tensor(tmp_path: Path) -> None:
    state = train_state()
    a = save_torch(state, tmp_path / "a.pt")
    state["model"]["0.weight"] = state["model"]["0.weight"].reshape(4, 8)
    state["model"]["2.bias"] = state["model"]["2.bias"].to(torch.bfloat16)
    b = save_torch(state, tmp_path / "b.pt")
    changes = {c["name"]: c for c in compare_manifests(_manifest(a), _manifest(b))}
    assert changes["model.0.weight"]["fields"] == ["shape"]
    assert changes["model.2.bias"]["fields"] == ["dtype", "digest"]
    assert changes["model.2.bias"]["new"]["dtype"] == "BF16"


def test_changed_lr_and_betas(tmp_path: Path) -> None:
    state = train_state()
    a = save_torch(state, tmp_path / "a.pt")
    group = state["optimizer"]["param_groups"][0]
    group["lr"] = 0.1
    group["betas"] = (0.5, 0.999)
    b = save_torch(state, tmp_path / "b.pt")
    changes = compare_manifests(_manifest(a), _manifest(b))
    assert _names(changes) == [
        ("scalar", "optimizer.param_groups.0.betas", "changed"),
        ("scalar", "optimizer.param_groups.0.lr", "changed"),
    ]
    assert all(c["category"] == "optimizer" for c in changes)
    assert changes[1]["old"] == pytest.approx(1e-3)
    assert changes[1]["new"] == 0.1


def test_changed_rng_state(tmp_path: Path) -> None:
    state = train_state()
    a = save_torch(state, tmp_path / "a.pt")
    torch.manual_seed(1234)
    random.seed(1234)
    import numpy as np

    np.random.seed(1234)
    state["rng"] = rng_state()
    b = save_torch(state, tmp_path / "b.pt")
    changes = compare_manifests(_manifest(a), _manifest(b))
    names = {c["name"] for c in changes}
    assert {"rng.cpu", "rng.numpy.1", "rng.python.1"} <= names
    assert all(c["category"] == "rng" for c in changes)
    assert not any(n.startswith(("model.", "optimizer.")) for n in names)


def test_hf_rng_state_file(tmp_path: Path) -> None:
    """HF Trainer saves rng_state.pth as {"python", "numpy", "cpu"}: each is digested."""
    p = save_torch(rng_state(), tmp_path / "rng_state.pth")
    m = _manifest(p)
    assert "cpu" in m["tensors"]
    assert "numpy.1" in m["tensors"]
    assert m["scalars"]["python.1"]["items"] == 625
    random.random()  # advance Python's generator only
    q = save_torch(rng_state(), tmp_path / "rng_state2.pth")
    changes = compare_manifests(m, _manifest(q))
    assert {c["name"] for c in changes} == {"python.1"}
    assert changes[0]["category"] == "rng"


def test_added_and_removed_tensors(tmp_path: Path) -> None:
    state = train_state()
    a = save_torch(state, tmp_path / "a.pt")
    del state["model"]["2.bias"]
    state["model"]["extra"] = torch.ones(2)
    b = save_torch(state, tmp_path / "b.pt")
    assert _names(compare_manifests(_manifest(a), _manifest(b))) == [
        ("tensor", "model.2.bias", "removed"), ("tensor", "model.extra", "added")]


def test_shared_storage_views(tmp_path: Path) -> None:
    """Views digest the slice of the shared storage they see; a byte names every viewer."""
    base = torch.arange(20, dtype=torch.float32)
    obj = {"full": base, "mid": base[5:10], "t": base[:12].view(3, 4).t()}
    p = save_torch(obj, tmp_path / "v.pt")
    m = _manifest(p)
    assert m["tensors"]["mid"]["storage"] == m["tensors"]["full"]["storage"]
    assert m["tensors"]["mid"]["digest"] == hashlib.sha256(
        base[5:10].numpy().tobytes()).hexdigest()
    assert m["tensors"]["t"]["stride"] == [1, 4]
    assert m["tensors"]["t"]["nbytes"] == 48  # the span it views: elements 0..11
    start = member_offset(p, f"/data/{storage_key(m, 'full')}")
    q = tmp_path / "q.pt"
    q.write_bytes(p.read_bytes())
    flip_byte(q, start + 6 * 4)  # element 6: seen by full, mid and t
    assert {c["name"] for c in compare_manifests(m, _manifest(q))} == {"full", "mid", "t"}
    r = tmp_path / "r.pt"
    r.write_bytes(p.read_bytes())
    flip_byte(r, start + 15 * 4)  # element 15: only full sees it
    assert {c["name"] for c in compare_manifests(m, _manifest(r))} == {"full"}


def test_parameters_and_dtypes(tmp_path: Path) -> None:
    obj = {"p": torch.nn.Parameter(torch.ones(3)), "h": torch.ones(2, dtype=torch.float16),
           "b": torch.ones(2, dtype=torch.bfloat16), "i": torch.arange(3),
           "flag": torch.tensor([True])}
    m = _manifest(save_torch(obj, tmp_path / "p.pt"))
    assert {k: v["dtype"] for k, v in m["tensors"].items()} == {
        "p": "F32", "h": "F16", "b": "BF16", "i": "I64", "flag": "BOOL"}


def test_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int32)}
    p = tmp_path / "m.safetensors"
    save_file(tensors, str(p), metadata={"step": "7"})
    m = _manifest(p)
    assert m["format"] == "safetensors"
    for k, v in tensors.items():
        assert m["tensors"][k]["digest"] == hashlib.sha256(v.numpy().tobytes()).hexdigest()
    assert m["scalars"] == {"__metadata__.step": "7"}
    data = p.read_bytes()
    header = int.from_bytes(data[:8], "little")
    q = tmp_path / "q.safetensors"
    q.write_bytes(data)
    begin = tensors["a"].numel() * 4  # "b" comes after "a" in offset order
    flip_byte(q, 8 + header + begin + 1)
    assert _names(compare_manifests(m, _manifest(q))) == [("tensor", "b", "changed")]
    save_file(tensors, str(q), metadata={"step": "8"})
    assert _names(compare_manifests(m, _manifest(q))) == [
        ("scalar", "__metadata__.step", "changed")]


def test_other_files_have_no_manifest(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert tensor_manifest(tmp_path / "config.json") is None
    import zipfile

    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
        z.writestr("x.txt", "hello")
    assert tensor_manifest(tmp_path / "plain.zip") is None


def test_legacy_torch_format_is_marked_unsupported(tmp_path: Path) -> None:
    p = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, p, _use_new_zipfile_serialization=False)
    m = _manifest(p)
    assert m["format"] == "torch-legacy"
    assert "unsupported" in m
    assert m["tensors"] == {}


def test_compare_format_change_and_none() -> None:
    a = {"format": "torch", "tensors": {}, "scalars": {"x": 1}}
    assert compare_manifests(None, None) == []
    changes = compare_manifests(a, None)
    assert ("format", "", "changed") in _names(changes)
    assert ("scalar", "x", "removed") in _names(changes)
