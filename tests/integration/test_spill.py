"""A full memory queue with a spool spills to disk instead of dropping; spilled events come
back oldest first as room frees, flushes wait for them, shutdown leaves them for the next start."""

from __future__ import annotations

import logging
import time
from collections import Counter

from conftest import ACCOUNT_ID

from vwo_otel import Spool, VWOSpanProcessor, visitor_uuid
from vwo_otel.event import VWOEvent

QUEUE = 20
N = 5 * QUEUE


def _uids(prefix: str, n: int) -> list[str]:
    return [visitor_uuid(ACCOUNT_ID, f"{prefix}-{i}") for i in range(n)]


def _wait(predicate, timeout: float = 5.0) -> bool:
    """Poll a condition the engine offers no event for (spill counts), bounded."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_a_full_queue_spills_to_disk_and_every_event_is_delivered_once(receiver, pipeline, callbacks, tmp_path):
    receiver.stall(30)  # every request hangs until clear_faults()
    vwo, processor, _ = pipeline({"events_per_request": 10, "request_time_interval": 60},
                                 max_queue_size=QUEUE, spool=Spool(tmp_path, commit_interval=0.01))
    for i in range(N):
        vwo.track(1, 2, 3, f"s-{i}", revenue=i)
    snap = processor.batcher.snapshot()
    assert snap.held <= QUEUE and snap.held + snap.spilled == N  # nothing dropped: the rest is on disk only
    assert processor.batcher.dropped == {}
    assert receiver.event_count() == 0

    receiver.clear_faults()  # the server recovers
    assert processor.flush_events() is True  # waits for the spilled events too
    got = Counter(e["u"] for e in receiver.events())
    assert sorted(got) == sorted(_uids("s", N)) and max(got.values()) == 1  # each exactly once
    assert processor.batcher.snapshot().spilled == 0
    assert callbacks.failed == []
    assert len(callbacks.ok_events) == N


def test_spilled_events_come_back_oldest_first(receiver, pipeline, tmp_path):
    receiver.stall(30)
    vwo, processor, _ = pipeline({"events_per_request": 5, "request_time_interval": 60},
                                 max_queue_size=10, spool=Spool(tmp_path, commit_interval=0), max_concurrent_requests=1)
    for i in range(40):
        vwo.track(1, 2, 3, f"o-{i}", revenue=i)
    receiver.clear_faults()
    assert processor.flush_events() is True
    order = [e["u"] for e in receiver.events()]
    expected = _uids("o", 40)
    spilled = [u for u in order if u in set(expected[10:])]
    assert spilled == expected[10:]  # read back in the order they were emitted


def test_a_flush_with_spilled_events_and_a_dead_server_answers_false_within_its_timeout(receiver, pipeline, tmp_path):
    receiver.stall(30)
    vwo, processor, _ = pipeline({"events_per_request": 10, "request_time_interval": 60},
                                 max_queue_size=QUEUE, spool=Spool(tmp_path, commit_interval=0.01))
    for i in range(N):
        vwo.track(1, 2, 3, f"f-{i}")
    start = time.monotonic()
    assert processor.force_flush(300) is False
    assert time.monotonic() - start < 2.0
    receiver.clear_faults()


def test_shutdown_leaves_spilled_events_on_disk_and_the_next_start_delivers_them(
        receiver, make_exporter, callbacks, tmp_path, caplog):
    receiver.fail_next(10_000)  # down: refuses every request (a stall would accept the in-flight ones late)
    processor = VWOSpanProcessor(make_exporter(), {"events_per_request": 10, "request_time_interval": 60,
                                                   "flush_callback": callbacks},
                                 max_queue_size=QUEUE, spool=Spool(tmp_path, commit_interval=0.01),
                                 shutdown_timeout=0.5)
    for i in range(N):
        processor.batcher.put(VWOEvent(2, f"d-{i}", int(time.time()), 1, 1, goal_id=3))
    assert processor.batcher.snapshot().spilled == N - QUEUE
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        processor.shutdown()  # the receiver is still down
    receiver.clear_faults()
    kept = [r.getMessage() for r in caplog.records if "stay in the spool file" in r.getMessage()]
    assert kept and f"({N - QUEUE} of them spilled" in kept[0]
    reported = {e["u"] for err, evs in callbacks.calls if err is not None for e in evs}
    on_disk = N - len(reported)
    assert on_disk >= N - QUEUE  # in flight at the deadline may be reported; nothing spilled was
    assert receiver.event_count() == 0

    again = VWOSpanProcessor(make_exporter(), {"events_per_request": 10, "request_time_interval": 60},
                             max_queue_size=QUEUE, spool=tmp_path)
    try:
        assert again.flush_events() is True
        got = Counter(e["u"] for e in receiver.events())
        assert max(got.values()) == 1
        assert set(got) | reported == set(_uids("d", N))  # every event: delivered now or reported then
        assert len(got) == on_disk
    finally:
        again.shutdown()
    assert not list(tmp_path.glob("spool-*.sqlite"))


def test_past_max_bytes_a_full_queue_drops_as_without_a_spool(receiver, pipeline, callbacks, tmp_path):
    receiver.stall(30)
    spool = Spool(tmp_path, commit_interval=0.01, max_bytes=64 * 1024)
    vwo, processor, _ = pipeline({"events_per_request": 10, "request_time_interval": 60},
                                 max_queue_size=QUEUE, spool=spool)
    for i in range(2000):  # ~100 B a row: about 650 fit in 64 KiB
        vwo.track(1, 2, 3, f"b-{i}")
    snap = processor.batcher.snapshot()
    dropped = processor.batcher.dropped.get("queue_full", 0)
    assert 0 < snap.spilled < 2000 and dropped > 0
    assert snap.held + snap.spilled + dropped == 2000  # each event: in memory, on disk, or reported
    receiver.clear_faults()
    assert processor.flush_events() is False  # drops happened since the last flush
    assert receiver.event_count() == 2000 - dropped
