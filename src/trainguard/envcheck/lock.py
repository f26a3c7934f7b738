"""Lock files: which distributions (and versions) an environment is supposed to hold.

Read as data, never evaluated: pip requirements files (``name==version`` pins, as written by
``pip freeze``, ``pip-compile`` or ``uv pip compile``), ``uv.lock`` (``[[package]]`` tables) and
PEP 751 ``pylock.toml`` (``[[packages]]`` tables).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError
from trainguard.envcheck.records import normalize_name

MAX_LOCK_BYTES = 64 << 20
#: installer tooling that requirement files usually leave out (``pip freeze`` omits them)
TOOLING = frozenset({"pip", "setuptools", "wheel", "distribute"})

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")
_PIN = re.compile(r"^===?\s*([^\s;,]+)\s*(?:;.*)?$")


@dataclass(frozen=True)
class Lock:
    """Locked versions by normalised name (None: any version, e.g. a URL or range)."""

    path: Path
    kind: str
    packages: dict[str, str | None]


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()[: MAX_LOCK_BYTES + 1]
    except OSError as exc:
        raise InputError(f"cannot read lock file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_LOCK_BYTES:
        raise InputError(f"lock file {path} is larger than {MAX_LOCK_BYTES} bytes")
    return data.decode("utf-8", "replace")


def parse_requirements(text: str) -> dict[str, str | None]:
    """Pins from a requirements file; options, includes and editable lines are skipped."""
    out: dict[str, str | None] = {}
    logical = re.sub(r"\\\r?\n", " ", text)
    for raw in logical.splitlines():
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = _REQ.match(line)
        if m is None:
            continue
        name, rest = normalize_name(m.group(1)), m.group(2).split("--hash")[0].strip()
        pin = _PIN.match(rest)
        out[name] = pin.group(1) if pin else None
    return out


def _toml_tables(text: str, path: Path, key: str) -> list[dict[str, Any]]:
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise InputError(f"lock file {path} is not valid TOML: {exc}") from None
    tables = doc.get(key, [])
    if not isinstance(tables, list):
        raise InputError(f"lock file {path}: [[{key}]] must be an array of tables")
    return [t for t in tables if isinstance(t, dict)]


def load_lock(path: str | os.PathLike[str]) -> Lock:
    """Read a lock file, choosing the parser from its name and content."""
    p = Path(path)
    text = _read(p)
    if p.suffix == ".toml" or p.name == "uv.lock":
        key = "package" if p.name == "uv.lock" or "[[package]]" in text else "packages"
        pkgs: dict[str, str | None] = {}
        for t in _toml_tables(text, p, key):
            name = t.get("name")
            if not isinstance(name, str):
                continue
            version = t.get("version")
            pkgs[normalize_name(name)] = version if isinstance(version, str) else None
        return Lock(p, "uv.lock" if key == "package" else "pylock", pkgs)
    return Lock(p, "requirements", parse_requirements(text))
