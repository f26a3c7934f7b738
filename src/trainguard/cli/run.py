"""``trainguard run``: launch a training job with the runtime guard in every Python process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trainguard.core.errors import UsageError


@click.command("run", context_settings={"ignore_unknown_options": True,
                                        "allow_interspersed_args": False})
@click.option("--mode", type=click.Choice(["monitor", "enforce"]), default=None,
              help="monitor: record detections; enforce: also stop them "
                   "[default: [guard] mode in trainguard.toml, else monitor].")
@click.option("-c", "--config", "--policy", "config_path",
              type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="trainguard.toml with the [guard] policy (default: discovered from the cwd).")
@click.option("--events", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Merged JSONL event file of the job (per-process files go to FILE.d/) "
                   "[default: .trainguard/runs/<run id>/events.jsonl].")
@click.option("--input", "inputs", multiple=True,
              type=click.Path(exists=False, path_type=Path),
              help="A declared input (model file or directory) to verify before launch; "
                   "repeatable, paired in order with --signature.")
@click.option("--signature", "signatures", multiple=True,
              type=click.Path(exists=False, dir_okay=False, path_type=Path),
              help="The signature bundle of the --input at the same position.")
@click.option("--skip-env-check", is_flag=True,
              help="Do not run the quick environment check before launch (recorded).")
@click.option("--env-snapshot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Snapshot (`trainguard env snapshot`) for the quick pre-launch check "
                   "(size and ctime only); without it the RECORD files are verified.")
@click.option("--ledger", default=None, metavar="PATH|URL",
              help="Also send every process's events to this ledger as they happen (SQLite "
                   "path, postgresql://..., or http://host:port of `trainguard ledger serve`).")
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Format of the final report (on stderr, or -o).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the final report to this file instead of stderr.")
@click.option("-q", "--quiet", is_flag=True,
              help="Do not print each detection on stderr as it happens (still recorded).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(  # noqa: PLR0917 - click passes options positionally
    mode: str | None, config_path: Path | None, events: Path | None,
    inputs: tuple[Path, ...], signatures: tuple[Path, ...], skip_env_check: bool,
    env_snapshot: Path | None, ledger: str | None, fmt: str,
    output: Path | None, quiet: bool, command: tuple[str, ...],
) -> int:
    """Run COMMAND with the trainguard guard in every Python process of the job.

    Before launch: the quick environment check and verification of each --input against its
    --signature. Then the guard (audit hook, load gate, tripwires, training monitors) is
    installed at interpreter start-up in every Python process the command starts (torchrun
    workers, multiprocessing children, subprocesses), through PYTHONPATH and TRAINGUARD_*
    variables: the code is not edited. Detections go to stderr as they happen; a final report
    follows when the command ends.

    \b
    Examples:
      trainguard run -- python train.py --epochs 3
      trainguard run --mode enforce -- torchrun --nproc-per-node 2 train.py
      trainguard run --input ckpt/ --signature ckpt.sig --events run.jsonl -- python ft.py
      trainguard run -f json -o report.json -- python train.py

    \b
    Exit status: the command's own (128+N if signal N killed it), except
      77  enforce mode stopped something (or refused to launch: an input did not verify)
      2   usage or configuration error (nothing was launched)
    Details: docs/guard.md.
    """
    if len(inputs) != len(signatures):
        raise UsageError("each --input needs a --signature (paired in order)",
                         remedy="--input model/ --signature model.sig")
    from trainguard.guard.launcher import RunOptions, run
    from trainguard.guard.report import render_text

    options = RunOptions(command=command, mode=mode, config_path=config_path, events=events,
                         inputs=tuple(zip(inputs, signatures, strict=True)),
                         skip_env_check=skip_env_check, env_snapshot=env_snapshot,
                         ledger=ledger,
                         quiet_detections=quiet)
    summary = run(options)
    text = (json.dumps(summary.to_dict(), indent=2) + "\n" if fmt == "json"
            else render_text(summary))
    if output is not None:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stderr.write(text)
    return int(summary.exit_code if summary.exit_code is not None else 0)
