"""``env verify --quick`` with the snapshot's quick index (docs/env.md "Quick index"): each
tamper class named from the packed index, the same findings from a snapshot written before the
index existed, and a FIFO swapped in for a file neither hangs nor is read."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from envcheck.helpers import Env, hits, snapshot_to, verify
from trainguard import envcheck
from trainguard.core.errors import InputError
from trainguard.core.report import Report
from trainguard.envcheck.quickindex import QuickIndex, find_member
from trainguard.envcheck.snapfile import load_snapshot


def _without_index(snap: Path, dest: Path) -> Path:
    """The snapshot as an older trainguard wrote it: no ``quick`` member."""
    doc = json.loads(snap.read_bytes())
    del doc["quick"]
    dest.write_text(json.dumps(doc, indent=1))
    assert find_member(dest.read_bytes()) is None
    return dest


def _both(env: Env, snap: Path, old: Path) -> tuple[Report, Report]:
    return verify(env, against=snap, quick=True), verify(env, against=old, quick=True)


def test_index_is_in_the_snapshot_and_matches_its_files(env: Env, tmp_path: Path) -> None:
    p = snapshot_to(env, tmp_path / "snap.json")
    member = find_member(p.read_bytes())
    assert member is not None
    assert member.startswith(b"tgq1:")
    packed = QuickIndex.decode(member)
    built = QuickIndex.from_snapshot(load_snapshot(p)[0])
    assert packed == built
    assert len(packed.names) == len(load_snapshot(p)[0].files) > 100
    assert json.loads(p.read_bytes())["quick"] == member.decode()  # still one JSON document


def test_size_ctime_added_and_removed_are_named(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    old = _without_index(snap, tmp_path / "old.json")
    grown = env.site / "six.py"
    with grown.open("ab") as fh:
        fh.write(b"\n# more\n")
    same_size = env.site / "idna" / "core.py"
    st = same_size.stat()
    data = same_size.read_bytes()
    same_size.write_bytes(data[:-1] + (b"#" if data[-1:] != b"#" else b" "))
    os.utime(same_size, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime moves
    gone = env.site / "packaging" / "tags.py"
    gone.unlink()
    added = env.site / "packaging" / "evil.py"
    added.write_text("import os\n")
    for report in _both(env, snap, old):
        changed = {f.location.path: f.evidence for f in report.findings
                   if f.rule_id == "TG-ENV-020"}
        assert changed.keys() == {str(grown), str(same_size)}
        assert changed[str(grown)].startswith("size ")
        assert "ctime changed" in changed[str(same_size)]
        assert hits(report, "TG-ENV-012") == [str(gone)]
        assert str(added) in hits(report, "TG-ENV-013")


def test_clean_environment_old_and_new_snapshot(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    old = _without_index(snap, tmp_path / "old.json")
    for report in _both(env, snap, old):
        assert report.findings == []


def test_directory_replaced_by_a_link_is_named(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    pkg = env.site / "idna"
    moved = env.site / "idna_moved"
    pkg.rename(moved)
    pkg.symlink_to(moved)  # same inodes behind a link: only the directory itself changed
    report = verify(env, against=snap, quick=True)
    assert str(pkg) in hits(report, "TG-ENV-020")


def test_malformed_index_is_an_input_error(env: Env, tmp_path: Path) -> None:
    p = snapshot_to(env, tmp_path / "snap.json")
    data = p.read_bytes()
    member = find_member(data)
    assert member is not None
    for bad in (b"tgq1:!!!!", b"tgq1:" + member[5:-8]):
        p.write_bytes(data.replace(member, bad))
        with pytest.raises(InputError, match="not a valid trainguard env snapshot"):
            envcheck.verify(against=p, quick=True)
    # a packing this version does not know (a later one): the JSON is read instead
    p.write_bytes(data.replace(member, b"tgq2:" + member[5:]))
    assert verify(env, against=p, quick=True).findings == []


def test_signed_snapshot_covers_the_index(env: Env, tmp_path: Path) -> None:
    from trainguard.integrity.keys import PrivateKey

    key = PrivateKey.generate()
    p = tmp_path / "snap.json"
    envcheck.save_snapshot(envcheck.snapshot(env.python, environ={}), p, key=key)
    assert verify(env, against=p, quick=True, pubkey=key.public_key()).findings == []
    # an index rewritten to describe a tampered file: the signature no longer verifies
    grown = env.site / "six.py"
    with grown.open("ab") as fh:
        fh.write(b"# x\n")
    snap, _ = load_snapshot(p)
    k = next(k for k in snap.files if k.endswith("site-packages/six.py"))
    snap.files[k] = snap.files[k]._replace(size=grown.stat().st_size,
                                           ctime_ns=grown.stat().st_ctime_ns)
    data = p.read_bytes()
    new_member = find_member(snap.to_bytes())
    old_member = find_member(data)
    assert new_member is not None
    assert old_member is not None
    assert new_member != old_member
    p.write_bytes(data.replace(old_member, new_member))
    report = verify(env, against=p, quick=True, pubkey=key.public_key())
    assert "TG-ENV-016" in {f.rule_id for f in report.findings}


def _no_hang(fn: object) -> object:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it never returns."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["v"] = fn()  # type: ignore[operator]
        except BaseException as exc:
            out["e"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "blocked on a FIFO"
    if "e" in out:
        raise out["e"]  # type: ignore[misc]
    return out["v"]


def test_fifo_swapped_in_is_named_and_never_read(env: Env, tmp_path: Path) -> None:
    snap = snapshot_to(env, tmp_path / "snap.json")
    target = env.site / "six.py"
    target.unlink()
    os.mkfifo(target)
    quick = _no_hang(lambda: verify(env, against=snap, quick=True))
    assert str(target) in hits(quick, "TG-ENV-020")  # type: ignore[arg-type]
    full = _no_hang(lambda: verify(env, against=snap))
    assert str(target) in {f.location.path for f in full.findings}  # type: ignore[attr-defined]


def test_quick_check_of_another_interpreter_is_a_finding(env: Env, base_env: Env,
                                                          tmp_path: Path) -> None:
    """`trainguard run --env-snapshot` checks the job's interpreter: a snapshot of some other
    environment must not pass as "clean" for it."""
    snap = snapshot_to(env, tmp_path / "snap.json")
    assert not verify(env, against=snap, quick=True).findings
    other = envcheck.verify(base_env.python, against=snap, quick=True, environ={})
    assert [f.rule_id for f in other.findings] == ["TG-ENV-015"]
    assert str(env.root) in other.findings[0].evidence
    assert str(base_env.root) in other.findings[0].evidence
