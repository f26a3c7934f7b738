"""Run a callback right after a module finishes importing (a PEP 451 meta path finder).

The tripwire baseline must be taken after torch's own import (torch reassigns attributes while
it imports) and before the next line of the importing code, where a payload would patch. A
finder placed first on ``sys.meta_path`` lets the regular finders find the module and wraps the
loader instance's ``exec_module`` so the callback runs when the module body has completed.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any


class PostImportHook(importlib.abc.MetaPathFinder):
    """Calls ``callbacks[name](module)`` once, right after ``name`` is imported."""

    def __init__(self, callbacks: dict[str, Callable[[ModuleType], None]],
                 on_error: Callable[[str, BaseException], None]) -> None:
        self.callbacks = dict(callbacks)
        self.on_error = on_error
        self._busy = threading.local()

    def install(self) -> None:
        """Put the finder first; modules already imported get their callback now."""
        for name in list(self.callbacks):
            module = sys.modules.get(name)
            if module is not None and getattr(module, "__spec__", None) is not None \
                    and not getattr(module.__spec__, "_initializing", False):
                self._fire(name, module)
        if self.callbacks and self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def _fire(self, name: str, module: ModuleType) -> None:
        callback = self.callbacks.pop(name, None)
        if callback is None:
            return
        try:
            callback(module)
        except Exception as exc:  # the import itself must succeed
            self.on_error(f"post-import:{name}", exc)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.callbacks or getattr(self._busy, fullname, False):
            return None
        setattr(self._busy, fullname, True)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            setattr(self._busy, fullname, False)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader: Any = spec.loader
        original = loader.exec_module
        hook = self

        def exec_module(module: ModuleType) -> None:
            try:
                original(module)
            finally:
                with contextlib.suppress(AttributeError):
                    del loader.exec_module  # back to the class's method
            hook._fire(fullname, module)

        try:
            loader.exec_module = exec_module
        except (AttributeError, TypeError):  # a loader with __slots__: no callback, no harm
            return spec
        return spec
