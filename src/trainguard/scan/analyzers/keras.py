"""Keras models: Lambda bytecode, objects from outside Keras and dangerous functions in configs.

A Keras model's architecture is a JSON config: ``config.json`` inside a ``.keras`` zip (the zip
walker hands it to the JSON analyzer, which calls :func:`check_keras_config`), the
``model_config`` attribute of a legacy ``.h5`` file (:func:`analyze_hdf5`), or the metadata of a
Keras 2 SavedModel (``keras_metadata.pb``). Loading walks that config
(keras/src/saving/serialization_lib.py ``deserialize_keras_object``):

* ``Lambda`` layers carry marshalled Python bytecode (``__lambda__`` in Keras 3, a base64 string
  with ``function_type: "lambda"`` in Keras 2) that runs on load (CVE-2024-3660). ``safe_mode``
  blocks it for ``.keras`` files only; ``.h5`` files ignore it (CVE-2025-9905).
* ``module`` + ``class_name`` (or ``class_name: "function"`` + ``config``) name any object to
  import; before Keras 3.9 any module was imported and the object called with config-controlled
  arguments (CVE-2025-1550). Keras 2 named-function Lambdas resolve ``function`` in ``module``.
* Keras's own non-modelling functions reached the same way switch safe mode off
  (``keras.config.enable_unsafe_deserialization``, CVE-2025-9906), load further models or download
  files (``keras.utils.get_file``, CVE-2025-8747).

HDF5 files are never opened with h5py (hostile HDF5 crashes the C library). HDF5 stores attribute
values uncompressed and contiguous (object-header messages, global-heap objects), so JSON objects
are found in a bounded streaming scan of the file's bytes and decoded with
:meth:`json.JSONDecoder.raw_decode`; those that look like Keras configs are checked.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from trainguard.core.errors import LimitExceeded
from trainguard.core.findings import Severity
from trainguard.core.rules import rule
from trainguard.scan.context import Blob, ScanContext
from trainguard.scan.policy import CALL, DANGEROUS_LEAVES, DANGEROUS_MODULES, sabotage

#: packages whose objects Keras resolves itself (keras/src/saving/serialization_lib.py)
KERAS_PACKAGES = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp", "tf_keras"})

# Keras functions that are not model building blocks: they switch safe mode off, load or save
# models and weights, download or extract files, or read images from disk. Keras >= 3.9 refuses
# some of them (NON_MODELING_APIS); older versions and internal paths (keras.src...) do not.
_KERAS_UNSAFE: dict[str, str] = {
    "enable_unsafe_deserialization": "turns safe mode off for the rest of the load (CVE-2025-9906)",
    "set_global_attribute": "can turn safe mode off (safe_mode_saving)",
    "SafeModeScope": "can turn safe mode off",
    "func_load": "unmarshals and runs Python bytecode",
    "get_file": "downloads a file (CVE-2025-8747)",
    "extract_archive": "extracts an archive to disk",
    "load_data": "downloads a dataset",
    "load_model": "loads a further model, with arguments chosen by the config",
    "load_model_from_hdf5": "loads a further model",
    "model_from_json": "deserializes a further model",
    "model_from_config": "deserializes a further model",
    "model_from_yaml": "deserializes a further model",
    "deserialize_keras_object": "deserializes a further object with chosen arguments",
    "save_model": "writes files",
    "save_weights": "writes files",
    "load_weights": "reads files",
    "plot_model": "writes files",
    "register_keras_serializable": "registers objects for later loads",
    "serialize_keras_object": "not a modelling function",
    "clear_session": "resets global Keras state",
    "load_img": "reads files",
    "save_img": "writes files",
    "image_dataset_from_directory": "reads files",
    "text_dataset_from_directory": "reads files",
    "audio_dataset_from_directory": "reads files",
}
# TF-Keras TFOpLambda/SlicingOpLambda call a TensorFlow API function by its dotted name.
_TF_UNSAFE = re.compile(
    r"(^|\.)(read_file|write_file|matching_files|py_function|numpy_function|py_func|"
    r"eager_py_func|load_library|load_op_library|ReadFile|WriteFile|MatchingFiles|PyFunc|"
    r"PyFuncStateless|EagerPyFunc|gfile(\..*)?)$"
)
# Names in Lambda bytecode that make a payload critical whatever the file format.
_CODE_DANGER = frozenset(DANGEROUS_LEAVES) | frozenset(DANGEROUS_MODULES) | frozenset(
    {"__import__", "eval", "exec", "system", "popen", "subprocess", "os", "builtins", "getattr",
     "open", "compile", "socket", "urllib", "requests", "shutil"}
)
_MAX_CODE = 1 << 20  # base64 characters of Lambda bytecode decoded for evidence
#: where a node sits in the config: (parent chain, key), built lazily into a path for evidence
_Chain = tuple[Any, object] | None


@dataclass
class _Hit:
    severity: Severity
    evidence: str
    count: int
    where: str


def _path(chain: _Chain) -> str:
    parts: list[str] = []
    while chain is not None and len(parts) < 64:
        chain, key = chain
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    text = "".join(reversed(parts)).lstrip(".")
    return text if len(text) <= 200 else "..." + text[-197:]


def _decode_code(code: object) -> bytes:
    """The marshalled bytecode of a Keras-serialized function (base64 text), never loaded."""
    text = code[0] if isinstance(code, (list, tuple)) and code else code
    if not isinstance(text, str):
        return b""
    try:
        return base64.b64decode(text[:_MAX_CODE].encode("ascii", "ignore"))
    except (binascii.Error, ValueError):
        return b""


def _code_strings(raw: bytes) -> list[str]:
    """Printable strings of marshalled bytecode: the names and constants the code uses.

    Read from marshal's string records (TYPE_SHORT_ASCII 'z'/'Z' with a 1-byte length,
    TYPE_ASCII 'a'/'A' and TYPE_UNICODE 'u' with a 4-byte length, optionally with FLAG_REF 0x80),
    e.g. ``os``, ``system``, ``'touch x'``.
    """
    out: list[str] = []
    i = 0
    while i < len(raw) and len(out) < 64:
        t = raw[i] & 0x7F
        if t in (0x7A, 0x5A):  # z, Z
            n, start = (raw[i + 1] if i + 1 < len(raw) else 0), i + 2
        elif t in (0x61, 0x41, 0x75):  # a, A, u
            n, start = int.from_bytes(raw[i + 1:i + 5], "little"), i + 5
        else:
            i += 1
            continue
        s = raw[start:start + n]
        if 2 <= n <= 256 and len(s) == n and all(0x20 <= c < 0x7F for c in s):
            word = s.decode("ascii")
            if word not in out:
                out.append(word)
            i = start + n
        else:
            i += 1
    return out


def _looks_like_bytecode(value: object) -> bool:
    # marshal TYPE_CODE ('c'), with or without FLAG_REF
    return _decode_code(value)[:1] in (b"c", b"\xe3")


class _ConfigChecker:
    """Walks one parsed config and collects findings, merged per rule and evidence."""

    def __init__(self, ctx: ScanContext, legacy_h5: bool) -> None:
        self.ctx = ctx
        self.legacy_h5 = legacy_h5
        self.keras = False
        self.hits: dict[tuple[str, str], _Hit] = {}
        self._handled: set[int] = set()

    def add(self, rule_id: str, key: str, evidence: str, where: str,
            severity: Severity | None = None) -> None:
        sev = severity if severity is not None else rule(rule_id).severity
        hit = self.hits.get((rule_id, key))
        if hit is None:
            self.hits[(rule_id, key)] = _Hit(sev, evidence, 1, where)
        else:
            hit.count += 1
            hit.severity = max(hit.severity, sev)

    def run(self, doc: object) -> None:
        limit = self.ctx.limits.max_nesting
        stack: list[tuple[object, _Chain, int]] = [(doc, None, 0)]
        while stack:
            node, chain, depth = stack.pop()
            if depth > limit:
                raise LimitExceeded("max_nesting", limit, "Keras config nesting")
            if isinstance(node, dict):
                self._object(node, chain)
                items = list(node.items())
            elif isinstance(node, list):
                items = list(enumerate(node))
            else:
                continue
            for key, value in reversed(items):
                if isinstance(value, (dict, list)):
                    stack.append((value, (chain, key), depth + 1))

    def _object(self, d: dict[str, object], chain: _Chain) -> None:
        cls = d.get("class_name")
        if not isinstance(cls, str) or not ("config" in d or "module" in d
                                            or "registered_name" in d):
            return
        self.keras = True
        where = _path(chain) or "<root>"
        if cls == "Lambda":
            self._lambda(d, where)
        elif cls == "__lambda__" and id(d) not in self._handled:
            inner = d.get("config")
            code = inner.get("code", inner.get("value")) if isinstance(inner, dict) else None
            self._code(code, where, "a __lambda__ object")
        elif cls in ("TFOpLambda", "SlicingOpLambda"):
            cfg = d.get("config")
            fn = cfg.get("function") if isinstance(cfg, dict) else None
            if isinstance(fn, str) and _TF_UNSAFE.search(fn):
                self.add("TG-KER-003", f"tf:{fn}", f"{cls} calls tf.{fn}, which touches files "
                         "or runs Python", where)
        module = d.get("module")
        name = d.get("config") if cls == "function" else (
            d.get("spec_name") if cls == "__typespec__" else cls)
        if isinstance(module, str) and module and isinstance(name, str):
            self._ref(module, name, where)
        else:
            reg = d.get("registered_name")
            if isinstance(reg, str) and ">" in reg:
                self.add("TG-KER-002", f"registered:{reg}",
                         f"custom object {reg!r} (registered outside Keras; loading needs its "
                         "code)", where)

    def _lambda(self, d: dict[str, object], where: str) -> None:
        cfg = d.get("config")
        if not isinstance(cfg, dict):
            return
        layer = cfg.get("name")
        label = f"Lambda layer {layer!r}" if isinstance(layer, str) else "Lambda layer"
        for key in ("function", "output_shape"):
            fn = cfg.get(key)
            ftype = cfg.get(f"{key}_type")
            if isinstance(fn, dict) and fn.get("class_name") == "__lambda__":
                self._handled.add(id(fn))
                inner = fn.get("config")
                code = inner.get("code", inner.get("value")) if isinstance(inner, dict) else None
                self._code(code, where, f"{label} ({key})")
            elif ftype == "lambda" or (ftype is None and isinstance(fn, (str, list))
                                       and _looks_like_bytecode(fn)):
                self._code(fn, where, f"{label} ({key})")
            elif ftype in ("function", "raw") and isinstance(fn, str):
                # Keras 2: the function is looked up by name in the globals of `module`
                module = cfg.get("module" if key == "function" else f"{key}_module")
                if isinstance(module, str) and module and module != "__main__":
                    self._ref(module, fn, where)

    def _code(self, code: object, where: str, label: str) -> None:
        raw = _decode_code(code)
        size, strings = len(raw), _code_strings(raw)
        danger = [s for s in strings if s in _CODE_DANGER or s.split(".")[0] in _CODE_DANGER]
        severity = Severity.CRITICAL if (self.legacy_h5 or danger) else Severity.HIGH
        evidence = f"{label} carries {size} bytes of marshalled Python bytecode"
        if strings:
            evidence += f" using {', '.join(repr(s) for s in strings[:12])}"
        if self.legacy_h5:
            evidence += "; HDF5 models ignore safe_mode (CVE-2025-9905)"
        else:
            evidence += "; runs on load with safe_mode=False (CVE-2024-3660)"
        self.add("TG-KER-001", f"code:{where}", evidence, where, severity)

    def _ref(self, module: str, name: str, where: str) -> None:
        full = f"{module}.{name}"
        if module.split(".", 1)[0] in KERAS_PACKAGES:
            sab = sabotage(full)
            if sab is not None and sab.rule_id is not None:
                self.add(sab.rule_id, full, f"config calls {full}: {sab.reason}", where,
                         sab.severity)
            elif name in _KERAS_UNSAFE:
                self.add("TG-KER-003", full, f"config resolves {full}: {_KERAS_UNSAFE[name]}",
                         where)
            return
        verdict = self.ctx.policy.classify(module, name, {CALL})
        if verdict.rule_id is None:
            return
        if verdict.rule_id.startswith("TG-SAB-"):
            self.add(verdict.rule_id, full, f"config calls {full}: {verdict.reason}", where,
                     verdict.severity)
        elif verdict.rule_id == "TG-PKL-001":
            self.add("TG-KER-003", full, f"config resolves {full}: {verdict.reason} "
                     "(arbitrary imports: CVE-2025-1550)", where)
        elif module != "builtins":  # builtins + name: Keras's own functions (relu, mse...)
            self.add("TG-KER-002", full, f"config imports {full} from outside Keras", where)


def check_keras_config(ctx: ScanContext, blob: Blob, doc: object, *, legacy_h5: bool = False,
                       offset: int | None = None) -> bool:
    """Check a parsed JSON document as a Keras config; False if it holds no Keras objects.

    ``legacy_h5`` marks configs read from HDF5 files, where Lambda bytecode runs even with
    ``safe_mode=True``.
    """
    if not isinstance(doc, (dict, list)):
        return False
    checker = _ConfigChecker(ctx, legacy_h5)
    checker.run(doc)
    if not checker.keras:
        return False
    for (rule_id, _), hit in checker.hits.items():
        ctx.add(rule_id, blob, f"{hit.evidence} (at {hit.where})", offset=offset,
                severity=hit.severity, count=hit.count)
    ctx.saw("keras")
    return True


# ------------------------------------------------------------------------------- HDF5
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_CHUNK = 8 << 20
_CTRL = rb"\x00-\x08\x0b\x0c\x0e-\x1f"
# JSON text never contains raw control characters other than whitespace, so a JSON object lies
# inside one run of bytes without them.
_RUN = re.compile(rb"[^" + _CTRL + rb"]*")
_ONE_CTRL = re.compile(rb"[" + _CTRL + rb"]")
# A Keras object has a "class_name" key, spelled out or with JSON escapes of its ASCII letters
# (\u0063lass_name): only runs holding one of these are decoded. Both are found with bytes.find.
_TRIGGERS = (b"class_name", b"\\u00")
# The shortest Keras-like object, {"class_name":"","module":1}, has 28 characters.
_MIN_RUN = 24
# The unfinished run at the end of a chunk is carried into the next one up to this length.
_MAX_CARRY = 1 << 20
# A JSON object starts with '{', optional whitespace and a string key.
_CANDIDATE_STR = re.compile(r'\{[\t\n\r ]*"')
# Separate runs holding a trigger, per chunk: random tensor bytes have none; a Keras file has one
# or two. More means a flood of fragments, ended before it costs more than ~10 ms per chunk.
_MAX_RUNS_PER_CHUNK = 4096
# Decoding work charged per object and per failed attempt (at least), against 1/16 of
# max_header_bytes: a failed attempt costs up to its error position, which json scans to count
# lines, so fragments that fail late end in a limit finding instead of quadratic work.
_OBJECT_COST = 256
_MIN_ATTEMPT_COST = 1024


class _Decoder:
    """Decodes the JSON objects of one byte run, under a shared work budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.spent = 0
        self._json = json.JSONDecoder()

    def objects(self, run: bytes, base: int) -> Iterator[tuple[int, dict[str, object]]]:
        text = run.decode("utf-8", errors="surrogateescape")
        resume = 0
        at_char, at_byte = 0, base  # offsets advance together, so reporting stays linear
        for m in _CANDIDATE_STR.finditer(text):
            i = m.start()
            if i < resume:
                continue
            try:
                obj, end = self._json.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                # JSONDecodeError counts the lines up to its position, from the start of text
                cost = len(text) if exc.msg.startswith("Unterminated") else exc.pos
                self.charge(cost, _MIN_ATTEMPT_COST)
                continue
            except (ValueError, RecursionError):
                # nesting past the recursion limit, integers over sys.get_int_max_str_digits()
                self.charge(len(text), _MIN_ATTEMPT_COST)
                continue
            self.charge(0, _OBJECT_COST)
            resume = end
            if isinstance(obj, dict):
                at_byte += len(text[at_char:i].encode("utf-8", errors="surrogateescape"))
                at_char = i
                yield at_byte, obj

    def charge(self, cost: int, minimum: int) -> None:
        """Count ``cost`` (at least ``minimum``) against the budget."""
        self.spent += max(cost, minimum)
        if self.spent > self.budget:
            raise LimitExceeded("max_header_bytes", self.budget,
                                "JSON-like fragments in an HDF5 file")


