"""Hostile input for ``trainguard scan``: every case ends in a finding or a clean error, in bounded
time and memory, never a crash or a hang (issue 2, "hostile-input suite").

Each case scans a file built at test time through the real entry point
(:func:`trainguard.scan.engine.scan_file` / :func:`scan_paths`) under a hard 30 s SIGALRM deadline,
and checks the rule id it must produce. Bombs and blow-up attempts also check the peak traced
allocation (tracemalloc) against 200 MB. No timing is asserted tightly: the ceiling only turns a
hang into a failure. Set ``TG_HOSTILE_LOG=file.jsonl`` to record rule ids, seconds and peak memory
per case.
"""

from __future__ import annotations

import bz2
import collections
import datetime
import decimal
import gzip
import io
import json
import lzma
import multiprocessing
import os
import pickle
import pickletools
import random
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from fixtures.hostile import (
    MEMORY_CEILING,
    MiB,
    ZipMember,
    build_zip,
    byte_mutants,
    deflate_prefixed_zeros,
    fifield_bomb,
    gzip_wrap,
    hard_deadline,
    nested_zips,
    record,
    scan_data,
    scan_isolated,
    scan_path,
    tar_bytes,
    tar_header,
    zip64_declaring,
)
from fixtures.payloads import seven_zip
from trainguard.core.config import Limits, ScanConfig
from trainguard.core.render import OutputFormat, render
from trainguard.scan.engine import scan_paths

P2 = b"\x80\x02"
P4 = b"\x80\x04"
OS_SYSTEM = b"cos\nsystem\n"  # GLOBAL os.system: the harmless payloads below only *name* it
SMALL_BUDGET = Limits(max_expanded_bytes=32 * MiB)


def _rich_object() -> object:
    return {
        "weights": [1.0, 2.5, -3.25] * 20,
        "names": ("layer.0", "layer.1", b"\x00\x01"),
        "order": collections.OrderedDict(a=1, b=[None, True]),
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "amount": decimal.Decimal("1.25"),
        "tags": {1, 2, 3},
        "frozen": frozenset({"x"}),
        "big": 2**100,
    }


def _cuts(n: int, start: int = 0) -> list[int]:
    """Cut points: every byte of the first 64 and last 64, and 48 evenly spaced ones between."""
    points = set(range(start, min(n, start + 64))) | set(range(max(start, n - 64), n))
    points |= set(range(start, n, max(1, (n - start) // 48)))
    return sorted(points)


# ---------------------------------------------------------------- truncation, every format


@pytest.mark.parametrize("protocol", range(6))
def test_truncated_pickle(tmp_path: Path, protocol: int) -> None:
    data = pickle.dumps(_rich_object(), protocol=protocol)
    first_global_end = data.index(b"\n", data.index(b"\n", data.index(b"c")) + 1) + 1 \
        if protocol < 2 else 0
    for cut in _cuts(len(data), 1):
        out = scan_data(tmp_path, data[:cut], label=f"pickle-p{protocol}-cut")
        if protocol >= 2 or cut >= first_global_end:
            assert "TG-PKL-007" in out.rule_ids, (cut, out.evidence())
        else:  # a protocol 0/1 prefix that ran no import may be plain text; never a crash
            assert out.status in ("skipped", "scanned")


def _torch_like_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps(collections.OrderedDict(w=1), protocol=2))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", bytes(4096))
        z.writestr("archive/version", "3\n")
    return out.getvalue()


def test_truncated_zip_checkpoint(tmp_path: Path) -> None:
    data = _torch_like_zip()
    for cut in _cuts(len(data), 4):
        out = scan_data(tmp_path, data[:cut], label="zip-cut")
        assert "TG-FMT-001" in out.rule_ids, (cut, out.evidence())


@pytest.mark.torch
def test_truncated_torch_save(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4, 4), "step": 3}, buf)
    data = buf.getvalue()
    for cut in _cuts(len(data), 4):
        out = scan_data(tmp_path, data[:cut], label="torch-zip-cut")
        assert "TG-FMT-001" in out.rule_ids, (cut, out.evidence())
    legacy = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, legacy, _use_new_zipfile_serialization=False)
    data = legacy.getvalue()
    pickles_end = 0  # five pickles, then raw storage bytes that torch never unpickles
    for _ in range(5):
        stream = io.BytesIO(data[pickles_end:])
        for _op, _arg, _pos in pickletools.genops(stream):
            pass
        pickles_end += stream.tell()
    for cut in _cuts(len(data), 2):
        out = scan_data(tmp_path, data[:cut], label="torch-legacy-cut")
        if cut < pickles_end:
            assert out.rule_ids & {"TG-PKL-007", "TG-FMT-001"}, (cut, out.evidence())


