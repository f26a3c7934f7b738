"""TensorFlow SavedModel / GraphDef ops that touch the host, and Keras 2 ``keras_metadata.pb``.

TensorFlow is not installed for the tests (a 270 MB wheel), so the protobufs are written field
by field with tests/fixtures/protobuf_writer.py, following the layout TensorFlow itself writes:
TF2 ``tf.saved_model.save`` puts checkpoint ops in ``__inference__traced_save_N`` /
``__inference__traced_restore_N`` library functions, TF1 ``tf.train.Saver`` in a ``save/`` name
scope. (The analyzer was also checked by hand against SavedModels written by TensorFlow 2.21;
no TensorFlow-built file is part of the suite.)
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.protobuf_writer import (
    attr_list_s,
    attr_s,
    attr_type,
    function,
    graph_def,
    keras_metadata,
    node,
    saved_model,
)
from fixtures.scanning import scan, scan_bytes
from trainguard.core.config import Limits, ScanConfig
from trainguard.core.findings import Finding, Severity
from trainguard.core.report import Report

DT_FLOAT, DT_STRING = 1, 7


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _by_op(report: Report) -> dict[str, Finding]:
    assert all(f.rule_id == "TG-TF-001" for f in report.findings), report.findings
    return {f.details["op"]: f for f in report.findings}


def _benign_graph() -> list[bytes]:
    return [
        node("x", "Placeholder", attrs={"dtype": attr_type(DT_FLOAT)}),
        node("w", "Const", attrs={"dtype": attr_type(DT_FLOAT)}),
        node("b", "Const", attrs={"dtype": attr_type(DT_FLOAT)}),
        node("mm", "MatMul", ["x", "w"]),
        node("y", "Add", ["mm", "b"]),
        node("p", "PrintV2", ["y"], {"output_stream": attr_s("stderr")}),
    ]


def _tf2_saver(n: int = 65) -> list[bytes]:
    """The save/restore functions tf.saved_model.save generates for a model's variables."""
    save = function(f"__inference__traced_save_{n}", [
        node("StringJoin", "StringJoin", ["file_prefix", "Const"]),
        node("ShardedFilename", "ShardedFilename", ["StringJoin"]),
        node("SaveV2", "SaveV2", ["ShardedFilename"]),
        node("MergeV2Checkpoints", "MergeV2Checkpoints", ["ShardedFilename"]),
    ])
    restore = function(f"__inference__traced_restore_{n + 15}", [
        node("RestoreV2", "RestoreV2", ["file_prefix"]),
        node("AssignVariableOp", "AssignVariableOp", ["RestoreV2"]),
    ])
    call = function("__inference___call___40", [node("MatMul", "MatMul", ["x", "w"])])
    return [call, save, restore]


def test_benign_tf2_saved_model(tmp_path: Path) -> None:
    """Placeholder/Const/MatMul/Add, tf.print to stderr and TF2's own checkpoint functions."""
    nodes = _benign_graph() + [node("saver_filename", "Placeholder"),
                               node("StatefulPartitionedCall_1", "StatefulPartitionedCall")]
    graph = graph_def(nodes, _tf2_saver())
    p = _write(tmp_path / "sm" / "saved_model.pb", saved_model(graph))
    report = scan(p.parent)
    assert report.findings == []
    assert next(f for f in report.files if f.path.endswith(".pb")).formats == [
        "savedmodel", "protobuf"]


def test_benign_tf1_saver_scope(tmp_path: Path) -> None:
    """tf.compat.v1 SavedModelBuilder: the Saver's SaveV2/RestoreV2 live under 'save/'."""
    nodes = _benign_graph() + [
        node("save/filename", "PlaceholderWithDefault"),
        node("save/SaveV2", "SaveV2", ["save/filename"]),
        node("save/RestoreV2", "RestoreV2", ["save/filename"]),
        node("save_1/MergeV2Checkpoints", "MergeV2Checkpoints"),
    ]
    p = _write(tmp_path / "saved_model.pb", saved_model(graph_def(nodes)))
    assert scan(p).findings == []


