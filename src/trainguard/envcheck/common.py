"""The light part of ``trainguard env verify``: findings, policy and variables.

Kept apart from :mod:`trainguard.envcheck.checks` (RECORD parsing, metadata, hooks) so that
``trainguard env verify --quick``, run at every job start, imports only this module, the quick
index and the core report model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainguard.core.findings import Finding, Location, Severity
from trainguard.core.rules import rule

#: variables that change what an interpreter loads (recorded; see TG-ENV-018)
LOADER_VARIABLES = ("LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH")


class HasVariables(Protocol):
    """A snapshot or a quick index: the recorded loader variables."""

    @property
    def variables(self) -> dict[str, str]: ...


def loader_variables(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``PYTHON*`` and dynamic-loader variables of ``environ`` (default: this process)."""
    env = dict(os.environ if environ is None else environ)
    return {k: v for k, v in sorted(env.items())
            if k.startswith("PYTHON") or k in LOADER_VARIABLES}


#: files whose appearance is importable code (raises "unowned"/"added" findings)
CODE_SUFFIXES = (".py", ".pyc", ".so", ".pyd", ".pth", ".pyw")
#: variables whose mere presence changes what the interpreter loads, with severities
RISKY_VARIABLES = {
    "LD_PRELOAD": Severity.MEDIUM, "LD_AUDIT": Severity.MEDIUM, "PYTHONPATH": Severity.MEDIUM,
    "PYTHONHOME": Severity.MEDIUM, "PYTHONPYCACHEPREFIX": Severity.MEDIUM,
    "PYTHONUSERBASE": Severity.LOW, "PYTHONSTARTUP": Severity.LOW,
    "PYTHONBREAKPOINT": Severity.LOW, "PYTHONEXECUTABLE": Severity.LOW,
    "PYTHONPLATLIBDIR": Severity.LOW, "PYTHONWARNINGS": Severity.LOW,
}
#: findings kept per rule; beyond it one summary finding carries the count
MAX_PER_RULE = 5000


@dataclass(frozen=True)
class EnvPolicy:
    """``[env]`` settings of trainguard.toml."""

    fail_on: Severity = Severity.MEDIUM
    #: sha256 hex digests of executable .pth files reviewed and allowed
    allow_pth: frozenset[str] = frozenset()
    #: a RECORD written this long after its INSTALLER counts as rewritten (TG-ENV-004)
    record_slack_seconds: float = 60.0

    @classmethod
    def from_section(cls, raw: dict[str, Any]) -> EnvPolicy:
        from trainguard.core.errors import ConfigError

        unknown = sorted(set(raw) - {"fail_on", "allow_pth", "record_slack_seconds"})
        if unknown:
            raise ConfigError(f"unknown key(s) in [env]: {', '.join(unknown)}")
        pol = cls()
        fail_on = pol.fail_on
        if "fail_on" in raw:
            try:
                fail_on = Severity.parse(str(raw["fail_on"]))
            except Exception as exc:
                raise ConfigError(f"[env] fail_on: {exc}") from None
        allow = raw.get("allow_pth", [])
        if not isinstance(allow, list) or not all(
                isinstance(a, str) and len(a.removeprefix("sha256:")) == 64 for a in allow):
            raise ConfigError("[env] allow_pth must be a list of sha256 hex digests")
        slack = raw.get("record_slack_seconds", pol.record_slack_seconds)
        if not isinstance(slack, (int, float)) or isinstance(slack, bool) or slack < 0:
            raise ConfigError("[env] record_slack_seconds must be a non-negative number")
        return cls(fail_on, frozenset(a.removeprefix("sha256:").lower() for a in allow),
                   float(slack))


@dataclass
class Collector:
    """Findings under TG-ENV rules, capped per rule."""

    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, rule_id: str, path: Path | str, evidence: str, *,
            severity: Severity | None = None, **details: object) -> None:
        n = self.counts.get(rule_id, 0) + 1
        self.counts[rule_id] = n
        if n <= MAX_PER_RULE:
            f = rule(rule_id).finding(Location(str(path)), evidence, severity=severity)
            f.details.update(details)
            self.findings.append(f)

    def finish(self) -> list[Finding]:
        for rid, n in self.counts.items():
            if n > MAX_PER_RULE:
                f = rule(rid).finding(Location("(environment)"), f"{n - MAX_PER_RULE} more "
                                      "findings under this rule were not listed",
                                      count=n - MAX_PER_RULE)
                self.findings.append(f)
        return self.findings


def _is_code(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.endswith(CODE_SUFFIXES) or ".so." in name or name.split(".")[0] in (
        "sitecustomize", "usercustomize")


def check_variables(c: Collector, snap: HasVariables | None,
                    environ: dict[str, str] | None) -> None:
    """TG-ENV-018: risky variables set, or loader variables that differ from the snapshot
    (``snap``: a :class:`Snapshot` or a quick index, anything with ``variables``)."""
    now = loader_variables(environ)
    if snap is not None:
        for k in sorted(set(now) | set(snap.variables)):
            if now.get(k) != snap.variables.get(k):
                c.add("TG-ENV-018", f"${k}", f"{k} is {now.get(k)!r} here but "
                      f"{snap.variables.get(k)!r} in the snapshot", variable=k)
        return
    for k, sev in RISKY_VARIABLES.items():
        if now.get(k):
            c.add("TG-ENV-018", f"${k}", f"{k}={now[k][:200]!r} is set", severity=sev,
                  variable=k)
