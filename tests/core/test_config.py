"""trainguard.toml: parsing, validation and discovery.

Unknown keys and wrong types are errors, so a typo never silently weakens a policy, and an
allow-list that would allow everything is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainguard.core.config import (
    CONFIG_NAME,
    Config,
    Limits,
    ScanConfig,
    find_config,
    load_config,
    parse_config,
)
from trainguard.core.errors import ConfigError, TrainguardError
from trainguard.core.findings import Severity


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRAINGUARD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    cfg = parse_config({})
    assert cfg == Config()
    assert cfg.scan.fail_on is Severity.MEDIUM
    assert cfg.scan.allow_globals == ()
    assert cfg.scan.limits == Limits()


def test_full_example_parses() -> None:
    cfg = parse_config({
        "scan": {
            "fail_on": "high",
            "allow": {"globals": ["mylab.models.TinyNet", "mylab.layers.*", "mylab.blocks.**"]},
            "limits": {"max_depth": 4, "max_members": 10, "max_expanded_bytes": 1 << 20},
        },
    }, source=Path("x.toml"))
    assert cfg.source == Path("x.toml")
    assert cfg.scan.fail_on is Severity.HIGH
    assert cfg.scan.allow_globals == ("mylab.models.TinyNet", "mylab.layers.*", "mylab.blocks.**")
    assert cfg.scan.limits.max_depth == 4
    assert cfg.scan.limits.max_members == 10
    assert cfg.scan.limits.max_expanded_bytes == 1 << 20
    # untouched limits keep their defaults
    assert cfg.scan.limits.max_pickle_opcodes == Limits().max_pickle_opcodes


def test_fail_on_is_case_insensitive() -> None:
    assert parse_config({"scan": {"fail_on": "CRITICAL"}}).scan.fail_on is Severity.CRITICAL


def test_tables_of_later_capabilities_are_accepted() -> None:
    parse_config({"trust": {}, "env": {}, "guard": {}, "ledger": {}})


def test_every_limit_can_be_set() -> None:
    names = list(Limits.__dataclass_fields__)
    cfg = parse_config({"scan": {"limits": dict.fromkeys(names, 7)}})
    assert all(getattr(cfg.scan.limits, n) == 7 for n in names)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"scna": {}}, "unknown key(s) in trainguard.toml: scna"),
        ({"scan": {"fail_on": "high", "failon": "low"}}, "unknown key(s) in [scan]: failon"),
        ({"scan": {"allow": {"global": ["a.b"]}}}, "unknown key(s) in [scan.allow]: global"),
        ({"scan": {"limits": {"max_dpeth": 3}}}, "unknown key(s) in [scan.limits]: max_dpeth"),
    ],
)
def test_unknown_keys_are_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        {"scan": "strict"},
        {"scan": {"fail_on": "severe"}},
        {"scan": {"fail_on": 3}},
        {"scan": {"allow": ["a.b"]}},
        {"scan": {"allow": {"globals": "mylab.models.Net"}}},
        {"scan": {"allow": {"globals": [1]}}},
        {"scan": {"allow": {"globals": [""]}}},
        {"scan": {"allow": {"globals": ["TinyNet"]}}},  # no module
        {"scan": {"limits": 5}},
        {"scan": {"limits": {"max_depth": "8"}}},
        {"scan": {"limits": {"max_depth": 8.5}}},
        {"scan": {"limits": {"max_depth": True}}},
        {"scan": {"limits": {"max_depth": 0}}},
        {"scan": {"limits": {"max_files": -1}}},
    ],
)
def test_bad_types_and_values_are_errors(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert isinstance(info.value, TrainguardError)
    assert info.value.diagnostics()  # something to print


@pytest.mark.parametrize("pattern", ["*", "**", "*.*", "*.**", "**.*", "*.*.*"])
def test_allow_everything_is_refused(pattern: str) -> None:
    with pytest.raises(ConfigError):
        parse_config({"scan": {"allow": {"globals": ["mylab.models.Net", pattern]}}})


@pytest.mark.parametrize("pattern", ["mylab.*", "mylab.**", "mylab.models.Net", "mylab.m*.Net"])
def test_own_package_patterns_are_accepted(pattern: str) -> None:
    config = parse_config({"scan": {"allow": {"globals": [pattern]}}})
    assert config.scan.allow_globals == (pattern,)


@pytest.mark.parametrize("pattern", ["mylab.", "mylab..Net", "*mylab.Net"])
def test_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ConfigError):
        parse_config({"scan": {"allow": {"globals": [pattern]}}})


def test_load_explicit_file(tmp_path: Path) -> None:
    p = tmp_path / "custom.toml"
    p.write_text('[scan]\nfail_on = "low"\n')
    cfg = load_config(p)
    assert cfg.scan.fail_on is Severity.LOW
    assert cfg.source == p


def test_load_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_load_invalid_toml_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[scan\nfail_on = ")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(p)


def test_load_without_file_gives_defaults() -> None:
    assert load_config() == Config()
    assert load_config(discover=False) == Config()


def test_discovery_walks_up_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / CONFIG_NAME).write_text('[scan]\nfail_on = "critical"\n')
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_config() == (tmp_path / CONFIG_NAME).resolve()
    assert load_config().scan.fail_on is Severity.CRITICAL
    assert load_config(discover=False).scan == ScanConfig()


def test_environment_variable_wins_over_discovery(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / CONFIG_NAME).write_text('[scan]\nfail_on = "critical"\n')
    other = tmp_path / "other.toml"
    other.write_text('[scan]\nfail_on = "low"\n')
    monkeypatch.setenv("TRAINGUARD_CONFIG", str(other))
    assert load_config().scan.fail_on is Severity.LOW


def test_config_values_are_frozen() -> None:
    cfg = parse_config({})
    with pytest.raises(AttributeError):
        cfg.scan.fail_on = Severity.INFO  # type: ignore[misc]