class _Finder:
    """Next occurrence of one needle, remembered in file offsets so no byte is searched twice
    (re-searching a chunk for an absent needle at every hit of the other would be quadratic)."""

    def __init__(self, needle: bytes) -> None:
        self.needle = needle
        self.found = -1  # file offset of the last occurrence found
        self.clear_to = 0  # file offset up to which no occurrence after `found` remains

    def next(self, buf: bytearray, base: int, pos: int) -> int:
        """Index in ``buf`` of the next occurrence at or after ``pos``, or -1."""
        if self.found >= base + pos:
            return self.found - base
        # a needle cut by the previous end of the buffer is searched again
        start = max(pos, self.clear_to - base - len(self.needle) + 1, 0)
        i = buf.find(self.needle, start)
        if i < 0:
            self.clear_to = base + len(buf)
            return -1
        self.found = self.clear_to = base + i
        return i


def _run_start(buf: bytearray, q: int, floor: int) -> int:
    """Start of the run of non-control bytes that holds ``buf[q]`` (not before ``floor``)."""
    step = 256
    while True:
        lo = max(floor, q - step)
        m = _ONE_CTRL.search(buf[q - 1:lo - 1 if lo else None:-1]) if q > lo else None
        if m is not None:
            return q - m.start()
        if lo == floor:
            return floor
        step *= 16


