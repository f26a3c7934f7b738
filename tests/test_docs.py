"""The documentation keeps up with the code (after sqlite-utils' tests/test_docs.py).

Every CLI command and option is documented in README.md or docs/, every rule id in
docs/rules.md, every JSON report field in docs/json-schema.md, every setting in
docs/configuration.md; links between the documents resolve; the README's two set-up commands
are the ones .ci/run runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from trainguard.cli.main import cli
from trainguard.core.config import Limits
from trainguard.core.rules import RULES

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
CI = REPO / ".ci" / "run"


def _all_docs() -> str:
    parts = [README.read_text(encoding="utf-8")]
    parts += [p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md"))]
    return "\n".join(parts)


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in sorted(group.list_commands(ctx)):  # the top-level group loads lazily
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        path = (*prefix, name)
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)


COMMANDS = list(_commands(cli))


def _options(cmd: click.Command) -> list[str]:
    out: list[str] = []
    for param in cmd.params:
        if isinstance(param, click.Option):
            out += [*param.opts, *param.secondary_opts]
    return out


def _documented(opt: str, text: str) -> bool:
    # in a code span: `--jobs`, `-j N`, `--fail-on info|...`, `--progress` / `--no-progress`
    return re.search(r"`" + re.escape(opt) + r"(?=[`\s=\\|])", text) is not None


def test_there_are_commands() -> None:
    assert COMMANDS


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_command_is_documented(path: tuple[str, ...]) -> None:
    assert f"trainguard {' '.join(path)}" in _all_docs()


@pytest.mark.parametrize(
    ("path", "opt"),
    [(p, o) for p, c in COMMANDS for o in _options(c)] + [((), o) for o in _options(cli)],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else v,
)
def test_option_is_documented(path: tuple[str, ...], opt: str) -> None:
    assert _documented(opt, _all_docs()), f"{opt} of trainguard {' '.join(path)} is not documented"


def test_option_check_can_fail() -> None:
    assert not _documented("--no-such-option", _all_docs())


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_rule_in_rules_md(rule_id: str) -> None:
    assert f"## {rule_id}: " in (DOCS / "rules.md").read_text(encoding="utf-8")


def test_rules_md_lists_no_unknown_rule() -> None:
    listed = re.findall(r"^## (TG-[A-Z0-9]+-[0-9]{3}):", (DOCS / "rules.md").read_text(),
                        re.MULTILINE)
    assert sorted(listed) == sorted(RULES)


def _schema_fields(schema: dict, defs: dict) -> Iterator[str]:
    for name, sub in schema.get("properties", {}).items():
        yield name
        yield from _schema_fields(sub, defs)
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        yield from _schema_fields(defs[ref.removeprefix("#/$defs/")], defs)
    if "items" in schema:
        yield from _schema_fields(schema["items"], defs)


def test_every_report_field_is_documented() -> None:
    schema = json.loads((DOCS / "scan-report.schema.json").read_text())
    text = (DOCS / "json-schema.md").read_text()
    missing = sorted({f for f in _schema_fields(schema, schema["$defs"])
                      if f"`{f}`" not in text})
    assert not missing, f"fields missing from docs/json-schema.md: {missing}"


def test_schema_version_matches_code() -> None:
    from trainguard.core.report import REPORT_SCHEMA_VERSION

    schema = json.loads((DOCS / "scan-report.schema.json").read_text())
    assert re.match(schema["properties"]["schema_version"]["pattern"], REPORT_SCHEMA_VERSION)
    assert f'"schema_version": "{REPORT_SCHEMA_VERSION}"' in (DOCS / "json-schema.md").read_text()


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    for key in ["fail_on", "globals", *Limits.__dataclass_fields__]:
        assert f"`{key}`" in text, key
    for table in ("[scan]", "[scan.allow]", "[scan.limits]"):
        assert table in text


def _links(md: Path) -> Iterator[str]:
    for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text(encoding="utf-8")):
        if not re.match(r"^[a-z]+:", target) and not target.startswith("#"):
            yield target


@pytest.mark.parametrize(
    "md", [README, REPO / "examples" / "README.md", *sorted(DOCS.glob("*.md"))],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_relative_links_resolve(md: Path) -> None:
    broken = [t for t in _links(md) if not (md.parent / t.split("#")[0]).exists()]
    assert not broken, f"broken links in {md.name}: {broken}"


def _first_screen_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    first_screen = text.split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", first_screen, re.DOTALL)


def test_readme_has_exactly_two_setup_commands_on_first_screen() -> None:
    commands = _first_screen_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), "each set-up command is one line"
    run_example, run_tests = commands
    assert run_example.endswith("trainguard scan examples/")
    assert "pytest" in run_tests
    assert README.read_text().split("\n## ", 1)[0].count("\n") < 40, "keep it on one screen"


def test_ci_runs_the_readme_test_command() -> None:
    _, run_tests = _first_screen_commands()
    pytest_part = run_tests.split("&&")[-1].strip()
    assert pytest_part.startswith("python -m pytest")
    ci = CI.read_text()
    assert f'README_TEST_COMMAND="{pytest_part}"' in ci
    for step in ("pip install torch==2.13.0", "pip install -e '.[dev]'"):
        assert step in run_tests
        assert step in ci
