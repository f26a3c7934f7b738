"""TensorFlow SavedModel (``saved_model.pb``), frozen GraphDefs and Keras 2 ``keras_metadata.pb``.

A SavedModel's graph runs when the model is served or called: ops that read, write or list files,
or call back into Python, act on the host. Field numbers follow tensorflow/core/protobuf and
tensorflow/core/framework:

* SavedModel: saved_model_schema_version=1, meta_graphs=2 (MetaGraphDef)
* MetaGraphDef: graph_def=2 (GraphDef), saver_def=3 (SaverDef: filename_tensor_name=1)
* GraphDef: node=1 (NodeDef), library=2 (FunctionDefLibrary: function=1 -> FunctionDef)
* FunctionDef: signature=1 (OpDef: name=1), node_def=3 (NodeDef)
* NodeDef: name=1, op=2, attr=5 (map entry: key=1, value=2 -> AttrValue: list=1, s=2;
  ListValue: s=2)

Every node of the main graph and of every library function is checked, reachable or not.
Checkpoint ops (SaveV2, RestoreV2, MergeV2Checkpoints...) are part of every SavedModel: they pass
inside the saver that TensorFlow itself generates (TF1 ``save/`` scope, TF2
``__inference__traced_save_N``/``_restore_N`` functions) and are reported anywhere else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.core.findings import Severity
from trainguard.scan.analyzers.protobuf import LEN, Field, WireReader
from trainguard.scan.context import Blob, ScanContext

_C, _H, _M = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM


def _ops(severity: Severity, what: str, names: str) -> dict[str, tuple[Severity, str]]:
    return dict.fromkeys(names.split(), (severity, what))


#: op type -> (severity, what it does to the host)
RISKY_OPS: dict[str, tuple[Severity, str]] = {
    # call back into Python functions of the serving process
    **_ops(_C, "runs Python code", "PyFunc PyFuncStateless EagerPyFunc"),
    # file system
    "ReadFile": (_H, "reads a file"),
    "WriteFile": (_H, "writes a file"),
    "MatchingFiles": (_H, "lists files by glob pattern"),
    "ImmutableConst": (_H, "memory-maps a file named in the graph"),
    "LoadAndRemapMatrix": (_H, "reads a checkpoint file"),
    **_ops(_H, "reads or writes checkpoint files",
           "Save SaveV2 SaveSlices Restore RestoreV2 RestoreSlice MergeV2Checkpoints"),
    **_ops(_H, "reads files through a reader",
           """WholeFileReader WholeFileReaderV2 TextLineReader TextLineReaderV2
           FixedLengthRecordReader FixedLengthRecordReaderV2 TFRecordReader TFRecordReaderV2
           LMDBReader"""),
    **_ops(_H, "reads files as a dataset",
           """TFRecordDataset TFRecordDatasetV2 TextLineDataset FixedLengthRecordDataset
           FixedLengthRecordDatasetV2 LMDBDataset ExperimentalLMDBDataset CSVDataset CSVDatasetV2
           ExperimentalCSVDataset LoadDataset ExperimentalLoadDataset"""),
    **_ops(_H, "writes files",
           """DatasetToTFRecord ExperimentalDatasetToTFRecord SaveDataset SaveDatasetV2
           SnapshotDataset SnapshotDatasetV2 DistributedSave CreateSummaryFileWriter"""),
    **_ops(_H, "opens a database", "SqlDataset ExperimentalSqlDataset CreateSummaryDbWriter"),
    **_ops(_H, "reaches the network",
           """DataServiceDataset DataServiceDatasetV2 DataServiceDatasetV3 DataServiceDatasetV4
           RegisterDataset RegisterDatasetV2"""),
    # lookup tables built from a vocabulary file (normally a SavedModel asset)
    **_ops(_M, "reads a vocabulary file",
           "InitializeTableFromTextFile InitializeTableFromTextFileV2"),
}
_CHECKPOINT_OPS = frozenset(
    {"Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints"}
)
# Ops that touch the host only when an attribute says so: op -> (attribute, predicate, what).
_DEBUG_OPS = ("DebugIdentity", "DebugIdentityV2", "DebugNanCount", "DebugNumericSummary",
              "DebugNumericSummaryV2")
_ATTR_OPS = {"PrintV2": "output_stream", "DecodeProtoV2": "descriptor_source",
             "EncodeProto": "descriptor_source", **dict.fromkeys(_DEBUG_OPS, "debug_urls")}

# The saver TensorFlow generates: TF1 tf.train.Saver scope, TF2 traced save/restore functions.
_SAVER_SCOPE = re.compile(r"^save(_\d+)?/")
_SAVER_FUNCTION = re.compile(r"^__inference_(_traced_(save|restore)|save_fn|restore_fn)_\d+$")
_MAX_NAME = 256
_MAX_ATTR = 4096


def _attr_risk(op: str, values: list[str]) -> str | None:
    """What an attribute-driven op does to the host, or None when it stays in the process."""
    if op == "PrintV2":
        if any(v.startswith("file://") for v in values):
            return "prints to a file"
        return None
    if op in ("DecodeProtoV2", "EncodeProto"):
        if any(v and v != "local://" for v in values):
            return "reads a protobuf descriptor file"
        return None
    urls = [v for v in values if v and not v.startswith("file:///dev/null")]
    if any(u.startswith(("file://", "grpc://")) for u in urls):
        return "writes debug dumps to a file or server"
    return None


@dataclass
class _Hits:
    severity: Severity
    what: str
    offset: int
    nodes: list[str] = field(default_factory=list)
    count: int = 0


class _GraphScanner:
    def __init__(self, ctx: ScanContext, blob: Blob, reader: WireReader) -> None:
        self.ctx = ctx
        self.blob = blob
        self.r = reader
        self.hits: dict[str, _Hits] = {}

    def report(self) -> None:
        for op, h in sorted(self.hits.items(), key=lambda kv: (-kv[1].severity, kv[0])):
            more = f" and {h.count - len(h.nodes)} more" if h.count > len(h.nodes) else ""
            self.ctx.add("TG-TF-001", self.blob,
                         f"op {op} ({h.what}) in {h.count} node(s): {', '.join(h.nodes)}{more}",
                         offset=h.offset, severity=h.severity, count=h.count, op=op)

    def _hit(self, op: str, severity: Severity, what: str, node: str, offset: int) -> None:
        h = self.hits.setdefault(op, _Hits(severity, what, offset))
        h.count += 1
        if len(h.nodes) < 5:
            h.nodes.append(node)

    # MetaGraphDef: graph_def=2
    def meta_graph(self, msg: Field) -> None:
        for f in self.r.fields(msg.value, msg.end):
            if f.wire == LEN and f.number == 2:
                self.graph_def(f.value, f.end)

    # GraphDef: node=1, library=2
    def graph_def(self, start: int, end: int) -> None:
        for f in self.r.fields(start, end):
            if f.wire != LEN:
                continue
            if f.number == 1:
                self.node(f, "", saver=False)
            elif f.number == 2:
                self.library(f)

    # FunctionDefLibrary: function=1
    def library(self, msg: Field) -> None:
        for f in self.r.fields(msg.value, msg.end):
            if f.wire == LEN and f.number == 1:
                self.function(f)

    # FunctionDef: signature=1 (OpDef name=1), node_def=3. Nodes are collected first: the
    # signature (which names the function) may come after them in a hostile file.
    def function(self, msg: Field) -> None:
        name = ""
        nodes: list[Field] = []
        for f in self.r.fields(msg.value, msg.end):
            if f.wire != LEN:
                continue
            if f.number == 1:
                for s in self.r.fields(f.value, f.end):
                    if s.wire == LEN and s.number == 1:
                        name = self.r.text(s, _MAX_NAME)
            elif f.number == 3:
                nodes.append(f)
        saver = bool(_SAVER_FUNCTION.match(name))
        for n in nodes:
            self.node(n, f"{name or '?'}/", saver=saver)

    # NodeDef: name=1, op=2, attr=5
    def node(self, msg: Field, prefix: str, *, saver: bool) -> None:
        name = op = ""
        attrs: list[Field] = []
        for f in self.r.fields(msg.value, msg.end):
            if f.wire != LEN:
                continue
            if f.number == 1:
                name = self.r.text(f, _MAX_NAME)
            elif f.number == 2:
                op = self.r.text(f, _MAX_NAME)
            elif f.number == 5 and len(attrs) < 64:
                attrs.append(f)
        where = f"{prefix}{name or '?'}"
        risky = RISKY_OPS.get(op)
        if risky is not None:
            if op in _CHECKPOINT_OPS and (saver or (not prefix and _SAVER_SCOPE.match(name))):
                return
            self._hit(op, risky[0], risky[1], where, msg.offset)
        elif op in _ATTR_OPS:
            what = _attr_risk(op, self._attr_strings(attrs, _ATTR_OPS[op]))
            if what:
                self._hit(op, _H, what, where, msg.offset)

    def _attr_strings(self, attrs: list[Field], key: str) -> list[str]:
        """The string (or list of strings) value of attribute ``key``."""
        out: list[str] = []
        for entry in attrs:
            k, value = None, None
            for f in self.r.fields(entry.value, entry.end):
                if f.wire == LEN and f.number == 1:
                    k = self.r.text(f, _MAX_NAME)
                elif f.wire == LEN and f.number == 2:
                    value = f
            if k != key or value is None:
                continue
            for v in self.r.fields(value.value, value.end):
                if v.wire != LEN:
                    continue
                if v.number == 2:  # AttrValue.s
                    out.append(self.r.text(v, _MAX_ATTR))
                elif v.number == 1:  # AttrValue.list -> ListValue.s=2
                    out.extend(self.r.text(s, _MAX_ATTR) for s in self.r.fields(v.value, v.end)
                               if s.wire == LEN and s.number == 2)
        return out


def scan_saved_model(ctx: ScanContext, blob: Blob, reader: WireReader) -> None:
    """Check every graph and function of a SavedModel for host-touching ops."""
    g = _GraphScanner(ctx, blob, reader)
    for f in reader.fields(0, reader.size):
        if f.wire == LEN and f.number == 2:
            g.meta_graph(f)
    g.report()


def scan_graph_def(ctx: ScanContext, blob: Blob, reader: WireReader) -> None:
    """Check a bare GraphDef (TF1 frozen graph) for host-touching ops."""
    g = _GraphScanner(ctx, blob, reader)
    g.graph_def(0, reader.size)
    g.report()


def scan_keras_metadata(ctx: ScanContext, blob: Blob, reader: WireReader) -> None:
    """Keras 2 ``keras_metadata.pb``: each saved object's JSON metadata holds its layer config."""
    from trainguard.scan.analyzers.keras import check_keras_config

    for node in reader.fields(0, reader.size):
        if node.wire != LEN or node.number != 1:
            continue
        for f in reader.fields(node.value, node.end):
            if f.wire != LEN or f.number != 5:
                continue
            if f.length > ctx.limits.max_header_bytes:
                raise LimitExceeded("max_header_bytes", ctx.limits.max_header_bytes,
                                    "keras_metadata object metadata")
            raw = reader.read(f.value, f.length)
            try:
                doc = json.loads(raw.decode("utf-8", errors="surrogateescape"))
            except ValueError as exc:
                raise MalformedInput(f"keras_metadata: object metadata is not JSON: {exc}",
                                     f.offset) from None
            check_keras_config(ctx, blob, doc)
