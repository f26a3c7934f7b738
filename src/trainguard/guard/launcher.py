"""``trainguard run -- CMD``: check, then launch a job with the guard in every Python process.

1. Pre-launch: the quick environment check (``trainguard.envcheck``) and the verification of
   declared inputs (``--input P --signature B``, through ``trainguard.integrity.verify``). A
   check that cannot run is recorded; a declared input that does not verify (or cannot be
   verified: fail closed) stops an enforce-mode launch.
2. Propagation through the environment, never by editing the user's code: a bootstrap
   directory first on ``PYTHONPATH`` holds a ``sitecustomize.py`` that installs the guard while
   the interpreter starts and then chains to any sitecustomize that was there before;
   ``TRAINGUARD_*`` variables carry the mode, config and run directory. Child processes inherit
   the environment: torchrun's workers, multiprocessing spawn/forkserver children and
   subprocesses all start guarded; forked children inherit the installed guard.
3. The command runs; SIGINT/SIGTERM are forwarded. At the end the per-process event files are
   merged into the events file and summarised (:mod:`trainguard.guard.report`).

Exit status: the command's own (128+N when a signal N killed it), except
:data:`EXIT_GUARD_STOPPED` (77) in enforce mode when the guard stopped something or refused to
launch. Usage and configuration errors raise before launch (the CLI exits 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.errors import ConfigError, UsageError
from trainguard.core.events import Event, EventKind, EventSink, JsonlSink, MultiSink
from trainguard.core.findings import Severity
from trainguard.core.identity import Identity
from trainguard.guard import _boot
from trainguard.guard.config import GuardConfig, load_guard_config
from trainguard.guard.report import RunSummary, merge

#: exit status when enforce mode stopped something (sysexits EX_NOPERM)
EXIT_GUARD_STOPPED = 77


@dataclass(frozen=True)
class RunOptions:
    """What ``trainguard run`` was asked to do."""

    command: tuple[str, ...]
    mode: str | None = None
    config_path: Path | None = None
    events: Path | None = None
    inputs: tuple[tuple[Path, Path], ...] = ()
    skip_env_check: bool = False
    env_snapshot: Path | None = None
    #: ledger path or URL: every process sends its events there as they happen
    ledger: str | None = None
    quiet_detections: bool = False


@dataclass
class Prepared:
    """A job ready to launch: its environment, run directory and pre-launch results."""

    config: GuardConfig
    run_id: str
    run_dir: Path
    events: Path
    env: dict[str, str]
    refuse: bool = False
    notes: list[str] = field(default_factory=list)
    #: the identity the launcher's events carry: the workers' (same job id, host, user)
    identity: Identity | None = None
    #: ``environment_digest`` of ``--env-snapshot``, when it could be read
    env_digest: str | None = None


def _run_id() -> str:
    return time.strftime("tg-%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write guard events under {path}: {exc.strerror or exc}",
                         remedy="choose a writable --events path") from None


def prepare(options: RunOptions, *, base_env: dict[str, str] | None = None) -> Prepared:
    """Validate the config, create the run directory and the bootstrap, run the pre-launch
    checks. Raises UsageError/ConfigError before anything runs."""
    if not options.command:
        raise UsageError("no command to run", remedy="trainguard run -- python train.py")
    if options.config_path is not None and not options.config_path.is_file():
        raise ConfigError(f"config file {options.config_path} does not exist")
    config = load_guard_config(options.config_path, mode=options.mode)
    from trainguard.guard import monitor_config

    monitor_config(config)  # a bad [guard.monitors] table is a ConfigError now, not mid-run
    env = dict(os.environ if base_env is None else base_env)
    run_id = env.get("TRAINGUARD_JOB_ID") or _run_id()
    if options.events is not None:
        events = options.events.absolute()
        if events.is_dir():
            raise UsageError(f"--events {events} is a directory; give a .jsonl file path")
        run_dir = events.parent / f"{events.name}.d"
    else:
        run_dir = (Path.cwd() / ".trainguard" / "runs" / run_id).absolute()
        events = run_dir / "events.jsonl"
    _writable_dir(events.parent)
    _writable_dir(run_dir / "proc")
    for stale in (run_dir / "proc").glob("*.jsonl"):
        stale.unlink()  # a re-used --events path: this run's record only
    bootstrap = run_dir / "bootstrap"
    bootstrap.mkdir(parents=True, exist_ok=True)
    (bootstrap / "sitecustomize.py").write_text(_boot.SITECUSTOMIZE, encoding="utf-8")
    import trainguard

    pkg_parent = str(Path(trainguard.__file__).resolve().parent.parent)
    old_pp = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(bootstrap), *([old_pp] if old_pp else [])])
    env.update({
        _boot.ENV_ACTIVE: "1", _boot.ENV_MODE: config.mode, _boot.ENV_RUN_DIR: str(run_dir),
        "TRAINGUARD_JOB_ID": run_id, "TRAINGUARD_IMPORT_PATH": pkg_parent,
    })
    if options.quiet_detections:
        env[_boot.ENV_NO_STDERR] = "1"
    if options.ledger:
        ledger = options.ledger
        if "://" not in ledger:
            ledger = str(Path(ledger).absolute())  # the job may change directory
        env[_boot.ENV_LEDGER] = ledger
    from trainguard.core.config import find_config

    cfg_path = options.config_path or find_config()
    if cfg_path is not None:
        env[_boot.ENV_CONFIG] = str(Path(cfg_path).absolute())
    prepared = Prepared(config, run_id, run_dir, events, env)
    if options.env_snapshot is not None:
        prepared.env_digest = _snapshot_digest(prepared, options.env_snapshot)
    # The launcher's own events carry the job id (and host, user) the workers will have.
    prepared.identity = Identity.current(env=env)
    clean_env = _pre_launch(prepared, options, Path(cfg_path) if cfg_path else None)
    if prepared.env_digest is not None and clean_env:
        # every worker's Identity.env_digest (core/identity.py): only for an environment
        # that matched the snapshot
        env["TRAINGUARD_ENV_DIGEST"] = prepared.env_digest
        prepared.identity = prepared.identity.with_(env_digest=prepared.env_digest)
    return prepared


def _snapshot_digest(prepared: Prepared, snapshot: Path) -> str | None:
    try:
        from trainguard.envcheck.snapfile import load_snapshot

        snap, _raw = load_snapshot(snapshot)
    except Exception as exc:  # the env check reports an unreadable snapshot itself
        prepared.notes.append(f"cannot read the environment digest of {snapshot}: "
                              f"{type(exc).__name__}: {exc}")
        return None
    digest = getattr(snap, "environment_digest", None)
    return digest if isinstance(digest, str) and digest else None


def _event(prepared: Prepared, kind: str, subject: str, details: dict[str, Any],
           **kwargs: Any) -> Event:
    """An event of the launcher: the job's identity, ``details.run`` the run id."""
    return Event.now(kind, subject, {**details, "run": prepared.run_id},
                     identity=prepared.identity, **kwargs)


