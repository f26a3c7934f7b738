"""A client for ``trainguard ledger serve``: the Ledger API over HTTP, and an event sink.

:class:`HttpLedger` fetches proofs from the server and checks them locally; its
:meth:`~trainguard.ledger.store.Ledger.verify` downloads every entry and recomputes the tree, so an
audit never trusts the server. :class:`HttpSink` batches events from a training job and retries
while the service is briefly unreachable.

Example::

    from trainguard.ledger.client import HttpLedger, HttpSink
    sink = HttpSink("http://ledger.internal:8765")       # token from $TRAINGUARD_LEDGER_TOKEN
    sink.emit(event); sink.close()
    head = HttpLedger("http://ledger.internal:8765").head()
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from trainguard.core.errors import InputError, UsageError
from trainguard.core.events import Event
from trainguard.integrity.keys import PrivateKey
from trainguard.ledger.entry import encode_event
from trainguard.ledger.heads import TreeHead
from trainguard.ledger.merkle import ConsistencyProof, InclusionProof
from trainguard.ledger.sink import BatchingSink
from trainguard.ledger.store import AuditRow, Ledger, Row

#: a response larger than this is refused (a hostile or broken server)
MAX_RESPONSE = 64 << 20
#: events per POST (the server accepts up to 10,000)
POST_BATCH = 2000


class HttpLedger(Ledger):
    """The Ledger API against a ``trainguard ledger serve`` endpoint."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0,
                 retries: int = 3) -> None:
        super().__init__()
        self.base = url.rstrip("/")
        self.location = self.base
        self.token = token if token is not None else os.environ.get("TRAINGUARD_LEDGER_TOKEN")
        self.timeout = timeout
        self.retries = retries
        self._id: str | None = None

    # -- HTTP ----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, params: dict[str, Any] | None = None,
                 body: bytes | None = None) -> Any:
        url = self.base + path + (("?" + urlencode(params)) if params else "")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        delay = 0.2
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    data = resp.read(MAX_RESPONSE + 1)
                if len(data) > MAX_RESPONSE:
                    raise InputError(f"{self.base}: response too large")
                return json.loads(data)
            except urllib.error.HTTPError as exc:
                detail = _error_text(exc)
                if exc.code >= 500 and attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                if exc.code in (400, 404, 413):
                    raise UsageError(f"{self.base}{path}: {detail}") from None
                raise InputError(f"{self.base}{path}: HTTP {exc.code}: {detail}",
                                 remedy="set $TRAINGUARD_LEDGER_TOKEN" if exc.code == 401
                                 else None) from None
            except (urllib.error.URLError, OSError) as exc:
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                reason = getattr(exc, "reason", exc)
                raise InputError(f"cannot reach the ledger service {self.base}: {reason}",
                                 remedy="start it with `trainguard ledger serve`") from None
            except ValueError as exc:
                raise InputError(f"{self.base}{path}: the response is not JSON: {exc}") from None
        raise InputError(f"cannot reach the ledger service {self.base}")  # pragma: no cover

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, {k: v for k, v in params.items() if v is not None})

    def post_events(self, events: Sequence[Event]) -> list[int]:
        """POST one batch; returns the indices the server assigned."""
        body = b'{"events":[' + b",".join(encode_event(e) for e in events) + b"]}"
        reply = self._request("POST", "/v1/events", body=body)
        indices = reply.get("indices") if isinstance(reply, dict) else None
        if not isinstance(indices, list) or len(indices) != len(events):
            raise InputError(f"{self.base}: unexpected reply to POST /v1/events")
        return [int(i) for i in indices]

    # -- Ledger primitives ---------------------------------------------------------------------
    def append_many(self, events: Iterable[Event]) -> list[int]:
        batch = list(events)
        out: list[int] = []
        for i in range(0, len(batch), POST_BATCH):
            out += self.post_events(batch[i:i + POST_BATCH])
        return out

    def _append_rows(self, encoded: Any, appended_at: float) -> list[int]:  # pragma: no cover
        raise UsageError("HttpLedger appends through the server")

    @property
    def ledger_id(self) -> str:
        if self._id is None:
            self._id = str(self._get("/v1/info")["ledger_id"])
        return self._id

    def _size(self) -> int:
        return int(self._get("/v1/info")["size"])

    @staticmethod
    def _rows(reply: Any) -> list[Row]:
        rows = reply.get("entries") if isinstance(reply, dict) else None
        if not isinstance(rows, list):
            raise InputError("the ledger service sent no entries list")
        out: list[Row] = []
        for r in rows:
            try:
                out.append((int(r["index"]), str(r["entry"]).encode("utf-8"),
                            bytes.fromhex(r["leaf_hash"])))
            except (KeyError, TypeError, ValueError):
                raise InputError("the ledger service sent a malformed entry") from None
        return out

    def _read_rows(self, start: int, end: int) -> list[Row]:
        out: list[Row] = []
        pos = start
        while pos < end:
            rows = self._rows(self._get("/v1/entries", start=pos, end=end))
            if not rows:
                break
            out += rows
            pos = rows[-1][0] + 1
        return out

    def _read_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return [h for _, _, h in self._read_rows(start, end)]

    def _query_rows(self, where: list[tuple[str, Any]], after: int, limit: int) -> list[Row]:
        params: dict[str, Any] = {"after": after, "limit": limit}
        names = {"kind =": "kind", "subject =": "subject", "job =": "job", "time >=": "since",
                 "time <": "until"}
        for op, value in where:
            if op == "kind >=":
                params["kind_prefix"] = value
            elif op in names:
                params[names[op]] = value
        return self._rows(self._get("/v1/query", **params))

    def _audit_rows(self, after: int, limit: int) -> list[AuditRow]:
        rows = self._read_rows(after + 1, after + 1 + limit)
        return [(i, raw, h, None, None, None, None) for i, raw, h in rows]

    # -- served directly -----------------------------------------------------------------------
    def head(self) -> TreeHead:
        return TreeHead.from_dict(self._get("/v1/head"))

    def sign_head(self, key: PrivateKey) -> TreeHead:
        return self.head().sign(key)

    def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        proof = InclusionProof.from_dict(self._get("/v1/proof/inclusion", index=index, size=size))
        proof.verify()  # internally consistent; callers check root_hash against a kept head
        return proof

    def consistency_proof(self, first: int, second: int | None = None) -> ConsistencyProof:
        proof = ConsistencyProof.from_dict(self._get("/v1/proof/consistency", first=first,
                                                     second=second))
        proof.verify()
        return proof

    def root_hash(self, size: int | None = None) -> bytes:
        n = self._size() if size is None else size
        return self.consistency_proof(n, n).second_root if n else self.head().root_hash


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(exc.read(4096))
        return str(data.get("error", exc.reason))
    except Exception:
        return str(exc.reason)


class HttpSink(BatchingSink):
    """Events to ``trainguard ledger serve``, batched and retried (token from
    ``$TRAINGUARD_LEDGER_TOKEN`` unless given)."""

    def __init__(self, url: str, *, token: str | None = None, **options: Any) -> None:
        self.client = HttpLedger(url, token=token, retries=0)
        super().__init__(self.client.append_many, **options)
