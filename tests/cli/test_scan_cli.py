"""``trainguard scan`` through its real entry points: exit codes, formats, options, config.

Exit codes are a public interface (docs/exit-codes.md): 0 clean, 1 findings at or above
``--fail-on``, 2 usage or input error, and a finding wins over an error.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from cli_helpers import EXAMPLES, MALICIOUS, SCHEMA, VALIDATOR, Run, trainguard_exe, validate

from trainguard.core.report import ExitCode
from trainguard.core.rules import RULES


def rule_ids(doc: dict) -> set[str]:
    return {f["rule_id"] for f in doc["findings"]}


# ---------------------------------------------------------------------------- exit codes


def test_exit_codes_are_pinned() -> None:
    assert (int(ExitCode.CLEAN), int(ExitCode.FINDINGS), int(ExitCode.ERROR)) == (0, 1, 2)


def test_clean_file_exits_0(run: Run, files: dict[str, Path]) -> None:
    r = run("scan", files["clean"])
    assert r.code == 0, r
    assert r.out.startswith("clean: 1 file(s) scanned")
    assert r.err == ""


def test_malicious_file_exits_1(run: Run, files: dict[str, Path]) -> None:
    r = run("scan", files["evil"])
    assert r.code == 1, r
    assert "TG-PKL-001" in r.out
    assert "os.system" in r.out
    assert "FAILED" in r.out


def test_missing_path_exits_2(run: Run, tmp_path: Path) -> None:
    r = run("scan", tmp_path / "does-not-exist.pt")
    assert r.code == 2, r
    assert "no such file or directory" in r.out
    assert r.out.rstrip().splitlines()[-1].startswith("ERROR")


def test_finding_wins_over_missing_path(run: Run, files: dict[str, Path], tmp_path: Path) -> None:
    r = run("scan", "-f", "json", files["evil"], tmp_path / "missing")
    assert r.code == 1, r
    doc = json.loads(r.out)
    validate(doc)
    assert doc["exit_code"] == 1
    assert doc["summary"]["errors"] == 1
    assert doc["errors"] == [f"{tmp_path / 'missing'}: no such file or directory"]


def test_error_without_failing_finding_exits_2(run: Run, files: dict[str, Path],
                                               tmp_path: Path) -> None:
    # a low finding under the default medium threshold does not rescue the run from the error
    r = run("scan", files["trailing"], tmp_path / "missing")
    assert r.code == 2, r
    assert "TG-PKL-008" in r.out


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus-option"],
        ["--fail-on", "extreme"],
        ["-f", "xml"],
        ["-j", "0"],
        ["-j", "many"],
        [],  # PATHS is required
    ],
    ids=["unknown-option", "bad-severity", "bad-format", "zero-jobs", "non-int-jobs", "no-path"],
)
def test_bad_usage_exits_2(run: Run, files: dict[str, Path], args: list[str]) -> None:
    extra = [] if args == [] else [files["evil"]]
    r = run("scan", *args, *extra)
    assert r.code == 2, r
    assert r.out == ""
    assert "Error" in r.err or "error" in r.err


def test_unknown_command_exits_2(run: Run) -> None:
    r = run("frobnicate")
    assert r.code == 2
    assert "No such command" in r.err


def test_exit_codes_through_console_script(run_exe, files: dict[str, Path], tmp_path: Path) -> None:
    """The installed ``trainguard`` script exits with the same codes as ``main()`` returns."""
    assert run_exe("scan", files["clean"]).returncode == 0
    assert run_exe("scan", files["evil"]).returncode == 1
    assert run_exe("scan", tmp_path / "missing").returncode == 2
    assert run_exe("scan", "--fail-on", "nope", files["clean"]).returncode == 2
    assert run_exe("scan", files["evil"], tmp_path / "missing").returncode == 1


# ---------------------------------------------------------------------------- --fail-on


@pytest.mark.parametrize(
    ("name", "threshold", "expected"),
    [
        ("evil", "critical", 1),  # TG-PKL-001 is critical
        ("custom", "medium", 1),  # TG-PKL-003 is medium
        ("custom", "high", 0),
        ("trailing", "low", 1),  # TG-PKL-008 is low
        ("trailing", "medium", 0),
        ("trailing", "info", 1),
        ("clean", "info", 0),
    ],
)
def test_fail_on_threshold(run: Run, files: dict[str, Path], name: str, threshold: str,
                           expected: int) -> None:
    r = run("scan", "--fail-on", threshold, "-f", "json", files[name])
    assert r.code == expected, r
    doc = json.loads(r.out)
    assert doc["fail_on"] == threshold
    assert doc["exit_code"] == expected


def test_fail_on_is_case_insensitive(run: Run, files: dict[str, Path]) -> None:
    assert run("scan", "--fail-on", "HIGH", files["custom"]).code == 0


def test_findings_below_threshold_are_still_reported(run: Run, files: dict[str, Path]) -> None:
    r = run("scan", "--fail-on", "critical", files["custom"])
    assert r.code == 0
    assert "TG-PKL-003" in r.out
    assert "FAIL " not in r.out  # listed, not marked as failing
    assert r.out.rstrip().splitlines()[-1].startswith("clean:")


def test_examples_sabotage_fails_at_high_not_critical(run: Run) -> None:
    target = EXAMPLES / "sabotaged_checkpoint.pkl"
    assert run("scan", "--fail-on", "high", target).code == 1
    assert run("scan", "--fail-on", "critical", target).code == 0


# ---------------------------------------------------------------------------- JSON


def test_json_validates_against_schema(run: Run, files: dict[str, Path], tmp_path: Path) -> None:
    r = run("scan", "-f", "json", files["evil"].parent, tmp_path / "missing")
    doc = json.loads(r.out)
    validate(doc)
    assert doc["schema"] == "trainguard.scan-report"
    assert doc["schema_version"] == "1.0"
    assert doc["targets"] == [str(files["evil"].parent), str(tmp_path / "missing")]
    assert rule_ids(doc) == {"TG-PKL-001", "TG-PKL-003", "TG-PKL-008"}
    assert doc["summary"]["files"] == len(doc["files"]) == 4
    assert doc["summary"]["findings"] == len(doc["findings"]) == 3
    assert doc["summary"]["by_severity"] == {"critical": 1, "high": 0, "medium": 1, "low": 1,
                                             "info": 0}
    assert doc["summary"]["by_status"] == {"scanned": 4, "skipped": 0, "error": 0}
    assert [f["severity"] for f in doc["findings"]] == ["critical", "medium", "low"]
    evil = next(f for f in doc["findings"] if f["rule_id"] == "TG-PKL-001")
    assert evil["location"] == {"path": str(files["evil"]), "member": None, "offset": 2}
    assert evil["details"]["global_name"] == "os.system"


def test_json_for_clean_and_empty_runs_validates(run: Run, files: dict[str, Path],
                                                 tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (files["clean"], empty):
        r = run("scan", "-f", "json", target)
        assert r.code == 0
        doc = json.loads(r.out)
        validate(doc)
        assert doc["findings"] == []
        assert doc["exit_code"] == 0


def test_schema_rejects_what_it_should() -> None:
    """The schema is strict enough to catch a renamed or undocumented field."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": "trainguard.scan-report"}, SCHEMA)