def _json_safe(value: Any, depth: int = 0) -> Any:
    """A TOML value as plain JSON (dates and times as strings; non-finite floats spelled)."""
    if depth > 16:
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in list(value.items())[:2000]}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value[:2000]]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _run_details(prepared: Prepared, options: RunOptions,
                 cfg_path: Path | None) -> dict[str, Any]:
    """``run.started`` details (docs/investigate.md, "Event details keys relied on")."""
    details: dict[str, Any] = {
        "command": [str(a)[:1000] for a in options.command[:50]],
        "mode": prepared.config.mode, "cwd": str(Path.cwd()),
        "git_commit": prepared.identity.git_commit if prepared.identity else None,
    }
    if cfg_path is not None:
        details["config_path"] = str(cfg_path.absolute())
        try:
            data = cfg_path.read_bytes()
            details["config_digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
            from trainguard.core.config import load_config

            details["config"] = {"guard": _json_safe(load_config(cfg_path).section("guard"))}
        except (OSError, ConfigError) as exc:
            prepared.notes.append(f"cannot record config {cfg_path}: {exc}")
    if prepared.env_digest is not None:
        details["env_digest"] = prepared.env_digest
        details["env_snapshot"] = str(options.env_snapshot)
    return details


def _launcher_sink(prepared: Prepared) -> MultiSink:
    sinks: list[EventSink] = [JsonlSink(prepared.run_dir / "proc" /
                                        f"launcher-{os.getpid()}.jsonl")]
    url = prepared.env.get(_boot.ENV_LEDGER)
    if url:
        from trainguard.guard import _ledger_sink_factory

        try:
            sinks.append(_ledger_sink_factory(url)())
        except Exception as exc:
            prepared.notes.append(f"ledger {url} unavailable: {type(exc).__name__}: {exc}")
    return MultiSink(sinks)


def _pre_launch(prepared: Prepared, options: RunOptions, cfg_path: Path | None) -> bool:
    """Record run.started, check the environment, verify the inputs; True when the
    environment check ran and was clean."""
    sink = _launcher_sink(prepared)

    def emit(event: Event) -> None:
        # the launcher's identity and the run id on every pre-launch event
        sink.emit(Event(event.kind, event.subject, {**event.details, "run": prepared.run_id},
                        prepared.identity, event.time, event.severity, event.rule_id))

    clean = False
    try:
        sink.emit(_event(prepared, EventKind.RUN_STARTED, prepared.run_id,
                         _run_details(prepared, options, cfg_path)))
        if options.skip_env_check:
            prepared.notes.append("environment check skipped (--skip-env-check)")
            emit(Event.now(EventKind.ENV_CHECK, "skipped", {"message": "--skip-env-check"}))
        else:
            clean = _env_check(prepared, emit, options.env_snapshot,
                               job_interpreter(options.command, prepared.env))
        for path, signature in options.inputs:
            _verify_input(prepared, emit, path, signature)
    finally:
        sink.close()
    return clean


def job_interpreter(command: Sequence[str], env: Mapping[str, str]) -> Path:
    """The Python interpreter the job will run: the command itself when it is a python, else the
    interpreter of its ``#!`` line (``torchrun``, ``accelerate``, console scripts), else the one
    running trainguard. Read from the file, never executed."""
    import shutil

    exe = shutil.which(command[0], path=env.get("PATH")) if command else None
    if exe is None:
        return Path(sys.executable)
    if Path(exe).name.startswith("python"):
        return Path(exe)
    try:
        with open(exe, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        return Path(sys.executable)
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        # "#!/usr/bin/env python3" or "#!/venv/bin/python"
        if words and Path(words[0]).name == "env" and len(words) > 1:
            found = shutil.which(words[1], path=env.get("PATH"))
            if found and Path(found).name.startswith("python"):
                return Path(found)
        elif words and Path(words[0]).name.startswith("python"):
            return Path(words[0])
    return Path(sys.executable)


def _env_check(prepared: Prepared, emit: Callable[[Event], None],
               snapshot: Path | None, python: Path | None = None) -> bool:
    """The environment check of ``trainguard.envcheck`` (issue 4): quick (size and ctime, no
    hashing) against ``--env-snapshot``, else RECORD verification, of the environment of the
    job's interpreter (``python``); a snapshot of another environment is a finding. Findings at
    medium or above are reported; nothing here stops the launch."""
    try:
        from trainguard import envcheck
    except ImportError:
        prepared.notes.append("environment check unavailable (trainguard.envcheck missing)")
        emit(Event.now(EventKind.ENV_CHECK, "unavailable", {"message": "env check unavailable"}))
        return False
    t0 = time.perf_counter()
    try:
        if snapshot is not None:
            result: Any = envcheck.verify(python, against=snapshot, quick=True)
            how = f"quick, against {snapshot}"
        else:
            result = envcheck.verify(python)
            how = f"RECORD files of the environment of {python or sys.executable}"
    except Exception as exc:
        prepared.notes.append(f"environment check failed to run: {type(exc).__name__}: {exc}")
        emit(Event.now(EventKind.ENV_CHECK, "error", {"message": f"{type(exc).__name__}: {exc}"},
                       severity=Severity.MEDIUM, rule_id="TG-GRD-017"))
        return False
    seconds = round(time.perf_counter() - t0, 3)
    findings = [f for f in getattr(result, "findings", []) or []
                if getattr(f, "severity", Severity.HIGH) >= Severity.MEDIUM]
    if findings:
        prepared.notes.append(f"environment check ({how}): {len(findings)} finding(s) at "
                              "medium or above; run `trainguard env verify` for details")
        emit(Event.now(EventKind.ENV_CHECK, "findings",
                       {"message": f"{len(findings)} finding(s) ({how})", "seconds": seconds,
                        "findings": [f"{getattr(f, 'rule_id', '?')} "
                                     f"{getattr(getattr(f, 'location', None), 'path', '')}"[:200]
                                     for f in findings[:50]]},
                       severity=Severity.MEDIUM, rule_id="TG-GRD-017"))
        return False
    prepared.notes.append(f"environment check ({how}): clean in {seconds} s")
    emit(Event.now(EventKind.ENV_VERIFIED, "quick" if snapshot else "record",
                   {"message": "clean", "seconds": seconds}))
    return True


def _verify_input(prepared: Prepared, emit: Callable[[Event], None], path: Path,
                  signature: Path) -> None:
    """Verify a declared input. The event's subject is the digest of what was checked when it
    is known (a file's ``sha256``; a directory's OMS v1.0 root digest once it verified, with
    ``file_digests``), else the absolute path; ``details.path`` is always the absolute path
    (docs/investigate.md: paths are compared, so all events must spell them alike)."""
    apath = path.absolute()
    file_hex = _digest_of_file(apath)
    details: dict[str, Any] = {"path": str(apath), "signature": str(signature.absolute())}
    why = None
    result: Any = None
    try:
        from trainguard.integrity.verify import verify
    except ImportError:
        why = "no signature verifier available (trainguard.integrity.verify)"
    else:
        try:
            result = verify(path, signature)
            if not getattr(result, "ok", False):
                why = f"does not verify: {getattr(result, 'changes', '')}"
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
    subject = file_hex
    if result is not None and file_hex is None and why is None:
        root = getattr(result, "root_digest", None)
        if isinstance(root, str) and root:
            subject = f"sha256:{root}"  # a directory: the signed manifest's root digest
            details["file_digests"] = _signed_file_digests(apath, signature)
    if subject is not None:
        details["digest"] = subject
    expected = _expected_digest(result)
    if expected is not None:
        details["expected"] = expected
    if why is None:
        prepared.notes.append(f"input {path}: verified")
        emit(Event.now(EventKind.ARTIFACT_VERIFIED, subject or str(apath), details))
        return
    refuse = prepared.config.enforce
    prepared.refuse = prepared.refuse or refuse
    prepared.notes.append(f"input {path}: NOT verified ({why})"
                          + ("; launch refused" if refuse else ""))
    emit(Event.now(EventKind.ARTIFACT_VERIFY_FAILED, subject or str(apath),
                   {**details, "message": f"{path}: {why}"[:2000],
                    "action": "blocked" if refuse else "recorded"},
                   severity=Severity.CRITICAL, rule_id="TG-GRD-016"))


def _digest_of_file(path: Path) -> str | None:
    """``sha256:<hex>`` of a regular file, None for a directory or an unreadable path."""
    try:
        if not path.is_file():
            return None
        from trainguard.integrity.hashing import file_digest

        return "sha256:" + file_digest(path).hex()
    except OSError:
        return None


def _expected_digest(result: Any) -> str | None:
    """The digest the signature expected for a one-file input that did not match."""
    for change in getattr(result, "changes", ()) or ():
        if isinstance(change, dict) and change.get("file") == "." and isinstance(
                change.get("expected"), str):
            return f"sha256:{change['expected']}"
    return None


#: per-file digests recorded for a verified directory input
MAX_FILE_DIGESTS = 10_000


def _signed_file_digests(model: Path, signature: Path) -> dict[str, str]:
    """``{relative path: "sha256:<hex>"}`` of a files-method sha256 signature (read after it
    verified, so these are the bytes on disk); empty for other methods."""
    try:
        from trainguard.integrity.bundle import Bundle
        from trainguard.integrity.manifest import Manifest

        manifest = Manifest.from_statement(Bundle.read(signature).statement())
    except Exception:
        return {}
    ser = manifest.serialization
    if ser.method != "files" or ser.hash_type != "sha256":
        return {}
    return {r.name: f"sha256:{r.digest.hex()}" for r in manifest.resources[:MAX_FILE_DIGESTS]}


def launch(prepared: Prepared, command: Sequence[str]) -> int:
    """Run the command with the prepared environment; its exit status (128+N for signal N)."""
    try:
        proc = subprocess.Popen(list(command), env=prepared.env)  # noqa: S603 - the user's job
    except OSError as exc:
        raise UsageError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
    forwarded: dict[int, Any] = {}

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(OSError):
            proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        # ValueError: not the main thread (an embedding calling run() from a thread)
        with contextlib.suppress(ValueError):
            forwarded[sig] = signal.signal(sig, forward)
    try:
        rc = proc.wait()
    finally:
        for signum, old in forwarded.items():
            signal.signal(signum, old)
    return 128 - rc if rc < 0 else rc


def finish(prepared: Prepared, child_exit: int | None) -> RunSummary:
    """Merge the event files, write ``run.finished``, summarise and choose the exit status."""
    sink = _launcher_sink(prepared)
    try:
        sink.emit(_event(prepared, EventKind.RUN_FINISHED, prepared.run_id,
                         {"exit": child_exit, "launched": child_exit is not None,
                          "status": "ok" if child_exit == 0 else "failed"}))
    finally:
        sink.close()
    if sink.errors:
        prepared.notes.append(f"launcher events: {sink.errors[0]}")
    summary = merge(prepared.run_dir / "proc", prepared.events, prepared.config.mode)
    summary.pre_launch = list(prepared.notes)
    summary.child_exit = child_exit
    stopped = prepared.refuse or (prepared.config.enforce and summary.blocked > 0)
    if stopped:
        summary.exit_code = EXIT_GUARD_STOPPED
    else:
        summary.exit_code = child_exit if child_exit is not None else EXIT_GUARD_STOPPED
    return summary


def run(options: RunOptions) -> RunSummary:
    """Prepare, launch (unless enforce mode refused) and report; see the module docstring."""
    prepared = prepare(options)
    child_exit = None if prepared.refuse else launch(prepared, options.command)
    return finish(prepared, child_exit)
