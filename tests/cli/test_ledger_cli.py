"""``trainguard ledger``: the real entry point, exit codes and output."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainguard.cli.main import main
from trainguard.integrity.keys import PrivateKey


@pytest.fixture
def tg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TRAINGUARD_LEDGER", str(tmp_path / "ledger.db"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)

    def run(*args: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["ledger", *[str(a) for a in args]])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _keys(tmp_path: Path, name: str) -> tuple[Path, Path]:
    PrivateKey.generate().save(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
    return tmp_path / f"{name}.key", tmp_path / f"{name}.pub"


def test_help_has_examples(tg) -> None:  # type: ignore[no-untyped-def]
    for cmd in ("init", "append", "show", "query", "head", "verify", "proof", "witness", "serve",
                "export"):
        code, out, _ = tg(cmd, "--help")
        assert code == 0, cmd
        assert "Examples:" in out, cmd


def test_append_show_query_export(tg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert tg("init")[0] == 0
    code, out, _ = tg("append", "artifact.saved", "sha256:aa", "--details", '{"path": "a.pt"}')
    assert code == 0
    assert "appended entry 0" in out
    tg("append", "artifact.loaded", "sha256:aa")
    code, out, _ = tg("show", "-f", "json")
    rows = json.loads(out)
    assert [r["event"]["kind"] for r in rows] == ["artifact.saved", "artifact.loaded"]
    assert rows[0]["event"]["details"] == {"path": "a.pt"}
    code, out, _ = tg("query", "--kind", "artifact.loaded")
    assert code == 0
    assert "artifact.loaded" in out
    assert "artifact.saved" not in out
    code, out, _ = tg("show", "--tail", "1")
    assert "artifact.loaded" in out
    assert "artifact.saved" not in out
    assert tg("export", "-o", tmp_path / "events.jsonl")[0] == 0
    assert tg("append", "--from-jsonl", tmp_path / "events.jsonl")[1].count("appended") == 2
    code, out, _ = tg("export", "--openlineage")
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["eventType"] for x in lines] == ["RUNNING"] * 4
    assert tg("append", "artifact.saved")[0] == 2  # usage error
    assert tg("append", "a", "b", "--details", "[1]")[0] == 2
    assert tg("query", "--since", "not a time")[0] == 2


def test_verify_exit_codes_and_tampering(tg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, pub = _keys(tmp_path, "ledger")
    for i in range(5):
        tg("append", "artifact.saved", f"sha256:{i}", "--details", f'{{"path": "{i}.pt"}}')
    assert tg("head", "--key", key, "-o", tmp_path / "head.json")[0] == 0
    code, out, _ = tg("verify", "--head", tmp_path / "head.json", "--pubkey", pub)
    assert code == 0
    assert "signature checked" in out
    other_key, other_pub = _keys(tmp_path, "other")
    code, _, err = tg("verify", "--head", tmp_path / "head.json", "--pubkey", other_pub)
    assert code == 1
    conn = sqlite3.connect(tmp_path / "ledger.db")
    conn.execute("UPDATE ledger_entries SET entry = replace(entry, '2.pt', 'X.pt') WHERE idx = 2")
    conn.commit()
    conn.close()
    code, _, err = tg("verify", "--head", tmp_path / "head.json", "--pubkey", pub)
    assert code == 1
    assert "TAMPERED" in err
    assert "entry 2" in err
    code, out, _ = tg("verify", "--head", tmp_path / "head.json", "-f", "json")
    assert code == 1
    assert json.loads(out)["ok"] is False
    assert tg("verify", "--head", tmp_path / "missing.json")[0] == 2


def test_proof_and_witness(tg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, pub = _keys(tmp_path, "ledger")
    wkey, wpub = _keys(tmp_path, "witness")
    for i in range(6):
        tg("append", "run.started", f"run-{i}")
    tg("head", "--key", key, "-o", tmp_path / "h6.json")
    code, out, _ = tg("witness", tmp_path / "h6.json", "--key", wkey, "--ledger-pubkey", pub,
                      "-o", tmp_path / "c6.json")
    assert code == 0
    for i in range(6, 11):
        tg("append", "run.started", f"run-{i}")
    tg("head", "--key", key, "-o", tmp_path / "h11.json")
    assert tg("proof", "--consistency", "6", "--size", "11", "-o", tmp_path / "cp.json")[0] == 0
    code, _, err = tg("witness", tmp_path / "h11.json", "--key", wkey, "--proof",
                      tmp_path / "cp.json", "-o", tmp_path / "c11.json")
    assert code == 0, err
    code, out, _ = tg("verify", "--head", tmp_path / "c11.json", "--pubkey", pub,
                      "--witness-pubkey", wpub)
    assert code == 0
    # the witness refuses the older head now
    assert tg("witness", tmp_path / "h6.json", "--key", wkey)[0] == 1
    # inclusion proof saved and checked offline
    assert tg("proof", "3", "--head", tmp_path / "h11.json", "-o", tmp_path / "p3.json")[0] == 0
    code, out, _ = tg("proof", "--check", tmp_path / "p3.json", "--head", tmp_path / "h11.json",
                      "--pubkey", pub)
    assert code == 0
    assert "verifies against the head" in out
    assert tg("proof", "--check", tmp_path / "p3.json", "--head", tmp_path / "h6.json")[0] == 1
    doc = json.loads((tmp_path / "p3.json").read_text())
    doc["path"][0] = "00" * 32
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert tg("proof", "--check", tmp_path / "bad.json")[0] == 1
    (tmp_path / "junk.json").write_text("junk")
    assert tg("proof", "--check", tmp_path / "junk.json")[0] == 2


def test_serve_command_end_to_end(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0k3n\n")
    env = {**os.environ, "TRAINGUARD_LEDGER_TOKEN": "t0k3n"}
    proc = subprocess.Popen([sys.executable, "-m", "trainguard.cli.main", "ledger", "serve",
                             "--db", str(tmp_path / "srv.db"), "--port", "0", "--token-file",
                             str(token)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = line.rsplit(" at ", 1)[1].strip()
        out = subprocess.run([sys.executable, "-m", "trainguard.cli.main", "ledger", "append",
                              "artifact.saved", "sha256:bb", "--ledger", url],
                             capture_output=True, text=True, env=env, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        out = subprocess.run([sys.executable, "-m", "trainguard.cli.main", "ledger", "verify",
                              "--ledger", url], capture_output=True, text=True, env=env,
                             timeout=60, check=False)
        assert out.returncode == 0
        assert "1 entries" in out.stdout
        bad = {**env, "TRAINGUARD_LEDGER_TOKEN": "nope"}
        out = subprocess.run([sys.executable, "-m", "trainguard.cli.main", "ledger", "append",
                              "x.y", "z", "--ledger", url], capture_output=True, text=True,
                             env=bad, timeout=60, check=False)
        assert out.returncode == 2
        assert "401" in out.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    time.sleep(0)


def test_reading_a_missing_ledger_is_an_error(tg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for cmd in (["verify"], ["show"], ["head"], ["query"], ["export"]):
        code, _, err = tg(*cmd, "--ledger", tmp_path / "typo.db")
        assert code == 2, cmd
        assert "no ledger" in err
    assert not (tmp_path / "typo.db").exists()
