"""Kept-alive connections to VWO: reused while batches keep coming, closed once unused for the
transport's idle timeout (lowered here from ``IDLE_TIMEOUT``'s default so the tests stay short).
Connections are counted in this process's own sockets (/proc), not through the transport."""

from __future__ import annotations

import os
import threading
import time

import pytest
from helpers import wait_until

from vwo_otel.event import VWOEvent
from vwo_otel.export import http

IDLE = 0.4  # seconds: the idle timeout these tests run with


@pytest.fixture(autouse=True)
def short_idle_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "IDLE_TIMEOUT", IDLE)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def client_ports(server_port: int) -> set[int]:
    """Local ports of this process's established TCP connections to 127.0.0.1:``server_port``."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            mine.add(link[8:-1])
    ports = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and inode in mine and remote == f"0100007F:{server_port:04X}":
                ports.add(int(local.split(":")[1], 16))
    return ports




def idle_closers() -> int:
    """Threads closing idle connections, of every transport in this process."""
    return sum(t.name == "vwo_otel-idle" for t in threading.enumerate())


def test_connections_a_burst_opened_close_once_idle_and_the_closer_thread_ends(pipeline, receiver, callbacks) -> None:
    closers = idle_closers()  # other tests' transports may still have theirs
    events, proc, _ = pipeline({"events_per_request": 10, "request_time_interval": 60})
    receiver.stall(0.05)  # answers come late, so batches overlap and need several connections
    for i in range(600):
        events.activate(231, 1 + i % 2, f"user-{i}")
    assert proc.force_flush(10_000)
    flushed = time.monotonic()
    assert receiver.event_count() == 600 and not callbacks.failed
    kept = client_ports(receiver.port)
    assert len(kept) >= 2  # kept open for the next batches, not closed after each request
    assert proc.batcher.snapshot().in_flight == 0
    assert wait_until(lambda: not client_ports(receiver.port), IDLE + 2.0)
    assert time.monotonic() - flushed >= IDLE * 0.75  # not before the idle timeout (minus the flush's own tail)
    assert wait_until(lambda: idle_closers() <= closers, 2.0)  # its closer thread ended with nothing left idle
    receiver.clear_faults()
    events.activate(231, 1, "user-after")  # a new batch after the close opens a fresh connection
    assert proc.force_flush(5_000) and receiver.event_count() == 601 and not callbacks.failed


def test_a_connection_used_within_the_idle_timeout_is_kept_and_one_idle_longer_is_replaced(
        receiver, make_exporter) -> None:
    exporter = make_exporter()
    ports = []
    for i in range(4):  # each request well within the idle timeout of the previous one
        assert exporter.send_event(VWOEvent(1, f"user-{i}", 1_700_000_000_000, 231, 1)).ok
        ports.append(client_ports(receiver.port))
        time.sleep(IDLE / 4)
    assert len(ports[0]) == 1 and all(p == ports[0] for p in ports)  # one connection, reused
    assert wait_until(lambda: not client_ports(receiver.port), IDLE + 2.0)
    assert exporter.send_event(VWOEvent(1, "user-late", 1_700_000_000_000, 231, 1)).ok  # no stale socket trips it
    assert len(client_ports(receiver.port) - ports[0]) == 1
    exporter.shutdown()
    assert not client_ports(receiver.port)  # shutdown closes the idle ones at once
    assert receiver.event_count() == 5
