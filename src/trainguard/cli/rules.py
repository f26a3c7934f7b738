"""``trainguard rules``: the registry of rule ids, for people and for tooling."""

from __future__ import annotations

import json

import click

from trainguard.core.rules import RULES, render_markdown


@click.command("rules")
@click.argument("rule_id", required=False)
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "json", "markdown"]),
              default="text", show_default=True,
              help="markdown is docs/rules.md; json is for tooling.")
def rules_command(rule_id: str | None, fmt: str) -> None:
    """List the rules findings are reported under, or explain one (RULE_ID such as TG-PKL-001).

    \b
    Examples:
      trainguard rules
      trainguard rules TG-SAB-002
      trainguard rules --format markdown > docs/rules.md
    """
    selected = list(RULES.values())
    if rule_id is not None:
        key = rule_id.upper()
        if key not in RULES:
            raise click.BadParameter(f"unknown rule id {rule_id!r}; `trainguard rules` lists them",
                                     param_hint="RULE_ID")
        selected = [RULES[key]]
    if fmt == "markdown":
        click.echo(render_markdown(selected), nl=False)
    elif fmt == "json":
        click.echo(json.dumps([{"id": r.id, "title": r.title, "severity": r.severity.label,
                                "why": r.why, "remedy": r.remedy} for r in selected], indent=2))
    else:
        for r in selected:
            click.echo(f"{r.id}  {r.severity.label:<8}  {r.title}")
            if rule_id is not None:
                click.echo(f"\n  why: {r.why}\n  remedy: {r.remedy}")
