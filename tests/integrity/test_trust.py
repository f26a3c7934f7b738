"""The [trust] policy: validation (unknown keys are errors), decisions, fail closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from integrity.signkit import Team
from trainguard.core.config import load_config
from trainguard.core.errors import ConfigError
from trainguard.integrity.trust import TrustPolicy


@pytest.fixture
def team(tmp_path: Path) -> Team:
    return Team.create(tmp_path)


def _policy(team: Team, raw: dict[str, Any]) -> TrustPolicy:
    return TrustPolicy.from_section(raw, base_dir=team.dir)


BASE: dict[str, Any] = {
    "roles": {"engineer": {}, "reviewer": {}, "intern": {"cosign_by": ["reviewer"]}},
    "identities": {"alice": {"key": "alice.pub", "roles": ["engineer", "reviewer"]},
                   "ivan": {"key": "ivan.pub", "roles": ["intern"]}},
    "rules": [{"projects": ["llm"], "paths": ["shared/**"], "roles": ["engineer", "intern"]}],
}


@pytest.mark.parametrize(("patch", "message"), [
    ({"colour": "blue"}, "unknown key"),
    ({"roles": {"engineer": {"cosign": ["x"]}}}, "unknown key"),
    ({"roles": {"intern": {"cosign_by": ["boss"]}}}, "undeclared role"),
    ({"identities": {"x": {"key": "alice.pub", "roles": ["wizard"]}}}, "undeclared role"),
    ({"identities": {"x": {"key": "alice.pub", "subject": "CN=X", "roles": ["engineer"]}}},
     "not both"),
    ({"identities": {"x": {"roles": ["engineer"]}}}, "not neither"),
    ({"identities": {"x": {"key_id": "ab" * 32, "roles": ["engineer"]}}}, "key_id alone"),
    ({"identities": {"x": {"key": "missing.pub", "roles": ["engineer"]}}}, "cannot read"),
    ({"identities": {"x": {"key": "alice.pub", "roles": []}}}, "at least one role"),
    ({"rules": [{"roles": []}]}, "at least one role"),
    ({"rules": {"roles": ["engineer"]}}, "array of tables"),
    ({"rules": [{"roles": ["engineer"], "who": "me"}]}, "unknown key"),
    ({"certificate_time": "never"}, "certificate_time"),
    ({"require_crl": "yes"}, "require_crl"),
    ({"ca_roots": ["nope.pem"]}, "ca_roots"),
    ({"accept_ignore_paths": "optimizer"}, "accept_ignore_paths"),
])
def test_invalid_policies_are_config_errors(team: Team, patch: dict[str, Any],
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _policy(team, {**BASE, **patch})


def test_decisions(team: Team) -> None:
    p = _policy(team, BASE)
    shared = team.dir / "shared" / "ckpt-1"
    assert p.decide(["engineer"], project="llm", model_path=shared).allowed
    d = p.decide(["intern"], project="llm", model_path=shared)
    assert d.allowed
    assert d.cosign_by == ("reviewer",)
    # an identity with both roles needs no co-signature: one permitted role suffices
    assert p.decide(["intern", "engineer"], project="llm", model_path=shared).cosign_by == ()
    assert not p.decide(["reviewer"], project="llm", model_path=shared).allowed
    assert not p.decide(["engineer"], project="vision", model_path=shared).allowed
    assert not p.decide(["engineer"], project="llm", model_path=team.dir / "scratch").allowed
    assert not p.decide(["engineer"], project=None, model_path=shared).allowed


def test_default_project_and_wildcards(team: Team) -> None:
    p = _policy(team, {**BASE, "project": "llm"})
    assert p.decide(["engineer"], project=None, model_path=team.dir / "shared" / "x").allowed
    anywhere = _policy(team, {**BASE, "rules": [{"roles": ["engineer"]}]})
    assert anywhere.decide(["engineer"], project="any", model_path=Path("/tmp/x")).allowed


def test_empty_policies_trust_nobody(team: Team, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRAINGUARD_CONFIG", raising=False)
    for p in (TrustPolicy(), _policy(team, {**BASE, "rules": []}),
              _policy(team, {**BASE, "identities": {}}),
              TrustPolicy.from_config(load_config(None, discover=False))):
        assert p.empty
        assert not p.decide(["engineer"], project="llm", model_path=tmp_path).allowed


def test_ignore_paths_accepted_only_as_listed(team: Team) -> None:
    p = _policy(team, BASE)
    assert p.ignore_path_accepted(".git")
    assert p.ignore_path_accepted(".gitignore")
    assert not p.ignore_path_accepted("optimizer")
    p = _policy(team, {**BASE, "accept_ignore_paths": ["logs/"]})
    assert p.ignore_path_accepted("logs")
    assert not p.ignore_path_accepted(".git")


def test_policy_from_trainguard_toml(team: Team) -> None:
    p = TrustPolicy.from_config(load_config(team.config()))
    assert {i.name for i in p.identities} == {"alice", "rita", "ivan", "eve"}
    assert p.project == "llm"
    assert p.roles["intern"].cosign_by == ("reviewer",)
    assert p.for_key_id(team.keys["alice"].public_key().key_id).name == "alice"  # type: ignore[union-attr]
