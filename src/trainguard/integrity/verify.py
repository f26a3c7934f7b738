"""Verifying signed models: signature, signer identity, trust policy, then content.

Steps (docs/signing.md, "What verify checks"), each failure a problem with a rule id:

1. read the OMS bundle (Sigstore bundle v0.3, DSSE, in-toto Statement v1), bounded;
2. authenticate it: a key-signed bundle under the policy key whose id matches the bundle's hint;
   a certificate-signed bundle by chain to the policy's CA roots at the policy's time, CRLs,
   then the leaf's key; the signer must be a policy identity;
3. the trust policy: every signed ignore path accepted by the verifier, the signer's roles
   permitted for (project, path), and the two-person rule (a co-signature from a required role);
4. the attestation file: the checkpoint statement (same signer, same subject) and co-signatures;
5. content: every signed file (or only ``files``) re-hashed, or checked against ``digests`` /
   ``contents`` the caller holds; missing, added, renamed and modified files; for modified
   checkpoint files, the tensors and hyperparameters that changed.

Verification failures are data (``VerifyResult.ok`` is False, ``problems`` says why);
``result.raise_for_failure()`` raises the matching :class:`TamperError`, :class:`PolicyError` or
:class:`VerificationError`. Unreadable inputs (missing model or signature file) raise
:class:`InputError` at once.

Example::

    from trainguard.integrity.verify import verify
    result = verify(Path("ckpt/step-1000"), Path("ckpt/step-1000.sig"))
    if not result.ok:
        for change in result.changes:
            print(change)
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from trainguard.core.errors import (
    InputError,
    MalformedInput,
    PolicyError,
    TamperError,
    TrainguardError,
    UsageError,
    VerificationError,
)
from trainguard.core.events import Event, EventKind, EventSink
from trainguard.core.findings import Severity
from trainguard.integrity import certs as _certs
from trainguard.integrity.attestations import (
    CHECKPOINT_PREDICATE,
    AttestationFile,
    CheckpointClaims,
    attestations_path,
)
from trainguard.integrity.bundle import Bundle, MalformedBundle
from trainguard.integrity.keys import PublicKey, SignatureInvalid
from trainguard.integrity.manifest import (
    Manifest,
    Resource,
    hash_resources,
    list_files,
    resolve,
)
from trainguard.integrity.trust import IdentitySpec, TrustPolicy

if TYPE_CHECKING:
    from trainguard.integrity.cache import DigestCache


class UnknownSigner(VerificationError):
    """The signature verifies under no identity of the trust policy."""

    remedy = "add the signer to [trust.identities], or pass its public key with --key"


_RULE_FOR: list[tuple[type[Exception], str]] = [
    (_certs.CertificateRevoked, "TG-SIG-006"), (_certs.CertificateExpired, "TG-SIG-005"),
    (_certs.CertificateError, "TG-SIG-004"), (UnknownSigner, "TG-SIG-003"),
    (MalformedBundle, "TG-SIG-002"), (MalformedInput, "TG-SIG-002"),
    (SignatureInvalid, "TG-SIG-001"),
]


def _rule_for(exc: Exception) -> str:
    for cls, rule in _RULE_FOR:
        if isinstance(exc, cls):
            return rule
    return "TG-SIG-001"


@dataclass(frozen=True)
class SignerInfo:
    """Who signed (or co-signed), as the trust policy knows them."""

    name: str
    roles: tuple[str, ...]
    kind: str  # "key" | "certificate"
    role: str = "signer"  # "signer" | "cosigner"
    key_id: str | None = None
    subject: str | None = None
    emails: tuple[str, ...] = ()
    fingerprint: str | None = None

    @property
    def principal(self) -> str:
        """A stable id of the key material: key id or certificate fingerprint."""
        return self.key_id or self.fingerprint or self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "roles": list(self.roles), "kind": self.kind,
                "role": self.role, "key_id": self.key_id, "subject": self.subject,
                "emails": list(self.emails), "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class Problem:
    """One reason verification failed."""

    rule_id: str
    kind: str  # "signature" | "policy" | "tamper"
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"rule_id": self.rule_id, "kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`."""

    ok: bool
    model: str
    signature: str
    model_name: str | None = None
    root_digest: str | None = None
    signers: tuple[SignerInfo, ...] = ()
    #: file-level ``{"kind": "file", "change": modified|missing|added|renamed|unsigned, "file"}``
    #: and tensor-level changes from ``tensors.compare_manifests`` with ``"file"`` added
    changes: tuple[dict[str, Any], ...] = ()
    files_checked: int = 0
    problems: tuple[Problem, ...] = ()
    #: run metadata of the checkpoint statement: {"run", "producer", "signed_at"}, if present
    checkpoint: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def error(self) -> VerificationError | None:
        """The exception that describes the failure (None when ok)."""
        if self.ok:
            return None
        text = "; ".join(p.message for p in self.problems[:5])
        if len(self.problems) > 5:
            text += f"; and {len(self.problems) - 5} more"
        kinds = {p.kind for p in self.problems}
        if "tamper" in kinds:
            return TamperError(f"{self.model}: {text}",
                               changes=[_change_text(c) for c in self.changes])
        if "policy" in kinds:
            return PolicyError(f"{self.model}: {text}")
        return VerificationError(f"{self.model}: {text}")

    def raise_for_failure(self) -> None:
        err = self.error
        if err is not None:
            raise err

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "trainguard.verify", "schema_version": "1.0", "ok": self.ok,
                "model": self.model, "signature": self.signature, "model_name": self.model_name,
                "root_digest": self.root_digest, "files_checked": self.files_checked,
                "signers": [s.to_dict() for s in self.signers], "changes": list(self.changes),
                "problems": [p.to_dict() for p in self.problems], "checkpoint": self.checkpoint}


