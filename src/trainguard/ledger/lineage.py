"""Lineage: artifacts by digest, the job that produced each from which inputs, who signed, verified
and loaded it.

Built from events (a ledger's entries or a JSONL file): nothing here trusts an event more than the
ledger that holds it, and every details value is checked for type before use (details are written
by the jobs being investigated, so they may be hostile). The event details keys read here are the
contract with the capabilities that emit them; docs/investigate.md lists them.

Example::

    from trainguard.core.events import Event, EventKind
    from trainguard.ledger.lineage import Lineage
    d = "sha256:" + "ab" * 32
    lin = Lineage.build([Event.now(EventKind.ARTIFACT_SAVED, d, {"path": "ckpt.pt"})])
    print([a.identity for a in lin.producers_of(d)], lin.ancestry(d))
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from trainguard.core.events import Event, EventKind
from trainguard.core.identity import Identity

#: ``algo:hex`` as written in event subjects (OMS v1.0 digests are hex)
_DIGEST_RE = re.compile(r"^(sha256|sha384|sha512|blake2b|blake3):([0-9a-fA-F]{32,128})$")
_BARE_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")

#: at most this many inputs per artifact and files per signature are read from one event (a
#: hostile event must not make lineage queries quadratic)
MAX_INPUTS = 4096
MAX_SIGNED_FILES = 100_000
#: longest path kept (longer ones are cut: they are only displayed and compared)
MAX_PATH = 4096

# What each event kind means for an artifact.
PRODUCED, SIGNED, LOADED, REFUSED, VERIFIED, VERIFY_FAILED = (
    "produced", "signed", "loaded", "refused", "verified", "verify_failed")
_ROLE_OF_KIND = {
    EventKind.ARTIFACT_SAVED: PRODUCED,
    EventKind.ARTIFACT_SIGNED: SIGNED,
    EventKind.ARTIFACT_COSIGNED: SIGNED,
    EventKind.ARTIFACT_LOADED: LOADED,
    EventKind.GUARD_LOAD: LOADED,
    EventKind.ARTIFACT_LOAD_REFUSED: REFUSED,
    EventKind.ARTIFACT_VERIFIED: VERIFIED,
    EventKind.ARTIFACT_VERIFY_FAILED: VERIFY_FAILED,
}


class EntrySource(Protocol):
    """What lineage needs of a ledger (``trainguard.ledger.Ledger``): its entries in order."""

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[Any]: ...


def normalize_digest(text: Any) -> str | None:
    """``algo:hex`` in lower case, or None when ``text`` is not a digest. A bare 64-digit hex
    string is read as sha256 (what ``sha256sum`` prints)."""
    if not isinstance(text, str) or len(text) > 200:
        return None
    m = _DIGEST_RE.match(text.strip())
    if m:
        return f"{m.group(1)}:{m.group(2).lower()}"
    if _BARE_HEX_RE.match(text.strip()):
        return "sha256:" + text.strip().lower()
    return None


def normalize_path(text: Any) -> str | None:
    """A path as compared across events (``os.path.normpath``), or None when not a string."""
    if not isinstance(text, str) or not text or "\x00" in text:
        return None
    return os.path.normpath(text[:MAX_PATH])


def run_of(event: Event) -> str | None:
    """The run an event belongs to: ``details["run"]``, else the subject of run.started /
    run.finished, else the identity's job id (Identity.job)."""
    run = event.details.get("run")
    if isinstance(run, str) and run:
        return run
    if event.kind in (EventKind.RUN_STARTED, EventKind.RUN_FINISHED) and event.subject:
        return event.subject
    if event.identity is not None and isinstance(event.identity.job, str) and event.identity.job:
        return event.identity.job
    return None


