"""``batch_events`` validation, defaults and the set-up checks of processors and exporter (no network)."""

from __future__ import annotations

import math
import re

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import BatchEvents, VWOExporter, VWOLogRecordProcessor, VWOSpanProcessor

CLOSED = "http://127.0.0.1:9"  # never contacted by these construction-only tests


@pytest.fixture
def exporter() -> VWOExporter:
    return VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=CLOSED)


@pytest.fixture
def build(exporter):
    """Construct processors and shut them down afterwards."""
    made: list = []

    def make(batch_events, cls=VWOSpanProcessor, **kwargs):
        proc = cls(exporter, batch_events, **kwargs)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.shutdown()


def _raises(build, batch_events, key: str, allowed: str, cls=VWOSpanProcessor) -> None:
    """Construction fails with ValueError/TypeError whose message names ``key`` and ``allowed``."""
    with pytest.raises((ValueError, TypeError)) as info:
        build(batch_events, cls=cls)
    msg = str(info.value)
    assert key in msg, msg
    assert allowed in msg, msg


@pytest.mark.parametrize("value", [1, 2, 100, 4999, 5000])
def test_events_per_request_accepts_ints_1_to_5000(build, value):
    proc = build({"events_per_request": value})
    assert proc.batcher.events_per_request == value


@pytest.mark.parametrize("value, exc", [
    (True, TypeError), (False, TypeError), (5.0, TypeError), (2.5, TypeError), ("5", TypeError),
    (0, ValueError), (-1, ValueError), (5001, ValueError), (10**9, ValueError),
])
def test_events_per_request_rejected(build, value, exc):
    with pytest.raises(exc) as info:
        build({"events_per_request": value})
    msg = str(info.value)
    assert "events_per_request" in msg
    assert "1 to 5000" in msg


@pytest.mark.parametrize("value", [1, 1.0, 1.5, 60, 600, 86400 * 365])
def test_request_time_interval_accepts_numbers_from_1(build, value):
    proc = build({"request_time_interval": value})
    assert proc.batcher.interval == float(value)


@pytest.mark.parametrize("value, exc", [
    (0.5, ValueError), (0, ValueError), (0.999, ValueError), (-5, ValueError),
    (math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError),
    (True, TypeError), (False, TypeError), ("60", TypeError), ([60], TypeError),
])
def test_request_time_interval_rejected(build, value, exc):
    with pytest.raises(exc) as info:
        build({"request_time_interval": value})
    msg = str(info.value)
    assert "request_time_interval" in msg
    assert ">= 1" in msg


def test_only_events_per_request_given_interval_defaults_to_600(build):
    proc = build({"events_per_request": 2})
    assert proc.batcher.events_per_request == 2
    assert proc.batcher.interval == 600.0


def test_only_request_time_interval_given_count_defaults_to_100(build):
    proc = build({"request_time_interval": 5})
    assert proc.batcher.events_per_request == 100
    assert proc.batcher.interval == 5.0


def test_explicit_none_counts_as_not_given(build):
    proc = build({"events_per_request": None, "request_time_interval": 30, "flush_callback": None})
    assert (proc.batcher.events_per_request, proc.batcher.interval) == (100, 30.0)


@pytest.mark.parametrize("value", ["print", 42, object()])
def test_flush_callback_must_be_callable(build, value):
    _raises(build, {"events_per_request": 5, "flush_callback": value}, "flush_callback", "callable")


def test_flush_callback_callable_accepted(build):
    def cb(err, events):
        return None

    proc = build({"events_per_request": 5, "flush_callback": cb})
    assert proc.batcher.config.flush_callback is cb


@pytest.mark.parametrize("value", [{}, {"flush_callback": print},
                                   {"events_per_request": None, "request_time_interval": None}])
def test_neither_numeric_key_is_an_error(build, value):
    with pytest.raises(ValueError) as info:
        build(value)
    msg = str(info.value)
    assert "events_per_request" in msg and "request_time_interval" in msg


@pytest.mark.parametrize("key", ["eventsPerRequest", "flushcallback", "max_queue_size", "events_per_requests"])
def test_unknown_key_rejected(build, key):
    with pytest.raises(ValueError) as info:
        build({"events_per_request": 5, key: 1})
    msg = str(info.value)
    assert key in msg
    assert "events_per_request" in msg and "request_time_interval" in msg and "flush_callback" in msg