def _change_text(c: Mapping[str, Any]) -> str:
    where = c.get("file", "")
    if c.get("kind", "file") != "file":
        return f"{c.get('change')} {c.get('kind')} {c.get('name')} in {where}"
    if c.get("change") == "renamed":
        return f"renamed {where} -> {c.get('to')}"
    return f"{c.get('change')} {where}"


# --- authentication ------------------------------------------------------------------------
def authenticate(bundle: Bundle, policy: TrustPolicy, *, at: dt.datetime,
                 role: str = "signer") -> SignerInfo:
    """Check the bundle's first DSSE signature and map the signer to a policy identity.

    Only ``signatures[0]`` counts (as in the reference verifier); raises SignatureInvalid,
    UnknownSigner or a certificate error.
    """
    if bundle.tlog_entries:
        # Keyless bundles need Fulcio's roots and Rekor's log keys (the `sigstore` extra's
        # trust root); trainguard verifies offline signatures only, and says so plainly.
        raise _certs.CertificateError(
            "this is a Sigstore keyless bundle (transparency-log entries, Fulcio certificate): "
            "keyless verification is not implemented", remedy="use `model_signing verify "
            "sigstore` for keyless bundles, or sign with a key or an internal-CA certificate")
    signed = bundle.signed_bytes()
    sig = bundle.signatures[0].sig
    if bundle.cert_chain:
        ident = _certs.verify_chain(bundle.cert_chain[0], bundle.cert_chain[1:], policy.ca_roots,
                                    at=at, crls=policy.crls, require_crl=policy.require_crl)
        try:
            pub = PublicKey.from_pem(_certs.public_pem_of(bundle.cert_chain[0]))
        except InputError as exc:
            raise _certs.CertificateError(f"signing certificate key: {exc.message}") from None
        pub.verify(signed, sig)
        spec = policy.for_cert(ident)
        if spec is None:
            raise UnknownSigner(f"certificate {ident.subject} (issuer {ident.issuer}) matches no "
                                "identity of the trust policy")
        return SignerInfo(spec.name, spec.roles, "certificate", role, subject=ident.subject,
                          emails=ident.emails, fingerprint=ident.fingerprint)
    keyed = [i for i in policy.key_identities() if i.key is not None]
    if bundle.key_hint is not None:
        keyed = [i for i in keyed if i.key_id == bundle.key_hint.lower()]
        if not keyed:
            raise UnknownSigner(f"signing key {bundle.key_hint[:16]}... is not a key of the "
                                "trust policy")
    for spec in keyed:
        assert spec.key is not None
        try:
            spec.key.verify(signed, sig)
        except SignatureInvalid:
            continue
        return _key_signer(spec, role)
    if bundle.key_hint is not None:
        raise SignatureInvalid(f"signature does not verify under key {bundle.key_hint[:16]}...: "
                               "the signed statement was changed or another key signed it")
    raise UnknownSigner("the signature verifies under no key of the trust policy")


def _key_signer(spec: IdentitySpec, role: str) -> SignerInfo:
    return SignerInfo(spec.name, spec.roles, "key", role, key_id=spec.key_id)


