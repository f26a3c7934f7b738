"""Property tests (hypothesis) for the symbolic pickle machine and the zip reader it relies on.

(a) anything :func:`pickle.dumps` writes for plain data, protocols 0-5, runs to STOP with no
    finding; (b) random bytes and mutated pickles never make the machine raise: every stream ends
    completed, broken or at a limit; (c) the globals the machine reports are exactly the imports
    an independent pickletools walk finds; (d) the zip reader only ever raises MalformedInput /
    LimitExceeded (or MissingCodec for a method it cannot decode) on mutated archives.

Only pickles of our own plain data are built here; nothing is ever unpickled.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import decimal
import fractions
import io
import pathlib
import pickle
import pickletools
import uuid
import zipfile
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainguard.artifacts.reader import Reader
from trainguard.artifacts.streams import Budget, MissingCodec
from trainguard.artifacts.zipfmt import open_member, read_zip
from trainguard.core.config import Limits, ScanConfig
from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.scan.context import Blob, ScanContext
from trainguard.scan.pickle.machine import PickleMachine
from trainguard.scan.pickle.values import StreamResult
from trainguard.scan.policy import Policy

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = Limits(max_pickle_opcodes=200_000, max_expanded_bytes=64 << 20)


def run_machine(data: bytes) -> StreamResult:
    return PickleMachine(Reader.from_bytes(data), max_opcodes=LIMITS.max_pickle_opcodes).run()


def scan_bytes(data: bytes) -> ScanContext:
    """The full analyzer path (policy, nested pickles, trailing data) on in-memory bytes."""
    config = ScanConfig(limits=LIMITS)
    ctx = ScanContext(config, Policy(config.allow_globals), "<memory>")
    ctx.scan(Blob.from_bytes("<memory>", None, data), 0)
    return ctx


def assert_ends_cleanly(res: StreamResult) -> None:
    """Completed, or stopped with an error or a limit; never an internal failure."""
    ended = res.completed or res.error is not None or res.limit is not None
    assert ended
    assert not (res.error or "").startswith("internal error"), res.error


# ---------------------------------------------------------------- (a) plain data round trips

_hashable = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)
plain_data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=50) | st.binary(max_size=50)
    | st.integers(min_value=2**64, max_value=2**600),
    lambda inner: (
        st.lists(inner, max_size=6) | st.tuples(inner, inner, inner)
        | st.dictionaries(_hashable, inner, max_size=6)
        | st.sets(_hashable, max_size=4) | st.frozensets(_hashable, max_size=4)
    ),
    max_leaves=40,
)


@SETTINGS
@given(obj=plain_data, protocol=st.integers(0, 5))
def test_plain_data_scans_clean(obj: Any, protocol: int) -> None:
    data = pickle.dumps(obj, protocol=protocol)
    res = run_machine(data)
    assert res.completed, res.error
    assert res.end == len(data)
    ctx = scan_bytes(data)
    assert not ctx.findings, [f"{f.rule_id} {f.evidence}" for f in ctx.findings]


# ---------------------------------------------------------------- (b) garbage never raises


@SETTINGS
@given(data=st.binary(max_size=2048))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert_ends_cleanly(run_machine(data))
    assert_ends_cleanly(run_machine(b"\x80\x04" + data))
    for prefix in (b"", b"\x80\x02", b"\x80\x05"):
        ctx = scan_bytes(prefix + data)
        assert not [f for f in ctx.findings if "internal error" in f.evidence]


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 30), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 1 << 30), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 30), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 30), st.binary(min_size=1, max_size=9)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 30), st.integers(1, 16)),
    st.tuples(st.just("opcode"), st.integers(0, 1 << 30),
              st.sampled_from([op.code.encode("latin1") for op in pickletools.opcodes])),
)


def mutate(data: bytes, mutations: list[tuple[str, int, Any]]) -> bytes:
    buf = bytearray(data)
    for kind, where, what in mutations:
        i = where % (len(buf) + 1)
        if kind == "flip" and i < len(buf):
            buf[i] ^= 1 << what
        elif kind == "set" and i < len(buf):
            buf[i] = what
        elif kind == "cut":
            del buf[i:]
        elif kind in ("insert", "opcode"):
            buf[i:i] = what
        elif kind == "delete":
            del buf[i:i + what]
    return bytes(buf)


@SETTINGS
@given(obj=plain_data, protocol=st.integers(0, 5),
       mutations=st.lists(_mutation, min_size=1, max_size=5))
def test_mutated_pickles_never_raise(obj: Any, protocol: int,
                                     mutations: list[tuple[str, int, Any]]) -> None:
    data = mutate(pickle.dumps(obj, protocol=protocol), mutations)
    assert_ends_cleanly(run_machine(data))
    ctx = scan_bytes(data)
    assert not [f for f in ctx.findings if "internal error" in f.evidence]


# ---------------------------------------------------------------- (c) the globals it reports


def _known_global_objects() -> st.SearchStrategy[Any]:
    """Objects whose __reduce__ imports well-known globals (reconstructors, classes)."""
    small = st.integers(-1000, 1000)
    builders: list[st.SearchStrategy[Any]] = [
        st.builds(collections.OrderedDict, st.dictionaries(st.text(max_size=5), small, max_size=3)),
        st.builds(collections.Counter, st.lists(st.text(max_size=3), max_size=5)),
        st.builds(collections.deque, st.lists(small, max_size=4)),
        st.builds(lambda d: collections.defaultdict(int, d),
                  st.dictionaries(st.text(max_size=3), small, max_size=3)),
        st.datetimes(), st.dates(), st.times(), st.timedeltas(),
        st.just(datetime.timezone.utc),
        st.builds(lambda m: datetime.timezone(datetime.timedelta(minutes=m)),
                  st.integers(-600, 600)),
        st.decimals(allow_nan=False, allow_infinity=False, places=3),
        st.fractions(),
        st.uuids(),
        st.complex_numbers(allow_nan=False, allow_infinity=False),
        st.builds(range, small, small),
        st.builds(slice, small, small),
        st.builds(bytearray, st.binary(max_size=8)),
        st.builds(lambda kw: argparse.Namespace(**kw),
                  st.dictionaries(st.sampled_from(["lr", "epochs", "name"]), small, max_size=3)),
        st.builds(pathlib.PurePosixPath, st.text("abc/", min_size=1, max_size=8)),
        st.builds(set, st.lists(small, max_size=3)),
        st.builds(frozenset, st.lists(small, max_size=3)),
    ]
    return st.one_of(builders)


def expected_globals(data: bytes) -> set[tuple[str, str]]:
    """(module, name) of every GLOBAL/INST and STACK_GLOBAL, walking the opcodes independently:
    STACK_GLOBAL takes the two most recent values pushed by string opcodes or memo reads."""
    found: set[tuple[str, str]] = set()
    memo: dict[int, Any] = {}
    recent: list[Any] = []  # values of the most recent pushes (strings or None)
    strings = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}
    for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = arg.partition(" ")
            found.add((module, attr))
            recent.append(None)
        elif name == "STACK_GLOBAL":
            module, attr = recent[-2], recent[-1]
            found.add((module, attr))
            recent.append(None)
        elif name in strings:
            recent.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = recent[-1] if recent else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(int(arg)))
        elif name not in ("FRAME", "PROTO"):
            recent.append(None)
    return found


@SETTINGS
@given(objs=st.lists(_known_global_objects(), min_size=1, max_size=6),
       protocol=st.integers(0, 5))
def test_reported_globals_match_pickletools(objs: list[Any], protocol: int) -> None:
    data = pickle.dumps(objs, protocol=protocol)
    res = run_machine(data)
    assert res.completed, res.error
    assert set(res.globals) == expected_globals(data)


# ---------------------------------------------------------------- (d) the zip reader

ALLOWED = (MalformedInput, LimitExceeded, MissingCodec)


def _valid_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), pickle.dumps({"w": [1.0] * 10}, 2),
                   compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("archive/data/0", bytes(64))
        z.writestr("archive/version", "3\n", compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


VALID_ZIP = _valid_zip()


def _read_everything(data: bytes) -> Callable[[], int]:
    def run() -> int:
        f = io.BytesIO(data)
        arch = read_zip(f, len(data), max_members=50, max_directory_bytes=1 << 20)
        total = 0
        budget = Budget(8 << 20)
        for e in arch.entries:
            try:
                with open_member(f, e, budget) as m:  # type: ignore[arg-type]
                    total += len(m.read())
            except ALLOWED:
                pass
        return total
    return run


@SETTINGS
@given(mutations=st.lists(_mutation, min_size=1, max_size=6))
def test_zip_reader_on_mutated_archives(mutations: list[tuple[str, int, Any]]) -> None:
    data = mutate(VALID_ZIP, mutations)
    with contextlib.suppress(*ALLOWED):
        _read_everything(data)()


@SETTINGS
@given(tail=st.binary(min_size=22, max_size=300), body=st.binary(max_size=300))
def test_zip_reader_on_random_directories(tail: bytes, body: bytes) -> None:
    """Random bytes around an end-of-central-directory signature."""
    data = b"PK\x03\x04" + body + b"PK\x05\x06" + tail
    with contextlib.suppress(*ALLOWED):
        _read_everything(data)()


def test_oracle_sees_stack_global() -> None:
    """The independent walk itself finds protocol 4 STACK_GLOBAL imports (not vacuous)."""
    data = pickle.dumps([collections.OrderedDict(), decimal.Decimal(1), uuid.UUID(int=1),
                         fractions.Fraction(1, 3)], protocol=4)
    assert {("collections", "OrderedDict"), ("decimal", "Decimal"),
            ("uuid", "UUID"), ("fractions", "Fraction")} <= expected_globals(data)
