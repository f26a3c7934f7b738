"""JSON configs and Hugging Face folders (analyzers/jsonfiles.py, analyzers/hf.py).

Folders are written by transformers' own ``save_pretrained`` where it matters (config.json with
``auto_map``, a tokenizer whose chat template transformers stores as ``chat_template.jinja``). The
Python files next to them are plain text that is never imported. The Hugging Face cache layout is
rebuilt with real relative symlinks (``snapshots/<rev>/name -> ../../blobs/<hash>``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fixtures.scanning import rule_ids, scan
from trainguard.core.config import Limits, ScanConfig
from trainguard.core.report import FileStatus
from trainguard.scan.analyzers import jsonfiles

BENIGN_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
# CVE-2024-34359-style payload (server-side template injection); harmless command.
HOSTILE_TEMPLATE = "{{ lipsum.__globals__['os'].popen('true').read() }}"
#: wall-time ceiling of one scan (generous): a folder scan must end in bounded time
CEILING_S = 30
MODELING_PY = "# custom model code that trust_remote_code=True would import\nimport torch\n"


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """save_pretrained folders: a custom-code model, a plain model, tokenizers with templates."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("hf")
    custom = root / "custom"
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)
    cfg.auto_map = {"AutoConfig": "configuration_tiny.TinyConfig",
                    "AutoModelForCausalLM": "modeling_tiny.TinyModel"}
    cfg.save_pretrained(str(custom))
    (custom / "configuration_tiny.py").write_text(MODELING_PY)
    (custom / "modeling_tiny.py").write_text(MODELING_PY)
    (custom / "layers").mkdir()
    (custom / "layers" / "attention.py").write_text(MODELING_PY)

    plain = root / "plain"
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32).save_pretrained(str(plain))

    out = {"custom": custom, "plain": plain}
    for name, template in (("tok_benign", BENIGN_TEMPLATE), ("tok_hostile", HOSTILE_TEMPLATE)):
        tk = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
        tok.chat_template = template
        tok.save_pretrained(str(root / name))
        out[name] = root / name
    return out


# ------------------------------------------------------------------------- transformers folders
def test_plain_save_pretrained_folder_is_clean(hf_folders: dict[str, Path]) -> None:
    report = scan(hf_folders["plain"], bounded_seconds=CEILING_S)
    assert report.findings == []
    config = next(fr for fr in report.files if fr.path.endswith("config.json"))
    assert config.status is FileStatus.SCANNED
    assert config.formats == ["json"]


