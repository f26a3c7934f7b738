"""trainguard: keep model training safe from sabotage.

The public Python API::

    import trainguard
    report = trainguard.scan("checkpoints/")      # never executes or unpickles anything
    if report.at_or_above(trainguard.Severity.MEDIUM):
        ...
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any

from trainguard.core import Finding, Report, Severity, TrainguardError
from trainguard.core.config import ScanConfig, load_config

__version__ = "0.1.0"


def scan(
    paths: str | PathLike[str] | Sequence[str | PathLike[str]],
    *,
    config: ScanConfig | None = None,
    jobs: int = 1,
) -> Report:
    """Scan model files or directories and return a :class:`Report` (see ``trainguard scan``).

    ``config`` defaults to the ``[scan]`` table of the ``trainguard.toml`` that applies here.
    """
    from trainguard.scan.engine import scan_paths

    targets = [str(paths)] if isinstance(paths, (str, PathLike)) else [str(p) for p in paths]
    if config is None:
        config = load_config().scan
    return scan_paths(targets, config, jobs=jobs)


def load(path: str | PathLike[str], **kwargs: Any) -> Any:
    """Verify a checkpoint's signature and trust policy, scan it, then load it from the verified
    bytes (``weights_only=True`` for torch, safetensors otherwise). Keyword arguments: see
    :func:`trainguard.integrity.load.load` (``signature``, ``policy``, ``map_location``, ...)."""
    from trainguard.integrity.load import load as _load

    return _load(path, **kwargs)


def diff(old: str | PathLike[str], new: str | PathLike[str], **kwargs: Any) -> Any:
    """Compare two checkpoints (files or directories) without executing either; returns a
    :class:`trainguard.integrity.ckptdiff.DiffResult` (``values=True`` measures tensor changes)."""
    from trainguard.integrity.ckptdiff import diff as _diff

    return _diff(old, new, **kwargs)


__all__ = ["Finding", "Report", "Severity", "TrainguardError", "__version__", "diff", "load",
           "scan"]
