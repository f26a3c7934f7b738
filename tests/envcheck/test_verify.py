"""``trainguard env verify`` on real venvs: each tamper class found with the file named; clean
environments (pip, editable, no-.pyc installs) produce no finding."""

from __future__ import annotations

import os
import py_compile
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from envcheck.helpers import Env, failing, hits, names, rewrite_record, snapshot_to, verify
from trainguard.core.findings import Severity
from trainguard.envcheck import EnvPolicy
from trainguard.envcheck.lock import load_lock

# ----------------------------------------------------------------------------- clean


def test_clean_pip_env_has_no_finding(env: Env, tmp_path: Path) -> None:
    # setuptools' distutils-precedence.pth and coverage's a1_coverage.pth run code at start-up;
    # both are known good by owner and RECORD hash
    assert (env.site / "distutils-precedence.pth").exists()
    assert (env.site / "a1_coverage.pth").exists()
    report = verify(env)
    assert report.findings == [], failing(report, Severity.INFO)
    snap = snapshot_to(env, tmp_path / "snap.json")
    assert verify(env, against=snap).findings == []
    assert verify(env, against=snap, quick=True).findings == []


def test_clean_editable_install_has_no_finding(editable_env: Env) -> None:
    pth = next(editable_env.site.glob("__editable__.tinyproj*.pth"))
    assert pth.read_text().startswith("import __editable___")  # an executable hook
    report = verify(editable_env)
    assert report.findings == [], failing(report, Severity.INFO)


def test_clean_install_without_pyc_has_no_finding(nocompile_env: Env, tmp_path: Path) -> None:
    env = nocompile_env.copy(tmp_path / "env")
    assert not list(env.site.rglob("*.pyc"))
    snap = snapshot_to(env, tmp_path / "snap.json")
    assert verify(env).findings == []
    # the job's first run writes __pycache__ files: derived from their sources, not tampering
    run_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([str(env.python), "-c", "import six, idna"], check=True, env=run_env)
    assert list(env.site.rglob("*.pyc"))
    assert verify(env).findings == []
    for quick in (False, True):
        report = verify(env, against=snap, quick=quick)
        assert not failing(report), failing(report)
        assert {f.rule_id for f in report.findings} <= {"TG-ENV-013"}  # low: compiled later


# ----------------------------------------------------------------------------- RECORD


