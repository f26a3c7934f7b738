"""Tripwires: training-critical callables must stay the code they were after import.

Audit hooks see no event when a class attribute is replaced (``AdamW.step = f``) or a seed is
set (FIELD-NOTES, "Runtime"), so the guard keeps, for each critical callable, its identity and a
digest of its code (bytecode, constants including nested code, names, qualified name, module,
source file), taken right after the framework's import finished, and checks them again every K
``guard.step()`` calls, at ``guard.checkpoint()`` and at exit. A change names the replacing
function's source file and line.

Two checks, because a payload may patch before the snapshot:

- **baseline**: identity and code digest equal to the snapshot;
- **origin**: the code comes from the owning package's own files (torch's step from torch/).

Legitimate replacements are recognised, not baselined blindly: torch wraps an optimizer class's
``step`` on first instantiation (``Optimizer._patch_step_function`` with ``profile_hook_step``,
marked ``hooked``), an LR scheduler wraps ``optimizer.step`` on the instance
(``_wrapped_by_lr_sched``) and importing ``torch._dynamo`` wraps ``torch.manual_seed`` with
``torch._disable_dynamo``. Both are unwrapped through ``__wrapped__`` only when the wrapper's
code is torch's own; ``Optimizer.profile_hook_step(evil)`` still unwraps to ``evil``.

Seed functions (``torch.manual_seed``, ``torch.cuda.manual_seed(_all)``, ``random.seed``,
``numpy.random.seed``) are wrapped: a call before the first ``guard.step()`` is recorded
(``guard.seed``, with the caller), a call after it is TG-GRD-012. The tripwire knows these
wrappers and checks them like the rest.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import CodeType
from typing import Any

from trainguard.core.events import EventKind
from trainguard.guard import frames
from trainguard.guard.runtime import GUARD_SEED, GuardRuntime, GuardStopped

_PROFILE_WRAPPER = "Optimizer.profile_hook_step.<locals>.wrapper"
_LR_WRAPPER = ".wrap_step.<locals>.wrapper"
#: torch._dynamo's import wraps torch.manual_seed (``torch._disable_dynamo``)
_DYNAMO_WRAPPER = "_disable_dynamo.<locals>.inner"
_TORCH_WRAPPERS = (_PROFILE_WRAPPER, _LR_WRAPPER, _DYNAMO_WRAPPER)
_HOOK_REGISTRIES = (
    ("torch.nn.modules.module", ("_global_forward_pre_hooks", "_global_forward_hooks",
                                 "_global_backward_pre_hooks", "_global_backward_hooks",
                                 "_global_buffer_registration_hooks",
                                 "_global_module_registration_hooks",
                                 "_global_parameter_registration_hooks")),
    ("torch.optim.optimizer", ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")),
)


def code_digest(code: CodeType, _depth: int = 0) -> str:
    """sha256 over a code object's bytecode, constants (nested code too), names and origin."""
    h = hashlib.sha256()
    h.update(code.co_code)
    h.update(getattr(code, "co_qualname", code.co_name).encode())
    h.update(code.co_filename.encode())
    h.update("\0".join(code.co_names).encode())
    h.update("\0".join(code.co_varnames).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType) and _depth < 20:
            h.update(code_digest(const, _depth + 1).encode())
        else:
            h.update(repr(const).encode("utf-8", "replace")[:4096])
    return h.hexdigest()


def _code_of(obj: Any) -> CodeType | None:
    code = getattr(obj, "__code__", None)
    if code is None:
        code = getattr(getattr(obj, "__func__", None), "__code__", None)
    return code if isinstance(code, CodeType) else None


def _is_torch_wrapper(obj: Any, qualname: str, torch_dir: str | None) -> bool:
    code = _code_of(obj)
    return (code is not None and torch_dir is not None
            and (getattr(code, "co_qualname", code.co_name) + "|").endswith(qualname + "|")
            and os.path.abspath(code.co_filename).startswith(torch_dir))


@dataclass(frozen=True)
class Snapshot:
    """What one critical callable was when the snapshot was taken."""

    name: str
    obj: Any
    code: CodeType | None
    digest: str
    origin_dir: str | None
    #: the attribute as found (a wrapper around ``obj``, or ``obj`` itself) and its code: the
    #: fast path of a check compares these three identities and nothing else
    raw: Any = None
    raw_code: CodeType | None = None


