"""The ``trainguard`` command: one group, one thin module per command group."""

from __future__ import annotations

import sys

import click

from trainguard import __version__
from trainguard.core.errors import TrainguardError
from trainguard.core.report import ExitCode


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trainguard")
def cli() -> None:
    """Keep model training safe from sabotage.

    \b
    Exit codes (all commands):
      0  clean
      1  findings at or above --fail-on (a finding always wins over an error)
      2  usage error or unreadable input
    """


def _register() -> None:
    from trainguard.cli.rules import rules_command
    from trainguard.cli.scan import scan_command

    cli.add_command(scan_command)
    cli.add_command(rules_command)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns trainguard errors into exit code 2 with diagnostics."""
    try:
        rv = cli.main(args=argv, prog_name="trainguard", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return int(ExitCode.ERROR)
    except click.exceptions.ClickException as exc:
        exc.show()
        return int(ExitCode.ERROR)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except TrainguardError as exc:
        click.echo(f"trainguard: error: {exc.diagnostics()}", err=True)
        return int(ExitCode.ERROR)
    except BrokenPipeError:
        return int(ExitCode.ERROR)
    except Exception as exc:  # a bug in trainguard: never exit 1, which means "findings"
        import traceback

        traceback.print_exc()
        click.echo(f"trainguard: internal error: {type(exc).__name__}: {exc}\n"
                   "  hint: this is a bug in trainguard; please report it with the traceback",
                   err=True)
        return int(ExitCode.ERROR)
    return rv if isinstance(rv, int) else int(ExitCode.CLEAN)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
