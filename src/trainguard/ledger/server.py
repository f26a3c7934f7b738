"""``trainguard ledger serve``: a small HTTP ingest service in front of one ledger.

Cluster jobs must not open a SQLite file on shared storage (WAL needs local locking), so they
post events here (client.py). Endpoints (JSON; docs/ledger.md has the shapes):

* ``POST /v1/events``: ``{"events": [event, ...]}`` -> ``{"indices": [...], "size": N}``
* ``GET /v1/info``, ``GET /v1/head`` (signed when the server has a key)
* ``GET /v1/proof/inclusion?index=I&size=N``, ``GET /v1/proof/consistency?first=M&second=N``
* ``GET /v1/entries?start=S&end=E`` (at most 1,000 per request, the exact entry bytes)
* ``GET /v1/query?kind=&kind_prefix=&subject=&job=&since=&until=&after=&limit=``

Requests are bounded (body size, events per batch, header read timeout); an optional bearer
token (from a file, never a flag) guards every endpoint.
"""

from __future__ import annotations

import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from trainguard.core.errors import TrainguardError, UsageError
from trainguard.core.events import Event
from trainguard.integrity.keys import PrivateKey
from trainguard.ledger.store import Ledger

MAX_BODY = 16 << 20
MAX_EVENTS = 10_000
MAX_ENTRIES_PAGE = 1000
MAX_REQUESTS = 64


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _int_param(q: dict[str, list[str]], name: str, default: int | None = None) -> int:
    values = q.get(name)
    if not values:
        if default is None:
            raise _HTTPError(400, f"missing parameter {name}")
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise _HTTPError(400, f"parameter {name} must be an integer") from None
    if value < 0 or value >= 1 << 63:
        raise _HTTPError(400, f"parameter {name} is out of range")
    return value


def _float_param(q: dict[str, list[str]], name: str) -> float | None:
    values = q.get(name)
    if not values:
        return None
    try:
        return float(values[0])
    except ValueError:
        raise _HTTPError(400, f"parameter {name} must be a number") from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: errors inside request handling that escaped the handler (dropped connections, mostly)
    errors = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A hostile or vanished client must not fill the service's stderr with tracebacks.
        type(self).errors += 1


