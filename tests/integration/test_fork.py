"""Fork safety over loopback HTTP: events queued before ``fork()`` are delivered once, by
the parent; events emitted in a child are delivered by the child when it exits through
``atexit``, ``multiprocessing`` or an explicit shutdown; no HTTP connection is shared.
A child ending with a bare ``os._exit()`` loses its own events (documented) and never
touches the parent's."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import visitor_uuid
from vwo_otel._engine import lifecycle

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELD = {"events_per_request": 100, "request_time_interval": 60}


def u(user_id: str) -> str:
    return visitor_uuid(ACCOUNT_ID, user_id)


def received(receiver) -> Counter:
    return Counter(e["u"] for e in receiver.events())


def start_fork(child) -> int:
    """Run ``child()`` in a forked child that ends with os._exit(status); the child's pid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded process" on 3.12+
        pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = child()
        finally:
            os._exit(status)
    return pid


def fork(child) -> int:
    """Run ``child()`` in a forked child (``start_fork``) and wait for it; its exit status."""
    _, status = os.waitpid(start_fork(child), 0)
    return os.waitstatus_to_exitcode(status)


def test_queued_events_stay_with_the_parent_and_the_child_delivers_its_own(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(HELD)
    events.activate(1, 1, "warm-up")
    assert proc.flush_events() is True  # the parent now holds a keep-alive connection
    for i in range(5):
        events.activate(1, 1, f"parent-{i}")  # queued in the parent at fork time

    def child() -> int:
        if proc.stats()["queued"] != 0:
            return 3  # inherited the parent's queue (its connections: test_latency_http_client.py)
        for i in range(3):
            events.track(1, 1, 2, f"child-{i}", revenue=1.0)
        proc.shutdown()
        stats = proc.stats()["events"]
        return 0 if stats == {"delivered": 3, "failed": 0} else 4

    assert fork(child) == 0
    assert received(receiver) == Counter([u("warm-up")] + [u(f"child-{i}") for i in range(3)])
    for i in range(5):
        events.activate(1, 1, f"parent-{i}-after")
    assert proc.flush_events() is True  # the parent's connection still works
    expected = ["warm-up", *(f"child-{i}" for i in range(3)), *(f"parent-{i}" for i in range(5)),
                *(f"parent-{i}-after" for i in range(5))]
    assert received(receiver) == Counter(u(x) for x in expected)
    assert proc.stats()["events"] == {"delivered": 11, "failed": 0}
    assert callbacks.failed == []


def test_fork_while_a_batch_is_in_flight(pipeline, receiver, callbacks):
    """The parent's delivery thread is mid-request when the child is forked: the child
    neither resends that batch nor waits for it."""
    events, proc, _ = pipeline({"events_per_request": 4, "request_time_interval": 60})
    receiver.stall(0.5, n=1)
    for i in range(4):
        events.activate(1, 1, f"flying-{i}")
    deadline = time.monotonic() + 5
    while not proc.batcher.snapshot().in_flight and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.batcher.snapshot().in_flight  # a delivery thread has taken the batch: it is being sent

    def child() -> int:
        events.activate(1, 1, "kid")
        return 0 if proc.force_flush(5000) and proc.stats()["queued"] == 0 else 5

    assert fork(child) == 0
    assert proc.flush_events() is True
    assert received(receiver) == Counter([u("kid")] + [u(f"flying-{i}") for i in range(4)])


def test_child_that_os_exits_without_shutdown_loses_only_its_own_events(pipeline, receiver):
    """Documented: a bare os._exit() skips atexit, so the child's queue is lost; the
    parent's events are unaffected and never duplicated."""
    events, proc, _ = pipeline(HELD)
    events.activate(1, 1, "p-1")

    def child() -> int:
        events.activate(1, 1, "lost-in-child")
        return 0  # os._exit without shutdown

    assert fork(child) == 0
    assert proc.flush_events() is True
    assert received(receiver) == Counter([u("p-1")])


def test_child_calling_shutdown_all_before_os_exit(pipeline, receiver):
    events, proc, _ = pipeline(HELD)
    events.activate(1, 1, "p-2")

    def child() -> int:
        events.activate(1, 1, "saved-in-child")
        return 0 if lifecycle.shutdown_all(timeout=5) else 6

    assert fork(child) == 0
    assert received(receiver) == Counter([u("saved-in-child")])
    assert proc.flush_events() is True
    assert received(receiver) == Counter([u("p-2"), u("saved-in-child")])


def _mp_target(events) -> None:
    for i in range(3):
        events.activate(1, 1, f"mp-{i}")
    # returns: multiprocessing ends the child with os._exit() after its finalizers


def test_multiprocessing_fork_child_delivers_its_events(pipeline, receiver):
    events, proc, _ = pipeline(HELD)
    events.activate(1, 1, "mp-parent")
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        child = ctx.Process(target=_mp_target, args=(events,))
        child.start()
    child.join(20)
    assert child.exitcode == 0
    assert received(receiver) == Counter(u(f"mp-{i}") for i in range(3))
    assert proc.flush_events() is True
    assert received(receiver) == Counter([u("mp-parent")] + [u(f"mp-{i}") for i in range(3)])


SCRIPT = textwrap.dedent("""
    import os, sys
    from opentelemetry.sdk.trace import TracerProvider
    import vwo_otel
    url, key = sys.argv[1], sys.argv[2]
    exporter = vwo_otel.VWOExporter(12345, key, endpoint=url)
    processor = vwo_otel.VWOSpanProcessor(exporter, {"events_per_request": 100, "request_time_interval": 600})
    provider = TracerProvider(sampler=vwo_otel.VWOSampler())
    provider.add_span_processor(processor)
    vwo = vwo_otel.VWOEvents(tracer_provider=provider)
    for i in range(4):
        vwo.activate(1, 1, f"script-parent-{i}")
    for n in range(2):
        pid = os.fork()
        if pid == 0:
            for i in range(3):
                vwo.track(1, 1, 2, f"script-child{n}-{i}", revenue=i)
            sys.exit(0)  # a normal exit: atexit delivers the child's queue
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    # the parent exits normally too and delivers its own queue
""")


def test_children_exiting_normally_deliver_via_atexit(receiver):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", SCRIPT, receiver.url, SDK_KEY], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    expected = [f"script-parent-{i}" for i in range(4)]
    expected += [f"script-child{n}-{i}" for n in range(2) for i in range(3)]
    assert received(receiver) == Counter(u(x) for x in expected)
    assert len(receiver.requests()) == 3  # one batch per process: nothing sent twice


def test_shut_down_processor_stays_shut_down_in_a_child(pipeline, receiver, callbacks):
    events, proc, _ = pipeline(HELD)
    proc.shutdown()

    def child() -> int:
        events.activate(1, 1, "after-shutdown")
        return 0 if proc.stats()["dropped"] == {"already_shutdown": 1} else 7

    assert fork(child) == 0
    assert receiver.event_count() == 0


def test_a_child_does_not_keep_the_parents_idle_connections_open(pipeline, receiver):
    """An attack review's find: the connections a burst had left idle in the parent (one per
    batch it had in flight: up to the in-flight maximum, 128 by default) stayed open in every
    child for its life, after the parent had closed them: the server kept them all (128 open 7 s
    after the fork, the parent's closed after 5), the child held their descriptors. The child
    closes its copies at the fork (a copy's close ends nothing while the parent holds one)."""
    events, proc, _ = pipeline({"events_per_request": 10, "request_time_interval": 60})
    receiver.stall(0.1)
    for i in range(1500):
        events.activate(1, 1, f"burst-{i}")
    assert proc.force_flush(10_000)
    receiver.clear_faults()
    opened = len(receiver.open_sockets())
    assert opened > 8, opened  # idle in the parent, kept for the next requests
    go, done = os.pipe()

    def child() -> int:
        os.close(done)
        os.read(go, 1)  # until the parent has looked
        return 0

    pid = start_fork(child)
    os.close(go)
    try:
        events.activate(1, 1, "after")
        assert proc.force_flush(5000)  # the parent's connections still serve it
        proc.shutdown()  # the parent closes its connections: with the child's copies closed, they end
        deadline = time.monotonic() + 3
        while receiver.open_sockets() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(receiver.open_sockets()) == 0, (opened, len(receiver.open_sockets()))
    finally:
        os.write(done, b"x")
        os.close(done)
        os.waitpid(pid, 0)
