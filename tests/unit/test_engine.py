"""The batching engine on its own (``vwo_otel._engine.batcher.Batcher``): a fake exporter, an
injected clock for the age trigger, and ``Batcher.snapshot()`` to look at the queue."""

from __future__ import annotations

import math
import threading
import time
from types import SimpleNamespace

import pytest
from helpers import wait_until

from vwo_otel import attributes as A
from vwo_otel import event as event_module
from vwo_otel._engine import lifecycle
from vwo_otel._engine.batcher import Batcher, QueueSnapshot, ShutdownState
from vwo_otel.config import BatchEvents
from vwo_otel.errors import EventsDropped, Outcome, VWODeliveryError
from vwo_otel.event import VWOEvent


class FakeExporter:
    """What the batcher calls on an exporter; ``gate`` (if set) holds every send until set."""

    def __init__(self, gate: threading.Event | None = None, fail_encode: str | None = None,
                 send_raises: bool = False) -> None:
        self.gate = gate
        self.fail_encode = fail_encode  # events of this user cannot be encoded
        self.send_raises = send_raises  # send_batch raises once, as a bug would
        self.sent: list[list[str]] = []
        self.sent_at: list[float] = []
        self.hurried: float | None = None
        self.closed = False

    def encode(self, events):
        out = []
        for ev in events:
            if ev.user_id == self.fail_encode:
                raise ValueError("unencodable")
            out.append({"u": ev.user_id, "eT": ev.etype})
        return out

    def send_batch(self, events):
        if self.send_raises:
            self.send_raises = False
            raise RuntimeError("boom")
        if self.gate is not None:
            self.gate.wait(10)
        dicts = self.encode(events)
        self.sent.append([ev.user_id for ev in events])
        self.sent_at.append(time.monotonic())
        return [Outcome(None, dicts)]

    def send_event(self, ev):
        return self.send_batch([ev])[0]

    def send_order(self, events):
        return events

    def hurry(self, deadline: float, requests_until: float | None = None) -> None:
        self.hurried = deadline
        self.requests_until = requests_until

    def after_fork(self) -> None:
        pass

    def shutdown(self) -> None:
        self.closed = True


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def imp(user: str) -> VWOEvent:
    return VWOEvent(A.VISITOR, user, 1, 1, 1)


def conv(user: str) -> VWOEvent:
    return VWOEvent(A.GOAL, user, 1, 1, 1, 1, 2.0)


def dim(user: str) -> VWOEvent:
    return VWOEvent(A.CUSTOM_DIMENSION, user, 1, key="k", value="v")


@pytest.fixture
def make():
    """``make(exporter=None, batch=..., **kwargs)`` -> Batcher; all are shut down after the test."""
    made: list[Batcher] = []

    def build(exporter=None, batch: object = "held", **kwargs) -> Batcher:
        if batch == "held":
            batch = BatchEvents(events_per_request=100, request_time_interval=600)
        b = Batcher(exporter or FakeExporter(), batch, **kwargs)  # type: ignore[arg-type]
        made.append(b)
        return b

    yield build
    for b in made:
        b.shutdown(2.0)


def users(snapshot: QueueSnapshot) -> list[str]:
    return [ev.user_id for ev in snapshot.pending]


# -- the age trigger's timer ---------------------------------------------------------------

def test_timer_starts_with_the_first_event_and_later_events_do_not_move_it(make):
    clock = Clock()
    b = make(clock=clock)
    assert b.snapshot().deadline == math.inf  # idle: no timer
    clock.now += 10 * 600  # however long it stays idle
    assert b.snapshot().deadline == math.inf and b.snapshot().ready == 0
    b.put(imp("a"))
    assert b.snapshot().deadline == 7600.0
    clock.now += 300
    b.put(imp("b"))
    snap = b.snapshot()
    assert snap.deadline == 7600.0 and users(snap) == ["a", "b"]


