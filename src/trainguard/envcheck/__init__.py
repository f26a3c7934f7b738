"""Integrity of the Python environment a job runs in (``trainguard env``).

Example (runnable; inspects the interpreter running it without importing its packages)::

    import sys, tempfile, pathlib
    from trainguard import envcheck
    snap = envcheck.snapshot(sys.executable)           # every file's digest, hooks, interpreter
    out = pathlib.Path(tempfile.mkdtemp()) / "env.json"
    envcheck.save_snapshot(snap, out)
    report = envcheck.verify(sys.executable, against=out)            # full: hashes every file
    quick = envcheck.verify(against=out, quick=True)                 # size + ctime only
    print(snap.environment_digest, len(report.findings), len(quick.findings))

The other interpreter runs only ``python -I -S -c <probe>`` (no ``.pth``, no sitecustomize);
every other fact is read from files: dist-info RECORD/INSTALLER/direct_url.json, .pth text,
.pyc headers, ``lstat``. Findings use the TG-ENV rules (:mod:`trainguard.core.rules_env`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.core.errors import InputError, UsageError, VerificationError
from trainguard.core.report import Report
from trainguard.envcheck.common import Collector, EnvPolicy
from trainguard.envcheck.snapfile import (
    Snapshot,
    decode_snapshot,
    load_quick_index,
    load_snapshot,
    read_snapshot_bytes,
    sign_snapshot,
    verify_snapshot_signature,
)

if TYPE_CHECKING:
    from trainguard.envcheck.envdiff import EnvDiff

PathLike = str | os.PathLike[str]


def snapshot(python: PathLike | None = None, *, workers: int | None = None,
             progress: Callable[[Path, int], None] | None = None,
             environ: dict[str, str] | None = None) -> Snapshot:
    """Inspect and hash the environment of ``python`` (default: the active one).

    ``environ`` supplies the loader variables to record (default: this process's).
    """
    from trainguard.envcheck.snapfile import take_snapshot

    snap, _inv = take_snapshot(python, workers=workers, progress=progress, environ=environ)
    return snap


def save_snapshot(snap: Snapshot, path: PathLike, *, key: Any = None) -> Path | None:
    """Write ``snap`` to ``path``; with ``key`` (integrity.keys.PrivateKey) also ``path.sig``.

    Returns the signature's path, if one was written.
    """
    data = snap.to_bytes()
    p = Path(path)
    try:
        p.write_bytes(data)
        if key is None:
            return None
        sig = Path(str(p) + ".sig")
        sig.write_bytes(sign_snapshot(data, key))
        return sig
    except OSError as exc:
        raise InputError(f"cannot write {exc.filename}: {exc.strerror}") from None


def verify(python: PathLike | None = None, *, against: PathLike | None = None,
           pubkey: Any = None, signature: PathLike | None = None, lock: PathLike | None = None,
           quick: bool = False, policy: EnvPolicy | None = None, workers: int | None = None,
           environ: dict[str, str] | None = None,
           progress: Callable[[Path, int], None] | None = None) -> Report:
    """Verify an environment against its RECORDs and, with ``against``, a snapshot.

    ``pubkey`` (integrity.keys.PublicKey) makes the snapshot's detached signature (``signature``,
    default ``<against>.sig``) mandatory: missing or invalid is a TG-ENV-016 finding.
    ``quick`` compares size and ctime with the snapshot only (no hashing, no probe).
    """
    c = Collector()
    if quick:
        if against is None:
            raise UsageError("--quick compares with a snapshot: give --against SNAP")
        if lock is not None:
            raise UsageError("--lock needs the installed distributions: drop --quick")
    elif against is None and (pubkey is not None or signature is not None):
        raise UsageError("a public key or signature needs a snapshot (--against SNAP)")
    snap: Snapshot | None = None
    if against is not None:
        data = read_snapshot_bytes(Path(against))
        # the signature covers the exact bytes, quick index included: checked before use
        _check_signature(c, Path(against), data, pubkey,
                         Path(signature) if signature is not None else None)
        if quick:
            from trainguard.envcheck.quick import quick_verify_index

            idx = load_quick_index(data, Path(against))
            if python is not None:
                _check_same_environment(c, python, idx.prefix)
            return quick_verify_index(idx, environ=environ, collector=c, workers=workers)
        snap = decode_snapshot(data, Path(against))
    from trainguard.envcheck.checks import verify_environment
    from trainguard.envcheck.lock import load_lock

    return verify_environment(python, snapshot=snap,
                              lock=load_lock(lock) if lock is not None else None,
                              policy=policy, workers=workers, environ=environ,
                              progress=progress, collector=c)


def _check_same_environment(c: Collector, python: PathLike, snap_prefix: str) -> None:
    """Quick mode checks the files the snapshot lists; when an interpreter is named, it must be
    the snapshot's environment, or a job would run in an environment nobody checked."""
    from trainguard.envcheck.probe import probe, resolve_python

    exe = resolve_python(python)
    venv = exe.parent.parent
    # a virtual environment's prefix is the directory holding pyvenv.cfg (PEP 405): no probe
    prefix = str(venv) if (venv / "pyvenv.cfg").is_file() else probe(exe).prefix
    if os.path.realpath(prefix) != os.path.realpath(snap_prefix):
        c.add("TG-ENV-015", exe, f"the snapshot describes {snap_prefix}; this interpreter's "
              f"environment is {prefix}", snapshot_prefix=snap_prefix, prefix=prefix)


def _check_signature(c: Collector, snap_path: Path, data: bytes, pubkey: Any,
                     sig_path: Path | None) -> None:
    sig_path = sig_path or Path(str(snap_path) + ".sig")
    try:
        sig = sig_path.read_bytes()[: 1 << 20]
    except OSError:
        sig = None
    if pubkey is None:
        if sig is not None:
            from trainguard.core.findings import Severity

            c.add("TG-ENV-016", sig_path, "the snapshot is signed but no public key was given "
                  "(--pubkey): the signature was not checked", severity=Severity.LOW)
        return
    if sig is None:
        c.add("TG-ENV-016", snap_path, f"no signature at {sig_path}; a public key was given")
        return
    try:
        verify_snapshot_signature(data, sig, pubkey)
    except VerificationError as exc:
        c.add("TG-ENV-016", sig_path, exc.message, key_id=pubkey.key_id)


def diff(a: PathLike, b: PathLike) -> EnvDiff:
    """Compare two snapshot files (see :class:`EnvDiff`)."""
    from trainguard.envcheck.envdiff import diff_snapshots

    return diff_snapshots(load_snapshot(a)[0], load_snapshot(b)[0])


def __getattr__(name: str) -> Any:
    # EnvDiff lives with the diff code, imported only when used (the quick check never is)
    if name == "EnvDiff":
        from trainguard.envcheck.envdiff import EnvDiff

        return EnvDiff
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EnvDiff", "EnvPolicy", "Snapshot", "diff", "load_snapshot", "save_snapshot",
           "snapshot", "verify"]
