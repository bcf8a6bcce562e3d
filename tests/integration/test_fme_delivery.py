"""FME events (batch-events-v2, /events/t) over real HTTP to the loopback receiver: every promise of
the legacy path holds for them too, and the FME SDK's own batching defects do not happen here.

The FME SDK alone (1.65.0, measured; research/fme-wire-format.md 1.6): idle ticks POST
``{"ev": []}``, a batch answered 400 is sent again forever, a 200 whose body is not JSON counts as
a failure and is sent again (VWO stores it twice), ``flush_events()`` returns False always, and at
exit the queued batch is lost. Each test below shows vwo_otel's behaviour on that path."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from helpers import free_port, wait_listening

from vwo_otel import VWOSpanProcessor, visitor_uuid
from vwo_otel import attributes as A
from vwo_otel.event import from_attributes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APPS = os.path.join(REPO, "tests", "apps")
BATCH = {"events_per_request": 10, "request_time_interval": 60}


def fme_events(receiver) -> list[dict]:
    return [ev["d"] for ev in receiver.events() if "d" in ev]


def test_one_processor_carries_both_formats_each_to_its_endpoint(pipeline, receiver, callbacks):
    events, processor, _ = pipeline(BATCH)
    events.variation_shown(231, 2, "Varun", visitor_ua="UA", visitor_ip="1.2.3.4")
    events.activate(231, 2, "Varun")
    events.track_event("purchase", "Varun", {"amount": 12.5})
    events.track(231, 2, 7, "Varun", revenue=12.5)
    events.set_attribute({"plan": "pro"}, "Varun")
    assert processor.flush_events() is True  # the truth: the FME SDK's flush_events() returns False always
    by_path = {r["path"]: r for r in receiver.requests()}
    assert set(by_path) == {"/server-side/batch-events-v2", "/server-side/batch-events"}
    assert by_path["/server-side/batch-events-v2"]["n_events"] == 3
    assert by_path["/server-side/batch-events"]["n_events"] == 2
    assert all(r["status"] == 200 for r in receiver.requests())
    got = fme_events(receiver)
    assert [d["event"]["name"] for d in got] == [A.VARIATION_SHOWN, "purchase", A.SYNC_VISITOR_PROP]
    assert {d["visId"] for d in got} == {visitor_uuid(ACCOUNT_ID, "Varun")}
    assert len({d["msgId"] for d in got}) == 3
    assert sorted(len(evs) for err, evs in callbacks.calls if err is None) == [2, 3]
    assert processor.stats()["events"]["delivered"] == 5


def test_count_trigger_cuts_v2_batches(pipeline, receiver):
    events, processor, _ = pipeline({"events_per_request": 4, "request_time_interval": 60})
    for i in range(12):
        events.track_event("purchase", f"u{i}")
    assert receiver.wait_for_events(12, timeout=10)
    assert [r["n_events"] for r in receiver.requests()] == [4, 4, 4]


def test_age_trigger_and_no_empty_posts_when_idle(pipeline, receiver):
    """One event goes when it is one interval old; an idle queue sends nothing (the FME SDK's
    periodic timer POSTs {"ev": []} on every idle tick)."""
    events, processor, _ = pipeline({"events_per_request": 100, "request_time_interval": 1})
    start = time.monotonic()
    events.variation_shown(1, 2, "u")
    assert receiver.wait_for_events(1, timeout=5)
    assert 0.9 <= time.monotonic() - start < 4.0
    time.sleep(2.5)  # two more intervals of an idle queue: absence can only be seen by waiting
    assert [r["n_events"] for r in receiver.requests()] == [1]


def test_413_splits_v2_batches_and_delivers_every_event(pipeline, receiver, callbacks):
    events, processor, _ = pipeline({"events_per_request": 40, "request_time_interval": 60})
    receiver.set_max_body(4000)  # about 10 FME events
    for i in range(40):
        events.track_event("purchase", f"user-{i}", {"amount": i})
    assert processor.flush_events() is True
    assert sorted(d["visId"] for d in fme_events(receiver)) == sorted(visitor_uuid(ACCOUNT_ID, f"user-{i}")
                                                                   for i in range(40))
    statuses = Counter(r["status"] for r in receiver.requests())
    assert statuses[413] >= 1 and statuses[200] >= 4
    assert all(r["body_bytes"] <= 4000 for r in receiver.requests() if r["status"] == 200)


def test_a_400_is_isolated_not_sent_again_forever(pipeline, receiver, callbacks):
    """A batch answered 400 is split to find what the server refuses (here: the answer was for the
    whole request once), then settles; the FME SDK alone re-sends a 400 batch at every tick, forever."""
    events, processor, _ = pipeline(BATCH)
    receiver.fail_next(1, status=400, body="bad")
    for i in range(8):
        events.track_event("purchase", f"u{i}")
    assert processor.flush_events() is True
    assert len(fme_events(receiver)) == 8
    statuses = [r["status"] for r in receiver.requests()]
    assert statuses[0] == 400 and statuses.count(200) == 2 and len(statuses) == 3


def test_a_400_that_persists_fails_only_once_and_is_reported(pipeline, receiver, callbacks):
    events, processor, _ = pipeline(BATCH)
    receiver.fail_next(100, status=400, body="refused")
    events.track_event("purchase", "u")
    assert processor.flush_events() is False
    time.sleep(0.3)
    assert len(receiver.requests()) == 1  # one event: nothing to isolate, never re-sent
    (err, evs), = callbacks.failed
    assert getattr(err, "status", None) == 400 and evs[0]["d"]["event"]["name"] == "purchase"


def test_a_200_whose_body_is_not_json_is_delivered_once(pipeline, receiver, callbacks):
    """The FME SDK parses any application/json answer, calls a 200 with body "OK" a failure and
    sends the batch again (VWO stores it twice)."""
    events, processor, _ = pipeline(BATCH)
    receiver.accept_then_fail_next(1, status=200, body="OK", content_type="application/json")
    for i in range(3):
        events.variation_shown(1, 2, f"u{i}")
    assert processor.flush_events() is True
    time.sleep(0.3)
    assert len(receiver.requests()) == 1 and receiver.event_count() == 3
    assert [len(evs) for err, evs in callbacks.calls] == [3] and not callbacks.failed


def test_realtime_fme_events_post_to_events_t(pipeline, receiver, callbacks):
    events, processor, _ = pipeline(None)
    events.variation_shown(231, 2, "Varun", visitor_ua="Mozilla/5.0")
    events.track_event("purchase", "Varun", {"amount": 3})
    assert processor.flush_events() is True
    reqs = receiver.requests()
    assert [(r["method"], r["path"], r["status"]) for r in reqs] == [("POST", "/events/t", 200)] * 2
    by_name = {d["event"]["name"]: d for d in fme_events(receiver)}  # two in flight: any order
    assert set(by_name) == {A.VARIATION_SHOWN, "purchase"} and by_name[A.VARIATION_SHOWN]["visitor_ua"] == "Mozilla/5.0"


def test_usage_stats_travel_once(pipeline, receiver):
    """An instrumented SDK tags every impression with its usage statistics (vwoMeta); VWO needs
    them once, so only requests sent before VWO accepted them carry them."""
    events, processor, provider = pipeline({"events_per_request": 5, "request_time_interval": 60})
    tracer = provider.get_tracer("test")
    for i in range(15):
        tracer.start_span("x", attributes={A.EVENT_TYPE: A.VARIATION_SHOWN, A.USER_ID: f"u{i}", A.CAMPAIGN_ID: 1,
                                           A.VARIATION_ID: 2, A.USAGE_STATS: '{"eb": 1, "ll": 2}'}).end()
        if i == 4:
            assert processor.flush_events() is True  # VWO has accepted the first request
    assert processor.flush_events() is True
    carrying = [d for d in fme_events(receiver) if "vwoMeta" in d["event"]["props"]]
    assert len(carrying) == 1 and carrying[0]["event"]["props"]["vwoMeta"] == {"eb": 1, "ll": 2, "env": SDK_KEY}
    assert "vwoMeta" in fme_events(receiver)[0]["event"]["props"]  # one per request, until accepted


# == the sdk key: on the wire, never in reports ============================================

#: Where VWO's FME format carries the sdk key (event properties, visitor properties, usage statistics).
KEY_PLACES = (("event", "props", "vwo_envKey"), ("event", "props", "vwo_fs_environment"),
              ("event", "props", "vwoMeta", "env"), ("visitor", "props", "vwo_fs_environment"))


def key_places(d: dict) -> dict:
    """The values at ``KEY_PLACES`` that ``d`` (an FME event's ``d``) has."""
    found = {}
    for path in KEY_PLACES:
        node = d
        for step in path:
            node = node.get(step) if isinstance(node, dict) else None
        if node is not None:
            found[".".join(path)] = node
    return found


def emit_every_kind(events, provider, n: int = 1) -> None:
    """FME events of each shape that carries the sdk key: an impression with usage statistics,
    a custom event, visitor attributes."""
    tracer = provider.get_tracer("test")
    for i in range(n):
        tracer.start_span("x", attributes={A.EVENT_TYPE: A.VARIATION_SHOWN, A.USER_ID: f"key-{i}",
                                           A.CAMPAIGN_ID: 1, A.VARIATION_ID: 2,
                                           A.USAGE_STATS: '{"eb": 1}'}).end()
        events.track_event("purchase", f"key-{i}", {"amount": i})
        events.set_attribute({"plan": "pro"}, f"key-{i}")


def assert_reported_without_the_key(calls, n: int) -> None:
    reported = [e for _, evs in calls for e in evs]
    assert len(reported) == n
    assert SDK_KEY not in json.dumps(reported)
    places = [v for e in reported for v in key_places(e["d"]).values()]
    assert places and set(places) == {"***"}  # each place the key goes shows *** in its stead
    assert any("vwoMeta" in e["d"]["event"]["props"] for e in reported)


@pytest.mark.parametrize("fault", ["none", "400", "413"])
def test_reports_show_the_sdk_key_as_stars_while_vwo_gets_it(pipeline, receiver, callbacks, caplog, fault):
    """``flush_callback``'s events, the log (at DEBUG) and ``stats()`` never hold the sdk key;
    every request VWO stored carries it in each place of its format, the halves a 400 or a 413
    made resent included."""
    caplog.set_level(logging.DEBUG, logger="vwo_otel")
    events, processor, provider = pipeline(BATCH)
    if fault == "400":
        receiver.fail_next(1, status=400)  # the batch is halved to find what VWO refuses: all of it goes
    elif fault == "413":
        receiver.set_max_body(1500)
    emit_every_kind(events, provider, n=3)
    assert processor.flush_events() is True
    assert_reported_without_the_key(callbacks.calls, 9)
    stored = fme_events(receiver)
    assert len(stored) == 9
    assert all(set(key_places(d).values()) == {SDK_KEY} for d in stored)
    assert sum("vwoMeta" in d["event"]["props"] for d in stored) >= 1
    if fault in ("400", "413"):
        assert len(receiver.requests()) > 2  # sent, refused, resent in pieces
    assert SDK_KEY not in caplog.text and SDK_KEY not in json.dumps(processor.stats())


def test_a_realtime_outcome_shows_the_sdk_key_as_stars_while_vwo_gets_it(make_exporter, receiver):
    exporter = make_exporter()
    event = from_attributes({A.EVENT_TYPE: A.VARIATION_SHOWN, A.USER_ID: "rt", A.CAMPAIGN_ID: 1, A.VARIATION_ID: 2,
                             A.USAGE_STATS: '{"eb": 1}'}, time.time_ns())
    outcome = exporter.send_event(event)
    exporter.shutdown()
    assert outcome.ok
    assert_reported_without_the_key([(None, outcome.events)], 1)
    (stored,) = fme_events(receiver)
    assert set(key_places(stored).values()) == {SDK_KEY} and len(key_places(stored)) == 3


def test_failed_and_dropped_fme_events_are_reported_without_the_sdk_key(pipeline, receiver, callbacks):
    receiver.stall(10)  # the first batch waits; the queue (6) fills and the rest are dropped
    events, processor, provider = pipeline({"events_per_request": 3, "request_time_interval": 60},
                                           max_queue_size=6, max_concurrent_requests=1)
    emit_every_kind(events, provider, n=4)
    receiver.clear_faults()
    receiver.fail_next(10_000, status=403)  # what is left fails at once
    assert processor.flush_events() is False
    assert processor.stats()["dropped"] == {"queue_full": 6}
    assert callbacks.wait_for(lambda calls: sum(len(evs) for _, evs in calls) == 12)
    assert {type(err).__name__ for err, _ in callbacks.calls} >= {"EventsDropped"}
    assert_reported_without_the_key(callbacks.calls, 12)


EMITTER = """
import os, signal, sys
from opentelemetry.sdk.trace import TracerProvider
import vwo_otel
url, spool = sys.argv[1:3]
processor = vwo_otel.VWOSpanProcessor(vwo_otel.VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=url),
    {"events_per_request": 1000, "request_time_interval": 600}, spool=vwo_otel.Spool(spool, commit_interval=0))
provider = TracerProvider(sampler=vwo_otel.VWOSampler(), shutdown_on_exit=False)
provider.add_span_processor(processor)
vwo = vwo_otel.VWOEvents(tracer_provider=provider)
for i in range(50):
    vwo.track_event("purchase", f"k-{i}", {"amount": i})
    vwo.variation_shown(231, 2, f"k-{i}")
print("done", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
""".replace("ACCOUNT_ID", str(ACCOUNT_ID)).replace("SDK_KEY", repr(SDK_KEY))


def test_kill_9_then_replay_delivers_fme_events_once_with_their_message_ids(receiver, make_exporter, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", EMITTER, receiver.url, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL and "done" in proc.stdout, proc.stderr
    assert receiver.event_count() == 0
    processor = VWOSpanProcessor(make_exporter(), {"events_per_request": 1000, "request_time_interval": 1},
                                 spool=tmp_path)
    try:
        assert receiver.wait_for_events(100, timeout=15)
        assert processor.force_flush(5000)
    finally:
        processor.shutdown()
    got = fme_events(receiver)
    assert Counter(d["event"]["name"] for d in got) == {"purchase": 50, A.VARIATION_SHOWN: 50}
    assert len({d["msgId"] for d in got}) == 100
    assert sorted(d["event"]["props"]["amount"] for d in got if d["event"]["name"] == "purchase") == list(range(50))


def _app_env(receiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VWO_")}
    env.update(VWO_ENDPOINT=receiver.url, VWO_ACCOUNT_ID=str(ACCOUNT_ID), VWO_SDK_KEY=SDK_KEY, APP_FORMAT="fme",
               PYTHONPATH=os.pathsep.join([REPO, APPS, os.environ.get("PYTHONPATH", "")]), **extra)
    return env


def test_sigterm_in_plain_python_delivers_queued_fme_events(receiver):
    proc = subprocess.Popen([sys.executable, os.path.join(APPS, "sigterm_app.py"), "30"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_app_env(receiver))
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM and "FAILED" not in err, err
    assert len(fme_events(receiver)) == 30 and receiver.requests()[0]["path"] == "/server-side/batch-events-v2"


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_servers_deliver_fme_events_exactly_once_through_sigterm_and_fork(receiver, server):
    """uvicorn: SIGTERM after its graceful stop; gunicorn: two forked workers, then SIGTERM."""
    pytest.importorskip(server)
    port = free_port()
    cmd = ([sys.executable, "-m", "uvicorn", "--port", str(port), "--host", "127.0.0.1", "--app-dir", APPS,
            "sigterm_app:asgi"] if server == "uvicorn" else
           [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "--chdir", APPS,
            "sigterm_app:wsgi"])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_app_env(receiver), cwd=APPS)
    try:
        wait_listening(port, proc)
        import urllib.request
        for i in range(20):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/?user=r{i}&n=3", timeout=10) as resp:
                json.loads(resp.read())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "FAILED" not in err, err
    got = fme_events(receiver)
    assert len(got) == 60 and len({d["visId"] for d in got}) == 60, (len(got), err[-2000:])


def test_fme_events_through_otlp_exporters_and_the_gateway(make_gateway, receiver):
    """Fleet processes send FME events with OpenTelemetry's own OTLP exporters to a gateway: each
    reaches VWO's v2 endpoint once."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    gw = make_gateway(events_per_request=50, request_time_interval=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    apps = [{"name": "fme-spans", "signal": "traces", "n": 150}, {"name": "fme-logs", "signal": "logs", "n": 150}]
    procs = [subprocess.Popen([sys.executable, os.path.join(APPS, "otlp_emitter.py"),
                               json.dumps({"url": gw.url, "format": "fme", "batch": 64, **app})],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for app in apps]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and json.loads(out.splitlines()[-1])["export_failed"] == 0, err[-2000:]
    assert receiver.wait_for_events(300, timeout=15)
    time.sleep(0.3)  # a duplicate would arrive now
    got = fme_events(receiver)
    assert Counter(d["visId"] for d in got) == Counter(
        {visitor_uuid(ACCOUNT_ID, f"{app['name']}-{i}"): 1 for app in apps for i in range(app["n"])})
    assert Counter(d["event"]["name"] for d in got) == {A.VARIATION_SHOWN: 100, "purchase": 100,
                                                        A.SYNC_VISITOR_PROP: 100}
    assert {r["path"] for r in receiver.requests()} == {"/server-side/batch-events-v2"}
