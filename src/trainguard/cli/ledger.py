"""``trainguard ledger``: the tamper-evident record (init, append, show, query, head, verify,
proof, witness, serve, export)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from trainguard.cli.output import write_output
from trainguard.core.errors import InputError, TamperError, UsageError, VerificationError
from trainguard.core.report import ExitCode

_LEDGER_HELP = ("Ledger: a path, sqlite:///path, postgresql://... or http://host:port "
                "[default: $TRAINGUARD_LEDGER, [ledger] url, else .trainguard/ledger.db in the "
                "project].")


def _ledger_option(f: Any) -> Any:
    return click.option("-l", "--ledger", "ledger_url", default=None, metavar="URL",
                        help=_LEDGER_HELP)(f)


def _format_option(f: Any) -> Any:
    return click.option("-f", "--format", "fmt", type=click.Choice(["text", "json"]),
                        default="text", show_default=True, help="Output format.")(f)


def _output_option(f: Any) -> Any:
    return click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help="Write to this file instead of standard output.")(f)


def _open(url: str | None, *, create: bool = False) -> Any:
    """Open the ledger; only init, append and serve create a missing SQLite file (a mistyped
    path must not verify as an empty, untampered ledger)."""
    from trainguard.ledger import open_ledger

    return open_ledger(url, create=create)


def _write(text: str, output: Path | None) -> None:
    write_output(text if text.endswith("\n") else text + "\n", output)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _entry_line(e: Any) -> str:
    ev = e.event
    who = f" [{ev.identity.short()}]" if ev.identity is not None else ""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ev.time or e.appended_at))
    sev = f" {ev.severity.label.upper()}" if ev.severity is not None else ""
    rule = f" {ev.rule_id}" if ev.rule_id else ""
    return f"{e.index:>8}  {when}Z{sev}{rule}  {ev.kind}  {ev.subject}{who}"


def _entries_out(entries: Iterable[Any], fmt: str, output: Path | None) -> None:
    if fmt == "json":
        _write(_json([e.to_dict() for e in entries]), output)
    else:
        _write("\n".join(_entry_line(e) for e in entries) + "\n", output)


@click.group("ledger")
def ledger_group() -> None:
    """A tamper-evident record of model events: an RFC 9162 Merkle log with signed heads.

    \b
    Examples:
      trainguard ledger init
      trainguard ledger append artifact.saved sha256:ab12... --details '{"path": "ckpt.pt"}'
      trainguard ledger query --kind 'artifact.*' --job 4711
      trainguard ledger head --key ledger.key -o head-2026-12-01.json
      trainguard ledger verify --head head-2026-12-01.json --pubkey ledger.pub
      trainguard ledger serve --db /srv/ledger.db --host 0.0.0.0 --port 8765

    A ledger is tamper-evident only against tree heads kept where its writers cannot reach
    (witnesses, CI artifacts): see docs/ledger.md. Exit codes: 0 ok, 1 tampering or a proof or
    signature that does not verify, 2 usage or input error.
    """


@ledger_group.command("init")
@_ledger_option
@_format_option
def init_command(ledger_url: str | None, fmt: str) -> None:
    """Create the ledger (tables and migrations) if it does not exist; print where it is.

    \b
    Examples:
      trainguard ledger init
      trainguard ledger init --ledger postgresql://ledger@db/trainguard
    """
    with _open(ledger_url, create=True) as led:
        info = {"ledger": led.location, "ledger_id": led.ledger_id, "size": led.size}
    _write(_json(info) if fmt == "json" else
           f"ledger {info['ledger']} (id {info['ledger_id']}, {info['size']} entries)\n", None)


@ledger_group.command("append")
@click.argument("kind", required=False)
@click.argument("subject", required=False)
@click.option("--details", default=None, metavar="JSON", help="Event details (a JSON object).")
@click.option("--from-jsonl", "from_jsonl", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Append every event of a JSONL file (trainguard.event lines) "
                                 "in one transaction.")
@_ledger_option
@_format_option
def append_command(  # noqa: PLR0917 - click passes options positionally
    kind: str | None, subject: str | None, details: str | None,
                   from_jsonl: Path | None, ledger_url: str | None, fmt: str) -> None:
    """Append an event (KIND SUBJECT) with this process's identity, or a JSONL file of events.

    \b
    Examples:
      trainguard ledger append artifact.saved sha256:ab12... --details '{"path": "ckpt.pt"}'
      trainguard ledger append --from-jsonl events.jsonl
    """
    from trainguard.core.events import Event, read_jsonl

    if from_jsonl is not None:
        if kind or subject or details:
            raise UsageError("give either KIND SUBJECT or --from-jsonl")
        try:
            events = list(read_jsonl(from_jsonl))
        except OSError as exc:
            raise InputError(f"cannot read {from_jsonl}: {exc.strerror}") from None
        except ValueError as exc:
            raise InputError(str(exc)) from None
    else:
        if not kind or not subject:
            raise UsageError("KIND and SUBJECT are required (or --from-jsonl FILE)")
        try:
            data = json.loads(details) if details else {}
        except ValueError as exc:
            raise UsageError(f"--details is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError("--details must be a JSON object")
        try:
            events = [Event.now(kind, subject, data)]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    with _open(ledger_url, create=True) as led:
        indices = led.append_many(events)
    _write(_json({"indices": indices}) if fmt == "json"
           else "".join(f"appended entry {i}\n" for i in indices), None)


@ledger_group.command("show")
@click.argument("indices", nargs=-1, type=click.IntRange(0))
@click.option("--start", type=click.IntRange(0), default=0, show_default=True,
              help="First entry to list.")
@click.option("--end", type=click.IntRange(0), default=None, help="List up to (excluding) this.")
@click.option("--tail", type=click.IntRange(1), default=None, help="Only the last N entries.")
@_ledger_option
@_format_option
@_output_option
def show_command(  # noqa: PLR0917 - click passes options positionally
    indices: tuple[int, ...], start: int, end: int | None, tail: int | None,
                 ledger_url: str | None, fmt: str, output: Path | None) -> None:
    """Show entries (all, a range, the last N, or the given INDICES).

    \b
    Examples:
      trainguard ledger show --tail 20
      trainguard ledger show 41 42 -f json
    """
    with _open(ledger_url) as led:
        if indices:
            entries = [led.entry(i) for i in indices]
        else:
            if tail is not None:
                start = max(0, (end if end is not None else led.size) - tail)
            entries = list(led.entries(start, end))
    _entries_out(entries, fmt, output)


def _parse_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    import datetime as dt

    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"not a time: {text!r} (seconds since the epoch or ISO 8601)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


@ledger_group.command("query")
@click.option("--kind", default=None, help="Event kind; a trailing * matches a prefix "
                                           "(artifact.*).")
@click.option("--subject", default=None, help="Subject (an artifact digest, path or run id).")
@click.option("--job", default=None, help="Scheduler job id (Identity.job).")
@click.option("--since", default=None, help="Events at or after this time (epoch or ISO 8601).")
@click.option("--until", default=None, help="Events before this time (epoch or ISO 8601).")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N entries.")
@_ledger_option
@_format_option
@_output_option
def query_command(  # noqa: PLR0917 - click passes options positionally
    kind: str | None, subject: str | None, job: str | None, since: str | None,
                  until: str | None, limit: int | None, ledger_url: str | None, fmt: str,
                  output: Path | None) -> None:
    """Entries matching every given filter, oldest first.

    \b
    Examples:
      trainguard ledger query --subject sha256:ab12...
      trainguard ledger query --kind guard.monitor --job 4711 --since 2026-12-01T00:00Z -f json
    """
    with _open(ledger_url) as led:
        entries = list(led.query(kind=kind, subject=subject, job=job, since=_parse_time(since),
                                 until=_parse_time(until), limit=limit))
    _entries_out(entries, fmt, output)


@ledger_group.command("head")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Sign the head with this private key (the ledger's key; password from "
                   "$TRAINGUARD_KEY_PASSWORD).")
@_ledger_option
@_format_option
@_output_option
def head_command(key: Path | None, ledger_url: str | None, fmt: str,
                 output: Path | None) -> None:
    """Print the current tree head (size and RFC 9162 root), signed with --key.

    Keep signed heads somewhere the ledger's writers cannot change them: `ledger verify
    --head` detects any later change to the first SIZE entries.

    \b
    Examples:
      trainguard ledger head
      trainguard ledger head --key ledger.key -o heads/$(date +%F).json
    """
    from trainguard.integrity.keys import PrivateKey

    with _open(ledger_url) as led:
        head = led.sign_head(PrivateKey.load(key)) if key is not None else led.head()
    if output is not None or fmt == "json":
        _write(head.to_json(), output)
    else:
        signed = f", signed by {head.key_id[:16]}" if head.key_id else " (unsigned)"
        _write(f"size {head.size}\nroot {head.root_hash.hex()}\norigin {head.origin}{signed}\n",
               None)


def _load_head(path: Path | None, pubkey: Path | None) -> tuple[Any, Any]:
    from trainguard.integrity.keys import PublicKey
    from trainguard.ledger.heads import TreeHead

    head = TreeHead.load(path) if path is not None else None
    key = PublicKey.load(pubkey) if pubkey is not None else None
    if key is not None and head is None:
        raise UsageError("--pubkey checks a head's signature: give --head too")
    return head, key


def _rule_for(exc: Exception, witness: bool = False) -> str:
    """TG-LED-001 tampered history, TG-LED-002 bad head signature, TG-LED-003 witness refusal."""
    from trainguard.integrity.keys import SignatureInvalid
    from trainguard.ledger.heads import HeadError

    if isinstance(exc, (SignatureInvalid, HeadError)):
        return "TG-LED-002"
    return "TG-LED-003" if witness else "TG-LED-001"


def _fail(fmt: str, output: Path | None, message: str, changes: list[str],
          rule_id: str = "TG-LED-001") -> None:
    if fmt == "json":
        _write(_json({"ok": False, "rule_id": rule_id, "error": message, "changes": changes}),
               output)
    else:
        click.echo(f"trainguard: TAMPERED ({rule_id}): {message}", err=True)
        for c in changes:
            click.echo(f"  - {c}", err=True)
        if output is not None:
            _write("\n".join([message, *changes]), output)
    raise click.exceptions.Exit(int(ExitCode.FINDINGS))


@ledger_group.command("verify")
@click.option("--head", "head_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="A kept tree head (file) the ledger must still match.")
@click.option("--pubkey", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The ledger's public key: the head's signature must verify under it.")
@click.option("--witness-pubkey", "witness_keys", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A witness public key whose co-signature the head must carry (repeatable).")
@_ledger_option
@_format_option
@_output_option
def verify_command(  # noqa: PLR0917 - click passes options positionally
    head_path: Path | None, pubkey: Path | None, witness_keys: tuple[Path, ...],
                   ledger_url: str | None, fmt: str, output: Path | None) -> None:
    """Re-read every entry and check the ledger: exit 1 if anything was changed.

    Without --head only the ledger's internal consistency is checked (indices, leaf hashes,
    hash chain); a consistent rewrite of the whole history is caught only against a kept head.

    \b
    Examples:
      trainguard ledger verify
      trainguard ledger verify --head head.json --pubkey ledger.pub --witness-pubkey w1.pub
    """
    from trainguard.integrity.keys import PublicKey

    head, key = _load_head(head_path, pubkey)
    try:
        for wk in witness_keys:
            if head is None:
                raise UsageError("--witness-pubkey checks a head's co-signature: give --head")
            head.verify_cosignature(PublicKey.load(wk))
        with _open(ledger_url) as led:
            result = led.verify(against_head=head, public_key=key)
    except TamperError as exc:
        _fail(fmt, output, exc.message, exc.changes)
        return
    except VerificationError as exc:
        _fail(fmt, output, exc.message, [], _rule_for(exc))
        return
    if fmt == "json":
        _write(_json(result.to_dict()), output)
    else:
        against = (f"; matches the kept head of {head.size} entries"
                   + (" (signature checked)" if key is not None else " (signature NOT checked)")
                   if head is not None else "; no kept head given: a consistent rewrite of the "
                                             "whole history would not be detected")
        _write(f"ok: {result.size} entries, root {result.root_hash.hex()}{against}\n", output)


@ledger_group.command("proof")
@click.argument("index", required=False, type=click.IntRange(0))
@click.option("--size", type=click.IntRange(0), default=None,
              help="Tree size to prove against [default: the current size].")
@click.option("--consistency", "first", type=click.IntRange(0), default=None, metavar="M",
              help="Prove that the tree of --size entries extends the tree of M entries.")
@click.option("--check", "check_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Verify a saved proof file offline (with --head, against "
                                 "that head's root).")
@click.option("--head", "head_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Tree head whose root the proof must lead to.")
@click.option("--pubkey", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The ledger's public key, to check --head's signature.")
@_ledger_option
@_format_option
@_output_option
def proof_command(  # noqa: PLR0917 - click passes options positionally
    index: int | None, size: int | None, first: int | None,
                  check_path: Path | None, head_path: Path | None, pubkey: Path | None,
                  ledger_url: str | None, fmt: str, output: Path | None) -> None:
    """Inclusion proof of entry INDEX, a consistency proof (--consistency M), or check one.

    \b
    Examples:
      trainguard ledger proof 41 -f json -o proof-41.json
      trainguard ledger proof --consistency 1000 --size 2000
      trainguard ledger proof --check proof-41.json --head head.json --pubkey ledger.pub
    """
    from trainguard.ledger.merkle import ConsistencyProof, InclusionProof, ProofError

    head, key = _load_head(head_path, pubkey)
    try:
        if head is not None and key is not None:
            head.verify_signature(key)
        if check_path is not None:
            try:
                data = json.loads(check_path.read_bytes()[: 1 << 20])
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read proof {check_path}: {exc}") from None
            kind = data.get("type") if isinstance(data, dict) else None
            proof: Any = (ConsistencyProof.from_dict(data) if kind == "consistency"
                          else InclusionProof.from_dict(data))
            if isinstance(proof, InclusionProof):
                if head is not None and head.size != proof.size:
                    raise ProofError(f"the proof is for size {proof.size}, the head has "
                                     f"{head.size}")
                proof.verify(head.root_hash if head is not None else None)
            else:
                if head is not None and head.size != proof.second:
                    raise ProofError(f"the proof is to size {proof.second}, the head has "
                                     f"{head.size}")
                proof.verify(None, head.root_hash if head is not None else None)
            _write(_json({"ok": True, **proof.to_dict()}) if fmt == "json"
                   else "ok: the proof verifies"
                   + (" against the head\n" if head is not None else
                      " (no head given: only internally)\n"), output)
            return
        n = size if size is not None else (head.size if head is not None else None)
        with _open(ledger_url) as led:
            if first is not None:
                proof = led.consistency_proof(first, n)
                proof.verify(None, head.root_hash if head is not None else None)
            elif index is not None:
                proof = led.inclusion_proof(index, n)
                proof.verify(head.root_hash if head is not None else None)
            else:
                raise UsageError("give INDEX, --consistency M or --check FILE")
    except VerificationError as exc:
        _fail(fmt, output, exc.message, [], _rule_for(exc))
        return
    if fmt == "json" or output is not None:
        _write(_json(proof.to_dict()), output)
    else:
        lines = [f"{k}: {v}" for k, v in proof.to_dict().items() if k != "path"]
        lines += [f"path[{i}]: {h.hex()}" for i, h in enumerate(proof.path)]
        _write("\n".join(lines) + "\nverified\n", None)


@ledger_group.command("witness")
@click.argument("head_path", metavar="HEAD", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The witness's private key (password from $TRAINGUARD_KEY_PASSWORD).")
@click.option("--ledger-pubkey", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The ledger's public key: HEAD's signature must verify under it.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where the witness keeps the last head per ledger "
                                 "[default: $XDG_DATA_HOME/trainguard/witness].")
@click.option("--proof", "proof_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="A consistency proof file from the last kept head to HEAD.")
@_ledger_option
@_format_option
@_output_option
def witness_command(  # noqa: PLR0917 - click passes options positionally
    head_path: Path, key: Path, ledger_pubkey: Path | None,
                    state_dir: Path | None, proof_path: Path | None, ledger_url: str | None,
                    fmt: str, output: Path | None) -> None:
    """Co-sign HEAD after checking it extends the last head this witness kept.

    The consistency proof comes from --proof, else from --ledger. A head that is smaller than,
    or forks from, the kept one is refused with exit 1.

    \b
    Examples:
      trainguard ledger witness head.json --key witness.key --ledger http://ledger:8765 \\
          --ledger-pubkey ledger.pub -o head.cosigned.json
      trainguard ledger witness head.json --key witness.key --proof proof.json
    """
    from trainguard.integrity.keys import PrivateKey, PublicKey
    from trainguard.ledger.heads import TreeHead, Witness
    from trainguard.ledger.merkle import ConsistencyProof

    head = TreeHead.load(head_path)
    witness_key = PrivateKey.load(key)
    ledger_key = PublicKey.load(ledger_pubkey) if ledger_pubkey is not None else None
    if state_dir is None:
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        state_dir = Path(data) / "trainguard" / "witness"

    def proofs(m: int, n: int) -> list[bytes]:
        if proof_path is not None:
            try:
                p = ConsistencyProof.from_dict(json.loads(proof_path.read_bytes()[: 1 << 20]))
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read proof {proof_path}: {exc}") from None
            if (p.first, p.second) != (m, n):
                raise UsageError(f"--proof is from {p.first} to {p.second}; need {m} to {n}")
            return list(p.path)
        with _open(ledger_url) as led:
            return list(led.consistency_proof_path(m, n))

    try:
        result = Witness(witness_key, state_dir).witness(head, ledger_key=ledger_key,
                                                         proofs=proofs)
    except VerificationError as exc:
        _fail(fmt, output, exc.message, [], _rule_for(exc, witness=True))
        return
    if output is not None:
        result.head.save(output)
    if fmt == "json" and output is None:
        _write(result.head.to_json(), None)
    else:
        prev = f" (last kept: {result.previous.size})" if result.previous else ""
        click.echo(f"co-signed head of {head.size} entries: {result.status}{prev}",
                   err=output is None and fmt == "json")


@ledger_group.command("serve")
@click.option("--db", "db_url", default=None, metavar="URL",
              help="The ledger to serve (path or postgresql://) [default: as --ledger].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Require 'Authorization: Bearer <token>' with the token in this file.")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Sign the heads served at /v1/head with this private key.")
def serve_command(db_url: str | None, host: str, port: int, token_file: Path | None,
                  key: Path | None) -> None:
    """Serve a ledger over HTTP for cluster jobs (POST /v1/events, proofs, heads).

    Jobs on shared storage (NFS, Lustre, GPFS) must not open SQLite files there: point them at
    this service (TRAINGUARD_LEDGER=http://host:port, token in $TRAINGUARD_LEDGER_TOKEN).

    \b
    Examples:
      trainguard ledger serve --db /srv/trainguard/ledger.db --host 0.0.0.0 --port 8765 \\
          --token-file /etc/trainguard/token --key /etc/trainguard/ledger.key
    """
    from trainguard.integrity.keys import PrivateKey
    from trainguard.ledger.server import LedgerServer

    token = None
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"cannot read {token_file}: {exc.strerror}") from None
        if not token:
            raise UsageError(f"{token_file} is empty")
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        click.echo("trainguard: warning: serving without --token-file on a non-local address: "
                   "anyone who can reach it can append", err=True)
    led = _open(db_url, create=True)
    try:
        server = LedgerServer(led, host, port, token=token,
                              key=PrivateKey.load(key) if key is not None else None)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    click.echo(f"trainguard ledger: serving {led.location} at {server.url}", err=True)
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        led.close()


@ledger_group.command("export")
@click.option("--openlineage", is_flag=True,
              help="OpenLineage RunEvents (JSON lines) instead of trainguard events.")
@click.option("--start", type=click.IntRange(0), default=0, show_default=True,
              help="First entry to export.")
@_ledger_option
@_output_option
def export_command(openlineage: bool, start: int, ledger_url: str | None,
                   output: Path | None) -> None:
    """Export entries as JSON lines: the events (re-appendable with `append --from-jsonl`), or
    OpenLineage RunEvents.

    \b
    Examples:
      trainguard ledger export -o events.jsonl
      trainguard ledger export --openlineage -o lineage.jsonl
    """
    with _open(ledger_url) as led:
        entries = led.entries(start)
        if openlineage:
            from trainguard.ledger.openlineage import to_openlineage

            lines = [json.dumps(r, sort_keys=True) for r in to_openlineage(
                entries, origin=led.ledger_id)]
        else:
            lines = [e.event.to_json() for e in entries]
    _write("".join(line + "\n" for line in lines), output)
