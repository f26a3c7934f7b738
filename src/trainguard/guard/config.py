"""The ``[guard]`` table of ``trainguard.toml``, validated (unknown keys are an error).

Example::

    [guard]
    mode = "enforce"                 # or "monitor" (record only)
    enforce_at = "high"              # in enforce mode, stop detections at or above this
    check_every = 100                # tripwire re-check every K guard.step() calls
    allow_exec = ["nvidia-smi", "git"]
    allow_connect = ["10.0.0.0/8", "hub.example.org:443"]
    protected_paths = ["/checkpoints"]
    output_dirs = ["/checkpoints/my-job"]
    signed = [{ path = "pretrained/", signature = "pretrained.sig" }]

    [guard.monitors]                 # passed as-is to the training monitors (guard/monitors.py)
    every = 10
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.errors import ConfigError
from trainguard.core.findings import Severity

MODES = ("monitor", "enforce")
_KEYS = {"mode", "enforce_at", "check_every", "allow_exec", "allow_connect", "protected_paths",
         "output_dirs", "signed", "audit", "load_gate", "tripwires", "max_events",
         "max_repeats", "monitors"}


@dataclass(frozen=True)
class SignedArtifact:
    """A model file or directory whose loads are verified first (``[guard] signed``)."""

    path: Path
    signature: Path


@dataclass(frozen=True)
class GuardConfig:
    """Validated guard settings (defaults: monitor mode, everything on)."""

    mode: str = "monitor"
    enforce_at: Severity = Severity.HIGH
    check_every: int = 100
    allow_exec: tuple[str, ...] = ()
    #: (network, port or None); hosts given by name are kept as names
    allow_connect: tuple[str, ...] = ()
    protected_paths: tuple[Path, ...] = ()
    output_dirs: tuple[Path, ...] = ()
    signed: tuple[SignedArtifact, ...] = ()
    audit: bool = True
    load_gate: bool = True
    tripwires: bool = True
    #: events one process writes before it only counts them (a hostile flood stays bounded)
    max_events: int = 100_000
    #: identical detections (rule, code location) written before they are only counted
    max_repeats: int = 20
    #: raw [guard.monitors] table for the training monitors
    monitors: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    #: extra allow-listed pickle globals ([scan.allow] globals), shared with `trainguard scan`
    allow_globals: tuple[str, ...] = ()

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"


def _strings(raw: dict[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"[guard] {key} must be a list of non-empty strings")
    return tuple(value)


def _positive(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"[guard] {key} must be a positive integer")
    return value


def _flag(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key, True)
    if not isinstance(value, bool):
        raise ConfigError(f"[guard] {key} must be true or false")
    return value


def _check_connect(entry: str) -> None:
    host = entry
    if entry.count(":") == 1:  # host:port (an IPv6 address has several colons)
        host, port = entry.rsplit(":", 1)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"[guard] allow_connect {entry!r}: bad port")
    if "/" in host:
        try:
            ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise ConfigError(f"[guard] allow_connect {entry!r}: bad network") from None


def parse_guard_config(raw: dict[str, Any], *, base: Path | None = None,
                       allow_globals: tuple[str, ...] = ()) -> GuardConfig:
    """Validate a raw ``[guard]`` table; relative paths are taken from ``base`` (config dir)."""
    if not isinstance(raw, dict):
        raise ConfigError("[guard] must be a table")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) in [guard]: {', '.join(unknown)}")
    mode = raw.get("mode", "monitor")
    if mode not in MODES:
        raise ConfigError(f"[guard] mode must be one of {', '.join(MODES)}, not {mode!r}")
    try:
        enforce_at = Severity.parse(str(raw.get("enforce_at", "high")))
    except Exception as exc:
        raise ConfigError(f"[guard] enforce_at: {exc}") from None
    root = base or Path.cwd()

    def _path(text: str) -> Path:
        return Path(os.path.abspath(root / os.path.expanduser(text)))

    allow_connect = _strings(raw, "allow_connect")
    for entry in allow_connect:
        _check_connect(entry)
    signed_raw = raw.get("signed", [])
    if not isinstance(signed_raw, list):
        raise ConfigError("[guard] signed must be a list of {path, signature} tables")
    signed = []
    for i, item in enumerate(signed_raw):
        if (not isinstance(item, dict) or set(item) != {"path", "signature"}
                or not all(isinstance(v, str) and v for v in item.values())):
            raise ConfigError(f"[guard] signed[{i}] must be {{ path = \"...\", "
                              "signature = \"...\" }")
        signed.append(SignedArtifact(_path(item["path"]), _path(item["signature"])))
    monitors = raw.get("monitors", {})
    if not isinstance(monitors, dict):
        raise ConfigError("[guard.monitors] must be a table")
    return GuardConfig(
        mode=mode, enforce_at=enforce_at,
        check_every=_positive(raw, "check_every", 100),
        allow_exec=_strings(raw, "allow_exec"), allow_connect=allow_connect,
        protected_paths=tuple(_path(p) for p in _strings(raw, "protected_paths")),
        output_dirs=tuple(_path(p) for p in _strings(raw, "output_dirs")),
        signed=tuple(signed), audit=_flag(raw, "audit"), load_gate=_flag(raw, "load_gate"),
        tripwires=_flag(raw, "tripwires"),
        max_events=_positive(raw, "max_events", 100_000),
        max_repeats=_positive(raw, "max_repeats", 20),
        monitors=dict(monitors), allow_globals=tuple(allow_globals),
    )


def load_guard_config(path: Path | None = None, *, mode: str | None = None) -> GuardConfig:
    """``[guard]`` from the config that applies (see :func:`trainguard.core.config.load_config`);
    ``mode`` overrides the file's mode."""
    from trainguard.core.config import load_config

    config = load_config(path)
    base = config.source.parent if config.source is not None else None
    guard = parse_guard_config(config.section("guard"), base=base,
                               allow_globals=config.scan.allow_globals)
    if mode is not None:
        if mode not in MODES:
            raise ConfigError(f"guard mode must be one of {', '.join(MODES)}, not {mode!r}")
        from dataclasses import replace

        guard = replace(guard, mode=mode)
    return guard
