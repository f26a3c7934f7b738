"""``trainguard env diff A B``: two snapshots, by environment digest, then package, then file.

Equal environment digests mean the same interpreter and the same bytes at the same relative
paths; then nothing else is compared. Otherwise packages are compared by name (added, removed,
version changed, same version but different bytes) and files by digest and kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainguard.envcheck.records import normalize_name
from trainguard.envcheck.snapfile import Snapshot


@dataclass
class EnvDiff:
    """What differs between snapshot ``a`` and snapshot ``b``."""

    digest_a: str
    digest_b: str
    interpreter: list[dict[str, Any]] = field(default_factory=list)
    variables: list[dict[str, Any]] = field(default_factory=list)
    packages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def same(self) -> bool:
        return self.digest_a == self.digest_b

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "trainguard.env-diff", "schema_version": "1.0", "same": self.same,
                "environment_digest": {"a": self.digest_a, "b": self.digest_b},
                "interpreter": self.interpreter, "variables": self.variables,
                "packages": self.packages, "files": self.files}

    def render_text(self, limit: int = 200) -> str:
        """Human-readable form; at most ``limit`` files per category (0: all)."""
        lines = [f"environment digest  a {self.digest_a}", f"                    b {self.digest_b}"]
        if self.same:
            lines.append("same: identical interpreter and files")
            return "\n".join(lines) + "\n"
        for ch in self.interpreter:
            lines.append(f"interpreter {ch['field']}: {ch['a']} -> {ch['b']}")
        for ch in self.variables:
            lines.append(f"variable {ch['name']}: {ch['a']!r} -> {ch['b']!r}")
        marks = {"added": "+", "removed": "-", "version": "~", "changed": "!"}
        for cat, items in self.packages.items():
            for p in items:
                ver = (f"{p['a']} -> {p['b']}" if cat in ("version", "changed")
                       else p["version"])
                lines.append(f"package {marks[cat]} {p['name']} {ver}"
                             + (" (same version, different files)" if cat == "changed" else ""))
        for cat, items in self.files.items():
            shown = items if limit <= 0 else items[:limit]
            for f in shown:
                owner = f" [{f['package']}]" if f.get("package") else ""
                lines.append(f"file {marks[cat]} {f['path']}{owner}")
            if len(shown) < len(items):
                lines.append(f"file {marks[cat]} ... and {len(items) - len(shown)} more "
                             f"(--limit 0 shows all)")
        n = {k: len(v) for k, v in self.files.items()}
        p = {k: len(v) for k, v in self.packages.items()}
        lines.append(f"different: packages {p}, files {n}")
        return "\n".join(lines) + "\n"


def _owner(s: Snapshot, owner: int) -> str | None:
    if 0 <= owner < len(s.distributions):
        return str(s.distributions[owner]["name"])
    return None


def diff_snapshots(a: Snapshot, b: Snapshot) -> EnvDiff:
    """Compare two snapshots (neither environment needs to exist here)."""
    d = EnvDiff(a.environment_digest, b.environment_digest)
    if d.same:
        return d
    ia, ib = a.interpreter, b.interpreter
    for name, va, vb in (("version", ia.version, ib.version),
                         ("implementation", ia.implementation, ib.implementation),
                         ("executable", ia.executable, ib.executable),
                         ("prefix", ia.prefix, ib.prefix),
                         ("sha256", a.interpreter_sha256, b.interpreter_sha256)):
        if va != vb:
            d.interpreter.append({"field": name, "a": va, "b": vb})
    for k in sorted(set(a.variables) | set(b.variables)):
        if a.variables.get(k) != b.variables.get(k):
            d.variables.append({"name": k, "a": a.variables.get(k), "b": b.variables.get(k)})
    pa = {normalize_name(x["name"]): x for x in a.distributions}
    pb = {normalize_name(x["name"]): x for x in b.distributions}
    pk: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "version": [],
                                           "changed": []}
    for k in sorted(set(pa) | set(pb)):
        if k not in pa:
            pk["added"].append({"name": pb[k]["name"], "version": pb[k]["version"]})
        elif k not in pb:
            pk["removed"].append({"name": pa[k]["name"], "version": pa[k]["version"]})
        elif pa[k]["version"] != pb[k]["version"]:
            pk["version"].append({"name": pb[k]["name"], "a": pa[k]["version"],
                                  "b": pb[k]["version"]})
        elif pa[k].get("digest") != pb[k].get("digest"):
            pk["changed"].append({"name": pb[k]["name"], "a": pa[k]["version"],
                                  "b": pb[k]["version"], "digest_a": pa[k].get("digest"),
                                  "digest_b": pb[k].get("digest")})
    d.packages = pk
    fk: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "changed": []}
    for k in sorted(set(a.files) | set(b.files)):
        fa, fb = a.files.get(k), b.files.get(k)
        if fa is None and fb is not None:
            fk["added"].append({"path": k, "package": _owner(b, fb.owner), "b": fb.digest})
        elif fb is None and fa is not None:
            fk["removed"].append({"path": k, "package": _owner(a, fa.owner), "a": fa.digest})
        elif fa is not None and fb is not None and (fa.kind, fa.digest) != (fb.kind, fb.digest):
            fk["changed"].append({"path": k, "package": _owner(b, fb.owner) or _owner(
                a, fa.owner), "a": fa.digest, "b": fb.digest, "size_a": fa.size,
                "size_b": fb.size})
    d.files = fk
    return d