def test_snapshot_repr_counts_pending_events_without_their_user_ids(make):
    """README offers ``processor.batcher.snapshot()`` for debugging: printed or logged, it must
    not list the queued events (user ids, visitor IPs, up to ``events_per_request`` of them)."""
    b = make(FakeExporter(), clock=Clock())
    b.put(imp("alice@example.com"))
    b.put(imp("bob@example.com"))
    snap = b.snapshot()
    assert users(snap) == ["alice@example.com", "bob@example.com"]  # still there for tests and tools
    text = repr(snap)
    assert "example.com" not in text
    assert "pending=2" in text and "held=2" in text


def test_count_trigger_and_flush_clear_the_timer_and_the_next_event_restarts_it(make):
    clock = Clock()
    exporter = FakeExporter()
    b = make(exporter, BatchEvents(events_per_request=3, request_time_interval=600), clock=clock)
    for u in "abc":
        b.put(imp(u))
    assert b.snapshot().deadline == math.inf  # cut on the emitting thread by the count
    assert b.flush(5) is True
    assert exporter.sent == [["a", "b", "c"]]
    clock.now += 250
    b.put(imp("d"))
    assert b.snapshot().deadline == 1850.0
    assert b.flush(5) is True
    snap = b.snapshot()
    assert snap.pending == () and snap.deadline == math.inf and snap.held == 0
    assert exporter.sent == [["a", "b", "c"], ["d"]]


def test_age_trigger_sends_once_the_oldest_event_is_due(make):
    """A real clock and a short interval (set past ``BatchEvents``' checks): never early."""
    exporter = FakeExporter()
    sent = threading.Event()
    interval = 0.2
    batch = SimpleNamespace(events_per_request=100, request_time_interval=interval,
                            flush_callback=lambda err, events: sent.set())
    b = make(exporter, batch)
    start = time.monotonic()
    b.put(imp("a"))
    b.put(imp("b"))
    assert sent.wait(5)
    assert exporter.sent == [["a", "b"]]
    assert exporter.sent_at[0] - start >= interval
    assert b.snapshot().deadline == math.inf


# -- the drop order when the backlog is full -----------------------------------------------

def test_a_conversion_evicts_the_newest_lower_priority_event(make):
    reports: list = []
    b = make(batch=BatchEvents(events_per_request=100, request_time_interval=600,
                               flush_callback=lambda err, evs: reports.append((err, evs))),
             max_queue_size=4)
    for ev in (imp("i1"), dim("d1"), imp("i2"), conv("c1")):
        b.put(ev)
    b.put(conv("c2"))  # evicts i2, the newest impression or dimension
    assert users(b.snapshot()) == ["i1", "d1", "c1", "c2"]
    b.put(imp("i3"))  # nothing lower than an impression: dropped itself
    b.put(conv("c3"))  # evicts d1
    b.put(conv("c4"))  # evicts i1
    b.put(conv("c5"))  # only conversions left: dropped itself
    assert users(b.snapshot()) == ["c1", "c2", "c3", "c4"]
    assert b.dropped == {"queue_full": 5} and b.queue_size() == 4
    assert b.flush(5) is False  # events emitted before the flush were dropped
    (err, evs), = [(e, v) for e, v in reports if isinstance(e, EventsDropped)]
    assert err.reason == "queue_full" and err.count == 5
    assert [e["u"] for e in evs] == ["i2", "i3", "d1", "i1", "c5"]


def test_count_bytes_follows_events_in_evicted_and_delivered(make):
    b = make(max_queue_size=3, count_bytes=True)
    plain = make()
    events = [imp("i1" * 100), dim("d1"), conv("c1")]
    for ev in events:
        b.put(ev)
        plain.put(ev)
    assert b.queue_bytes() == sum(ev.nbytes() for ev in events) and plain.queue_bytes() == 0
    b.put(conv("c2"))  # evicts d1, the newest lower-priority event
    assert b.queue_bytes() == sum(ev.nbytes() for ev in (events[0], events[2])) + conv("c2").nbytes()
    assert b.flush(5) is False and b.queue_bytes() == 0  # a drop happened; everything left was delivered


