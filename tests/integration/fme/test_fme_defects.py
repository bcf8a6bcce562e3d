"""The FME SDK's own batching defects (issue #19), each shown on the SDK alone (a strict xfail:
the check fails there, every run) and fixed with ``VWOFMEInstrumentor`` (vwo_otel delivers)."""

from __future__ import annotations

from collections import Counter

import pytest
from fmetests import ACCOUNT, needs_fme_delivery, run_app

from vwo_otel import visitor_uuid

pytest.importorskip("wingify", reason="needs the FME SDK: run in .venv-fme (python3 dev.py fme)")
pytest_plugins = ("fmetests",)  # the fixtures sdk_side and otel_side

#: The same check on the SDK alone (it must fail: the defect is real) and instrumented.
MODES = [pytest.param("alone", marks=pytest.mark.xfail(strict=True, reason="the FME SDK's own batching")),
         pytest.param("instrumented", marks=needs_fme_delivery)]
#: The SDK's batching with a 1 s timer (alone it sends; instrumented the processor does, also every 1 s).
SDK_BATCH = {"events_per_request": 100, "request_time_interval": 1}
FAST = {"events_per_request": 100, "request_time_interval": 1}


def delivered_by(mode, sdk_side, otel_side):
    return sdk_side if mode == "alone" else otel_side


def key(d: dict) -> tuple:
    """An event's identity across requests (the SDK's msgId is not unique)."""
    return d["visId"], d["event"]["name"], d["event"]["time"], str(sorted(d["event"]["props"].items()))


@pytest.mark.parametrize("mode", MODES)
def test_no_empty_batch_requests(mode, sdk_side, otel_side):
    """Alone, the SDK's periodic timer POSTs ``{"ev": []}`` at every idle tick."""
    app = run_app(sdk_side, otel_side, mode, {"users": 1, "sleep": 3.5, "hard_exit": True},
                  batch=SDK_BATCH, processor_batch=FAST)
    assert app.returncode == 0, app.stderr
    sent = delivered_by(mode, sdk_side, otel_side).event_requests()
    assert sent, "nothing was delivered"
    assert [r for r in sent if not r.events] == []


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_answered_400_is_not_sent_again_and_again(mode, sdk_side, otel_side):
    """VWO refuses a batch holding a malformed event with 400. Alone, the SDK sends that batch
    again at every tick, forever, and the good events in it never arrive; vwo_otel isolates
    the refused event (reported failed once) and delivers the rest."""
    rx = delivered_by(mode, sdk_side, otel_side)
    rx.reject(lambda d: d["event"]["props"].get("currency") == "XXX")
    app = run_app(sdk_side, otel_side, mode, {"users": 3, "calls": ["track_event"], "sleep": 4, "hard_exit": True},
                  batch=SDK_BATCH, processor_batch=FAST, poison="1")
    assert app.returncode == 0, app.stderr
    carried = [r.at for r in rx.event_requests() for d in r.events if d["event"]["props"].get("currency") == "XXX"]
    assert carried
    assert max(carried) - min(carried) < 0.5  # one batch and its 400 isolation at once; never again
    good = [d for d in rx.events() if d["event"]["name"] == "purchase"]
    assert len(good) == 2 and len({key(d) for d in good}) == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_200_whose_body_is_not_json_is_delivered_once(mode, sdk_side, otel_side):
    """Alone, the SDK reads a 200 ``application/json`` answer that is not JSON as a failure and
    sends the batch again: VWO stores its events twice."""
    rx = delivered_by(mode, sdk_side, otel_side)
    rx.answer_next(1, 200, b"OK", "application/json")
    app = run_app(sdk_side, otel_side, mode, {"users": 2, "sleep": 3.5, "hard_exit": True},
                  batch=SDK_BATCH, processor_batch=FAST)
    assert app.returncode == 0, app.stderr
    stored = Counter(key(d) for d in rx.events())
    assert stored and max(stored.values()) == 1


@pytest.mark.parametrize("mode", MODES)
def test_an_app_that_simply_exits_delivers_everything_and_ends(mode, sdk_side, otel_side):
    """Alone (``batch_event_data`` with its defaults), the non-daemon 600 s settings-poll timer
    keeps a finished app alive, and the queued events are never sent."""
    app = run_app(sdk_side, otel_side, mode, {"users": 5}, timeout=10, batch={},
                  processor_batch={"events_per_request": 1000, "request_time_interval": 600})
    queued = app.results().get("queued")
    assert queued and queued >= 15  # 5 users x (impressions + purchase + attributes)
    assert app.returncode == 0, f"did not end by itself in {app.seconds:.1f} s: {app.stderr[-2000:]}"
    assert app.seconds < 8
    assert len(delivered_by(mode, sdk_side, otel_side).events()) >= queued


@pytest.mark.parametrize("mode", MODES)
def test_flush_events_says_whether_the_events_were_delivered(mode, sdk_side, otel_side):
    """Alone, ``flush_events()`` returns False whatever happened."""
    app = run_app(sdk_side, otel_side, mode, {"users": 3, "flush": True, "hard_exit": True},
                  batch={"events_per_request": 1000, "request_time_interval": 600},
                  processor_batch={"events_per_request": 1000, "request_time_interval": 600})
    assert app.returncode == 0, app.stderr
    assert app.results()["flush"] is True
    assert len(delivered_by(mode, sdk_side, otel_side).events()) >= 10


@needs_fme_delivery
def test_flush_events_is_false_when_delivery_failed(sdk_side, otel_side):
    otel_side.reject(lambda d: True)
    app = run_app(sdk_side, otel_side, "instrumented", {"users": 2, "flush": True, "hard_exit": True},
                  processor_batch={"events_per_request": 1000, "request_time_interval": 600})
    assert app.results()["flush"] is False
    assert sdk_side.event_requests() == []  # reported to the callback, not handed back to the SDK


@pytest.mark.parametrize("mode", MODES)
def test_events_after_a_manual_flush_still_go_at_the_interval(mode, sdk_side, otel_side):
    """Alone, ``flush_events()`` cancels the SDK's timer for good: later events wait for the
    count trigger (100 events) or the next manual flush."""
    app = run_app(sdk_side, otel_side, mode, {"users": 1, "flush": True, "second_wave": 2, "sleep": 3,
                                              "hard_exit": True},
                  batch=SDK_BATCH, processor_batch=FAST)
    assert app.returncode == 0, app.stderr
    after = {visitor_uuid(ACCOUNT, f"second-{i}") for i in range(2)}
    second = [d for d in delivered_by(mode, sdk_side, otel_side).events()
              if d["event"]["name"] == "purchase" and d["visId"] in after]
    assert len(second) == 2
