#!/usr/bin/env python3
"""Write the bundled example checkpoints as plain protocol-0 pickle text.

Nothing here pickles a live object or imports torch: every byte is spelled out below, so the
files are readable with ``cat`` and reviewable in a diff. Protocol 0 is the ASCII pickle format
(one opcode per line; see the opcode table in CPython's ``Lib/pickletools.py``).

    python examples/make_examples.py          # rewrite the files beside this script
    python examples/make_examples.py --check  # exit 1 if a committed file differs

``tests/cli/test_examples.py`` checks that the committed files equal what this script writes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Call:
    """``module.name(*args)`` as a pickle writes it: GLOBAL, an argument tuple, REDUCE.

    A loader performs this call while unpickling; trainguard only reads it.
    """

    module: str
    name: str
    args: tuple[float | int, ...]


Value = float | int | str | list["Value"] | dict[str, "Value"] | Call


class Protocol0Writer:
    """Emits protocol-0 opcodes the way CPython's pickler does (memo PUT after each container)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._memo = 0

    def _put(self) -> None:
        self._lines.append(f"p{self._memo}\n")  # PUT: remember the object in memo slot N
        self._memo += 1

    def value(self, v: Value) -> None:
        if isinstance(v, bool):
            raise TypeError("booleans are not used in the examples")
        if isinstance(v, int):
            self._lines.append(f"I{v}\n")  # INT
        elif isinstance(v, float):
            self._lines.append(f"F{v!r}\n")  # FLOAT, repr() round-trips
        elif isinstance(v, str):
            if not v.isascii() or "\\" in v or "\n" in v:
                raise ValueError(f"keep example strings plain ASCII: {v!r}")
            self._lines.append(f"V{v}\n")  # UNICODE, raw-unicode-escape text
            self._put()
        elif isinstance(v, list):
            self._lines.append("(l")  # MARK LIST: an empty list
            self._put()
            for item in v:
                self.value(item)
                self._lines.append("a")  # APPEND
        elif isinstance(v, dict):
            self._lines.append("(d")  # MARK DICT: an empty dict
            self._put()
            for key, item in v.items():
                self.value(key)
                self.value(item)
                self._lines.append("s")  # SETITEM
        elif isinstance(v, Call):
            self._lines.append(f"c{v.module}\n{v.name}\n")  # GLOBAL: import module.name
            self._put()
            self._lines.append("(")  # MARK
            for arg in v.args:
                self.value(arg)
            self._lines.append("t")  # TUPLE of everything since MARK
            self._put()
            self._lines.append("R")  # REDUCE: call the global with the tuple
            self._put()
        else:
            raise TypeError(f"unsupported example value {type(v).__name__}")

    def dumps(self, v: Value) -> bytes:
        self._lines, self._memo = [], 0
        self.value(v)
        self._lines.append(".")  # STOP
        return "".join(self._lines).encode("ascii")


def _weights() -> dict[str, Value]:
    return {
        "epoch": 3.0,
        "lr": 0.001,
        "layer.weight": [0.5, -0.25, 0.125],
        "layer.bias": [0.0, 0.1],
    }


def clean_checkpoint() -> bytes:
    """A dict of floats and float lists: what a tiny state_dict-like file looks like."""
    return Protocol0Writer().dumps(_weights())


def sabotaged_checkpoint() -> bytes:
    """The same weights plus two calls a loader would make while unpickling.

    ``torch.manual_seed(1337)`` silently reseeds the job's RNG (data order, dropout, init) and
    ``time.sleep(0.5)`` stalls the rank that loads it: training sabotage that spawns no shell,
    so deny-list scanners looking for ``os.system`` miss it. Both are harmless to have on disk.
    """
    ckpt = _weights()
    ckpt["rng"] = Call("torch", "manual_seed", (1337,))
    ckpt["hook"] = Call("time", "sleep", (0.5,))
    return Protocol0Writer().dumps(ckpt)


def build() -> dict[str, bytes]:
    """File name -> content of every bundled example."""
    return {
        "clean_checkpoint.pkl": clean_checkpoint(),
        "sabotaged_checkpoint.pkl": sabotaged_checkpoint(),
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, data in build().items():
        path = HERE / name
        if check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python examples/make_examples.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
