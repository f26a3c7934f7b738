"""Installs the guard from ``TRAINGUARD_*`` variables; called by the generated sitecustomize.

``trainguard run`` puts a directory first on ``PYTHONPATH`` whose ``sitecustomize.py`` calls
:func:`boot` while the interpreter starts (``site`` imports ``sitecustomize`` after the
``.pth`` files, before ``__main__``), so every Python process of the job (torchrun workers,
multiprocessing spawn and forkserver children, subprocesses) runs guarded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: variables ``trainguard run`` sets for the processes of the job
ENV_ACTIVE = "TRAINGUARD_GUARD"
ENV_MODE = "TRAINGUARD_GUARD_MODE"
ENV_RUN_DIR = "TRAINGUARD_RUN_DIR"
ENV_CONFIG = "TRAINGUARD_CONFIG"
ENV_NO_STDERR = "TRAINGUARD_GUARD_QUIET"
ENV_LEDGER = "TRAINGUARD_LEDGER"


def boot() -> None:
    """Install the guard described by the environment; never raises."""
    if os.environ.get(ENV_ACTIVE) != "1":
        return
    try:
        from trainguard import guard

        run_dir = os.environ.get(ENV_RUN_DIR)
        guard.install(mode=os.environ.get(ENV_MODE) or None,
                      run_dir=Path(run_dir) if run_dir else None,
                      stderr=os.environ.get(ENV_NO_STDERR) != "1",
                      ledger=os.environ.get(ENV_LEDGER) or None)
    except Exception as exc:  # the job runs even if its guard cannot be installed
        sys.stderr.write(f"trainguard: guard not installed in pid {os.getpid()}: "
                         f"{type(exc).__name__}: {exc}\n")
        _record_failure(exc)


def _record_failure(exc: BaseException) -> None:
    """Leave a trace for the final report (the launcher counts these files)."""
    run_dir = os.environ.get(ENV_RUN_DIR)
    if not run_dir:
        return
    try:
        from trainguard.core.events import Event, EventKind, JsonlSink
        from trainguard.core.findings import Severity

        sink = JsonlSink(Path(run_dir) / "proc" / f"bootfail-{os.getpid()}.jsonl")
        sink.emit(Event.now(EventKind.GUARD_ERROR, f"pid:{os.getpid()}",
                            {"message": f"guard not installed: {type(exc).__name__}: {exc}"},
                            severity=Severity.MEDIUM, rule_id="TG-GRD-015"))
        sink.close()
    except Exception:  # noqa: S110 - nothing else to report to
        pass


#: the sitecustomize.py ``trainguard run`` writes into the bootstrap directory. It depends on
#: nothing but the standard library until it imports trainguard, and it always chains to the
#: sitecustomize that would have run without it (found on the rest of sys.path; directories
#: already visited are skipped so nested runs cannot recurse).
SITECUSTOMIZE = '''\
"""Written by `trainguard run`: installs the trainguard guard, then runs the sitecustomize
that would have run without it."""


def _trainguard_bootstrap():
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    visited = sys.__dict__.setdefault("_trainguard_bootstrap_dirs", set())
    first = not visited
    visited.add(here)
    if first:
        try:
            try:
                from trainguard.guard._boot import boot
            except ImportError:
                extra = os.environ.get("TRAINGUARD_IMPORT_PATH")
                if not extra:
                    raise
                sys.path.append(extra)
                from trainguard.guard._boot import boot
            boot()
        except Exception as exc:
            sys.stderr.write("trainguard: guard not installed in pid %d: %s\\n"
                             % (os.getpid(), exc))
    import importlib.machinery
    import importlib.util

    path = [p for p in sys.path if os.path.abspath(p or os.curdir) not in visited]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    if spec.origin and os.path.dirname(os.path.abspath(spec.origin)) in visited:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_trainguard_bootstrap()
del _trainguard_bootstrap
'''
