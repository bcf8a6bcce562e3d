"""The export path against servers that misbehave: a trickling answer, a huge answer, transient
413s, splitting that would outlive the budget or shutdown, and a 400 for one bad event."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from vwo_otel import RetryPolicy, VWOExporter
from vwo_otel.errors import HTTPStatusError, NetworkError, PayloadTooLarge
from vwo_otel.event import VWOEvent
from vwo_otel.export import exporter as exporter_module
from vwo_otel.export.http import MAX_ANSWER_BYTES, ReadTimeout, Transport

SHORT = RetryPolicy(budget=1.0, initial_backoff=0.01, max_backoff=0.05)


def visits(n: int, prefix: str = "v", **fields: object) -> list[VWOEvent]:
    return [VWOEvent(1, f"{prefix}-{i}", 1_700_000_000_000, campaign_id=1, variation_id=1, **fields)  # type: ignore[arg-type]
            for i in range(n)]


class RawServer:
    """A loopback TCP server that reads one request head per connection and then runs
    ``answer(conn)``; ``sent`` counts the bytes ``answer`` managed to write."""

    def __init__(self, answer: Callable[[socket.socket, RawServer], None]) -> None:
        self.answer = answer
        self.sent = 0
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                try:
                    self.answer(conn, self)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket, RawServer], None]], RawServer]]:
    made: list[RawServer] = []

    def make(answer: Callable[[socket.socket, RawServer], None]) -> RawServer:
        made.append(RawServer(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def trickle(conn: socket.socket, server: RawServer) -> None:
    """One byte of a never-ending status line every 0.1 s, while the client listens."""
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
        if server.stop.wait(0.1):
            return
        conn.sendall(bytes([byte]))


def trickle_body(conn: socket.socket, server: RawServer) -> None:
    """A prompt head, then a body one byte every 0.1 s."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n")
    while not server.stop.wait(0.1):
        conn.sendall(b"a")


