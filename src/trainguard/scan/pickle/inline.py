"""Data that loaders read from inside a pickle stream, between opcodes.

joblib's ``NumpyArrayWrapper`` (joblib/numpy_pickle.py, ``NumpyArrayWrapper.read``): right after
the wrapper's BUILD the loader reads the array from the same stream, either

- numeric: [1 byte padding length + padding (joblib >= 1.2, when ``numpy_array_alignment_bytes``
  is set)] then ``prod(shape) * itemsize`` raw bytes, or
- object dtype: a complete, separate pickle (``pickle.load(file_handle)``), which runs code.

The scanner must step over the first kind and analyse the second, or it would read array bytes as
opcodes (false alarms) or miss a payload hidden in an "array".
"""

from __future__ import annotations

import math
import re

from trainguard.core.errors import MalformedInput
from trainguard.scan.pickle.machine import BuildHook, PickleMachine
from trainguard.scan.pickle.values import Call, Global, SymDict, describe

_MAX_STATE_KEYS = 64
_MAX_NDIM = 64
_TYPESTR = re.compile(r"^[<>|=]?([a-zA-Z])(\d*)")
_FIXED_SIZES = {"b": 1, "B": 1, "?": 1, "h": 2, "H": 2, "e": 2, "f": 4, "d": 8, "g": 16,
                "F": 8, "D": 16, "G": 32, "l": 8, "L": 8, "q": 8, "Q": 8, "i": 4, "I": 4}


def _dtype_info(dtype: object) -> tuple[bool, int]:
    """(has_object, itemsize) of a symbolic ``numpy.dtype(...)`` value."""
    if not isinstance(dtype, Call) or not isinstance(dtype.func, Global):
        raise MalformedInput(f"joblib array dtype is not a numpy.dtype: {describe(dtype)}")
    if not dtype.func.qualname.endswith("dtype"):
        raise MalformedInput(f"joblib array dtype built by {dtype.func.qualname}")
    args = dtype.args if isinstance(dtype.args, tuple) else ()
    code = args[0] if args and isinstance(args[0], str) else ""
    state = dtype.state if isinstance(dtype.state, tuple) else ()
    # numpy dtype __reduce__ state:
    #   (version, byteorder, subdtype, names, fields, elsize, align, flags)
    if code.startswith("O"):
        return True, 8
    # structured and flexible dtypes carry their item size in the state (elsize)
    if len(state) > 5 and isinstance(state[5], int) and state[5] > 0:
        return False, state[5]
    m = _TYPESTR.match(code)
    if not m:
        raise MalformedInput(f"joblib array dtype {code!r} not understood")
    letter, digits = m.group(1), m.group(2)
    if digits:
        size = int(digits)
        if letter == "U":
            size *= 4
        return False, size
    if letter in _FIXED_SIZES:
        return False, _FIXED_SIZES[letter]
    raise MalformedInput(f"joblib array dtype {code!r} has no size")


def _joblib_array(machine: PickleMachine, wrapper: Call) -> None:
    state = wrapper.state
    if not isinstance(state, SymDict):
        raise MalformedInput("joblib NumpyArrayWrapper state is not a dict")
    # joblib writes about seven keys and numpy allows 64 dimensions; anything larger is hostile,
    # and one 3-byte BUILD would otherwise re-walk it every time
    if len(state.pairs) > _MAX_STATE_KEYS:
        raise MalformedInput(f"joblib array state has {len(state.pairs)} entries")
    shape = state.get("shape")
    dtype = state.get("dtype")
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM or not all(
        isinstance(d, int) and d >= 0 for d in shape
    ):
        raise MalformedInput(f"joblib array shape invalid: {describe(shape)}")
    has_object, itemsize = _dtype_info(dtype)
    r = machine.r
    if has_object:
        # A whole pickle follows; whatever it does runs. Analyse it as part of this stream.
        sub = PickleMachine(r, max_opcodes=machine.max_opcodes, build_hooks=machine.build_hooks)
        res = sub.run()
        machine.merge(res)
        return
    if "numpy_array_alignment_bytes" in state and state.get(
        "numpy_array_alignment_bytes"
    ) is not None:
        pad = r.read(1)[0]
        r.skip(pad)
    count = math.prod(shape)
    r.skip(count * itemsize)


JOBLIB_HOOKS: dict[str, BuildHook] = {
    "joblib.numpy_pickle.NumpyArrayWrapper": _joblib_array,
    "sklearn.externals.joblib.numpy_pickle.NumpyArrayWrapper": _joblib_array,
}
