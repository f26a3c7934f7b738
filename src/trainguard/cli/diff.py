"""``trainguard diff``: compare two checkpoints without executing either."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from trainguard.cli.output import write_output
from trainguard.core.report import ExitCode

_MARK = {"same": "=", "equivalent": "≈", "changed": "~", "added": "+", "removed": "-"}


@click.command("diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Output format.")
@click.option("--values", is_flag=True,
              help="Measure how much each changed tensor moved (max |diff|, relative L2, "
                   "fraction of elements changed); reads the tensors, needs numpy.")
@click.option("--all", "show_all", is_flag=True, help="List identical files too.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None,
              help="Hashing threads [default: CPU count].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result to this file instead of standard output.")
def diff_command(old: Path, new: Path, fmt: str, values: bool, show_all: bool,  # noqa: PLR0917
                 jobs: int | None, output: Path | None) -> None:
    """Compare two checkpoints (files, or directories paired by relative path).

    Reports tensors changed (by name, and with --values by how much), optimizer
    hyperparameters (lr, betas, eps, weight_decay, ...), RNG states, counters and metadata
    (safetensors metadata, JSON files such as trainer_state.json), and files added or removed.
    Nothing is unpickled or executed: PyTorch pickles are read by a symbolic machine.

    \b
    Examples:
      trainguard diff run-a/checkpoint-100 run-b/checkpoint-100
      trainguard diff old.pt new.pt --values
      trainguard diff ckpt/ copy/ -f json -o diff.json

    Files whose bytes differ but whose tensors, values and archive members are all equal
    (torch.save writes a random serialization id) are "equivalent" and count as identical.

    Exit codes: 0 identical, 1 different, 2 usage error or unreadable input.
    """
    from trainguard.integrity.ckptdiff import diff

    result = diff(old, new, values=values, workers=jobs)
    if fmt == "json":
        text = json.dumps(result.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    else:
        text = render_text(result.to_dict(), show_all=show_all)
    write_output(text, output)
    raise click.exceptions.Exit(int(ExitCode.CLEAN if result.identical else ExitCode.FINDINGS))


def _value(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, allow_nan=False) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _stats(s: dict[str, Any]) -> str:
    if "skipped" in s:
        return f"(values not compared: {s['skipped']})"
    rel = "n/a" if s["rel_l2"] is None else f"{s['rel_l2']:.3g}"
    text = (f"max|diff|={s['max_abs_diff']:.3g} rel_l2={rel} "
            f"changed={s['changed']}/{s['elements']} ({100 * s['fraction_changed']:.3g}%)")
    if s["nonfinite"]:
        text += f" nonfinite={s['nonfinite']}"
    return text


def render_text(d: dict[str, Any], *, show_all: bool = False) -> str:
    """Human-readable diff: one line per file, one indented line per change."""
    lines = [f"old: {d['old']}", f"new: {d['new']}"]
    for f in d["files"]:
        if f["status"] in ("same", "equivalent") and not show_all:
            continue
        head = f"{_MARK[f['status']]} {f['path']}"
        if f["status"] == "changed":
            t = sum(1 for c in f["changes"] if c["kind"] == "tensor")
            s = sum(1 for c in f["changes"] if c["kind"] == "scalar")
            head += f"  ({f['format'] or 'bytes'}: {t} tensor(s), {s} value(s) changed)"
        if f.get("note"):
            head += f"  [{f['note']}]"
        lines.append(head)
        for c in f["changes"]:
            what = f"    {c['change']:<8} {c['category']:<9} {c['kind']:<6} {c['name']}"
            if c["kind"] == "tensor" and c["change"] == "changed":
                old, new = c["old"], c["new"]
                fields = ", ".join(c.get("fields", []))
                what += f"  [{fields}]"
                if "dtype" in c.get("fields", []) or "shape" in c.get("fields", []):
                    what += f" {old['dtype']}{old['shape']} -> {new['dtype']}{new['shape']}"
                if "stats" in c:
                    what += "  " + _stats(c["stats"])
            elif c["kind"] != "tensor":
                what += f"  {_value(c['old'])} -> {_value(c['new'])}"
            lines.append(what)
    s = d["summary"]
    verdict = "identical" if d["identical"] else "different"
    lines.append(f"{verdict}: {s['files']} file(s), {s['changed']} changed, "
                 f"{s['equivalent']} equivalent, {s['added']} added, "
                 f"{s['removed']} removed; {s['tensors_changed']} tensor(s) and "
                 f"{s['scalars_changed']} value(s) changed")
    return "\n".join(lines) + "\n"