def indexed_events(source: EntrySource | Iterable[Event]) -> Iterator[tuple[int, Event]]:
    """``(seq, event)`` for a ledger (anything with ``entries()`` yielding LedgerEntry: seq is
    the leaf index) or an iterable of events (seq is the position), in order."""
    if hasattr(source, "entries"):
        for n, entry in enumerate(source.entries()):
            if isinstance(entry, Event):
                yield n, entry
            else:
                index = getattr(entry, "index", n)
                yield (index if isinstance(index, int) else n), entry.event
    else:
        yield from enumerate(source)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ArtifactEvent:
    """One event about one artifact, with the fields lineage uses already extracted and checked."""

    #: position of the event in its source (ledger index or line order)
    seq: int
    #: produced | signed | loaded | refused | verified | verify_failed
    role: str
    digest: str | None
    path: str | None
    run: str | None
    identity: Identity | None
    time: float
    #: digests of the inputs it was produced from (role produced)
    inputs: tuple[str, ...] = ()
    #: signing identity (role signed): ``details["signer"]``, else Identity.signer
    signer: str | None = None
    #: trust role the emitter declared for the producing/signing identity (``details["role"]``)
    trust_role: str | None = None
    #: the digest a verifier expected (``details["expected"]``, role verify_failed)
    expected: str | None = None
    #: for a signature over an OMS v1.0 manifest (``details["files"]`` is a file count): the
    #: digest is the manifest's root digest, not a file's; how many files and the method
    manifest_files: int | None = None
    method: str | None = None
    event: Event = field(compare=False, repr=False, default=None)  # type: ignore[assignment]

    @property
    def who(self) -> str:
        """``user@host[job=..]`` or ``unknown``."""
        if self.signer and self.role == SIGNED:
            return self.signer
        return self.identity.short() if self.identity is not None else "unknown"

    @property
    def user(self) -> str | None:
        """The user to compare between runs (the signer for signatures)."""
        if self.role == SIGNED and self.signer:
            return self.signer
        return self.identity.user if self.identity is not None else None


def _artifact_events(seq: int, event: Event) -> list[ArtifactEvent]:
    role = _ROLE_OF_KIND.get(event.kind)
    if role is None:
        return []
    d = event.details
    digest = normalize_digest(event.subject) or normalize_digest(d.get("digest"))
    path = normalize_path(d.get("path")) or normalize_path(d.get("file"))
    if path is None and digest is None:
        path = normalize_path(event.subject)
    inputs: list[str] = []
    raw_inputs = d.get("inputs")
    if isinstance(raw_inputs, list):
        for item in raw_inputs[:MAX_INPUTS]:
            # an input is a digest, or {"digest": ..., "path": ...}
            dig = normalize_digest(item.get("digest") if isinstance(item, dict) else item)
            if dig is not None and dig != digest:
                inputs.append(dig)
    signer = d.get("signer")
    if not isinstance(signer, str) or not signer:
        signer = event.identity.signer if event.identity is not None else None
    if role == SIGNED and not signer and event.identity is not None:
        signer = event.identity.user
    trust_role = d.get("role") if isinstance(d.get("role"), str) else None
    count = d.get("files")
    base = ArtifactEvent(
        seq=seq, role=role, digest=digest, path=path, run=run_of(event), identity=event.identity,
        time=event.time, inputs=tuple(dict.fromkeys(inputs)), signer=signer,
        trust_role=trust_role, expected=normalize_digest(d.get("expected")),
        manifest_files=count if isinstance(count, int) and not isinstance(count, bool) else None,
        method=d.get("method") if isinstance(d.get("method"), str) else None, event=event)
    out = [base]
    if role == VERIFIED and isinstance(d.get("loader"), str):
        # The runtime guard's load gate verifies the bytes it is about to load and records that
        # one event (guard/loaders.py): it is a load by this run as well.
        out.append(ArtifactEvent(
            seq=seq, role=LOADED, digest=digest, path=path, run=base.run, identity=event.identity,
            time=event.time, event=event))
    files = d.get("file_digests")
    if not isinstance(files, dict):
        files = d.get("files")  # older emitters
    if role in (SIGNED, VERIFIED, VERIFY_FAILED) and isinstance(files, dict):
        # A directory signature (OMS v1.0 root digest as subject) names each file's digest: index
        # them too, so a loaded file is matched against what was signed for it.
        for n, (rel, fdig) in enumerate(files.items()):
            if n >= MAX_SIGNED_FILES:
                break
            fd = normalize_digest(fdig)
            fp = normalize_path(os.path.join(path or "", rel)) if isinstance(rel, str) else None
            if fd is not None and fp is not None:
                out.append(ArtifactEvent(
                    seq=seq, role=role, digest=fd, path=fp, run=base.run, identity=event.identity,
                    time=event.time, signer=signer, trust_role=trust_role, event=event))
    return out


