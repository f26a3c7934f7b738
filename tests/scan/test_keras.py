"""Keras ``.keras`` and legacy ``.h5`` models: Lambda bytecode, custom objects, unsafe functions.

Benign models are saved by Keras 3 itself (torch backend). Malicious ones start from a real Keras
save whose JSON config is edited the way the published proofs of concept edit it; Lambda bytecode
is ``marshal`` data of a function that is compiled but never called. Nothing is ever loaded.
"""

from __future__ import annotations

import codecs
import copy
import json
import marshal
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.scanning import only, rule_ids, scan
from trainguard.core.config import Limits, ScanConfig
from trainguard.core.findings import Severity
from trainguard.scan.analyzers.keras import iter_json_objects
from trainguard.scan.engine import scan_paths

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported anywhere in this process
h5py = pytest.importorskip("h5py")
np = pytest.importorskip("numpy")


def _payload(x: Any) -> Any:  # pragma: no cover - compiled for its bytecode, never called
    import os as _os

    _os.system("true")
    return x


def _lambda_code() -> str:
    """Bytecode of ``_payload`` encoded the way keras.src.utils.python_utils.func_dump does."""
    return codecs.encode(marshal.dumps(_payload.__code__), "base64").decode("ascii")


# ---------------------------------------------------------------------------- real Keras saves
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Benign models written by Keras 3: .keras, legacy .h5, weights-only .h5, plus one with a
    harmless Lambda (``x * 2``) in both formats."""
    keras = pytest.importorskip("keras")
    out = tmp_path_factory.mktemp("keras")
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, activation="relu")(inputs)
    x = keras.layers.Dropout(0.1)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    functional = keras.Model(inputs, outputs)
    functional.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                       metrics=["accuracy"])
    seq = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh")])
    lam = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: t * 2)])
    paths = {
        "functional.keras": functional, "functional.h5": functional,
        "sequential.keras": seq, "sequential.h5": seq,
        "lambda.keras": lam, "lambda.h5": lam,
    }
    result = {}
    for name, model in paths.items():
        model.save(out / name)
        result[name] = out / name
    functional.save_weights(out / "functional.weights.h5")
    result["functional.weights.h5"] = out / "functional.weights.h5"
    return result


def _keras_config(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))  # type: ignore[no-any-return]


def _rewrite_keras(src: Path, dst: Path, config: dict[str, Any]) -> Path:
    """Copy a .keras zip, replacing config.json (what every .keras proof of concept does)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    return dst


def _h5_config(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["model_config"])  # type: ignore[no-any-return]


def _rewrite_h5(src: Path, dst: Path, config: dict[str, Any] | str) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        f.attrs["model_config"] = config if isinstance(config, str) else json.dumps(config)
    return dst


