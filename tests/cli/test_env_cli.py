"""``trainguard env`` through the real entry point: exit codes, formats, keys, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import Run, validate

from envcheck.helpers import Env, make_venv, pip_install
from trainguard.integrity.keys import PrivateKey


@pytest.fixture(scope="module")
def small_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("cli-env") / "venv"
    pip_install(make_venv(root), "six")
    return Env(root)


@pytest.fixture
def env(small_env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    # the variables of the test runner are not what these tests are about
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONPATH", "LD_PRELOAD",
                 "PYTHONHASHSEED", "LD_LIBRARY_PATH"):
        monkeypatch.delenv(name, raising=False)
    return small_env.copy(tmp_path / "env")


def test_snapshot_then_verify_clean(run: Run, env: Env, tmp_path: Path) -> None:
    snap = tmp_path / "snap.json"
    r = run("env", "snapshot", "--python", env.python, "-o", snap)
    assert r.code == 0, r
    assert "environment digest" in r.out
    assert json.loads(snap.read_bytes())["format"] == "trainguard.env-snapshot"
    r = run("env", "verify", "--python", env.python, "--against", snap)
    assert r.code == 0, r
    assert r.out.startswith("clean: ")
    r = run("env", "verify", "--against", snap, "--quick")
    assert r.code == 0, r


def test_tampered_env_exits_1_and_names_the_file(run: Run, env: Env, tmp_path: Path) -> None:
    six = env.site / "six.py"
    six.write_text(six.read_text() + "\n# injected\n")
    r = run("env", "verify", "--python", env.python)
    assert r.code == 1, r
    assert "TG-ENV-001" in r.out
    assert str(six) in r.out
    assert "FAILED" in r.out.splitlines()[-1]
    r = run("env", "verify", "--python", env.python, "--fail-on", "critical")
    assert r.code == 0, r


def test_json_and_sarif(run: Run, env: Env, tmp_path: Path) -> None:
    (env.site / "zz.pth").write_text("import os\n")
    out = tmp_path / "r.json"
    r = run("env", "verify", "--python", env.python, "-f", "json", "-o", out)
    assert r.code == 1, r
    doc = json.loads(out.read_text())
    validate(doc)
    assert [f["rule_id"] for f in doc["findings"]] == ["TG-ENV-006"]
    assert doc["findings"][0]["location"]["path"] == str(env.site / "zz.pth")
    r = run("env", "verify", "--python", env.python, "-f", "sarif")
    sarif = json.loads(r.out)
    result = sarif["runs"][0]["results"][0]
    assert result["ruleId"] == "TG-ENV-006"
    assert "zz.pth" in json.dumps(result["locations"])


def test_signed_snapshot(run: Run, env: Env, tmp_path: Path) -> None:
    key, pub = tmp_path / "env.key", tmp_path / "env.pub"
    PrivateKey.generate("p256").save(key, pub)
    snap = tmp_path / "snap.json"
    r = run("env", "snapshot", "--python", env.python, "-o", snap, "--key", key, "-f", "json")
    assert r.code == 0, r
    assert json.loads(r.out)["signature"] == str(snap) + ".sig"
    r = run("env", "verify", "--python", env.python, "--against", snap, "--pubkey", pub)
    assert r.code == 0, r
    snap.write_bytes(snap.read_bytes().replace(b'"six"', b'"six "', 1))
    r = run("env", "verify", "--against", snap, "--pubkey", pub, "--quick")
    assert r.code == 1, r
    assert "TG-ENV-016" in r.out
    moved = tmp_path / "elsewhere.sig"
    Path(str(snap) + ".sig").rename(moved)
    r = run("env", "verify", "--against", snap, "--pubkey", pub, "--signature", moved,
            "--quick")
    assert r.code == 1, r  # the moved signature still does not match the edited snapshot


def test_diff_exit_codes(run: Run, env: Env, tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run("env", "snapshot", "--python", env.python, "-o", a).code == 0
    assert run("env", "snapshot", "--python", env.python, "-o", b).code == 0
    r = run("env", "diff", a, b)
    assert r.code == 0, r
    assert "same" in r.out
    (env.site / "six.py").write_text("")
    assert run("env", "snapshot", "--python", env.python, "-o", b).code == 0
    r = run("env", "diff", a, b, "-f", "json")
    assert r.code == 1, r
    doc = json.loads(r.out)
    assert [p["name"] for p in doc["packages"]["changed"]] == ["six"]
    r = run("env", "diff", a, b, "--limit", "0", "-o", tmp_path / "d.txt")
    assert r.code == 1
    assert "six.py" in (tmp_path / "d.txt").read_text()


def test_lock_option(run: Run, env: Env, tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("six==1.16.0\n")
    r = run("env", "verify", "--python", env.python, "--lock", req)
    assert r.code == 1, r
    assert "TG-ENV-010" in r.out


@pytest.mark.parametrize("args", [
    ("env", "verify", "--quick"),
    ("env", "verify", "--against", "missing.json"),
    ("env", "verify", "--python", "/no/such/python"),
    ("env", "diff", "missing-a.json", "missing-b.json"),
    ("env", "snapshot"),
])
def test_usage_and_input_errors_exit_2(run: Run, args: tuple[str, ...]) -> None:
    r = run(*args)
    assert r.code == 2, r


def test_malformed_snapshot_exits_2(run: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "trainguard.env-snapshot", "format_version": 1, "files": 3}')
    r = run("env", "verify", "--against", bad, "--quick")
    assert r.code == 2, r
    assert "not a valid trainguard env snapshot" in r.err


def test_env_config_section(run: Run, env: Env, tmp_path: Path) -> None:
    import hashlib

    pth = env.site / "hook.pth"
    pth.write_text("import sys\n")
    cfg = tmp_path / "trainguard.toml"
    cfg.write_text(f'[env]\nallow_pth = ["sha256:{hashlib.sha256(pth.read_bytes()).hexdigest()}"]'
                   '\nfail_on = "high"\n')
    r = run("env", "verify", "--python", env.python, "-c", cfg)
    assert r.code == 0, r
    cfg.write_text("[env]\nunknown = 1\n")
    assert run("env", "verify", "--python", env.python, "-c", cfg).code == 2


def test_help_teaches(run: Run) -> None:
    for sub in ("snapshot", "verify", "diff"):
        r = run("env", sub, "--help")
        assert r.code == 0
        assert "Examples:" in r.out
