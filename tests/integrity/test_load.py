"""Verify-before-load: tampered, untrusted, unsigned or unsafe bytes are refused, and the bytes
loaded are the bytes verified (a file swapped after verification is not what gets loaded)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from fixtures.checkpoints import flip_byte, member_offset, save_torch, storage_key, train_state
from trainguard.core.errors import (
    InputError,
    LimitExceeded,
    TamperError,
    TrainguardError,
    UsageError,
    VerificationError,
)
from trainguard.integrity.keys import PrivateKey
from trainguard.integrity.load import UnsafeContent, load, locate
from trainguard.integrity.tensors import tensor_manifest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


def _policy(d: Path, who: str = "alice") -> Any:
    from trainguard.integrity.trust import TrustPolicy

    return TrustPolicy.from_section({
        "project": "llm",
        "roles": {"engineer": {}},
        "identities": {who: {"key": f"{who}.pub", "roles": ["engineer"]}},
        "rules": [{"projects": ["llm"], "roles": ["engineer"]}],
    }, base_dir=d)


@pytest.fixture
def signed(tmp_path: Path) -> dict[str, Any]:
    """A checkpoint folder (torch + safetensors + a malicious pickle) signed by alice."""
    from safetensors.torch import save_file

    from trainguard.integrity.signing import sign

    keys = tmp_path / "keys"
    keys.mkdir()
    alice = PrivateKey.generate("p256")
    alice.save(keys / "alice.key", keys / "alice.pub")
    PrivateKey.generate("p256").save(keys / "mallory.key", keys / "mallory.pub")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    state = train_state()
    state["rng"].pop("numpy")  # numpy types are outside torch's weights_only allow-list
    save_torch(state, ckpt / "model.pt")
    save_torch(train_state(), ckpt / "with_numpy_rng.pt")
    save_file({"w": torch.arange(6.0)}, str(ckpt / "model.safetensors"))
    from fixtures.payloads import Reduce

    # a signed, trusted, yet malicious file: the scan must still refuse it (harmless payload,
    # never executed: only the name of the function is written)
    (ckpt / "evil.pt").write_bytes(pickle.dumps({"x": Reduce(print, "pwned")}, protocol=2))
    sig = sign(ckpt, key=keys / "alice.key")
    return {"dir": ckpt, "sig": sig, "state": state, "policy": _policy(keys), "keys": keys}


def test_loads_verified_torch_checkpoint(signed: dict[str, Any]) -> None:
    got = load(signed["dir"] / "model.pt", policy=signed["policy"])
    for k, v in signed["state"]["model"].items():
        assert torch.equal(got["model"][k], v)
    assert got["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)


def test_loads_verified_safetensors(signed: dict[str, Any]) -> None:
    got = load(signed["dir"] / "model.safetensors", policy=signed["policy"])
    assert torch.equal(got["w"], torch.arange(6.0))


def test_flipped_byte_is_refused_and_located(signed: dict[str, Any]) -> None:
    p = signed["dir"] / "model.pt"
    m = tensor_manifest(p)
    assert m is not None
    flip_byte(p, member_offset(p, f"/data/{storage_key(m, 'model.0.bias')}") + 1)
    with pytest.raises(TamperError) as exc:
        load(p, policy=signed["policy"])
    assert "model.pt" in str(exc.value)


def test_untrusted_signer_is_refused(signed: dict[str, Any], tmp_path: Path) -> None:
    other = _policy(signed["keys"], who="mallory")
    with pytest.raises(VerificationError):
        load(signed["dir"] / "model.pt", policy=other)


def test_missing_signature_is_refused(signed: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InputError):
        load(signed["dir"] / "model.pt", policy=signed["policy"],
             signature=tmp_path / "nope.sig")


def test_signed_but_malicious_file_is_refused_by_the_scan(signed: dict[str, Any]) -> None:
    with pytest.raises(UnsafeContent) as exc:
        load(signed["dir"] / "evil.pt", policy=signed["policy"])
    assert exc.value.findings
    assert any("print" in f.evidence for f in exc.value.findings)


def test_file_swapped_after_verification_is_not_loaded(signed: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The time-of-check/time-of-use race: replace the file right after verify returns."""
    from trainguard.integrity import verify as verify_mod

    p = signed["dir"] / "model.pt"
    evil = train_state(seed=99)
    real = verify_mod.verify

    def verify_then_swap(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        save_torch(evil, p)  # the attacker wins the race on disk
        return result

    monkeypatch.setattr(verify_mod, "verify", verify_then_swap)
    got = load(p, policy=signed["policy"])
    for k, v in signed["state"]["model"].items():
        assert torch.equal(got["model"][k], v)  # the verified bytes, not the swapped file
    monkeypatch.setattr(verify_mod, "verify", real)
    with pytest.raises(TamperError):  # and the swapped file is refused on the next load
        load(p, policy=signed["policy"])


def test_numpy_rng_needs_safe_globals(signed: dict[str, Any]) -> None:
    """torch's own weights_only refusal is a trainguard error; safe_globals extends it."""
    import numpy as np

    p = signed["dir"] / "with_numpy_rng.pt"
    with pytest.raises(UnsafeContent, match="weights_only"):
        load(p, policy=signed["policy"])
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    got = load(p, policy=signed["policy"], safe_globals=allowed)
    assert got["rng"]["numpy"][0] == "MT19937"


def test_verify_result_is_returned(signed: dict[str, Any]) -> None:
    results: list[Any] = []
    load(signed["dir"] / "model.pt", policy=signed["policy"], verified=results)
    assert results[0].ok
    assert results[0].files_checked == 1


def test_not_a_checkpoint(signed: dict[str, Any], tmp_path: Path) -> None:
    from trainguard.integrity.signing import sign

    d = tmp_path / "txt"
    d.mkdir()
    (d / "config.json").write_text('{"a": 1}')
    (d / "notes.txt").write_text("hello")  # 'h' is a pickle opcode: torch.load fails on it
    sign(d, key=signed["keys"] / "alice.key")
    with pytest.raises(UsageError, match="not a PyTorch or safetensors"):
        load(d / "config.json", policy=signed["policy"])
    with pytest.raises(TrainguardError):
        load(d / "notes.txt", policy=signed["policy"])


def test_size_limit_and_fifo(signed: dict[str, Any], tmp_path: Path) -> None:
    import os

    with pytest.raises(LimitExceeded):
        load(signed["dir"] / "model.pt", policy=signed["policy"], max_bytes=10)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        load(fifo, policy=signed["policy"])


def test_single_file_signature(signed: dict[str, Any], tmp_path: Path) -> None:
    """A file signed on its own (``<file>.sig`` beside it) is verified as the model itself."""
    from trainguard.integrity.signing import sign

    f = tmp_path / "solo.pt"
    save_torch({"w": torch.arange(3.0)}, f)
    sign(f, key=signed["keys"] / "alice.key")
    assert (tmp_path / "solo.pt.sig").is_file()
    got = load(f, policy=signed["policy"])
    assert torch.equal(got["w"], torch.arange(3.0))
    flip_byte(f, member_offset(f, "/data/0"))
    with pytest.raises(TamperError):
        load(f, policy=signed["policy"])


def test_locate(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    f = d / "w.pt"
    f.write_bytes(b"x")
    assert locate(f, None, None) == (d, "w.pt", tmp_path / "m.sig")
    (d / "w.pt.sig").write_bytes(b"{}")
    assert locate(f, None, None) == (f, ".", d / "w.pt.sig")
    assert locate(f, None, d) == (d, "w.pt", tmp_path / "m.sig")
    with pytest.raises(UsageError):
        locate(f, None, tmp_path / "elsewhere")


def test_exported_from_package() -> None:
    import trainguard

    assert callable(trainguard.load)
    assert callable(trainguard.diff)