def _add_layer(config: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["config"]["layers"].append(layer)
    return config


@pytest.mark.torch
@pytest.mark.parametrize("name", ["functional.keras", "sequential.keras", "functional.h5",
                                  "sequential.h5", "functional.weights.h5"])
def test_benign_keras_saves_pass(saved: dict[str, Path], name: str) -> None:
    report = scan(saved[name])
    assert report.findings == []
    formats = report.files[0].formats
    assert "hdf5" in formats
    if not name.endswith(".weights.h5"):
        assert "keras" in formats  # the config was found and checked, not missed


def test_plain_hdf5_data_is_recognised_without_finding(tmp_path: Path) -> None:
    p = tmp_path / "data.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.arange(1000, dtype=np.float32))
        f.attrs["note"] = "plain data, not a model"
        f.attrs["meta"] = json.dumps({"source": "sensor", "units": "m"})
    report = scan(p)
    assert report.findings == []
    assert report.files[0].formats == ["hdf5"]


@pytest.mark.torch
def test_lambda_in_keras_zip(saved: dict[str, Path]) -> None:
    """CVE-2024-3660: Lambda bytecode in a .keras config runs when loaded with safe_mode=False."""
    f = only(scan(saved["lambda.keras"]), "TG-KER-001")
    assert f.severity == Severity.HIGH
    assert f.location.member == "config.json"
    assert "Lambda layer" in f.evidence


@pytest.mark.torch
def test_lambda_in_h5_is_critical(saved: dict[str, Path]) -> None:
    """CVE-2025-9905: .h5 models ignore safe_mode, so any Lambda bytecode runs on load."""
    f = only(scan(saved["lambda.h5"]), "TG-KER-001")
    assert f.severity == Severity.CRITICAL
    assert "CVE-2025-9905" in f.evidence


@pytest.mark.torch
def test_lambda_payload_names_are_evidence(saved: dict[str, Path], tmp_path: Path) -> None:
    """CVE-2024-3660 (JFrog write-up): bytecode calling os.system, found without unmarshalling."""
    config = _keras_config(saved["lambda.keras"])
    config["config"]["layers"][-1]["config"]["function"]["config"]["code"] = _lambda_code()
    f = only(scan(_rewrite_keras(saved["lambda.keras"], tmp_path / "evil.keras", config)),
             "TG-KER-001")
    assert f.severity == Severity.CRITICAL  # names os/system raise it even under safe_mode
    assert "'system'" in f.evidence
    assert "'true'" in f.evidence


def _keras2_lambda(function: object, function_type: str, module: str) -> dict[str, Any]:
    """A Lambda layer as tf.keras 2 wrote it in .h5 files (keras/layers/core/lambda_layer.py)."""
    return {"class_name": "Lambda", "config": {
        "name": "lambda", "trainable": True, "dtype": "float32", "function": function,
        "function_type": function_type, "module": module, "output_shape": None,
        "output_shape_type": "raw", "output_shape_module": None, "arguments": {}}}


@pytest.mark.torch
def test_keras2_lambda_bytecode_in_h5(saved: dict[str, Path], tmp_path: Path) -> None:
    """CVE-2024-3660 / CVE-2025-9905: Keras 2 h5 Lambda, function = [base64 bytecode, defaults,
    closure] with function_type 'lambda'."""
    layer = _keras2_lambda([_lambda_code(), None, None], "lambda", "__main__")
    config = _add_layer(_h5_config(saved["sequential.h5"]), layer)
    f = only(scan(_rewrite_h5(saved["sequential.h5"], tmp_path / "k2.h5", config)),
             "TG-KER-001")
    assert f.severity == Severity.CRITICAL
    assert "'system'" in f.evidence


@pytest.mark.torch
def test_keras2_named_function_lambda(saved: dict[str, Path], tmp_path: Path) -> None:
    """Keras 2 Lambda with function_type 'function' resolves ``function`` in the globals of
    ``module``: function='system', module='os' calls os.system on load."""
    config = _add_layer(_h5_config(saved["sequential.h5"]),
                        _keras2_lambda("system", "function", "os"))
    report = scan(_rewrite_h5(saved["sequential.h5"], tmp_path / "named.h5", config))
    f = only(report, "TG-KER-003")
    assert "os.system" in f.evidence
    assert f.severity == Severity.CRITICAL


@pytest.mark.torch
def test_arbitrary_module_function_call(saved: dict[str, Path], tmp_path: Path) -> None:
    """CVE-2025-1550 (GHSA-48g7-3x6r-xfhp): config.json names any module and function
    (``module`` + ``class_name``/``class_name: function``); Keras < 3.9 imported and called it."""
    layer = {"module": "keras.layers", "class_name": "Lambda", "config": {
        "name": "exploit", "function": {"module": "subprocess", "class_name": "function",
                                        "config": "check_output", "registered_name": "function"},
        "arguments": {"args": ["true"]}}, "registered_name": None,
        "inbound_nodes": [{"args": [], "kwargs": {"inputs": "x"}}]}
    other = {"module": "os", "class_name": "system", "config": {"name": "x"},
             "registered_name": None}
    config = _add_layer(_add_layer(_keras_config(saved["sequential.keras"]), layer), other)
    report = scan(_rewrite_keras(saved["sequential.keras"], tmp_path / "1550.keras", config))
    assert rule_ids(report) == ["TG-KER-003", "TG-KER-003"]
    evidence = " ".join(f.evidence for f in report.findings)
    assert "subprocess.check_output" in evidence
    assert "os.system" in evidence


@pytest.mark.torch
@pytest.mark.parametrize(("module", "name"), [
    ("keras.config", "enable_unsafe_deserialization"),
    ("keras.src.saving.serialization_lib", "enable_unsafe_deserialization"),
    ("keras.models", "load_model"),
    ("keras.utils", "get_file"),
    ("keras.src.utils.file_utils", "get_file"),
])
def test_unsafe_keras_functions(saved: dict[str, Path], tmp_path: Path, module: str,
                                name: str) -> None:
    """CVE-2025-9906 (io-no/CVE-Reports#5): a Lambda whose function is
    keras.config.enable_unsafe_deserialization turns safe mode off, then load_model loads a second
    model unsafely; CVE-2025-8747: keras.utils.get_file downloads a file during load."""
    layer = {"module": "keras.layers", "class_name": "Lambda", "config": {
        "name": "unsafe", "function": {"module": module, "class_name": "function",
                                       "config": name, "registered_name": "function"},
        "arguments": {}}, "registered_name": None}
    config = _add_layer(_keras_config(saved["sequential.keras"]), layer)
    f = only(scan(_rewrite_keras(saved["sequential.keras"], tmp_path / "u.keras", config)),
             "TG-KER-003")
    assert f"{module}.{name}" in f.evidence
    assert f.severity == Severity.CRITICAL


@pytest.mark.torch
def test_custom_objects_outside_keras(saved: dict[str, Path], tmp_path: Path) -> None:
    """CVE-2025-1550 class: objects resolved from modules outside keras import that module."""
    custom = {"module": "mylab.layers", "class_name": "FancyDense", "config": {"units": 2},
              "registered_name": "mylab>FancyDense"}
    registered = {"module": None, "class_name": "Scaler", "config": {},
                  "registered_name": "Custom>Scaler"}
    config = _add_layer(_add_layer(_keras_config(saved["sequential.keras"]), custom), registered)
    report = scan(_rewrite_keras(saved["sequential.keras"], tmp_path / "c.keras", config))
    assert rule_ids(report) == ["TG-KER-002", "TG-KER-002"]
    assert all(f.severity == Severity.MEDIUM for f in report.findings)
    evidence = " ".join(f.evidence for f in report.findings)
    assert "mylab.layers.FancyDense" in evidence
    assert "Custom>Scaler" in evidence


@pytest.mark.torch
def test_rng_reseeding_function_is_sabotage(saved: dict[str, Path], tmp_path: Path) -> None:
    """A config that calls keras.utils.set_random_seed reseeds every RNG of the loading job."""
    layer = {"module": "keras.layers", "class_name": "Lambda", "config": {
        "name": "seed", "function": {"module": "keras.utils", "class_name": "function",
                                     "config": "set_random_seed"}}, "registered_name": None}
    config = _add_layer(_keras_config(saved["sequential.keras"]), layer)
    report = scan(_rewrite_keras(saved["sequential.keras"], tmp_path / "s.keras", config))
    assert rule_ids(report) == ["TG-SAB-001"]


@pytest.mark.torch
def test_reordered_keys_and_whitespace_in_h5(saved: dict[str, Path], tmp_path: Path) -> None:
    """json.loads accepts any key order and whitespace: the scan must not depend on Keras's."""
    layer = _keras2_lambda([_lambda_code(), None, None], "lambda", "__main__")
    config = _add_layer(_h5_config(saved["sequential.h5"]), layer)
    reordered = {"config": config["config"], "class_name": config["class_name"]}
    text = json.dumps(reordered, indent="\t").replace("{", "{ \n ")
    f = only(scan(_rewrite_h5(saved["sequential.h5"], tmp_path / "ws.h5", text)), "TG-KER-001")
    assert f.severity == Severity.CRITICAL


@pytest.mark.torch
def test_config_written_after_large_weights(saved: dict[str, Path], tmp_path: Path) -> None:
    """An attacker controls where HDF5 places the attribute: after megabytes of weights, beyond
    any fixed-size header window."""
    layer = _keras2_lambda([_lambda_code(), None, None], "lambda", "__main__")
    config = _add_layer(_h5_config(saved["sequential.h5"]), layer)
    p = tmp_path / "late.h5"
    with h5py.File(p, "w") as f:
        rng = np.random.default_rng(0)
        f.create_dataset("model_weights/big", data=rng.standard_normal(6_000_000, np.float32))
        f.attrs["keras_version"] = "3.15.1"
        f.attrs["model_config"] = json.dumps(config)
    assert p.stat().st_size > 20 << 20
    f = only(scan(p), "TG-KER-001")
    assert f.location.offset is not None
    assert f.location.offset > 20 << 20


@pytest.mark.parametrize("body", [
    b'"class_name"' + b'{"a":' * 400_000,
    b'{"\\u0063\x00' * 300_000,
    b'{"class_name\x00' * 300_000,
    b'{"class_name":[' + b'{"a":[' * 200 + b"1," * 500_000,
], ids=["deep-nesting", "escape-flood", "short-run-flood", "late-failure"])
def test_json_fragment_flood_is_bounded(tmp_path: Path, body: bytes) -> None:
    """Hostile input: '{"' fragments by the hundred thousand and nested objects that fail late
    end in a limit finding, in bounded time, instead of quadratic decoding."""
    p = tmp_path / "flood.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + body)
    report = scan(p, config=ScanConfig(limits=Limits(max_header_bytes=4 << 20)),
                  bounded_seconds=30)
    assert rule_ids(report) == ["TG-LIM-001"]


def test_iter_json_objects_across_chunk_boundaries() -> None:
    """Objects cut by the 8 MiB read boundary (including '{' + whitespace at the very end) are
    still decoded whole."""
    import io

    obj = {"class_name": "Lambda", "config": {"name": "x"}}
    text = b'{   \n "class_name": "Lambda", "config": {"name": "x"}}'
    for cut in (1, 2, 5, 20):
        data = b"\x00" * ((8 << 20) - cut) + text + b"\x00" * 10
        found = list(iter_json_objects(io.BytesIO(data), 1 << 30))
        assert [o for _, o in found] == [obj], cut
        assert found[0][0] == (8 << 20) - cut


def test_non_keras_json_is_not_claimed() -> None:
    """check_keras_config returns False (so other JSON analyzers decide) for non-Keras JSON."""
    from trainguard.scan.analyzers.keras import check_keras_config
    from trainguard.scan.context import Blob, ScanContext
    from trainguard.scan.policy import Policy

    ctx = ScanContext(ScanConfig(), Policy(), "x.json")
    blob = Blob.from_bytes("x.json", None, b"{}")
    hf = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 8}
    assert not check_keras_config(ctx, blob, hf)
    assert not check_keras_config(ctx, blob, [1, 2, {"a": {"b": None}}])
    assert ctx.findings == []
    assert check_keras_config(ctx, blob, {"class_name": "Dense", "config": {"units": 1}})


