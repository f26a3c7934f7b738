"""Hostile input to the ledger: bad posts to the service, bad head and proof files, corrupt
databases. Each must end in a clean error (or a detection), in bounded time and memory."""

from __future__ import annotations

import http.client
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_helpers import make_event

from trainguard.core.errors import InputError, TamperError
from trainguard.ledger import open_ledger
from trainguard.ledger.heads import HeadError, TreeHead
from trainguard.ledger.merkle import ConsistencyProof, InclusionProof, ProofError
from trainguard.ledger.server import LedgerServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LedgerServer]:
    srv = LedgerServer(open_ledger(tmp_path / "l.db"), "127.0.0.1", 0, max_body=64 * 1024,
                       max_events=50)
    srv.start()
    yield srv
    srv.shutdown()
    srv.ledger.close()


def _request(srv: LedgerServer, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    host, port = srv.httpd.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else {}


@pytest.mark.parametrize(("body", "status"), [
    (b"{not json", 400),
    (b"\xff\xfe\x00", 400),
    (b"[" * 100_000 + b"]" * 100_000, 413),  # over max_body
    (b"[" * 5000 + b"]" * 5000, 400),  # deep nesting under the limit: not a list of events
    (b'{"events": 5}', 400),
    (b'{"events": [{"kind": 1}]}', 400),
    (b'{"events": [{"kind": "x", "subject": "y", "details": {"a": NaN}}]}', 400),
    (b'{"events": [{"kind": "x", "subject": "y", "schema": "other"}]}', 400),
    (b'{"events": [{"kind": "x", "subject": "y", "time": NaN}]}', 400),
    (b'{"events": [{"kind": "x", "subject": "y", "time": 1e999}]}', 400),
    (json.dumps({"events": [{"kind": "x", "subject": "y"}] * 51}).encode(), 413),
])
def test_malformed_posts_are_refused(server: LedgerServer, body: bytes, status: int) -> None:
    code, reply = _request(server, "POST", "/v1/events", body,
                           {"Content-Type": "application/json"})
    assert code == status
    assert "error" in reply
    assert server.ledger.size == 0


def test_huge_declared_body_is_not_read(server: LedgerServer) -> None:
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=10)
    conn.putrequest("POST", "/v1/events")
    conn.putheader("Content-Length", str(10 ** 12))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()


@pytest.mark.parametrize(("path", "status"), [
    ("/v1/proof/inclusion?index=abc", 400),
    ("/v1/proof/inclusion?index=5&size=3", 400),
    ("/v1/proof/inclusion", 400),
    ("/v1/proof/consistency?first=-1", 400),
    ("/v1/proof/consistency?first=99999999999999999999999", 400),
    ("/v1/entries?start=0&end=99999999", 200),
    ("/v1/nope", 404),
    ("/v1/query?since=yesterday", 400),
])
def test_bad_queries(server: LedgerServer, path: str, status: int) -> None:
    server.ledger.append(make_event(0))
    code, reply = _request(server, "GET", path)
    assert code == status, reply


def test_post_without_length(server: LedgerServer) -> None:
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=10)
    conn.putrequest("POST", "/v1/events")
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()


