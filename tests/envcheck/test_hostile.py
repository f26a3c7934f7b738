"""Hostile environments and snapshots: bounded work, clean findings or clean errors, nothing
followed outside the environment, nothing executed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envcheck.helpers import Env, hits, snapshot_to, verify
from trainguard import envcheck
from trainguard.core.errors import InputError
from trainguard.envcheck.records import parse_record


def _append_record(env: Env, dist: str, text: str) -> Path:
    record = env.dist_info(dist) / "RECORD"
    record.write_text(record.read_text() + text)
    return record


def test_record_path_escaping_the_environment(env: Env) -> None:
    record = _append_record(env, "six", "../../../../../../../../etc/passwd,sha256=AAAA,1\n"
                                        "/etc/shadow,sha256=AAAA,1\n")
    report = verify(env)
    assert hits(report, "TG-ENV-017") == [str(record), str(record)]
    assert all("leaves the environment" in f.evidence for f in report.findings)
    assert not any("passwd" in f.location.path for f in report.findings)


def test_record_scripts_in_bin_are_inside_the_environment(env: Env) -> None:
    # console scripts are '../../../bin/x' rows: inside the prefix, so they are followed
    entries, problems = parse_record(b"../../../bin/tool,,\n", env.site, env.root)
    assert problems == []
    assert entries[0].path == str(env.root / "bin" / "tool")


def test_huge_and_garbled_record(env: Env) -> None:
    record = _append_record(env, "six", "x" * 300_000 + ",sha256=AA,1\n")
    report = verify(env)
    assert str(record) in hits(report, "TG-ENV-017")
    idna = env.dist_info("idna") / "RECORD"
    idna.write_bytes(os.urandom(4096) + b"\x00\n,,,,\n\"unterminated\n")
    report = verify(env)
    assert str(idna) in hits(report, "TG-ENV-017")
    # files the garbled RECORD no longer covers are unowned now, and named
    assert any("/idna/" in p for p in hits(report, "TG-ENV-003"))


def test_bad_hash_and_size_fields(env: Env) -> None:
    record = _append_record(env, "six", "six.py,md5=AAAA,1\nsix.py,sha256=@@@,1\n"
                                        "six.py,sha256=AAAA,-5\nsix.py,sha256,1\nsix.py,,\u00b2\n")
    found = [f for f in verify(env).findings if f.rule_id == "TG-ENV-017"]
    assert len(found) == 5
    assert {f.location.path for f in found} == {str(record)}


def test_record_too_large_is_not_parsed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainguard.envcheck import records

    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 100)
    report = verify(env)
    assert any("not parsed" in f.evidence for f in report.findings
               if f.rule_id == "TG-ENV-017")


def test_symlink_loops_and_links_in_place_of_files(env: Env) -> None:
    (env.site / "loop_a").symlink_to(env.site / "loop_b")
    (env.site / "loop_b").symlink_to(env.site / "loop_a")
    (env.site / "dirloop").mkdir()
    (env.site / "dirloop" / "up").symlink_to(env.site)
    six = env.site / "six.py"
    six.unlink()
    six.symlink_to("/dev/zero")  # never opened: hashing it would never end
    report = verify(env)
    assert str(six) in hits(report, "TG-ENV-001")
    assert "link" in next(f.evidence for f in report.findings if f.location.path == str(six))
    assert {"loop_a", "loop_b", "up"} <= {Path(p).name for p in hits(report, "TG-ENV-003")}
    snap = envcheck.snapshot(env.python, environ={})
    assert snap.files[str(six.relative_to(env.root))].digest == "/dev/zero"


def test_fifo_is_not_opened(env: Env) -> None:
    fifo = env.site / "idna" / "codec.py"
    fifo.unlink()
    os.mkfifo(fifo)
    report = verify(env)
    assert str(fifo) in hits(report, "TG-ENV-001")
    snapshot_to(env, env.root.parent / "snap.json")  # does not block either


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_a_finding(env: Env) -> None:
    target = env.site / "six.py"
    target.chmod(0)
    assert str(target) in hits(verify(env), "TG-ENV-021")


def test_pth_with_nul_bytes_and_huge_pth(env: Env) -> None:
    (env.site / "nul.pth").write_bytes(b"\x00\xff\nimport os\x00\n")
    (env.site / "big.pth").write_text("# pad\n" * 200_000 + "import os\n")  # > 1 MiB
    names = {Path(p).name for p in hits(verify(env), "TG-ENV-006")}
    assert names == {"nul.pth", "big.pth"}


def test_garbage_metadata_and_direct_url(env: Env) -> None:
    di = env.dist_info("six")
    (di / "METADATA").write_bytes(os.urandom(2000))
    (di / "direct_url.json").write_text("[" * 100_000)
    (di / "INSTALLER").write_bytes(b"\xff" * 10_000)
    snap = envcheck.snapshot(env.python, environ={})
    six = next(d for d in snap.distributions if d["dist_info"].endswith(di.name))
    assert six["name"] == "six"
    assert six["direct_url"] is None


# ----------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("content", [
    b"not json", b"[" * 200_000, b"[]", b'{"format": "other"}',
    b'{"format": "trainguard.env-snapshot", "format_version": 99}',
])
def test_malformed_snapshot_is_an_input_error(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "snap.json"
    p.write_bytes(content)
    with pytest.raises(InputError, match="not a valid trainguard env snapshot"):
        envcheck.verify(against=p, quick=True)


@pytest.mark.parametrize(("field", "value"), [
    ("files", []), ("files", {"a": ["file", "1", 0, 0, 0, None, -1]}),
    ("files", {"a": ["file", True, 0, 0, 0, None, -1]}),
    ("files", {"a": [[], 1, 0, 0, 0, None, 0]}),
    ("files", {"a": {"kind": "file"}}), ("interpreter", "x"), ("variables", {"A": 1}),
    ("distributions", [{"name": 1}]), ("dirs", {"x": [1, 2]}), ("hooks", "x"),
    ("environment_digest", None),
])
def test_snapshot_with_wrong_types(env: Env, tmp_path: Path, field: str,
                                   value: object) -> None:
    p = snapshot_to(env, tmp_path / "snap.json")
    doc = json.loads(p.read_bytes())
    doc[field] = value
    p.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="not a valid trainguard env snapshot"):
        envcheck.verify(against=p, quick=True)


def test_huge_snapshot_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainguard.envcheck import snapfile

    monkeypatch.setattr(snapfile, "MAX_SNAPSHOT_BYTES", 1000)
    p = tmp_path / "snap.json"
    p.write_bytes(b" " * 2000)
    with pytest.raises(InputError, match="larger than"):
        envcheck.verify(against=p, quick=True)


def test_snapshot_paths_outside_the_prefix_are_only_stat_ed(env: Env, tmp_path: Path) -> None:
    p = snapshot_to(env, tmp_path / "snap.json")
    doc = json.loads(p.read_bytes())
    doc["files"]["/dev/zero"] = ["file", 0, 420, 0, 0, "0" * 64, -1]
    p.write_text(json.dumps(doc))
    quick = envcheck.verify(against=p, quick=True, environ={})
    assert hits(quick, "TG-ENV-020") == ["/dev/zero"]


def test_garbage_signature(env: Env, tmp_path: Path) -> None:
    from trainguard.integrity.keys import PrivateKey

    p = snapshot_to(env, tmp_path / "snap.json")
    for junk in (b"", b"{", b'{"format": "trainguard.env-snapshot-signature", "signature": "@"}',
                 b"[" * 100_000):
        Path(str(p) + ".sig").write_bytes(junk)
        pub = PrivateKey.generate().public_key()
        report = envcheck.verify(env.python, against=p, pubkey=pub, environ={}, quick=True)
        assert [f.rule_id for f in report.findings] == ["TG-ENV-016"]


def test_not_an_interpreter(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '{\"not\": \"a probe\"}'\n")
    fake.chmod(0o755)
    with pytest.raises(InputError, match="unusable probe result"):
        envcheck.verify(fake, environ={})
    with pytest.raises(InputError, match="does not exist"):
        envcheck.verify(tmp_path / "missing", environ={})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000) | st.lists(
    st.sampled_from([*"ab/.\\,=\"\n\r\x00-_0123456789²", "sha256=", "../", "/"]),
    max_size=200).map(lambda parts: "".join(parts).encode()))
def test_parse_record_never_raises_and_stays_inside(data: bytes) -> None:
    base, root = Path("/env/lib/python3.11/site-packages"), Path("/env")
    entries, problems = parse_record(data, base, root)
    for e in entries:
        assert e.path == "/env" or e.path.startswith("/env/")
        assert os.path.normpath(e.path) == e.path
    assert all(p.row >= 0 for p in problems)


def test_fifo_in_place_of_metadata_and_pth(env: Env) -> None:
    di = env.dist_info("six")
    for name in ("METADATA", "INSTALLER", "direct_url.json"):
        p = di / name
        if p.exists():
            p.unlink()
        os.mkfifo(p)
    os.mkfifo(env.site / "hang.pth")
    report = verify(env)  # returns: nothing blocks on a FIFO
    assert str(di / "METADATA") in hits(report, "TG-ENV-001")
