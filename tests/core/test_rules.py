"""The rule registry: stable, unique, documented ids (docs/rules.md is generated from it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainguard.core import rules as rules_module
from trainguard.core.findings import Location, Severity
from trainguard.core.rules import RULES, render_markdown, rule

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "trainguard"
RULES_MD = REPO / "docs" / "rules.md"
ID = re.compile(r"^TG-[A-Z0-9]+-[0-9]{3}$")


def test_ids_are_unique() -> None:
    ids = [r.id for r in rules_module._ALL]
    assert len(ids) == len(set(ids))
    assert list(RULES) == ids


def test_ids_are_well_formed() -> None:
    for rid, r in RULES.items():
        assert ID.match(rid), rid
        assert r.id == rid


def test_every_rule_is_documented() -> None:
    for r in RULES.values():
        assert r.title, r.id
        assert not r.title.endswith("."), r.id
        assert len(r.why) >= 40, f"{r.id}: say why it matters"
        assert len(r.remedy) >= 10, f"{r.id}: say what to do"
        assert isinstance(r.severity, Severity)


def test_numbers_within_a_family_have_no_duplicates_and_start_at_001() -> None:
    families: dict[str, list[int]] = {}
    for rid in RULES:
        _, fam, num = rid.split("-")
        families.setdefault(fam, []).append(int(num))
    for fam, nums in families.items():
        assert min(nums) == 1, fam
        assert len(nums) == len(set(nums)), fam


def test_rule_lookup_and_finding() -> None:
    r = rule("TG-PKL-001")
    f = r.finding(Location("m.pkl", None, 2), "os.system", global_name="os.system")
    assert (f.rule_id, f.severity, f.title, f.remedy) == ("TG-PKL-001", r.severity, r.title,
                                                          r.remedy)
    assert f.details == {"global_name": "os.system"}
    assert r.finding(Location("m.pkl"), "x", severity=Severity.LOW).severity is Severity.LOW
    with pytest.raises(KeyError):
        rule("TG-NOPE-999")


def test_every_rule_id_used_in_src_is_registered() -> None:
    """A finding under an id that is not in the registry would be undocumented (and crash)."""
    used: dict[str, str] = {}
    for py in SRC.rglob("*.py"):
        for rid in re.findall(r"TG-[A-Z0-9]+-[0-9]{3}", py.read_text(encoding="utf-8")):
            used.setdefault(rid, str(py.relative_to(REPO)))
    unknown = {rid: where for rid, where in used.items() if rid not in RULES}
    assert not unknown, f"rule ids used but not registered: {unknown}"


def test_docs_rules_md_is_current() -> None:
    assert RULES_MD.read_text(encoding="utf-8") == render_markdown(), (
        "docs/rules.md is stale: run trainguard rules -f markdown > docs/rules.md"
    )


def test_rules_command_prints_the_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    from trainguard.cli.main import main

    assert main(["rules", "--format", "markdown"]) == 0
    assert capsys.readouterr().out == render_markdown()


def test_rules_command_explains_one_rule(capsys: pytest.CaptureFixture[str]) -> None:
    from trainguard.cli.main import main

    assert main(["rules", "tg-sab-003"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("TG-SAB-003")
    assert "remedy:" in out
    assert main(["rules", "TG-NOPE-999"]) == 2


def test_markdown_has_one_section_per_rule() -> None:
    md = render_markdown()
    for r in RULES.values():
        assert md.count(f"## {r.id}: ") == 1
        assert f"- severity: **{r.severity.label}**" in md