@pytest.mark.parametrize("content", [
    b"", b"{}", b"[]", b"null", b"not json", b"\x00" * 100,
    b'{"format": "trainguard.tree-head", "v": 2}',
    b'{"format": "trainguard.tree-head", "v": 1, "size": -1}',
    b'{"format": "trainguard.tree-head", "v": 1, "size": 1, "root_hash": "ab"}',
    json.dumps({"format": "trainguard.tree-head", "v": 1, "size": 1, "root_hash": "00" * 32,
                "timestamp": 1, "origin": "o", "signature": "!!notbase64!!"}).encode(),
    json.dumps({"format": "trainguard.tree-head", "v": 1, "size": 1, "root_hash": "00" * 32,
                "timestamp": 1, "origin": "o", "cosignatures": [{}] * 100}).encode(),
    b'{"a": ' * 10000 + b"1" + b"}" * 10000,
    b" " * (2 << 20),
])
def test_bad_head_files(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "head.json"
    p.write_bytes(content)
    with pytest.raises(HeadError):
        TreeHead.load(p)


def test_missing_head_file(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        TreeHead.load(tmp_path / "nope.json")


@pytest.mark.parametrize("data", [
    {"type": "inclusion", "index": 0, "size": 1, "leaf_hash": "00" * 32, "path": "x",
     "root_hash": "00" * 32},
    {"type": "consistency", "first": 1, "second": 2, "first_root": "00" * 32,
     "second_root": "00" * 32, "path": [{"a": 1}]},
    {"type": "inclusion", "index": 2 ** 80, "size": 1, "leaf_hash": "00" * 32, "path": [],
     "root_hash": "00" * 32},
])
def test_bad_proofs(data: dict) -> None:  # type: ignore[type-arg]
    cls = InclusionProof if data["type"] == "inclusion" else ConsistencyProof
    with pytest.raises(ProofError):
        cls.from_dict(data)  # type: ignore[attr-defined]


def test_proof_for_wrong_root_fails(tmp_path: Path) -> None:
    with open_ledger(tmp_path / "l.db") as led:
        led.append_many([make_event(i) for i in range(9)])
        proof = led.inclusion_proof(4)
        with pytest.raises(ProofError):
            proof.verify(led.root_hash(8))


def test_corrupted_database_file(tmp_path: Path) -> None:
    p = tmp_path / "l.db"
    p.write_bytes(b"this is not a database" * 1000)
    with pytest.raises(InputError, match="not a usable ledger"):
        open_ledger(p)


def test_damaged_pages_detected_or_refused(tmp_path: Path) -> None:
    p = tmp_path / "l.db"
    with open_ledger(p) as led:
        led.append_many([make_event(i) for i in range(300)])
        head = led.head()
    conn = sqlite3.connect(p)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(p.read_bytes())
    for off in range(len(data) // 2, len(data) // 2 + 4096):  # scribble over a data page
        data[off] ^= 0x5A
    p.write_bytes(bytes(data))
    with pytest.raises((InputError, TamperError)), open_ledger(p) as led:
        led.verify(against_head=head)


def test_garbage_entries_in_rows(tmp_path: Path) -> None:
    p = tmp_path / "l.db"
    with open_ledger(p) as led:
        led.append_many([make_event(i) for i in range(5)])
        head = led.head()
    conn = sqlite3.connect(p)
    conn.execute("UPDATE ledger_entries SET entry = 'not json', leaf_hash = 'x' WHERE idx = 1")
    conn.execute("UPDATE ledger_entries SET entry = x'00ff' WHERE idx = 2")
    conn.commit()
    conn.close()
    with open_ledger(p) as led:
        with pytest.raises(TamperError) as info:
            led.verify(against_head=head)
        assert any("entry 1: malformed" in c for c in info.value.changes)
        with pytest.raises(TamperError):
            list(led.entries())


def test_unknown_url_scheme() -> None:
    from trainguard.core.errors import UsageError

    with pytest.raises(UsageError):
        open_ledger("ftp://example/ledger")


def test_edited_query_columns_detected(tmp_path: Path) -> None:
    """Queries read an index table beside the entries; editing it (to hide an event from
    `ledger query`) is reported by the audit."""
    p = tmp_path / "l.db"
    with open_ledger(p) as led:
        led.append_many([make_event(i) for i in range(5)])
        assert len(list(led.query(job="job-1"))) == 5
    conn = sqlite3.connect(p)
    conn.execute("UPDATE ledger_query SET job = 'someone-else' WHERE idx = 2")
    conn.commit()
    conn.close()
    with open_ledger(p) as led:
        assert len(list(led.query(job="job-1"))) == 4
        with pytest.raises(TamperError) as info:
            led.verify()
        assert any("entry 2: indexed columns" in c for c in info.value.changes)


def test_slow_clients_cannot_take_every_slot(tmp_path: Path) -> None:
    """A client that sends headers and then stalls holds one request slot; with all slots held
    the service answers 503 (clients retry) instead of piling up threads."""
    import socket

    srv = LedgerServer(open_ledger(tmp_path / "l.db"), "127.0.0.1", 0, max_requests=1)
    srv.start()
    host, port = srv.httpd.server_address[:2]
    stall = socket.create_connection((str(host), port))
    try:
        stall.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        import time

        time.sleep(0.3)
        code, reply = _request(srv, "GET", "/v1/info")
        assert code == 503
    finally:
        stall.close()
        srv.shutdown()
        srv.ledger.close()
