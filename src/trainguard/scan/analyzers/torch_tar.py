"""The legacy PyTorch tar checkpoint (torch < 0.4), still loaded by ``torch.load``.

``torch/serialization.py: legacy_load`` reads three members. ``storages``: a pickled count, then per
storage a pickled ``(key, location, storage_type)`` followed by an int64 element count and the raw
bytes, then a pickled list of storage views. ``tensors``: a pickled count, then per tensor a pickled
``(key, storage_id, type)`` followed by int32 ndim, 4 padding bytes, ndim int64 sizes, ndim int64
strides and an int64 offset. ``pickle``: the object itself. Every one of those pickles is executed
by the loader (and ``weights_only=True`` refuses the format), so each is analysed; the raw bytes in
between are stepped over, never read as opcodes.
"""

from __future__ import annotations

import struct

from trainguard.artifacts.reader import Reader
from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.scan.context import Blob, ScanContext
from trainguard.scan.pickle.machine import PickleMachine
from trainguard.scan.pickle.values import Global, StreamResult, describe

# Element sizes of the legacy typed storages (torch._utils._element_size of their dtype).
_ELEMENT_SIZE = {
    "FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "QInt8Storage": 1,
    "QUInt8Storage": 1, "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
}
_MAX_NDIM = 64


class _Broken(Exception):
    """A pickle in the member did not complete; its result holds the error."""


def scan_legacy_tar_member(ctx: ScanContext, blob: Blob, name: str, depth: int) -> None:
    """Analyse every pickle of a legacy ``storages`` or ``tensors`` member."""
    from trainguard.scan.analyzers.pickles import report_streams

    streams: list[StreamResult] = []
    with blob.opener() as f:
        reader = Reader(f, blob.size)

        machine = PickleMachine(reader, max_opcodes=ctx.limits.max_pickle_opcodes)

        def one() -> object:
            machine.reset()
            res = machine.run()
            # keep only records with something to report: a member of a million plain records
            # must not hold a million results
            if not res.completed or res.globals or res.dynamic_calls or res.unusual or res.nested:
                streams.append(res)
            if not res.completed:
                raise _Broken
            return res.value

        try:
            count = one()
            if not isinstance(count, int) or count < 0:
                raise MalformedInput(f"legacy torch {name}: count is {describe(count)}",
                                     reader.tell())
            if count > ctx.limits.max_members:
                raise LimitExceeded("max_members", ctx.limits.max_members,
                                    f"legacy torch {name} declares {count} records")
            for _ in range(count):
                record = one()
                if name == "storages":
                    _skip_storage(reader, record)
                else:
                    (ndim,) = struct.unpack("<i", reader.read(4))
                    if not 0 <= ndim <= _MAX_NDIM:
                        raise MalformedInput(f"legacy torch tensor with ndim {ndim}", reader.tell())
                    reader.skip(4 + 16 * ndim + 8)
            if name == "storages":
                one()  # storage views
            if not reader.at_eof():
                ctx.add("TG-PKL-008", blob, f"data after the last record of legacy '{name}'",
                        offset=reader.tell())
        except _Broken:
            pass
        except MalformedInput as exc:
            ctx.add("TG-FMT-001", blob, exc.message, offset=exc.offset)
        except LimitExceeded as exc:  # here, so the tar's other members are still scanned
            ctx.add("TG-LIM-001", blob, exc.message)
    ctx.saw("pickle")
    report_streams(ctx, blob, depth, streams, ctx.policy)


def _skip_storage(reader: Reader, record: object) -> None:
    if not isinstance(record, tuple) or len(record) != 3 or not isinstance(record[2], Global):
        raise MalformedInput(f"legacy torch storage record is {describe(record)}", reader.tell())
    size = _ELEMENT_SIZE.get(record[2].name)
    if size is None:
        raise MalformedInput(f"legacy torch storage type {record[2].qualname} unknown",
                             reader.tell())
    (numel,) = struct.unpack("<q", reader.read(8))
    if numel < 0:
        raise MalformedInput(f"legacy torch storage with {numel} elements", reader.tell())
    reader.skip(numel * size)