class LedgerServer:
    """An HTTP server appending posted events to ``ledger`` (stdlib ThreadingHTTPServer)."""

    def __init__(self, ledger: Ledger, host: str = "127.0.0.1", port: int = 8765, *,
                 token: str | None = None, key: PrivateKey | None = None,
                 max_body: int = MAX_BODY, max_events: int = MAX_EVENTS,
                 max_requests: int = MAX_REQUESTS) -> None:
        self.ledger = ledger
        self.token = token
        self.key = key
        self.max_body = max_body
        self.max_events = max_events
        # One writer at a time into the store: its own lock would serialize anyway, and
        # batching concurrent posts is the store's job, not the threads'.
        self._write_lock = threading.Lock()
        # Bound the requests in progress: each holds a thread and up to max_body of memory.
        self.slots = threading.BoundedSemaphore(max_requests)
        handler = _make_handler(self)
        self.httpd = _Server((host, port), handler)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> threading.Thread:
        """Serve from a background thread (tests, embedding)."""
        t = threading.Thread(target=self.serve_forever, name="trainguard-ledger-serve",
                             daemon=True)
        t.start()
        return t

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- endpoints ------------------------------------------------------------------------------
    def post_events(self, body: Any) -> dict[str, Any]:
        events_raw = body.get("events") if isinstance(body, dict) else body
        if not isinstance(events_raw, list):
            raise _HTTPError(400, 'body must be {"events": [...]}')
        if len(events_raw) > self.max_events:
            raise _HTTPError(413, f"at most {self.max_events} events per request")
        events = []
        for i, raw in enumerate(events_raw):
            try:
                events.append(Event.from_dict(raw))
            except (ValueError, TypeError) as exc:
                raise _HTTPError(400, f"events[{i}]: {exc}") from None
        with self._write_lock:
            indices = self.ledger.append_many(events)
        return {"indices": indices, "size": (indices[-1] + 1) if indices else self.ledger.size}

    def get(self, path: str, q: dict[str, list[str]]) -> dict[str, Any]:
        led = self.ledger
        if path == "/v1/info":
            return {"ledger_id": led.ledger_id, "size": led.size}
        if path == "/v1/head":
            head = led.sign_head(self.key) if self.key is not None else led.head()
            return head.to_dict()
        if path == "/v1/proof/inclusion":
            return led.inclusion_proof(_int_param(q, "index"),
                                       _int_param(q, "size", led.size)).to_dict()
        if path == "/v1/proof/consistency":
            return led.consistency_proof(_int_param(q, "first"),
                                         _int_param(q, "second", led.size)).to_dict()
        if path == "/v1/entries":
            start = _int_param(q, "start", 0)
            end = min(_int_param(q, "end", start + MAX_ENTRIES_PAGE), start + MAX_ENTRIES_PAGE)
            rows = led._read_rows(start, end)
            return {"entries": [{"index": i, "entry": raw.decode("utf-8"),
                                 "leaf_hash": h.hex()} for i, raw, h in rows]}
        if path == "/v1/query":
            limit = min(_int_param(q, "limit", MAX_ENTRIES_PAGE), MAX_ENTRIES_PAGE)
            where: list[tuple[str, Any]] = []
            for name, op in (("kind", "kind ="), ("subject", "subject ="), ("job", "job =")):
                if q.get(name):
                    where.append((op, q[name][0]))
            if q.get("kind_prefix"):
                prefix = q["kind_prefix"][0]
                where += [("kind >=", prefix), ("kind <", prefix + "\U0010ffff")]
            since, until = _float_param(q, "since"), _float_param(q, "until")
            if since is not None:
                where.append(("time >=", since))
            if until is not None:
                where.append(("time <", until))
            after = int(q["after"][0]) if q.get("after") and q["after"][0].lstrip("-").isdigit() \
                else -1
            rows = led._query_rows(where, after, limit)
            return {"entries": [{"index": i, "entry": raw.decode("utf-8"),
                                 "leaf_hash": h.hex()} for i, raw, h in rows]}
        raise _HTTPError(404, f"no such endpoint {path}")


def _make_handler(server: LedgerServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "trainguard-ledger/1"
        timeout = 30  # a client that stops sending mid-request is dropped
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the CLI reports; per-request logs would flood a cluster's stderr

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            if server.token is None:
                return True
            got = self.headers.get("Authorization", "")
            want = f"Bearer {server.token}"
            return hmac.compare_digest(got.encode("utf-8", "replace"), want.encode("utf-8"))

        def _handle(self, method: str) -> None:
            if not server.slots.acquire(timeout=5):
                self.close_connection = True
                self._reply(503, {"error": "too many requests in progress; retry"})
                return
            try:
                self._handle_slot(method)
            finally:
                server.slots.release()

        def _handle_slot(self, method: str) -> None:
            try:
                if not self._authorized():
                    raise _HTTPError(401, "missing or wrong bearer token")
                url = urlsplit(self.path)
                q = parse_qs(url.query, max_num_fields=32)
                if method == "GET":
                    self._reply(200, server.get(url.path, q))
                    return
                if url.path != "/v1/events":
                    raise _HTTPError(404, f"no such endpoint {url.path}")
                length_text = self.headers.get("Content-Length")
                if length_text is None or not length_text.isdigit():
                    raise _HTTPError(411, "Content-Length required")
                length = int(length_text)
                if length > server.max_body:
                    self.close_connection = True  # do not read a hostile body
                    raise _HTTPError(413, f"body larger than {server.max_body} bytes")
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    raise _HTTPError(400, f"body is not JSON: {exc}") from None
                self._reply(200, server.post_events(body))
            except _HTTPError as exc:
                self._reply(exc.status, {"error": exc.message})
            except UsageError as exc:
                self._reply(400, {"error": exc.message})
            except TrainguardError as exc:
                self._reply(500, {"error": exc.message})
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            except Exception as exc:  # a bug must not kill the service
                self._reply(500, {"error": f"internal error: {type(exc).__name__}"})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler
