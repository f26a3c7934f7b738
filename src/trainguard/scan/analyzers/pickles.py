"""Pickle streams (raw pickles, joblib files, torch data.pkl, legacy torch files) to findings."""

from __future__ import annotations

import re

from trainguard.artifacts.reader import Reader
from trainguard.core.errors import LimitExceeded, MalformedInput, TrainguardError
from trainguard.core.findings import Severity
from trainguard.scan.context import Blob, ScanContext
from trainguard.scan.pickle.inline import JOBLIB_HOOKS
from trainguard.scan.pickle.machine import PickleMachine
from trainguard.scan.pickle.values import StreamResult
from trainguard.scan.policy import Policy

#: first value of a legacy (pre-1.6, non-zip) torch.save file: MAGIC_NUMBER in
#: torch/serialization.py
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: legacy torch files hold 5 pickles (magic, protocol, sys_info, data, storage keys), then raw data
_LEGACY_PICKLES = 5
_MAX_STREAMS = 10_000
#: findings of one kind listed per stream (suspicious globals, dynamic calls) and nested pickles
#: scanned per stream; beyond these a TG-LIM-001 finding carries the count and the top severity,
#: so a stream of 200,000 distinct imports is one bounded report, not 200,000 findings
_MAX_LISTED = 200
_MAX_NESTED = 1_000


# First bytes of a protocol 0/1 pickle (no PROTO opcode): MARK, GLOBAL, containers, constants,
# memo reads, INST (pickletools.opcodes).
_P0_OPCODES = frozenset(b"(c}])NIJKLSTUVXFMGhgijqrp0.")


def _another_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def run_streams(
    ctx: ScanContext, blob: Blob
) -> tuple[list[StreamResult], bool, int | None, TrainguardError | None]:
    """Interpret every pickle in ``blob``.

    Returns (streams, is_legacy_torch, trailing_data_offset, error after the last stream): a
    container that breaks *after* a complete pickle (a gzip trailer cut off, a legacy file that
    stops after its magic number) is reported with the streams that ran, never instead of them.
    """
    streams: list[StreamResult] = []
    legacy = False
    trailing: int | None = None
    broken: TrainguardError | None = None
    with blob.opener() as f:
        reader = Reader(f, blob.size if blob.seekable else None)
        speculative = False
        machine = PickleMachine(reader, max_opcodes=ctx.limits.max_pickle_opcodes,
                                build_hooks=JOBLIB_HOOKS,
                                max_globals=ctx.limits.max_pickle_globals)
        while True:
            start = reader.tell()
            machine.reset()
            res = machine.run()
            if speculative and not ((res.completed and res.opcodes >= 2)
                                    or _plausible_payload(res)):
                trailing = start  # bytes that merely start like a protocol 0 opcode
                break
            streams.append(res)
            if not res.completed:
                break
            if len(streams) == 1 and res.value == TORCH_LEGACY_MAGIC:
                legacy = True
            if legacy and len(streams) == _LEGACY_PICKLES:
                break  # the rest is raw storage bytes, never unpickled by torch.load
            try:
                if reader.at_eof():
                    if legacy:
                        broken = MalformedInput(f"legacy torch file ends after {len(streams)} of "
                                                f"{_LEGACY_PICKLES} pickles", reader.tell())
                    break
                head = reader.peek(2)
            except (MalformedInput, LimitExceeded) as exc:  # a decompressor failing after STOP
                broken = exc
                break
            if len(streams) >= _MAX_STREAMS:
                broken = LimitExceeded("pickles_per_file", _MAX_STREAMS,
                                       "the rest of the file was not inspected")
                break
            # torch's _legacy_load unpickles five pickles whatever their protocol; a protocol 0/1
            # pickle has no PROTO header, yet loaders that call load() again run it
            speculative = not (_another_pickle(head) or legacy)
            if speculative and not (head[:1] and head[0] in _P0_OPCODES):
                trailing = reader.tell()
                break
    return streams, legacy, trailing, broken


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _plausible_payload(res: StreamResult) -> bool:
    """A broken stream of uncertain origin counts as a pickle if it imported real-looking names."""
    return any(_IDENT.match(g.module) and _IDENT.match(g.name) for g in res.globals.values())


