"""Where a command's report goes: a file named by ``-o``, else standard output."""

from __future__ import annotations

from pathlib import Path

import click

from trainguard.core.errors import UsageError


def write_output(text: str, output: Path | None) -> None:
    """Write ``text`` to ``output`` (UTF-8), or echo it as is when no file is given.

    A file that cannot be written is a usage error (exit 2), never a traceback.
    """
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
