"""ONNX models: external-data path traversal, custom operator domains, malformed protobuf.

Models are built with ``onnx.helper`` and saved with ``onnx.save_model``; hostile ones set the
external-data entries of a tensor the way ``onnx.external_data_helper`` does, with a location a
loader would resolve outside the model directory. Nothing is ever loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.protobuf_writer import f_bytes, f_varint
from fixtures.scanning import findings_of, rule_ids, scan, scan_bytes
from trainguard.core.config import Limits, ScanConfig
from trainguard.core.findings import Severity
from trainguard.scan.analyzers.onnx import location_problem

onnx = pytest.importorskip("onnx")
np = pytest.importorskip("numpy")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _weights(name: str = "W") -> TensorProto:
    return numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, name)


def _model(nodes: list[onnx.NodeProto] | None = None,
           initializers: list[TensorProto] | None = None,
           opsets: list[onnx.OperatorSetIdProto] | None = None,
           functions: list[onnx.FunctionProto] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes or [helper.make_node("MatMul", ["X", "W"], ["H"]),
                  helper.make_node("Relu", ["H"], ["Y"])],
        "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])],
        initializers if initializers is not None else [_weights()])
    return helper.make_model(graph, producer_name="trainguard-tests",
                             opset_imports=opsets or [helper.make_opsetid("", 17)],
                             functions=functions or [])


def _external(tensor: TensorProto, location: str) -> TensorProto:
    """Point a tensor at external data, as onnx.external_data_helper.set_external_data does."""
    onnx.external_data_helper.set_external_data(tensor, location=location, offset=0, length=48)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    return tensor


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# --------------------------------------------------------------------------------- benign
def test_benign_inline_model(tmp_path: Path) -> None:
    model = _model()
    onnx.checker.check_model(model)
    p = tmp_path / "m.onnx"
    onnx.save_model(model, str(p))
    report = scan(p)
    assert report.findings == []
    assert report.files[0].formats == ["onnx", "protobuf"]


def test_benign_external_data(tmp_path: Path) -> None:
    """onnx.save_model(save_as_external_data=True): a plain relative location beside the model."""
    p = tmp_path / "ext" / "m.onnx"
    p.parent.mkdir()
    onnx.save_model(_model(), str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    assert b"m.onnx.data" in p.read_bytes()
    report = scan(p.parent)
    assert report.findings == []
    assert "onnx" in next(f for f in report.files if f.path.endswith(".onnx")).formats


def test_benign_subgraphs_functions_and_ms_domain(tmp_path: Path) -> None:
    """If branches, a Constant tensor attribute, a model-local function in its own domain and a
    com.microsoft contrib op: all standard, no finding."""
    then_g = helper.make_graph([helper.make_node("Identity", ["X"], ["T"])], "then", [],
                               [helper.make_tensor_value_info("T", TensorProto.FLOAT, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["X"], ["E"])], "else", [],
                               [helper.make_tensor_value_info("E", TensorProto.FLOAT, [1, 4])])
    fn = helper.make_function("local.fns", "Twice", ["a"], ["b"],
                              [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    nodes = [
        helper.make_node("Constant", [], ["C"], value=helper.make_tensor(
            "c", TensorProto.BOOL, [], [True])),
        helper.make_node("If", ["C"], ["I"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Twice", ["I"], ["T2"], domain="local.fns"),
        helper.make_node("Gelu", ["T2"], ["Y"], domain="com.microsoft"),
    ]
    model = _model(nodes, [], [helper.make_opsetid("", 17), helper.make_opsetid("local.fns", 1),
                               helper.make_opsetid("com.microsoft", 1)], [fn])
    report = scan(_save(model, tmp_path / "sub.onnx"))
    assert report.findings == []


# ------------------------------------------------------------------------------ traversal
@pytest.mark.parametrize("location", [
    "../../etc/passwd", "weights/../../secret.bin", "/etc/passwd", "\\\\server\\share\\w.bin",
    "C:\\Windows\\win.ini", "file:///etc/passwd", "https://example.invalid/w.bin",
    "..\\..\\boot.ini", "w.bin\x00.txt",
])
def test_external_data_escapes(tmp_path: Path, location: str) -> None:
    """CVE-2024-27318 (bypass of the CVE-2022-25882 fix): external_data 'location' with '..',
    an absolute path, drive letter, UNC path or URL reads (or on save writes) files outside the
    model directory; CVE-2024-5187 is the same escape through onnx.hub's tar extraction."""
    model = _model(initializers=[_external(_weights(), location)])
    report = scan(_save(model, tmp_path / "evil.onnx"))
    assert rule_ids(report) == ["TG-ONNX-001"]
    f = report.findings[0]
    assert f.severity == Severity.HIGH
    assert repr(location[:200]) in f.evidence
    assert "tensor W" in f.evidence