# --- content --------------------------------------------------------------------------------
def check_integrity(model: Path, manifest: Manifest, *, files: Iterable[str] | None = None,
                    digests: Mapping[str, bytes | str] | None = None,
                    contents: Mapping[str, bytes | memoryview] | None = None,
                    ignore: Iterable[str] = (), workers: int | None = None,
                    progress: Callable[[Path, int], None] | None = None,
                    cache: DigestCache | None = None,
                    counter: list[int] | None = None) -> list[dict[str, Any]]:
    """File-level differences between ``model`` and ``manifest`` (empty: it matches).

    ``files`` limits the check to these relative paths (partial verification: unlisted files,
    added or missing, are not looked at). ``digests`` gives raw digests (or hex) the caller
    computed, under the manifest's hash type, for a files-method manifest; ``contents`` gives
    bytes the caller holds (any method). ``ignore`` lists the paths left out of the comparison:
    the caller decides which of the signed ignore paths it accepts.
    """
    ser = manifest.serialization
    signed = manifest.files()
    signed_set = set(signed)
    changes: list[dict[str, Any]] = []
    given = {_norm(k): v for k, v in (digests or {}).items()}
    held = {_norm(k): v for k, v in (contents or {}).items()}
    if given and ser.method != "files":
        raise UsageError("precomputed digests apply to files-method signatures only; pass "
                         "the bytes (contents=) for a shards-method signature")
    if files is not None:
        wanted = list(dict.fromkeys(_norm(f) for f in files))
        for rel in wanted:
            if rel not in signed_set and not (ser.method == "shards" and rel not in held
                                               and resolve(model, rel).is_file()
                                               and resolve(model, rel).stat().st_size == 0):
                changes.append({"kind": "file", "change": "unsigned", "file": rel})
        targets = [r for r in wanted if r in signed_set]
        on_disk = [r for r in targets if r not in given and r not in held]
        linked = [r for r in on_disk if r != "." and not ser.allow_symlinks
                  and resolve(model, r).is_symlink()]
        changes += [{"kind": "file", "change": "modified", "file": r,
                     "type": "not a regular file"} for r in linked]
        missing = [r for r in on_disk if r not in linked and not resolve(model, r).is_file()]
        targets = [r for r in targets if r not in missing and r not in linked]
        added: list[str] = []
    else:
        special: list[str] = []
        actual = list_files(model, ignore_paths=list(ignore), allow_symlinks=ser.allow_symlinks,
                            special=special)
        actual_set = set(actual)
        missing = [r for r in signed if r not in actual_set and r not in special]
        added = [r for r in actual if r not in signed_set]
        if ser.method == "shards":
            # OMS shards cannot represent an empty file (it has no shard; model_signing
            # file_shard.py), so empty files are outside what such a signature covers.
            added = [r for r in added if resolve(model, r).stat().st_size > 0]
        # a symlink or FIFO where the signature expects a file (or anywhere) is tampering
        changes += [{"kind": "file", "change": "modified" if r in signed_set else "added",
                     "file": r, "type": "not a regular file"} for r in special]
        targets = [r for r in signed if r in actual_set]
    if counter is not None:
        counter.append(len(targets))
    by_name: dict[str, list[Resource]] = {}
    for r in manifest.resources:
        by_name.setdefault(r.path, []).append(r)
    from_digest = [r for r in targets if r in given and r not in held]
    to_hash = [r for r in targets if r not in from_digest]
    actual_res = hash_resources(model, to_hash, ser, workers=workers, progress=progress,
                                contents={r: held[r] for r in to_hash if r in held}, cache=cache)
    for rel in from_digest:
        d = given[rel]
        try:
            raw = bytes.fromhex(d) if isinstance(d, str) else bytes(d)
        except (ValueError, TypeError):
            raise UsageError(f"digests[{rel!r}] is neither raw bytes nor hex") from None
        actual_res.append(Resource(rel, ser.resource_algorithm, raw))
    got: dict[str, list[Resource]] = {}
    for r in actual_res:
        got.setdefault(r.path, []).append(r)
    for rel in targets:
        want = [(r.name, r.digest) for r in by_name[rel]]
        have = [(r.name, r.digest) for r in got.get(rel, [])]
        if want != have:
            change: dict[str, Any] = {"kind": "file", "change": "modified", "file": rel}
            if ser.method == "files" and have:
                change.update(expected=want[0][1].hex(), actual=have[0][1].hex())
            else:
                wd, hd = dict(want), dict(have)
                change["shards"] = sorted(n.rsplit(":", 2)[1] + ":" + n.rsplit(":", 2)[2]
                                          for n in set(wd) | set(hd) if wd.get(n) != hd.get(n))
            changes.append(change)
    changes += _renames(model, manifest, missing, added, workers)
    return changes


