"""The attestation file beside an OMS bundle: the checkpoint statement and co-signatures.

The OMS v1.0 predicate forbids extra fields and a Sigstore bundle holds one envelope, so what
trainguard adds lives in a second file, ``<signature>.trainguard.json`` (docs/signing.md):

    {"mediaType": "application/vnd.trainguard.attestations.v1+json",
     "bundles": [<Sigstore bundle v0.3>, ...]}

Each entry is a complete, independently verifiable Sigstore bundle v0.3 with a DSSE envelope:

* the **checkpoint statement**: an in-toto Statement v1 with the same subject as the OMS
  statement (model name, sha256 root digest), predicate type ``https://trainguard.dev/checkpoint/v1``,
  predicate ``{run: {run_id, step, git_commit, config_digest}, producer: <Identity>, signed_at,
  files: {relative path: tensor manifest}}``, signed by the same key or certificate as the OMS
  bundle;
* **co-signatures**: a bundle whose DSSE payload is byte-for-byte the OMS bundle's payload,
  signed by a second identity (``trainguard cosign``). Each is itself a valid OMS bundle: the
  reference tool verifies it against the co-signer's key.

The OMS bundle itself is left untouched, so ``model_signing verify`` keeps working.

Example::

    from trainguard.integrity.attestations import AttestationFile, attestations_path
    att = AttestationFile.read(attestations_path(Path("model.sig")))
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.integrity.bundle import Bundle, MalformedBundle, parse_json, read_limited
from trainguard.integrity.manifest import STATEMENT_TYPE, Manifest, canonical_json, parse_subject

ATTESTATIONS_MEDIA_TYPE = "application/vnd.trainguard.attestations.v1+json"
CHECKPOINT_PREDICATE = "https://trainguard.dev/checkpoint/v1"
SUFFIX = ".trainguard.json"
MAX_BUNDLES = 64


def attestations_path(signature: Path) -> Path:
    """Where the attestation file of ``signature`` lives: beside it, ``<name>.trainguard.json``."""
    return signature.with_name(signature.name + SUFFIX)


@dataclass(frozen=True)
class RunInfo:
    """Run metadata recorded in the checkpoint statement."""

    run_id: str | None = None
    step: int | None = None
    git_commit: str | None = None
    config_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "step": self.step, "git_commit": self.git_commit,
                "config_digest": self.config_digest}


def checkpoint_statement(manifest: Manifest, *, run: RunInfo, producer: Mapping[str, Any],
                         files: Mapping[str, Any], signed_at: dt.datetime) -> dict[str, Any]:
    """The trainguard checkpoint statement for ``manifest`` (same subject as its OMS statement)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [manifest.subject()],
        "predicateType": CHECKPOINT_PREDICATE,
        "predicate": {
            "run": run.to_dict(),
            "producer": dict(producer),
            "signed_at": signed_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "files": dict(sorted(files.items())),
        },
    }


@dataclass(frozen=True)
class CheckpointClaims:
    """A checkpoint statement's predicate, validated for type (its content is the signer's)."""

    subject_name: str
    root_digest: bytes
    run: dict[str, Any]
    producer: dict[str, Any]
    signed_at: dt.datetime | None
    files: dict[str, Any]

    @classmethod
    def from_statement(cls, st: Any) -> CheckpointClaims:
        if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE:
            raise MalformedBundle("checkpoint statement is not an in-toto Statement v1")
        if st.get("predicateType") != CHECKPOINT_PREDICATE:
            raise MalformedBundle("not a trainguard checkpoint statement")
        try:
            name, root = parse_subject(st)
        except Exception as exc:  # MalformedInput -> reported as a bundle problem
            raise MalformedBundle(f"checkpoint statement: {exc}") from None
        pred = st.get("predicate")
        if not isinstance(pred, dict):
            raise MalformedBundle("checkpoint statement predicate must be an object")
        run, producer, files = pred.get("run", {}), pred.get("producer", {}), pred.get("files", {})
        if not isinstance(run, dict) or not isinstance(producer, dict) or not isinstance(
                files, dict):
            raise MalformedBundle("checkpoint run, producer and files must be objects")
        if not all(isinstance(v, dict) for v in files.values()):
            raise MalformedBundle("checkpoint files must map paths to tensor manifests")
        when = None
        if isinstance(pred.get("signed_at"), str):
            try:
                when = dt.datetime.strptime(pred["signed_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
                    tzinfo=dt.timezone.utc)
            except ValueError:
                raise MalformedBundle("checkpoint signed_at is not an RFC 3339 UTC time") from None
        return cls(name, root, run, producer, when, files)


@dataclass(frozen=True)
class AttestationFile:
    """The parsed attestation file: bundles in file order."""

    bundles: tuple[Bundle, ...] = ()
    raw: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)

    def to_json(self) -> bytes:
        doc = {"mediaType": ATTESTATIONS_MEDIA_TYPE,
               "bundles": [b.to_dict() for b in self.bundles]}
        return json.dumps(doc, indent=1).encode("utf-8") + b"\n"

    def with_bundle(self, bundle: Bundle) -> AttestationFile:
        return AttestationFile(bundles=(*self.bundles, bundle))

    @classmethod
    def from_json(cls, raw: bytes) -> AttestationFile:
        doc = parse_json(raw, "attestation file")
        if not isinstance(doc, dict) or doc.get("mediaType") != ATTESTATIONS_MEDIA_TYPE:
            raise MalformedBundle(f"not a trainguard attestation file (mediaType "
                                  f"{ATTESTATIONS_MEDIA_TYPE})")
        items = doc.get("bundles")
        if not isinstance(items, list) or len(items) > MAX_BUNDLES:
            raise MalformedBundle(f"attestation file bundles must be a list of at most "
                                  f"{MAX_BUNDLES}")
        return cls(bundles=tuple(Bundle.from_dict(b) for b in items))

    @classmethod
    def read(cls, path: Path) -> AttestationFile:
        return cls.from_json(read_limited(path, "attestation file"))

    def write(self, path: Path) -> None:
        write_atomic(path, self.to_json())


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename: readers never see half a signature."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def statement_bytes(statement: Mapping[str, Any]) -> bytes:
    return canonical_json(dict(statement))
