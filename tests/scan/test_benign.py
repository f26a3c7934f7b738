"""No false positives: real model files written by the real libraries must scan clean.

The corpus (tests/fixtures/benign.py) holds torch state dicts, optimizer and scheduler states,
full-model saves of built-in modules, quantized tensors, TorchScript, legacy torch files, Hugging
Face Trainer checkpoints and save_pretrained folders, Lightning checkpoints, numpy, scikit-learn
via joblib (plain and compressed), plain pickles, safetensors, ONNX, GGUF and Keras files. Each
must give zero findings of any severity with the default policy, and be recognised as its format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.benign import EXPECTED_FORMATS, GROUPS, TORCH_GROUPS, BenignFile, CorpusCache
from trainguard.cli.main import main
from trainguard.core.config import ScanConfig
from trainguard.core.findings import Severity
from trainguard.core.report import FileStatus, Report
from trainguard.scan.engine import scan_paths
from trainguard.scan.policy import Policy


def _marks(group: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.torch] if group in TORCH_GROUPS else []


def _group(corpus: CorpusCache, group: str) -> list[BenignFile]:
    built = corpus.get(group)
    if isinstance(built, str):
        pytest.skip(f"library missing: {built}")
    assert built, f"group {group} wrote no file"
    return built


def _scan(corpus: CorpusCache, group: str) -> tuple[list[BenignFile], Report]:
    files = _group(corpus, group)
    return files, scan_paths([str(corpus.group_dir(group))], ScanConfig())


def _by_path(report: Report) -> dict[str, object]:
    return {str(Path(fr.path).resolve()): fr for fr in report.files}


@pytest.mark.parametrize("group", [pytest.param(g, marks=_marks(g)) for g in GROUPS])
def test_group_scans_clean(benign_corpus: CorpusCache, group: str) -> None:
    files, report = _scan(benign_corpus, group)
    listing = "\n".join(f"{f.rule_id} {f.severity.label} {f.location.path} {f.location.member} "
                        f"{f.evidence}" for f in report.findings)
    assert report.findings == [], f"false positives:\n{listing}"
    assert report.errors == []
    seen = _by_path(report)
    missing = [f.case_id for f in files if str(f.path.resolve()) not in seen]
    assert missing == [], "corpus files the directory walk did not scan"


@pytest.mark.parametrize("group", [pytest.param(g, marks=_marks(g)) for g in GROUPS])
def test_group_is_recognised(benign_corpus: CorpusCache, group: str) -> None:
    files, report = _scan(benign_corpus, group)
    seen = _by_path(report)
    for f in files:
        fr = seen[str(f.path.resolve())]
        expected = EXPECTED_FORMATS[f.case_id]
        if not expected:  # raw data files (ONNX external weights): nothing to execute, skipped
            assert fr.status is FileStatus.SKIPPED, f"{f.case_id}: {fr.status}"
            continue
        assert fr.status is FileStatus.SCANNED, f"{f.case_id}: {fr.status} {fr.note}"
        assert expected <= set(fr.formats), f"{f.case_id}: formats {fr.formats}"


# ------------------------------------------------------------ a project's own model class
@pytest.mark.torch
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_own_model_class_is_medium_until_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    legacy: bool,
) -> None:
    """torch.save(model) of a class from the user's code is a finding (the loader imports and
    builds it), only MEDIUM, and [scan.allow] globals in trainguard.toml clears it.

    The legacy format refers to the class through a ("module", cls, file, source) persistent id
    (torch/serialization.py _legacy_save); it must read as constructing that class, not as an
    unknown dynamic call.
    """
    torch = pytest.importorskip("torch")
    from fixtures.custom_model import TinyNet

    monkeypatch.delenv("TRAINGUARD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    model_path = tmp_path / "model.pt"
    torch.save(TinyNet(), model_path, _use_new_zipfile_serialization=not legacy)
    qualname = f"{TinyNet.__module__}.{TinyNet.__qualname__}"

    report = scan_paths([str(model_path)], ScanConfig())
    assert report.findings, "a user-defined class must not pass by default"
    assert {f.rule_id for f in report.findings} <= {"TG-PKL-003", "TG-PKL-004"}
    assert {f.severity for f in report.findings} == {Severity.MEDIUM}
    assert any(qualname in f.evidence for f in report.findings)
    assert "TG-PKL-003" in {f.rule_id for f in report.findings}  # constructed, also in legacy

    config = tmp_path / "trainguard.toml"
    config.write_text(f'[scan.allow]\nglobals = ["{qualname}"]\n', encoding="utf-8")
    capsys.readouterr()
    code = main(["scan", str(model_path), "-f", "json", "-c", str(config)])
    doc = json.loads(capsys.readouterr().out)
    assert doc["findings"] == []
    assert code == 0
    assert main(["scan", str(model_path), "-f", "json"]) == 0  # discovered from the cwd


def test_legacy_module_persistent_id_is_judged_by_its_class(tmp_path: Path) -> None:
    """The class behind a legacy ("module", cls, ...) persistent id keeps its deny-list verdict."""
    # PROTO 2, MARK, 'module', GLOBAL posix.system, NONE, NONE, TUPLE, BINPERSID,
    # EMPTY_TUPLE, NEWOBJ, STOP (never loaded)
    data = b"\x80\x02(X\x06\x00\x00\x00modulecposix\nsystem\nNNtQ)\x81."
    p = tmp_path / "legacy_module.pkl"
    p.write_bytes(data)
    report = scan_paths([str(p)], ScanConfig())
    crit = [f for f in report.findings if f.rule_id == "TG-PKL-001"]
    assert crit
    assert crit[0].severity is Severity.CRITICAL
    assert "construct" in crit[0].evidence


# -------------------------------------------------- allow-list entries keep to their use
@pytest.mark.parametrize(
    ("module", "name", "uses", "allowed"),
    [
        # dataclasses rebuilt by NEWOBJ + BUILD in training_args.bin: construct only, since a
        # REDUCE call would run __init__/__post_init__ (file reads, torch.distributed set-up)
        ("transformers.training_args", "TrainingArguments", {"import", "construct"}, True),
        ("transformers.training_args", "TrainingArguments", {"import", "call"}, False),
        ("transformers.trainer_pt_utils", "AcceleratorConfig", {"import", "construct"}, True),
        ("accelerate.state", "PartialState", {"import", "call"}, False),
        # numpy bit generators are passed as classes to numpy.random._pickle ctors
        ("numpy.random._pcg64", "PCG64", {"import"}, True),
        ("numpy.random._pcg64", "PCG64", {"import", "call"}, False),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence", {"import", "call"}, True),
        # scipy.sparse classes: module and class format must agree
        ("scipy.sparse._csr", "csr_matrix", {"import", "construct"}, True),
        ("scipy.sparse._csr", "coo_matrix", {"import", "construct"}, False),
        ("scipy.sparse._csr", "csr_matrix", {"import", "call"}, False),
    ],
)
def test_allow_list_entries_are_use_specific(module: str, name: str, uses: set[str],
                                             allowed: bool) -> None:
    verdict = Policy().classify(module, name, uses)
    assert (verdict.rule_id is None) is allowed, verdict
