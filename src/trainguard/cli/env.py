"""``trainguard env``: snapshot, verify and diff Python environments."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trainguard.cli.output import write_output
from trainguard.core.findings import Severity
from trainguard.core.report import ExitCode, Report

_SEVERITIES = [s.label for s in Severity]
_PY_HELP = ("Interpreter whose environment to inspect (a python executable or a venv "
            "directory) [default: $VIRTUAL_ENV, else the interpreter running trainguard].")


@click.group("env")
def env_group() -> None:
    """Integrity of the Python environment a job runs in.

    Nothing from the inspected environment is imported: its interpreter runs only with
    `-I -S` (no .pth files, no sitecustomize) to report where its site-packages are; all else
    is read from files.

    \b
    Examples:
      trainguard env snapshot --python .venv/bin/python -o /secure/env.json --key env.key
      trainguard env verify --python .venv/bin/python --against /secure/env.json --pubkey env.pub
      trainguard env verify --against /secure/env.json --quick        # at every job start
      trainguard env verify --lock uv.lock -f sarif -o env.sarif
      trainguard env diff node1.json node2.json
    """


@env_group.command("snapshot")
@click.option("--python", "python", type=click.Path(path_type=Path), default=None,
              help=_PY_HELP)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Write the snapshot (JSON) here; keep it outside the environment.")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Sign the snapshot with this private key (PEM); the detached signature is "
                   "written to OUTPUT.sig. Password from $TRAINGUARD_KEY_PASSWORD.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None,
              help="Hashing threads [default: one per CPU].")
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Format of the summary printed on standard output.")
def snapshot_command(python: Path | None, output: Path, key: Path | None, jobs: int | None,
                     fmt: str) -> None:
    """Record every distribution, installed file (with its sha256), startup hook, loader
    variable and the interpreter of an environment, plus one environment digest.

    \b
    Examples:
      trainguard env snapshot -o env.json
      trainguard env snapshot --python /opt/envs/train/bin/python -o env.json --key env.key

    Format: docs/env.md. Exit codes: 0 written, 2 usage or input error.
    """
    from trainguard import envcheck
    from trainguard.integrity.keys import PrivateKey

    private = PrivateKey.load(key) if key is not None else None
    snap = envcheck.snapshot(python, workers=jobs)
    sig = envcheck.save_snapshot(snap, output, key=private)
    hooks = [h for h in snap.hooks if h.get("exec_lines") or h.get("kind") != "pth"]
    summary = {
        "snapshot": str(output), "signature": str(sig) if sig else None,
        "environment_digest": snap.environment_digest, "prefix": snap.interpreter.prefix,
        "python": snap.interpreter.version.split()[0], "distributions": len(snap.distributions),
        "files": len(snap.files), "bytes": sum(f.size for f in snap.files.values()),
        "startup_hooks": len(hooks), "unreadable": len(snap.extra.get("unreadable", [])),
    }
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"environment {summary['prefix']} (Python {summary['python']}): "
               f"{summary['distributions']} distributions, {summary['files']} files, "
               f"{summary['bytes']} bytes, {summary['startup_hooks']} startup hook(s)")
    click.echo(f"environment digest {snap.environment_digest}")
    click.echo(f"wrote {output}" + (f" and signature {sig}" if sig else ""))
    if summary["unreadable"]:
        click.echo(f"warning: {summary['unreadable']} file(s) could not be read and are not "
                   "in the snapshot", err=True)


@env_group.command("verify")
@click.option("--python", "python", type=click.Path(path_type=Path), default=None,
              help=_PY_HELP + " With --against, the snapshot's interpreter.")
@click.option("--against", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Snapshot to compare with (stronger than RECORD hashes).")
@click.option("--pubkey", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Require the snapshot's signature to verify under this public key.")
@click.option("--signature", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Detached signature of the snapshot [default: SNAP.sig].")
@click.option("--lock", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Lock file (requirements.txt, uv.lock or pylock.toml): report packages not "
                   "in it or at other versions.")
@click.option("--quick", is_flag=True,
              help="Compare size and ctime with the snapshot only: no hashing (job start).")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None,
              help="Hashing threads [default: one per CPU].")
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "json", "sarif"]),
              default="text", show_default=True, help="Report format.")
@click.option("--fail-on", type=click.Choice(_SEVERITIES, case_sensitive=False), default=None,
              help="Exit 1 when a finding is at or above this severity "
                   "[default: [env] fail_on in trainguard.toml, else medium].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report to this file instead of standard output.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="trainguard.toml to use (default: discovered from the cwd).")
def verify_command(python: Path | None, against: Path | None, pubkey: Path | None,  # noqa: PLR0917
                   signature: Path | None, lock: Path | None, quick: bool, jobs: int | None,
                   fmt: str, fail_on: str | None, output: Path | None,
                   config_path: Path | None) -> None:
    """Check installed files against their RECORD hashes and, with --against, a snapshot:
    modified, missing and unowned files, rewritten RECORDs, stale .pyc, executable .pth lines,
    sitecustomize, writable paths, loader variables, packages outside the lock file.

    \b
    Examples:
      trainguard env verify
      trainguard env verify --python .venv/bin/python --against env.json --pubkey env.pub
      trainguard env verify --against env.json --quick
      trainguard env verify --lock requirements.txt --fail-on high -f json

    Rules: docs/rules.md (TG-ENV-*). Exit codes: 0 clean, 1 findings at or above --fail-on,
    2 usage or input error.
    """
    from trainguard import envcheck
    from trainguard.core.config import load_config
    from trainguard.core.render import OutputFormat, render

    policy = envcheck.EnvPolicy.from_section(load_config(config_path).section("env"))
    threshold = Severity.parse(fail_on) if fail_on else policy.fail_on
    pub = None
    if pubkey is not None:  # imported only when used: --quick runs at every job start
        from trainguard.integrity.keys import PublicKey

        pub = PublicKey.load(pubkey)
    report = envcheck.verify(python, against=against, pubkey=pub, signature=signature,
                             lock=lock, quick=quick, policy=policy, workers=jobs)
    text = render(report, OutputFormat(fmt), threshold)
    if fmt == "text":
        text = _text_summary(text, report, threshold)
    write_output(text, output)
    raise click.exceptions.Exit(int(report.exit_code(threshold)))


def _text_summary(text: str, report: Report, threshold: Severity) -> str:
    lines = text.rstrip("\n").split("\n")[:-1]  # the scan-oriented summary line is replaced
    s = report.summary()
    sev = ", ".join(f"{n} {k}" for k, n in s["by_severity"].items() if n)
    verdict = {0: "clean", 1: "FAILED", 2: "ERROR"}[int(report.exit_code(threshold))]
    what = (f"{len(report.files)} distribution(s), {s['bytes']} bytes" if report.files
            else "snapshot metadata (quick)")
    lines.append(f"{verdict}: {report.targets[0]}: {what}, {s['findings']} finding(s)"
                 f"{' (' + sev + ')' if sev else ''} in {report.seconds:.2f}s; "
                 f"failing at {threshold.label} or above")
    return "\n".join(lines) + "\n"


@env_group.command("diff")
@click.argument("a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("b", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Output format.")
@click.option("--limit", type=click.IntRange(0), default=200, show_default=True,
              help="Files listed per category in text output (0: all).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result to this file instead of standard output.")
def diff_command(a: Path, b: Path, fmt: str, limit: int, output: Path | None) -> None:
    """Compare two snapshots (two nodes, yesterday and today): environment digest first, then
    packages (added, removed, version, same version with other bytes), then files.

    \b
    Examples:
      trainguard env diff node1.json node2.json
      trainguard env diff monday.json today.json -f json -o changes.json

    Exit codes: 0 same environment digest, 1 different, 2 usage or input error.
    """
    from trainguard import envcheck

    d = envcheck.diff(a, b)
    text = (json.dumps(d.to_dict(), indent=2) + "\n") if fmt == "json" else d.render_text(limit)
    write_output(text, output)
    raise click.exceptions.Exit(int(ExitCode.CLEAN if d.same else ExitCode.FINDINGS))
