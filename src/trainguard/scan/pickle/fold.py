"""Static folding: what the machine can know about values built at load time.

Names for STACK_GLOBAL can be computed (``"".join``, ``_codecs.encode`` rot13, ``getattr`` of a
string attribute); byte strings handed to loaders (``pickle.loads``, ``torch.storage
._load_from_bytes``) are scanned as nested files. These helpers fold what is computable from
constants and say when a value is only known at load time.
"""

from __future__ import annotations

import codecs

from trainguard.scan.pickle.values import (
    _MAX_BUILD_ATTRS,
    _MAX_STATE_KEYS,
    Call,
    Global,
    GlobalUse,
    Opaque,
    PersistentRef,
    SymDict,
    SymList,
    describe,
)


def _legacy_module_class(value: object) -> object:
    """The class a legacy torch file's ``("module", cls, source_file, source)`` persistent id stands
    for: torch's ``_legacy_load`` persistent_load returns ``cls`` itself (torch/serialization.py),
    so NEWOBJ/REDUCE on it construct that class, which the policy then judges like any other."""
    pid = value.pid if isinstance(value, PersistentRef) else None
    if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "module":
        return pid[1] if isinstance(pid[1], Global) else value
    return value


_GETATTR = frozenset({"builtins.getattr", "__builtin__.getattr"})
#: functions that import a global named by a string
_RESOLVERS = frozenset({"pkgutil.resolve_name", "pydoc.locate"})
#: functions whose first argument is a serialized file the loader deserializes again
_LOADERS = frozenset({
    "torch.storage._load_from_bytes", "pickle.loads", "_pickle.loads", "cPickle.loads",
    "pickle._loads", "dill.loads", "dill._dill.loads", "cloudpickle.loads", "joblib.load",
    "numpy.loads", "torch.load", "torch.serialization.load",
})
_ENCODE = frozenset({"_codecs.encode", "codecs.encode"})
_STR_JOIN = frozenset({"builtins.str.join", "__builtin__.str.join"})
#: attributes that hold text: an import of one is a string only known at load time
_STR_ATTRS = frozenset({"__name__", "__qualname__", "__module__", "__doc__", "__file__",
                        "__package__"})


def _computed(value: object) -> bool:
    """A STACK_GLOBAL operand only known at load time, which may well be a string.

    Imported functions and classes are not strings (the loader fails on them, like on a
    constant of the wrong type), but their text attributes (``os.__name__``) are.
    """
    if isinstance(value, Global):
        return value.name.rsplit(".", 1)[-1] in _STR_ATTRS
    return isinstance(value, (Call, PersistentRef, Opaque))


def _codec_name(value: object) -> str:
    return value.lower().replace("-", "_") if isinstance(value, str) else ""


def _fold_str(value: object, depth: int = 0) -> str | None:
    """The text a value certainly is at load time: a constant, or a pure string function of
    constants (``_codecs.encode(s, "rot13")``, ``"".join([...])``, ``str(s)``); else None."""
    if isinstance(value, str):
        return value
    if depth > 4 or not isinstance(value, Call) or not isinstance(value.func, Global):
        return None
    func, args = value.func.qualname, value.args
    if not isinstance(args, tuple):
        return None
    if func in _ENCODE and len(args) == 2 and _codec_name(args[1]) in ("rot13", "rot_13"):
        text = _fold_str(args[0], depth + 1)
        return codecs.encode(text, "rot13") if text is not None else None
    if func in _STR_JOIN and len(args) == 2 and isinstance(args[1], (SymList, tuple)):
        sep = _fold_str(args[0], depth + 1)
        items = [_fold_str(v, depth + 1) for v in args[1]]
        if sep is not None and all(i is not None for i in items):
            return sep.join(i for i in items if i is not None)
    if func in ("builtins.str", "__builtin__.str") and len(args) == 1:
        return _fold_str(args[0], depth + 1)
    return None


def _fold_bytes(value: object) -> bytes | None:
    """The bytes a value certainly is: a constant, or ``_codecs.encode(text, "latin1")``, the
    way protocols 0-2 write bytes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, Call) and isinstance(value.func, Global) \
            and value.func.qualname in _ENCODE and isinstance(value.args, tuple) \
            and len(value.args) == 2 \
            and _codec_name(value.args[1]) in ("latin1", "latin_1", "iso_8859_1", "iso8859_1"):
        text = value.args[0]
        if isinstance(text, str):
            try:
                return text.encode("latin1")
            except UnicodeEncodeError:
                return None
    return None


def _state_items(state: object) -> list[tuple[str, object]]:
    """(attribute, value) pairs a BUILD state sets: a dict, or a (dict, slots-dict) pair.

    Only the first _MAX_STATE_KEYS of each dict: one BUILD opcode can re-apply a state of any
    size, and the BUILD on an import is reported whatever its keys are.
    """
    parts = state if isinstance(state, tuple) else (state,)
    return [(k, v) for part in parts[:2] if isinstance(part, SymDict)
            for k, v in part.pairs[:_MAX_STATE_KEYS] if isinstance(k, str)]


def _nested_candidate(head: bytes) -> bool:
    """Bytes that loaders may unpickle or torch.load again: a pickle or a zip (torch storage)."""
    is_pickle = head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5
    return is_pickle or head[:4] == b"PK\x03\x04"


def _add_attrs(gu: GlobalUse, names: list[str]) -> None:
    """Record attribute names set on a global: distinct ones, at most _MAX_BUILD_ATTRS."""
    for name in names:
        if len(gu.build_attrs) >= _MAX_BUILD_ATTRS:
            return
        if name not in gu.build_attrs:
            gu.build_attrs.append(name)


def _state_keys(state: object) -> list[str]:
    """Attribute names a BUILD state would set: a dict, or a (dict, slots-dict) pair."""
    names: list[str] = []
    parts = state if isinstance(state, tuple) else (state,)
    for part in parts[:2]:
        if isinstance(part, SymDict):
            names.extend(k if isinstance(k, str) else describe(k)
                         for k, _ in part.pairs[:_MAX_BUILD_ATTRS])
    return names or [f"<state {describe(state)}>"]
