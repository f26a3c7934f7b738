"""``trainguard keygen / sign / verify / cosign`` through the real entry point.

Exit codes: 0 verified, 1 verification failed, 2 usage error or unreadable input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_helpers import Run

from integrity.signkit import CA, make_model, pem
from trainguard.core.events import read_jsonl
from trainguard.integrity.keys import PrivateKey


@pytest.fixture
def keys(run: Run, tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    for who in ("alice", "rita", "ivan"):
        r = run("keygen", "-o", d / f"{who}.key")
        assert r.code == 0, r.err
        assert "key id:" in r.out
    return d


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path)


def test_keygen_refuses_to_overwrite_and_sets_mode(run: Run, keys: Path) -> None:
    assert oct((keys / "alice.key").stat().st_mode & 0o777) == "0o600"
    assert (keys / "alice.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    r = run("keygen", "-o", keys / "alice.key")
    assert r.code == 2
    assert "refusing to overwrite" in r.err


def test_keygen_encrypted_p384(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINGUARD_KEY_PASSWORD", "s3cret")
    r = run("keygen", "-o", tmp_path / "k.key", "--public", tmp_path / "k.pem", "--curve", "p384")
    assert r.code == 0
    assert b"ENCRYPTED" in (tmp_path / "k.key").read_bytes()
    assert PrivateKey.load(tmp_path / "k.key").key.curve.name == "secp384r1"


def test_sign_then_verify_with_key(run: Run, keys: Path, model: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text("lr: 0.001\n")
    r = run("sign", model, "--key", keys / "alice.key", "--step", "100", "--run-id", "r-7",
            "--run-config", cfg, "--events", tmp_path / "events.jsonl")
    assert r.code == 0, r.err
    sig = tmp_path / "model.sig"
    assert sig.exists()
    assert Path(str(sig) + ".trainguard.json").exists()
    r = run("verify", model, "--key", keys / "alice.pub", "--events", tmp_path / "events.jsonl")
    assert r.code == 0, r.out + r.err
    assert r.out.startswith("VERIFIED")
    assert "step=100" in r.out
    assert "run_id=r-7" in r.out
    kinds = [e.kind for e in read_jsonl(tmp_path / "events.jsonl")]
    assert kinds == ["artifact.signed", "artifact.verified"]
    r = run("verify", model, "-s", sig, "--key", keys / "alice.pub", "-f", "json")
    doc = json.loads(r.out)
    assert doc["ok"] is True
    assert doc["checkpoint"]["run"]["config_digest"].startswith("sha256:")


def test_verify_failure_exits_1_and_names_the_change(run: Run, keys: Path, model: Path,
                                                     tmp_path: Path) -> None:
    assert run("sign", model, "--key", keys / "alice.key").code == 0
    data = bytearray((model / "model.safetensors").read_bytes())
    data[-1] ^= 0x80
    (model / "model.safetensors").write_bytes(bytes(data))
    r = run("verify", model, "--key", keys / "alice.pub")
    assert r.code == 1
    assert "TG-INT-001" in r.out
    assert "TG-INT-004" in r.out
    assert "head.bias" in r.out
    out = tmp_path / "result.json"
    r = run("verify", model, "--key", keys / "alice.pub", "-f", "json", "-o", out)
    assert r.code == 1
    assert r.out == ""
    doc = json.loads(out.read_text())
    assert {c["name"] for c in doc["changes"] if c["kind"] == "tensor"} == {"head.bias"}


def test_partial_verify_with_files(run: Run, keys: Path, model: Path) -> None:
    assert run("sign", model, "--key", keys / "alice.key").code == 0
    (model / "config.json").write_text("{}\n")
    assert run("verify", model, "--key", keys / "alice.pub", "--files",
               "model.safetensors").code == 0
    assert run("verify", model, "--key", keys / "alice.pub", "--files", "model.safetensors",
               "--files", "config.json").code == 1


def test_wrong_key_and_no_policy_fail_closed(run: Run, keys: Path, model: Path) -> None:
    assert run("sign", model, "--key", keys / "alice.key").code == 0
    r = run("verify", model, "--key", keys / "rita.pub")
    assert r.code == 1
    assert "TG-SIG-003" in r.out
    r = run("verify", model)  # no trainguard.toml, no --key: nobody is trusted
    assert r.code == 1
    assert "TG-SIG-007" in r.out


def test_policy_file_two_person_rule_and_cosign(run: Run, keys: Path, model: Path,
                                                tmp_path: Path) -> None:
    (tmp_path / "trainguard.toml").write_text(f"""\
[trust]
project = "llm"

[trust.roles.engineer]
[trust.roles.reviewer]
[trust.roles.intern]
cosign_by = ["reviewer"]

[trust.identities.ivan]
key = "{keys / 'ivan.pub'}"
roles = ["intern"]

[trust.identities.rita]
key = "{keys / 'rita.pub'}"
roles = ["reviewer"]