def test_escape_hidden_in_nested_graphs(tmp_path: Path) -> None:
    """CVE-2024-27318: tensors are resolved in every graph; the escape hides in an If branch's
    initializer, a Constant node's tensor attribute and a model-local function's node."""
    inner = helper.make_graph([helper.make_node("Identity", ["K"], ["T"])], "then", [],
                              [helper.make_tensor_value_info("T", TensorProto.FLOAT, [4, 3])],
                              [_external(_weights("K"), "../in_branch.bin")])
    const = helper.make_node("Constant", [], ["C2"],
                             value=_external(_weights("cv"), "/abs/in_constant.bin"))
    fn = helper.make_function(
        "local.fns", "F", ["a"], ["b"],
        [helper.make_node("Constant", [], ["b"], value=_external(_weights("fv"), "../in_fn.bin"))],
        [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Constant", [], ["C"], value=helper.make_tensor(
                 "c", TensorProto.BOOL, [], [True])),
             helper.make_node("If", ["C"], ["I"], then_branch=inner, else_branch=inner),
             const, helper.make_node("F", ["I"], ["Y"], domain="local.fns")]
    model = _model(nodes, [], [helper.make_opsetid("", 17), helper.make_opsetid("local.fns", 1)],
                   [fn])
    report = scan(_save(model, tmp_path / "nested.onnx"))
    evidence = " ".join(f.evidence for f in report.findings)
    assert set(rule_ids(report)) == {"TG-ONNX-001"}
    for where in ("../in_branch.bin", "/abs/in_constant.bin", "../in_fn.bin"):
        assert where in evidence


def test_custom_domains_reported_once_each(tmp_path: Path) -> None:
    """Nodes in non-standard domains need a native custom-op library at load time."""
    nodes = [helper.make_node("EvilOp", ["X"], ["A"], domain="com.evil"),
             helper.make_node("EvilOp2", ["A"], ["B"], domain="com.evil"),
             helper.make_node("Other", ["B"], ["Y"], domain="org.other")]
    model = _model(nodes, [], [helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1),
                               helper.make_opsetid("org.other", 1)])
    report = scan(_save(model, tmp_path / "custom.onnx"))
    found = {f.details["domain"]: f for f in findings_of(report, "TG-ONNX-002")}
    assert rule_ids(report) == ["TG-ONNX-002", "TG-ONNX-002"]
    assert found["com.evil"].count == 2
    assert "EvilOp2" in found["com.evil"].evidence
    assert found["org.other"].severity == Severity.LOW