def test_modified_file_is_named(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    six = env.site / "six.py"
    six.write_text(six.read_text() + "\nimport os  # injected\n")
    report = verify(env)
    assert hits(report, "TG-ENV-001") == [str(six)]
    assert report.exit_code(Severity.MEDIUM) == 1
    assert str(six) in hits(verify(env, against=snap), "TG-ENV-011")
    assert str(six) in hits(verify(env, against=snap, quick=True), "TG-ENV-020")


def test_same_size_modification_is_found_by_hash(env: Env) -> None:
    target = env.site / "idna" / "core.py"
    data = bytearray(target.read_bytes())
    data[100] = ord("X") if data[100] != ord("X") else ord("Y")
    target.write_bytes(bytes(data))
    report = verify(env)
    assert hits(report, "TG-ENV-001") == [str(target)]
    assert [f.evidence[:6] for f in report.findings if f.rule_id == "TG-ENV-001"] == ["sha256"]


def test_missing_file_is_named(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    gone = env.site / "idna" / "codec.py"
    gone.unlink()
    assert str(gone) in hits(verify(env), "TG-ENV-002")
    assert str(gone) in hits(verify(env, against=snap), "TG-ENV-012")
    assert str(gone) in hits(verify(env, against=snap, quick=True), "TG-ENV-012")


def test_unowned_module_is_named(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    dropped = env.site / "torch_patch.py"
    dropped.write_text("X = 1\n")
    data = env.site / "notes.txt"
    data.write_text("hello\n")
    report = verify(env)
    sev = {Path(f.location.path).name: f.severity for f in report.findings}
    assert sev == {"torch_patch.py": Severity.MEDIUM, "notes.txt": Severity.LOW}
    assert names(report, "TG-ENV-003") == {"torch_patch.py", "notes.txt"}
    against = verify(env, against=snap)
    assert names(against, "TG-ENV-013") == {"torch_patch.py", "notes.txt"}
    assert str(dropped) in hits(verify(env, against=snap, quick=True), "TG-ENV-013")


def test_record_rewritten_with_the_edit_is_caught(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    time.sleep(1.1)
    six = env.site / "six.py"
    six.write_text(six.read_text() + "\n# edited\n")
    rewrite_record(env, "six", "six.py")
    record = env.dist_info("six") / "RECORD"
    # RECORD hashes alone now agree ...
    report = verify(env)
    assert not hits(report, "TG-ENV-001")
    # ... but the .pyc header still describes the old source,
    assert {n.split(".")[0] for n in names(report, "TG-ENV-005")} == {"six"}
    # RECORD was written long after INSTALLER (the heuristic, with a short allowance here),
    late = verify(env, policy=EnvPolicy(record_slack_seconds=0.5))
    assert str(record) in hits(late, "TG-ENV-004")
    # and the snapshot names both the RECORD and the file.
    against = verify(env, against=snap)
    assert str(record) in hits(against, "TG-ENV-004")
    assert str(six) in hits(against, "TG-ENV-011")


# ----------------------------------------------------------------------------- .pyc


def _pyc_of(env: Env, module: str) -> tuple[Path, Path]:
    src = env.site / f"{module}.py"
    return src, next((env.site / "__pycache__").glob(f"{module}.cpython-*.pyc"))


def test_pyc_with_stale_timestamp_header_is_named(env: Env) -> None:
    src, pyc = _pyc_of(env, "six")
    data = bytearray(pyc.read_bytes())
    data[8:12] = struct.pack("<I", (struct.unpack("<I", data[8:12])[0] + 7) & 0xFFFFFFFF)
    pyc.write_bytes(bytes(data))
    report = verify(env)
    assert hits(report, "TG-ENV-005") == [str(pyc)]
    assert report.findings[0].severity == Severity.MEDIUM


def test_unchecked_hash_pyc_from_other_source_is_named(env: Env, tmp_path: Path) -> None:
    src, pyc = _pyc_of(env, "six")
    other = tmp_path / "six.py"
    other.write_text("print('not six')\n")
    py_compile.compile(str(other), cfile=str(pyc),
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    report = verify(env)
    found = [f for f in report.findings if f.rule_id == "TG-ENV-005"]
    assert [f.location.path for f in found] == [str(pyc)]
    assert found[0].severity == Severity.HIGH
    assert "without checking" in found[0].evidence


def test_pyc_with_forged_header_is_caught_by_the_snapshot(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    src, pyc = _pyc_of(env, "six")
    other = tmp_path / "evil.py"
    other.write_text("print('not six')\n")
    evil = tmp_path / "evil.pyc"
    py_compile.compile(str(other), cfile=str(evil))
    # keep the real header (source mtime and size) so CPython would load the forged code
    pyc.write_bytes(pyc.read_bytes()[:16] + evil.read_bytes()[16:])
    assert not hits(verify(env), "TG-ENV-005")  # headers alone cannot see it
    assert str(pyc) in hits(verify(env, against=snap), "TG-ENV-011")


# ----------------------------------------------------------------------------- hooks


def test_executable_pth_is_named(env: Env) -> None:
    pth = env.site / "zz_telemetry.pth"
    pth.write_text("import os; os.environ.setdefault('TG_TEST_MARK', '1')\n")
    report = verify(env)
    assert hits(report, "TG-ENV-006") == [str(pth)]
    assert "owned by no distribution" in report.findings[0].evidence


def test_pth_path_outside_the_environment_is_named(env: Env, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    pth = env.site / "extra.pth"
    pth.write_text(f"{outside}\n")
    assert hits(verify(env), "TG-ENV-022") == [str(pth)]


def test_allow_listed_pth_that_was_edited_is_no_longer_allowed(env: Env) -> None:
    pth = env.site / "distutils-precedence.pth"
    pth.write_text(pth.read_text().rstrip("\n") + "; __import__('os').getpid()\n")
    report = verify(env)
    assert str(pth) in hits(report, "TG-ENV-001")
    assert str(pth) in hits(report, "TG-ENV-006")


def test_pth_allowed_by_digest(env: Env) -> None:
    import hashlib

    pth = env.site / "site_hook.pth"
    pth.write_text("import sys\n")
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    assert hits(verify(env), "TG-ENV-006") == [str(pth)]
    assert not hits(verify(env, policy=EnvPolicy(allow_pth=frozenset({digest}))), "TG-ENV-006")


@pytest.mark.parametrize("name", ["sitecustomize.py", "usercustomize.py"])
def test_customize_module_is_named(env: Env, name: str) -> None:
    mod = env.site / name
    mod.write_text("import os\n")
    assert hits(verify(env), "TG-ENV-007") == [str(mod)]


def test_sitecustomize_package_is_named(env: Env) -> None:
    pkg = env.site / "sitecustomize"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    assert hits(verify(env), "TG-ENV-007") == [str(pkg)]


def test_nothing_from_the_environment_runs(env: Env, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    (env.site / "sitecustomize.py").write_text(f"open({str(mark)!r}, 'w').close()\n")
    (env.site / "aa_hook.pth").write_text(f"import os; open({str(mark) + '2'!r}, 'w')\n")
    snapshot_to(env, tmp_path / "snap.json")
    verify(env, against=tmp_path / "snap.json")
    assert not mark.exists()
    assert not Path(str(mark) + "2").exists()


# ----------------------------------------------------------------------------- permissions


def test_group_writable_file_is_named(env: Env) -> None:
    target = env.site / "six.py"
    target.chmod(0o664)
    report = verify(env)
    assert hits(report, "TG-ENV-008") == [str(target)]
    assert report.findings[0].severity == Severity.MEDIUM


def test_world_writable_directory_is_named(env: Env) -> None:
    target = env.site / "idna"
    target.chmod(0o777)
    found = [f for f in verify(env).findings if f.rule_id == "TG-ENV-008"]
    assert [f.location.path for f in found] == [str(target)]
    assert found[0].severity == Severity.HIGH


# ----------------------------------------------------------------------------- lock files


def test_packages_not_in_requirements_are_named(env: Env, tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("six==1.17.0 \\\n    --hash=sha256:00\nidna==0.1  # wrong version\n"
                   "-r other.txt\ncoverage\n")
    report = verify(env, lock=req)
    assert {Path(p).name.split("-")[0] for p in hits(report, "TG-ENV-009")} == {"packaging"}
    assert {Path(p).name.split("-")[0] for p in hits(report, "TG-ENV-010")} == {"idna"}


def test_uv_lock_and_pylock(env: Env, tmp_path: Path) -> None:
    uv = tmp_path / "uv.lock"
    uv.write_text('version = 1\n[[package]]\nname = "six"\nversion = "1.17.0"\n'
                  '[[package]]\nname = "idna"\nversion = "3.20"\n')
    pylock = tmp_path / "pylock.toml"
    pylock.write_text('lock-version = "1.0"\n[[packages]]\nname = "Six"\nversion = "1.17.0"\n')
    assert load_lock(uv).packages == {"six": "1.17.0", "idna": "3.20"}
    assert load_lock(pylock).kind == "pylock"
    uv_missing = {Path(p).name.split("-")[0] for p in hits(verify(env, lock=uv), "TG-ENV-009")}
    assert uv_missing == {"packaging", "coverage"}  # setuptools: installer tooling
    py_missing = {Path(p).name.split("-")[0] for p in hits(verify(env, lock=pylock),
                                                              "TG-ENV-009")}
    assert py_missing == {"packaging", "coverage", "idna"}


# ----------------------------------------------------------------------------- variables


def test_loader_variables(env: Env, tmp_path: Path) -> None:
    report = verify(env, environ={"LD_PRELOAD": "/tmp/hook.so"})
    assert hits(report, "TG-ENV-018") == ["$LD_PRELOAD"]
    snap = snapshot_to(env, tmp_path / "snap.json", environ={"PYTHONPATH": "/opt/a"})
    assert verify(env, against=snap, environ={"PYTHONPATH": "/opt/a"}).findings == []
    changed = verify(env, against=snap, environ={"PYTHONPATH": "/opt/b"})
    assert hits(changed, "TG-ENV-018") == ["$PYTHONPATH"]


# ----------------------------------------------------------------------------- snapshot only


def test_distribution_and_interpreter_changes(env: Env, nocompile_env: Env,
                                              tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    other = nocompile_env.copy(tmp_path / "other")
    report = verify(other, against=snap)
    assert hits(report, "TG-ENV-015")  # another prefix and executable
    removed = [f.evidence for f in report.findings if f.rule_id == "TG-ENV-014"]
    assert any("packaging" in e and "removed" in e for e in removed)


def test_new_distribution_since_snapshot(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    fake = env.site / "extra-1.0.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: extra\nVersion: 1.0\n")
    (fake / "RECORD").write_text("extra-1.0.dist-info/METADATA,,\nextra-1.0.dist-info/RECORD,,\n")
    report = verify(env, against=snap)
    assert any("extra 1.0 was added" in f.evidence for f in report.findings)
    assert str(fake / "METADATA") in hits(report, "TG-ENV-013")


def test_quick_mode_names_the_changed_file_without_hashing(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    target = env.site / "packaging" / "version.py"
    os.chmod(target, 0o644)  # metadata-only change: ctime moves, content does not
    report = verify(env, against=snap, quick=True)
    assert hits(report, "TG-ENV-020") == [str(target)]
    assert "ctime changed" in report.findings[0].evidence
    # the full check settles it: same bytes
    assert verify(env, against=snap).findings == []


def test_copy_keeps_permissions_and_nothing_else_changes(env: Env, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    shutil.copytree(env.root, dest, symlinks=True)
    assert verify(Env(dest)).findings == []
