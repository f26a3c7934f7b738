"""``trainguard scan``: static analysis of model files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from trainguard.cli.output import write_output
from trainguard.core.config import load_config
from trainguard.core.findings import Severity
from trainguard.core.render import OutputFormat, render
from trainguard.core.report import FileResult, Report

_SEVERITIES = [s.label for s in Severity]


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-f", "--format", "fmt", type=click.Choice([f.value for f in OutputFormat]),
              default="text", show_default=True,
              help="Report format (json and sarif are versioned).")
@click.option("--fail-on", type=click.Choice(_SEVERITIES, case_sensitive=False), default=None,
              help="Exit 1 when a finding is at or above this severity "
                   "[default: [scan] fail_on in trainguard.toml, else medium].")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Scan files in N processes.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report to this file instead of standard output.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="trainguard.toml to use (default: discovered from the cwd).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
@click.option("--unsafe-follow-symlinks", is_flag=True,
              help="Follow links that leave the scanned tree (off: such links are a finding).")
def scan_command(  # noqa: PLR0917 - click passes options positionally
    paths: tuple[str, ...], fmt: str, fail_on: str | None, jobs: int,
                 output: Path | None, config_path: Path | None, progress: bool | None,
                 unsafe_follow_symlinks: bool) -> None:
    """Find code execution in model files without running, importing or unpickling anything.

    PATHS are files or directories (walked recursively). Formats are recognised by content, not
    by name: pickle, PyTorch (zip, legacy, TorchScript), NumPy .npy/.npz, joblib (also
    compressed), Keras .keras/.h5, TensorFlow SavedModel, ONNX, GGUF, safetensors, Hugging Face
    folders, and zip/tar/gzip/bz2/xz/lz4/7z wrappers around any of them.

    \b
    Examples:
      trainguard scan model.pt
      trainguard scan ./checkpoints --format json -o report.json
      trainguard scan ~/.cache/huggingface/hub --fail-on high --jobs 2
      trainguard scan model.bin --format sarif > trainguard.sarif

    Extend the allow-list for your own classes in trainguard.toml ([scan.allow] globals).
    Rules and their ids: docs/rules.md. Exit codes: 0 clean, 1 findings at or above
    --fail-on, 2 usage or input error.
    """
    config = load_config(config_path).scan
    threshold = Severity.parse(fail_on) if fail_on else config.fail_on
    if unsafe_follow_symlinks:
        click.echo("trainguard: warning: --unsafe-follow-symlinks: links leaving the scanned tree "
                   "are followed", err=True)
    show = sys.stderr.isatty() if progress is None else progress
    report = _run(list(paths), config, jobs, show, unsafe_follow_symlinks)
    text = render(report, OutputFormat(fmt), threshold)
    if output is None and fmt == "text" and sys.stdout.isatty():
        _print_colored(text)
    else:
        write_output(text, output)
    raise click.exceptions.Exit(int(report.exit_code(threshold)))


def _run(paths: list[str], config, jobs: int, show: bool, follow: bool) -> Report:  # type: ignore[no-untyped-def]
    from trainguard.scan.engine import scan_paths

    if not show:
        return scan_paths(paths, config, jobs=jobs, follow_outside_symlinks=follow)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), transient=True,
                  console=_console(stderr=True)) as bar:
        task = bar.add_task("", total=None)

        def tick(done: int, total: int, fr: FileResult) -> None:
            bar.update(task, completed=done, total=total, description=Path(fr.path).name[:40])

        return scan_paths(paths, config, jobs=jobs, progress=tick, follow_outside_symlinks=follow)


def _console(stderr: bool = False):  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _print_colored(text: str) -> None:
    from rich.text import Text

    styles = {"CRITICAL": "bold red", "HIGH": "red", "MEDIUM": "yellow", "LOW": "cyan",
              "FAIL": "bold red", "FAILED": "bold red", "clean": "bold green", "ERROR": "bold red"}
    t = Text(text)
    for word, style in styles.items():
        t.highlight_words([word], style=style)
    _console().print(t, end="")
