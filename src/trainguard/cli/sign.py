"""``trainguard keygen / sign / verify / cosign``: OMS v1.0 signatures with identity and policy."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from trainguard.cli.output import write_output
from trainguard.core.errors import UsageError
from trainguard.core.events import EventSink, JsonlSink
from trainguard.core.report import ExitCode

F = TypeVar("F", bound=Callable[..., Any])

_FORMATS = click.Choice(["text", "json"])


def _sink(path: Path | None) -> EventSink | None:
    return JsonlSink(path) if path is not None else None


def _policy_parts(config_path: Path | None) -> tuple[Any, ...]:
    from trainguard.core.config import load_config
    from trainguard.integrity.trust import TrustPolicy

    policy = TrustPolicy.from_config(load_config(config_path))
    return policy.ca_roots, policy.crls


# --- keygen ---------------------------------------------------------------------------------
@click.command("keygen")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("signing.key"), show_default=True,
              help="Private key file to create (mode 0600; never overwritten).")
@click.option("--public", "public", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Public key file [default: OUTPUT with .pub].")
@click.option("--curve", type=click.Choice(["p256", "p384"]), default="p256", show_default=True,
              help="EC curve (OMS v1.0 key signing).")
def keygen_command(output: Path, public: Path | None, curve: str) -> None:
    """Create an EC signing key pair (PEM).

    The private key is encrypted when $TRAINGUARD_KEY_PASSWORD is set (passwords never come from
    the command line). The key id printed is the hex sha256 of the public key's PEM text, the
    OMS v1.0 key hint.

    \b
    Examples:
      trainguard keygen -o alice.key             # alice.key + alice.pub
      TRAINGUARD_KEY_PASSWORD=... trainguard keygen -o release.key --curve p384
    """
    from trainguard.integrity.keys import PASSWORD_ENV, PrivateKey

    pub = public if public is not None else output.with_suffix(".pub")
    if output.exists() or pub.exists():
        raise UsageError(f"{output if output.exists() else pub} exists; refusing to overwrite")
    key = PrivateKey.generate(curve)
    pw = os.environ.get(PASSWORD_ENV)
    try:
        key.save(output, pub, password=pw.encode() if pw else None)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"private key: {output}\npublic key:  {pub}\nkey id:      "
               f"{key.public_key().key_id}")



def _signer_options(key_help: str, cert_help: str) -> Callable[[F], F]:
    """--key | --cert/--cert-key/--ca-chain: who signs (sign and cosign take the same material)."""
    path = click.Path(dir_okay=False, path_type=Path)

    def decorate(f: F) -> F:
        for opt in reversed([
            click.option("--key", "key", type=path, default=None, help=key_help),
            click.option("--cert", "cert", type=path, default=None, help=cert_help),
            click.option("--cert-key", "cert_key", type=path, default=None,
                         help="Private key of the --cert certificate."),
            click.option("--ca-chain", "ca_chain", multiple=True, type=path,
                         help="Intermediate CA certificates to put in the bundle (repeatable)."),
        ]):
            f = opt(f)
        return f

    return decorate


# --- sign -----------------------------------------------------------------------------------
@click.command("sign")
@click.argument("model", type=click.Path(path_type=Path))
@_signer_options("EC private key (PEM) to sign with.",
                 "Signing certificate (PEM) from the internal CA; needs --cert-key.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Bundle to write [default: MODEL.sig beside the model].")
@click.option("--method", type=click.Choice(["files", "shards"]), default="files",
              show_default=True, help="OMS serialization: one digest per file or per shard.")
@click.option("--hash", "hash_type", type=click.Choice(["sha256", "blake2b", "blake3"]),
              default="sha256", show_default=True, help="Digest algorithm of the resources.")
@click.option("--shard-size", type=click.IntRange(1), default=1_000_000_000,
              show_default=True, help="Shard size in bytes (--method shards).")
@click.option("--ignore-path", "ignore_paths", multiple=True,
              help="Leave this relative path out (verifiers refuse it unless their policy "
                   "accepts it).")
@click.option("--ignore-git-paths/--no-ignore-git-paths", default=True, show_default=True,
              help="Leave .git, .gitattributes, .github, .gitignore out (as model-signing).")
@click.option("--allow-symlinks", is_flag=True, help="Follow symbolic links inside the model.")
@click.option("--run-id", default=None, help="Run id for the checkpoint statement "
              "[default: the scheduler's job id].")
@click.option("--step", type=int, default=None, help="Training step of this checkpoint.")
@click.option("--run-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Training config file whose sha256 the checkpoint statement records.")
@click.option("--no-checkpoint-statement", is_flag=True,
              help="Write only the OMS bundle (no run metadata or tensor manifests).")
@click.option("--cache", "use_cache", is_flag=True,
              help="Reuse digests of files whose inode, size and ctime did not change "
                   "(incremental re-signing; cache in ~/.cache/trainguard).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="trainguard.toml whose [trust] ca_roots/crls check --cert.")
@click.option("--events", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append an artifact.signed event to this JSONL file.")
@click.option("-f", "--format", "fmt", type=_FORMATS, default="text", show_default=True,
              help="Output format.")
def sign_command(  # noqa: PLR0917 - click passes options positionally
        model: Path, key: Path | None, cert: Path | None, cert_key: Path | None,
        ca_chain: tuple[Path, ...], output: Path | None, method: str, hash_type: str,
        shard_size: int, ignore_paths: tuple[str, ...], ignore_git_paths: bool,
        allow_symlinks: bool, run_id: str | None, step: int | None, run_config: Path | None,
        no_checkpoint_statement: bool, use_cache: bool, config_path: Path | None,
        events: Path | None, fmt: str) -> None:
    """Sign MODEL (a directory or file) as an OpenSSF model signing (OMS v1.0) bundle.

    Writes MODEL.sig (verifiable by `model_signing verify`) and MODEL.sig.trainguard.json (the
    checkpoint statement: run metadata and per-tensor digests, signed by the same key).

    \b
    Examples:
      trainguard sign ckpt/step-1000 --key alice.key --step 1000 --run-config train.yaml
      trainguard sign ckpt/ --cert alice.crt --cert-key alice.key --ca-chain ca/inter.pem
      trainguard sign big-model/ --key k.key --method shards --shard-size 500000000
    """
    from trainguard.integrity.signing import config_digest, sign

    if (key is None) == (cert is None):
        raise UsageError("give --key, or --cert with --cert-key")
    if cert is not None and cert_key is None:
        raise UsageError("--cert needs --cert-key (the certificate's private key)")
    if cert is None and (cert_key is not None or ca_chain):
        raise UsageError("--cert-key and --ca-chain go with --cert")
    roots: tuple[Any, ...] = ()
    crls: tuple[Any, ...] = ()
    if cert is not None:
        roots, crls = _policy_parts(config_path)
    run = {"run_id": run_id, "step": step,
           "config_digest": config_digest(run_config) if run_config else None}
    cache = None
    if use_cache:
        from trainguard.integrity.cache import DigestCache

        cache = DigestCache.open()
    sink = _sink(events)
    try:
        out = sign(model, key=key if key is not None else cert_key, cert=cert, chain=ca_chain,
                   output=output, method=method, hash_type=hash_type, shard_size=shard_size,
                   ignore_paths=ignore_paths, ignore_git_paths=ignore_git_paths,
                   allow_symlinks=allow_symlinks, run=run,
                   checkpoint=not no_checkpoint_statement, ca_roots=roots, crls=crls, sink=sink,
                   cache=cache)
        if cache is not None:
            cache.save()
    finally:
        if sink is not None:
            sink.close()
    from trainguard.integrity.attestations import attestations_path

    att = attestations_path(out)
    if fmt == "json":
        click.echo(json.dumps({"signature": str(out),
                               "attestations": str(att) if att.exists() else None}))
    else:
        click.echo(f"signed {model}\n  signature:    {out}"
                   + (f"\n  attestations: {att}" if att.exists() else ""))


# --- verify ---------------------------------------------------------------------------------
@click.command("verify")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-s", "--signature", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The OMS bundle [default: MODEL.sig beside the model].")
@click.option("--attestations", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Attestation file [default: SIGNATURE.trainguard.json].")
@click.option("-c", "--config", "--policy", "config_path",
              type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="trainguard.toml with the [trust] policy [default: discovered].")
@click.option("--key", "keys", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Trust this public key for anything (ad-hoc policy instead of [trust]).")
@click.option("--cosigner-key", "cosigner_keys", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Ad-hoc policy: trust this public key as a co-signer (role reviewer).")
@click.option("--ca-root", "ca_roots", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Ad-hoc policy: trust certificates issued under this CA root.")
@click.option("--crl", "crls", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Ad-hoc policy: refuse certificates revoked in this CRL.")
@click.option("--subject", "subjects", multiple=True,
              help="Ad-hoc policy: accept only certificates with this subject (RFC 4514).")
@click.option("--email", "emails", multiple=True,
              help="Ad-hoc policy: accept only certificates for this e-mail address.")
@click.option("--accept-ignore-path", "accept", multiple=True,
              help="Ad-hoc policy: accept this signer-chosen ignore path (git paths are "
                   "accepted).")
@click.option("--project", default=None,
              help="Project whose jobs load the model [default: [trust] project].")
@click.option("--files", "files", multiple=True,
              help="Verify only these relative paths (repeatable): partial verification.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None,
              help="Hash with N threads [default: CPU count].")
@click.option("--events", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append an artifact.verified / verify_failed event to this JSONL file.")
@click.option("-f", "--format", "fmt", type=_FORMATS, default="text", show_default=True,
              help="Output format (json: docs/signing.md).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result to this file instead of standard output.")
def verify_command(  # noqa: PLR0917
        model: Path, signature: Path | None, attestations: Path | None, config_path: Path | None,
        keys: tuple[Path, ...], cosigner_keys: tuple[Path, ...], ca_roots: tuple[Path, ...],
        crls: tuple[Path, ...], subjects: tuple[str, ...], emails: tuple[str, ...],
        accept: tuple[str, ...], project: str | None, files: tuple[str, ...], jobs: int | None,
        events: Path | None, fmt: str, output: Path | None) -> None:
    """Verify MODEL against its OMS v1.0 signature, the signer's identity and the trust policy.

    Reports missing, added, renamed and modified files and, from the checkpoint statement, the
    tensors and optimizer hyperparameters that changed. The policy is [trust] in trainguard.toml
    unless --key / --ca-root give an ad-hoc one. Exit 0 verified, 1 verification failed
    (including a signature that cannot be read), 2 usage error or unreadable input.

    \b
    Examples:
      trainguard verify ckpt/step-1000                       # [trust] from trainguard.toml
      trainguard verify ckpt/ -s ckpt.sig --key alice.pub -f json
      trainguard verify ckpt/ --ca-root ca/root.pem --crl ca/crl.pem --subject "CN=Alice,O=Lab"
      trainguard verify ckpt/ --files model-00001.safetensors    # what this rank loads
    """
    from trainguard.integrity.signing import default_signature_path
    from trainguard.integrity.verify import verify

    sig = signature if signature is not None else default_signature_path(model)
    policy = _policy(config_path, keys, cosigner_keys, ca_roots, crls, subjects, emails, accept)
    sink = _sink(events)
    try:
        result = verify(model, sig, policy=policy, files=list(files) or None, project=project,
                        attestations=attestations, sink=sink, workers=jobs)
    finally:
        if sink is not None:
            sink.close()
    if fmt == "json":
        text = json.dumps(result.to_dict(), indent=2, default=str) + "\n"
    else:
        text = _verify_text(result)
    write_output(text, output)
    raise click.exceptions.Exit(int(ExitCode.CLEAN if result.ok else ExitCode.FINDINGS))


def _policy(  # noqa: PLR0917 - the ad-hoc policy options, one each
        config_path: Path | None, keys: tuple[Path, ...], cosigner_keys: tuple[Path, ...],
            ca_roots: tuple[Path, ...], crls: tuple[Path, ...], subjects: tuple[str, ...],
            emails: tuple[str, ...], accept: tuple[str, ...]) -> Any:
    from trainguard.core.config import load_config
    from trainguard.integrity.certs import load_certs, load_crls
    from trainguard.integrity.keys import PublicKey
    from trainguard.integrity.manifest import GIT_PATHS
    from trainguard.integrity.trust import TrustPolicy

    if not (keys or ca_roots):
        if cosigner_keys or crls or subjects or emails or accept:
            raise UsageError("--cosigner-key, --crl, --subject, --email and --accept-ignore-path "
                             "build an ad-hoc policy with --key or --ca-root")
        return TrustPolicy.from_config(load_config(config_path))
    if config_path is not None:
        raise UsageError("give either --config (a [trust] policy) or an ad-hoc policy "
                         "(--key / --ca-root), not both")
    roots: list[Any] = []
    for r in ca_roots:
        roots += load_certs(r)
    return TrustPolicy.trusting(
        keys=[PublicKey.load(k) for k in keys], ca_roots=roots, crls=load_crls(crls),
        subjects=subjects, emails=emails, accept_ignore_paths=[*GIT_PATHS, *accept],
        cosign_keys=[PublicKey.load(k) for k in cosigner_keys])


def _verify_text(r: Any) -> str:
    lines = []
    if r.ok:
        lines.append(f"VERIFIED {r.model} (sha256:{r.root_digest}, {r.files_checked} files)")
    else:
        lines.append(f"FAILED {r.model}: {len(r.problems)} problem(s)")
    for s in r.signers:
        who = s.key_id[:16] + "..." if s.key_id else s.subject
        lines.append(f"  {s.role}: {s.name} [{', '.join(s.roles)}] {s.kind} {who}")
    if r.checkpoint:
        run = r.checkpoint.get("run") or {}
        prod = r.checkpoint.get("producer") or {}
        lines.append("  run: " + ", ".join(f"{k}={v}" for k, v in run.items() if v is not None)
                     + f" (by {prod.get('user')}@{prod.get('host')}, "
                       f"signed {r.checkpoint.get('signed_at')})")
    for p in r.problems:
        lines.append(f"  {p.rule_id} {p.message}")
        if p.kind == "tamper":
            continue
    for c in r.changes:
        if c.get("kind") in ("tensor", "scalar") and c.get("change") == "changed":
            old, new = c.get("old"), c.get("new")
            if c.get("kind") == "tensor":
                old = (old or {}).get("digest", "")[:12]
                new = (new or {}).get("digest", "")[:12]
            lines.append(f"    {c.get('file')}: {c.get('name')}: {old} -> {new}")
    return "\n".join(lines) + "\n"


# --- cosign ---------------------------------------------------------------------------------
@click.command("cosign")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-s", "--signature", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The OMS bundle to co-sign [default: MODEL.sig].")
@_signer_options("The co-signer's EC private key (PEM).",
                 "The co-signer's certificate (PEM); needs --cert-key.")
@click.option("--no-check", is_flag=True,
              help="Co-sign without first checking that MODEL matches the signature.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="trainguard.toml whose [trust] ca_roots/crls check --cert.")
@click.option("--events", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append an artifact.cosigned event to this JSONL file.")
def cosign_command(  # noqa: PLR0917
        model: Path, signature: Path | None, key: Path | None, cert: Path | None,
        cert_key: Path | None, ca_chain: tuple[Path, ...], no_check: bool,
        config_path: Path | None, events: Path | None) -> None:
    """Add a second person's signature to MODEL's signature (two-person rule).

    The co-signature signs the very same OMS statement; it is stored in
    SIGNATURE.trainguard.json and is itself a bundle `model_signing verify` accepts.
    By default MODEL must match the signature first: you co-sign what you reviewed.

    \b
    Examples:
      trainguard cosign ckpt/step-1000 --key reviewer.key
      trainguard cosign ckpt/ -s ckpt.sig --cert rev.crt --cert-key rev.key
    """
    from trainguard.integrity.signing import cosign, default_signature_path

    if (key is None) == (cert is None):
        raise UsageError("give --key, or --cert with --cert-key")
    if cert is not None and cert_key is None:
        raise UsageError("--cert needs --cert-key")
    roots: tuple[Any, ...] = ()
    crls: tuple[Any, ...] = ()
    if cert is not None:
        roots, crls = _policy_parts(config_path)
    sig = signature if signature is not None else default_signature_path(model)
    from trainguard.core.errors import TamperError

    signing_key = key if key is not None else cert_key
    assert signing_key is not None
    sink = _sink(events)
    try:
        att = cosign(model, sig, signing_key, cert, chain=ca_chain, check_model=not no_check,
                     ca_roots=roots, crls=crls, sink=sink)
    except TamperError as exc:  # the model is not what was signed: a verification failure
        click.echo(f"trainguard: {exc.diagnostics()}", err=True)
        for change in exc.changes:
            click.echo(f"  {change}", err=True)
        raise click.exceptions.Exit(int(ExitCode.FINDINGS)) from None
    finally:
        if sink is not None:
            sink.close()
    click.echo(f"co-signed {sig}\n  attestations: {att}")
