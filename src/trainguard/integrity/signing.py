"""Signing models (OMS v1.0) with EC keys or internal-CA certificates, and co-signing.

``sign`` hashes the model into an OMS v1.0 manifest, signs its in-toto statement as a DSSE
envelope inside a Sigstore bundle v0.3 (verifiable by the reference ``model-signing`` tool), and
writes the trainguard checkpoint statement (run metadata, per-file tensor manifests) signed by
the same key into the attestation file beside it. ``cosign`` adds a second person's signature
over the same OMS payload.

Example::

    from trainguard.integrity.keys import PrivateKey
    from trainguard.integrity.signing import sign
    key = PrivateKey.generate("p256")
    bundle_path = sign(Path("ckpt/step-1000"), key=key)     # ckpt/step-1000.sig
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.core.errors import InputError, UsageError, VerificationError
from trainguard.core.events import Event, EventKind, EventSink
from trainguard.core.identity import Identity
from trainguard.integrity import certs as _certs
from trainguard.integrity.attestations import (
    AttestationFile,
    RunInfo,
    attestations_path,
    checkpoint_statement,
    statement_bytes,
    write_atomic,
)
from trainguard.integrity.bundle import PAYLOAD_TYPE, Bundle, Signature, pae
from trainguard.integrity.keys import PrivateKey
from trainguard.integrity.manifest import (
    DEFAULT_SHARD_SIZE,
    GIT_PATHS,
    Manifest,
    build_manifest,
    list_files,
    resolve,
)

if TYPE_CHECKING:
    from trainguard.integrity.cache import DigestCache

KeyLike = PrivateKey | str | os.PathLike[str]


@dataclass(frozen=True)
class SigningMaterial:
    """A private key, and the certificate chain (DER, leaf first) when signing by certificate."""

    key: PrivateKey
    cert_chain: tuple[bytes, ...] = ()

    @property
    def signer_id(self) -> str:
        """Key id (hex sha256 of the public PEM) or the certificate subject."""
        if self.cert_chain:
            return _certs.identity_of(_certs.parse_der(self.cert_chain[0])).subject
        return self.key.public_key().key_id

    @classmethod
    def load(cls, key: KeyLike, cert: str | os.PathLike[str] | None = None,
             chain: Iterable[str | os.PathLike[str]] = ()) -> SigningMaterial:
        """Load a key (and certificate + intermediates); the certificate must match the key."""
        pk = key if isinstance(key, PrivateKey) else PrivateKey.load(key)
        if cert is None:
            if list(chain):
                raise UsageError("a certificate chain needs a certificate (--cert)")
            return cls(pk)
        leaf_certs = _certs.load_certs(Path(cert))
        ders = [_certs.to_der(c) for c in leaf_certs]
        for c in chain:
            ders += [_certs.to_der(x) for x in _certs.load_certs(Path(c))]
        if not _certs.cert_matches_key(ders[0], pk.public_key().pem):
            raise UsageError(f"certificate {cert} does not certify the given private key")
        return cls(pk, tuple(dict.fromkeys(ders)))

    def check_certificate(self, *, roots: Sequence[Any] = (), crls: Sequence[Any] = (),
                          now: dt.datetime | None = None) -> None:
        """Refuse to sign with a certificate that is not valid now (or revoked, or, when roots
        are given, not chaining to them): a signature made with it could never verify."""
        if not self.cert_chain:
            return
        now = now or dt.datetime.now(dt.timezone.utc)
        leaf = _certs.parse_der(self.cert_chain[0])
        _certs.check_time(_certs.identity_of(leaf), now, "signing at")
        _certs.check_leaf_usage(leaf)
        if roots:
            _certs.verify_chain(self.cert_chain[0], self.cert_chain[1:], roots, at=now,
                                crls=crls, when="signing at")

    def sign_payload(self, payload: bytes, payload_type: str = PAYLOAD_TYPE) -> Bundle:
        """A Sigstore bundle v0.3 with one DSSE signature over PAE(type, payload)."""
        sig = self.key.sign(pae(payload_type, payload))
        if self.cert_chain:
            return Bundle(payload=payload, signatures=(Signature(sig, ""),),
                          payload_type=payload_type, cert_chain=self.cert_chain)
        # keyid stays empty as in the reference; the hint identifies the key (OMS v1.0).
        return Bundle(payload=payload, signatures=(Signature(sig, ""),),
                      payload_type=payload_type, key_hint=self.key.public_key().key_id)


def default_signature_path(model_path: Path) -> Path:
    """``<model>.sig`` beside the model directory (or file)."""
    p = model_path.resolve() if model_path.name in ("", ".", "..") else model_path
    return p.with_name(p.name + ".sig")


def _inside(model_path: Path, path: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(model_path.resolve())
    except ValueError:
        return None
    return rel.as_posix()


def sign(model_path: str | os.PathLike[str], key: KeyLike | None = None,
         cert: str | os.PathLike[str] | None = None, *,
         chain: Iterable[str | os.PathLike[str]] = (), output: str | os.PathLike[str] | None = None,
         method: str = "files", hash_type: str = "sha256", shard_size: int = DEFAULT_SHARD_SIZE,
         ignore_paths: Iterable[str] = (), ignore_git_paths: bool = True,
         allow_symlinks: bool = False, run: RunInfo | Mapping[str, Any] | None = None,
         checkpoint: bool = True, ca_roots: Sequence[Any] = (), crls: Sequence[Any] = (),
         identity: Identity | None = None, sink: EventSink | None = None,
         workers: int | None = None, progress: Callable[[Path, int], None] | None = None,
         cache: DigestCache | None = None) -> Path:
    """Sign ``model_path``; returns the path of the OMS bundle written.

    ``key`` is a :class:`PrivateKey` or a PEM file; with ``cert`` (PEM) the bundle carries the
    certificate and ``chain`` intermediates instead of a key hint. The attestation file
    ``<bundle>.trainguard.json`` gets the checkpoint statement unless ``checkpoint`` is False.
    A bundle written inside the model directory is left out of the manifest (and recorded as an
    ignore path, which verifiers accept for the signature file itself).
    """
    if key is None:
        raise UsageError("signing needs a private key (key=..., or --key / --cert-key)")
    model = Path(model_path)
    if not model.exists():
        raise InputError(f"model {model} does not exist")
    material = SigningMaterial.load(key, cert, chain)
    material.check_certificate(roots=ca_roots, crls=crls)
    out = Path(output) if output is not None else default_signature_path(model)
    ignore = [p.strip("/") for p in ignore_paths]
    for own in (out, attestations_path(out)):
        rel = _inside(model, own)
        if rel is not None:
            ignore.append(rel)
    tensors: Future[dict[str, Any]] | None = None
    pool = ThreadPoolExecutor(max_workers=1) if checkpoint else None
    # one walk of the tree serves the manifest and the tensor manifests (same ignore paths as
    # build_manifest applies)
    ig = {p.strip("/") for p in ignore if p.strip("/")}
    if ignore_git_paths:
        ig.update(GIT_PATHS)
    rels = list_files(model, ignore_paths=ig, allow_symlinks=allow_symlinks)
    try:
        if pool is not None:
            # Tensor digests read checkpoint files a second time: do it while the file digests
            # are computed, so a single large checkpoint keeps a second core busy.
            tensors = pool.submit(tensor_manifests, model, rels, cache)
        manifest = build_manifest(model, method=method, hash_type=hash_type,
                                  shard_size=shard_size, ignore_paths=ignore,
                                  ignore_git_paths=ignore_git_paths,
                                  allow_symlinks=allow_symlinks, workers=workers,
                                  progress=progress, cache=cache, files=rels)
        files_tm = tensors.result() if tensors is not None else {}
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    if not manifest.resources:
        raise InputError(f"model {model} has no files to sign")
    bundle = material.sign_payload(manifest.payload())
    ident = identity if identity is not None else Identity.current()
    ident = ident.with_(signer=material.signer_id)
    att_path = attestations_path(out)
    run_info = _run_info(run, ident)
    try:
        write_atomic(out, bundle.to_json())
        if checkpoint:
            st = checkpoint_statement(
                manifest, run=run_info, producer=ident.to_dict(),
                files={k: v for k, v in files_tm.items() if k in set(manifest.files())},
                signed_at=dt.datetime.now(dt.timezone.utc))
            AttestationFile((material.sign_payload(statement_bytes(st)),)).write(att_path)
        elif att_path.exists():
            att_path.unlink()  # an old checkpoint statement names another root digest
    except OSError as exc:
        raise InputError(f"cannot write signature {out}: {exc.strerror or exc}") from None
    if sink is not None:
        details: dict[str, Any] = {
            "path": str(model.absolute()), "signature": str(out.absolute()),
            "files": len(manifest.files()), "signer": material.signer_id,
            "method": method, "hash_type": hash_type, "run": run_info.to_dict()}
        file_digests = signed_file_digests(manifest)
        if file_digests is not None:
            details["file_digests"] = file_digests
        sink.emit(Event.now(EventKind.ARTIFACT_SIGNED, f"sha256:{manifest.root_digest().hex()}",
                            details, identity=ident))
    return out


#: per-file digests written into one ``artifact.signed`` event (the event stays well under
#: the ledger's entry limit; a larger manifest is still signed, its event lists none)
MAX_EVENT_FILE_DIGESTS = 10_000


def signed_file_digests(manifest: Manifest) -> dict[str, str] | None:
    """``{relative path: "<hash>:<hex>"}`` of a files-method manifest, for the
    ``artifact.signed`` event: the subject is the OMS v1.0 root digest (sha256 over the resource
    digests), which a loaded file's digest cannot be compared with once there are several files
    (docs/investigate.md). None for shards (a file's digest is not in the manifest) or for a
    manifest over :data:`MAX_EVENT_FILE_DIGESTS` files. A one-file model's entry is ``"."``."""
    ser = manifest.serialization
    if ser.method != "files" or len(manifest.resources) > MAX_EVENT_FILE_DIGESTS:
        return None
    return {r.name: f"{ser.hash_type}:{r.digest.hex()}" for r in manifest.resources}


def _run_info(run: RunInfo | Mapping[str, Any] | None, ident: Identity) -> RunInfo:
    if isinstance(run, RunInfo):
        info = run
    else:
        raw = dict(run or {})
        unknown = set(raw) - {"run_id", "step", "git_commit", "config_digest"}
        if unknown:
            raise UsageError(f"unknown run metadata: {', '.join(sorted(unknown))}")
        info = RunInfo(**raw)
    # Defaults from the producing process: its job id and the code's commit.
    return RunInfo(run_id=info.run_id if info.run_id is not None else ident.job,
                   step=info.step,
                   git_commit=info.git_commit if info.git_commit is not None else ident.git_commit,
                   config_digest=info.config_digest)


def config_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a training config file (for RunInfo.config_digest)."""
    try:
        return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(f"cannot read config {path}: {exc.strerror or exc}") from None


def tensor_manifests(model: Path, files: Manifest | Iterable[str],
                     cache: DigestCache | None = None) -> dict[str, Any]:
    """Per-file tensor manifests of the checkpoint files (safetensors, torch zip); with
    ``cache``, unchanged files are not parsed again."""
    try:
        from trainguard.integrity.tensors import tensor_manifest
    except ImportError:  # pragma: no cover - the tensors module ships with this package
        return {}
    from trainguard.core.errors import TrainguardError

    out: dict[str, Any] = {}
    for rel in (files.files() if isinstance(files, Manifest) else files):
        try:
            tm = (tensor_manifest(resolve(model, rel)) if cache is None
                  else tensor_manifest(resolve(model, rel), cache=cache))
        except (TrainguardError, OSError):
            continue  # unparseable or unreadable: the file digest still covers (or reports) it
        if tm is not None:
            out[rel] = tm
    return out


def cosign(model_path: str | os.PathLike[str], signature: str | os.PathLike[str],
           key: KeyLike, cert: str | os.PathLike[str] | None = None, *,
           chain: Iterable[str | os.PathLike[str]] = (), check_model: bool = True,
           ca_roots: Sequence[Any] = (), crls: Sequence[Any] = (),
           identity: Identity | None = None, sink: EventSink | None = None,
           workers: int | None = None) -> Path:
    """Add a co-signature over the OMS payload of ``signature``; returns the attestation file.

    With ``check_model`` (default) the model must match the signed manifest first: a reviewer
    co-signs the bytes they reviewed, not whatever the signature names. The co-signature's
    authenticity and the signer's trust are checked by ``verify`` under the trust policy.
    """
    from trainguard.integrity.verify import check_integrity

    model, sig_path = Path(model_path), Path(signature)
    primary = Bundle.read(sig_path)
    manifest = Manifest.from_statement(primary.statement())
    material = SigningMaterial.load(key, cert, chain)
    material.check_certificate(roots=ca_roots, crls=crls)
    pub = material.key.public_key()
    if primary.key_hint == pub.key_id or pub.pem == _primary_public_pem(primary):
        raise UsageError("the co-signer's key is the signer's key: a co-signature must come "
                         "from a second person")
    if check_model:
        # The reviewer checks what the signer scoped (the verifier's policy judges the scope).
        ignore = [*manifest.serialization.ignore_paths,
                  *(p for p in (_inside(model, sig_path),
                                _inside(model, attestations_path(sig_path))) if p)]
        changes = check_integrity(model, manifest, ignore=ignore, workers=workers)
        if changes:
            from trainguard.core.errors import TamperError

            raise TamperError(f"{model} does not match {sig_path}; refusing to co-sign",
                              changes=[_brief(c) for c in changes])
    co = material.sign_payload(primary.payload, primary.payload_type)
    att_path = attestations_path(sig_path)
    att = AttestationFile.read(att_path) if att_path.exists() else AttestationFile()
    try:
        att.with_bundle(co).write(att_path)
    except OSError as exc:
        raise InputError(f"cannot write {att_path}: {exc.strerror or exc}") from None
    if sink is not None:
        ident = (identity or Identity.current()).with_(signer=material.signer_id)
        sink.emit(Event.now(EventKind.ARTIFACT_COSIGNED,
                            f"sha256:{manifest.root_digest().hex()}",
                            {"path": str(model.absolute()),
                             "signature": str(sig_path.absolute()),
                             "cosigner": material.signer_id}, identity=ident))
    return att_path


def _primary_public_pem(bundle: Bundle) -> bytes | None:
    if bundle.cert_chain:
        try:
            return _certs.public_pem_of(bundle.cert_chain[0])
        except VerificationError:
            return None
    return None


def _brief(change: Mapping[str, Any]) -> str:
    return f"{change.get('change')}: {change.get('file')}"
