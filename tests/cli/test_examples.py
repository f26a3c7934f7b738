"""The bundled examples/ that the README's first command scans.

The example pickles are only ever parsed here (``pickletools.genops`` reads opcodes and executes
nothing); the clean one is compared with what ``pickle.dumps`` writes, never loaded.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import pickletools
import subprocess
import sys
from types import ModuleType

from cli_helpers import EXAMPLES, Run, validate


def _make_examples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_examples"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_committed_examples_are_current() -> None:
    built = _make_examples().build()
    assert set(built) == {"clean_checkpoint.pkl", "sabotaged_checkpoint.pkl"}
    for name, data in built.items():
        stale = f"{name} is stale: run python examples/make_examples.py"
        assert (EXAMPLES / name).read_bytes() == data, stale


def test_make_examples_check_mode() -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / "make_examples.py"), "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_examples_are_readable_protocol_0_pickles() -> None:
    for name in ("clean_checkpoint.pkl", "sabotaged_checkpoint.pkl"):
        data = (EXAMPLES / name).read_bytes()
        data.decode("ascii")  # human-readable, no binary blob
        ops = list(pickletools.genops(data))
        assert ops[-1][0].name == "STOP"
        assert max(op.proto for op, _arg, _pos in ops) == 0


def test_clean_example_is_what_pickle_writes() -> None:
    expected = {"epoch": 3.0, "lr": 0.001, "layer.weight": [0.5, -0.25, 0.125],
                "layer.bias": [0.0, 0.1]}
    assert (EXAMPLES / "clean_checkpoint.pkl").read_bytes() == pickle.dumps(expected, protocol=0)


def test_sabotaged_example_payload() -> None:
    ops = list(pickletools.genops((EXAMPLES / "sabotaged_checkpoint.pkl").read_bytes()))
    globals_ = [(arg, pos) for op, arg, pos in ops if op.name == "GLOBAL"]
    assert globals_ == [("torch manual_seed", 122), ("time sleep", 171)]
    assert sum(op.name == "REDUCE" for op, _a, _p in ops) == 2


def test_readme_command_on_examples(run: Run) -> None:
    """``trainguard scan examples/`` exits 1 with the sabotage findings and no error."""
    r = run("scan", "-f", "json", EXAMPLES)
    assert r.code == 1, r
    doc = json.loads(r.out)
    validate(doc)
    assert doc["errors"] == []
    found = sorted((f["rule_id"], f["location"]["offset"], f["location"]["path"].rsplit("/", 1)[-1])
                   for f in doc["findings"])
    assert found == [("TG-SAB-001", 122, "sabotaged_checkpoint.pkl"),
                     ("TG-SAB-003", 171, "sabotaged_checkpoint.pkl")]
    status = {f["path"].rsplit("/", 1)[-1]: f["status"] for f in doc["files"]}
    assert status["clean_checkpoint.pkl"] == "scanned"
    assert status["sabotaged_checkpoint.pkl"] == "scanned"
    assert status["make_examples.py"] == "skipped"
    assert status["README.md"] == "skipped"


def test_clean_example_alone_is_clean(run: Run) -> None:
    r = run("scan", EXAMPLES / "clean_checkpoint.pkl")
    assert r.code == 0, r
