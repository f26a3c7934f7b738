"""What analyzers work on (:class:`Blob`) and with (:class:`ScanContext`)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from trainguard.artifacts.sniff import HEAD_SIZE, Format, sniff
from trainguard.artifacts.streams import Budget, MissingCodec
from trainguard.core.config import ScanConfig
from trainguard.core.errors import LimitExceeded, MalformedInput
from trainguard.core.findings import Finding, Location, Severity
from trainguard.core.rules import rule
from trainguard.scan.policy import Policy

# Members kept in memory when a random-access copy is needed; larger ones go to a temp file.
_SPOOL_IN_MEMORY = 64 << 20
#: findings kept per top-level file; the rest are counted in one TG-LIM-001 finding
MAX_FINDINGS_PER_FILE = 10_000


@dataclass
class Blob:
    """A byte stream to analyze: a file, an archive member, a decompressed stream."""

    path: str
    member: str | None
    size: int | None
    opener: Callable[[], BinaryIO]
    seekable: bool = True
    #: bytes that may or may not be a model file (byte strings inside pickles): report only what
    #: proves to be one
    speculative: bool = False

    def member_path(self, name: str) -> str:
        """The member chain of something named ``name`` inside this blob."""
        return f"{self.member}!/{name}" if self.member else name

    def child(self, name: str, size: int | None, opener: Callable[[], BinaryIO],
              seekable: bool = True, speculative: bool = False) -> Blob:
        return Blob(self.path, self.member_path(name), size, opener, seekable, speculative)

    def child_bytes(self, name: str, data: bytes, speculative: bool = False) -> Blob:
        """A member already read into memory (small archive members, byte strings in pickles)."""
        return Blob(self.path, self.member_path(name), len(data), lambda: io.BytesIO(data),
                    True, speculative)

    @classmethod
    def from_bytes(cls, path: str, member: str | None, data: bytes,
                   speculative: bool = False) -> Blob:
        return Blob(path, member, len(data), lambda: io.BytesIO(data), True, speculative)

    def head(self) -> bytes:
        with self.opener() as f:
            return f.read(HEAD_SIZE)


class ScanContext:
    """State for scanning one top-level file: findings, formats seen, decompression budget."""

    def __init__(self, config: ScanConfig, policy: Policy, path: str) -> None:
        self.config = config
        self.limits = config.limits
        self.policy = policy
        self.path = path
        self.findings: list[Finding] = []
        self.formats: list[str] = []
        self.budget = Budget(config.limits.max_expanded_bytes)
        self._temps: list[BinaryIO] = []
        self._dropped = 0
        self._dropped_severity: Severity | None = None

    # --------------------------------------------------------------- findings
    def location(self, blob: Blob, offset: int | None = None) -> Location:
        return Location(self.path, blob.member, offset)

    def add(self, rule_id: str, blob: Blob, evidence: str, *, offset: int | None = None,
            severity: Severity | None = None, count: int = 1, **details: object) -> None:
        finding = rule(rule_id).finding(self.location(blob, offset), evidence, severity=severity,
                                        count=count, **details)
        if len(self.findings) >= MAX_FINDINGS_PER_FILE:
            # an archive of 100,000 malicious members is one bounded report, not 100,000
            # findings in memory and in the output; the summary keeps the worst severity
            self._dropped += 1
            if self._dropped_severity is None or finding.severity > self._dropped_severity:
                self._dropped_severity = finding.severity
            return
        self.findings.append(finding)

    def finish(self) -> list[Finding]:
        """The file's findings, plus one TG-LIM-001 counting those over the per-file cap."""
        if self._dropped:
            self.findings.append(rule("TG-LIM-001").finding(
                Location(self.path), f"{self._dropped} more finding(s) in this file not listed "
                f"(at most {MAX_FINDINGS_PER_FILE} per file)", severity=self._dropped_severity,
                count=self._dropped))
            self._dropped = 0
        return self.findings

    def saw(self, fmt: str) -> None:
        if fmt not in self.formats:
            self.formats.append(fmt)

    # --------------------------------------------------------------- dispatch
    def scan(self, blob: Blob, depth: int, head: bytes | None = None) -> Format:
        """Detect ``blob``'s format by content and run its analyzer; never raises for bad input."""
        from trainguard.scan.analyzers import get_analyzer  # late: analyzers import this module

        if depth > self.limits.max_depth:
            self.add("TG-LIM-001", blob, f"nesting deeper than max_depth={self.limits.max_depth}")
            return Format.UNKNOWN
        try:
            if head is None:
                head = blob.head()
            fmt = sniff(head, blob.size if blob.size is not None else 1 << 62)
            analyzer = get_analyzer(fmt)
            if analyzer is None:
                return Format.UNKNOWN
            if not analyzer(self, blob, depth, head):
                return Format.UNKNOWN
            self.saw(fmt.value)
            return fmt
        except MalformedInput as exc:
            self.add("TG-FMT-001", blob, exc.message, offset=exc.offset)
        except LimitExceeded as exc:
            self.add("TG-LIM-001", blob, exc.message)
        except MissingCodec as exc:
            self.add("TG-FMT-003", blob, str(exc))
        except RecursionError:
            self.add("TG-LIM-001", blob, "structure nested too deeply to analyze")
        except MemoryError:
            self.add("TG-LIM-001", blob, "not enough memory to analyze")
        except OSError as exc:
            # the file changed, vanished or failed to read (EIO) mid-scan: not inspected
            self.add("TG-FMT-001", blob, f"read error: {exc.strerror or exc}")
        except Exception as exc:
            # Fail closed: an analyzer bug on hostile bytes must cost a finding, not the run
            # (and not the other files of the run). Tests look for this text to find such bugs.
            self.add("TG-FMT-001", blob,
                     f"internal error: {type(exc).__name__}: {str(exc)[:200]}")
        return Format.UNKNOWN

    # --------------------------------------------------------------- helpers
    def materialize(self, blob: Blob) -> Blob:
        """A seekable copy of a stream-only blob (charged to the budget already by its reader)."""
        if blob.seekable:
            return blob
        import shutil

        tmp = self.spool()
        with blob.opener() as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
        return self.spooled_blob(tmp, blob.path, blob.member, blob.speculative)

    def spool(self) -> BinaryIO:
        """A temporary file, in memory while small, closed with this context."""
        import tempfile

        tmp = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        self._temps.append(tmp)  # type: ignore[arg-type]
        return tmp  # type: ignore[return-value]

    def spooled_blob(self, tmp: BinaryIO, path: str, member: str | None,
                     speculative: bool = False) -> Blob:
        """A seekable blob over everything written to ``tmp`` (from :meth:`spool`)."""
        size = tmp.seek(0, io.SEEK_END)

        def opener() -> BinaryIO:
            tmp.seek(0)
            return _NoClose(tmp)  # type: ignore[return-value]

        return Blob(path, member, size, opener, True, speculative)

    def close(self) -> None:
        for t in self._temps:
            t.close()
        self._temps.clear()


class _NoClose(io.RawIOBase):
    """Shares a spooled temp file between readers without closing it."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__()
        self._f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: object) -> int:
        data = self._f.read(len(b))  # type: ignore[arg-type]
        b[: len(data)] = data  # type: ignore[index]
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readline(self, size: int | None = -1) -> bytes:
        return self._f.readline(size if size is not None else -1)

    def close(self) -> None:
        pass
