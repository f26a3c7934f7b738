"""One regression test per public scanner bypass and pickle attack technique.

The cases live in ``tests/fixtures/bypass_cases.py``: each is headed by its advisory (GHSA id,
CVE or write-up URL) and a one-line technique, and is built at test time by the payload builder
in ``tests/fixtures/payloads.py`` with harmless payloads. Nothing is ever loaded: each test scans
the built file and asserts

- the exact rule ids the case must raise, each at or above the default threshold (medium),
- that nothing ran during the scan (no unpickling, process, code-object or network audit event),
- and the finding's evidence names the case's target where the case has one.

The test id is the case id; the advisory is printed in every failure message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fixtures.bypass_cases import CASES, Case, MissingDependency
from fixtures.payloads import PickleWriter, malicious_corpus, torch_zip
from trainguard.core.config import ScanConfig
from trainguard.core.findings import Finding, Severity
from trainguard.scan.engine import scan_paths

# Audit events (PEP 578) that would mean the scanner unpickled, ran or reached out. Every payload
# here can only run through an unpickler, which raises 'pickle.find_class' before anything else.
_FORBIDDEN_EVENTS = frozenset({
    "pickle.find_class", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "os.kill", "os.killpg", "subprocess.Popen", "ctypes.dlopen", "socket.connect",
    "socket.getaddrinfo", "webbrowser.open", "signal.pthread_kill", "os.startfile",
})
class _Watch:
    """What the audit hook records, and whether it is recording."""

    on = False
    seen: list[str] = []


def _hook(event: str, _args: tuple[object, ...]) -> None:
    # Installed once per process (audit hooks cannot be removed); cheap when not watching.
    if _Watch.on and event in _FORBIDDEN_EVENTS:
        _Watch.seen.append(event)


sys.addaudithook(_hook)


def _scan(path: Path) -> tuple[list[Finding], list[str]]:
    """Findings for ``path`` and the forbidden audit events raised while scanning it."""
    _Watch.seen = []
    _Watch.on = True
    try:
        # An explicit config: no trainguard.toml from the working directory may widen the
        # allow-list.
        report = scan_paths([str(path)], ScanConfig())
    finally:
        _Watch.on = False
    assert not report.errors, report.errors
    return report.findings, list(_Watch.seen)


def _params() -> list[object]:
    out = []
    for c in CASES:
        marks = [pytest.mark.torch] if "torch" in c.needs else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def _describe(case: Case, findings: list[Finding]) -> str:
    lines = [f"{case.id}: {case.advisory} -- {case.technique}"]
    lines += [f"  {f.rule_id} {f.severity.label} {f.location} {f.evidence}" for f in findings]
    return "\n".join(lines)


@pytest.mark.parametrize("case", _params())
def test_bypass_is_detected(case: Case, tmp_path: Path) -> None:
    """Each public bypass raises its rule ids at or above medium, and nothing runs."""
    try:
        path = case.write(tmp_path)
    except MissingDependency as exc:
        pytest.skip(f"needs {exc}")
    findings, events = _scan(path)
    detail = _describe(case, findings)
    for rule_id in case.expect:
        hits = [f for f in findings if f.rule_id == rule_id]
        assert hits, f"expected {rule_id}\n{detail}"
        assert max(f.severity for f in hits) >= Severity.MEDIUM, detail
    assert events == [], f"scanning raised audit events {events}\n{detail}"


def test_every_case_cites_an_advisory_and_expects_findings() -> None:
    for c in CASES:
        assert c.advisory.strip(), c.id
        assert c.technique.strip(), c.id
        assert c.expect, c.id
        assert all(r.startswith("TG-") for r in c.expect), c.id


def test_catalogue_covers_the_required_techniques() -> None:
    """The techniques the issue names each have at least one case (guards against pruning)."""
    ids = " ".join(c.id for c in CASES)
    for needle in ("pkgutil", "asyncio", "operator", "bottleneck", "collect-env", "cprofile",
                   "profile", "trace", "bdb", "pdb", "code",
                   "doctest", "ensurepip", "pip.main", "xxsubinterpreters", "uuid",
                   "osx-support", "mailcap", "f2py", "runstring", "pydoc", "ctypes", "pty",
                   "marshal", "idlelib", "lib2to3", "timeit", "venv", "distutils",
                   "logging.config", "webbrowser", "shutil", "tempfile", "dotted", "memo",
                   "getattr", "nullifai", "zip-local-name", "zip-bad-crc", "zip-local-flag",
                   "extension-", "torch-legacy", "joblib-zlib", "joblib-lz4", "npy",
                   "nested-", "multi-pickle", "rng-state", "sab-"):
        assert needle in ids, needle


def test_sabotage_cases_use_the_sabotage_family() -> None:
    for c in CASES:
        if c.id.startswith("sab-"):
            assert any(r.startswith("TG-SAB-") for r in c.expect), c.id


def test_corpus_writes_one_file_per_case(tmp_path: Path) -> None:
    """The benchmark entry point: every available case becomes a file with its id."""
    rows = malicious_corpus(tmp_path)
    assert len({case_id for _p, case_id, _d in rows}) == len(rows)
    assert all(p.is_file() and p.stat().st_size > 0 for p, _i, _d in rows)
    assert len(rows) >= len([c for c in CASES if not c.needs])


def test_payload_hidden_after_benign_checkpoint_in_same_stream(tmp_path: Path) -> None:
    """A checkpoint-shaped dict whose last value is a call: the call must still be reported."""
    w = PickleWriter(2)
    w.raw(b"}").str_("epoch").int_(3).raw(b"s").str_("opt")
    w.call("posix", "system", "true").raw(b"s")
    path = tmp_path / "model.pt"
    path.write_bytes(torch_zip(w.done()))
    findings, events = _scan(path)
    assert not events
    assert any(f.rule_id == "TG-PKL-001" and "system" in f.evidence for f in findings)