def test_file_and_python_ops(tmp_path: Path) -> None:
    """modelscan / Huntr SavedModel reports: ReadFile and WriteFile in the serving graph read and
    write host files; PyFunc in a function library calls back into Python (CRITICAL)."""
    nodes = _benign_graph() + [
        node("path", "Const", attrs={"dtype": attr_type(DT_STRING)}),
        node("steal", "ReadFile", ["path"]),
        node("drop", "WriteFile", ["path", "steal"]),
        node("ls", "MatchingFiles", ["path"]),
    ]
    lib = [function("__inference_payload_7", [
        node("py", "PyFunc", ["x"], {"token": attr_s("pyfunc_0")}),
        node("epy", "EagerPyFunc", ["x"]),
    ])]
    p = _write(tmp_path / "saved_model.pb", saved_model(graph_def(nodes, lib)))
    found = _by_op(scan(p))
    assert set(found) == {"ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "EagerPyFunc"}
    assert found["PyFunc"].severity == Severity.CRITICAL
    assert "__inference_payload_7/py" in found["PyFunc"].evidence
    assert found["ReadFile"].severity == Severity.HIGH
    assert "steal" in found["ReadFile"].evidence
    assert found["WriteFile"].severity == Severity.HIGH


def test_checkpoint_ops_outside_the_saver(tmp_path: Path) -> None:
    """SaveV2/RestoreV2 anywhere but TensorFlow's own saver write and read arbitrary paths."""
    lib = _tf2_saver() + [function("__inference_serve_9", [node("s", "SaveV2", ["p"])])]
    nodes = _benign_graph() + [node("r", "RestoreV2", ["p"])]
    p = _write(tmp_path / "saved_model.pb", saved_model(graph_def(nodes, lib)))
    found = _by_op(scan(p))
    assert set(found) == {"SaveV2", "RestoreV2"}
    assert "__inference_serve_9/s" in found["SaveV2"].evidence


def test_attribute_driven_ops(tmp_path: Path) -> None:
    """tf.print(output_stream='file://...') and debug ops with file:// URLs write host files."""
    nodes = [
        node("p", "PrintV2", ["x"], {"output_stream": attr_s("file:///tmp/tg_out")}),
        node("d", "DebugIdentity", ["x"], {"debug_urls": attr_list_s(["file:///tmp/dump"])}),
        node("ok", "DebugIdentity", ["x"], {"debug_urls": attr_list_s([])}),
    ]
    p = _write(tmp_path / "saved_model.pb", saved_model(graph_def(nodes)))
    found = _by_op(scan(p))
    assert set(found) == {"PrintV2", "DebugIdentity"}
    assert found["DebugIdentity"].count == 1


def test_frozen_graph_def(tmp_path: Path) -> None:
    """A TF1 frozen GraphDef (.pb) is recognised by structure and checked the same way."""
    p = _write(tmp_path / "frozen.pb", graph_def(_benign_graph() + [node("rf", "ReadFile", ["x"])]))
    report = scan(p)
    assert set(_by_op(report)) == {"ReadFile"}
    assert report.files[0].formats == ["graphdef", "protobuf"]


def test_keras_metadata_lambda(tmp_path: Path) -> None:
    """CVE-2024-3660 in the Keras 2 SavedModel format: layer configs live in keras_metadata.pb."""
    layer = {"name": "lambda", "class_name": "Lambda", "config": {
        "name": "lambda", "function": ["4wEAAAAAAAAAAAAAAAEAAAADAAAA", None, None],
        "function_type": "lambda", "module": "__main__"}}
    dense = {"name": "dense", "class_name": "Dense", "config": {"units": 2}}
    data = keras_metadata([("root.layer-0", "_tf_keras_layer", json.dumps(dense)),
                           ("root.layer-1", "_tf_keras_layer", json.dumps(layer))])
    report = scan(_write(tmp_path / "keras_metadata.pb", data))
    assert [f.rule_id for f in report.findings] == ["TG-KER-001"]
    assert "keras-metadata" in report.files[0].formats


def test_benign_keras_metadata(tmp_path: Path) -> None:
    dense = {"name": "dense", "class_name": "Dense", "config": {"units": 2}}
    data = keras_metadata([("root.layer-0", "_tf_keras_layer", json.dumps(dense))])
    assert scan(_write(tmp_path / "keras_metadata.pb", data)).findings == []


def test_truncated_saved_model(tmp_path: Path) -> None:
    data = saved_model(graph_def(_benign_graph(), _tf2_saver()))
    report = scan(_write(tmp_path / "saved_model.pb", data[: len(data) - 40]))
    assert [f.rule_id for f in report.findings] == ["TG-FMT-001"]


def test_corrupt_node_is_a_finding(tmp_path: Path) -> None:
    """A SavedModel whose node holds a wire type 3 (group) record: malformed, not skipped."""
    graph = graph_def([node("a", "Add") + b"\x1b"])
    report = scan(_write(tmp_path / "saved_model.pb", saved_model(graph)))
    assert [f.rule_id for f in report.findings] == ["TG-FMT-001"]


def test_structure_budget(tmp_path: Path) -> None:
    graph = graph_def([node(f"n{i}", "Add") for i in range(100_000)])
    report = scan(_write(tmp_path / "saved_model.pb", saved_model(graph)),
                  config=ScanConfig(limits=Limits(max_header_bytes=1 << 20)))
    assert [f.rule_id for f in report.findings] == ["TG-LIM-001"]


_VALID = saved_model(graph_def(_benign_graph() + [node("rf", "ReadFile", ["x"])], _tf2_saver()))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_VALID)), st.binary(max_size=32), st.integers(0, 64))
def test_spliced_saved_models_end_cleanly(cut: int, splice: bytes, drop: int) -> None:
    """Garbage spliced into (or bytes dropped from) a SavedModel: a finding, a skip or a clean
    parse, never an analyzer crash (the context's 'internal error')."""
    data = _VALID[:cut] + splice + _VALID[cut + drop:]
    _, findings = scan_bytes("saved_model.pb", data)
    for f in findings:
        assert not f.evidence.startswith("internal error"), f.evidence