@pytest.mark.parametrize("value", [5, "events_per_request=5", [("events_per_request", 5)]])
def test_batch_events_must_be_a_mapping(build, value):
    with pytest.raises(TypeError) as info:
        build(value)
    assert "batch_events" in str(info.value)


def test_typed_batch_events_accepted(build):
    def cb(err, events):
        return None

    cfg = BatchEvents(events_per_request=7, request_time_interval=2, flush_callback=cb)
    proc = build(cfg)
    assert proc.batcher.config is cfg
    assert (proc.batcher.events_per_request, proc.batcher.interval) == (7, 2.0)
    assert BatchEvents(events_per_request=7).request_time_interval == 600.0
    assert BatchEvents(request_time_interval=3).events_per_request == 100


@pytest.mark.parametrize("kwargs", [{"events_per_request": 0}, {"events_per_request": True},
                                    {"request_time_interval": 0.5}, {"flush_callback": 3}])
def test_typed_batch_events_validates_too(kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        BatchEvents(**kwargs)
    assert next(iter(kwargs)) in str(info.value)


@pytest.mark.parametrize("cls", [VWOSpanProcessor, VWOLogRecordProcessor])
def test_errors_raised_at_processor_construction(build, cls):
    _raises(build, {"events_per_request": 0}, "events_per_request", "1 to 5000", cls=cls)
    _raises(build, {"request_time_interval": 0.5}, "request_time_interval", ">= 1", cls=cls)


def test_none_means_real_time(build):
    proc = build(None)
    assert proc.batcher.realtime is True
    assert proc.batcher.events_per_request == 1
    assert "real-time" in repr(proc)


@pytest.mark.parametrize("kwargs, name", [
    ({"max_queue_size": 0}, "max_queue_size"), ({"max_queue_size": 1.5}, "max_queue_size"),
    ({"max_queue_size": True}, "max_queue_size"), ({"shutdown_timeout": 0}, "shutdown_timeout"),
    ({"shutdown_timeout": math.inf}, "shutdown_timeout"), ({"shutdown_timeout": "1"}, "shutdown_timeout"),
])
def test_processor_keyword_arguments_validated(build, kwargs, name):
    with pytest.raises((ValueError, TypeError)) as info:
        build({"events_per_request": 5}, **kwargs)
    assert name in str(info.value)


def test_processor_requires_a_vwo_exporter():
    with pytest.raises(TypeError) as info:
        VWOSpanProcessor(object(), {"events_per_request": 5})  # type: ignore[arg-type]
    assert "VWOExporter" in str(info.value)


@pytest.mark.parametrize("account_id", [0, -1, True, 1.5, None, "", "abc", "-5", "12a"])
def test_exporter_rejects_bad_account_id(account_id):
    with pytest.raises((ValueError, TypeError)) as info:
        VWOExporter(account_id, SDK_KEY, endpoint=CLOSED)
    assert "account_id" in str(info.value)


def test_exporter_accepts_numeric_string_account_id():
    assert VWOExporter("12345", SDK_KEY, endpoint=CLOSED).account_id == 12345


@pytest.mark.parametrize("sdk_key", ["", None, 123, b"key"])
def test_exporter_rejects_bad_sdk_key(sdk_key):
    with pytest.raises((ValueError, TypeError)) as info:
        VWOExporter(ACCOUNT_ID, sdk_key, endpoint=CLOSED)
    assert "sdk_key" in str(info.value)


@pytest.mark.parametrize("endpoint", ["", "127.0.0.1:8080", "ftp://127.0.0.1", "http://", None, 8080,
                                      "file:///tmp/x"])
def test_exporter_rejects_bad_endpoint(endpoint):
    with pytest.raises((ValueError, TypeError)) as info:
        VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=endpoint)
    assert "endpoint" in str(info.value)


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan, True, "5", None])
def test_exporter_rejects_bad_timeout(timeout):
    with pytest.raises((ValueError, TypeError)) as info:
        VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=CLOSED, timeout=timeout)
    assert "timeout" in str(info.value)


@pytest.mark.parametrize("value", [0, 1023, 10 * 1024 * 1024 + 1, 4096.0, True, "4096"])
def test_exporter_rejects_bad_max_payload_bytes(value):
    with pytest.raises((ValueError, TypeError)) as info:
        VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=CLOSED, max_payload_bytes=value)
    assert "max_payload_bytes" in str(info.value)


@pytest.mark.parametrize("value", [1024, 65536, 10 * 1024 * 1024])
def test_exporter_accepts_max_payload_bytes_in_range(value):
    assert VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=CLOSED, max_payload_bytes=value).max_payload_bytes == value