def test_admit_keeps_a_request_whole_past_the_bound_until_shutdown(make):
    b = make(max_queue_size=2)
    b.admit([imp(f"a{i}") for i in range(5)])
    assert b.queue_size() == 5 and not b.dropped
    b.put(imp("p"))  # the bound still holds for put: nothing lower to evict
    assert b.dropped == {"queue_full": 1}
    b.shutdown(0.5)
    b.admit([imp("late")])
    assert b.dropped == {"queue_full": 1, "already_shutdown": 1}


def test_drop_order_comes_from_the_priority_table(make, monkeypatch):
    """A new event type needs only a row in ``event.DROP_PRIORITY``."""
    monkeypatch.setitem(event_module.DROP_PRIORITY, 9, 5)
    b = make(max_queue_size=3)
    for ev in (imp("i1"), conv("c1"), conv("c2")):
        b.put(ev)
    b.put(VWOEvent(9, "top", 1))  # evicts the newest of any lower priority: c2
    assert users(b.snapshot()) == ["i1", "c1", "top"]
    b.put(VWOEvent(9, "top2", 1))
    assert users(b.snapshot()) == ["i1", "top", "top2"]
    unknown = max(k for k in event_module.DROP_PRIORITY if isinstance(k, int)) + 100
    b.put(VWOEvent(unknown, "unknown", 1))  # a type the table does not know ranks below all
    assert users(b.snapshot()) == ["i1", "top", "top2"]
    assert b.dropped == {"queue_full": 3}


def test_batches_in_flight_are_never_evicted(make):
    gate = threading.Event()
    exporter = FakeExporter(gate)
    b = make(exporter, BatchEvents(events_per_request=2, request_time_interval=600), max_queue_size=3,
             max_concurrent_requests=1)
    b.put(imp("i1"))
    b.put(imp("i2"))  # cut: a delivery thread takes it and waits at the gate
    deadline = time.monotonic() + 5
    while not b.snapshot().in_flight and time.monotonic() < deadline:
        time.sleep(0.005)
    b.put(imp("i3"))
    b.put(conv("c1"))  # the queued impression goes, not the ones in flight
    snap = b.snapshot()
    assert (snap.in_flight, snap.ready, users(snap), snap.held) == (1, 0, ["c1"], 3)
    b.put(conv("c2"))  # full, nothing evictable outside the request in flight
    assert b.dropped == {"queue_full": 2}
    gate.set()
    assert b.flush(5) is False  # two events were dropped before the flush
    assert exporter.sent == [["i1", "i2"], ["c1"]]


# -- delivery failures ---------------------------------------------------------------------

def test_an_unencodable_event_fails_alone_and_the_rest_is_sent(make):
    reports: list = []
    exporter = FakeExporter(fail_encode="bad", send_raises=True)
    b = make(exporter, BatchEvents(events_per_request=100, request_time_interval=600,
                                   flush_callback=lambda err, evs: reports.append((err, evs))))
    for ev in (imp("a"), imp("bad"), imp("b")):
        b.put(ev)
    assert b.flush(5) is False
    assert exporter.sent == [["a", "b"]]
    bad, good = reports
    assert isinstance(bad[0], VWODeliveryError) and "cannot be encoded" in str(bad[0])
    assert bad[1][0]["user_id"] == "bad"
    assert good == (None, [{"u": "a", "eT": 1}, {"u": "b", "eT": 1}])
    assert b.counts == {"delivered": 2, "failed": 1}


# -- shutdown --------------------------------------------------------------------------------