def huge(conn: socket.socket, server: RawServer) -> None:
    """A 400 MiB answer, written as fast as the client takes it."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (400 * 2**20))
    block = b"x" * 65536
    while server.sent < 400 * 2**20 and not server.stop.is_set():
        conn.sendall(block)
        server.sent += len(block)


# == item 4: a whole-request deadline, a bounded answer ======================================

@pytest.mark.parametrize("answer", [trickle, trickle_body], ids=["head", "body"])
def test_a_trickling_server_cannot_stretch_a_request_past_its_timeout(raw_server, answer) -> None:
    server = raw_server(answer)
    transport = Transport()
    start = time.monotonic()
    if answer is trickle:
        with pytest.raises(ReadTimeout):
            transport.request("POST", server.url + "/server-side/batch-events", b"{}", {}, 0.5)
    else:  # the 200 arrived: VWO has the batch, whatever its body does after that
        assert transport.request("POST", server.url + "/server-side/batch-events", b"{}", {}, 0.5).status_code == 200
    assert 0.45 <= time.monotonic() - start < 0.9
    transport.close()


def test_a_trickling_server_holds_a_batch_no_longer_than_the_retry_budget(raw_server, make_exporter) -> None:
    server = raw_server(trickle)
    exporter = make_exporter(endpoint=server.url, timeout=0.4, retry=SHORT)
    start = time.monotonic()
    (outcome,) = exporter.send_batch(visits(3))
    elapsed = time.monotonic() - start
    assert isinstance(outcome.error, NetworkError) and "ReadTimeout" in str(outcome.error)
    assert elapsed < SHORT.budget + 0.5  # the budget bounds the batch, the timeout each attempt
    exporter.shutdown()


def test_a_huge_answer_is_read_only_up_to_the_cap(raw_server, make_exporter) -> None:
    server = raw_server(huge)
    exporter = make_exporter(endpoint=server.url, retry=SHORT)
    (outcome,) = exporter.send_batch(visits(1))
    assert outcome.ok
    server.close()  # the client closed the connection: the server stops writing
    assert server.sent < 32 * 2**20  # what socket buffers hold, not the 400 MiB offered
    transport = Transport()
    reply = transport.request("POST", raw_server(huge).url + "/x", b"{}", {}, 5.0)
    assert reply.status_code == 200 and len(reply.text) == MAX_ANSWER_BYTES
    transport.close()
    exporter.shutdown()


# == item 5: 413s ===============================================================================

def test_transient_413s_do_not_shrink_later_batches_for_long(pipeline, receiver, make_exporter, callbacks) -> None:
    exporter = make_exporter()
    receiver.fail_next(7, status=413)  # halving 100 events reaches one event at the 7th
    outcomes = exporter.send_batch(visits(100, "storm"))
    assert all(o.ok for o in outcomes) and sum(len(o.events) for o in outcomes) == 100
    assert exporter.payload_limit() < exporter.max_payload_bytes  # learned from the 413s ...
    receiver.reset()
    events, proc, _ = pipeline({"events_per_request": 100, "request_time_interval": 60}, exporter=exporter,
                               max_queue_size=5000)
    for i in range(5000):
        events.activate(1, 1, f"after-{i}")
    assert proc.flush_events() is True
    assert receiver.event_count() == 5000
    assert len(receiver.requests()) <= 60  # ... and grown back soon


def test_a_single_event_answered_413_once_is_retried(receiver, make_exporter) -> None:
    exporter = make_exporter()
    receiver.fail_next(1, status=413)
    (outcome,) = exporter.send_batch(visits(1))
    assert outcome.ok and [r["status"] for r in receiver.requests()] == [413, 200]
    receiver.fail_next(2, status=413)
    (outcome,) = exporter.send_batch(visits(1, "twice"))
    assert isinstance(outcome.error, PayloadTooLarge) and outcome.error.status == 413


def test_413_splitting_stops_at_the_retry_budget(receiver, make_exporter) -> None:
    exporter = make_exporter(retry=RetryPolicy(budget=0.5, initial_backoff=0.01, max_backoff=0.05))
    receiver.set_max_body(200)  # one event per request at most
    receiver.stall(0.02)
    start = time.monotonic()
    outcomes = exporter.send_batch(visits(400))
    assert time.monotonic() - start < 1.0
    assert sum(len(o.events) for o in outcomes) == 400  # every event reported once
    failed = [o for o in outcomes if not o.ok]
    assert failed and all("retry budget" in str(o.error) for o in failed if o.error.status == 413
                          and not isinstance(o.error, PayloadTooLarge))
    assert len(receiver.requests()) < 60


def test_no_request_goes_out_after_shutdown_returns(pipeline, receiver, make_exporter) -> None:
    exporter = make_exporter(retry=RetryPolicy(budget=60, initial_backoff=0.01, max_backoff=0.05))
    events, proc, _ = pipeline({"events_per_request": 400, "request_time_interval": 60}, exporter=exporter,
                               shutdown_timeout=0.5)
    receiver.set_max_body(200)
    receiver.stall(0.01)
    for i in range(400):
        events.activate(1, 1, f"late-{i}")
    assert receiver.wait_for_events(1, timeout=5)  # the 400th event started the batch  # splitting is under way
    start = time.monotonic()
    proc.shutdown()
    returned = time.time()
    assert time.monotonic() - start < 1.0
    time.sleep(0.5)  # what would have gone out after shutdown returned has had time to arrive
    assert [r for r in receiver.requests() if r["received_at"] > returned] == []


# == item 8: a 400 fails only the events it refuses ============================================

def test_a_400_fails_only_the_event_it_refuses(receiver, make_exporter) -> None:
    exporter = make_exporter()
    batch = visits(100)
    batch[37] = VWOEvent(1, "bad", 2**64, campaign_id=1, variation_id=1)  # sId beyond int64: refused
    outcomes = exporter.send_batch(batch)
    (bad,) = [o for o in outcomes if not o.ok]
    assert isinstance(bad.error, HTTPStatusError) and bad.error.status == 400 and "sId" in str(bad.error)
    assert [e["sId"] for e in bad.events] == [2**64]
    assert receiver.event_count() == 99
    assert len(receiver.requests()) <= 1 + 2 * math.ceil(math.log2(100))


def test_isolating_400s_is_capped(receiver, make_exporter) -> None:
    exporter = make_exporter()
    outcomes = exporter.send_batch([VWOEvent(1, f"bad-{i}", 2**64, campaign_id=1, variation_id=1)
                                    for i in range(100)])
    assert sum(len(o.events) for o in outcomes if not o.ok) == 100
    assert all(o.error is not None and o.error.status == 400 for o in outcomes)
    assert len(receiver.requests()) <= 1 + exporter_module.MAX_ISOLATION_REQUESTS


def ok_then_cut(conn: socket.socket, server: RawServer) -> None:
    """200 with a Content-Length of 20, then 5 bytes and a close: the body is cut short."""
    server.sent += 1  # requests answered
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{"ok"')


def test_a_200_whose_body_is_cut_short_is_still_delivered_once(raw_server) -> None:
    """Once a 2xx status has arrived VWO has the batch: a broken body after it must not make
    the batch fail, be retried and so be stored again."""
    server = raw_server(ok_then_cut)
    exporter = VWOExporter(12345, "sdk-key-0123456789", endpoint=server.url, timeout=2,
                           retry=RetryPolicy(budget=2, initial_backoff=0.05, max_backoff=0.1))
    (outcome,) = exporter.send_batch(visits(3))
    assert outcome.ok, outcome.error
    assert server.sent == 1  # one request, not a retry
    exporter.shutdown()