def test_zip_central_directory_cut(tmp_path: Path) -> None:
    data = _torch_like_zip()
    eocd_off = data.rfind(b"PK\x05\x06")
    cd_off = struct.unpack_from("<I", data, eocd_off + 16)[0]
    for k in range(0, eocd_off - cd_off, 3):
        out = scan_data(tmp_path, data[:cd_off + k] + data[eocd_off:], label="zip-cd-cut")
        assert "TG-FMT-001" in out.rule_ids, (k, out.evidence())


def _npy(obj: bool) -> bytes:
    np = pytest.importorskip("numpy")
    buf = io.BytesIO()
    if obj:
        np.save(buf, np.array([1, "two", None, {"k": 3}], dtype=object), allow_pickle=True)
    else:
        np.save(buf, np.arange(64, dtype="<f8").reshape(8, 8))
    return buf.getvalue()


@pytest.mark.parametrize("obj", [False, True])
def test_truncated_npy(tmp_path: Path, obj: bool) -> None:
    data = _npy(obj)
    for cut in _cuts(len(data), 6):
        out = scan_data(tmp_path, data[:cut], label=f"npy{'-object' if obj else ''}-cut")
        assert out.rule_ids & {"TG-FMT-001", "TG-PKL-007"}, (cut, out.evidence())


@pytest.mark.parametrize("compress", ["zlib", "gzip", "bz2", "xz", "lz4"])
def test_truncated_compressed_joblib(tmp_path: Path, compress: str) -> None:
    joblib = pytest.importorskip("joblib")
    np = pytest.importorskip("numpy")
    if compress == "lz4":
        pytest.importorskip("lz4")
    path = tmp_path / "model.joblib"
    joblib.dump({"coef": np.arange(200.0), "classes": ["a", "b"]}, path, compress=(compress, 3))
    data = path.read_bytes()
    for cut in _cuts(len(data), 6):  # the xz magic number is 6 bytes
        out = scan_data(tmp_path, data[:cut], label=f"joblib-{compress}-cut")
        assert out.rule_ids & {"TG-FMT-001", "TG-PKL-007"}, (cut, out.evidence())


def test_truncated_gzip_still_reports_the_payload(tmp_path: Path) -> None:
    """A stream that breaks after the pickle's STOP must not hide what the pickle imported."""
    payload = P2 + OS_SYSTEM + b"X\x04\x00\x00\x00true\x85R."
    data = gzip.compress(payload)
    for cut in range(len(data) - 8, len(data)):  # inside the CRC/size trailer
        out = scan_data(tmp_path, data[:cut], label="gzip-trailer-cut")
        assert "TG-PKL-001" in out.rule_ids, (cut, out.evidence())
        assert "TG-FMT-001" in out.rule_ids, (cut, out.evidence())
    for cut in _cuts(len(data) - 8, 2):
        out = scan_data(tmp_path, data[:cut], label="gzip-cut")
        assert out.rule_ids & {"TG-FMT-001", "TG-PKL-007"}, (cut, out.evidence())


def test_truncated_tar(tmp_path: Path) -> None:
    a = pickle.dumps(_rich_object(), protocol=2)
    b = pickle.dumps([1, 2, 3], protocol=4)
    data = tar_bytes([("a.pkl", a), ("dir/b.pkl", b)])
    data_end = 512 + len(a) + (-len(a) % 512) + 512 + len(b)
    for cut in _cuts(data_end, 512):
        out = scan_data(tmp_path, data[:cut], label="tar-cut")
        assert out.rule_ids & {"TG-FMT-001", "TG-PKL-007"}, (cut, out.evidence())


def _safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                         "__metadata__": {"format": "pt"}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(16)


def _gguf() -> bytes:
    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    kv = s("general.architecture") + struct.pack("<I", 8) + s("llama")
    kv += s("tokenizer.chat_template") + struct.pack("<I", 8) + s("{{ messages[0]['content'] }}")
    tensor = s("w") + struct.pack("<I", 1) + struct.pack("<Q", 4) + struct.pack("<I", 0)
    tensor += struct.pack("<Q", 0)
    body = b"GGUF" + struct.pack("<IQQ", 3, 1, 2) + kv + tensor
    return body + bytes(-len(body) % 32) + bytes(16)


@pytest.mark.parametrize(("fmt", "build", "rules"), [
    ("safetensors", _safetensors, {"TG-ST-001", "TG-FMT-001", "TG-LIM-001"}),
    ("gguf", _gguf, {"TG-FMT-001", "TG-LIM-001", "TG-TPL-002"}),
])
def test_truncated_metadata_formats(tmp_path: Path, fmt: str, build: object,
                                    rules: set[str]) -> None:
    data = build()  # type: ignore[operator]
    for cut in _cuts(len(data), 10):
        out = scan_data(tmp_path, data[:cut], label=f"{fmt}-cut")
        if out.status == "scanned":  # once its analyzer claims the file, it must say why
            assert out.rule_ids & rules, (cut, out.evidence())


# ---------------------------------------------------------------- garbage and empty files


