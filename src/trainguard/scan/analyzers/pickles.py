"""Pickle streams (raw pickles, joblib files, torch data.pkl, legacy torch files) to findings."""

from __future__ import annotations

import re

from trainguard.artifacts.reader import Reader
from trainguard.core.findings import Severity
from trainguard.scan.context import Blob, ScanContext
from trainguard.scan.pickle.inline import JOBLIB_HOOKS
from trainguard.scan.pickle.machine import PickleMachine, StreamResult
from trainguard.scan.policy import Policy

#: first value of a legacy (pre-1.6, non-zip) torch.save file: MAGIC_NUMBER in torch/serialization.py
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: legacy torch files hold 5 pickles (magic, protocol, sys_info, data, storage keys), then raw data
_LEGACY_PICKLES = 5
_MAX_STREAMS = 10_000


def _another_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def run_streams(ctx: ScanContext, blob: Blob) -> tuple[list[StreamResult], bool, int | None]:
    """Interpret every pickle in ``blob``: (streams, is_legacy_torch, trailing_data_offset)."""
    streams: list[StreamResult] = []
    legacy = False
    trailing: int | None = None
    with blob.opener() as f:
        reader = Reader(f, blob.size if blob.seekable else None)
        while True:
            machine = PickleMachine(reader, max_opcodes=ctx.limits.max_pickle_opcodes,
                                    build_hooks=JOBLIB_HOOKS)
            res = machine.run()
            streams.append(res)
            if not res.completed:
                break
            if len(streams) == 1 and res.value == TORCH_LEGACY_MAGIC:
                legacy = True
            if legacy and len(streams) == _LEGACY_PICKLES:
                break  # the rest is raw storage bytes, never unpickled by torch.load
            if reader.at_eof() or len(streams) >= _MAX_STREAMS:
                break
            if not _another_pickle(reader.peek(2)):
                trailing = reader.tell()
                break
    return streams, legacy, trailing


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _plausible_payload(res: StreamResult) -> bool:
    """A broken stream of uncertain origin counts as a pickle if it imported real-looking names."""
    return any(_IDENT.match(g.module) and _IDENT.match(g.name) for g in res.globals.values())


def analyze_pickle(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    """Analyze a pickle file or member; False if speculative bytes turn out not to be a pickle."""
    speculative = blob.speculative or head[:1] != b"\x80"
    streams, legacy, trailing = run_streams(ctx, blob)
    first = streams[0]
    if speculative and not first.completed and not _plausible_payload(first):
        return False  # text or data that merely starts like a protocol 0 pickle
    if speculative and first.completed and first.opcodes < 2:
        return False
    if legacy:
        ctx.saw("torch-legacy")
    report_streams(ctx, blob, depth, streams, ctx.policy)
    if trailing is not None:
        ctx.add("TG-PKL-008", blob, f"{(blob.size or trailing) - trailing} byte(s) after the last "
                "STOP opcode" if blob.size else "data after the last STOP opcode", offset=trailing)
    return True


def report_streams(ctx: ScanContext, blob: Blob, depth: int, streams: list[StreamResult],
                   policy: Policy) -> None:
    """Turn interpreted streams into findings (and scan nested pickles)."""
    for res in streams:
        suspicious = 0
        for gu in sorted(res.globals.values(), key=lambda g: g.first_offset):
            verdict = policy.classify(gu.module, gu.name, gu.uses)
            if verdict.rule_id is None:
                continue
            suspicious += 1
            uses = "/".join(sorted(gu.uses - {"import"})) or "import"
            evidence = f"{gu.module}.{gu.name} ({uses}): {verdict.reason}"
            if gu.build_attrs:
                evidence += f"; sets {', '.join(dict.fromkeys(gu.build_attrs))}"
            if gu.call_args:
                evidence += f"; args {gu.call_args[0]}"
            ctx.add(verdict.rule_id, blob, evidence, offset=gu.first_offset,
                    severity=verdict.severity, count=gu.count, global_name=f"{gu.module}.{gu.name}",
                    uses=sorted(gu.uses))
        dyn: dict[str, list[int]] = {}
        for dc in res.dynamic_calls:
            dyn.setdefault(f"{dc.kind} of {dc.target}", []).append(dc.offset)
        for target, offsets in dyn.items():
            suspicious += 1
            ctx.add("TG-PKL-005", blob, target, offset=offsets[0], count=len(offsets))
        unusual: dict[str, list[int]] = {}
        for off, op in res.unusual:
            unusual.setdefault(op, []).append(off)
        for op, offsets in unusual.items():
            ctx.add("TG-PKL-009", blob, f"{op} opcode", offset=offsets[0], count=len(offsets))
        if res.limit is not None:
            ctx.add("TG-LIM-001", blob, f"{res.limit.message} after {res.opcodes} opcodes",
                    offset=res.error_offset)
        elif res.error is not None:
            ran = f"{suspicious} suspicious operation(s) before the break" if suspicious else (
                "no suspicious operation before the break")
            ctx.add("TG-PKL-007", blob, f"{res.error} (after {res.opcodes} opcodes; {ran})",
                    offset=res.error_offset,
                    severity=Severity.HIGH if suspicious else Severity.MEDIUM)
        for off, data in res.nested:
            child = blob.child(f"<bytes@{off}>", len(data), _bytes_opener(data), speculative=True)
            ctx.scan(child, depth + 1)


def _bytes_opener(data: bytes):  # type: ignore[no-untyped-def]
    import io

    return lambda: io.BytesIO(data)
