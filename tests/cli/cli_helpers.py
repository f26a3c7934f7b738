"""Inputs for the CLI tests, built at test time from readable bytes (never loaded by the tests).

Payloads are harmless (``os.system("true")``); the pickles are written opcode by opcode so the
bytes are identical on every platform and Python version (``pickle.dumps`` would write
``posix.system`` on Linux and ``nt.system`` on Windows).
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DOCS = REPO / "docs"
SCHEMA = json.loads((DOCS / "scan-report.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def validate(doc: dict[str, Any]) -> None:
    """Assert that ``doc`` is a valid scan report under docs/scan-report.schema.json."""
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def _unicode(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def call_pickle(module: str, name: str, arg: str) -> bytes:
    """Protocol 2 pickle of ``module.name(arg)``.

    Opcodes: PROTO, GLOBAL, BINUNICODE, TUPLE1, REDUCE, STOP.
    """
    return b"\x80\x02" + f"c{module}\n{name}\n".encode() + _unicode(arg) + b"\x85R."


def object_pickle(module: str, name: str) -> bytes:
    """Protocol 2 pickle that instantiates ``module.name`` (NEWOBJ) and sets its state (BUILD)."""
    return (b"\x80\x02" + f"c{module}\n{name}\n".encode() + b")\x81}" + _unicode("w")
            + b"K\x01sb.")


def clean_pickle() -> bytes:
    """Protocol 2 pickle of ``{"w": 1.5}``: no global at all."""
    return b"\x80\x02}" + _unicode("w") + b"G" + struct.pack(">d", 1.5) + b"s."


MALICIOUS = call_pickle("os", "system", "true")  # critical (TG-PKL-001)
CUSTOM_CLASS = object_pickle("mylab.models", "TinyNet")  # medium (TG-PKL-003)
TRAILING = clean_pickle() + b"junk"  # low (TG-PKL-008)


@dataclass(frozen=True)
class Result:
    """What one in-process CLI call returned and printed."""

    code: int
    out: str
    err: str


Run = Callable[..., Result]


def trainguard_exe() -> list[str]:
    """The installed console script (what a user runs), next to this interpreter if present."""
    script = Path(sys.executable).with_name("trainguard")
    if script.exists():
        return [str(script)]
    found = shutil.which("trainguard")
    assert found, "the trainguard console script is not installed (pip install -e .)"
    return [found]


def build_golden_input(root: Path) -> Path:
    """The fixed input of the golden tests: every kind of result, small and deterministic."""
    d = root / "golden-input"
    d.mkdir()
    for name in ("clean_checkpoint.pkl", "sabotaged_checkpoint.pkl"):
        shutil.copyfile(EXAMPLES / name, d / name)
    (d / "notes.txt").write_text("not a model\n")
    (d / "trailing.pkl").write_bytes(TRAILING)
    info = zipfile.ZipInfo("inner/evil.pkl", date_time=(2024, 1, 1, 0, 0, 0))
    with zipfile.ZipFile(d / "bundle.zip", "w") as z:
        z.writestr(info, MALICIOUS, compress_type=zipfile.ZIP_STORED)
    return d
