"""RNG state fingerprints: catch a reseed or a rewound generator between training steps.

What is fingerprinted: torch's CPU generator (``torch.get_rng_state()``), every initialised CUDA
generator, Python's ``random`` and NumPy's legacy global ``RandomState`` (the generators a payload
reseeds with ``torch.manual_seed``/``random.seed``/``numpy.random.seed``). A fingerprint is a
BLAKE2b digest of the state bytes, taken once per check (microseconds).

What can be detected from states alone (rules TG-GRD-103/104), honestly:

* the state *changed to* exactly the state right after seeding with a known seed (0..255 and
  common seeds, plus ``extra_seeds``): a reseed after the last check with no draws since;
* the state returned to one seen at an earlier check (not the previous one): a rewind or a
  replayed stream (``set_rng_state`` with a saved state, or the same seed every step);
* a generator that had changed at every one of the last ``stall_after`` checks (dropout draws
  every step) suddenly shows the same state twice in a row: its stream may be replayed (medium
  severity; generators that change only per epoch, like a DataLoader's shuffle, never qualify).

What cannot: a reseed with an unknown seed followed by draws before the check looks like any other
state. The seed-function tripwires (guard/tripwires.py) see those calls instead; this module is the
second line that also catches state restored without any seed function (``set_state``).
Legitimately restoring RNG state from a checkpoint: call :meth:`RngMonitor.expect_reset` first.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trainguard.core.findings import Severity
from trainguard.guard.detection import Detection

COMMON_SEEDS: tuple[int, ...] = (*range(256), 1000, 1024, 1234, 1337, 2020, 2021, 2022, 2023, 2024,
                                 2025, 2026, 3407, 4242, 12345, 31337, 42424, 123456, 2**31 - 1)


def _digest(data: Any) -> str:
    # Any buffer (bytes, a NumPy array): hashing the array's buffer directly saves a copy.
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _py_state_digest(state: Any) -> str:
    # random.getstate() = (version, tuple of 625 ints, gauss_next). Hashes of ints, floats and
    # tuples are not randomised per process (only str/bytes are, PEP 456), and fingerprints are
    # only compared within one process: the C tuple hash is ~20x cheaper than a repr + digest.
    return f"h{hash(state) & 0xFFFFFFFFFFFFFFFF:016x}"


def _np_state_bytes(state: Any) -> bytes:
    name, keys, pos, has_gauss, cached = state
    return f"{name}:{pos}:{has_gauss}:{cached}:".encode() + bytes(keys.tobytes())


#: MT19937's C state struct (numpy/random/src/mt19937/mt19937.h): uint32 key[624]; int pos
_MT_STATE_BYTES = 624 * 4 + 4
#: "ok": whether the raw-struct read matched get_state() in this process (absent: not tried)
_NP_RAW: dict[str, bool] = {}


def _np_raw(rs: Any) -> bytes | None:
    """The MT19937 key and position of a legacy RandomState, read from its C struct.

    ``RandomState.get_state()`` copies the 624 words one by one (~110 us, most of this
    check's time); the bit generator's documented ctypes interface gives the struct's address,
    and one 2,500-byte read takes ~1 us. Used only after it was checked once in this process
    against ``get_state()`` (layout, endianness); otherwise None (the slow path). The gauss
    cache is not part of it: a reseed resets the key and position, which is what is compared.
    """
    if _NP_RAW.get("ok") is False:
        return None
    try:
        import ctypes

        bg = rs._bit_generator
        if type(bg).__name__ != "MT19937":
            return None
        raw = ctypes.string_at(bg.ctypes.state_address, _MT_STATE_BYTES)
        if "ok" not in _NP_RAW:
            _, keys, pos, _, _ = rs.get_state()
            ok = _NP_RAW["ok"] = raw == bytes(keys.astype("<u4").tobytes()) + int(pos).to_bytes(
                4, "little", signed=True) and sys.byteorder == "little"
            if not ok:
                return None
        return raw
    except Exception:
        _NP_RAW["ok"] = False
        return None


def _np_digest(rs: Any) -> str:
    raw = _np_raw(rs)
    if raw is not None:
        return "r" + _digest(raw)
    return _digest(_np_state_bytes(rs.get_state()))


def _np_global() -> Any:
    """NumPy's legacy global RandomState (what ``numpy.random.seed`` reseeds)."""
    np = sys.modules["numpy"]
    mtrand = getattr(np.random, "mtrand", None)
    rs = getattr(mtrand, "_rand", None)
    return rs if rs is not None else np.random


def current_states() -> dict[str, str]:
    """Digests of the current global generator states, by generator name."""
    out: dict[str, str] = {"python": _py_state_digest(random.getstate())}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = _digest(torch.get_rng_state().numpy())
        cuda = getattr(torch, "cuda", None)
        # Only already-initialised CUDA: touching an uninitialised one would initialise it.
        # The CUDA (Philox) generator state is seed and offset kept on the host: reading it
        # copies no device memory and does not synchronise the stream.
        if cuda is not None and cuda.is_available() and cuda.is_initialized():
            for i, st in enumerate(cuda.get_rng_state_all()):
                out[f"cuda:{i}"] = _digest(st.numpy())
    if sys.modules.get("numpy") is not None:
        rs = _np_global()
        out["numpy"] = _np_digest(rs) if hasattr(rs, "_bit_generator") else _digest(
            _np_state_bytes(rs.get_state()))
    return out


def fresh_seed_states(seeds: Iterable[int]) -> dict[str, dict[str, int]]:
    """For each generator: digest of the state right after seeding -> the seed.

    Computed on private generator objects, so the global streams are not touched.
    """
    table: dict[str, dict[str, int]] = {"python": {}, "torch": {}, "numpy": {}}
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    for seed in seeds:
        table["python"][_py_state_digest(random.Random(seed).getstate())] = seed
        if torch is not None:
            g = torch.Generator().manual_seed(seed)
            table["torch"][_digest(g.get_state().numpy())] = seed
        if np is not None and 0 <= seed < 2**32:
            # the same digest form as current_states() (raw struct when that was verified)
            table["numpy"][_np_digest(np.random.RandomState(seed))] = seed
    return table


_FRESH_CACHE: dict[tuple[tuple[int, ...], bool, bool], dict[str, dict[str, int]]] = {}


@dataclass(frozen=True)
class RngConfig:
    #: seeds whose fresh states are recognised in addition to :data:`COMMON_SEEDS`
    extra_seeds: tuple[int, ...] = ()
    #: earlier states remembered per generator (a rewind to any of them is detected)
    memory: int = 256
    #: consecutive changing checks after which an unchanged state counts as a stall
    stall_after: int = 8


class RngMonitor:
    """Compare generator states at each check with the states seen before."""

    def __init__(self, config: RngConfig | None = None) -> None:
        self.config = config or RngConfig()
        self._fresh_table: dict[str, dict[str, int]] | None = None
        self._last: dict[str, str] = {}
        self._seen: dict[str, deque[str]] = {}
        self._seen_set: dict[str, set[str]] = {}
        self._changes: dict[str, int] = {}
        self._replay_reported: set[str] = set()
        self._rewound: set[str] = set()

    def _fresh(self) -> dict[str, dict[str, int]]:
        # Built on the first state change only (~0.3 s for ~270 seeds and three generators),
        # once per process and seed list.
        if self._fresh_table is None:
            key = (self.config.extra_seeds, "torch" in sys.modules, "numpy" in sys.modules)
            table = _FRESH_CACHE.get(key)
            if table is None:
                table = _FRESH_CACHE[key] = fresh_seed_states(
                    (*COMMON_SEEDS, *self.config.extra_seeds))
            self._fresh_table = table
        return self._fresh_table

    def expect_reset(self) -> None:
        """The next state change is legitimate (RNG state restored from a checkpoint)."""
        self._last.clear()
        self._seen.clear()
        self._seen_set.clear()
        self._changes.clear()
        self._rewound.clear()

    def check(self, step: int, states: dict[str, str] | None = None) -> list[Detection]:
        """Judge the states now (``states`` defaults to :func:`current_states`)."""
        states = current_states() if states is None else states
        out: list[Detection] = []
        for name, dg in states.items():
            last = self._last.get(name)
            self._last[name] = dg
            if last is None:  # first observation (or after expect_reset): the baseline
                self._remember(name, dg)
                continue
            if dg == last:
                if (self._changes.get(name, 0) >= self.config.stall_after
                        and name not in self._replay_reported):
                    self._replay_reported.add(name)
                    out.append(Detection(
                        "TG-GRD-104", Severity.MEDIUM,
                        f"{name} RNG stopped advancing at step {step} after advancing every "
                        "step: its stream may be replayed (same seed or state each step)",
                        {"generator": name, "state_digest": dg, "kind": "stalled"}))
                self._changes[name] = 0
                continue
            self._changes[name] = self._changes.get(name, 0) + 1
            seed = self._fresh().get(name.split(":")[0], {}).get(dg)
            if seed is not None:
                out.append(Detection(
                    "TG-GRD-103", Severity.HIGH,
                    f"{name} RNG was reseeded with seed {seed} before step {step}",
                    {"generator": name, "seed": seed, "state_digest": dg}))
            elif dg in self._seen_set.get(name, set()):
                if name in self._rewound:  # still replaying the old stream: reported already
                    continue
                self._rewound.add(name)
                out.append(Detection(
                    "TG-GRD-104", Severity.HIGH,
                    f"{name} RNG was rewound at step {step} to a state seen at an earlier step",
                    {"generator": name, "state_digest": dg, "kind": "rewound"}))
            else:
                self._rewound.discard(name)
            self._remember(name, dg)
        return out

    def _remember(self, name: str, dg: str) -> None:
        seen = self._seen.setdefault(name, deque())
        seen_set = self._seen_set.setdefault(name, set())
        if dg in seen_set:
            return
        seen.append(dg)
        seen_set.add(dg)
        while len(seen) > self.config.memory:
            seen_set.discard(seen.popleft())