def test_json_with_undocumented_field_fails_validation(run: Run, files: dict[str, Path]) -> None:
    doc = json.loads(run("scan", "-f", "json", files["evil"]).out)
    doc["findings"][0]["surprise"] = True
    assert list(VALIDATOR.iter_errors(doc))


# ---------------------------------------------------------------------------- SARIF


def test_sarif_shape(run: Run, files: dict[str, Path], tmp_path: Path) -> None:
    r = run("scan", "-f", "sarif", files["evil"].parent, tmp_path / "missing")
    assert r.code == 1
    doc = json.loads(r.out)
    assert doc["version"] == "2.1.0"
    assert doc["$schema"].endswith("sarif-2.1.0.json")
    (run_,) = doc["runs"]
    driver = run_["tool"]["driver"]
    assert driver["name"] == "trainguard"
    ids = [rule["id"] for rule in driver["rules"]]
    assert ids == sorted(RULES), "every registered rule is described, sorted by id"
    for rule in driver["rules"]:
        reg = RULES[rule["id"]]
        assert rule["shortDescription"]["text"] == reg.title
        assert rule["fullDescription"]["text"] == reg.why
        assert rule["help"]["text"] == reg.remedy
        assert rule["defaultConfiguration"]["level"] in {"error", "warning", "note"}
    levels = {}
    for res in run_["results"]:
        assert driver["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["message"]["text"]
        (loc,) = res["locations"]
        assert "uri" in loc["physicalLocation"]["artifactLocation"]
        levels[res["ruleId"]] = res["level"]
    assert levels == {"TG-PKL-001": "error", "TG-PKL-003": "warning", "TG-PKL-008": "note"}
    (inv,) = run_["invocations"]
    assert inv["executionSuccessful"] is False
    assert [n["level"] for n in inv["toolExecutionNotifications"]] == ["error"]


def test_sarif_member_is_a_logical_location(run: Run, tmp_path: Path) -> None:
    import zipfile



    z = tmp_path / "bundle.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("inner/evil.pkl", MALICIOUS)
    doc = json.loads(run("scan", "-f", "sarif", z).out)
    (res,) = doc["runs"][0]["results"]
    (loc,) = res["locations"]
    assert loc["logicalLocations"] == [{"fullyQualifiedName": "inner/evil.pkl@2",
                                        "kind": "member"}]
    assert "region" not in loc["physicalLocation"]  # the offset is not a byte offset of the zip


def test_sarif_clean_run_is_successful(run: Run, files: dict[str, Path]) -> None:
    doc = json.loads(run("scan", "-f", "sarif", files["clean"]).out)
    assert doc["runs"][0]["results"] == []
    assert doc["runs"][0]["invocations"][0]["executionSuccessful"] is True


# ---------------------------------------------------------------------------- --output, --jobs


@pytest.mark.parametrize("fmt", ["text", "json", "sarif"])
def test_output_file(run: Run, files: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"report.{fmt}"
    r = run("scan", "-f", fmt, "-o", out, files["evil"])
    assert r.code == 1
    assert r.out == ""
    text = out.read_text()
    assert "TG-PKL-001" in text
    if fmt == "json":
        validate(json.loads(text))


def test_output_to_unwritable_place_exits_2(run: Run, files: dict[str, Path],
                                            tmp_path: Path) -> None:
    r = run("scan", "-o", tmp_path / "no" / "such" / "dir" / "r.json", files["clean"])
    assert r.code == 2
    assert "cannot write" in r.err


def test_output_to_directory_is_a_usage_error(run: Run, files: dict[str, Path],
                                              tmp_path: Path) -> None:
    assert run("scan", "-o", tmp_path, files["clean"]).code == 2


def _without_timing(doc: dict) -> dict:
    doc["seconds"] = 0
    for f in doc["files"]:
        f["seconds"] = 0
    return doc


def test_jobs_2_gives_the_same_report(run: Run, files: dict[str, Path]) -> None:
    one = run("scan", "-f", "json", "-j", "1", files["evil"].parent)
    two = run("scan", "-f", "json", "-j", "2", files["evil"].parent)
    assert one.code == two.code == 1
    assert _without_timing(json.loads(one.out)) == _without_timing(json.loads(two.out))


# ---------------------------------------------------------------------------- --config


def _write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_allow_list_passes_own_class(run: Run, files: dict[str, Path],
                                            tmp_path: Path) -> None:
    assert run("scan", files["custom"]).code == 1
    cfg = _write_toml(tmp_path / "tg.toml", '[scan.allow]\nglobals = ["mylab.models.*"]\n')
    r = run("scan", "--config", cfg, files["custom"])
    assert r.code == 0, r
    assert "TG-PKL-003" not in r.out


def test_config_allow_list_cannot_allow_code_execution(run: Run, files: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """The deny-list is decided before user patterns: even listing os.system does not pass it."""
    cfg = _write_toml(tmp_path / "tg.toml",
                      '[scan.allow]\nglobals = ["os.system", "os.path.**"]\n')
    r = run("scan", "-c", cfg, files["evil"])
    assert r.code == 1
    assert "TG-PKL-001" in r.out


def test_config_fail_on_and_cli_override(run: Run, files: dict[str, Path],
                                         tmp_path: Path) -> None:
    cfg = _write_toml(tmp_path / "tg.toml", '[scan]\nfail_on = "critical"\n')
    assert run("scan", "-c", cfg, files["custom"]).code == 0
    assert run("scan", "-c", cfg, "--fail-on", "medium", files["custom"]).code == 1


def test_config_discovered_from_cwd(run: Run, files: dict[str, Path], tmp_path: Path) -> None:
    # the autouse fixture made tmp_path the working directory
    _write_toml(tmp_path / "trainguard.toml", '[scan.allow]\nglobals = ["mylab.models.TinyNet"]\n')
    assert run("scan", files["custom"]).code == 0


def test_config_from_environment(run: Run, files: dict[str, Path], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _write_toml(tmp_path / "elsewhere.toml", '[scan]\nfail_on = "high"\n')
    monkeypatch.setenv("TRAINGUARD_CONFIG", str(cfg))
    assert run("scan", files["custom"]).code == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[scan]\nfail_on = \"sometimes\"\n", "fail_on"),
        ("[scan]\nfial_on = \"high\"\n", "unknown key"),
        ("[scan.allow]\nglobals = [\"*\"]\n", "allow everything"),
        ("[scan.limits]\nmax_depth = \"deep\"\n", "positive integer"),
        ("this is not toml", "cannot read config"),
    ],
)
def test_bad_config_exits_2_with_diagnostics(run: Run, files: dict[str, Path], tmp_path: Path,
                                             text: str, message: str) -> None:
    cfg = _write_toml(tmp_path / "bad.toml", text)
    r = run("scan", "-c", cfg, files["clean"])
    assert r.code == 2
    assert r.out == ""
    assert r.err.startswith("trainguard: error:")
    assert message in r.err
    assert "hint:" in r.err


def test_missing_config_file_exits_2(run: Run, files: dict[str, Path], tmp_path: Path) -> None:
    r = run("scan", "-c", tmp_path / "nope.toml", files["clean"])
    assert r.code == 2
    assert "does not exist" in r.err


# ---------------------------------------------------------------------------- progress, TTY


def test_no_progress_when_stderr_is_not_a_tty(run_exe, files: dict[str, Path]) -> None:
    proc = run_exe("scan", files["evil"].parent)
    assert proc.returncode == 1
    assert proc.stderr == ""
    assert "\x1b[" not in proc.stdout  # no colour either: stdout is a pipe


def _run_on_pty(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal, stdout on a pipe: (code, stdout, stderr text)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "TRAINGUARD_CONFIG"}
    env.update({"TERM": "xterm", "COLUMNS": "100"})
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([*trainguard_exe(), *args], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    out = proc.stdout.read().decode() if proc.stdout else ""
    code = proc.wait(timeout=60)
    os.close(master)
    return code, out, b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_progress_only_with_a_terminal(files: dict[str, Path], tmp_path: Path) -> None:
    d = files["evil"].parent
    code, out, err = _run_on_pty(["scan", str(d)], tmp_path)
    assert code == 1
    assert "scanning" in err  # rich progress bar drawn on the terminal
    assert "TG-PKL-001" in out  # the report itself stays on stdout
    code, out, err = _run_on_pty(["scan", "--no-progress", str(d)], tmp_path)
    assert code == 1
    assert "scanning" not in err


# ---------------------------------------------------------------------------- symlinks


def test_symlink_leaving_tree_is_a_finding_unless_unsafe_flag(run: Run, files: dict[str, Path],
                                                              tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link.pkl").symlink_to(files["clean"])
    r = run("scan", "-f", "json", tree)
    assert r.code == 1
    assert rule_ids(json.loads(r.out)) == {"TG-FS-001"}
    r = run("scan", "--unsafe-follow-symlinks", tree)
    assert r.code == 0
    assert "--unsafe-follow-symlinks" in r.err  # the dangerous switch warns


# ---------------------------------------------------------------------------- help, version


def _commands() -> list[str]:
    import click

    from trainguard.cli.main import cli

    return sorted(cli.list_commands(click.Context(cli)))


def test_every_command_has_help(run: Run) -> None:
    top = run("--help")
    assert top.code == 0
    assert "Usage: trainguard" in top.out
    assert _commands(), "no command registered"
    for name in _commands():
        assert name in top.out
        for flag in ("--help", "-h"):
            r = run(name, flag)
            assert r.code == 0, (name, r)
            assert f"Usage: trainguard {name}" in r.out
            assert "Exit codes" in r.out or name != "scan"


def test_version(run: Run) -> None:
    from trainguard import __version__

    r = run("--version")
    assert r.code == 0
    assert r.out.strip() == f"trainguard, version {__version__}"


def test_module_entry_point(files: dict[str, Path]) -> None:
    proc = subprocess.run([sys.executable, "-m", "trainguard.cli.main", "scan", str(files["evil"])],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert "TG-PKL-001" in proc.stdout


def test_an_internal_error_exits_2_not_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Exit 1 means "findings"; a crash in trainguard itself must never look like that."""
    import trainguard.scan.engine as engine
    from trainguard.cli.main import main

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(engine, "scan_paths", boom)
    target = tmp_path / "x.pkl"
    target.write_bytes(b"N.")
    assert main(["scan", str(target)]) == 2
    assert "internal error: RuntimeError: simulated bug" in capsys.readouterr().err
