"""Where did it come from: code locations for guard events.

A location is the first frame on the stack that is neither trainguard nor the standard library
(``os.system`` is called by the project, not by ``os``). Each file is classified once and
cached, because the audit hook asks on every event it keeps:

- ``project``: a file outside the interpreter and its environments (scripts, project modules)
- ``installed``: a file under a site-packages/dist-packages directory
- ``stdlib``: the standard library, frozen modules
- ``dynamic``: code that is not in a file (``exec``/``compile`` of a string: ``<string>``)
- ``trainguard``: this package
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from types import FrameType
from typing import Any

PROJECT, INSTALLED, STDLIB, DYNAMIC, TRAINGUARD = (
    "project", "installed", "stdlib", "dynamic", "trainguard")

_TG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _stdlib_dirs() -> tuple[str, ...]:
    dirs = set()
    for key in ("stdlib", "platstdlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            dirs.add(os.path.realpath(p) + os.sep)
            dirs.add(os.path.abspath(p) + os.sep)
    return tuple(dirs)


def environment_dirs() -> tuple[str, ...]:
    """Directories of the Python environment: prefixes and site-packages (abs and real)."""
    dirs: set[str] = set()
    for p in {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}:
        dirs.add(os.path.abspath(p))
        dirs.add(os.path.realpath(p))
    for entry in sys.path:
        if entry and ("site-packages" in entry or "dist-packages" in entry):
            dirs.add(os.path.abspath(entry))
            dirs.add(os.path.realpath(entry))
    try:
        import site

        for p in [*site.getsitepackages(), site.getusersitepackages()]:
            dirs.add(os.path.abspath(p))
            dirs.add(os.path.realpath(p))
    except Exception:  # noqa: S110 - a trimmed site module in some embedded interpreters
        pass
    return tuple(sorted(d.rstrip(os.sep) + os.sep for d in dirs if d and d != os.sep))


_STDLIB = _stdlib_dirs()
_KIND_CACHE: dict[str, str] = {}


def classify(filename: str) -> str:
    """The kind of code in ``filename`` (a code object's ``co_filename``)."""
    kind = _KIND_CACHE.get(filename)
    if kind is not None:
        return kind
    if filename.startswith("<frozen "):
        kind = STDLIB
    elif filename.startswith("<") or not filename:
        kind = DYNAMIC
    else:
        path = os.path.abspath(filename)
        if path.startswith(_TG_DIR):
            kind = TRAINGUARD
        elif "site-packages" in path or "dist-packages" in path:
            kind = INSTALLED
        elif path.startswith(_STDLIB):
            kind = STDLIB
        elif not os.path.exists(path):
            kind = DYNAMIC  # code claiming a file that is not there
        else:
            kind = PROJECT
    if len(_KIND_CACHE) < 100_000:
        _KIND_CACHE[filename] = kind
    return kind


@dataclass(frozen=True)
class CodeLocation:
    """A code location: file, line, function and what kind of code it is."""

    file: str
    line: int
    function: str
    kind: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function})"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "function": self.function,
                "kind": self.kind}


UNKNOWN = CodeLocation("<unknown>", 0, "?", DYNAMIC)


def _frame_kind(frame: FrameType) -> str:
    kind = classify(frame.f_code.co_filename)
    if kind == DYNAMIC and frame.f_back is None and frame.f_globals.get("__name__") == "__main__":
        # the bottom frame of ``python -c CODE`` (multiprocessing spawn children start so):
        # the command line is the job's own code, not code a payload made up
        return PROJECT
    return kind


def _loc(frame: FrameType, kind: str) -> CodeLocation:
    code = frame.f_code
    return CodeLocation(code.co_filename, frame.f_lineno,
                        getattr(code, "co_qualname", code.co_name), kind)


def attribute(frame: FrameType | None, *, max_depth: int = 200,
              prefer_project: bool = False) -> tuple[CodeLocation, CodeLocation]:
    """(culprit, immediate): the first frame outside trainguard and the stdlib, and the first
    frame outside trainguard. Either is :data:`UNKNOWN` when the stack has none.

    ``prefer_project``: the culprit is the first project or dynamic frame when the stack has
    one (a seed set through framework layers is the caller's), else as above."""
    immediate = culprit = None
    depth = 0
    while frame is not None and depth < max_depth:
        kind = _frame_kind(frame)
        if kind != TRAINGUARD:
            if immediate is None:
                immediate = _loc(frame, kind)
            if kind != STDLIB and culprit is None:
                culprit = _loc(frame, kind)
                if not prefer_project:
                    break
            if prefer_project and kind in (PROJECT, DYNAMIC):
                culprit = _loc(frame, kind)
                break
        frame = frame.f_back
        depth += 1
    return culprit or immediate or UNKNOWN, immediate or UNKNOWN


def stack_has_module(frame: FrameType | None, prefixes: tuple[str, ...],
                     max_depth: int = 60) -> bool:
    """True if a frame on the stack runs code of a module whose name starts with a prefix."""
    depth = 0
    while frame is not None and depth < max_depth:
        name = frame.f_globals.get("__name__", "")
        if isinstance(name, str) and name.startswith(prefixes):
            return True
        frame = frame.f_back
        depth += 1
    return False


def stack_summary(frame: FrameType | None, limit: int = 8) -> list[str]:
    """``file:line function`` for the innermost frames outside trainguard (event evidence)."""
    out: list[str] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        if classify(code.co_filename) != TRAINGUARD:
            out.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return out


def function_source(func: Any) -> CodeLocation | None:
    """Where a function (or the function behind a method, partial or wrapper) is defined."""
    seen = 0
    obj = func
    while seen < 10:
        seen += 1
        code = getattr(obj, "__code__", None)
        if code is not None:
            return CodeLocation(code.co_filename, code.co_firstlineno,
                                getattr(code, "co_qualname", code.co_name),
                                classify(code.co_filename))
        inner = getattr(obj, "__func__", None) or getattr(obj, "func", None)
        if inner is None:
            call = type(obj).__dict__.get("__call__")
            if call is not None and getattr(call, "__code__", None) is not None:
                inner = call
        if inner is None:
            return None
        obj = inner
    return None
