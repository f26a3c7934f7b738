"""A small, bounded reader of the protobuf wire format, and the protobuf analyzer entry point.

ONNX models and TensorFlow SavedModels/GraphDefs are protobuf messages. Loading them with the
``onnx`` or ``tensorflow`` packages is both heavy and unsafe on hostile input, so this module
reads the wire format directly (https://protobuf.dev/programming-guides/encoding/):

* a record is a *tag* varint ``(field_number << 3) | wire_type`` followed by its value;
* wire type 0 is a varint (at most 10 bytes), 1 a little-endian 64-bit value, 2 a varint length
  followed by that many bytes (strings, bytes, sub-messages, packed arrays), 5 a 32-bit value;
* wire types 3 and 4 (proto2 groups) are not used by ONNX or TensorFlow and are refused.

Every length is checked against the enclosing message before it is trusted, nesting is limited
to protobuf's own default recursion limit, and payloads nobody needs (tensor bytes) are skipped
by seeking, never read. What the file holds (ONNX, SavedModel, GraphDef, Keras metadata or none of
these) is decided from the structure of its top-level fields, never from its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.scan.context import Blob, ScanContext

VARINT, I64, LEN, I32 = 0, 1, 2, 5

#: protobuf's default recursion limit (``io::CodedInputStream::kDefaultRecursionLimit``): ONNX and
#: TensorFlow refuse messages nested deeper, so deeper nesting is malformed input, not a model.
MAX_DEPTH = 100

_WINDOW = 1 << 20
#: bytes charged per record parsed against max_header_bytes (16M records by default): the work
#: is per record, whatever its size
_RECORD_COST = 16


class Field(NamedTuple):
    """One record of a message: for ``LEN`` fields ``value`` is the payload's offset."""

    number: int
    wire: int
    value: int
    length: int
    #: offset of the record's tag, for findings
    offset: int

    @property
    def end(self) -> int:
        """Offset just past a ``LEN`` payload."""
        return self.value + self.length


