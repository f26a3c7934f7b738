"""safetensors header validation (src/trainguard/scan/analyzers/safetensors.py).

Benign files come from the real ``safetensors`` writers and must scan clean. Each hostile header is
cross-checked against the reference parser (``safetensors.deserialize``, the Rust crate): where the
reference refuses the file we must report TG-ST-001, and where it is more lenient than it should be
(duplicate tensor names: last one wins) we report anyway.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest

from fixtures.scanning import scan, scan_bytes, with_edits
from trainguard.artifacts.sniff import Format, sniff
from trainguard.core.config import Limits, ScanConfig
from trainguard.core.report import FileStatus
from trainguard.scan.context import Blob, ScanContext
from trainguard.scan.policy import Policy

#: wall-time ceiling of one scan (generous): hostile input must end in bounded time
CEILING_S = 10

F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def _raw(header: str | bytes, data: bytes = b"") -> bytes:
    hb = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(hb)) + hb + data


def _file(tmp_path: Path, data: bytes, name: str = "m.safetensors") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _reference_refuses(data: bytes) -> bool:
    from safetensors import deserialize

    try:
        deserialize(data)
    except Exception:
        return True
    return False


# ------------------------------------------------------------------------------------ benign
def test_numpy_writer_scans_clean(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4), "f16": np.ones(5, np.float16),
        "f64": np.zeros((2, 2)), "i8": np.arange(3, dtype=np.int8), "u8": np.zeros(7, np.uint8),
        "i16": np.zeros(3, np.int16), "u16": np.zeros(3, np.uint16), "i32": np.zeros(1, np.int32),
        "u32": np.zeros(1, np.uint32), "i64": np.zeros(4, np.int64), "u64": np.zeros(4, np.uint64),
        "bool": np.array([True, False]), "empty": np.zeros((0, 3), np.float32),
        "scalar": np.array(3.0, np.float32), "c64": np.zeros(2, np.complex64),
    }
    p = tmp_path / "np.safetensors"
    save_file(tensors, str(p), metadata={"format": "np", "note": "x"})
    report = scan(p, bounded_seconds=CEILING_S)
    assert report.findings == []
    assert report.files[0].status is FileStatus.SCANNED
    assert "safetensors" in report.files[0].formats


def test_empty_file_from_writer_scans_clean(tmp_path: Path) -> None:
    from safetensors.numpy import save

    p = _file(tmp_path, save({}))
    report = scan(p, bounded_seconds=CEILING_S)
    assert report.findings == []
    assert report.files[0].formats == ["safetensors"]


@pytest.mark.parametrize("name_len", [67, 323, 579])
def test_header_length_that_starts_like_a_pickle(tmp_path: Path, name_len: int) -> None:
    """Header lengths 128, 256+128, ... begin with bytes 0x80 0x00..0x05, a pickle PROTO opcode.

    Such files were sniffed as pickles (and then reported as broken pickles).
    """
    from safetensors.numpy import save

    data = save({"w" * name_len: np.zeros(3, np.float32)})
    assert data[0] == 0x80
    assert data[1] <= 5
    assert sniff(data[:4096], len(data)) is Format.SAFETENSORS
    report = scan(_file(tmp_path, data), bounded_seconds=CEILING_S)
    assert report.findings == []
    assert report.files[0].formats == ["safetensors"]


@pytest.mark.torch
def test_torch_writer_scans_clean(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    tensors = {
        "bf16": torch.ones(4, 4, dtype=torch.bfloat16), "f16": torch.zeros(3, dtype=torch.half),
        "e4m3": torch.zeros(8, dtype=torch.float8_e4m3fn),
        "e5m2": torch.zeros(8, dtype=torch.float8_e5m2),
        "i64": torch.arange(10), "f32": torch.randn(2, 3, 4),
    }
    p = tmp_path / "pt.safetensors"
    save_file(tensors, str(p), metadata={"format": "pt"})
    assert scan(p, bounded_seconds=CEILING_S).findings == []


def test_gzip_wrapped_safetensors_streams_header_only(tmp_path: Path) -> None:
    from safetensors.numpy import save

    data = save({"w": np.arange(1000, dtype=np.float32)})
    p = _file(tmp_path, gzip.compress(data), "m.safetensors.gz")
    report = scan(p, bounded_seconds=CEILING_S)
    assert report.findings == []
    assert "safetensors" in report.files[0].formats


class _CountingFile(io.BytesIO):
    total = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        _CountingFile.total += len(data)
        return data


def test_tensor_data_is_never_read() -> None:
    from safetensors.numpy import save

    data = save({"big": np.zeros(4 << 20, np.uint8), "small": np.ones(3, np.float32)})
    _CountingFile.total = 0

    def opener() -> BinaryIO:
        return _CountingFile(data)

    ctx = ScanContext(ScanConfig(), Policy(()), "mem.safetensors")
    fmt = ctx.scan(Blob("mem.safetensors", None, len(data), opener), 0)
    assert fmt is Format.SAFETENSORS
    assert ctx.findings == []
    header_len = struct.unpack("<Q", data[:8])[0]
    assert _CountingFile.total <= 4096 + 8 + header_len  # sniff head + header, no payload


# ----------------------------------------------------------------------------------- hostile
HOSTILE: dict[str, tuple[bytes, str | None, str]] = {
    # case: (file bytes, tensor the evidence must name or None, evidence fragment)
    "overlapping offsets": (
        _raw(json.dumps({"a": F32, "b": F32}), b"\0" * 8), "b", "overlaps"),
    "gap between tensors": (
        _raw(json.dumps({"a": F32, "b": {"dtype": "F32", "shape": [2],
                                          "data_offsets": [12, 20]}}), b"\0" * 20),
        "b", "gap of 4 bytes"),
    "byte count does not match dtype and shape": (
        _raw(json.dumps({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}),
             b"\0" * 8), "a", "need 12"),
    "unknown dtype": (
        _raw(json.dumps({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}),
             b"\0" * 16), "a", "unknown dtype"),
    "lower-case dtype": (
        _raw(json.dumps({"a": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}}),
             b"\0" * 8), "a", "unknown dtype"),
    "negative dimension": (
        _raw(json.dumps({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}),
             b"\0" * 8), "a", "shape"),
    "float dimension": (
        _raw(json.dumps({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}),
             b"\0" * 8), "a", "shape"),
    "boolean dimension": (
        _raw(json.dumps({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}),
             b"\0" * 8), "a", "shape"),
    "three data offsets": (
        _raw(json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}),
             b"\0" * 8), "a", "data_offsets"),
    "end before begin": (
        _raw(json.dumps({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}),
             b"\0" * 8), "a", "end before"),
    "offsets past the data area": (
        _raw(json.dumps({"a": {"dtype": "U8", "shape": [64], "data_offsets": [0, 64]}}),
             b"\0" * 8), "a", "past the data area"),
    "element count overflows u64": (
        _raw(json.dumps({"a": {"dtype": "F32", "shape": [1 << 62, 4], "data_offsets": [0, 0]}})),
        "a", "overflows"),
    "sub-byte dtype not ending on a byte": (
        _raw(json.dumps({"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}), b"\0\0"),
        "a", "byte boundary"),
    "missing shape": (
        _raw(json.dumps({"a": {"dtype": "F32", "data_offsets": [0, 8]}}), b"\0" * 8),
        "a", "missing shape"),
    "tensor entry not an object": (_raw(json.dumps({"a": 1})), "a", "not a tensor"),
    "duplicate field in a tensor": (
        _raw('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"dtype":"F32"}}', b"\0" * 8),
        None, "duplicate key 'dtype'"),
    "metadata value not a string": (
        _raw(json.dumps({"__metadata__": {"format": 1}})), None, "__metadata__"),
    "header is not JSON": (_raw('{"a": '), None, "not valid JSON"),
    "NaN in header": (_raw('{"a": NaN}'), None, "not valid JSON"),
    "header is not UTF-8": (_raw(b'{"\xff": 1}'), None, "not UTF-8"),
    "lone surrogate in a name": (
        _raw('{"a\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8),
        "a\ud800", "not valid Unicode"),
    "trailing bytes after the last tensor": (
        _raw(json.dumps({"a": F32}), b"\0" * 8 + b"payload"), None, "after the last tensor"),
    "trailing garbage after the header JSON": (
        _raw(json.dumps({"a": F32}) + "\0", b"\0" * 8), None, "not valid JSON"),
    "header length past the end of the file": (
        struct.pack("<Q", 4096) + b'{"a": {"dtype": "F32"', None, "past the end of the file"),
    "huge declared header": (
        struct.pack("<Q", 1 << 62) + b'{"a": 1}', None, "over the 100000000-byte limit"),
    "100k-deep nesting": (
        _raw('{"a":' + "[" * 100_000 + "]" * 100_000 + "}"), None, "nested too deeply"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_is_a_finding(tmp_path: Path, case: str) -> None:
    data, tensor, fragment = HOSTILE[case]
    assert _reference_refuses(data), "the reference loader accepts this file: not a bad header"
    report = scan(_file(tmp_path, data), bounded_seconds=CEILING_S)
    assert report.findings, case
    assert {f.rule_id for f in report.findings} == {"TG-ST-001"}
    assert any(fragment in f.evidence for f in report.findings), [
        f.evidence for f in report.findings]
    if tensor is not None:
        assert any(f.details.get("tensor") == tensor and repr(tensor) in f.evidence
                   for f in report.findings)


def test_non_object_header_is_refused() -> None:
    """A header that is valid JSON but not an object (sniffing needs '{', so checked directly)."""
    from trainguard.core.errors import MalformedInput
    from trainguard.scan.analyzers.safetensors import parse_header

    assert _reference_refuses(_raw("[]"))
    with pytest.raises(MalformedInput, match="not an object"):
        parse_header(b"[]")


def test_duplicate_tensor_name_is_flagged_though_the_reference_keeps_the_last(
    tmp_path: Path,
) -> None:
    """serde's HashMap keeps the last duplicate; readers that keep the first see other bytes."""
    one = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    two = '{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
    data = _raw('{"w":' + one + ',"w":' + two + "}", b"\0" * 8)
    assert not _reference_refuses(data)
    report = scan(_file(tmp_path, data), bounded_seconds=CEILING_S)
    assert [f.rule_id for f in report.findings] == ["TG-ST-001"]
    assert "duplicate key 'w'" in report.findings[0].evidence