class Tripwires:
    """Snapshots and checks of training-critical callables in one process."""

    def __init__(self, runtime: GuardRuntime) -> None:
        self.rt = runtime
        self.baseline: dict[str, Snapshot] = {}
        self.hooks_seen: set[tuple[str, int]] = set()
        self.registries_seen: set[str] = set()
        self.seed_wrappers: dict[str, Any] = {}
        self._torch_dir: str | None = None
        self.checks = 0

    # ------------------------------------------------------------------ targets
    def _unwrap(self, obj: Any) -> Any:
        for _ in range(8):
            if any(obj is w for w in self.seed_wrappers.values()):
                # ours, recognised by identity (functools.wraps copies attributes, so a marker
                # attribute would also be found on whatever wraps or imitates it)
                return obj
            if any(_is_torch_wrapper(obj, q, self._torch_dir) for q in _TORCH_WRAPPERS):
                inner = getattr(obj, "__wrapped__", None)
                if inner is None:
                    return obj
                obj = inner
                continue
            return obj
        return obj

    def _targets(self) -> Iterator[tuple[str, Any, str | None]]:
        """(name, current object, directory its code must come from)."""
        torch = sys.modules.get("torch")
        if torch is not None and hasattr(torch, "optim"):
            tdir = self._torch_dir = os.path.dirname(os.path.abspath(str(torch.__file__))) + os.sep
            optim = torch.optim
            base = getattr(optim, "Optimizer", None)
            for cname in sorted(dir(optim)):
                cls = getattr(optim, cname, None)
                if isinstance(cls, type) and base is not None and issubclass(cls, base):
                    for meth in ("step", "zero_grad"):
                        yield f"torch.optim.{cname}.{meth}", getattr(cls, meth, None), tdir
            module = getattr(getattr(torch, "nn", None), "Module", None)
            if module is not None:
                for meth in ("__call__", "_call_impl", "_wrapped_call_impl", "load_state_dict",
                             "state_dict"):
                    yield f"torch.nn.Module.{meth}", getattr(module, meth, None), tdir
            yield "torch.Tensor.backward", getattr(torch.Tensor, "backward", None), tdir
            autograd = sys.modules.get("torch.autograd")
            if autograd is not None:
                yield "torch.autograd.backward", getattr(autograd, "backward", None), tdir
            clip = sys.modules.get("torch.nn.utils")
            if clip is not None:
                yield ("torch.nn.utils.clip_grad_norm_", getattr(clip, "clip_grad_norm_", None),
                       tdir)
            data = sys.modules.get("torch.utils.data")
            if data is not None:
                dl = getattr(data, "DataLoader", None)
                yield "torch.utils.data.DataLoader.__iter__", getattr(dl, "__iter__", None), tdir
            dlmod = sys.modules.get("torch.utils.data.dataloader")
            if dlmod is not None:
                it = getattr(dlmod, "_BaseDataLoaderIter", None)
                yield ("torch.utils.data.dataloader._BaseDataLoaderIter.__next__",
                       getattr(it, "__next__", None), tdir)
            dist = sys.modules.get("torch.distributed")
            if dist is not None:
                for fn in ("all_reduce", "broadcast", "all_gather"):
                    yield f"torch.distributed.{fn}", getattr(dist, fn, None), tdir
            yield "torch.manual_seed", getattr(torch, "manual_seed", None), None
            rnd = sys.modules.get("torch.random")
            if rnd is not None:
                yield "torch.random.manual_seed", getattr(rnd, "manual_seed", None), None
            cuda = sys.modules.get("torch.cuda")
            if cuda is not None:
                for fn in ("manual_seed", "manual_seed_all"):
                    yield f"torch.cuda.{fn}", getattr(cuda, fn, None), None
        rmod = sys.modules.get("random")
        if rmod is not None:
            yield "random.seed", getattr(rmod, "seed", None), None
            yield "random.Random.seed", getattr(rmod.Random, "seed", None), None
        np_random = sys.modules.get("numpy.random")
        if np_random is not None:
            yield "numpy.random.seed", getattr(np_random, "seed", None), None

    @staticmethod
    def _digest(obj: Any) -> tuple[CodeType | None, str]:
        code = _code_of(obj)
        if code is not None:
            return code, code_digest(code)
        text = f"{type(obj).__name__}:{getattr(obj, '__module__', '')}:" \
               f"{getattr(obj, '__qualname__', '')}:{id(getattr(obj, '__self__', None))}"
        return None, hashlib.sha256(text.encode()).hexdigest()

    # ------------------------------------------------------------------ snapshot and check
    def snapshot(self, where: str) -> None:
        """Take (or extend) the baseline: new targets are added, known ones left alone."""
        for name, obj, origin in self._targets():
            if obj is None or name in self.baseline:
                continue
            eff = self._unwrap(obj)
            code, digest = self._digest(eff)
            self.baseline[name] = Snapshot(name, eff, code, digest, origin, obj, _code_of(obj))
            self.rt.protect(f"tripwire-origin:{name}", self._check_origin, name, eff, origin,
                            where)
        self._snapshot_hooks(where, report=False)

    def _check_origin(self, name: str, eff: Any, origin: str | None, where: str) -> None:
        code = _code_of(eff)
        if origin is None or code is None:
            return
        if os.path.abspath(code.co_filename).startswith(origin):
            return
        src = frames.function_source(eff)
        self.rt.detect("TG-GRD-010", name,
                       f"{name} is code from {src} (outside {origin.rstrip(os.sep)}), "
                       f"found at {where}",
                       location=src or frames.UNKNOWN, kind=EventKind.GUARD_TRIPWIRE,
                       details={"check": "origin", "where": where,
                                "replacement": str(src) if src else None})

    def check(self, where: str) -> int:
        """Compare every target with the baseline; returns the number of changes found."""
        self.checks += 1
        changes = 0
        stop: GuardStopped | None = None
        for name, obj, origin in self._targets():
            snap = self.baseline.get(name)
            if obj is None:
                continue
            if snap is None:
                self.snapshot(where)
                continue
            if obj is snap.raw and _code_of(obj) is snap.raw_code and (
                    snap.code is None or _code_of(snap.obj) is snap.code):
                continue  # nothing moved (the common case: three identity checks)
            eff = self._unwrap(obj)
            if eff is snap.obj and _code_of(eff) is snap.code:
                # a legitimate wrapper appeared (torch's profile hook): watch the new shape
                self.baseline[name] = Snapshot(name, eff, snap.code, snap.digest, origin, obj,
                                               _code_of(obj))
                continue
            code, digest = self._digest(eff)
            if digest == snap.digest and code is not None:
                # same code, new object (re-created by a reload): keep watching the new one
                self.baseline[name] = Snapshot(name, eff, code, digest, origin, obj,
                                               _code_of(obj))
                continue
            changes += 1
            self.baseline[name] = Snapshot(name, eff, code, digest, origin, obj, _code_of(obj))
            src = frames.function_source(eff)
            old = frames.function_source(snap.obj)
            try:
                self.rt.detect(
                    "TG-GRD-010", name,
                    f"{name} was replaced by {src or repr(eff)[:80]} (was {old}), found at "
                    f"{where}",
                    location=src or frames.UNKNOWN, kind=EventKind.GUARD_TRIPWIRE,
                    details={"check": "baseline", "where": where,
                             "replacement": str(src) if src else repr(eff)[:200],
                             "original": str(old) if old else None,
                             "old_digest": snap.digest, "new_digest": digest})
            except GuardStopped as exc:
                stop = stop or exc
        try:
            changes += self._snapshot_hooks(where, report=True)
        except GuardStopped as exc:
            stop = stop or exc
        if stop is not None:
            raise stop
        return changes

    def _registries(self) -> Iterator[tuple[str, dict[Any, Any]]]:
        for modname, names in _HOOK_REGISTRIES:
            mod = sys.modules.get(modname)
            if mod is None:
                continue
            for attr in names:
                reg = getattr(mod, attr, None)
                if isinstance(reg, dict):
                    yield f"{modname}.{attr}", reg

    def _snapshot_hooks(self, where: str, *, report: bool) -> int:
        found = 0
        stop: GuardStopped | None = None
        for regname, reg in self._registries():
            first = regname not in self.registries_seen
            self.registries_seen.add(regname)
            for key, hook in list(reg.items()):
                ident = (regname, id(hook))
                if ident in self.hooks_seen:
                    continue
                self.hooks_seen.add(ident)
                if first:
                    continue  # present when the registry was first seen (framework import)
                found += 1
                src = frames.function_source(hook)
                try:
                    self.rt.detect(
                        "TG-GRD-011", regname,
                        f"global hook {getattr(hook, '__qualname__', repr(hook)[:60])} from "
                        f"{src} added to {regname}, found at {where}",
                        location=src or frames.UNKNOWN, kind=EventKind.GUARD_TRIPWIRE,
                        details={"registry": regname, "handle": str(key), "where": where,
                                 "hook": str(src) if src else repr(hook)[:200]})
                except GuardStopped as exc:
                    stop = stop or exc
        if stop is not None:
            raise stop
        return found

    # ------------------------------------------------------------------ seed wrappers
    def wrap_seeds(self) -> None:
        """Wrap the seed functions of the frameworks imported so far (idempotent)."""
        torch = sys.modules.get("torch")
        if torch is not None:
            rnd = sys.modules.get("torch.random")
            self._wrap_seed("torch.manual_seed", [(torch, "manual_seed"),
                                                  (rnd, "manual_seed")])
            cuda = sys.modules.get("torch.cuda")
            if cuda is not None:
                for fn in ("manual_seed", "manual_seed_all"):
                    cr = sys.modules.get("torch.cuda.random")
                    self._wrap_seed(f"torch.cuda.{fn}", [(cuda, fn), (cr, fn)])
        rmod = sys.modules.get("random")
        if rmod is not None:
            self._wrap_seed("random.seed", [(rmod, "seed")])
        np_random = sys.modules.get("numpy.random")
        if np_random is not None:
            mtrand = sys.modules.get("numpy.random.mtrand")
            self._wrap_seed("numpy.random.seed", [(np_random, "seed"), (mtrand, "seed")])

    def _wrap_seed(self, name: str, places: list[tuple[Any, str]]) -> None:
        if name in self.seed_wrappers:
            return
        owner, attr = places[0]
        original = getattr(owner, attr, None)
        if original is None:
            return
        wrapper = self._make_seed_wrapper(name, original)
        self.seed_wrappers[name] = wrapper
        for mod, a in places:
            if mod is not None and getattr(mod, a, None) is original:
                setattr(mod, a, wrapper)

    def _make_seed_wrapper(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        rt = self.rt

        @functools.wraps(original)
        def trainguard_seed(*args: Any, **kwargs: Any) -> Any:
            if not rt.active or getattr(rt.local, "seeding", False):
                return original(*args, **kwargs)
            # torch.manual_seed seeds CUDA too: one call, one record
            rt.local.seeding = True
            try:
                rt.protect(f"seed:{name}", self._on_seed, name, args, kwargs)
                return original(*args, **kwargs)
            finally:
                rt.local.seeding = False

        trainguard_seed.__trainguard_seed_wrapper__ = True  # type: ignore[attr-defined]
        trainguard_seed.__trainguard_wraps__ = original  # type: ignore[attr-defined]
        return trainguard_seed

    def _on_seed(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        frame = sys._getframe(1)
        # seed functions are called through framework layers (torch._dynamo's wrapper,
        # lightning.seed_everything): name the job's own code that asked, when there is one
        culprit, _imm = frames.attribute(frame, prefer_project=True)
        value = repr(args[0] if args else kwargs.get("seed", kwargs.get("a")))[:80]
        if not self.rt.training_started:
            self.rt.emit(GUARD_SEED, name, {"seed": value, "location": culprit.to_dict(),
                                            "phase": "setup"})
            return
        self.rt.detect("TG-GRD-012", name,
                       f"{name}({value}) called after training started (step "
                       f"{self.rt.steps}) from {culprit}",
                       location=culprit, kind=EventKind.GUARD_TRIPWIRE,
                       details={"seed": value, "step": self.rt.steps,
                                "stack": frames.stack_summary(frame)})

    # ------------------------------------------------------------------ instances
    def check_optimizer(self, optimizer: Any, where: str) -> None:
        """An optimizer instance must not carry its own ``step``/``zero_grad``, except torch's
        LR-scheduler wrapper around the class's method."""
        inst = getattr(optimizer, "__dict__", None)
        if not isinstance(inst, dict):
            return
        for meth in ("step", "zero_grad"):
            own = inst.get(meth)
            if own is None:
                continue
            eff = self._unwrap(own)
            cls_eff = self._unwrap(getattr(type(optimizer), meth, None))
            if eff is cls_eff or getattr(eff, "__func__", None) is cls_eff:
                continue
            src = frames.function_source(eff)
            key = f"{type(optimizer).__name__}(instance).{meth}"
            if self.baseline.get(key) is not None and self.baseline[key].obj is eff:
                continue
            code, digest = self._digest(eff)
            self.baseline[key] = Snapshot(key, eff, code, digest, None)
            self.rt.detect("TG-GRD-010", key,
                           f"optimizer instance's {meth} replaced by {src}, found at {where}",
                           location=src or frames.UNKNOWN, kind=EventKind.GUARD_TRIPWIRE,
                           details={"check": "instance", "where": where,
                                    "replacement": str(src) if src else repr(eff)[:200]})
