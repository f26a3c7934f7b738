"""GGUF metadata and tensor table (src/trainguard/scan/analyzers/gguf.py).

Benign files come from ``gguf.GGUFWriter`` (the llama.cpp Python writer) with real metadata, a real
chat template and quantized tensors. Hostile files are hand-built byte by byte (the writer refuses
to produce them) and must end in a finding within bounded time.
"""

from __future__ import annotations

import gzip
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fixtures.chat_templates import CVE_2024_34359, LLAMA3
from fixtures.scanning import rule_ids, scan, scan_bytes, with_edits
from trainguard.core.config import Limits, ScanConfig
from trainguard.core.report import FileStatus
from trainguard.scan.analyzers.gguf import GGML_TYPES
from trainguard.scan.engine import scan_paths

gguf = pytest.importorskip("gguf")

#: wall-time ceiling of one scan (generous): hostile input must end in bounded time
CEILING_S = 10


def _write(path: Path, template: str | None = LLAMA3, *, big_endian: bool = False,
           extra: dict[str, str] | None = None, vocab: int = 64) -> Path:
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_block_count(1)
    w.add_head_count(4)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(7)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    tokens = [f"tok{i}" for i in range(vocab)]
    w.add_token_list(tokens)
    w.add_token_types([1] * vocab)
    w.add_token_scores([0.0] * vocab)
    w.add_token_merges(["t o", "o k"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_float64("test.f64", 0.5)
    w.add_int8("test.i8", -3)
    w.add_uint64("test.u64", 1 << 40)
    if template is not None:
        w.add_chat_template(template)
    for key, value in (extra or {}).items():
        w.add_string(key, value)
    rows = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    w.add_tensor("token_embd.weight", rows)
    w.add_tensor("output_norm.weight", np.ones(32, np.float16))
    if not big_endian:
        q8 = gguf.quantize(rows, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        q4 = gguf.quantize(np.ones((2, 256), np.float32), gguf.GGMLQuantizationType.Q4_0)
        w.add_tensor("blk.0.ffn_up.weight", q4, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ------------------------------------------------------------------------------- hand builder
def _s(text: str | bytes, wide: bool = True) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q" if wide else "<I", len(raw)) + raw


def _kv_string(key: str, value: str | bytes, wide: bool = True) -> bytes:
    return _s(key, wide) + struct.pack("<I", 8) + _s(value, wide)


def _kv_u32(key: str, value: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, value)


def _tensor_info(name: str, dims: Sequence[int], ttype: int, offset: int) -> bytes:
    return (_s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<IQ", ttype, offset))


def _gguf(kvs: Sequence[bytes] = (), tensors: Sequence[bytes] = (), *, version: int = 3,
          n_kv: int | None = None, n_tensors: int | None = None, data: bytes = b"") -> bytes:
    counts = (struct.pack("<II", len(tensors) if n_tensors is None else n_tensors,
                          len(kvs) if n_kv is None else n_kv) if version == 1 else
              struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                          len(kvs) if n_kv is None else n_kv))
    body = b"GGUF" + struct.pack("<I", version) + counts + b"".join(kvs) + b"".join(tensors)
    if tensors:
        body += b"\0" * (-len(body) % 32)
    return body + data


def _file(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ------------------------------------------------------------------------------------ benign
def test_type_table_matches_gguf_py() -> None:
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        assert GGML_TYPES[int(qtype)][1:] == (block, size), qtype.name


def test_writer_file_with_real_metadata_scans_clean(tmp_path: Path) -> None:
    report = scan(_write(tmp_path / "tiny.gguf", vocab=5000), bounded_seconds=CEILING_S)
    assert report.findings == []
    assert report.files[0].status is FileStatus.SCANNED
    assert report.files[0].formats == ["gguf"]


def test_big_endian_writer_file_scans_clean(tmp_path: Path) -> None:
    report = scan(_write(tmp_path / "be.gguf", big_endian=True), bounded_seconds=CEILING_S)
    assert report.findings == []
    assert report.files[0].formats == ["gguf"]


def test_vocab_only_file_scans_clean(tmp_path: Path) -> None:
    p = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_token_list(["a", "b"])
    w.add_chat_template(LLAMA3)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    assert scan(p, bounded_seconds=CEILING_S).findings == []


def test_gzip_wrapped_gguf_is_streamed(tmp_path: Path) -> None:
    raw = _write(tmp_path / "a.gguf").read_bytes()
    clean = scan(_file(tmp_path, gzip.compress(raw), "a.gguf.gz"), bounded_seconds=CEILING_S)
    assert clean.findings == []
    hostile = _write(tmp_path / "b.gguf", CVE_2024_34359).read_bytes()
    report = scan(_file(tmp_path, gzip.compress(hostile), "b.gguf.gz"), bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-TPL-001"]


# ------------------------------------------------------------------------- chat templates
def test_cve_2024_34359_template_in_gguf_metadata(tmp_path: Path) -> None:
    """CVE-2024-34359: SSTI through tokenizer.chat_template in GGUF metadata."""
    report = scan(_write(tmp_path / "evil.gguf", CVE_2024_34359), bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-TPL-001"]
    finding = report.findings[0]
    assert finding.severity.label == "critical"
    assert "tokenizer.chat_template" in finding.evidence
    assert "__subclasses__" in finding.evidence
    assert finding.location.offset is not None


def test_named_chat_template_variant(tmp_path: Path) -> None:
    """llama.cpp also reads tokenizer.chat_template.<name> (e.g. tool_use, rag)."""
    p = _write(tmp_path / "named.gguf", extra={
        "tokenizer.chat_template.tool_use": "{{ cycler.__init__.__globals__.os.popen('true') }}"})
    report = scan(p, bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-TPL-001"]
    assert "tokenizer.chat_template.tool_use" in report.findings[0].evidence


def test_invalid_utf8_cannot_hide_a_dunder(tmp_path: Path) -> None:
    """A reader that drops invalid bytes joins '__cl\\xffass__' into '__class__'."""
    data = _gguf([_kv_string("tokenizer.chat_template", b"{{ ()|attr('__cl\xffass__') }}")])
    assert rule_ids(scan(_file(tmp_path, data), bounded_seconds=CEILING_S)) == ["TG-TPL-001"]


def test_gguf_v1_template_is_checked(tmp_path: Path) -> None:
    """GGUF v1 uses 32-bit lengths and counts."""
    data = _gguf([_kv_string("tokenizer.chat_template", CVE_2024_34359, wide=False)], version=1)
    assert rule_ids(scan(_file(tmp_path, data), bounded_seconds=CEILING_S)) == ["TG-TPL-001"]


def test_duplicate_template_key_checks_both_values(tmp_path: Path) -> None:
    """Readers disagree on which duplicate wins; gguf.cpp refuses the file."""
    data = _gguf([_kv_string("tokenizer.chat_template", LLAMA3),
                  _kv_string("tokenizer.chat_template", CVE_2024_34359)])
    report = scan(_file(tmp_path, data), bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-FMT-001", "TG-TPL-001"]


# ----------------------------------------------------------------------------------- hostile
HUGE = 1 << 62
HOSTILE: dict[str, bytes] = {
    "bad version 0": b"GGUF" + struct.pack("<IQQ", 0, 0, 0),
    "bad version 4": b"GGUF" + struct.pack("<IQQ", 4, 0, 0),
    "huge key/value count": _gguf(n_kv=HUGE),
    "huge tensor count": _gguf(n_tensors=HUGE),
    "huge key length": _gguf([struct.pack("<Q", HUGE) + b"key"]),
    "huge string value length": _gguf([_s("general.name") + struct.pack("<IQ", 8, HUGE)]),
    "huge template length": _gguf([_s("tokenizer.chat_template") + struct.pack("<IQ", 8, HUGE)]),
    "huge u32 array count": _gguf([_s("a") + struct.pack("<IIQ", 9, 4, HUGE)]),
    "huge string array count": _gguf([_s("tokenizer.ggml.tokens")
                                      + struct.pack("<IIQ", 9, 8, HUGE)]),
    "string array element past the end": _gguf([_s("tokenizer.ggml.tokens")
                                                + struct.pack("<IIQ", 9, 8, 2) + _s("a")
                                                + struct.pack("<Q", 1 << 40)]),
    "arrays nested too deep": _gguf([_s("a") + struct.pack("<I", 9)
                                     + struct.pack("<IQ", 9, 1) * 6 + struct.pack("<IQ", 4, 0)]),
    "unknown value type": _gguf([_s("a") + struct.pack("<I", 13) + b"\0" * 8]),
    "truncated key/value section": _gguf([_kv_string("general.name", "x")], n_kv=2),
    "alignment not a power of two": _gguf([_kv_u32("general.alignment", 24)]),
    "alignment of the wrong type": _gguf([_kv_string("general.alignment", "32")]),
    "five dimensions": _gguf(tensors=[_tensor_info("t", [1, 1, 1, 1, 1], 0, 0)],
                             data=b"\0" * 32),
    "unknown ggml type": _gguf(tensors=[_tensor_info("t", [4], 99, 0)], data=b"\0" * 32),
    "row not a multiple of the block": _gguf(tensors=[_tensor_info("t", [33], 8, 0)],
                                             data=b"\0" * 64),
    "overlapping tensors": _gguf(tensors=[_tensor_info("a", [8], 0, 0),
                                          _tensor_info("b", [8], 0, 0)], data=b"\0" * 64),
    "tensor data past the end": _gguf(tensors=[_tensor_info("a", [1024], 0, 0)], data=b"\0" * 64),
    "duplicate tensor name": _gguf(tensors=[_tensor_info("a", [8], 0, 0),
                                            _tensor_info("a", [8], 0, 32)], data=b"\0" * 64),
    "huge dimension": _gguf(tensors=[_tensor_info("a", [1 << 63, 2], 0, 0)], data=b"\0" * 32),
    "garbage after the magic": b"GGUF" + bytes(range(256)) * 4,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_gguf_is_a_finding(tmp_path: Path, case: str) -> None:
    report = scan(_file(tmp_path, HOSTILE[case]), bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-FMT-001"], [f.evidence for f in report.findings]


def test_every_truncation_of_a_real_file_is_a_finding(tmp_path: Path) -> None:
    raw = _write(tmp_path / "full.gguf", vocab=8).read_bytes()
    # the last tensor's padding is not data: a cut there loses nothing
    last_data_end = len(raw.rstrip(b"\0"))
    cuts = [*range(4, 400), *range(400, last_data_end, 37)]
    target = tmp_path / "cut.gguf"
    start = time.perf_counter()
    for cut in cuts:
        target.write_bytes(raw[:cut])
        report = scan_paths([str(target)], ScanConfig())
        assert rule_ids(report) == ["TG-FMT-001"], (cut, [f.evidence for f in report.findings])
    assert time.perf_counter() - start < 60


def test_metadata_larger_than_configured_limit(tmp_path: Path) -> None:
    p = _write(tmp_path / "big.gguf", vocab=20_000)
    report = scan(p, config=ScanConfig(limits=Limits(max_header_bytes=64 << 10)),
                  bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-LIM-001"]


def test_huge_counts_in_a_stream_are_bounded(tmp_path: Path) -> None:
    """Inside gzip the size is unknown; the metadata limit still bounds the work."""
    data = gzip.compress(HOSTILE["huge string array count"])
    report = scan(_file(tmp_path, data, "m.gguf.gz"), bounded_seconds=CEILING_S)
    assert rule_ids(report) == ["TG-LIM-001"]


# ------------------------------------------------------------------------------- property test
def test_mutated_files_never_crash_and_agree_with_gguf_py(tmp_path: Path) -> None:
    """Byte edits of a real file: never an exception, and whenever gguf-py's reader refuses the
    edited file, there is a finding."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    base = _write(tmp_path / "base.gguf", vocab=4).read_bytes()
    meta_end = len(base) - 2048  # edits land in the metadata and tensor table, mostly
    target = tmp_path / "fuzz.gguf"

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.lists(st.tuples(st.integers(4, max(5, meta_end)), st.integers(0, 255)),
                    min_size=1, max_size=6))
    def check(edits: list[tuple[int, int]]) -> None:
        raw = with_edits(base, edits)
        _, findings = scan_bytes("fuzz.gguf", raw)
        target.write_bytes(raw)
        try:
            gguf.GGUFReader(str(target))
        except Exception:
            assert findings, raw[:64]

    check()
