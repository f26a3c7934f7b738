"""Tamper location in real PyTorch training checkpoints (torch.save of model + AdamW + RNG).

The attacker edits the saved state the way a sabotage would (load, change, save again); verify
must name the changed tensor, hyperparameter or RNG state from the signed checkpoint statement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fixtures.checkpoints import save_torch, train_state
from integrity.signkit import Team
from trainguard.integrity.signing import sign
from trainguard.integrity.trust import TrustPolicy
from trainguard.integrity.verify import verify

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path, TrustPolicy]:
    team = Team.create(tmp_path / "keys")
    ckpt = tmp_path / "run" / "step-2"
    ckpt.mkdir(parents=True)
    save_torch(train_state(), ckpt / "checkpoint.pt")
    sig = sign(ckpt, key=team.key("alice"), run={"run_id": "r1", "step": 2})
    policy = TrustPolicy.trusting(keys=[team.keys["alice"].public_key()])
    return ckpt, sig, policy


def _resave(ckpt: Path, edit: Any) -> None:
    state = torch.load(ckpt / "checkpoint.pt", weights_only=False)  # the attacker's side
    edit(state)
    torch.save(state, ckpt / "checkpoint.pt")


def _located(ckpt: Path, sig: Path, policy: TrustPolicy) -> dict[str, tuple[str, str]]:
    r = verify(ckpt, sig, policy=policy)
    assert not r.ok
    assert {(c["change"], c["file"]) for c in r.changes if c["kind"] == "file"} == {
        ("modified", "checkpoint.pt")}
    return {c["name"]: (c["change"], c["category"]) for c in r.changes if c["kind"] != "file"}


def test_untouched_checkpoint_verifies(signed: tuple[Path, Path, TrustPolicy]) -> None:
    ckpt, sig, policy = signed
    r = verify(ckpt, sig, policy=policy)
    assert r.ok
    assert r.checkpoint is not None
    assert r.checkpoint["run"] == {"run_id": "r1", "step": 2, "git_commit": r.checkpoint["run"][
        "git_commit"], "config_digest": None}


def test_changed_learning_rate_is_named(signed: tuple[Path, Path, TrustPolicy]) -> None:
    ckpt, sig, policy = signed
    _resave(ckpt, lambda s: s["optimizer"]["param_groups"][0].update(lr=1e-2))
    found = _located(ckpt, sig, policy)
    assert found == {"optimizer.param_groups.0.lr": ("changed", "optimizer")}
    r = verify(ckpt, sig, policy=policy)
    assert "TG-INT-005" in {p.rule_id for p in r.problems}


def test_changed_betas_are_named(signed: tuple[Path, Path, TrustPolicy]) -> None:
    ckpt, sig, policy = signed
    _resave(ckpt, lambda s: s["optimizer"]["param_groups"][0].update(betas=(0.5, 0.999)))
    assert _located(ckpt, sig, policy) == {
        "optimizer.param_groups.0.betas": ("changed", "optimizer")}


def test_replaced_tensor_is_named(signed: tuple[Path, Path, TrustPolicy]) -> None:
    ckpt, sig, policy = signed

    def edit(s: dict[str, Any]) -> None:
        s["model"]["2.weight"] = torch.zeros_like(s["model"]["2.weight"])

    _resave(ckpt, edit)
    found = _located(ckpt, sig, policy)
    assert found == {"model.2.weight": ("changed", "weights")}


def test_changed_rng_state_is_named(signed: tuple[Path, Path, TrustPolicy]) -> None:
    ckpt, sig, policy = signed

    def edit(s: dict[str, Any]) -> None:
        g = torch.Generator().manual_seed(1234)
        s["rng"]["cpu"] = g.get_state()

    _resave(ckpt, edit)
    found = _located(ckpt, sig, policy)
    assert found == {"rng.cpu": ("changed", "rng")}
