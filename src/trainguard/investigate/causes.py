"""Ranked likely causes, each with the identities involved, a score and the reasons behind it.

Scoring is additive and deterministic (docs/investigate.md, "How causes are ranked"): each
heuristic that holds adds its weight from :data:`WEIGHTS`, every addition is listed as a reason
(``+60 ...``), and causes sort by score (high first), then category, then subject. The weights
encode how directly a fact implicates something: bytes that differ from what was signed are direct
evidence of tampering; a changed commit is a common, usually legitimate, difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainguard.core.events import Event
from trainguard.core.findings import Severity
from trainguard.investigate.runs import Difference, RunProfile, input_key
from trainguard.investigate.timeline import Anomaly, clip, detection_title
from trainguard.ledger.lineage import VERIFY_FAILED, ArtifactEvent, Lineage, signature_covers

WEIGHTS: dict[str, int] = {
    # artifacts a run loaded (and their ancestors, at half weight)
    "signature_mismatch": 60,   # loaded bytes differ from what was signed for that path
    "verify_failed": 50,        # a verifier reported this digest (or path) as not verifying
    "producer_changed": 30,     # produced by someone other than who produced the baseline's copy
    "no_producer": 20,          # nobody recorded producing these bytes (written outside any job)
    "low_trust": 20,            # produced or signed by a low-trust role / untrusted user
    "unsigned": 15,             # no signature covers these bytes
    "input_changed": 10,        # the baseline loaded different bytes from the same path
    "before_anomaly": 10,       # loaded before the first anomaly (corroborates the above)
    # run-level differences
    "lr_runtime": 40,           # observed lr differs from the baseline's while the config does not
    "code_changed": 25,
    "env_changed": 20,
    "hyperparameter_changed": 20,   # +5 per further key, at most 40
    "config_changed": 10,           # +5 per further key, at most 30
    "user_changed": 10,
    # guard detections, by the highest severity in a group (one group per rule id)
    "guard_critical": 50, "guard_high": 40, "guard_medium": 25, "guard_low": 10,
    "first_anomaly": 10,        # the group holds the run's first anomaly
}
#: a cause at or above this score makes an investigation "suspicious" (exit 1)
SUSPICIOUS_SCORE = 30
#: roles (trust policy, ``details["role"]``) whose products count as low trust by default
LOW_TRUST_ROLES = frozenset({"intern", "untrusted", "guest", "external", "contractor"})
#: ancestors of each loaded artifact that are assessed too
MAX_ANCESTORS = 200
_CATEGORY_ORDER = {"artifact": 0, "guard": 1, "hyperparameters": 2, "code": 3, "environment": 4,
                   "config": 5, "identity": 6}


@dataclass(frozen=True)
class Actor:
    """An identity involved in a cause, and how."""

    #: producer | signer of the original | signer | launched the run | emitted
    role: str
    who: str
    identity: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "who": self.who, "identity": self.identity}


@dataclass(frozen=True)
class Cause:
    """A likely cause, its score and why."""

    score: int
    #: artifact | guard | hyperparameters | code | environment | config | identity
    category: str
    title: str
    subject: str
    identities: tuple[Actor, ...]
    reasons: tuple[str, ...]
    #: source positions (ledger indices / line order) of the events behind it
    evidence: tuple[int, ...] = ()
    digest: str | None = None
    path: str | None = None
    rank: int = field(default=0)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "category": self.category,
                "title": self.title, "subject": self.subject, "digest": self.digest,
                "path": self.path, "identities": [a.to_dict() for a in self.identities],
                "reasons": list(self.reasons), "evidence": list(self.evidence)}


@dataclass(frozen=True)
class TrustOptions:
    """Who counts as low trust: declared roles, and (when given) the only trusted users."""

    low_trust_roles: frozenset[str] = LOW_TRUST_ROLES
    trusted_users: frozenset[str] = frozenset()

    def is_low(self, a: ArtifactEvent) -> bool:
        if a.trust_role and a.trust_role.lower() in self.low_trust_roles:
            return True
        return bool(self.trusted_users) and a.user is not None and \
            a.user not in self.trusted_users


def short_digest(digest: str | None) -> str:
    """``sha256:0123456789ab…`` for display."""
    if not digest:
        return "(no digest)"
    return digest[:19] + "…" if len(digest) > 19 else digest


def _actor(a: ArtifactEvent, role: str) -> Actor:
    return Actor(role, clip(a.who, 120), a.identity.to_dict() if a.identity else None)


def _actors(items: Iterable[Actor]) -> tuple[Actor, ...]:
    seen: dict[tuple[str, str], Actor] = {}
    for x in items:
        seen.setdefault((x.role, x.who), x)
    return tuple(list(seen.values())[:10])


def assess_artifact(lineage: Lineage, digest: str | None, path: str | None, *,
                    load: ArtifactEvent | None = None, reference: ArtifactEvent | None = None,
                    anomaly: Anomaly | None = None, trust: TrustOptions = TrustOptions(),
                    weight: float = 1.0, context: str = "") -> Cause | None:
    """Score one artifact: signature match, verification results, producer against the
    ``reference`` (the baseline's load from the same path, or the previous version there),
    trust, and timing against the first ``anomaly``. None when nothing is suspicious."""
    parts: list[tuple[int, str]] = []
    actors: list[Actor] = []
    evidence: list[int] = [load.seq] if load is not None else []
    name = path or digest or "?"
    short = short_digest(digest)
    producers = lineage.producers_of(digest) if digest else []
    actors += [_actor(p, "producer") for p in producers]
    evidence += [p.seq for p in producers]
    unchanged = reference is not None and reference.digest == digest and digest is not None

    # 1. Do these bytes match what was signed? (a signature over the digest, else over the path)
    sigs = lineage.signatures_of(digest) if digest else []
    at_path, by_name = lineage.signed_at_path(path) if path is not None else ([], False)
    if not by_name:  # a one-file OMS manifest signed at this path names its root digest
        sigs += [s for s in at_path if s not in sigs and signature_covers(s, digest) is True]
    undecided = [s for s in at_path if signature_covers(s, digest) is None]
    if not at_path and path is not None:
        undecided = lineage.signed_above(path)
    if sigs:
        actors += [_actor(s, "signer") for s in sigs]
    elif path is not None:
        other = [s for s in at_path if signature_covers(s, digest) is False]
        if other:
            # a match by file name only is weaker evidence: half weight
            w = WEIGHTS["signature_mismatch"] if not by_name else WEIGHTS["signature_mismatch"] // 2
            signers = ", ".join(dict.fromkeys(clip(s.who, 80) for s in other))
            parts.append((w, f"{short} loaded from {clip(name, 120)} differs from what "
                             f"{signers} signed ({short_digest(other[-1].digest)})"
                             + (" (matched by file name)" if by_name else "")))
            actors += [_actor(s, "signed the original") for s in other]
            evidence += [s.seq for s in other]
        elif undecided:
            parts.append((0, f"signed by {clip(undecided[-1].who, 80)} as part of a manifest "
                             "without per-file digests in the record: not compared"))
        elif not unchanged:
            parts.append((WEIGHTS["unsigned"], f"no signature covers {short}"))
    # 2. Did a verifier reject it?
    failed = [v for v in lineage.verifications_of(digest) if v.role == VERIFY_FAILED] \
        if digest else []
    if path is not None:
        failed += [v for v in lineage.at_path(path) if v.role == VERIFY_FAILED
                   and v.digest is None and v not in failed]
    if failed:
        parts.append((WEIGHTS["verify_failed"],
                      f"verification failed ({len(failed)}x, first by {clip(failed[0].who, 80)})"))
        evidence += [v.seq for v in failed]
    # 3. Who produced it, compared with who produced the reference copy
    if not producers:
        if not unchanged and digest is not None:
            parts.append((WEIGHTS["no_producer"], f"no job recorded producing {short}"))
    elif reference is not None and not unchanged and reference.digest:
        ref_users = {p.user for p in lineage.producers_of(reference.digest)} | {
            s.user for s in lineage.signatures_of(reference.digest)}
        new_users = [p.user for p in producers if p.user not in ref_users]
        if ref_users and new_users:
            news = ", ".join(dict.fromkeys(clip(u, 60) for u in new_users if u))
            parts.append((WEIGHTS["producer_changed"], f"produced by {news}"
                          f", not by {', '.join(sorted(clip(u, 60) for u in ref_users if u))} "
                          f"who produced the {context or 'reference'} copy"))
    low = [a for a in [*producers, *sigs] if trust.is_low(a)]
    if low and not unchanged:
        parts.append((WEIGHTS["low_trust"], "produced or signed by a low-trust identity: "
                      + ", ".join(dict.fromkeys(clip(a.who, 80) for a in low))))
    # 4. Corroboration: the input changed, and it was loaded before things went wrong
    if reference is not None and not unchanged and any(w for w, _ in parts):
        parts.append((WEIGHTS["input_changed"],
                      f"the {context or 'reference'} loaded {short_digest(reference.digest)} "
                      "from the same path"))
    if any(w for w, _ in parts) and load is not None and anomaly is not None \
            and load.time <= anomaly.time:
        parts.append((WEIGHTS["before_anomaly"], "loaded before the first anomaly"))
    if not any(w for w, _ in parts):
        return None
    if weight != 1.0:
        parts = [(int(w * weight), r) for w, r in parts]
    parts.sort(key=lambda p: -p[0])
    return Cause(
        score=sum(w for w, _ in parts), category="artifact",
        title=f"artifact {clip(name, 120)}: {parts[0][1]}", subject=clip(name, 200),
        identities=_actors(actors), reasons=tuple(f"+{w} {r}" for w, r in parts),
        evidence=tuple(sorted(set(evidence)))[:50], digest=digest, path=path)


def artifact_causes(bad: RunProfile, base: RunProfile | None, lineage: Lineage,
                    anomaly: Anomaly | None, trust: TrustOptions) -> list[Cause]:
    """Causes among the artifacts ``bad`` loaded, and (at half weight) their ancestors."""
    ref_loads: dict[str, ArtifactEvent] = {}
    if base is not None:
        for a in base.loads:
            ref_loads.setdefault(input_key(a), a)
    out: list[Cause] = []
    seen: set[str] = set()
    for load in bad.loads:
        key = load.digest or input_key(load)
        if key in seen:
            continue
        seen.add(key)
        c = assess_artifact(lineage, load.digest, load.path, load=load,
                            reference=ref_loads.get(input_key(load)), anomaly=anomaly,
                            trust=trust, context=f"baseline {base.run}" if base else "")
        if c is not None:
            out.append(c)
        if load.digest is None:
            continue
        for anc, depth in lineage.ancestry(load.digest, max_nodes=MAX_ANCESTORS):
            if anc in seen:
                continue
            seen.add(anc)
            paths = [a.path for a in lineage.events_for(anc) if a.path]
            c = assess_artifact(lineage, anc, paths[0] if paths else None, trust=trust,
                                weight=0.5, context="")
            if c is not None:
                out.append(Cause(**{**c.__dict__, "title": c.title + f" (ancestor, depth "
                                    f"{depth}, of {clip(load.path or load.digest, 80)})"}))
    return out


_SEV_WEIGHT = {Severity.CRITICAL: "guard_critical", Severity.HIGH: "guard_high",
               Severity.MEDIUM: "guard_medium", Severity.LOW: "guard_low"}


def guard_causes(bad: RunProfile, anomaly: Anomaly | None) -> list[Cause]:
    """One cause per rule id (or kind) among the run's detections."""
    groups: dict[str, list[tuple[int, Event]]] = {}
    for seq, ev in bad.detections:
        groups.setdefault(clip(ev.rule_id or ev.kind, 60), []).append((seq, ev))
    out = []
    for key, items in groups.items():
        sev = max((ev.severity or Severity.HIGH) for _, ev in items)
        w = WEIGHTS.get(_SEV_WEIGHT.get(sev, ""), 0)
        parts = [(w, f"{len(items)} {sev.label} detection(s) {key}")] if w else []
        if anomaly is not None and any(s == anomaly.seq for s, _ in items):
            parts.append((WEIGHTS["first_anomaly"], "includes the run's first anomaly"))
        if not parts:
            continue
        first = items[0][1]
        for k in ("culprit", "source", "location", "code_location", "replaced_by"):
            v = first.details.get(k)
            if isinstance(v, str):
                parts.append((0, f"{k}: {clip(v, 160)}"))
        actors = [Actor("emitted", clip(ev.identity.short(), 120), ev.identity.to_dict())
                  for _, ev in items if ev.identity is not None]
        out.append(Cause(score=sum(p[0] for p in parts), category="guard",
                         title=detection_title(first), subject=key, identities=_actors(actors),
                         reasons=tuple(f"+{w} {r}" for w, r in parts),
                         evidence=tuple(s for s, _ in items[:50])))
    return out


def difference_causes(bad: RunProfile, base: RunProfile,
                      diffs: Sequence[Difference]) -> list[Cause]:
    """Causes from run-level differences (code, environment, config, hyperparameters, lr, user)."""
    launcher = (Actor("launched the run", clip(bad.who(), 120),
                      bad.identity.to_dict() if bad.identity else None),)
    by_area: dict[str, list[Difference]] = {}
    for d in diffs:
        by_area.setdefault(d.area, []).append(d)
    out = []

    def cause(cat: str, score: int, title: str, ds: list[Difference]) -> None:
        reasons = [f"+{score} {len(ds)} difference(s) from baseline {clip(base.run, 60)}"]
        reasons += [f"+0 {clip(d.key, 80)}: {clip(d.baseline, 60)} -> {clip(d.bad, 60)}"
                    for d in ds[:20]]
        out.append(Cause(score=score, category=cat, title=title, subject=cat,
                         identities=launcher, reasons=tuple(reasons)))

    if "code" in by_area:
        d = by_area["code"][0]
        cause("code", WEIGHTS["code_changed"],
              f"code changed: git commit {clip(d.baseline, 12)} -> {clip(d.bad, 12)}", [d])
    if "environment" in by_area:
        d = by_area["environment"][0]
        cause("environment", WEIGHTS["env_changed"],
              f"environment changed: {clip(d.baseline, 24)} -> {clip(d.bad, 24)}", [d])
    hyper = by_area.get("hyperparameters", [])
    if hyper:
        cause("hyperparameters", min(40, WEIGHTS["hyperparameter_changed"] + 5 * (len(hyper) - 1)),
              "hyperparameters changed: " + ", ".join(clip(d.key, 40) for d in hyper[:5]), hyper)
    if "lr" in by_area and not hyper:
        d = by_area["lr"][0]
        cause("hyperparameters", WEIGHTS["lr_runtime"],
              f"learning rate at {d.key} is {d.bad}, baseline {d.baseline}, though the "
              "configured hyperparameters are the same", [d])
    config = by_area.get("config", [])
    if config:
        cause("config", min(30, WEIGHTS["config_changed"] + 5 * (len(config) - 1)),
              "configuration changed: " + ", ".join(clip(d.key, 40) for d in config[:5]), config)
    if "identity" in by_area:
        d = by_area["identity"][0]
        cause("identity", WEIGHTS["user_changed"],
              f"run launched by {clip(d.bad, 40)}, baseline by {clip(d.baseline, 40)}", [d])
    return out


def rank(causes: Iterable[Cause]) -> list[Cause]:
    """Sort by score (high first), category, subject, title; number them from 1."""
    ordered = sorted(causes, key=lambda c: (-c.score, _CATEGORY_ORDER.get(c.category, 99),
                                            c.subject, c.title))
    return [Cause(**{**c.__dict__, "rank": i}) for i, c in enumerate(ordered, 1)]
