"""``trainguard env diff``: environment digest first, then packages, then files."""

from __future__ import annotations

import shutil
from pathlib import Path

from envcheck.helpers import Env, snapshot_to
from trainguard import envcheck


def test_identical_environments(env: Env, tmp_path: Path) -> None:
    a = snapshot_to(env, tmp_path / "a.json")
    other = Env(tmp_path / "node2")
    shutil.copytree(env.root, other.root, symlinks=True)
    b = snapshot_to(other, tmp_path / "b.json")
    d = envcheck.diff(a, b)
    assert d.same
    assert "same: identical" in d.render_text()
    assert d.to_dict()["packages"] == {}


def test_packages_then_files(env: Env, tmp_path: Path) -> None:
    a = snapshot_to(env, tmp_path / "a.json")
    six = env.site / "six.py"
    six.write_bytes(six.read_bytes() + b"\n# patched\n")
    shutil.rmtree(env.dist_info("idna"))
    shutil.rmtree(env.site / "idna")
    (env.site / "dropped.py").write_text("")
    b = snapshot_to(env, tmp_path / "b.json")
    d = envcheck.diff(a, b)
    assert not d.same
    assert [p["name"] for p in d.packages["changed"]] == ["six"]
    assert [p["name"] for p in d.packages["removed"]] == ["idna"]
    assert d.packages["added"] == []
    assert d.packages["version"] == []
    changed = {f["path"].rsplit("/", 1)[-1]: f for f in d.files["changed"]}
    assert "six.py" in changed
    assert changed["six.py"]["package"] == "six"
    assert [f["path"].rsplit("/", 1)[-1] for f in d.files["added"]] == ["dropped.py"]
    assert all(f["package"] == "idna" for f in d.files["removed"])
    text = d.render_text(limit=1)
    assert "package ! six" in text
    assert "package - idna" in text
    assert "more (--limit 0 shows all)" in text


def test_version_change(env: Env, tmp_path: Path) -> None:
    a = snapshot_to(env, tmp_path / "a.json")
    meta = env.dist_info("six") / "METADATA"
    meta.write_text(meta.read_text().replace("Version: 1.17.0", "Version: 9.9.9"))
    b = snapshot_to(env, tmp_path / "b.json")
    d = envcheck.diff(a, b)
    assert d.packages["version"] == [{"name": "six", "a": "1.17.0", "b": "9.9.9"}]