class WireReader:
    """Parses protobuf records out of a seekable stream through a sliding window.

    Memory use is one window plus whatever the caller asks :meth:`read` for; time is linear in the
    records of the messages the caller descends into. ``budget`` bounds the records parsed
    (``_RECORD_COST`` each), so a file of millions of tiny records ends in
    :class:`LimitExceeded`.
    """

    def __init__(self, f: BinaryIO, size: int, budget: int, window: int = _WINDOW) -> None:
        self._f = f
        self.size = size
        self._window = max(window, 16)  # a varint (10 bytes) must fit in one window
        self._buf = b""
        self._base = 0
        self._budget = budget
        self._parsed = 0

    # ------------------------------------------------------------------ raw access
    def _fill(self, pos: int) -> None:
        self._f.seek(pos)
        self._buf = self._f.read(self._window)
        self._base = pos

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes at ``start`` (the caller bounds ``length``)."""
        if start < 0 or length < 0 or start + length > self.size:
            raise MalformedInput("read past the end of the message", start)
        i = start - self._base
        if i >= 0 and i + length <= len(self._buf):
            return self._buf[i:i + length]
        if length <= self._window:
            self._fill(start)
            data = self._buf[:length]
        else:
            self._f.seek(start)
            data = self._f.read(length)
        if len(data) != length:
            raise MalformedInput("truncated: stream shorter than its declared size", start)
        return data

    def read_varint(self, pos: int, end: int) -> tuple[int, int]:
        """(value, offset after it) of the varint at ``pos``, which must end before ``end``."""
        buf = self._buf
        i = pos - self._base
        if i < 0 or (i + 10 > len(buf) and self._base + len(buf) < self.size):
            self._fill(pos)
            buf, i = self._buf, 0
        stop = min(end, pos + 10) - pos + i  # a varint has at most 10 bytes
        result = shift = 0
        while i < stop and i < len(buf):
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, self._base + i
            shift += 7
        raise MalformedInput("truncated or overlong varint", pos)

    # ------------------------------------------------------------------ records
    def fields(self, start: int, end: int) -> Iterator[Field]:
        """The records of the message stored in ``[start, end)``, in file order."""
        if end > self.size or start > end:
            raise MalformedInput("message extends past the end of its container", start)
        pos = start
        while pos < end:
            tag_at = pos
            # Fast path: tag and value/length are one byte each (most records of ONNX and
            # TensorFlow graphs) and lie in the window; anything else takes read_varint.
            i = pos - self._base
            buf = self._buf
            if i >= 0 and i + 2 < len(buf) and pos + 2 <= end and buf[i] < 0x80 \
                    and buf[i + 1] < 0x80:
                key, second = buf[i], buf[i + 1]
                pos += 2
            else:
                key, pos = self.read_varint(pos, end)
                second = -1
            number, wire = key >> 3, key & 7
            if number == 0 or number >= 1 << 29:
                raise MalformedInput(f"invalid field number {number}", tag_at)
            self._parsed += _RECORD_COST
            if self._parsed > self._budget:
                raise LimitExceeded("max_header_bytes", self._budget, "protobuf structure parsed")
            if wire in (VARINT, LEN):
                if second < 0:
                    value, pos = self.read_varint(pos, end)
                else:
                    value = second
                if wire == VARINT:
                    yield Field(number, wire, value, 0, tag_at)
                    continue
                if value > end - pos:
                    raise MalformedInput(
                        f"field {number}: length {value} exceeds the {end - pos} bytes left in "
                        "its message", tag_at)
                yield Field(number, wire, pos, value, tag_at)
                pos += value
            elif wire in (I64, I32):
                if second >= 0:
                    pos -= 1  # the byte after the tag is the value's first byte
                n = 8 if wire == I64 else 4
                if n > end - pos:
                    raise MalformedInput(f"field {number}: truncated fixed-width value", tag_at)
                value = int.from_bytes(self.read(pos, n), "little")
                pos += n
                yield Field(number, wire, value, 0, tag_at)
            else:
                raise MalformedInput(
                    f"field {number}: wire type {wire} (groups and reserved types are not used by "
                    "ONNX or TensorFlow)", tag_at)

    def text(self, field: Field, cap: int = 4096) -> str:
        """A string field, decoded leniently and cut at ``cap`` bytes (for evidence and names)."""
        data = self.read(field.value, min(field.length, cap))
        s = data.decode("utf-8", errors="replace")
        return s if field.length <= cap else s + "..."


def check_depth(depth: int, offset: int) -> None:
    """Refuse nesting deeper than protobuf loaders accept."""
    if depth > MAX_DEPTH:
        raise MalformedInput(f"messages nested deeper than protobuf's limit of {MAX_DEPTH}", offset)


class TopLevel(NamedTuple):
    """What the top-level records of a stream look like, gathered up to the first error."""

    #: field number -> wire types seen (including the record whose payload broke the parse)
    seen: dict[int, set[int]]
    #: the first record of each field number
    first: dict[int, Field]
    error: MalformedInput | None


def scan_top(reader: WireReader) -> TopLevel:
    """Summarise the top-level records; a wire-format error is returned, not raised."""
    seen: dict[int, set[int]] = {}
    first: dict[int, Field] = {}

    def note(f: Field) -> None:
        seen.setdefault(f.number, set()).add(f.wire)
        first.setdefault(f.number, f)

    try:
        for f in reader.fields(0, reader.size):
            note(f)
    except MalformedInput as exc:
        # The record whose length overran the stream still names its field: a truncated ONNX
        # file still says "graph" where it breaks, and that identifies the format.
        if exc.offset is not None:
            try:
                key, _ = reader.read_varint(exc.offset, reader.size)
            except MalformedInput:
                pass
            else:
                if key >> 3:
                    note(Field(key >> 3, key & 7, exc.offset, 0, exc.offset))
        return TopLevel(seen, first, exc)
    return TopLevel(seen, first, None)


def _wires(fields: Iterator[Field]) -> dict[int, set[int]]:
    seen: dict[int, set[int]] = {}
    for f in fields:
        seen.setdefault(f.number, set()).add(f.wire)
    return seen


def _only(seen: dict[int, set[int]], allowed: dict[int, int]) -> bool:
    return all(n in allowed and wires == {allowed[n]} for n, wires in seen.items())


def _parses_as(reader: WireReader, f: Field, allowed: dict[int, int], need: set[int]) -> bool:
    """Whether a sub-message parses with only ``allowed`` fields, ``need`` among them."""
    if f.wire != LEN:
        return False
    try:
        got = _wires(reader.fields(f.value, f.end))
    except (MalformedInput, LimitExceeded):
        return False
    return _only(got, allowed) and need <= set(got)


# Field numbers and wire types of the messages used to tell the formats apart.
# onnx/onnx.proto ModelProto: ir_version=1, producer_name=2, producer_version=3, domain=4,
# model_version=5, doc_string=6, graph=7, opset_import=8, metadata_props=14, training_info=20,
# functions=25.
_ONNX_MODEL = {1: VARINT, 2: LEN, 3: LEN, 4: LEN, 5: VARINT, 6: LEN, 7: LEN, 8: LEN, 14: LEN,
               20: LEN, 25: LEN}
# tensorflow/core/protobuf/saved_model.proto: saved_model_schema_version=1, meta_graphs=2.
_SAVED_MODEL = {1: VARINT, 2: LEN}
# meta_graph.proto MetaGraphDef: meta_info_def=1, graph_def=2, saver_def=3, collection_def=4,
# signature_def=5, asset_file_def=6, object_graph_def=7.
_META_GRAPH = dict.fromkeys(range(1, 8), LEN)
# graph.proto GraphDef: node=1, library=2, version=3 (deprecated), versions=4.
_GRAPH_DEF = {1: LEN, 2: LEN, 3: VARINT, 4: LEN}
# node_def.proto NodeDef: name=1, op=2, input=3, device=4, attr=5, experimental_debug_info=6,
# experimental_type=7.
_NODE_DEF = {1: LEN, 2: LEN, 3: LEN, 4: LEN, 5: LEN, 6: LEN, 7: LEN}
# keras/protobuf/saved_metadata.proto SavedMetadata: nodes=1 -> SavedObject: version=1,
# node_id=2, node_path=3, identifier=4, metadata=5 (JSON).
_KERAS_META = {1: LEN}
_SAVED_OBJECT = {1: LEN, 2: VARINT, 3: LEN, 4: LEN, 5: LEN}


def classify(reader: WireReader, top: TopLevel) -> str | None:
    """``onnx``, ``savedmodel``, ``graphdef``, ``keras-metadata`` or None, from the structure."""
    seen, first = top.seen, top.first
    ir = first.get(1)
    # ir_version and graph identify a ModelProto; the other known fields must have their wire
    # types (an ONNX TensorProto file has data_type=2 as a varint, where ModelProto has a string).
    if (ir is not None and ir.wire == VARINT and 1 <= ir.value <= 1000
            and all(_ONNX_MODEL[n] in ws for n, ws in seen.items() if n in _ONNX_MODEL)
            and seen.get(7) == {LEN}):
        return "onnx"
    if _only(seen, _SAVED_MODEL) and 2 in seen and (
            1 in seen or _parses_as(reader, first[2], _META_GRAPH, set())):
        return "savedmodel"
    if 1 in seen and _only(seen, _GRAPH_DEF) and _parses_as(reader, first[1], _NODE_DEF, {2}):
        return "graphdef"
    if 1 in seen and _only(seen, _KERAS_META) and _parses_as(reader, first[1], _SAVED_OBJECT,
                                                              {5}):
        return "keras-metadata"
    return None


def analyze_protobuf(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    """ONNX models, TensorFlow SavedModels and GraphDefs, Keras 2 ``keras_metadata.pb``.

    Bytes that do not parse as one of these return False (the file is skipped); once the
    top-level structure says which format it is, any later parse error is a finding.
    """
    from trainguard.scan.analyzers.onnx import scan_onnx
    from trainguard.scan.analyzers.tensorflow import (
        scan_graph_def,
        scan_keras_metadata,
        scan_saved_model,
    )

    blob = ctx.materialize(blob)
    assert blob.size is not None
    with blob.opener() as f:
        reader = WireReader(f, blob.size, ctx.limits.max_header_bytes)
        top = scan_top(reader)
        kind = classify(reader, top)
        if kind is None:
            return False
        if top.error is not None:
            raise MalformedInput(f"{kind}: {top.error.message}", top.error.offset)
        if kind == "onnx":
            scan_onnx(ctx, blob, reader)
        elif kind == "savedmodel":
            scan_saved_model(ctx, blob, reader)
        elif kind == "graphdef":
            scan_graph_def(ctx, blob, reader)
        else:
            scan_keras_metadata(ctx, blob, reader)
    ctx.saw(kind)
    return True
