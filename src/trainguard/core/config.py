"""``trainguard.toml``: settings shared by every capability.

Lookup order: an explicit path (``--config``), then ``$TRAINGUARD_CONFIG``, then ``trainguard.toml``
in the current directory or its nearest parent. Unknown keys are an error, so a typo never silently
weakens a policy.

Example::

    [scan]
    fail_on = "medium"

    [scan.allow]
    # your own classes that full-model checkpoints reference; '*' matches one dotted segment,
    # a trailing '.**' matches any depth
    globals = ["mylab.models.TinyNet", "mylab.layers.*"]

    [scan.limits]
    max_depth = 8
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from trainguard.core.errors import ConfigError
from trainguard.core.findings import Severity

CONFIG_NAME = "trainguard.toml"
#: top-level tables owned by other capabilities (validated by them)
OTHER_SECTIONS = ("trust", "env", "guard", "ledger")
GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Bounds that keep hostile input from costing unbounded time or memory."""

    #: archive/compression/nested-pickle nesting depth
    max_depth: int = 8
    #: members read from one archive
    max_members: int = 100_000
    #: bytes produced by decompression, per top-level file
    max_expanded_bytes: int = 16 * GiB
    #: opcodes interpreted in one pickle stream; state costs up to ~100 bytes per opcode, so the
    #: default bounds a hostile stream near 1 GB (real checkpoints use well under 1M opcodes)
    max_pickle_opcodes: int = 10_000_000
    #: distinct globals one pickle stream may import (real checkpoints use well under 1,000)
    max_pickle_globals: int = 10_000
    #: size of a metadata header read into memory (safetensors JSON, GGUF metadata, npy header,
    #: Keras config, ONNX/TF graph protobufs)
    max_header_bytes: int = 256 << 20
    #: files visited under one directory target
    max_files: int = 1_000_000
    #: nested containers (lists, dicts, tuples) inside JSON and pickles that are tracked
    max_nesting: int = 10_000


@dataclass(frozen=True)
class ScanConfig:
    fail_on: Severity = Severity.MEDIUM
    #: extra allow-listed globals (patterns, see module docstring)
    allow_globals: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Config:
    scan: ScanConfig = field(default_factory=ScanConfig)
    source: Path | None = None
    #: the other top-level tables ([trust], [env], [guard], [ledger]) as parsed TOML; each
    #: capability validates its own table (``Config.section``) so that core stays independent
    sections: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False, compare=False)

    def section(self, name: str) -> dict[str, Any]:
        """The raw table ``[name]`` (empty if absent); the owning capability validates it."""
        return dict(self.sections.get(name, {}))


def find_config(start: Path | None = None) -> Path | None:
    """The config file that applies, or None."""
    env = os.environ.get("TRAINGUARD_CONFIG")
    if env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        candidate = d / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None = None, *, discover: bool = True) -> Config:
    """Load ``trainguard.toml`` (explicit path, or discovered), or the defaults if there is none."""
    if path is None and discover:
        path = find_config()
    if path is None:
        return Config()
    # Imported here: most runs have no config file, and start-up time is per-file scan time.
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return parse_config(raw, source=path)


def _expect(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    return table


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}")


def parse_config(raw: dict[str, Any], source: Path | None = None) -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    # Tables owned by later capabilities are accepted here and validated by their own loaders.
    _check_keys(raw, {"scan", *OTHER_SECTIONS}, "trainguard.toml")
    sections = {name: _expect(raw[name], f"[{name}]") for name in OTHER_SECTIONS if name in raw}
    scan_raw = _expect(raw.get("scan", {}), "[scan]")
    _check_keys(scan_raw, {"fail_on", "allow", "limits"}, "[scan]")
    scan = ScanConfig()
    if "fail_on" in scan_raw:
        try:
            scan = replace(scan, fail_on=Severity.parse(str(scan_raw["fail_on"])))
        except Exception as exc:  # UsageError from parse, reworded as a config problem
            raise ConfigError(f"[scan] fail_on: {exc}") from None
    allow = _expect(scan_raw.get("allow", {}), "[scan.allow]")
    _check_keys(allow, {"globals"}, "[scan.allow]")
    globs = allow.get("globals", [])
    if not isinstance(globs, list) or not all(isinstance(g, str) and g for g in globs):
        raise ConfigError("[scan.allow] globals must be a list of non-empty strings")
    for g in globs:
        segments = g.strip().split(".")
        if not segments[0].isidentifier():
            raise ConfigError(f"[scan.allow] global {g!r} would allow everything; refusing",
                              remedy="start the pattern with a package name: mylab.**")
        if len(segments) < 2 or not all(segments):
            raise ConfigError(f"[scan.allow] global {g!r} must name a module and a global",
                              remedy="use pkg.mod.Name, pkg.mod.* or pkg.**")
    scan = replace(scan, allow_globals=tuple(globs))
    limits_raw = _expect(scan_raw.get("limits", {}), "[scan.limits]")
    names = {f.name for f in fields(Limits)}
    _check_keys(limits_raw, names, "[scan.limits]")
    for k, v in limits_raw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"[scan.limits] {k} must be a positive integer")
    scan = replace(scan, limits=replace(Limits(), **limits_raw))
    return Config(scan=scan, source=source, sections=sections)