def _renames(model: Path, manifest: Manifest, missing: list[str], added: list[str],
             workers: int | None) -> list[dict[str, Any]]:
    ser = manifest.serialization
    out: list[dict[str, Any]] = []
    if missing and added and ser.method == "files" and len(added) <= 10_000:
        new = {r.digest: r.name for r in hash_resources(model, added, ser, workers=workers)}
        for rel in list(missing):
            res = manifest.get(rel)
            if res is not None and res.digest in new:
                to = new.pop(res.digest)
                out.append({"kind": "file", "change": "renamed", "file": rel, "to": to})
                missing.remove(rel)
                added.remove(to)
    out += [{"kind": "file", "change": "missing", "file": r} for r in missing]
    out += [{"kind": "file", "change": "added", "file": r} for r in added]
    return out


def _norm(rel: str | os.PathLike[str]) -> str:
    text = Path(rel).as_posix() if not isinstance(rel, str) else rel.replace(os.sep, "/")
    p = PurePosixPath(text)
    if p.is_absolute() or ".." in p.parts:
        raise UsageError(f"{rel!s}: give paths relative to the model directory")
    return str(p) if str(p) != "" else "."


def tensor_changes(model: Path, claims: CheckpointClaims,
                   changes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each modified file the checkpoint statement describes: which tensors and scalars
    changed (via ``tensors.compare_manifests``), each change with ``"file"`` added."""
    try:
        from trainguard.integrity.tensors import compare_manifests, tensor_manifest
    except ImportError:  # pragma: no cover
        return []
    out: list[dict[str, Any]] = []
    for c in changes:
        rel = c.get("file")
        if c.get("change") != "modified" or not isinstance(rel, str) or rel not in claims.files:
            continue
        try:
            now = tensor_manifest(resolve(model, rel))
        except TrainguardError as exc:
            out.append({"kind": "format", "change": "unreadable", "file": rel, "name": "",
                        "category": "metadata", "old": None, "new": str(exc)[:200]})
            continue
        out += [{**d, "file": rel} for d in compare_manifests(claims.files[rel], now)]
    return out


# --- the whole check -----------------------------------------------------------------------
def verify(model_path: str | os.PathLike[str], signature: str | os.PathLike[str], *,
           policy: TrustPolicy | None = None, files: Iterable[str] | None = None,
           digests: Mapping[str, bytes | str] | None = None,
           contents: Mapping[str, bytes | memoryview] | None = None,
           project: str | None = None, attestations: str | os.PathLike[str] | None = None,
           sink: EventSink | None = None, workers: int | None = None,
           progress: Callable[[Path, int], None] | None = None,
           cache: DigestCache | None = None, now: dt.datetime | None = None) -> VerifyResult:
    """Verify ``model_path`` against the OMS bundle ``signature`` under ``policy``
    (default: ``[trust]`` of the discovered trainguard.toml). See the module docstring."""
    model, sig_path = Path(model_path), Path(signature)
    if not model.exists():
        raise InputError(f"model {model} does not exist")
    policy = policy if policy is not None else TrustPolicy.from_config()
    att_path = Path(attestations) if attestations is not None else attestations_path(sig_path)
    v = _Verification(model, sig_path, policy, now or dt.datetime.now(dt.timezone.utc))
    try:
        primary = Bundle.read(sig_path)  # InputError (unreadable file) propagates: exit 2
    except MalformedBundle as exc:
        v.fail("TG-SIG-002", "signature", f"{sig_path}: {exc.message}")
    else:
        v.run(primary, att_path, project=project, files=files, digests=digests, contents=contents,
              workers=workers, progress=progress, cache=cache)
    result = v.result()
    if sink is not None:
        _emit(sink, result)
    return result


class _Verification:
    def __init__(self, model: Path, sig: Path, policy: TrustPolicy, now: dt.datetime) -> None:
        self.model, self.sig, self.policy, self.now = model, sig, policy, now
        self.problems: list[Problem] = []
        self.signers: list[SignerInfo] = []
        self.changes: list[dict[str, Any]] = []
        self.manifest: Manifest | None = None
        self.checkpoint: dict[str, Any] | None = None
        self.files_checked = 0
        self.cosign_by: tuple[str, ...] = ()

    def fail(self, rule: str, kind: str, message: str) -> None:
        self.problems.append(Problem(rule, kind, message))

    def run(self, primary: Bundle, att_path: Path, *, project: str | None,
            files: Iterable[str] | None, digests: Mapping[str, bytes | str] | None,
            contents: Mapping[str, bytes | memoryview] | None, workers: int | None,
            progress: Callable[[Path, int], None] | None, cache: DigestCache | None) -> None:
        if self.policy.empty:  # fail closed, and say so rather than "unknown signer"
            self.fail("TG-SIG-007", "policy", f"the trust policy ({self.policy.source}) has no "
                      "identities or no rules: nothing is trusted ([trust] in trainguard.toml, "
                      "or --key / --ca-root)")
            return
        att, claims_bundle, claims = self._attestations(att_path)
        at = self.now
        if self.policy.certificate_time == "signing" and primary.cert_chain:
            if claims is None or claims.signed_at is None:
                self.fail("TG-SIG-005", "policy", "[trust] certificate_time = \"signing\" needs "
                          "the signed checkpoint statement's signing time, and there is none")
                return
            at = claims.signed_at
        # Authenticate before parsing the statement: untrusted JSON is only looked at once a
        # trusted identity signed it (the bundle itself was parsed with bounds).
        try:
            signer = authenticate(primary, self.policy, at=at)
        except VerificationError as exc:
            kind = "policy" if isinstance(exc, PolicyError) else "signature"
            self.fail(_rule_for(exc), kind, exc.message)
            return
        try:
            self.manifest = Manifest.from_statement(primary.statement())
        except (MalformedBundle, MalformedInput) as exc:
            self.fail("TG-SIG-002", "signature", f"{self.sig}: {exc.message}")
            return
        self.signers.append(signer)
        self._policy(project)
        self._attested(att, claims_bundle, claims, signer, primary, at)
        ignore = [p for p in self.manifest.serialization.ignore_paths if self._accepted(p)]
        own = [r for r in (self._rel(self.sig), self._rel(att_path)) if r]
        counter: list[int] = []
        self.changes = check_integrity(self.model, self.manifest, files=files, digests=digests,
                                       contents=contents, ignore=[*ignore, *own],
                                       workers=workers, progress=progress, cache=cache,
                                       counter=counter)
        self.files_checked = counter[0] if counter else 0
        if claims is not None and self.checkpoint is not None:  # only a verified statement
            self.changes += tensor_changes(self.model, claims, self.changes)
        self._content_problems()

    # -- pieces -----------------------------------------------------------------------------
    def _rel(self, p: Path) -> str | None:
        try:
            return p.resolve().relative_to(self.model.resolve()).as_posix()
        except ValueError:
            return None

    def _accepted(self, path: str) -> bool:
        own = {self._rel(self.sig), self._rel(attestations_path(self.sig))}
        return self.policy.ignore_path_accepted(path) or path.strip("/") in own

    def _policy(self, project: str | None) -> None:
        assert self.manifest is not None
        for p in self.manifest.serialization.ignore_paths:
            if not self._accepted(p):
                self.fail("TG-SIG-008", "policy", f"the signer excluded {p!r} from the "
                          "signature and the policy does not accept that ignore path")
        d = self.policy.decide(self.signers[0].roles, project=project, model_path=self.model)
        if not d.allowed:
            self.fail("TG-SIG-007", "policy", f"signer {self.signers[0].name}: {d.reason}")
        self.cosign_by = d.cosign_by

    def _attestations(self, path: Path) -> tuple[AttestationFile | None, Bundle | None,
                                                 CheckpointClaims | None]:
        if not path.exists():
            if self.policy.require_checkpoint_statement:
                self.fail("TG-SIG-010", "policy", f"no attestation file {path} (the policy "
                          "requires the checkpoint statement)")
            return None, None, None
        try:
            att = AttestationFile.read(path)
        except MalformedBundle as exc:
            self.fail("TG-SIG-010", "signature", f"{path}: {exc.message}")
            return None, None, None
        for b in att.bundles:
            try:
                st = b.statement()
            except MalformedBundle:
                continue
            if isinstance(st, dict) and st.get("predicateType") == CHECKPOINT_PREDICATE:
                try:
                    return att, b, CheckpointClaims.from_statement(st)
                except MalformedBundle as exc:
                    self.fail("TG-SIG-010", "signature", f"{path}: {exc.message}")
                    return att, None, None
        if self.policy.require_checkpoint_statement:
            self.fail("TG-SIG-010", "policy", f"{path} holds no checkpoint statement")
        return att, None, None

    def _attested(  # noqa: PLR0917 - one call site
            self, att: AttestationFile | None, cb: Bundle | None,
            claims: CheckpointClaims | None, signer: SignerInfo, primary: Bundle,
            at: dt.datetime) -> None:
        assert self.manifest is not None
        if cb is not None and claims is not None:
            try:
                who = authenticate(cb, self.policy, at=at)
            except VerificationError as exc:
                self.fail("TG-SIG-010", "signature", f"checkpoint statement: {exc.message}")
            else:
                if who.principal != signer.principal:
                    self.fail("TG-SIG-010", "signature", "checkpoint statement was signed by "
                              f"{who.name}, not by the model's signer {signer.name}")
                elif claims.root_digest != self.manifest.root_digest():
                    self.fail("TG-SIG-010", "signature", "checkpoint statement names another "
                              "artifact (its subject digest differs from the signature's)")
                else:
                    self.checkpoint = {"run": claims.run, "producer": claims.producer,
                                       "signed_at": claims.signed_at.isoformat()
                                       if claims.signed_at else None}
        for b in att.bundles if att is not None else ():
            if b is cb:
                continue
            if b.payload != primary.payload or b.payload_type != primary.payload_type:
                self.fail("TG-SIG-010", "signature", "attestation file holds a bundle that is "
                          "neither the checkpoint statement nor a co-signature of this model")
                continue
            try:
                co = authenticate(b, self.policy, at=self.now, role="cosigner")
            except VerificationError as exc:
                self.fail(_rule_for(exc), "signature", f"co-signature: {exc.message}")
                continue
            if co.principal == signer.principal or co.name == signer.name:
                self.fail("TG-SIG-009", "policy", f"co-signature by {co.name} is by the signer "
                          "themself (a co-signature must come from a second person)")
                continue
            self.signers.append(co)
        need = self.cosign_by
        if need and not any(set(c.roles) & set(need) for c in self.signers[1:]):
            self.fail("TG-SIG-009", "policy", f"signer {signer.name} ({', '.join(signer.roles)}) "
                      f"needs a co-signature from role {' or '.join(need)}; none is present")

    def _content_problems(self) -> None:
        rule = {"modified": "TG-INT-001", "missing": "TG-INT-002", "renamed": "TG-INT-002",
                "added": "TG-INT-003", "unsigned": "TG-INT-003"}
        for c in self.changes:
            if c.get("kind") == "file":
                self.fail(rule.get(str(c.get("change")), "TG-INT-001"), "tamper",
                          _change_text(c))
            else:
                cat = c.get("category")
                self.fail("TG-INT-005" if cat in ("optimizer", "rng") else "TG-INT-004",
                          "tamper", _change_text(c))

    def result(self) -> VerifyResult:
        m = self.manifest
        return VerifyResult(
            ok=not self.problems, model=str(self.model), signature=str(self.sig),
            model_name=m.model_name if m else None,
            root_digest=m.root_digest().hex() if m else None, signers=tuple(self.signers),
            changes=tuple(self.changes), files_checked=self.files_checked,
            problems=tuple(self.problems), checkpoint=self.checkpoint)


def _emit(sink: EventSink, r: VerifyResult) -> None:
    subject = f"sha256:{r.root_digest}" if r.root_digest else r.model
    details: dict[str, Any] = {"path": r.model, "signature": r.signature,
                               "files_checked": r.files_checked,
                               "signers": [s.name for s in r.signers],
                               "signer_ids": [s.principal for s in r.signers]}
    if r.checkpoint is not None:  # who produced the artifact, as its signer recorded it
        details["producer"] = r.checkpoint.get("producer")
        details["run"] = r.checkpoint.get("run")
    if r.ok:
        sink.emit(Event.now(EventKind.ARTIFACT_VERIFIED, subject, details))
        return
    details["problems"] = [p.to_dict() for p in r.problems[:50]]
    details["changes"] = [_change_text(c) for c in r.changes[:200]]
    details["message"] = r.problems[0].message if r.problems else ""
    sink.emit(Event.now(EventKind.ARTIFACT_VERIFY_FAILED, subject, details,
                        severity=Severity.HIGH if r.problems and r.problems[0].kind != "tamper"
                        else Severity.CRITICAL,
                        rule_id=r.problems[0].rule_id if r.problems else None))
