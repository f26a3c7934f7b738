"""ONNX models: external-data paths that leave the model directory, custom operator domains.

Field numbers follow onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto,
TensorProto, SparseTensorProto, FunctionProto, TrainingInfoProto). Every graph is walked: the main
graph, subgraphs held in node attributes (``If``/``Loop``/``Scan`` bodies), training-info graphs
and model-local functions, so a tensor or node hidden in a nested graph is seen like a top-level
one. Tensor payloads (``raw_data`` and the typed arrays) are skipped, never read.

* ``onnx.load`` and ONNX Runtime resolve a tensor's ``external_data`` ``location`` against the
  model's directory; ``..`` components or an absolute path read (and ``onnx.save`` writes) files
  anywhere (CVE-2022-25882, its bypass CVE-2024-27318; CVE-2024-5187 is the tar-extraction
  variant, which the archive walker reports).
* Nodes in domains other than the standard ones need a custom-operator library registered at
  load time.
"""

from __future__ import annotations

import re

from trainguard.scan.analyzers.protobuf import LEN, Field, WireReader, check_depth
from trainguard.scan.context import Blob, ScanContext

#: operator domains ONNX and ONNX Runtime implement themselves
STANDARD_DOMAINS = frozenset(
    {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training", "com.microsoft"}
)

# A location is only safe as a plain relative path: no scheme (file:, http:), no drive letter,
# no UNC or rooted path, no '..' component. NUL and other control characters truncate or confuse
# path handling in C++ loaders.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Longest location read for the check; real ones are short file names. Longer ones are reported.
_MAX_LOCATION = 4096
_MAX_NAME = 256


def location_problem(location: str) -> str | None:
    """Why an external-data ``location`` escapes the model directory, or None if it is plain."""
    if _CONTROL.search(location):
        return "control character in location"
    if location.startswith(("/", "\\")):
        return "absolute path"
    if _SCHEME.match(location):
        # also catches drive letters (C:...), file:/http: URLs and NTFS streams (name:stream)
        return "drive letter or URL scheme"
    if ".." in re.split(r"[\\/]", location):
        return "'..' path component"
    return None


class _Walker:
    """Walks one ModelProto, collecting findings into the context."""

    def __init__(self, ctx: ScanContext, blob: Blob, reader: WireReader) -> None:
        self.ctx = ctx
        self.blob = blob
        self.r = reader
        #: domain -> (op types, first node offset, count)
        self.domains: dict[str, tuple[set[str], int, int]] = {}
        #: (domain, name) of model-local functions: nodes calling them need no native library
        self.functions: set[tuple[str, str]] = set()
        #: (domain, op type) of nodes outside the standard domains -> (first offset, count)
        self.calls: dict[tuple[str, str], tuple[int, int]] = {}

    # ModelProto: graph=7, training_info=20, functions=25
    def model(self) -> None:
        for f in self.r.fields(0, self.r.size):
            if f.wire != LEN:
                continue
            if f.number == 7:
                self.graph(f, 1, "graph")
            elif f.number == 20:
                self.training_info(f, 1)
            elif f.number == 25:
                self.function(f, 1)
        for (domain, op_type), (offset, n) in self.calls.items():
            if (domain, op_type) in self.functions:
                continue
            ops, first, count = self.domains.get(domain, (set(), offset, 0))
            if len(ops) < 8:
                ops.add(op_type)
            self.domains[domain] = (ops, min(first, offset), count + n)
        for domain, (ops, first, count) in self.domains.items():
            self.ctx.add("TG-ONNX-002", self.blob,
                         f"{count} node(s) in custom domain {domain!r} "
                         f"(ops: {', '.join(sorted(ops))})",
                         offset=first, count=count, domain=domain)

    # TrainingInfoProto: initialization=1, algorithm=2 (GraphProto)
    def training_info(self, msg: Field, depth: int) -> None:
        check_depth(depth, msg.offset)
        for f in self.r.fields(msg.value, msg.end):
            if f.wire == LEN and f.number in (1, 2):
                self.graph(f, depth + 1, "training_info")

    # FunctionProto: name=1, node=7, domain=10, attribute_proto=11
    def function(self, msg: Field, depth: int) -> None:
        check_depth(depth, msg.offset)
        name = domain = ""
        for f in self.r.fields(msg.value, msg.end):
            if f.wire != LEN:
                continue
            if f.number == 1:
                name = self.r.text(f, _MAX_NAME)
            elif f.number == 10:
                domain = self.r.text(f, _MAX_NAME)
            elif f.number == 7:
                self.node(f, depth + 1, f"function {name or '?'}")
            elif f.number == 11:
                self.attribute(f, depth + 1, f"function {name or '?'}")
        self.functions.add((domain, name))

    # GraphProto: node=1, name=2, initializer=5, sparse_initializer=15
    def graph(self, msg: Field, depth: int, where: str) -> None:
        check_depth(depth, msg.offset)
        for f in self.r.fields(msg.value, msg.end):
            if f.wire != LEN:
                continue
            if f.number == 1:
                self.node(f, depth + 1, where)
            elif f.number == 5:
                self.tensor(f, depth + 1, where)
            elif f.number == 15:
                self.sparse_tensor(f, depth + 1, where)

    # NodeProto: name=3, op_type=4, attribute=5, domain=7
    def node(self, msg: Field, depth: int, where: str) -> None:
        check_depth(depth, msg.offset)
        op_type = domain = ""
        name: Field | None = None  # decoded only for evidence, when the node has attributes
        for f in self.r.fields(msg.value, msg.end):
            if f.wire != LEN:
                continue
            if f.number == 4:
                op_type = self.r.text(f, _MAX_NAME)
            elif f.number == 7:
                domain = self.r.text(f, _MAX_NAME)
            elif f.number == 3:
                name = f
            elif f.number == 5:
                label = self.r.text(name, _MAX_NAME) if name is not None else op_type or "node"
                self.attribute(f, depth + 1, f"{where}/{label}")
        if domain not in STANDARD_DOMAINS:
            first, n = self.calls.get((domain, op_type), (msg.offset, 0))
            self.calls[(domain, op_type)] = (first, n + 1)

    # AttributeProto: t=5, g=6, tensors=10, graphs=11, sparse_tensor=22, sparse_tensors=23
    def attribute(self, msg: Field, depth: int, where: str) -> None:
        check_depth(depth, msg.offset)
        for f in self.r.fields(msg.value, msg.end):
            if f.wire != LEN:
                continue
            if f.number in (5, 10):
                self.tensor(f, depth + 1, where)
            elif f.number in (6, 11):
                self.graph(f, depth + 1, where)
            elif f.number in (22, 23):
                self.sparse_tensor(f, depth + 1, where)

    # SparseTensorProto: values=1, indices=2 (TensorProto)
    def sparse_tensor(self, msg: Field, depth: int, where: str) -> None:
        check_depth(depth, msg.offset)
        for f in self.r.fields(msg.value, msg.end):
            if f.wire == LEN and f.number in (1, 2):
                self.tensor(f, depth + 1, where)

    # TensorProto: name=8, external_data=13 (StringStringEntryProto key=1 value=2). Locations are
    # checked whatever data_location=14 says; raw_data=9 and the typed arrays are skipped.
    def tensor(self, msg: Field, depth: int, where: str) -> None:
        check_depth(depth, msg.offset)
        name = ""
        locations: list[tuple[str, int, int]] = []
        for f in self.r.fields(msg.value, msg.end):
            if f.number == 8 and f.wire == LEN:
                name = self.r.text(f, _MAX_NAME)
            elif f.number == 13 and f.wire == LEN:
                key = value = None
                for e in self.r.fields(f.value, f.end):
                    if e.wire == LEN and e.number == 1:
                        key = self.r.text(e, 64)
                    elif e.wire == LEN and e.number == 2:
                        value = e
                if key == "location" and value is not None:
                    locations.append((self.r.text(value, _MAX_LOCATION), value.length, f.offset))
        for location, length, offset in locations:
            problem = ("location longer than any real path" if length > _MAX_LOCATION
                       else location_problem(location))
            if problem:
                self.ctx.add("TG-ONNX-001", self.blob,
                             f"tensor {name or '?'} ({where}): external data location "
                             f"{location[:200]!r}: {problem}",
                             offset=offset, tensor=name,
                             external_location=location[:_MAX_LOCATION])


def scan_onnx(ctx: ScanContext, blob: Blob, reader: WireReader) -> None:
    """Walk an ONNX ModelProto for external-data path escapes and custom operator domains."""
    _Walker(ctx, blob, reader).model()
