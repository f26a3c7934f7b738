"""Severity: parsing, order and labels (the --fail-on threshold depends on all three)."""

from __future__ import annotations

import pytest

from trainguard.core.errors import TrainguardError, UsageError
from trainguard.core.findings import Finding, Location, Severity
from trainguard.core.report import ExitCode, FileResult, FileStatus, Report


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("info", Severity.INFO),
        ("low", Severity.LOW),
        ("medium", Severity.MEDIUM),
        ("high", Severity.HIGH),
        ("critical", Severity.CRITICAL),
        ("HIGH", Severity.HIGH),
        ("Critical", Severity.CRITICAL),
        ("  medium\n", Severity.MEDIUM),
    ],
)
def test_parse(text: str, expected: Severity) -> None:
    assert Severity.parse(text) is expected


@pytest.mark.parametrize("text", ["", "severe", "med", "3", "error", "warning", "high!"])
def test_parse_rejects_unknown_names(text: str) -> None:
    with pytest.raises(UsageError) as info:
        Severity.parse(text)
    assert isinstance(info.value, TrainguardError)
    # the diagnostics say what is allowed
    assert "info, low, medium, high, critical" in info.value.diagnostics()


def test_order() -> None:
    ordered = [Severity.INFO, Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]
    assert sorted(Severity) == ordered
    assert Severity.CRITICAL > Severity.HIGH > Severity.MEDIUM > Severity.LOW > Severity.INFO
    assert max(ordered) is Severity.CRITICAL


def test_label_round_trips() -> None:
    for s in Severity:
        assert s.label == s.name.lower()
        assert Severity.parse(s.label) is s


def _finding(sev: Severity, rule_id: str = "TG-PKL-004") -> Finding:
    return Finding(rule_id, sev, "t", Location("f.pkl"), "e", "r")


@pytest.mark.parametrize(
    ("severities", "threshold", "errors", "expected"),
    [
        ([], Severity.MEDIUM, [], ExitCode.CLEAN),
        ([Severity.LOW], Severity.MEDIUM, [], ExitCode.CLEAN),
        ([Severity.MEDIUM], Severity.MEDIUM, [], ExitCode.FINDINGS),  # "at or above"
        ([Severity.CRITICAL], Severity.HIGH, [], ExitCode.FINDINGS),
        ([Severity.HIGH], Severity.CRITICAL, [], ExitCode.CLEAN),
        ([Severity.INFO], Severity.INFO, [], ExitCode.FINDINGS),
        ([], Severity.MEDIUM, ["x: no such file"], ExitCode.ERROR),
        ([Severity.LOW], Severity.MEDIUM, ["x: no such file"], ExitCode.ERROR),
        ([Severity.HIGH], Severity.MEDIUM, ["x: no such file"], ExitCode.FINDINGS),  # finding wins
    ],
)
def test_report_exit_code(severities: list[Severity], threshold: Severity, errors: list[str],
                          expected: ExitCode) -> None:
    report = Report("trainguard", "0", ["x"], findings=[_finding(s) for s in severities],
                    errors=list(errors))
    assert report.exit_code(threshold) is expected


def test_sorted_findings_most_severe_first() -> None:
    report = Report("trainguard", "0", ["x"], findings=[
        Finding("TG-PKL-008", Severity.LOW, "t", Location("b.pkl", None, 9), "e", "r"),
        Finding("TG-PKL-001", Severity.CRITICAL, "t", Location("z.pkl"), "e", "r"),
        Finding("TG-PKL-004", Severity.MEDIUM, "t", Location("a.pkl", "m", 3), "e", "r"),
        Finding("TG-PKL-004", Severity.MEDIUM, "t", Location("a.pkl", None, 1), "e", "r"),
    ])
    got = [(f.severity, f.location.path, f.location.member) for f in report.sorted_findings()]
    assert got == [(Severity.CRITICAL, "z.pkl", None), (Severity.MEDIUM, "a.pkl", None),
                   (Severity.MEDIUM, "a.pkl", "m"), (Severity.LOW, "b.pkl", None)]


def test_summary_lists_every_severity_and_status() -> None:
    report = Report("trainguard", "0", ["x"], files=[
        FileResult("a", FileStatus.SCANNED, size=10), FileResult("b", FileStatus.SKIPPED, size=5),
    ], findings=[_finding(Severity.HIGH)])
    s = report.summary()
    assert list(s["by_severity"]) == ["critical", "high", "medium", "low", "info"]
    assert s["by_severity"]["high"] == 1
    assert s["by_status"] == {"scanned": 1, "skipped": 1, "error": 0}
    assert (s["files"], s["bytes"], s["findings"], s["errors"]) == (2, 15, 1, 0)


def test_location_text() -> None:
    assert str(Location("a.tar", "inner.pt!/archive/data.pkl", 12)) == (
        "a.tar!/inner.pt!/archive/data.pkl@12")
    assert str(Location("a.pkl")) == "a.pkl"
    assert str(Location("a.pkl", None, 0)) == "a.pkl@0"
