"""The load gate: every unpickling resolves its globals through the scan policy.

CPython raises the ``pickle.find_class`` audit event (PEP 578) from both the C unpickler
(``_pickle.Unpickler.find_class``) and the Python one (``pickle._Unpickler.find_class``) before
a global is imported. ``torch.load(weights_only=False)`` (its ``UnpicklerWrapper`` calls
``super().find_class``), ``numpy.load(allow_pickle=True)`` (``pickle.load``) and ``joblib.load``
(``NumpyUnpickler``, a ``pickle._Unpickler``) all pass through it. The audit hook hands the
(module, name) pair here; the decision is :class:`trainguard.scan.policy.Policy`'s, the same
allow-list as ``trainguard scan`` (never a copy of it). A global passes when the policy allows it
for some use (the runtime sees the import, not yet whether it will be called or constructed:
that distinction is the static scan's). In enforce mode a disallowed global raises
:class:`LoadRefused` out of the unpickler, before the REDUCE that would call it: the payload
never runs. In monitor mode it is recorded and the load goes on.

The file being loaded is named from a context variable set by thin wrappers around
``torch.load``, ``numpy.load``, ``joblib.load`` and ``pickle.load``; an unpickling outside them
(``pickle.Unpickler(f).load()``) is named by the last file this thread opened for reading.
Unpickling by multiprocessing, concurrent.futures, torch.multiprocessing and torch.distributed
(the job's own processes talking to each other) is not gated.

Verify-before-load: a load of a file under a ``[guard] signed`` artifact reads the bytes once,
verifies their digest against the signature (``trainguard.integrity.verify.verify(...,
files=[rel], digests={rel: digest})``) and hands the loader those same bytes, so the file cannot
change between check and use.

Every load of a file through a wrapper is recorded as ``artifact.loaded {path, digest,
loader}`` (docs/investigate.md): the verified digest, else the file hashed once per unchanged
file, at most :data:`MAX_RECORDED_LOADS` files per process.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainguard.core.events import EventKind
from trainguard.guard import frames
from trainguard.guard.frames import CodeLocation
from trainguard.guard.runtime import GuardRuntime, GuardStopped

#: callers whose unpickling is the job's own inter-process traffic, not a file
IPC_MODULES = ("multiprocessing.", "concurrent.futures", "torch.multiprocessing",
               "torch.distributed", "multiprocess.")
#: distinct files hashed per process for artifact.loaded (verified loads are always recorded)
MAX_RECORDED_LOADS = 256


class LoadRefused(GuardStopped):
    """Enforce mode refused to load a file (a disallowed global or a failed verification).

    Also a :class:`pickle.UnpicklingError` for callers that handle bad pickles."""


def _make_refused() -> type[LoadRefused]:
    import pickle

    class _Refused(LoadRefused, pickle.UnpicklingError):
        pass

    _Refused.__name__ = _Refused.__qualname__ = "LoadRefused"
    return _Refused


@dataclass(frozen=True)
class LoadContext:
    """A load in progress: which file, through which loader, called from where."""

    path: str
    loader: str
    caller: CodeLocation


_LOAD: contextvars.ContextVar[LoadContext | None] = contextvars.ContextVar(
    "trainguard_load", default=None)


def current_load() -> LoadContext | None:
    """The load in progress in this thread/task, if any."""
    return _LOAD.get()


def _describe_source(obj: Any) -> str:
    if isinstance(obj, (str, bytes, os.PathLike)):
        return os.path.abspath(os.fsdecode(obj))
    name = getattr(obj, "name", None)
    if isinstance(name, (str, bytes)):
        return os.path.abspath(os.fsdecode(name))
    if isinstance(obj, (io.BytesIO, bytes, bytearray, memoryview)):
        return "<bytes>"
    return f"<{type(obj).__name__}>"


class LoadGate:
    """Decides pickle globals and wraps the loaders of one process."""

    def __init__(self, runtime: GuardRuntime) -> None:
        self.rt = runtime
        self._policy: Any = None  # imported on the first unpickling (start-up time)
        self._decided: dict[tuple[str, str], tuple[bool, str, str]] = {}
        self.refused_type = _make_refused()
        self.wrapped: dict[str, Any] = {}
        #: (path, digest) of the loads recorded as artifact.loaded; loads past the cap
        self._recorded: set[tuple[str, str]] = set()
        self.unrecorded = 0
        #: path -> digest verified by verify-before-load (last one)
        self._verified: dict[str, str] = {}

    # ------------------------------------------------------------------ decisions
    @property
    def policy(self) -> Any:
        """The scan policy (``trainguard.scan.policy.Policy`` with ``[scan.allow]``)."""
        if self._policy is None:
            from trainguard.scan.policy import Policy

            self._policy = Policy(extra_allow=self.rt.config.allow_globals)
        return self._policy

    def decide(self, module: str, name: str) -> tuple[bool, str, str]:
        """(allowed, policy rule id, reason) for one global, cached."""
        key = (module, name)
        hit = self._decided.get(key)
        if hit is not None:
            return hit
        from trainguard.scan.policy import CALL, CONSTRUCT, IMPORT

        first = None
        allowed = False
        for uses in ((CALL,), (IMPORT, CONSTRUCT), (IMPORT,)):
            verdict = self.policy.classify(module, name, uses)
            if verdict.rule_id is None:
                allowed = True
                break
            first = first or verdict
        out = (True, "", "allow-listed") if allowed or first is None else (
            False, first.rule_id or "", first.reason)
        if len(self._decided) < 50_000:
            self._decided[key] = out
        return out

    def on_find_class(self, module: str, name: str) -> None:
        """Called by the audit hook for every ``pickle.find_class`` event."""
        allowed, policy_rule, reason = self.decide(module, name)
        if allowed:
            return
        frame = sys._getframe(1)
        load = _LOAD.get()
        if (load is None or load.loader == "pickle.load") and frames.stack_has_module(
                frame, IPC_MODULES):
            return  # the job's own processes talking (spawn start-up, queues, pools)
        if load is None:
            last = getattr(self.rt.local, "last_read", None)
            path = _describe_source(last) if isinstance(last, (str, bytes, os.PathLike)) \
                else "<unknown>"
            loader = "pickle"
            culprit, _imm = frames.attribute(frame)
            guessed = True
        else:
            path, loader, culprit, guessed = load.path, load.loader, load.caller, False
        full = f"{module}.{name}"
        try:
            self.rt.detect(
                "TG-GRD-001", path,
                f"{loader} of {path} imports {full}: {reason} ({policy_rule})",
                location=culprit, kind=EventKind.GUARD_LOAD, force_block=True,
                details={"global": full, "policy_rule": policy_rule, "loader": loader,
                         "file": path, "file_guessed": guessed,
                         "stack": frames.stack_summary(frame)})
        except GuardStopped as exc:
            raise self.refused_type(str(exc), rule_id="TG-GRD-001") from None

    # ------------------------------------------------------------------ wrappers
    def wrap(self, owner: Any, attr: str, loader: str) -> None:
        """Replace ``owner.attr`` (a load function) by a wrapper that names the file."""
        original = getattr(owner, attr, None)
        if original is None or getattr(original, "__trainguard_wrapper__", False):
            return
        gate = self

        @functools.wraps(original)
        def trainguard_load(*args: Any, **kwargs: Any) -> Any:
            if not gate.rt.active or _LOAD.get() is not None:
                # numpy.load and joblib.load call pickle.load: the outer load names the file
                return original(*args, **kwargs)
            source = args[0] if args else kwargs.get("f", kwargs.get("file", kwargs.get(
                "filename")))
            path = _describe_source(source)
            caller, _imm = frames.attribute(sys._getframe(1))
            checked = gate.rt.protect("verify-before-load", gate.check_before_load, path, args,
                                      loader)
            new_args, verified = checked if checked is not None else (None, None)
            args = new_args or args
            gate.rt.protect("record-load", gate.record_load, source, path, loader, verified)
            token = _LOAD.set(LoadContext(path, loader, caller))
            try:
                return original(*args, **kwargs)
            finally:
                _LOAD.reset(token)

        trainguard_load.__trainguard_wrapper__ = True  # type: ignore[attr-defined]
        trainguard_load.__trainguard_wraps__ = original  # type: ignore[attr-defined]
        setattr(owner, attr, trainguard_load)
        self.wrapped[f"{getattr(owner, '__name__', owner)}.{attr}"] = trainguard_load

    def install_pickle(self) -> None:
        import pickle

        self.wrap(pickle, "load", "pickle.load")

    def install_torch(self, torch: Any) -> None:
        self.wrap(torch, "load", "torch.load")
        ser = sys.modules.get("torch.serialization")
        if ser is not None:
            self.wrap(ser, "load", "torch.load")

    def install_numpy(self, numpy: Any) -> None:
        self.wrap(numpy, "load", "numpy.load")

    def install_joblib(self, joblib: Any) -> None:
        self.wrap(joblib, "load", "joblib.load")
        npk = sys.modules.get("joblib.numpy_pickle")
        if npk is not None:
            self.wrap(npk, "load", "joblib.load")

    # ------------------------------------------------------------------ verify before load
    def _signed_for(self, path: str) -> Any:
        for art in self.rt.config.signed:
            root = str(art.path)
            if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                return art
        return None

    def verify_before_load(self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                           loader: str) -> tuple[Any, ...] | None:
        """Verify a signed file's bytes; return args with the file replaced by those bytes."""
        return self.check_before_load(path, args, loader)[0]

    def record_load(self, source: Any, path: str, loader: str, digest: str | None) -> None:
        """Record ``artifact.loaded {path, digest, loader}`` for a load of a file.

        Only files named by a path (or by an open file's name) are recorded: in-memory bytes
        have no file to name, and the job's own inter-process pickles never reach a file
        loader. The digest is the verified one when verify-before-load read the bytes, else
        the file is hashed here (memoised per unchanged file). Each (path, digest) is recorded
        once per process, and at most ``MAX_RECORDED_LOADS`` files are hashed: a data loader
        reading thousands of ``.npy`` files is not made to read each twice.
        """
        if digest is None:
            named = isinstance(source, (str, bytes, os.PathLike)) or isinstance(
                getattr(source, "name", None), (str, bytes))
            if not named or not os.path.isabs(path):
                return
            if len(self._recorded) >= MAX_RECORDED_LOADS:
                self.unrecorded += 1
                return
            digest = self.rt.file_digest(path)
            if digest is None:
                return
        if (path, digest) in self._recorded:
            return
        self._recorded.add((path, digest))
        self.rt.record_load(digest, path)
        self.rt.emit(EventKind.ARTIFACT_LOADED, digest,
                     {"path": path, "digest": digest, "loader": loader,
                      "verified": digest == self._verified.get(path)})

    def check_before_load(self, path: str, args: tuple[Any, ...],
                          loader: str) -> tuple[tuple[Any, ...] | None, str | None]:
        """Verify-before-load: (args with the file replaced by the verified bytes, or None;
        the verified ``sha256:<hex>`` digest, or None when the file is not under a signed
        artifact)."""
        art = self._signed_for(path) if self.rt.config.signed else None
        if art is None:
            return None, None
        with open(path, "rb") as fh:
            data = fh.read()
        digest = hashlib.sha256(data).digest()
        root = str(art.path)
        model_dir = root if os.path.isdir(root) else os.path.dirname(root)
        rel = os.path.relpath(path, model_dir).replace(os.sep, "/")
        ok, why = _verify(model_dir, str(art.signature), rel, digest)
        if not ok:
            caller, _imm = frames.attribute(sys._getframe(1))
            try:
                self.rt.detect("TG-GRD-013", path, f"{loader} of {path}: {why}",
                               location=caller, kind=EventKind.GUARD_LOAD, force_block=True,
                               details={"file": path, "signature": str(art.signature)})
            except GuardStopped as exc:
                raise self.refused_type(str(exc), rule_id="TG-GRD-013") from None
            return None, None
        hexed = f"sha256:{digest.hex()}"
        self._verified[path] = hexed
        self.rt.emit(EventKind.ARTIFACT_VERIFIED, hexed,
                     {"path": path, "digest": hexed, "signature": str(art.signature),
                      "loader": loader})
        if args:
            return (io.BytesIO(data), *args[1:]), hexed
        return None, hexed


def _verify(model_dir: str, signature: str, rel: str, digest: bytes) -> tuple[bool, str]:
    """Call the signature verifier (fail closed when it is missing or cannot decide)."""
    try:
        from trainguard.integrity.verify import verify
    except ImportError:
        return False, "no signature verifier available (trainguard.integrity.verify); " \
                      "refusing to trust the file"
    try:
        result = verify(model_dir, signature, files=[rel], digests={rel: digest})
    except Exception as exc:  # TamperError, PolicyError, VerificationError, unreadable bundle
        return False, f"verification failed: {type(exc).__name__}: {exc}"
    if not getattr(result, "ok", False):
        return False, f"verification failed: {getattr(result, 'changes', '')}"
    return True, "verified"


def wrapped_loader(func: Callable[..., Any]) -> Callable[..., Any] | None:
    """The original of a trainguard load wrapper (tests and tripwires), else None."""
    return getattr(func, "__trainguard_wraps__", None)