MAGICS = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x05", b"(", b"\x93NUMPY\x01\x00", b"GGUF",
          b"\x1f\x8b\x08", b"BZh9", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"\x89HDF\r\n\x1a\n",
          b"x\x9c", b"\x04\x22\x4d\x18", b"[", b"{\"", b"\x40\x00\x00\x00\x00\x00\x00\x00{\""]


@pytest.mark.parametrize("magic", MAGICS, ids=lambda m: m[:6].hex() or "none")
def test_random_garbage(tmp_path: Path, magic: bytes) -> None:
    rng = random.Random(magic)
    for size in (1, 7, 100, 4096, 70_000):
        out = scan_data(tmp_path, magic + rng.randbytes(size), label=f"garbage-{magic[:4]!r}")
        assert out.error is None


def test_empty_and_tiny_files(tmp_path: Path) -> None:
    for data in (b"", b"\x80", b".", b"PK", b"\x93NUMPY", b"\x1f\x8b", b"\x00" * 4096):
        out = scan_data(tmp_path, data, label="tiny")
        assert out.error is None


# ---------------------------------------------------------------- bombs


def _bomb_pickle_prefix(total: int) -> bytes:
    """A pickle that declares a BINBYTES8 constant covering everything that follows, so the
    scanner must read through the whole expansion to find the stream's end."""
    return P4 + b"\x8e" + struct.pack("<Q", total)


@pytest.mark.parametrize("declared", ["truthful", "lying"])
def test_classic_zip_bomb(tmp_path: Path, declared: str) -> None:
    """A 1 GiB expansion from ~1 MB: one member of repeated deflate blocks."""
    mib = 1024
    bomb = deflate_prefixed_zeros(_bomb_pickle_prefix(mib * MiB), mib)
    usize = mib * MiB + 11 if declared == "truthful" else 1000
    data = build_zip([ZipMember("archive/data.pkl", bomb, 8, usize, 0)])
    assert len(data) < 2 * MiB
    out = scan_data(tmp_path, data, SMALL_BUDGET, trace_memory=True, label=f"zip-bomb-{declared}")
    assert "TG-LIM-001" in out.rule_ids, out.evidence()
    assert out.peak_bytes < MEMORY_CEILING


def test_overlapping_zip_bomb(tmp_path: Path) -> None:
    """D. Fifield, "A better zip bomb" (WOOT 2019): 128 members overlap one 16 MiB kernel."""
    data = fifield_bomb(files=128, kernel_mib=16)
    out = scan_data(tmp_path, data, SMALL_BUDGET, trace_memory=True, label="zip-bomb-overlap")
    assert {"TG-ZIP-001", "TG-LIM-001"} <= out.rule_ids, out.evidence()
    assert out.peak_bytes < MEMORY_CEILING
    assert len(out.findings) < 300  # one archive does not become an unbounded report


def test_overlapping_stored_members_are_bounded(tmp_path: Path) -> None:
    """Every central directory entry points at the same stored 8 MiB member."""
    body = P2 + b"B" + struct.pack("<I", 8 * MiB) + bytes(8 * MiB) + b"."
    one = build_zip([ZipMember("m0", body)])
    cd_off = struct.unpack_from("<I", one, len(one) - 6)[0]
    cen = one[cd_off:len(one) - 22]
    many = b"".join(cen.replace(b"m0", f"{i:02x}".encode()) for i in range(200))
    data = one[:cd_off] + many + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 200, 200,
                                               len(many), cd_off, 0)
    out = scan_data(tmp_path, data, Limits(max_expanded_bytes=256 * MiB), trace_memory=True,
                    label="zip-overlap-stored")
    assert {"TG-ZIP-001", "TG-LIM-001"} <= out.rule_ids, out.evidence()
    assert out.peak_bytes < MEMORY_CEILING


def test_zip_nested_past_max_depth(tmp_path: Path) -> None:
    data = nested_zips(12, P2 + OS_SYSTEM + b".")
    out = scan_data(tmp_path, data, Limits(max_depth=8), label="zip-nested-12")
    assert "TG-LIM-001" in out.rule_ids, out.evidence()


def test_compression_nested_past_max_depth(tmp_path: Path) -> None:
    data = P2 + b"N."
    for i in range(20):
        data = (gzip.compress, bz2.compress, lzma.compress, zlib.compress)[i % 4](data)
    out = scan_data(tmp_path, data, label="compressed-nested-20")
    assert "TG-LIM-001" in out.rule_ids, out.evidence()


def test_zip_declaring_a_million_members(tmp_path: Path) -> None:
    out = scan_data(tmp_path, zip64_declaring(1_000_000, b"PK\x03\x04" + bytes(26)),
                    trace_memory=True, label="zip-1e6-members")
    assert "TG-LIM-001" in out.rule_ids, out.evidence()
    assert out.peak_bytes < 16 * MiB