def analyze_pickle(ctx: ScanContext, blob: Blob, depth: int, head: bytes) -> bool:
    """Analyze a pickle file or member; False if speculative bytes turn out not to be a pickle."""
    speculative = blob.speculative or head[:1] != b"\x80"
    streams, legacy, trailing, broken = run_streams(ctx, blob)
    first = streams[0]
    if speculative and not first.completed and not _plausible_payload(first):
        return False  # text or data that merely starts like a protocol 0 pickle
    if speculative and first.completed and first.opcodes < 2:
        return False
    if legacy:
        ctx.saw("torch-legacy")
    report_streams(ctx, blob, depth, streams, ctx.policy)
    if isinstance(broken, LimitExceeded):
        ctx.add("TG-LIM-001", blob, broken.message)
    elif broken is not None:
        ctx.add("TG-FMT-001", blob, broken.message,
                offset=broken.offset if isinstance(broken, MalformedInput) else None)
    if trailing is not None:
        ctx.add("TG-PKL-008", blob, f"{(blob.size or trailing) - trailing} byte(s) after the last "
                "STOP opcode" if blob.size else "data after the last STOP opcode", offset=trailing)
    return True


def report_streams(ctx: ScanContext, blob: Blob, depth: int, streams: list[StreamResult],
                   policy: Policy) -> None:
    """Turn interpreted streams into findings (and scan nested pickles)."""
    for res in streams:
        suspicious = 0
        flagged = []
        for gu in sorted(res.globals.values(), key=lambda g: g.first_offset):
            verdict = policy.classify(gu.module, gu.name, gu.uses)
            if verdict.rule_id is not None:
                flagged.append((gu, verdict))
        suspicious += len(flagged)
        if len(flagged) > _MAX_LISTED:
            # the most severe first (stable: stream order within a severity)
            ranked = sorted(flagged, key=lambda gv: -gv[1].severity)
            rest = ranked[_MAX_LISTED:]
            ctx.add("TG-LIM-001", blob, f"{len(rest)} more suspicious global(s) in this stream "
                    f"not listed (first: {_clip(rest[0][0].module + '.' + rest[0][0].name)})",
                    offset=rest[0][0].first_offset, severity=rest[0][1].severity,
                    count=len(rest))
            keep = {id(gu) for gu, _ in ranked[:_MAX_LISTED]}
            flagged = [(gu, v) for gu, v in flagged if id(gu) in keep]
        for gu, verdict in flagged:
            assert verdict.rule_id is not None
            uses = "/".join(sorted(gu.uses - {"import"})) or "import"
            evidence = f"{gu.module}.{gu.name} ({uses}): {verdict.reason}"
            if gu.build_attrs:
                evidence += f"; sets {', '.join(dict.fromkeys(gu.build_attrs))}"
            if gu.call_args:
                evidence += f"; args {gu.call_args[0]}"
            ctx.add(verdict.rule_id, blob, _clip(evidence, 1000), offset=gu.first_offset,
                    severity=verdict.severity, count=gu.count,
                    global_name=_clip(f"{gu.module}.{gu.name}"), uses=sorted(gu.uses))
        dyn: dict[str, list[int]] = {}
        for dc in res.dynamic_calls:
            dyn.setdefault(f"{dc.kind} of {dc.target}", []).append(dc.offset)
        suspicious += len(dyn)
        for n, (target, offsets) in enumerate(dyn.items()):
            if n == _MAX_LISTED:
                left = list(dyn.values())[n:]
                ctx.add("TG-LIM-001", blob, f"{len(left)} more dynamic call site(s) in this "
                        "stream not listed", offset=left[0][0], severity=Severity.HIGH,
                        count=sum(map(len, left)))
                break
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
        if len(res.nested) > _MAX_NESTED:
            ctx.add("TG-LIM-001", blob, f"{len(res.nested) - _MAX_NESTED} more nested pickle(s) "
                    f"in this stream not inspected", offset=res.nested[_MAX_NESTED][0],
                    count=len(res.nested) - _MAX_NESTED)
        for off, data in res.nested[:_MAX_NESTED]:
            child = blob.child_bytes(f"<bytes@{off}>", data, speculative=True)
            ctx.scan(child, depth + 1)


def _clip(text: str, limit: int = 300) -> str:
    """Names in evidence are the stream's own bytes: a GLOBAL line may be 64 MiB long."""
    return text if len(text) <= limit else f"{text[:limit - 30]}... ({len(text)} characters)"