[[trust.rules]]
projects = ["llm"]
roles = ["engineer", "intern"]
""")
    assert run("sign", model, "--key", keys / "ivan.key").code == 0
    r = run("verify", model)  # trainguard.toml discovered in the cwd
    assert r.code == 1
    assert "TG-SIG-009" in r.out
    r = run("cosign", model, "--key", keys / "rita.key", "--events", tmp_path / "ev.jsonl")
    assert r.code == 0, r.err
    r = run("verify", model, "--policy", tmp_path / "trainguard.toml")
    assert r.code == 0, r.out
    assert "cosigner: rita [reviewer]" in r.out
    assert [e.kind for e in read_jsonl(tmp_path / "ev.jsonl")] == ["artifact.cosigned"]
    r = run("verify", model, "--project", "vision")
    assert r.code == 1
    assert "TG-SIG-007" in r.out


def test_cosign_of_a_changed_model_exits_1(run: Run, keys: Path, model: Path) -> None:
    assert run("sign", model, "--key", keys / "ivan.key").code == 0
    (model / "new.bin").write_bytes(b"x")
    r = run("cosign", model, "--key", keys / "rita.key")
    assert r.code == 1
    assert "added: new.bin" in r.err
    assert run("cosign", model, "--key", keys / "rita.key", "--no-check").code == 0


def test_ignore_path_refused_then_accepted(run: Run, keys: Path, model: Path) -> None:
    (model / "optimizer").mkdir()
    (model / "optimizer" / "adam.bin").write_bytes(b"state")
    assert run("sign", model, "--key", keys / "alice.key", "--ignore-path", "optimizer").code == 0
    r = run("verify", model, "--key", keys / "alice.pub")
    assert r.code == 1
    assert "TG-SIG-008" in r.out
    assert run("verify", model, "--key", keys / "alice.pub", "--accept-ignore-path",
               "optimizer").code == 0


def test_certificate_signing_cli(run: Run, model: Path, tmp_path: Path) -> None:
    ca = CA.create()
    root, inter = ca.write(tmp_path / "ca")
    key = PrivateKey.generate()
    key.save(tmp_path / "alice.key")
    cert = pem(ca.issue("Alice", key, email="alice@lab.example"), tmp_path / "alice.crt")
    r = run("sign", model, "--cert", cert, "--cert-key", tmp_path / "alice.key", "--ca-chain",
            inter, "-o", tmp_path / "m.sig", "--method", "shards", "--shard-size", "64",
            "--hash", "sha256", "-f", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["signature"] == str(tmp_path / "m.sig")
    r = run("verify", model, "-s", tmp_path / "m.sig", "--ca-root", root, "--email",
            "alice@lab.example")
    assert r.code == 0, r.out
    r = run("verify", model, "-s", tmp_path / "m.sig", "--ca-root", root, "--subject",
            "CN=Mallory,O=Lab")
    assert r.code == 1
    assert "TG-SIG-003" in r.out
    from cryptography import x509

    (tmp_path / "crl.pem").write_bytes(ca.crl([x509.load_pem_x509_certificate(
        cert.read_bytes())]))
    r = run("verify", model, "-s", tmp_path / "m.sig", "--ca-root", root, "--crl",
            tmp_path / "crl.pem")
    assert r.code == 1
    assert "TG-SIG-006" in r.out


@pytest.mark.parametrize("args", [
    ["sign", "MODEL"],
    ["sign", "MODEL", "--key", "K", "--cert", "C"],
    ["sign", "MODEL", "--cert", "C"],
    ["sign", "MODEL", "--key", "K", "--ca-chain", "C"],
    ["sign", "MODEL", "--key", "K", "--method", "tensors"],
    ["verify", "MODEL", "--crl", "x.pem"],
    ["verify", "MODEL", "--key", "K", "--config", "trainguard.toml"],
    ["cosign", "MODEL"],
    ["verify", "missing-model", "--key", "K"],
    ["sign", "MODEL", "--key", "missing.key"],
])
def test_usage_errors_exit_2(run: Run, keys: Path, model: Path, args: list[str]) -> None:
    (Path.cwd() / "trainguard.toml").write_text("")
    subst = {"MODEL": str(model), "K": str(keys / "alice.key"), "C": str(keys / "alice.pub")}
    r = run(*[subst.get(a, a) for a in args])
    assert r.code == 2, (r.out, r.err)
    assert "Traceback" not in r.err


def test_help_teaches(run: Run) -> None:
    for cmd in ("keygen", "sign", "verify", "cosign"):
        r = run(cmd, "--help")
        assert r.code == 0
        assert "Examples:" in r.out


def test_console_script(run_exe, keys: Path, model: Path) -> None:  # type: ignore[no-untyped-def]
    done = run_exe("sign", model, "--key", keys / "alice.key")
    assert done.returncode == 0, done.stderr
    done = run_exe("verify", model, "--key", keys / "alice.pub", "-f", "json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["ok"] is True
    assert os.path.exists(str(model) + ".sig")


def test_sign_with_digest_cache(run: Run, keys: Path, model: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINGUARD_CACHE_DIR", str(tmp_path / "cache"))
    assert run("sign", model, "--key", keys / "alice.key", "--cache").code == 0
    (model / "config.json").write_text('{"hidden": 8}\n')  # one small change, then re-sign
    assert run("sign", model, "--key", keys / "alice.key", "--cache").code == 0
    assert run("verify", model, "--key", keys / "alice.pub").code == 0