def iter_json_objects(f: BinaryIO, max_bytes: int) -> Iterator[tuple[int, dict[str, object]]]:
    """(offset, object) for every Keras-like JSON object stored as plain bytes in a stream.

    Reads in chunks; memory is one chunk plus the longest run decoded, bounded by ``max_bytes``,
    and the work spent on runs that are not JSON is bounded by ``max_bytes`` too.
    """
    decoder = _Decoder(max(max_bytes // 16, 1 << 20))
    runs = 0
    finders = [_Finder(t) for t in _TRIGGERS]
    buf = bytearray()
    base = 0  # file offset of buf[0]
    pos = 0  # buf[:pos] is done; a run never starts before pos
    eof = False
    while True:
        if not eof and len(buf) - pos < _CHUNK:
            data = f.read(_CHUNK)
            eof = not data
            del buf[:pos]
            base += pos
            pos = 0
            buf += data
            runs = 0
        hits = [i for i in (finder.next(buf, base, pos) for finder in finders) if i >= 0]
        if not hits:
            if eof:
                return
            # carry the unfinished last run: its trigger may be in the next chunk
            floor = max(pos, len(buf) - _MAX_CARRY)
            start = _run_start(buf, len(buf), floor)
            pos = len(buf) if start == floor > pos else start  # a longer run is dropped
            continue
        q = min(hits)
        start = _run_start(buf, q, pos)
        end = _RUN.match(buf, q).end()  # type: ignore[union-attr]
        while end == len(buf) and not eof:
            if end - start > max_bytes:
                raise LimitExceeded("max_header_bytes", max_bytes, "run of text in an HDF5 file")
            data = f.read(_CHUNK)
            if not data:
                eof = True
                break
            del buf[:start]
            base += start
            end -= start
            q -= start
            start = 0
            buf += data
            end = _RUN.match(buf, end).end()  # type: ignore[union-attr]
        runs += 1
        if runs > _MAX_RUNS_PER_CHUNK:
            raise LimitExceeded("max_header_bytes", max_bytes,
                                f"over {_MAX_RUNS_PER_CHUNK} text fragments in {_CHUNK >> 20} MiB "
                                "of an HDF5 file")
        if end - start >= _MIN_RUN:
            yield from decoder.objects(bytes(buf[start:end]), base + start)
        pos = max(end, q + 1)


def analyze_hdf5(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    """Keras ``.h5`` models (``model_config``/``training_config`` attributes) and plain HDF5 data.

    An HDF5 file without a Keras config is data only: it is recognised, with no finding.
    """
    if HDF5_MAGIC not in head:  # at 0 or after a user block (sniff checks the offsets)
        return False
    with blob.opener() as f:
        for offset, doc in iter_json_objects(f, ctx.limits.max_header_bytes):
            check_keras_config(ctx, blob, doc, legacy_h5=True, offset=offset)
    return True
