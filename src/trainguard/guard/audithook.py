"""PEP 578 audit hook: what the process does, attributed to the code that did it.

``sys.addaudithook`` sees every audit event of the interpreter (importing torch raises ~17-29k).
The hook looks the event name up in one dict and returns at once for all others, so the cost of
an uninteresting event is one Python call and a dict miss. For the events kept:

=======================  =====================================================================
event (PEP 578 name)     rule
=======================  =====================================================================
compile, exec            source not from a file, compiled by project or dynamic code -> GRD-003
                         (stdlib/installed callers such as namedtuple, dataclasses, typing,
                         ast.literal_eval and torch's code generators compile '<string>' code
                         legitimately and are not flagged, also during a load: a pickle reaches
                         exec/eval only by importing them, which the load gate refuses)
subprocess.Popen,        program not in ``allow_exec`` started by project/dynamic code ->
os.system, os.exec,      GRD-004; from installed/stdlib code: recorded without severity
os.posix_spawn, os.spawn
os.kill, os.killpg,      a real signal (not 0) to another process or to itself, from project or
signal.pthread_kill      dynamic code -> GRD-005 (signals to its own children are recorded only)
socket.connect/bind/     address outside loopback, unix sockets and ``allow_connect`` -> GRD-006
sendto
open (write modes),      into sys.prefix / site-packages -> GRD-007 (the import system's own
os.rename, os.remove,    ``__pycache__`` writes excepted); into ``protected_paths`` outside
os.symlink, os.link,     ``output_dirs`` -> GRD-008; any write during a load -> GRD-002
os.truncate, os.chmod,
os.rmdir, os.mkdir,
shutil.rmtree
ctypes.dlopen            from project/dynamic code or from outside the environment -> GRD-009
pickle.find_class        the load gate (:mod:`trainguard.guard.loaders`)
object.__setattr__       ``__code__`` of a framework function replaced in place -> GRD-014
=======================  =====================================================================

Audit hooks cannot be removed (PEP 578), so the hook checks ``runtime.active`` and returns when
the guard is closed. The guard's own writes are skipped through a thread-local busy flag.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from trainguard.core.findings import Severity
from trainguard.guard import frames
from trainguard.guard.frames import DYNAMIC, INSTALLED, PROJECT, STDLIB, CodeLocation
from trainguard.guard.runtime import GuardRuntime, GuardStopped

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
#: modules whose functions' ``__code__`` must never be swapped
_CRITICAL_MODULES = ("torch", "numpy", "random", "transformers", "lightning",
                     "pytorch_lightning", "accelerate", "deepspeed", "megatron", "apex")


def _as_path(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and value:
        return os.path.abspath(value)
    return None


def _under(path: str, dirs: tuple[str, ...]) -> bool:
    return any(path == d.rstrip(os.sep) or path.startswith(d) for d in dirs)


def _bytecode_cache(path: str) -> bool:
    """A ``__pycache__`` directory, a ``.pyc`` in one, or importlib's temporary
    ``name.pyc.<id>`` file that ``_write_atomic`` renames into place."""
    parent, base = os.path.split(path)
    if base == "__pycache__":
        return True
    return os.path.basename(parent) == "__pycache__" and ".pyc" in base


def _is_child(pid: int) -> bool:
    """Whether ``pid`` is a child of this process (Linux /proc; False elsewhere)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stat = fh.read().rsplit(b")", 1)[1].split()
        return int(stat[1]) == os.getpid()
    except (OSError, ValueError, IndexError):
        return False