def test_auto_map_and_custom_code_folder(hf_folders: dict[str, Path]) -> None:
    folder = hf_folders["custom"]
    report = scan(folder, bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-HF-001", "TG-HF-001"]
    by_path = {f.location.path: f for f in report.findings}
    auto_map = by_path[str(folder / "config.json")]
    assert "AutoConfig -> configuration_tiny.TinyConfig" in auto_map.evidence
    assert "modeling_tiny.TinyModel" in auto_map.evidence
    code = by_path[str(folder)]
    assert code.details["files"] == ["configuration_tiny.py", "layers/attention.py",
                                     "modeling_tiny.py"]


def test_transformers_chat_template_file_benign(hf_folders: dict[str, Path]) -> None:
    folder = hf_folders["tok_benign"]
    assert (folder / "chat_template.jinja").is_file()
    assert scan(folder, bounded_seconds=CEILING_S).findings == []


def test_transformers_chat_template_file_hostile(hf_folders: dict[str, Path]) -> None:
    folder = hf_folders["tok_hostile"]
    report = scan(folder, bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-TPL-001"]
    assert report.findings[0].location.path == str(folder / "chat_template.jinja")


def test_additional_chat_templates_dir(tmp_path: Path) -> None:
    d = tmp_path / "m"
    (d / "additional_chat_templates").mkdir(parents=True)
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "X"}))
    (d / "additional_chat_templates" / "tool_use.jinja").write_text(HOSTILE_TEMPLATE)
    (d / "additional_chat_templates" / "rag.jinja").write_text(BENIGN_TEMPLATE)
    report = scan(d, bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-TPL-001"]
    assert report.findings[0].location.path.endswith("tool_use.jinja")


# ----------------------------------------------------------------------------------- JSON kinds
def _json(tmp_path: Path, name: str, doc: Any) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_remote_repo_reference_in_auto_map(tmp_path: Path) -> None:
    p = _json(tmp_path, "config.json", {
        "model_type": "x", "auto_map": {"AutoModel": "evil-org/payload--modeling_x.XModel",
                                        "AutoTokenizer": ["tokenization_x.XTok", None]}})
    report = scan(p, bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-HF-001"]
    evidence = report.findings[0].evidence
    assert "evil-org/payload" in evidence
    assert "tokenization_x.XTok" in evidence


def test_custom_pipelines(tmp_path: Path) -> None:
    p = _json(tmp_path, "config.json", {"model_type": "x", "custom_pipelines": {
        "pair-classification": {"impl": "custom_pipeline.PairClassificationPipeline"}}})
    report = scan(p, bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-HF-001"]
    assert "custom_pipeline.PairClassificationPipeline" in report.findings[0].evidence


def test_processor_chat_template_json(tmp_path: Path) -> None:
    benign = _json(tmp_path, "chat_template.json", {"chat_template": BENIGN_TEMPLATE})
    assert scan(benign, bounded_seconds=CEILING_S).findings == []
    hostile = _json(tmp_path, "chat_template.json", {"chat_template": HOSTILE_TEMPLATE})
    assert rule_ids(scan(hostile, bounded_seconds=CEILING_S)) == ["TG-TPL-001"]


def test_other_json_is_skipped(tmp_path: Path) -> None:
    report = scan(_json(tmp_path, "vocab.json", {"a": 1, "b": 2}), bounded_seconds=CEILING_S)
    assert report.findings == []
    assert report.files[0].status is FileStatus.SKIPPED


def test_text_that_starts_like_json_is_skipped(tmp_path: Path) -> None:
    p = tmp_path / "template.j2"
    p.write_text("{% for m in messages %}{{ m }}{% endfor %}")
    report = scan(p, bounded_seconds=CEILING_S)
    assert report.findings == []
    assert report.files[0].status is FileStatus.SKIPPED


def test_100k_deep_nesting_is_a_finding(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text('{"auto_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    report = scan(p, bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-LIM-001"]


def test_json_over_the_size_limit(tmp_path: Path) -> None:
    p = _json(tmp_path, "config.json", {"model_type": "x", "pad": "x" * 5000,
                                        "auto_map": {"AutoModel": "modeling_x.X"}})
    report = scan(p, config=ScanConfig(limits=Limits(max_header_bytes=1024)),
                  bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-LIM-001"]


def test_keras_checker_is_called_when_present(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """analyzers/keras.py is optional here; when it exists it sees every JSON document."""
    seen: list[Any] = []

    def check(ctx: Any, blob: Any, doc: Any) -> bool:
        seen.append(doc)
        return isinstance(doc, dict) and doc.get("class_name") == "Functional"

    monkeypatch.setattr(jsonfiles, "_keras_check", lambda: check)
    keras_doc = {"module": "keras", "class_name": "Functional", "config": {}}
    report = scan(_json(tmp_path, "config.json", keras_doc), bounded_seconds=CEILING_S)
    assert seen == [keras_doc]
    assert report.files[0].status is FileStatus.SCANNED


# ------------------------------------------------------------------------------ HF cache layout
def _cache(root: Path) -> tuple[Path, Path]:
    """A hub cache repo: blobs by hash, snapshot names as relative links, refs/main."""
    repo = root / "hub" / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    files = {
        "config.json": json.dumps({"model_type": "tiny",
                                   "auto_map": {"AutoModel": "modeling_tiny.TinyModel"}}),
        "modeling_tiny.py": MODELING_PY,
        "tokenizer_config.json": json.dumps({"tokenizer_class": "X"}),
        "chat_template.jinja": HOSTILE_TEMPLATE,
    }
    for i, (name, text) in enumerate(sorted(files.items())):
        blob = blobs / f"{i:040x}"
        blob.write_text(text)
        os.symlink(f"../../blobs/{blob.name}", snap / name)
    return repo, snap


@pytest.mark.parametrize("target", ["hub", "repo", "snapshot"])
def test_hf_cache_layout(tmp_path: Path, target: str) -> None:
    repo, snap = _cache(tmp_path)
    path = {"hub": repo.parent, "repo": repo, "snapshot": snap}[target]
    report = scan(path, bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-HF-001", "TG-HF-001", "TG-TPL-001"]
    folder = next(f for f in report.findings if f.location.path == str(snap))
    assert folder.details["files"] == ["modeling_tiny.py"]
    template = next(f for f in report.findings if f.rule_id == "TG-TPL-001")
    assert template.location.path == str(snap / "chat_template.jinja")
    # per-file findings name the snapshot file, never the blob hash it links to
    auto_map = next(f for f in report.findings if f.rule_id == "TG-HF-001"
                    and f.location.path != str(snap))
    assert auto_map.location.path == str(snap / "config.json")
    assert all("blobs" not in fr.path for fr in report.files)


def test_hf_cache_link_leaving_the_repo(tmp_path: Path) -> None:
    repo, snap = _cache(tmp_path)
    outside = tmp_path / "elsewhere.py"
    outside.write_text(MODELING_PY)
    os.symlink(os.path.relpath(outside, snap), snap / "modeling_extra.py")
    report = scan(snap, bounded_seconds=CEILING_S)
    assert "TG-FS-001" in rule_ids(report)
    folder = next(f for f in report.findings if f.location.path == str(snap)
                  and f.rule_id == "TG-HF-001")
    assert folder.details["files"] == ["modeling_tiny.py"]


def test_python_files_without_a_model_config_are_not_reported(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(MODELING_PY)
    (tmp_path / "data.json").write_text("{}")
    assert scan(tmp_path, bounded_seconds=CEILING_S).findings == []


def test_big_json_with_an_escaped_key_is_still_parsed(tmp_path: Path) -> None:
    """Over 1 MiB only documents that can hold a wanted key are parsed; escapes count."""
    pad = {f"tok{i}": i for i in range(120_000)}
    p = tmp_path / "config.json"
    p.write_text('{"model_type": "x", "auto\\u005fmap": {"AutoModel": "modeling_x.X"}, "pad": '
                 + json.dumps(pad) + "}")
    assert p.stat().st_size > 1 << 20
    assert rule_ids(scan(p, bounded_seconds=CEILING_S)) == ["TG-HF-001"]
    plain = _json(tmp_path, "tokenizer.json", {"model": {"vocab": pad}})
    assert plain.stat().st_size > 1 << 20
    report = scan(plain, bounded_seconds=CEILING_S)
    assert report.findings == []
    assert report.files[0].status is FileStatus.SKIPPED


def test_json_over_the_size_limit_without_wanted_keys_is_skipped(tmp_path: Path) -> None:
    """A big JSON document that cannot hold auto_map/chat_template is data, not a finding."""
    p = _json(tmp_path, "dump.json", {"rows": ["x" * 100] * 100})
    report = scan(p, config=ScanConfig(limits=Limits(max_header_bytes=1024)),
                  bounded_seconds=CEILING_S)
    assert report.findings == []
    assert report.files[0].status is FileStatus.SKIPPED