def test_repr_never_contains_sdk_key(build, exporter):
    secret = SDK_KEY
    texts = [repr(exporter), str(exporter)]
    for cfg in ({"events_per_request": 5}, None):
        proc = build(cfg)
        texts += [repr(proc), str(proc)]
    for text in texts:
        assert secret not in text, text
    assert "12345" in repr(exporter)


@pytest.mark.parametrize("callback", [lambda err: None, lambda: None, lambda err, events, extra: None],
                         ids=["one-arg", "no-arg", "three-args"])
def test_flush_callback_with_the_wrong_signature_is_refused_at_set_up(callback):
    with pytest.raises(TypeError, match=r"batch_events\['flush_callback'\] must accept two arguments"):
        BatchEvents(flush_callback=callback)


@pytest.mark.parametrize("callback", [lambda err, events: None, lambda *args: None, print,
                                      lambda err, events, extra=1: None])
def test_flush_callback_signatures_that_take_err_and_events(callback):
    assert BatchEvents(flush_callback=callback).flush_callback is callback


@pytest.mark.parametrize("kwargs, words", [
    ({"retry": 60}, "retry must be a vwo_otel.RetryPolicy"),
    ({"retry": {"budget": 1}}, "retry must be a vwo_otel.RetryPolicy"),
    ({"sdk_key": "ключ-abc-123456"}, "sdk_key must be a non-empty str of printable ASCII"),
    ({"endpoint": "http://127.0.0.1:99999"}, "endpoint must be an http(s) URL with a valid host and port"),
    ({"endpoint": "http:// 127.0.0.1:80"}, "endpoint must be an http(s) URL with a valid host and port"),
    ({"endpoint": "http://[::1"}, "endpoint must be an http(s) URL with a valid host and port"),
], ids=["retry-int", "retry-dict", "non-ascii-key", "port-range", "space", "broken-ipv6"])
def test_set_up_values_that_would_fail_every_batch_are_refused_at_set_up(kwargs, words):
    """Each of these used to construct and then fail every batch on the delivery thread."""
    args = {"account_id": ACCOUNT_ID, "sdk_key": SDK_KEY, "endpoint": CLOSED, **kwargs}
    with pytest.raises((TypeError, ValueError), match=re.escape(words)):
        VWOExporter(**args)


@pytest.mark.parametrize("value", ["100", None, -1])
def test_force_flush_timeout_is_checked(exporter, value):
    processor = VWOSpanProcessor(exporter, {"events_per_request": 10})
    with pytest.raises((TypeError, ValueError), match="timeout_millis"):
        processor.force_flush(value)
    processor.shutdown()


def test_the_names_vwo_sdks_use_are_aliases():
    """``flushCallback`` (VWO's batching page) and ``batch_event_data`` (the FME SDK) mean the usual keys."""
    from vwo_otel import VWOExporter, VWOSpanProcessor, span_processor_from_env
    from vwo_otel.config import parse_batch_events

    def cb(err, events):
        pass

    assert parse_batch_events({"events_per_request": 5, "flushCallback": cb}).flush_callback is cb
    with pytest.raises(ValueError, match="flushCallback"):
        parse_batch_events({"events_per_request": 5, "flushCallback": cb, "flush_callback": cb})
    processor = VWOSpanProcessor(VWOExporter(1, "k" * 20), batch_event_data={"events_per_request": 7})
    assert processor.batcher.events_per_request == 7
    processor.shutdown()
    with pytest.raises(TypeError, match="batch_event_data"):
        VWOSpanProcessor(VWOExporter(1, "k" * 20), {"events_per_request": 7},
                         batch_event_data={"events_per_request": 8})
    env = {"VWO_ACCOUNT_ID": "1", "VWO_SDK_KEY": "k" * 20}
    processor = span_processor_from_env(batch_event_data={"events_per_request": 9}, environ=env)
    assert processor.batcher.events_per_request == 9
    processor.shutdown()


def test_an_async_flush_callback_is_refused_it_would_never_run():
    from vwo_otel.config import parse_batch_events

    async def cb(err, events):
        pass

    class AsyncCallable:
        async def __call__(self, err, events):
            pass

    for callback in (cb, AsyncCallable()):
        with pytest.raises(TypeError, match="async def"):
            parse_batch_events({"events_per_request": 5, "flush_callback": callback})
