"""``trainguard investigate``: what changed and who did it, for a run or an artifact."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from trainguard.cli.output import write_output
from trainguard.core.errors import InputError
from trainguard.core.events import Event


@click.command("investigate")
@click.argument("target", metavar="RUN_OR_ARTIFACT")
@click.option("--ledger", "ledger_url", metavar="URL|PATH", default=None,
              help="Ledger to read: a SQLite path, sqlite:///path, postgresql://... or "
                   "http(s)://host:port [default: the project's ledger, unless --events is given].")
@click.option("--events", "events_files", multiple=True, metavar="FILE.jsonl",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Events JSONL file (as written by `trainguard run`); repeatable; merged with "
                   "--ledger when both are given.")
@click.option("--baseline", metavar="RUN", default=None,
              help="Last good run to compare with [default: picked automatically].")
@click.option("--trusted-user", "trusted_users", multiple=True, metavar="USER",
              help="Only these users are trusted producers/signers (repeatable); artifacts "
                   "from anyone else score as low trust.")
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "json", "html"]),
              default="text", show_default=True, help="Report format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report to this file instead of standard output.")
def investigate_command(  # noqa: PLR0917 - click passes options positionally
        target: str, ledger_url: str | None, events_files: tuple[Path, ...],
                        baseline: str | None, trusted_users: tuple[str, ...], fmt: str,
                        output: Path | None) -> None:
    """Explain a bad run or a suspicious artifact: timeline, first anomaly, what changed since
    the last good run, and likely causes ranked with the identities involved.

    RUN_OR_ARTIFACT is a run id (the job id every event records: Slurm, torchrun,
    TRAINGUARD_JOB_ID), an artifact digest (sha256:<hex>), or an artifact path (a file on disk
    is hashed and looked up).

    \b
    Examples:
      trainguard investigate 4812 --ledger .trainguard/ledger.db
      trainguard investigate 4812 --events run.jsonl --baseline 4790
      trainguard investigate 4812 -f html -o report.html
      trainguard investigate checkpoints/step_1000.pt -f json

    The heuristics and the JSON schema: docs/investigate.md. Exit codes: 0 nothing suspicious,
    1 a likely cause or an anomaly found, 2 usage error, unreadable or empty record, unknown
    run or artifact.
    """
    from trainguard.investigate import investigate
    from trainguard.investigate.causes import TrustOptions
    from trainguard.investigate.sources import merge, read_events_jsonl

    warnings: list[str] = []
    sources: list[list[Event]] = []
    ledger = None
    try:
        if ledger_url is not None or not events_files:
            from trainguard.ledger import open_ledger

            try:
                ledger = open_ledger(ledger_url, create=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot open the ledger {ledger_url or '(default)'}: {exc}",
                                 remedy="pass --ledger PATH|URL or --events FILE.jsonl") from None
        for path in events_files:
            events, notes = read_events_jsonl(path)
            sources.append(events)
            warnings += notes
        if ledger is not None and not sources:
            source: object = ledger  # one ledger: evidence numbers are its leaf indices
        else:
            if ledger is not None:
                sources.insert(0, [e.event for e in ledger.entries()])
            source = merge(sources)
        trust = TrustOptions(trusted_users=frozenset(trusted_users))
        inv = investigate(source, target, baseline, trust=trust,  # type: ignore[arg-type]
                          warnings=warnings)
    finally:
        if ledger is not None:
            ledger.close()
    if fmt == "json":
        from trainguard.investigate.render import render_json

        text = render_json(inv)
    elif fmt == "html":
        from trainguard.investigate.html import render_html

        text = render_html(inv)
    else:
        from trainguard.investigate.render import render_text

        text = render_text(inv)
    write_output(text, output)
    if output is None:
        sys.stdout.flush()
    raise click.exceptions.Exit(inv.exit_code)