def signature_covers(sig: ArtifactEvent, digest: str | None) -> bool | None:
    """Whether signature ``sig`` covers the file bytes with ``digest``: True, False, or None when
    the record cannot tell (a manifest signature over several files or shards, without per-file
    digests).

    An OMS v1.0 signature names the manifest's root digest, sha256 over the raw resource digests
    in order (model_signing_format.md); for a one-file manifest hashed per file that is
    sha256(file digest), which is checked here.
    """
    if digest is None or sig.digest is None:
        return None
    if sig.manifest_files is None:
        return sig.digest == digest
    if sig.digest == digest:
        return True
    algo, _, hexpart = digest.partition(":")
    if sig.manifest_files == 1 and sig.method in (None, "files") and algo == "sha256":
        root = hashlib.sha256(bytes.fromhex(hexpart)).hexdigest()
        return sig.digest == f"sha256:{root}"
    return None


class Lineage:
    """An index of artifact events: query producers, signers, verifications and consumers of a
    digest, and walk its ancestry. Build with :meth:`build` (one pass, linear in the events)."""

    def __init__(self) -> None:
        self._by_digest: dict[str, list[ArtifactEvent]] = defaultdict(list)
        self._by_path: dict[str, list[ArtifactEvent]] = defaultdict(list)
        self._by_name: dict[str, list[ArtifactEvent]] = defaultdict(list)
        self._by_run: dict[str, list[ArtifactEvent]] = defaultdict(list)
        self._children: dict[str, set[str]] = defaultdict(set)
        self.count = 0

    @classmethod
    def build(cls, source: EntrySource | Iterable[Event]) -> Lineage:
        """Index the artifact events of a ledger or of an iterable of events."""
        lin = cls()
        for seq, event in indexed_events(source):
            lin.add(event, seq)
        return lin

    def add(self, event: Event, seq: int) -> None:
        """Index one event (events that are not about artifacts are ignored)."""
        for ae in _artifact_events(seq, event):
            self.count += 1
            if ae.digest is not None:
                self._by_digest[ae.digest].append(ae)
            if ae.path is not None:
                self._by_path[ae.path].append(ae)
                self._by_name[os.path.basename(ae.path)].append(ae)
            if ae.run is not None:
                self._by_run[ae.run].append(ae)
            if ae.role == PRODUCED and ae.digest is not None:
                for parent in ae.inputs:
                    self._children[parent].add(ae.digest)

    # -- queries by digest ---------------------------------------------------------------------
    def artifacts(self) -> list[str]:
        """Every digest seen, sorted."""
        return sorted(self._by_digest)

    def events_for(self, digest: str) -> list[ArtifactEvent]:
        """All artifact events naming ``digest``, in source order."""
        d = normalize_digest(digest)
        return list(self._by_digest.get(d, [])) if d else []

    def _role(self, digest: str, *roles: str) -> list[ArtifactEvent]:
        return [a for a in self.events_for(digest) if a.role in roles]

    def producers_of(self, digest: str) -> list[ArtifactEvent]:
        """artifact.saved events for ``digest``: who wrote it, in which run, from which inputs."""
        return self._role(digest, PRODUCED)

    def signatures_of(self, digest: str) -> list[ArtifactEvent]:
        """artifact.signed / artifact.cosigned events whose signed content includes ``digest``."""
        return self._role(digest, SIGNED)

    def verifications_of(self, digest: str) -> list[ArtifactEvent]:
        """artifact.verified / artifact.verify_failed events for ``digest``."""
        return self._role(digest, VERIFIED, VERIFY_FAILED)

    def consumers_of(self, digest: str) -> list[ArtifactEvent]:
        """Loads of ``digest`` (artifact.loaded, guard.load) and refused loads."""
        return self._role(digest, LOADED, REFUSED)

    def inputs_of(self, digest: str) -> list[str]:
        """Digests the producers of ``digest`` declared as inputs (union, first-seen order)."""
        seen: dict[str, None] = {}
        for p in self.producers_of(digest):
            for i in p.inputs:
                seen.setdefault(i, None)
        return list(seen)

    def ancestry(self, digest: str, *, max_depth: int = 64,
                 max_nodes: int = 10_000) -> list[tuple[str, int]]:
        """Every artifact ``digest`` was produced from, transitively: ``(digest, depth)`` in
        breadth-first order (depth 1 = a direct input). Cycles (which a hostile log may contain)
        are visited once."""
        start = normalize_digest(digest)
        if start is None:
            return []
        out: list[tuple[str, int]] = []
        seen = {start}
        queue: deque[tuple[str, int]] = deque([(start, 0)])
        while queue and len(out) < max_nodes:
            node, depth = queue.popleft()
            if depth >= max_depth:
                continue
            for parent in self.inputs_of(node):
                if parent not in seen:
                    seen.add(parent)
                    out.append((parent, depth + 1))
                    queue.append((parent, depth + 1))
        return out

    def descendants(self, digest: str, *, max_nodes: int = 10_000) -> list[str]:
        """Artifacts produced (transitively) from ``digest``, breadth-first."""
        start = normalize_digest(digest)
        if start is None:
            return []
        out: list[str] = []
        seen = {start}
        queue = deque([start])
        while queue and len(out) < max_nodes:
            for child in sorted(self._children.get(queue.popleft(), ())):
                if child not in seen:
                    seen.add(child)
                    out.append(child)
                    queue.append(child)
        return out

    # -- queries by path and run ---------------------------------------------------------------
    def at_path(self, path: str, *, by_name: bool = False) -> list[ArtifactEvent]:
        """Artifact events naming ``path`` (normalized); with ``by_name``, any path with the same
        file name when none matches exactly."""
        p = normalize_path(path)
        if p is None:
            return []
        exact = list(self._by_path.get(p, []))
        if exact or not by_name:
            return exact
        return list(self._by_name.get(os.path.basename(p), []))

    def signed_at_path(self, path: str) -> tuple[list[ArtifactEvent], bool]:
        """Signatures naming ``path``; the flag says they were matched by file name only."""
        exact = [a for a in self.at_path(path) if a.role == SIGNED]
        if exact:
            return exact, False
        return [a for a in self.at_path(path, by_name=True) if a.role == SIGNED], True

    def signed_above(self, path: str, *, levels: int = 16) -> list[ArtifactEvent]:
        """Manifest signatures of a directory holding ``path`` (the nearest one that has any)."""
        p = normalize_path(path)
        for _ in range(levels):
            if p is None or p in ("", ".", os.sep):
                break
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
            found = [a for a in self._by_path.get(p, []) if a.role == SIGNED
                     and a.manifest_files is not None]
            if found:
                return found
        return []

    def digests_at_path(self, path: str) -> list[str]:
        """Digests recorded for ``path``, oldest first."""
        return list(dict.fromkeys(a.digest for a in self.at_path(path) if a.digest))

    def loads_by_run(self, run: str) -> list[ArtifactEvent]:
        """What ``run`` loaded (or tried to), in order."""
        return [a for a in self._by_run.get(run, []) if a.role in (LOADED, REFUSED)]

    def produced_by_run(self, run: str) -> list[ArtifactEvent]:
        """What ``run`` saved, in order."""
        return [a for a in self._by_run.get(run, []) if a.role == PRODUCED]

    def for_run(self, run: str) -> list[ArtifactEvent]:
        """Every artifact event of ``run``."""
        return list(self._by_run.get(run, []))

    def graph(self, digest: str) -> dict[str, Any]:
        """A JSON-ready summary of one artifact: paths, producers, signers, verifications,
        consumers, inputs and ancestry (used by ``trainguard investigate`` and the ledger CLI)."""
        def brief(a: ArtifactEvent) -> dict[str, Any]:
            return {"seq": a.seq, "role": a.role, "path": a.path, "run": a.run, "who": a.who,
                    "time": a.time, "identity": a.identity.to_dict() if a.identity else None}

        d = normalize_digest(digest) or digest
        return {
            "digest": d,
            "paths": sorted({a.path for a in self.events_for(d) if a.path}),
            "producers": [brief(a) | {"inputs": list(a.inputs)} for a in self.producers_of(d)],
            "signatures": [brief(a) | {"signer": a.signer} for a in self.signatures_of(d)],
            "verifications": [brief(a) for a in self.verifications_of(d)],
            "consumers": [brief(a) for a in self.consumers_of(d)],
            "ancestry": [{"digest": g, "depth": n} for g, n in self.ancestry(d)],
            "descendants": self.descendants(d)[:1000],
        }


def producer_users(events: Iterable[ArtifactEvent]) -> list[str]:
    """Distinct users behind ``events`` (signer for signatures), first-seen order."""
    return list(dict.fromkeys(u for u in (a.user for a in events) if u))


def details_str(details: Mapping[str, Any], key: str, limit: int = 256) -> str | None:
    """``details[key]`` when it is a non-empty string (cut to ``limit``), else None."""
    v = details.get(key)
    return v[:limit] if isinstance(v, str) and v else None
