"""Symbolic values of the pickle machine: what stands on its stack instead of real objects.

Constants stay constants (large byte strings are kept as their length and first bytes only),
imports become :class:`Global`, call results become :class:`Call`; containers keep their members
so that names and states can be followed through the memo. :class:`StreamResult` is what one
stream would do, as far as it parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainguard.core.errors import LimitExceeded, MalformedInput

# Largest bytes constant kept whole (for nested-pickle scanning); longer ones are skipped.
NESTED_PICKLE_MAX = 256 << 20
# Bytes kept from large constants (enough to recognise a nested pickle).
_HEAD = 16
# Longest text argument line (GLOBAL names, protocol 0 strings).
_LINE_LIMIT = 64 << 20
# Longest GLOBAL/INST module or attribute name: the loader imports it, and no importable name
# comes near this (a 64 MiB "name" would only cost memory in every copy made of it).
_NAME_LIMIT = 64 << 10
_SMALL = 1 << 16
# Longest rendering of a value in evidence; attribute names kept per global; state entries
# followed per BUILD. Each bounds what one opcode can cost, whatever the stream built before.
_DESCRIBE_MAX = 160
_MAX_BUILD_ATTRS = 32
_MAX_STATE_KEYS = 256


class Global:
    """An imported object: ``module`` and ``name`` exactly as the stream gave them."""

    __slots__ = ("module", "name", "offset")

    def __init__(self, module: str, name: str, offset: int) -> None:
        self.module = module
        self.name = name
        self.offset = offset

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return self.qualname


class Call:
    """The result of calling ``func`` (a Global or another symbolic value) at ``offset``."""

    __slots__ = ("args", "func", "kind", "offset", "state")

    def __init__(self, func: object, args: object, kind: str, offset: int) -> None:
        self.func = func
        self.args = args
        self.kind = kind
        self.offset = offset
        self.state: object = None

    def __repr__(self) -> str:
        return f"{describe(self.func)}(...)"


class PersistentRef:
    __slots__ = ("pid",)

    def __init__(self, pid: object) -> None:
        self.pid = pid

    def __repr__(self) -> str:
        return "persistent_id(...)"


class BigBytes:
    """A byte string too large to keep: its length and first bytes."""

    __slots__ = ("head", "length")

    def __init__(self, length: int, head: bytes) -> None:
        self.length = length
        self.head = head

    def __repr__(self) -> str:
        return f"<{self.length} bytes>"


class Opaque:
    """A value the machine cannot know statically (extension registry entries, buffers)."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}>"


class SymList(list):  # type: ignore[type-arg]
    """A list built by the pickle."""


class SymDict:
    """A dict built by the pickle; keys may be symbolic (unhashable), so pairs are kept in order."""

    __slots__ = ("pairs",)

    def __init__(self) -> None:
        self.pairs: list[tuple[object, object]] = []

    def get(self, key: str) -> object:
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return None

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.pairs)

    def keys(self) -> list[object]:
        return [k for k, _ in self.pairs]

    def __repr__(self) -> str:
        return "{...}"


class SymSet(list):  # type: ignore[type-arg]
    """A set or frozenset built by the pickle."""


def describe(value: object, depth: int = 0) -> str:
    """A short, human-readable rendering of a symbolic value for evidence strings."""
    # Bounded at every level: evidence is built per call site, and a hostile stream can make
    # thousands of call sites share one wide or huge value.
    text = _describe(value, depth)
    return text if len(text) <= _DESCRIBE_MAX else text[:_DESCRIBE_MAX - 3] + "..."


def _describe(value: object, depth: int) -> str:
    if depth > 3:
        return "..."
    if isinstance(value, Global):
        return value.qualname
    if isinstance(value, Call):
        if isinstance(value.func, Global) and value.func.qualname in (
            "builtins.getattr", "__builtin__.getattr"
        ) and isinstance(value.args, tuple) and len(value.args) == 2:
            attr = value.args[1]
            attr_text = attr if isinstance(attr, str) and len(attr) <= 60 else describe(attr, 3)
            return f"{describe(value.args[0], depth + 1)}.{attr_text}"
        return f"{describe(value.func, depth + 1)}(...)"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, tuple):
        parts: list[str] = []
        for v in value[:4]:
            parts.append(describe(v, depth + 1))
            if sum(map(len, parts)) >= _DESCRIBE_MAX:
                break
        return "(" + ", ".join(parts) + (", ..." if len(value) > len(parts) else "") + ")"
    if isinstance(value, int) and value.bit_length() > 64:
        # repr of a LONG4 constant can exceed sys.get_int_max_str_digits() and raise
        return f"<{value.bit_length()}-bit int>"
    if isinstance(value, (SymList, SymDict, SymSet)):
        return type(value).__name__
    return repr(value)


@dataclass
class GlobalUse:
    """How one global was used in a stream."""

    module: str
    name: str
    first_offset: int
    uses: set[str] = field(default_factory=set)  # "import", "call", "construct", "build"
    count: int = 0
    #: for "build": attribute names the state would set
    build_attrs: list[str] = field(default_factory=list)
    #: first few call argument renderings, as evidence
    call_args: list[str] = field(default_factory=list)


@dataclass
class DynamicCall:
    """A call whose target is not a plain import (the result of another call or lookup)."""

    offset: int
    target: str
    kind: str


@dataclass
class StreamResult:
    """Everything one pickle stream would do, as far as it parsed."""

    start: int
    end: int = 0
    protocol: int = 0
    opcodes: int = 0
    globals: dict[tuple[str, str], GlobalUse] = field(default_factory=dict)
    dynamic_calls: list[DynamicCall] = field(default_factory=list)
    #: (offset, opcode name) of opcodes unusual in model files
    unusual: list[tuple[int, str]] = field(default_factory=list)
    #: (offset, payload) of byte constants that are pickles themselves
    nested: list[tuple[int, bytes]] = field(default_factory=list)
    error: str | None = None
    error_offset: int | None = None
    limit: LimitExceeded | None = None
    #: the unpickled top-level value (symbolic), when the stream completed
    value: object = None
    completed: bool = False

    @property
    def calls(self) -> int:
        called = sum(1 for g in self.globals.values() if g.uses & {"call", "construct", "build"})
        return called + len(self.dynamic_calls)


class _Mark:
    __slots__ = ()


def _decode_str(data: bytes) -> str:
    # The loader decodes names as UTF-8 and fails the load on bad bytes (_pickle.c load_global):
    # a malformed stream, never an exception escaping the machine.
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise MalformedInput(f"invalid UTF-8 in text argument: {exc.reason}") from None