@pytest.mark.torch
def test_scanning_imports_no_framework(saved: dict[str, Path]) -> None:
    """The scan must not import keras, h5py, tensorflow or onnx (nor load the files)."""
    code = (
        "import sys\n"
        "from trainguard.scan.engine import scan_paths\n"
        f"r = scan_paths({[str(p) for p in saved.values()]!r})\n"
        "assert r.findings, 'the Lambda models were not flagged'\n"
        "bad = [m for m in ('keras', 'h5py', 'tensorflow', 'onnx', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.integers(0, 4096), st.sampled_from([
    b'{"class_name": "Lambda", "config": {"function": ["4wEAAAA=", null, null], '
    b'"function_type": "lambda"}}',
    b'{"\\u0063lass_name": "Dense", "config": {}}',
]))
def test_any_bytes_around_a_config(noise: bytes, at: int, config: bytes) -> None:
    """A config embedded anywhere in arbitrary bytes, between control characters as HDF5 stores
    it, is found intact; the scan never fails on the surrounding bytes."""
    import io

    at = min(at, len(noise))
    data = noise[:at] + b"\x00" + config + b"\x00" + noise[at:]
    found = [obj for _, obj in iter_json_objects(io.BytesIO(data), 1 << 20)]
    assert json.loads(config) in found


def test_hdf5_after_a_user_block_is_recognised(tmp_path: Path) -> None:
    """HDF5 allows a user block before the superblock (h5py ``userblock_size``); loaders that use
    libhdf5 find the file anyway, so the scanner must too."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "with_userblock.h5"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.attrs["model_config"] = json.dumps(
            {"class_name": "Sequential", "config": {"layers": [
                {"class_name": "Lambda", "config": {"function": ["4wEAAAAAAAAA", None, None]}}]}})
    report = scan_paths([str(path)])
    assert "hdf5" in report.files[0].formats
    assert "TG-KER-001" in {f.rule_id for f in report.findings}