class AuditHook:
    """The audit hook of one process; ``install()`` adds it (once: hooks are permanent)."""

    def __init__(self, runtime: GuardRuntime) -> None:
        self.rt = runtime
        cfg = runtime.config
        self.env_dirs = frames.environment_dirs()
        self.protected = tuple(str(p).rstrip(os.sep) + os.sep for p in cfg.protected_paths)
        self.outputs = tuple(str(p).rstrip(os.sep) + os.sep for p in cfg.output_dirs)
        self.allow_exec = frozenset(cfg.allow_exec)
        self._allow_nets: list[tuple[Any, int | None]] = []
        self._allow_hosts: set[tuple[str, int | None]] = set()
        for entry in cfg.allow_connect:
            host, port = entry, None
            if entry.count(":") == 1:
                host, p = entry.rsplit(":", 1)
                port = int(p)
            try:
                self._allow_nets.append((ipaddress.ip_network(host, strict=False), port))
            except ValueError:
                self._allow_hosts.add((host.lower(), port))
        self.counts: dict[str, int] = {}
        #: set by the load gate (loaders.py); None while it is not installed
        self.find_class: Callable[[str, str], None] | None = None
        h: dict[str, Callable[[tuple[Any, ...]], None]] = {
            "compile": self._compile, "exec": self._exec,
            "subprocess.Popen": self._popen, "os.system": self._system, "os.exec": self._osexec,
            "os.posix_spawn": self._osexec, "os.spawn": self._spawn,
            "os.kill": self._kill, "os.killpg": self._kill, "signal.pthread_kill": self._tkill,
            "socket.connect": self._connect, "socket.bind": self._connect,
            "socket.sendto": self._sendto,
            "open": self._open, "os.rename": self._two_paths, "os.link": self._two_paths,
            "os.symlink": self._two_paths, "os.remove": self._one_path,
            "os.rmdir": self._one_path, "os.truncate": self._one_path,
            "os.chmod": self._one_path, "os.chown": self._one_path, "os.mkdir": self._mkdir,
            "shutil.rmtree": self._one_path,
            "ctypes.dlopen": self._dlopen, "pickle.find_class": self._find_class,
            "object.__setattr__": self._setattr,
        }
        self.handlers = h

    # ------------------------------------------------------------------ the hook
    def install(self) -> None:
        handlers = self.handlers
        rt = self.rt
        local = rt.local

        def trainguard_audit_hook(event: str, args: tuple[Any, ...]) -> None:
            handler = handlers.get(event)
            if handler is None or not rt.active:
                return
            local = rt.local  # replaced after fork
            if event == "open" and len(args) > 1 and args[1].__class__ is str and not (
                    "w" in args[1] or "a" in args[1] or "x" in args[1] or "+" in args[1]):
                # the most frequent kept event: a read. Only remember the file (it names a
                # bare pickle.Unpickler(f).load()); made absolute if it is ever used
                local.last_read = args[0]
                return
            if getattr(local, "busy", False):
                return
            local.busy = True
            try:
                handler(args)
            except GuardStopped:
                raise
            except Exception as exc:
                rt.error(f"audit:{event}", exc)
            finally:
                local.busy = False

        del local
        sys.addaudithook(trainguard_audit_hook)

    # ------------------------------------------------------------------ helpers
    def _where(self) -> tuple[CodeLocation, CodeLocation, FrameType | None]:
        # attribution skips trainguard's own frames (this helper, the handler, the hook, the
        # loader wrappers), so the walk starts right here
        frame = sys._getframe(1)
        culprit, immediate = frames.attribute(frame)
        return culprit, immediate, frame

    def _load(self) -> Any:
        from trainguard.guard.loaders import current_load

        return current_load()

    def _report(self, rule_id: str, subject: str, message: str,  # noqa: PLR0917
                culprit: CodeLocation, frame: FrameType | None, severity: Severity | None = None,
                **details: Any) -> None:
        load = self._load()
        if load is not None and rule_id not in ("TG-GRD-001", "TG-GRD-013"):
            # anything of this kind while a file is being loaded is the file's payload
            details["loading"] = load.path
            details["loader"] = load.loader
            details["load_called_from"] = load.caller.to_dict()
            message = f"{message} while loading {load.path}"
            rule_id, severity = "TG-GRD-002", None
        details["stack"] = frames.stack_summary(frame)
        self.rt.detect(rule_id, subject, message, location=culprit, severity=severity,
                       details=details)

    def _record(self, subject: str, what: str, culprit: CodeLocation, **details: Any) -> None:
        """A legitimate-looking action worth keeping in the record (no severity)."""
        self.counts[what] = self.counts.get(what, 0) + 1
        if self.counts[what] > self.rt.config.max_repeats * 5:
            return
        self.rt.emit("guard.audit", subject, {"what": what, "location": culprit.to_dict(),
                                              **details})

    # ------------------------------------------------------------------ code
    def _compile(self, args: tuple[Any, ...]) -> None:
        filename = args[1] if len(args) > 1 else None
        if isinstance(filename, bytes):
            filename = os.fsdecode(filename)
        # code compiled from a real file is an import (also during a load: the global being
        # imported has passed the load gate already)
        if isinstance(filename, str) and not (filename.startswith("<")
                                              and not filename.startswith("<frozen")):
            return
        self._dynamic_code(filename, "compile")

    def _exec(self, args: tuple[Any, ...]) -> None:
        code = args[0] if args else None
        filename = getattr(code, "co_filename", None)
        if not isinstance(filename, str) or not filename.startswith("<") \
                or filename.startswith("<frozen"):
            return
        self._dynamic_code(filename, "exec")

    def _dynamic_code(self, filename: Any, what: str) -> None:
        _culprit, immediate, frame = self._where()
        if immediate is frames.UNKNOWN:
            return  # no Python frame: the interpreter compiling ``-c`` code or stdin itself
        if immediate.kind not in (PROJECT, DYNAMIC):
            # stdlib and installed packages compile '<string>' code legitimately, also while
            # loading (typing.ForwardRef, ast.literal_eval of a .npy header). A payload that
            # reaches exec/eval/compile from a pickle imports them first: the load gate's
            # find_class check (TG-GRD-001) sees that.
            return
        if what == "exec":
            last = getattr(self.rt.local, "last_compile", None)
            if last == (immediate.file, immediate.line):
                return  # exec(string): already reported by its compile event
        if what == "compile":
            self.rt.local.last_compile = (immediate.file, immediate.line)
        sev = Severity.HIGH if immediate.kind == DYNAMIC else Severity.MEDIUM
        self._report("TG-GRD-003", str(filename), f"{what} of code not from a file "
                     f"({filename}) by {immediate.kind} code at {immediate}", immediate, frame,
                     severity=sev, event=what)

    # ------------------------------------------------------------------ processes
    def _program(self, program: Any, argv: Any) -> None:
        if isinstance(program, (bytes, os.PathLike)):
            program = os.fsdecode(program)
        shown = program if isinstance(program, str) else None
        args_list: list[str] = []
        if isinstance(argv, (list, tuple)):
            args_list = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a)
                         for a in argv[:20]]
        elif isinstance(argv, (str, bytes)):
            args_list = [os.fsdecode(argv)]
        if shown is None and args_list:
            shown = args_list[0]
        shown = shown or "?"
        name = shown.split()[0] if shown.strip() else shown
        allowed = name in self.allow_exec or os.path.basename(name) in self.allow_exec
        culprit, _immediate, frame = self._where()
        load = self._load()
        if allowed and load is None:
            self._record(shown, "exec-allowed", culprit, argv=args_list)
            return
        if load is None and culprit.kind in (INSTALLED, STDLIB):
            self._record(shown, "exec", culprit, argv=args_list)
            return
        sev = Severity.HIGH if culprit.kind == DYNAMIC else None
        self._report("TG-GRD-004", shown, f"started program {shown!r} from {culprit}",
                     culprit, frame, severity=sev, argv=args_list)

    def _popen(self, args: tuple[Any, ...]) -> None:
        self._program(args[0] if args else None, args[1] if len(args) > 1 else None)

    def _system(self, args: tuple[Any, ...]) -> None:
        command = args[0] if args else ""
        self._program(None, command)

    def _osexec(self, args: tuple[Any, ...]) -> None:
        self._program(args[0] if args else None, args[1] if len(args) > 1 else None)

    def _spawn(self, args: tuple[Any, ...]) -> None:
        self._program(args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else None)

    def _kill(self, args: tuple[Any, ...]) -> None:
        pid, sig = ((*args, None, None))[:2]
        if sig == 0 or not isinstance(pid, int):
            return  # signal 0 only probes whether a process exists
        self._signal(pid, sig)

    def _tkill(self, args: tuple[Any, ...]) -> None:
        _tid, sig = ((*args, None, None))[:2]
        if sig == 0:
            return
        self._signal(os.getpid(), sig, thread=True)

    def _signal(self, pid: int, sig: Any, thread: bool = False) -> None:
        culprit, _immediate, frame = self._where()
        load = self._load()
        target = "self" if pid == os.getpid() else ("child" if _is_child(pid) else "other")
        if load is None and (culprit.kind in (INSTALLED, STDLIB) or target == "child"):
            # stopping one's own children is process management (Pool.terminate, launchers)
            self._record(f"pid:{pid}", "signal", culprit, signal=str(sig), target=target)
            return
        self._report("TG-GRD-005", f"pid:{pid}", f"signal {sig} sent to {target} process "
                     f"{pid}{' (thread)' if thread else ''} from {culprit}", culprit, frame,
                     signal=str(sig), target=target)

    # ------------------------------------------------------------------ network
    def _allowed_address(self, address: Any) -> bool:
        if not isinstance(address, tuple) or len(address) < 2:
            return True  # unix sockets (str/bytes paths), netlink: local
        host, port = address[0], address[1]
        if not isinstance(host, str):
            return True
        if host in ("", "localhost") or host.lower().endswith(".localhost"):
            return True
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return (host.lower(), None) in self._allow_hosts or (
                host.lower(), port) in self._allow_hosts
        if ip.is_loopback:
            return True
        return any(ip in net and (p is None or p == port) for net, p in self._allow_nets)

    def _connect(self, args: tuple[Any, ...]) -> None:
        address = args[1] if len(args) > 1 else None
        if self._allowed_address(address):
            return
        culprit, _immediate, frame = self._where()
        shown = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        sev = None if culprit.kind in (PROJECT, DYNAMIC) else Severity.LOW
        if culprit.kind == DYNAMIC:
            sev = Severity.HIGH
        self._report("TG-GRD-006", shown, f"network connection to {shown} from {culprit}",
                     culprit, frame, severity=sev)

    def _sendto(self, args: tuple[Any, ...]) -> None:
        self._connect((args[0], args[1]) if len(args) > 1 else args)

    # ------------------------------------------------------------------ files
    def _open(self, args: tuple[Any, ...]) -> None:
        path, mode, flags = ((*args, None, None, None))[:3]
        if isinstance(mode, str):
            write = any(c in mode for c in "wax+")
        elif isinstance(flags, int):
            write = bool(flags & _WRITE_FLAGS)
        else:
            write = False
        if not write:
            self.rt.local.last_read = path  # names the file for pickle.Unpickler(f) loads
            return
        self._write(_as_path(path), "open")

    def _one_path(self, args: tuple[Any, ...]) -> None:
        self._write(_as_path(args[0]) if args else None, "modify")

    def _mkdir(self, args: tuple[Any, ...]) -> None:
        # creating a directory destroys nothing: only the environment is checked (persistence)
        path = _as_path(args[0]) if args else None
        if path is not None and _under(path, self.env_dirs):
            self._write(path, "mkdir")

    def _two_paths(self, args: tuple[Any, ...]) -> None:
        if len(args) > 1:
            self._write(_as_path(args[1]), "modify")
            self._write(_as_path(args[0]), "modify", source_only=True)

    def _write(self, path: str | None, what: str, source_only: bool = False) -> None:
        if path is None:
            return
        in_env = _under(path, self.env_dirs)
        protected = (bool(self.protected) and _under(path, self.protected)
                     and not _under(path, self.outputs))
        load = self._load()
        if not (in_env or protected or load is not None):
            return
        if source_only and not in_env:
            return
        culprit, immediate, frame = self._where()
        if in_env and _bytecode_cache(path) and (
                immediate.file.startswith("<frozen importlib") or immediate.kind == STDLIB):
            return  # the import system (or compileall) caching bytecode
        if in_env:
            self._report("TG-GRD-007", path, f"{what} of {path} inside the Python environment "
                         f"from {culprit}", culprit, frame)
        elif protected:
            self._report("TG-GRD-008", path, f"{what} of protected path {path} from {culprit}",
                         culprit, frame)
        else:
            self._report("TG-GRD-002", path, f"{what} of {path}", culprit, frame)

    def wrap_save(self, torch: Any) -> None:
        """``torch.save`` writes through C++ (no ``open`` audit event): check its path here."""
        original = getattr(torch, "save", None)
        if original is None or getattr(original, "__trainguard_wrapper__", False):
            return
        hook = self

        @functools.wraps(original)
        def trainguard_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
            rt = hook.rt
            if rt.active and isinstance(f, (str, bytes, os.PathLike)) and not rt.busy():
                rt.local.busy = True
                try:
                    hook._write(_as_path(f), "torch.save")
                except GuardStopped:
                    raise
                except Exception as exc:
                    rt.error("torch.save", exc)
                finally:
                    rt.local.busy = False
            return original(obj, f, *args, **kwargs)

        trainguard_save.__trainguard_wrapper__ = True  # type: ignore[attr-defined]
        torch.save = trainguard_save

    # ------------------------------------------------------------------ native code
    def _dlopen(self, args: tuple[Any, ...]) -> None:
        name = args[0] if args else None
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        if not isinstance(name, str):
            return
        outside = os.path.isabs(name) and not _under(os.path.abspath(name), self.env_dirs) \
            and not name.startswith(("/lib", "/usr/lib", "/lib64", "/usr/lib64"))
        culprit, _immediate, frame = self._where()
        if self._load() is None and not outside and culprit.kind in (INSTALLED, STDLIB):
            return
        sev = Severity.HIGH if outside or culprit.kind == DYNAMIC else Severity.MEDIUM
        self._report("TG-GRD-009", name, f"native library {name} loaded from {culprit}",
                     culprit, frame, severity=sev)

    # ------------------------------------------------------------------ in-place code swap
    def _setattr(self, args: tuple[Any, ...]) -> None:
        if len(args) < 2 or args[1] != "__code__":
            return
        target = args[0]
        module = getattr(target, "__module__", None) or ""
        if not isinstance(module, str) or module.split(".")[0] not in _CRITICAL_MODULES:
            return
        culprit, _immediate, frame = self._where()
        name = f"{module}.{getattr(target, '__qualname__', '?')}"
        new = args[2] if len(args) > 2 else None
        src = getattr(new, "co_filename", "?"), getattr(new, "co_firstlineno", 0)
        self._report("TG-GRD-014", name, f"__code__ of {name} replaced with code from "
                     f"{src[0]}:{src[1]} by {culprit}", culprit, frame,
                     new_code=f"{src[0]}:{src[1]}")

    # ------------------------------------------------------------------ load gate
    def _find_class(self, args: tuple[Any, ...]) -> None:
        if self.find_class is not None and len(args) >= 2:
            self.find_class(str(args[0]), str(args[1]))
