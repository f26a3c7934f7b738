"""``trainguard ledger serve`` and its client: ingest round trip, proofs, audit, sink, token."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_helpers import make_event

from trainguard.core.errors import InputError
from trainguard.integrity.keys import PrivateKey
from trainguard.ledger import open_ledger
from trainguard.ledger.client import HttpLedger, HttpSink
from trainguard.ledger.server import LedgerServer
from trainguard.ledger.sink import LedgerSink


@pytest.fixture
def served(ledger_url: str) -> Iterator[tuple[LedgerServer, PrivateKey]]:
    key = PrivateKey.generate()
    server = LedgerServer(open_ledger(ledger_url), "127.0.0.1", 0, token="s3cret", key=key)
    server.start()
    try:
        yield server, key
    finally:
        server.shutdown()
        server.ledger.close()


def test_ingest_round_trip_proofs_and_remote_audit(
        served: tuple[LedgerServer, PrivateKey]) -> None:
    server, key = served
    client = open_ledger(server.url, token="s3cret")
    assert isinstance(client, HttpLedger)
    assert client.append_many([make_event(i) for i in range(25)]) == list(range(25))
    assert client.append(make_event(25)) == 25
    assert client.size == 26
    assert client.ledger_id == server.ledger.ledger_id
    head = client.head()
    head.verify_signature(key.public_key())  # the server signs the heads it serves
    assert head.root_hash == server.ledger.head().root_hash
    for i in (0, 7, 25):
        client.inclusion_proof(i, head.size).verify(head.root_hash)
    client.consistency_proof(10).verify(server.ledger.root_hash(10), head.root_hash)
    # entries come back byte for byte, and the client's own audit recomputes the tree
    assert [e.raw for e in client.entries()] == [e.raw for e in server.ledger.entries()]
    assert client.verify(against_head=head, public_key=key.public_key()).size == 26
    assert [e.index for e in client.query(subject=make_event(3).subject)] == [3]
    assert [e.index for e in client.query(kind="artifact.*", limit=5)] == [0, 1, 2, 3, 4]
    assert client.entry(4).event == make_event(4)


def test_token_required(served: tuple[LedgerServer, PrivateKey]) -> None:
    server, _ = served
    for token in ("", "wrong"):
        with pytest.raises(InputError, match="401"):
            HttpLedger(server.url, token=token, retries=0).append(make_event(0))
    assert server.ledger.size == 0


def test_http_sink_batches_and_delivers(served: tuple[LedgerServer, PrivateKey]) -> None:
    server, _ = served
    sink = HttpSink(server.url, token="s3cret", batch_size=100, flush_interval=0.05)
    for i in range(1000):
        sink.emit(make_event(i))
    sink.close()
    assert sink.errors == []
    assert sink.dropped == 0
    assert sink.sent == 1000
    assert server.ledger.size == 1000
    assert sorted(e.event.details["i"] for e in server.ledger.entries()) == list(range(1000))


def test_http_sink_retries_until_the_service_is_up(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = HttpSink(f"http://127.0.0.1:{port}", batch_size=10, flush_interval=0.05,
                    retries=8, backoff=0.1)
    for i in range(20):
        sink.emit(make_event(i))
    time.sleep(0.3)  # the first attempts fail: nothing listens yet
    led = open_ledger(tmp_path / "l.db")
    server = LedgerServer(led, "127.0.0.1", port)
    server.start()
    try:
        sink.close()
        assert led.size == 20
        assert sink.dropped == 0
    finally:
        server.shutdown()
        led.close()


def test_http_sink_reports_instead_of_raising(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = HttpSink(f"http://127.0.0.1:{port}", batch_size=5, retries=1, backoff=0.01,
                    close_timeout=1.0)
    for i in range(7):
        sink.emit(make_event(i))  # never raises
    sink.close()
    assert sink.dropped == 7
    assert sink.errors


def test_ledger_sink_from_threads(tmp_path: Path) -> None:
    led = open_ledger(tmp_path / "l.db")
    sink = LedgerSink(led, batch_size=50, flush_interval=0.05)

    def work(t: int) -> None:
        for i in range(200):
            sink.emit(make_event(t * 1000 + i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert led.size == 800
    assert sink.errors == []
    assert led.verify().size == 800
    led.close()
