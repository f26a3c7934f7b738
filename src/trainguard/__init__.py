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


__all__ = ["Finding", "Report", "Severity", "TrainguardError", "__version__", "scan"]
