"""End to end (issue 6, "What it must show"): a clean run, then a sabotaged run that loads a
checkpoint tampered with and re-saved by another identity; ``investigate`` names the tampered
artifact and that identity first, from the ledger and from the JSONL events, in text, JSON and
HTML. Real torch checkpoints, real sha256 digests, the real SQLite ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from investigate.helpers import LedgerAppendSink, Scenario, open_test_ledger, sabotage_scenario
from trainguard.core.events import JsonlSink
from trainguard.investigate import investigate
from trainguard.investigate.html import render_html
from trainguard.investigate.render import render_json, render_text

pytestmark = pytest.mark.torch


def _ledger_sink(ledger: Any) -> Any:
    try:  # the ledger's own sink, when it exists
        from trainguard.ledger.sink import LedgerSink
    except ImportError:
        return LedgerAppendSink(ledger)
    return LedgerSink(ledger)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, Path, Path]:
    root = tmp_path_factory.mktemp("e2e")
    ledger = open_test_ledger(root / "ledger.db")
    jsonl = root / "events.jsonl"
    sc = sabotage_scenario(root, [_ledger_sink(ledger), JsonlSink(jsonl)])
    assert ledger.size == len(sc.events)
    ledger.close()
    return sc, root / "ledger.db", jsonl


def _check_top_cause(inv: Any, sc: Scenario) -> None:
    top = inv.causes[0]
    assert top.rank == 1
    assert top.category == "artifact"
    assert top.digest == sc.evil_digest
    assert top.path == str(sc.base)
    assert top.identities[0].role == "producer"
    assert top.identities[0].identity["user"] == "mallory"
    assert any(a.role == "signed the original" and a.who == "alice@lab.example"
               for a in top.identities)
    assert all(c.score < top.score for c in inv.causes[1:])


def test_the_training_really_diverged(recorded: tuple[Scenario, Path, Path]) -> None:
    sc, _, _ = recorded
    assert sc.losses["B"][0] > 2 * sc.losses["A"][0]
    assert sc.good_digest != sc.evil_digest


def test_investigate_sabotaged_run_from_ledger(recorded: tuple[Scenario, Path, Path]) -> None:
    sc, db, _ = recorded
    ledger = open_test_ledger(db)
    inv = investigate(ledger, "B")
    ledger.close()
    _check_top_cause(inv, sc)
    assert inv.baseline is not None
    assert inv.baseline.run == "A"
    assert inv.first_anomaly is not None
    assert inv.first_anomaly.kind == "loss_divergence"
    assert inv.exit_code == 1
    # evidence numbers are ledger leaf indices: the tampering save is one of them
    evil_save = next(i for i, e in enumerate(sc.events) if e.identity is not None
                     and e.identity.user == "mallory")
    assert evil_save in inv.causes[0].evidence

    text = render_text(inv)
    first = next(line for line in text.splitlines() if line.startswith("  1. "))
    assert "base.pt" in first
    assert "producer: mallory@gpu-07" in text.split("  2. ")[0]
    doc = json.loads(render_json(inv))
    assert doc["causes"][0]["digest"] == sc.evil_digest
    assert doc["causes"][0]["identities"][0]["identity"]["user"] == "mallory"
    html = render_html(inv)
    top = html[html.index('class="cause top"'):]
    assert "mallory@gpu-07" in top[:3000]
    assert "base.pt" in top[:3000]
    assert html.count("<polyline") == 2


def test_investigate_from_jsonl_gives_the_same_answer(
        recorded: tuple[Scenario, Path, Path]) -> None:
    sc, db, jsonl = recorded
    inv = investigate(jsonl, "B")
    _check_top_cause(inv, sc)
    ledger = open_test_ledger(db)
    from_ledger = investigate(ledger, "B")
    ledger.close()
    assert [c.title for c in inv.causes] == [c.title for c in from_ledger.causes]


def test_clean_run_and_the_file_on_disk(recorded: tuple[Scenario, Path, Path]) -> None:
    sc, db, _ = recorded
    ledger = open_test_ledger(db)
    clean = investigate(ledger, "A")
    on_disk = investigate(ledger, str(sc.base))  # hashed now: mallory's bytes
    ledger.close()
    assert clean.exit_code == 0
    assert clean.causes == ()
    assert on_disk.target_kind == "artifact"
    assert on_disk.lineage[0]["digest"] == sc.evil_digest
    assert on_disk.causes[0].identities[0].identity["user"] == "mallory"
    assert [c["run"] for c in on_disk.lineage[0]["consumers"]] == ["B"]


def test_the_command_line_on_the_recorded_ledger(recorded: tuple[Scenario, Path, Path],
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from trainguard.cli.main import main

    sc, db, jsonl = recorded
    assert main(["investigate", "B", "--ledger", str(db)]) == 1
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith("  1. "))
    assert sc.base.name in first
    assert "producer: mallory@gpu-07" in out.split("  2. ")[0]
    report = tmp_path / "report.html"
    assert main(["investigate", "B", "--events", str(jsonl), "-f", "html", "-o", str(report)]) == 1
    assert "mallory@gpu-07" in report.read_text()
    assert main(["investigate", "A", "--ledger", str(db), "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["suspicious"] is False