@pytest.mark.parametrize("cut", [10, 20, 60, 100])
def test_truncated_real_file(tmp_path: Path, cut: int) -> None:
    from safetensors.numpy import save

    data = save({"weight": np.ones((4, 4), np.float32), "bias": np.ones(4, np.float32)})
    truncated = data[:cut] if cut < 100 else data[:-5]
    report = scan(_file(tmp_path, truncated), bounded_seconds=CEILING_S)
    assert [f.rule_id for f in report.findings] == ["TG-ST-001"]


def test_header_larger_than_configured_limit(tmp_path: Path) -> None:
    from safetensors.numpy import save

    data = save({f"t{i}": np.zeros(1, np.float32) for i in range(50)})
    config = ScanConfig(limits=Limits(max_header_bytes=256))
    report = scan(_file(tmp_path, data), config=config, bounded_seconds=CEILING_S)
    assert [f.rule_id for f in report.findings] == ["TG-LIM-001"]


def test_many_problems_are_capped(tmp_path: Path) -> None:
    header = {f"t{i}": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]} for i in range(200)}
    data = _raw(json.dumps(header), b"\0" * 8)
    report = scan(_file(tmp_path, data), bounded_seconds=CEILING_S)
    assert 1 < len(report.findings) <= 21
    assert report.findings[-1].count > 1


# ------------------------------------------------------------------------------- property test
def _mutants() -> Any:
    from hypothesis import strategies as st
    from safetensors.numpy import save

    base = save({"a": np.arange(6, dtype=np.float32), "b": np.ones(3, np.int16)}, {"k": "v"})
    positions = st.integers(0, len(base) - 1)
    return base, st.lists(st.tuples(positions, st.integers(0, 255)), min_size=1, max_size=8)


_BASE, _EDITS = _mutants()


def test_mutated_files_never_crash_and_agree_with_the_reference() -> None:
    """Byte edits of a real file: never an exception, and whenever the reference parser refuses
    the edited file while it still looks like safetensors, there is a finding."""
    from hypothesis import given, settings

    @settings(max_examples=300, deadline=None, database=None)
    @given(_EDITS)
    def check(edits: list[tuple[int, int]]) -> None:
        raw = with_edits(_BASE, edits)
        fmt, findings = scan_bytes("fuzz.safetensors", raw)
        if sniff(raw[:4096], len(raw)) is Format.SAFETENSORS and _reference_refuses(raw):
            assert findings, (raw[:120], fmt)

    check()
