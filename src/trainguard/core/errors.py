"""One error root for trainguard.

Every error the library raises derives from :class:`TrainguardError` and can explain itself through
:meth:`TrainguardError.diagnostics`: what happened and what to do. The CLI catches this root once,
prints the diagnostics and exits with :data:`trainguard.core.exitcodes.ExitCode.ERROR`.
"""

from __future__ import annotations


class TrainguardError(Exception):
    """Root of every error trainguard raises on purpose."""

    #: a short hint on what to do about it; subclasses and call sites override it
    remedy: str = ""

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if remedy is not None:
            self.remedy = remedy

    def diagnostics(self) -> str:
        """A human-readable explanation: what happened, then what to do."""
        text = self.message
        if self.remedy:
            text += f"\n  hint: {self.remedy}"
        return text


class UsageError(TrainguardError):
    """The caller asked for something impossible (bad option, unknown format name)."""


class InputError(TrainguardError):
    """An input named by the user cannot be read at all (missing path, permission denied)."""


class ConfigError(TrainguardError):
    """``trainguard.toml`` is malformed or holds an unknown setting."""

    remedy = "fix the configuration file; `trainguard scan --help` lists the settings"


class LimitExceeded(TrainguardError):
    """A safety limit (depth, members, expanded size, opcodes) was reached while inspecting input.

    Inside a scan this never escapes: the scanner turns it into a finding (fail closed).
    """

    def __init__(self, limit: str, value: int, detail: str = "") -> None:
        msg = f"limit {limit}={value} exceeded" + (f": {detail}" if detail else "")
        super().__init__(
            msg, remedy=f"raise [scan.limits] {limit} in trainguard.toml if the input is trusted"
        )
        self.limit = limit
        self.value = value


class MalformedInput(TrainguardError):
    """Bytes that do not follow the format they claim to be (truncated, corrupt, hostile).

    Inside a scan this never escapes either: a file that cannot be parsed is a finding.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class VerificationError(TrainguardError):
    """A signature, certificate, proof or digest could not be checked, or did not check out.

    Fail closed: anything that cannot be verified is treated as not verified. Subclasses say why.
    """


class TamperError(VerificationError):
    """Content differs from what was signed, snapshotted or logged: bytes, order or history.

    ``changes`` lists what differs in a form each capability documents (files, tensors, entries).
    """

    def __init__(self, message: str, *, changes: list[str] | None = None,
                 remedy: str | None = None) -> None:
        super().__init__(message, remedy=remedy)
        self.changes = list(changes or [])


class PolicyError(VerificationError):
    """Content is authentic but the trust policy refuses it (wrong role, missing co-signature,
    an ignore path the verifier does not accept, an expired or revoked certificate)."""
