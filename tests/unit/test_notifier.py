"""The notifier (``_engine/settle.py``): results and drops to ``flush_callback`` on a thread of
its own. Here: its close, while drops keep coming (no sockets)."""

from __future__ import annotations

import threading
import time

from vwo_otel._engine.settle import DROP_REPORT_DELAY, Notifier


def test_a_close_does_not_wait_for_drops_that_keep_coming_and_later_ones_are_still_reported():
    """An app that keeps emitting after shutdown began makes an ``already_shutdown`` drop per
    event. The close waited for the callback thread to find nothing left, which never came: it
    ran its whole timeout and said the callback was still busy, and each drop was one callback
    and often a thread start. Now it returns once what was there at close was handed over;
    later drops are reported together, every ``DROP_REPORT_DELAY``."""
    calls: list[int] = []
    notifier = Notifier(lambda err, events: calls.append(err.count), lambda events: [{} for _ in events], 100)
    notifier.dropped("queue_full", [object()])  # one waiting at the close
    stop = threading.Event()
    fed = [0]

    def feed() -> None:
        end = time.monotonic() + 5  # bounded: stopped long before
        while not stop.is_set() and time.monotonic() < end:
            notifier.dropped("already_shutdown", [object()])
            fed[0] += 1

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(0.05)
    start = time.monotonic()
    assert notifier.close(3.0)
    took = time.monotonic() - start
    time.sleep(2 * DROP_REPORT_DELAY)
    stop.set()
    feeder.join()
    assert took < 1.0, took
    deadline = time.monotonic() + 3 * DROP_REPORT_DELAY + 1
    while sum(calls) < 1 + fed[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(calls) == 1 + fed[0]  # every drop reported, the last ones after the close
    assert len(calls) < fed[0] / 100, (len(calls), fed[0])  # gathered, not one callback each


def test_a_close_with_a_slow_callback_does_not_wait_for_drops_that_keep_coming():
    """Attack review 10: with a callback that takes a few milliseconds (it writes to a file, a
    log shipper), the callback thread never stopped draining while an app kept emitting after
    shutdown (each new drop was there again by the time a callback returned), and the close
    waited for it to stop: its whole timeout, then "flush_callback still busy after
    shutdown_timeout" and False, although every drop there at the close had been handed over."""
    calls: list[int] = []

    def slow(err, events) -> None:
        calls.append(err.count)
        time.sleep(0.005)

    notifier = Notifier(slow, lambda events: [{} for _ in events], 100)
    notifier.dropped("queue_full", [object()])
    stop = threading.Event()
    fed = [0]

    def feed() -> None:
        end = time.monotonic() + 5  # bounded: stopped long before
        while not stop.is_set() and time.monotonic() < end:
            notifier.dropped("already_shutdown", [object()])
            fed[0] += 1
            time.sleep(0)  # as Batcher.put does after an already_shutdown drop

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(0.05)
    start = time.monotonic()
    closed = notifier.close(2.0)
    took = time.monotonic() - start
    stop.set()
    feeder.join()
    assert closed and took < 1.0, (closed, took)
    deadline = time.monotonic() + 3 * DROP_REPORT_DELAY + 2
    while sum(calls) < 1 + fed[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(calls) == 1 + fed[0]  # every drop reported, the last ones after the close


def test_the_last_words_before_a_signal_ends_the_process_count_the_drops_not_yet_reported(caplog):
    """After the shutdown, an app still emitting is refused (``already_shutdown``); those drops are
    reported every ``DROP_REPORT_DELAY`` and the log holds back all but one warning per 10 s. A
    signal that ends the process right after its delivery left them neither reported nor logged;
    ``last_words`` (run by the signal's handler just before the end) logs their count."""
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor

    processor = VWOSpanProcessor(VWOExporter(12345, "key", disabled=True), {"events_per_request": 10,
                                 "request_time_interval": 60, "flush_callback": lambda err, events: None})
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = VWOEvents(tracer_provider=provider)
    processor.shutdown()
    caplog.clear()
    for i in range(50):
        vwo.activate(1, 2, f"late-{i}")
    logged = [r.getMessage() for r in caplog.records if "already_shutdown" in r.getMessage()]
    assert len(logged) == 1  # the rest held back by the rate limit
    processor.batcher.last_words()
    last = [r.getMessage() for r in caplog.records if "already_shutdown" in r.getMessage()][-1]
    assert "49 more report(s) covering 49 event(s)" in last, last