def test_zip_member_count_lies(tmp_path: Path) -> None:
    data = build_zip([ZipMember("data.pkl", P2 + b"N.")], declared_count=999)
    out = scan_data(tmp_path, data, label="zip-count-lies")
    assert "TG-ZIP-001" in out.rule_ids, out.evidence()


def test_zip_of_many_malicious_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More members importing os.system than findings kept per file (10,000; lowered here to
    keep the test fast): the report stays bounded and still says how bad the rest is."""
    from trainguard.scan import context

    monkeypatch.setattr(context, "MAX_FINDINGS_PER_FILE", 100)
    member = P2 + OS_SYSTEM + b"."
    data = build_zip([ZipMember(f"m{i}.pkl", member) for i in range(300)])
    out = scan_data(tmp_path, data, label="zip-many-malicious-members")
    assert len(out.findings) == 101
    summary = out.findings[-1]
    assert summary.rule_id == "TG-LIM-001"
    assert summary.count == 200
    assert summary.severity.label == "critical"


def test_zip_with_more_members_than_allowed(tmp_path: Path) -> None:
    data = build_zip([ZipMember(f"m{i}.pkl", P2 + b"N.") for i in range(500)])
    out = scan_data(tmp_path, data, Limits(max_members=100), label="zip-too-many-members")
    assert "TG-LIM-001" in out.rule_ids, out.evidence()


@pytest.mark.parametrize("wrapper", ["gzip", "gzip-zip"])
def test_gzip_bomb(tmp_path: Path, wrapper: str) -> None:
    mib = 1024
    prefix = _bomb_pickle_prefix(mib * MiB) if wrapper == "gzip" else b"PK\x03\x04"
    data = gzip_wrap(deflate_prefixed_zeros(prefix, mib))
    out = scan_data(tmp_path, data, SMALL_BUDGET, trace_memory=True, label=f"bomb-{wrapper}")
    assert "TG-LIM-001" in out.rule_ids, out.evidence()
    assert out.peak_bytes < MEMORY_CEILING


def _seven_zip(members: dict[str, bytes]) -> bytes:
    pytest.importorskip("py7zr")
    return seven_zip(members)


def test_7z_bomb(tmp_path: Path) -> None:
    data = _seven_zip({"model.pkl": _bomb_pickle_prefix(24 * MiB) + bytes(24 * MiB) + b"."})
    out = scan_data(tmp_path, data, Limits(max_expanded_bytes=16 * MiB), trace_memory=True,
                    label="7z-bomb")
    assert "TG-LIM-001" in out.rule_ids, out.evidence()
    assert out.peak_bytes < MEMORY_CEILING


def test_7z_truncated_and_mutated(tmp_path: Path) -> None:
    data = _seven_zip({"a.pkl": P2 + OS_SYSTEM + b".", "b.pkl": pickle.dumps(_rich_object(), 4)})
    cases = [data[:cut] for cut in _cuts(len(data), 6)] + byte_mutants(data, 7, 150, 3)
    for blob in cases:
        out = scan_data(tmp_path, blob, label="7z-mutated")
        if out.status == "scanned":  # (a damaged signature is just not a 7z file any more)
            assert out.rule_ids  # a damaged archive, or the payload it still holds


@pytest.mark.parametrize("size", [2**33 - 1, 2**40, 2**62])
def test_tar_member_with_huge_declared_size(tmp_path: Path, size: int) -> None:
    body = P2 + b"N."
    data = tar_header("model.pkl", size) + body + bytes(-len(body) % 512) + bytes(1024)
    out = scan_data(tmp_path, data, trace_memory=True, label="tar-huge-member")
    assert out.rule_ids & {"TG-FMT-001", "TG-LIM-001"}, out.evidence()
    assert out.peak_bytes < MEMORY_CEILING


def test_tar_long_name_header_bounded(tmp_path: Path) -> None:
    """A GNU long-name header ('L') whose size claims more than the metadata limit."""
    data = tar_header("././@LongLink", 64 * MiB, b"L") + bytes(64 * MiB + 1024)
    out = scan_data(tmp_path, data, Limits(max_header_bytes=MiB), trace_memory=True,
                    label="tar-longlink")
    assert out.rule_ids & {"TG-FMT-001", "TG-LIM-001"}, out.evidence()
    assert out.peak_bytes < 32 * MiB


# ---------------------------------------------------------------- deep nesting

N = 100_000


@pytest.mark.parametrize(("case", "data", "rules"), [
    ("marks", P2 + b"(" * N + b".", {"TG-PKL-007"}),
    ("lists", P2 + b"]" * (N + 1) + b"a" * N + b".", set()),
    ("tuple1", P2 + b"N" + b"\x85" * N + b".", set()),
    ("mark-tuples", P2 + b"(" * N + b"N" + b"t" * N + b".", set()),
    ("dicts", P2 + b"}" + b"K\x00}" * N + b"s" * N + b".", set()),
    ("sets", P4 + b"\x8f" + b"(\x8f" * N + b"\x90" * N + b".", set()),
    ("frozensets", P4 + b"(" * N + b"\x91" * N + b".", set()),
    ("reduce-chain", P2 + OS_SYSTEM + b"N\x85R" * N + b".", {"TG-PKL-001"}),
])
def test_deeply_nested_pickle(tmp_path: Path, case: str, data: bytes, rules: set[str]) -> None:
    out = scan_isolated(tmp_path, data, label=f"pickle-deep-{case}")
    assert out.rule_ids >= rules, out.evidence
    if not rules:
        assert not out.rule_ids, out.evidence  # deep but valid: completes, nothing to report
    assert out.peak_bytes < MEMORY_CEILING


def test_deeply_nested_pickle_as_call_argument(tmp_path: Path) -> None:
    """Evidence rendering (describe) walks the argument: it must not recurse without bound."""
    data = P2 + OS_SYSTEM + b"N" + b"\x85" * N + b"R." + b""
    out = scan_data(tmp_path, data, label="pickle-deep-argument")
    assert "TG-PKL-001" in out.rule_ids, out.evidence()


def test_deeply_nested_json(tmp_path: Path) -> None:
    for name, data in (("json-brackets", b"[" * N + b"]" * N), ("json-open", b"[" * N),
                       ("json-objects", b'{"a":' * N + b"1" + b"}" * N)):
        out = scan_data(tmp_path, data, name="config.json", label=name)
        if out.status == "scanned":
            assert out.rule_ids & {"TG-LIM-001", "TG-FMT-001"}, out.evidence()


def test_deeply_nested_npy_header(tmp_path: Path) -> None:
    header = b"{'descr': " + b"[" * 5000 + b"]" * 5000 + b", 'fortran_order': False, 'shape': ()}"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
    out = scan_data(tmp_path, data, label="npy-deep-header")
    assert "TG-FMT-001" in out.rule_ids, out.evidence()


# ---------------------------------------------------------------- memo and declared lengths


def test_huge_memo(tmp_path: Path) -> None:
    data = P4 + b"N" + b"\x94" * 1_000_000 + b"."
    out = scan_isolated(tmp_path, data, label="pickle-memoize-1e6")
    assert not out.rule_ids, out.evidence
    assert out.peak_bytes < MEMORY_CEILING
    out = scan_data(tmp_path, data, Limits(max_pickle_opcodes=100_000), label="memoize-limited")
    assert "TG-LIM-001" in out.rule_ids, out.evidence()


@pytest.mark.parametrize(("case", "data", "rule"), [
    ("long-binput-max", P2 + b"Nr\xff\xff\xff\xffj\xff\xff\xff\xff.", None),
    ("binget-missing", P2 + b"h\x05.", "TG-PKL-007"),
    ("long-binget-missing", P2 + b"Nq\x00j\xff\xff\xff\xff.", "TG-PKL-007"),
    ("get-huge-index", P2 + b"g" + b"9" * 5000 + b"\n.", "TG-PKL-007"),
    ("put-negative", P2 + b"Np-1\n.", "TG-PKL-007"),
    ("binunicode8-2**63", P4 + b"\x8d" + struct.pack("<Q", 2**63) + b"abc.", "TG-PKL-007"),
    ("binbytes8-2**64-1", P4 + b"\x8e" + struct.pack("<Q", 2**64 - 1) + b"abc.", "TG-PKL-007"),
    ("bytearray8-2**63", b"\x80\x05\x96" + struct.pack("<Q", 2**63) + b"abc.", "TG-PKL-007"),
    ("binunicode-2**32-1", P2 + b"X\xff\xff\xff\xff.", "TG-PKL-007"),
    ("binstring-negative", P2 + b"T\xff\xff\xff\xff.", "TG-PKL-007"),
    ("long4-huge", P2 + b"\x8b\xff\xff\xff\x7f.", "TG-PKL-007"),
    ("long4-negative", P2 + b"\x8b\xff\xff\xff\xff.", "TG-PKL-007"),
    ("long4-32k-bit-arg", P2 + OS_SYSTEM + b"\x8b" + struct.pack("<i", 4096) + b"\x7f" * 4096
     + b"\x85R.", "TG-PKL-001"),
    ("int-5000-digits-arg", P2 + OS_SYSTEM + b"I" + b"7" * 5000 + b"\n\x85R.", "TG-PKL-001"),
    ("float-garbage", P2 + b"F" + b"1e" * 1000 + b"\n.", "TG-PKL-007"),
    ("short-binbytes-past-eof", P2 + b"C\xff" + b"x" * 10, "TG-PKL-007"),
    ("proto-6", b"\x80\x06N.", "TG-PKL-007"),
    ("proto-255", b"\x80\xffN.", "TG-PKL-007"),
    ("unknown-opcode", P2 + b"\xff.", "TG-PKL-007"),
    ("unknown-opcode-after-payload", P2 + OS_SYSTEM + b"\xfe", "TG-PKL-001"),
    ("stack-global-ints", P4 + b"K\x01K\x02\x93.", "TG-PKL-007"),
    ("stack-global-none", P4 + b"NN\x93.", "TG-PKL-007"),
    # a global may be a str at load time (sys.version): a name computed by the loader, or a
    # stream the loader rejects; either way a finding
    ("stack-global-global", P4 + OS_SYSTEM + b"\x8c\x01x\x93.", "TG-PKL-005|TG-PKL-007"),
    ("stack-global-list", P4 + b"]\x94\x8c\x01x\x93.", "TG-PKL-007"),
    ("stack-global-empty-stack", P4 + b"\x93.", "TG-PKL-007"),
    ("frame-2**63", P4 + b"\x95" + struct.pack("<Q", 2**63) + b"N.", "TG-PKL-007"),
    ("frame-past-eof", P4 + b"\x95" + struct.pack("<Q", 1000) + b"N.", "TG-PKL-007"),
    ("global-no-newline", P2 + b"c" + b"a" * 100_000, "TG-PKL-007"),
    ("global-bad-utf8", P2 + b"c\xff\xfe\nsystem\n.", "TG-PKL-007"),
    ("inst-bad-utf8", P2 + b"(i\xc3\x28\nx\n.", "TG-PKL-007"),
    ("ext4-negative", P2 + b"\x84\xff\xff\xff\xff.", "TG-PKL-009"),
    ("stop-empty-stack", P2 + b".", "TG-PKL-007"),
    ("pop-mark-empty", P2 + b"1.", "TG-PKL-007"),
    ("build-empty-stack", P2 + b"b.", "TG-PKL-007"),
    ("obj-no-class", P2 + b"(o.", "TG-PKL-007"),
    ("newobj-ex-underflow", P4 + b"\x92.", "TG-PKL-007"),
])
def test_pickle_declared_lengths_and_bad_opcodes(tmp_path: Path, case: str, data: bytes,
                                                 rule: str | None) -> None:
    out = scan_data(tmp_path, data, trace_memory=True, label=f"pickle-{case}")
    if rule is None:
        assert not out.rule_ids, out.evidence()
    else:
        assert out.rule_ids & set(rule.split("|")), out.evidence()
    assert out.peak_bytes < MEMORY_CEILING
    # the same bytes behind a decompressor (no seeking, no known size) end the same way, except
    # for a FRAME that overruns a stream of unknown length (caught only on a sized stream)
    out = scan_data(tmp_path, gzip.compress(data), label=f"pickle-{case}-gzip")
    if rule is not None and not case.startswith("frame"):
        assert out.rule_ids & {*rule.split("|"), "TG-PKL-007"}, out.evidence()


# ---------------------------------------------------------------- amplification


def test_build_state_repeated_on_a_global(tmp_path: Path) -> None:
    """BUILD with the same 20,000-key state 2,000 times: 3 bytes per BUILD must not cost 20,000
    attribute names each."""
    keys = b"".join(b"X\x06\x00\x00\x00k%05dN" % i for i in range(20_000))
    data = P2 + OS_SYSTEM + b"}q\x01(" + keys + b"u0" + b"h\x01b" * 2000 + b"."
    out = scan_isolated(tmp_path, data, label="pickle-build-amplification")
    assert "TG-PKL-006" in out.rule_ids, out.evidence
    assert out.peak_bytes < MEMORY_CEILING
    assert out.evidence_chars < 64 * 1024


def test_calls_on_a_wide_built_value(tmp_path: Path) -> None:
    """REDUCE on a wide nested tuple (not a global), 20,000 times: evidence stays short."""
    leaf = b"X\x3c\x00\x00\x00" + b"s" * 60

    def tree(depth: int) -> bytes:
        return leaf if depth == 0 else b"(" + tree(depth - 1) * 4 + b"t"

    wide = tree(4)
    data = P2 + wide + b"q\x01" + b"h\x01N\x85R0" * 20_000 + b"N."
    out = scan_isolated(tmp_path, data, label="pickle-describe-amplification")
    assert "TG-PKL-005" in out.rule_ids, out.evidence
    assert out.peak_bytes < MEMORY_CEILING
    assert out.evidence_chars < 64 * 1024


def test_many_distinct_globals(tmp_path: Path) -> None:
    data = P2 + b"".join(b"cmod%d\nname\n0" % i for i in range(200_000)) + b"N."
    out = scan_isolated(tmp_path, data, label="pickle-200k-globals")
    assert {"TG-PKL-004", "TG-LIM-001"} <= out.rule_ids, out.evidence
    assert out.findings <= 1000
    assert out.peak_bytes < MEMORY_CEILING


@pytest.mark.parametrize("size", [60_000, 16 * MiB])
def test_huge_global_name(tmp_path: Path, size: int) -> None:
    """A GLOBAL name of 60 KB is reported without being copied into the report whole; one of
    16 MiB is no importable name (the loader fails there): a broken stream."""
    data = P2 + b"c" + b"m" * size + b"\nname\nN."
    out = scan_isolated(tmp_path, data, label=f"pickle-{size}-byte-global-name")
    assert out.rule_ids & {"TG-PKL-004" if size < MiB else "TG-PKL-007"}, out.evidence[:500]
    assert out.evidence_chars < 64 * 1024
    assert out.peak_bytes < MEMORY_CEILING


def test_many_nested_pickles(tmp_path: Path) -> None:
    nested = b"C\x04\x80\x02N."  # SHORT_BINBYTES holding a complete tiny pickle
    data = P2 + (nested + b"0") * 100_000 + b"N."
    out = scan_isolated(tmp_path, data, label="pickle-100k-nested")
    assert "TG-LIM-001" in out.rule_ids, out.evidence  # the rest is counted, not scanned
    assert out.peak_bytes < MEMORY_CEILING


def test_many_pickles_in_one_file(tmp_path: Path) -> None:
    data = (P2 + b"N.") * 200_000
    out = scan_isolated(tmp_path, data, label="pickle-200k-streams")
    assert out.peak_bytes < MEMORY_CEILING
    assert "TG-LIM-001" in out.rule_ids, out.evidence


def test_joblib_array_state_rebuilt(tmp_path: Path) -> None:
    """A joblib NumpyArrayWrapper whose 20,000-key state is re-applied by 3,000 BUILDs: each
    BUILD runs the inline-array hook, which must not walk the whole state every time."""
    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    dtype = b"cnumpy\ndtype\n" + text("f8") + b"\x85R"
    keys = b"".join(text(f"k{i}") + b"N" for i in range(20_000))
    state = b"}q\x01(" + text("shape") + b"K\x00\x85" + text("dtype") + dtype + keys + b"u0"
    data = P2 + b"cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81" + state + b"h\x01b" * 3000 + b"."
    out = scan_isolated(tmp_path, data, label="joblib-state-amplification")
    assert "TG-PKL-007" in out.rule_ids, out.evidence
    assert out.peak_bytes < MEMORY_CEILING


def test_legacy_tar_with_300k_records(tmp_path: Path) -> None:
    """torch < 0.4 tar checkpoints: 'tensors' declares 300,000 tiny records."""
    n = 300_000
    record = P2 + b"N." + struct.pack("<i", 0) + bytes(12)  # key None, ndim 0, pad, offset
    tensors = pickle.dumps(n, protocol=2) + record * n
    storages = pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)
    payload = P2 + OS_SYSTEM + b"X\x04\x00\x00\x00true\x85R."
    data = tar_bytes([("storages", storages), ("tensors", tensors), ("pickle", payload)])
    out = scan_isolated(tmp_path, data, label="legacy-tar-300k-records")
    assert "TG-LIM-001" in out.rule_ids, out.evidence
    assert "TG-PKL-001" in out.rule_ids, out.evidence  # the other members are still scanned
    assert out.peak_bytes < MEMORY_CEILING
    out = scan_isolated(tmp_path, data, Limits(max_members=1_000_000),
                        label="legacy-tar-300k-records-allowed")
    assert "TG-PKL-001" in out.rule_ids, out.evidence
    assert out.peak_bytes < MEMORY_CEILING


def test_opcode_limit(tmp_path: Path) -> None:
    data = P2 + b"N0" * 500_000 + b"N."
    out = scan_data(tmp_path, data, Limits(max_pickle_opcodes=100_000), label="pickle-opcodes")
    assert "TG-LIM-001" in out.rule_ids, out.evidence()


# ---------------------------------------------------------------- the file system


def _scan_dir(target: Path, **kw: object) -> tuple[object, float]:
    import time

    start = time.perf_counter()
    with hard_deadline():
        report = scan_paths([str(target)], ScanConfig(), **kw)  # type: ignore[arg-type]
    return report, time.perf_counter() - start


def test_symlink_loops(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / "ok.pkl").write_bytes(pickle.dumps([1, 2]))
    (d / "a").symlink_to(d / "b")
    (d / "b").symlink_to(d / "a")
    (d / "self").symlink_to(d / "self")
    (d / "up").symlink_to(d)
    (d / "sub").mkdir()
    (d / "sub" / "loop").symlink_to(d / "sub")
    (d / "sub" / "bad.pkl").write_bytes(P2 + OS_SYSTEM + b".")
    for target in (d, d / "a", d / "self", d / "up"):
        report, _ = _scan_dir(target)
        assert report.files or report.errors or report.findings  # type: ignore[attr-defined]
    report, _ = _scan_dir(d)
    assert any(f.rule_id == "TG-PKL-001" for f in report.findings)  # type: ignore[attr-defined]
    scanned = [fr.path for fr in report.files]  # type: ignore[attr-defined]
    assert len(scanned) == len(set(scanned)) == 2  # each real file once


def test_links_to_devices_and_fifos_are_never_opened(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / "zero.bin").symlink_to("/dev/zero")
    (d / "urandom.pkl").symlink_to("/dev/urandom")
    os.mkfifo(d / "pipe.pkl")
    (d / "pipe-link.pkl").symlink_to(d / "pipe.pkl")
    (d / "weights.pkl").write_bytes(pickle.dumps({"w": 1}))
    report, _ = _scan_dir(d)
    fs = [f for f in report.findings if f.rule_id == "TG-FS-001"]  # type: ignore[attr-defined]
    assert len(fs) == 2  # the device links leave the tree
    assert [fr.path for fr in report.files] == [str(d / "weights.pkl")]  # type: ignore[attr-defined]
    # even when told to follow links out of the tree, devices are never read
    report, _ = _scan_dir(d, follow_outside_symlinks=True)
    assert [fr.path for fr in report.files] == [str(d / "weights.pkl")]  # type: ignore[attr-defined]
    # a FIFO or device named directly is an input error, not a hang
    for target in (d / "pipe.pkl", d / "pipe-link.pkl", Path("/dev/zero")):
        report, _ = _scan_dir(target)
        assert report.errors, target  # type: ignore[attr-defined]
        assert not report.files, target  # type: ignore[attr-defined]


def test_fifo_passed_to_scan_file_directly(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pkl"
    os.mkfifo(fifo)
    out = scan_path(fifo, label="fifo-direct")
    assert out.error is not None
    assert out.status == "error"


def test_read_error_in_the_middle_of_a_scan(tmp_path: Path) -> None:
    """/proc/self/mem stats as a regular file and fails with EIO on read."""
    if not Path("/proc/self/mem").exists():
        pytest.skip("no /proc")
    out = scan_path(Path("/proc/self/mem"), label="proc-self-mem")
    assert out.error is not None or out.rule_ids


def test_unreadable_and_vanished_files(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / "dangling.pkl").symlink_to(d / "missing.pkl")
    secret = d / "secret.pkl"
    secret.write_bytes(pickle.dumps([1]))
    secret.chmod(0)
    report, _ = _scan_dir(d)
    errors = report.errors  # type: ignore[attr-defined]
    assert any("dangling.pkl" in e for e in errors), errors
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        assert any("secret.pkl" in e for e in errors), errors
    secret.chmod(0o600)


def _die_on_marked_files(args: tuple[str, str, ScanConfig]) -> object:
    from trainguard.scan import engine

    if "die" in Path(args[0]).name:
        os._exit(9)  # what the OOM killer does to a worker
    return engine.scan_file(*args)


def test_a_dying_worker_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainguard.scan import engine

    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the patched worker function reaches the pool only through fork")
    for name in ("a.pkl", "b-die.pkl", "c.pkl"):
        (tmp_path / name).write_bytes(pickle.dumps([1]))
    monkeypatch.setattr(engine, "_scan_job", _die_on_marked_files)
    with hard_deadline():
        report = scan_paths([str(tmp_path)], ScanConfig(), jobs=2)
    assert len(report.files) == 3
    assert any("died" in e for e in report.errors), report.errors
    assert int(report.exit_code(ScanConfig().fail_on)) == 2


ODD_NAMES = ["new\nline.pkl", "carriage\rreturn.pkl", "esc\x1b[31mred.pkl", "-rf.pkl", " .pkl",
             "tab\tname.pkl", "ünïcödé.pkl", "quote\"'.pkl", "x" * 250 + ".pkl"]


def test_paths_with_odd_characters(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    payload = P2 + OS_SYSTEM + b"X\x04\x00\x00\x00true\x85R."
    for name in ODD_NAMES:
        (d / name).write_bytes(payload)
    raw = os.fsencode(str(d)) + b"/latin1-\xe9\xff.pkl"  # not UTF-8: a surrogate-escaped str
    with open(raw, "wb") as f:
        f.write(payload)
    report, seconds = _scan_dir(d)
    assert len(report.files) == len(ODD_NAMES) + 1  # type: ignore[attr-defined]
    assert sum(f.rule_id == "TG-PKL-001" for f in report.findings) == len(ODD_NAMES) + 1  # type: ignore[attr-defined]
    for fmt in ("text", "json", "sarif"):
        text = render(report, OutputFormat(fmt))  # type: ignore[arg-type]
        text.encode("utf-8")  # printable to any UTF-8 terminal or file
        if fmt != "text":
            json.loads(text)
        else:
            assert "\x1b" not in text  # no terminal escapes from file names
    record("odd-paths", type("O", (), {"rule_ids": {"TG-PKL-001"}, "status": "scanned",
                                       "seconds": seconds, "peak_bytes": 0})())  # type: ignore[arg-type]