def test_shutdown_in_two_halves(make):
    exporter = FakeExporter()
    b = make(exporter)
    b.put(imp("a"))
    state = b.begin_shutdown(3.0)
    assert isinstance(state, ShutdownState) and state.threaded
    assert exporter.hurried < state.deadline  # nothing new starts after the report is made
    assert exporter.requests_until == state.deadline  # nothing already started outlasts the deadline
    assert b.begin_shutdown(3.0) is None  # already shutting down
    assert b.finish_shutdown(state) is True
    assert exporter.sent == [["a"]] and exporter.closed
    b.put(imp("late"))
    assert b.dropped == {"already_shutdown": 1}


def test_shutdown_all_reports_what_could_not_be_delivered(make):
    gate = threading.Event()
    stuck = make(FakeExporter(gate))
    fine = make(FakeExporter())
    stuck.put(imp("s"))
    fine.put(imp("f"))
    start = time.monotonic()
    assert lifecycle.shutdown_all(0.5, [stuck, fine]) is False
    assert time.monotonic() - start < 0.5 + 0.5  # both within one timeout, not one after the other
    assert stuck.dropped == {"shutdown_in_flight": 1} and fine.dropped == {}
    assert stuck.snapshot().held == 0
    gate.set()


@pytest.mark.parametrize("kwargs, message", [
    ({"max_queue_size": 0}, "max_queue_size must be an int >= 1"),
    ({"max_concurrent_requests": 257}, "max_concurrent_requests must be an int from 1 to 256"),
    ({"shutdown_timeout": 0}, "shutdown_timeout must be a number of seconds > 0"),
])
def test_settings_checked(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        Batcher(FakeExporter(), None, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["shutdown_timeout", "block_when_full"])
def test_a_wait_no_lock_can_take_is_refused_when_set(name):
    """An attack review's find: a value past ``threading.TIMEOUT_MAX`` (about 292 years; 1e10,
    ``sys.maxsize`` as "no limit") was taken, then raised OverflowError when the wait came:
    every shutdown (a SIGTERM's handler too, which then never ended the process), every emit
    into a full queue on the app's thread. Refused when set, naming the setting and its range."""
    with pytest.raises(ValueError, match=f"{name} must be a number of seconds .*86400, got 10000000000.0"):
        Batcher(FakeExporter(), None, **{name: 1e10})  # type: ignore[arg-type]


def test_the_longest_waits_allowed_end_in_a_shutdown_and_an_emit_that_return(make):
    b = make(batch=BatchEvents(events_per_request=1, request_time_interval=600), max_queue_size=1,
             shutdown_timeout=86400, block_when_full=86400)
    gate = threading.Event()
    b.exporter.gate = gate  # the first batch waits in flight: the queue is full
    b.put(imp("a"))
    emitting = threading.Thread(target=b.put, args=(imp("b"),))
    emitting.start()  # waits for room
    assert wait_until(lambda: b.snapshot().emitters_waiting == 1)
    gate.set()
    emitting.join(5)
    assert not emitting.is_alive()
    assert b.shutdown() is True
    assert b.counts["delivered"] == 2


def test_a_flush_callback_that_emits_on_every_report_does_not_hang_the_exit():
    """An attack review's find: a callback that emits an event each time it runs kept the process
    from exiting (each already_shutdown report called it again: 380,000 reports in 10 s). What it
    emits after shutdown is counted and logged, not reported back to it."""
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor

    calls = []

    def callback(err, events):
        calls.append(err)
        vwo.activate(9, 9, f"from-callback-{len(calls)}")

    processor = VWOSpanProcessor(VWOExporter(12345, "key", disabled=True),
                                 {"events_per_request": 1, "request_time_interval": 600, "flush_callback": callback},
                                 background=False)
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = VWOEvents(tracer_provider=provider)
    vwo.activate(1, 2, "u")
    closing = threading.Thread(target=provider.shutdown, daemon=True)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "shutdown still running after 10 s"
    assert processor.stats()["dropped"].get("already_shutdown", 0) >= 1 and len(calls) < 100
