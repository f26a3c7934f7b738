"""The ``trainguard`` command: one group, one thin module per command group."""

from __future__ import annotations

import sys

import click

from trainguard import __version__
from trainguard.core.errors import TrainguardError
from trainguard.core.report import ExitCode

#: command name -> "module:attribute"; modules are imported only when their command runs (start-up
#: time is part of every scan), or when --help lists them
COMMANDS: dict[str, str] = {
    "scan": "trainguard.cli.scan:scan_command",
    "rules": "trainguard.cli.rules:rules_command",
    "keygen": "trainguard.cli.sign:keygen_command",
    "sign": "trainguard.cli.sign:sign_command",
    "verify": "trainguard.cli.sign:verify_command",
    "cosign": "trainguard.cli.sign:cosign_command",
    "diff": "trainguard.cli.diff:diff_command",
    "env": "trainguard.cli.env:env_group",
    "run": "trainguard.cli.run:run_command",
    "ledger": "trainguard.cli.ledger:ledger_group",
    "investigate": "trainguard.cli.investigate:investigate_command",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    def _load(self, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        import importlib

        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # a command group not built yet
                return None
            raise
        command = getattr(module, attr, None)
        if not isinstance(command, click.Command):
            return None
        self.commands[name] = command
        return command


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trainguard")
def cli() -> None:
    """Keep model training safe from sabotage.

    \b
    Exit codes (all commands):
      0  clean
      1  findings at or above --fail-on (a finding always wins over an error)
      2  usage error or unreadable input
    """


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
