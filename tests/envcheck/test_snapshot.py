"""Snapshots of real venvs: content, digests, format round trip and detached signatures."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from envcheck.helpers import Env, hits, snapshot_to, verify
from trainguard import envcheck
from trainguard.core.findings import Severity
from trainguard.envcheck.snapfile import FORMAT, FORMAT_VERSION, load_snapshot
from trainguard.integrity.keys import PrivateKey


def test_snapshot_records_everything(editable_env: Env, tmp_path: Path) -> None:
    env = editable_env.copy(tmp_path / "env")
    (env.site / "unowned_data.bin").write_bytes(b"\x00" * 10)
    (env.site / "sitecustomize.py").write_text("X = 1\n")
    snap = envcheck.snapshot(env.python, environ={"LD_PRELOAD": "x.so", "HOME": "/root",
                                                  "PYTHONPATH": "/opt"})
    by_name = {d["name"]: d for d in snap.distributions}
    assert set(by_name) == {"six", "idna", "packaging", "setuptools", "coverage", "tinyproj"}
    assert by_name["six"]["installer"] == "pip"
    assert by_name["tinyproj"]["editable"] is True
    assert by_name["tinyproj"]["direct_url"]["dir_info"] == {"editable": True}
    assert all(len(d["digest"]) == 64 for d in snap.distributions)
    site = str(env.site.relative_to(env.root))
    six = snap.files[f"{site}/six.py"]
    assert six.digest == hashlib.sha256((env.site / "six.py").read_bytes()).hexdigest()
    assert six.owner >= 0
    assert snap.distributions[six.owner]["name"] == "six"
    assert any(k.endswith(".pyc") for k in snap.files)
    assert snap.files[f"{site}/unowned_data.bin"].owner == -1
    assert f"{site}/distutils-precedence.pth" in snap.files
    assert "pyvenv.cfg" in snap.files
    hooks = {h["path"].rsplit("/", 1)[-1]: h for h in snap.hooks}
    assert hooks["distutils-precedence.pth"]["owner"] == "setuptools"
    assert hooks["a1_coverage.pth"]["exec_lines"]
    assert hooks["sitecustomize.py"]["kind"] == "sitecustomize"
    assert any(n.startswith("__editable__") for n in hooks)
    assert snap.variables == {"LD_PRELOAD": "x.so", "PYTHONPATH": "/opt"}
    real = os.path.realpath(env.python)
    assert snap.interpreter_sha256 == hashlib.sha256(Path(real).read_bytes()).hexdigest()
    assert snap.interpreter.prefix == str(env.root)


def test_format_round_trip(env: Env, tmp_path: Path) -> None:
    path = snapshot_to(env, tmp_path / "snap.json")
    doc = json.loads(path.read_bytes())
    assert doc["format"] == FORMAT
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["file_fields"] == ["kind", "size", "mode", "mtime_ns", "ctime_ns", "digest",
                                  "owner"]
    snap, data = load_snapshot(path)
    assert data == path.read_bytes()
    assert snap.to_bytes() == data  # writing what was read gives the same bytes


def test_environment_digest_is_location_independent(env: Env, tmp_path: Path) -> None:
    a = envcheck.snapshot(env.python, environ={})
    moved = tmp_path / "moved" / "elsewhere"
    shutil.copytree(env.root, moved, symlinks=True)
    b = envcheck.snapshot(moved / "bin" / "python", environ={})
    assert a.interpreter.prefix != b.interpreter.prefix
    assert a.environment_digest == b.environment_digest
    target = Env(moved).site / "six.py"
    target.write_bytes(target.read_bytes() + b"\n")
    c = envcheck.snapshot(moved / "bin" / "python", environ={})
    assert c.environment_digest != a.environment_digest
    six_a = next(d for d in a.distributions if d["name"] == "six")["digest"]
    six_c = next(d for d in c.distributions if d["name"] == "six")["digest"]
    idna_a = next(d for d in a.distributions if d["name"] == "idna")["digest"]
    idna_c = next(d for d in c.distributions if d["name"] == "idna")["digest"]
    assert six_a != six_c
    assert idna_a == idna_c


def test_python_may_name_the_venv_directory(env: Env) -> None:
    assert envcheck.snapshot(env.root, environ={}).interpreter.prefix == str(env.root)


# ----------------------------------------------------------------------------- signatures


@pytest.fixture
def signed(env: Env, tmp_path: Path) -> tuple[Path, PrivateKey]:
    key = PrivateKey.generate("p256")
    path = tmp_path / "snap.json"
    sig = envcheck.save_snapshot(envcheck.snapshot(env.python, environ={}), path, key=key)
    assert sig == Path(str(path) + ".sig")
    return path, key


def test_signed_snapshot_verifies(env: Env, signed: tuple[Path, PrivateKey]) -> None:
    path, key = signed
    assert verify(env, against=path, pubkey=key.public_key()).findings == []
    assert verify(env, against=path, pubkey=key.public_key(), quick=True).findings == []


def test_tampered_snapshot_fails_the_signature(env: Env,
                                               signed: tuple[Path, PrivateKey]) -> None:
    path, key = signed
    doc = json.loads(path.read_bytes())
    # an insider re-snapshots after editing six.py and keeps the old signature
    six_key = next(k for k in doc["files"] if k.endswith("/six.py"))
    doc["files"][six_key][5] = "0" * 64
    path.write_text(json.dumps(doc))
    report = verify(env, against=path, pubkey=key.public_key())
    assert hits(report, "TG-ENV-016") == [str(path) + ".sig"]
    assert report.exit_code(Severity.MEDIUM) == 1


def test_wrong_key_and_missing_signature_fail(env: Env,
                                              signed: tuple[Path, PrivateKey]) -> None:
    path, _key = signed
    other = PrivateKey.generate("p256").public_key()
    wrong = verify(env, against=path, pubkey=other)
    assert [f.severity for f in wrong.findings] == [Severity.CRITICAL]
    Path(str(path) + ".sig").rename(path.with_suffix(".moved"))
    missing = verify(env, against=path, pubkey=other)
    assert hits(missing, "TG-ENV-016") == [str(path)]


def test_signature_not_checked_without_a_key_is_low(env: Env,
                                                    signed: tuple[Path, PrivateKey]) -> None:
    path, _key = signed
    report = verify(env, against=path)
    assert [(f.rule_id, f.severity) for f in report.findings] == [("TG-ENV-016", Severity.LOW)]


def test_site_directory_named_twice_is_walked_once(env: Env) -> None:
    # Fedora-style platlibdir: lib64/pythonX.Y/site-packages and lib/... are one directory
    from dataclasses import replace

    from trainguard.envcheck.probe import probe

    lib64 = env.root / "lib64"
    if not lib64.exists():
        lib64.symlink_to("lib")
    interp = probe(env.python)
    twice = replace(interp, site_dirs=(str(lib64 / env.site.relative_to(env.root / "lib")),
                                       *interp.site_dirs))
    assert len(twice.existing_site_dirs()) == 1
