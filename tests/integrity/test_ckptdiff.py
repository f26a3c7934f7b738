"""``diff``: two checkpoints compared without executing either, with how much tensors moved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fixtures.checkpoints import flip_byte, member_offset, save_torch, storage_key, train_state
from trainguard.core.errors import InputError, UsageError
from trainguard.integrity.ckptdiff import diff
from trainguard.integrity.tensors import tensor_manifest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


def _changes(result: Any, path: str) -> dict[str, dict[str, Any]]:
    f = next(f for f in result.files if f.path == path)
    return {c["name"]: c for c in f.changes}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    state = train_state()
    save_torch(state, a / "ckpt.pt")
    (a / "trainer_state.json").write_text(json.dumps({"global_step": 100, "best": 0.5}))
    (a / "gone.txt").write_text("x")
    (b / "trainer_state.json").write_text(json.dumps({"global_step": 101, "best": 0.5}))
    (b / "new.txt").write_text("y")
    return a, b, state


def test_identical(tmp_path: Path) -> None:
    a = save_torch(train_state(), tmp_path / "a.pt")
    b = save_torch(train_state(), tmp_path / "b.pt")
    r = diff(a, b, values=True)
    assert r.identical
    assert not r.bytes_identical  # torch.save writes a random serialization id
    assert r.files[0].status == "equivalent"
    assert diff(a, a).files[0].status == "same"


def test_hidden_zip_member_is_a_change(tmp_path: Path) -> None:
    """Bytes a loader ignores (an extra zip member) still make two checkpoints different."""
    import zipfile

    a = save_torch(train_state(), tmp_path / "a.pt")
    b = tmp_path / "b.pt"
    b.write_bytes(a.read_bytes())
    with zipfile.ZipFile(b, "a") as z:
        z.writestr("a/extra/payload.bin", b"hidden")  # torch names the archive after the file
    r = diff(a, b)
    assert not r.identical
    ch = _changes(r, "a.pt")
    assert ch["__zip__/extra/payload.bin"]["change"] == "added"


def test_directories(dirs: tuple[Path, Path, dict[str, Any]]) -> None:
    a, b, state = dirs
    state["optimizer"]["param_groups"][0]["lr"] = 0.5
    state["optimizer"]["param_groups"][0]["betas"] = (0.8, 0.999)
    state["model"]["0.weight"][0, 0] += 0.25
    state["rng"]["cpu"] = torch.manual_seed(7).get_state()
    save_torch(state, b / "ckpt.pt")
    r = diff(a, b, values=True)
    assert not r.identical
    status = {f.path: f.status for f in r.files}
    assert status == {"ckpt.pt": "changed", "gone.txt": "removed", "new.txt": "added",
                      "trainer_state.json": "changed"}
    ch = _changes(r, "ckpt.pt")
    assert set(ch) == {"model.0.weight", "optimizer.param_groups.0.lr",
                       "optimizer.param_groups.0.betas", "rng.cpu"}
    assert ch["optimizer.param_groups.0.lr"]["new"] == 0.5
    assert ch["optimizer.param_groups.0.lr"]["category"] == "optimizer"
    assert ch["rng.cpu"]["category"] == "rng"
    s = ch["model.0.weight"]["stats"]
    assert s["changed"] == 1
    assert s["elements"] == 32
    assert s["max_abs_diff"] == pytest.approx(0.25)
    w = state["model"]["0.weight"].double()
    old = w.clone()
    old[0, 0] -= 0.25
    assert s["rel_l2"] == pytest.approx(0.25 / old.norm().item(), rel=1e-5)
    assert _changes(r, "trainer_state.json")["global_step"]["new"] == 101
    json.dumps(r.to_dict(), allow_nan=False)


def test_without_values_no_stats(dirs: tuple[Path, Path, dict[str, Any]]) -> None:
    a, b, state = dirs
    state["model"]["0.bias"] += 1
    save_torch(state, b / "ckpt.pt")
    ch = _changes(diff(a, b), "ckpt.pt")
    assert set(ch) == {"model.0.bias"}
    assert "stats" not in ch["model.0.bias"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32,
                                   torch.uint8])
def test_stats_per_dtype(tmp_path: Path, dtype: Any) -> None:
    x = torch.arange(100).to(dtype)
    y = x.clone()
    y[10] = 3
    y[20] = 7
    a = save_torch({"x": x}, tmp_path / "a.pt")
    b = save_torch({"x": y}, tmp_path / "b.pt")
    s = _changes(diff(a, b, values=True), "a.pt")["x"]["stats"]
    assert s["changed"] == 2
    assert s["fraction_changed"] == pytest.approx(0.02)
    assert s["max_abs_diff"] == pytest.approx(13.0)  # |7 - 20|


def test_stats_of_strided_view_and_nonfinite(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32)
    other = base.clone()
    other[5] = float("nan")  # element (1, 1) of the transposed 3x4 view
    a = save_torch({"t": base.view(3, 4).t()}, tmp_path / "a.pt")
    b = save_torch({"t": other.view(3, 4).t()}, tmp_path / "b.pt")
    s = _changes(diff(a, b, values=True), "a.pt")["t"]["stats"]
    assert s["changed"] == 1
    assert s["nonfinite"] == 1
    assert s["max_abs_diff"] == 0.0


def test_safetensors_diff(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.ones(4), "v": torch.zeros(2)}, str(a))
    save_file({"w": torch.tensor([1.0, 1.0, 1.5, 1.0]), "v": torch.zeros(2)}, str(b))
    r = diff(a, b, values=True)
    ch = _changes(r, "a.safetensors")
    assert set(ch) == {"w"}
    assert ch["w"]["stats"]["max_abs_diff"] == pytest.approx(0.5)


def test_flipped_byte_located(tmp_path: Path) -> None:
    a = save_torch(train_state(), tmp_path / "a.pt")
    b = tmp_path / "b.pt"
    b.write_bytes(a.read_bytes())
    m = tensor_manifest(a)
    assert m is not None
    flip_byte(b, member_offset(b, f"/data/{storage_key(m, 'optimizer.state.0.exp_avg')}"))
    r = diff(a, b, values=True)
    ch = _changes(r, "a.pt")
    assert list(ch) == ["optimizer.state.0.exp_avg"]
    assert ch["optimizer.state.0.exp_avg"]["stats"]["changed"] == 1


def test_malformed_side_still_reports_difference(tmp_path: Path) -> None:
    a = save_torch(train_state(), tmp_path / "a.pt")
    b = tmp_path / "b.pt"
    data = bytearray(a.read_bytes())
    b.write_bytes(bytes(data[: len(data) // 2]))
    r = diff(a, b)
    assert not r.identical
    assert r.files[0].status == "changed"


def test_errors(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    with pytest.raises(UsageError):
        diff(tmp_path / "f", tmp_path / "d")
    with pytest.raises(InputError):
        diff(tmp_path / "f", tmp_path / "missing")


def test_never_executes(tmp_path: Path) -> None:
    """A pickle that would run code is compared as data: the payload never runs."""
    import pickle

    from fixtures.payloads import Reduce

    marker = tmp_path / "ran"
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(pickle.dumps({"x": 1}, protocol=2))
    b.write_bytes(pickle.dumps({"x": Reduce(marker.touch)}, protocol=2))
    r = diff(a, b)
    assert not r.identical
    assert not marker.exists()