# ------------------------------------------------------------------------------- malformed
def test_truncated_model_is_a_finding(tmp_path: Path) -> None:
    data = _model().SerializeToString()
    report = scan(_save_bytes(tmp_path / "cut.onnx", data[: len(data) * 2 // 3]))
    assert rule_ids(report) == ["TG-FMT-001"]


def test_corrupt_nested_length_is_a_finding(tmp_path: Path) -> None:
    """A well-formed ModelProto header whose graph holds a field longer than the graph."""
    bad_graph = f_bytes(1, b"\x22\x7f" + b"x" * 4)  # node -> op_type of length 127 in 6 bytes
    data = f_varint(1, 8) + f_bytes(2, "x") + f_bytes(7, bad_graph)
    report = scan(_save_bytes(tmp_path / "bad.onnx", data))
    assert rule_ids(report) == ["TG-FMT-001"]


def test_subgraph_nesting_beyond_protobuf_limit(tmp_path: Path) -> None:
    """Graphs nested past protobuf's recursion limit (100) are refused by loaders: a finding,
    not a Python recursion crash."""
    graph = b""
    for _ in range(60):  # graph -> node -> attribute -> graph: 3 levels each
        graph = f_bytes(1, f_bytes(4, "If") + f_bytes(5, f_bytes(1, "then_branch")
                                                     + f_bytes(6, graph)))
    data = f_varint(1, 8) + f_bytes(7, graph) + f_bytes(8, f_varint(2, 17))
    report = scan(_save_bytes(tmp_path / "deep.onnx", data))
    assert rule_ids(report) == ["TG-FMT-001"]
    assert "nested deeper" in report.findings[0].evidence


def test_structure_budget(tmp_path: Path) -> None:
    """Millions of tiny records cost bounded work: the parse stops at max_header_bytes."""
    nodes = b"".join(f_bytes(1, f_bytes(4, "Relu")) for _ in range(200_000))
    data = f_varint(1, 8) + f_bytes(7, nodes)
    report = scan(_save_bytes(tmp_path / "many.onnx", data),
                  config=ScanConfig(limits=Limits(max_header_bytes=1 << 20)))
    assert rule_ids(report) == ["TG-LIM-001"]


@pytest.mark.parametrize("data", [
    b"\n\nREADME text that starts with blank lines\n",
    b"\x08\x01\x10\x01\x42\x01" + bytes(range(256)) * 4,
    b"\x0a\x05hello\x12\x03abc",
], ids=["text", "tensorproto-like", "unknown-message"])
def test_other_protobuf_like_bytes_are_skipped(tmp_path: Path, data: bytes) -> None:
    """Bytes that merely start like protobuf and are not ONNX or TensorFlow are not claimed."""
    report = scan(_save_bytes(tmp_path / "x.bin", data))
    assert report.findings == []
    assert report.files[0].status.value == "skipped"


def test_onnx_tensor_file_is_skipped(tmp_path: Path) -> None:
    """ONNX test-data files (a bare TensorProto, input_0.pb) are not models."""
    p = _save_bytes(tmp_path / "input_0.pb", _weights().SerializeToString())
    report = scan(p)
    assert report.findings == []


def test_location_problem_accepts_plain_names() -> None:
    for ok in ("w.bin", "weights/w.bin", "a.b..c", "model.onnx.data", "dir\\w.bin"):
        assert location_problem(ok) is None, ok


def test_scanning_imports_neither_onnx_nor_protobuf(tmp_path: Path) -> None:
    p = _save(_model(initializers=[_external(_weights(), "../x")]), tmp_path / "m.onnx")
    code = (
        "import sys\n"
        "from trainguard.scan.engine import scan_paths\n"
        f"r = scan_paths([{str(p)!r}])\n"
        "assert [f.rule_id for f in r.findings] == ['TG-ONNX-001'], r.findings\n"
        "bad = [m for m in ('onnx', 'google.protobuf', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _save_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------ properties
_VALID = _model(initializers=[_external(_weights(), "w.bin")]).SerializeToString()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.integers(0, len(_VALID)), st.binary(max_size=64))
def test_any_bytes_end_cleanly(noise: bytes, cut: int, splice: bytes) -> None:
    """Random bytes and valid models with spliced garbage never crash the analyzer: they parse,
    are skipped, or end in a finding (never the context's 'internal error')."""
    config = ScanConfig(limits=Limits(max_header_bytes=1 << 20))
    for data in (b"\x08\x08\x3a" + noise, _VALID[:cut] + splice + _VALID[cut:], noise):
        _, findings = scan_bytes("f.onnx", data, config)
        for f in findings:
            assert not f.evidence.startswith("internal error"), f.evidence


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.sampled_from([0, 1, 2, 5]),
                          st.integers(0, 1 << 64 - 1), st.binary(max_size=16)), max_size=20))
def test_wire_reader_reads_what_the_writer_wrote(records: list[tuple[int, int, int, bytes]]
                                                  ) -> None:
    """The reader decodes every record a protobuf encoder emits, with exact values."""
    import io

    from fixtures.protobuf_writer import tag, varint
    from trainguard.scan.analyzers.protobuf import WireReader

    data = b""
    expected = []
    for number, wire, value, payload in records:
        if wire == 0:
            data += tag(number, 0) + varint(value)
            expected.append((number, 0, value))
        elif wire == 1:
            data += tag(number, 1) + (value % (1 << 64)).to_bytes(8, "little")
            expected.append((number, 1, value % (1 << 64)))
        elif wire == 5:
            data += tag(number, 5) + (value % (1 << 32)).to_bytes(4, "little")
            expected.append((number, 5, value % (1 << 32)))
        else:
            data += tag(number, 2) + varint(len(payload)) + payload
            expected.append((number, 2, payload))  # type: ignore[arg-type]
    r = WireReader(io.BytesIO(data), len(data), 1 << 30, window=16)  # tiny: many refills
    got: list[tuple[int, int, object]] = []
    for f in r.fields(0, len(data)):
        got.append((f.number, f.wire, r.read(f.value, f.length) if f.wire == 2 else f.value))
    assert got == expected
