"""The performance fast paths give exactly what the general code gives (benchmarks/run.py).

- ``wire.compact`` (formatted JSON) == the JSON encoder, byte for byte, and so is the legacy
  format's row writer (one format string for an impression or a conversion without revenue);
- the cached visitor id == ``uuid.uuid5(...).hex.upper()``;
- ``events.from_attributes``' inline path == its checked path (same event, same errors);
- ``event._plain`` reads the SDK's attribute dict without changing what is decoded.
"""

from __future__ import annotations

import enum
import math
import random
import uuid

import pytest

from vwo_otel import attributes as A
from vwo_otel.event import MalformedEvent, VWOEvent, _plain, from_attributes
from vwo_otel.export.legacy import LegacyFormat
from vwo_otel.export.wire import VWO_NAMESPACE, _dumps

TEXTS = ["", "a", "é", "\u2028", '"q\\', "\x00\x1f", "日本", "\U0001f600", "Mozilla/5.0 (X11)", "1.2.3.4"]
REVENUES = [None, 0, 5, -3, 12.5, 1e300, -0.0, 1e-7, 0.1 + 0.2, 2**62, True, float("nan"), float("inf")]


class Kind(enum.IntEnum):
    VISITOR = 1
    GOAL = 2


def test_compact_json_matches_the_encoder():
    enc = LegacyFormat(12345, "key")
    rnd = random.Random(7)
    for _ in range(3000):
        et = rnd.choice([1, 2, 3])
        ev = VWOEvent(et, rnd.choice(TEXTS) + "u", rnd.choice([0, 1795668949, 2**40]), rnd.randrange(2**63),
                      rnd.randrange(100), rnd.randrange(10**9), rnd.choice(REVENUES) if et == 2 else None,
                      rnd.choice(TEXTS) if et == 3 else None, rnd.choice(TEXTS) if et == 3 else None,
                      rnd.choice(TEXTS), rnd.choice(TEXTS))
        if type(ev.revenue) is float and not math.isfinite(ev.revenue):  # not JSON: the event fails alone
            with pytest.raises(ValueError):
                enc.encode([ev])
            continue
        dicts, parts = enc.encode([ev])
        assert parts == [_dumps(dicts[0]).encode()]


ODD_IDS = [0, 7, 2**63 - 1, 2**70, -1, True, False, 3.0, "5", None, Kind.GOAL]


def test_the_row_writer_matches_the_encoder_for_values_no_check_let_through():
    """``VWOEvent`` is public and checks nothing: an id that is a bool, a float, a str or an
    IntEnum (or a visitor text that is not a str) must come out as the JSON encoder writes it."""
    enc = LegacyFormat(12345, "key")
    rnd = random.Random(11)
    for _ in range(3000):
        et = rnd.choice([1, 2, Kind.VISITOR])
        ev = VWOEvent(et, rnd.choice(TEXTS) + "u", rnd.choice([1795668949, 2.5, True, 2**64]), rnd.choice(ODD_IDS),
                      rnd.choice(ODD_IDS), rnd.choice(ODD_IDS), rnd.choice([None, None, 4, 1.5]),
                      visitor_ua=rnd.choice([*TEXTS, None, 5]), visitor_ip=rnd.choice([*TEXTS, None]))
        dicts, parts = enc.encode([ev])
        assert parts == [_dumps(dicts[0]).encode()], dicts[0]


@pytest.mark.parametrize("etype", [True, 1.0, 2.0])
def test_the_row_writer_matches_the_encoder_for_an_event_type_equal_to_a_row_but_not_an_int(etype):
    """``True == 1`` and ``2.0 == 2`` find a legacy row (dict lookup by equality), but the JSON
    encoder writes ``"eT":true`` / ``"eT":2.0``: the row writer must not write the row's int."""
    enc = LegacyFormat(12345, "key")
    ev = VWOEvent(etype, "u", 1795668949, 7, 2, 3)
    dicts, parts = enc.encode([ev])
    assert parts == [_dumps(dicts[0]).encode()], (parts, dicts[0])


def test_cached_visitor_uuid_matches_uuid5():
    enc = LegacyFormat(12345, "key")
    namespace = uuid.uuid5(VWO_NAMESPACE, "12345")
    assert enc.visitor("Varun") == "C4D95C097902569F9A2D2E87CD3201C8"
    for user in ["x", "é", "日本", "\U0001f600", "a" * 300, *map(str, range(200))]:
        assert enc.visitor(user) == uuid.uuid5(namespace, user).hex.upper()


def _attrs(rnd: random.Random) -> dict:
    attrs: dict = {A.EVENT_TYPE: rnd.choice([1, 2, 2, 3, 0, 1.0, True]), A.USER_ID: rnd.choice(["u1", "", 7, None]),
                   A.CAMPAIGN_ID: rnd.choice([5, -1, 2**63, 3.0, None]), A.VARIATION_ID: rnd.choice([2, "2", 0]),
                   A.GOAL_ID: rnd.choice([9, None, -2, False])}
    if rnd.random() < 0.5:
        attrs[A.REVENUE] = rnd.choice(REVENUES + ["1"])
    for key in (A.VISITOR_UA, A.VISITOR_IP):
        if rnd.random() < 0.5:
            attrs[key] = rnd.choice(["", "ua", 3])
    return attrs


def _decode(attrs: dict):
    try:
        return from_attributes(attrs, 1_795_663_948_000_000_000)
    except MalformedEvent as exc:
        return ("malformed", str(exc))


def test_inline_decoding_matches_the_checked_path():
    rnd = random.Random(3)
    for _ in range(5000):
        attrs = _attrs(rnd)
        etype = attrs[A.EVENT_TYPE]
        if type(etype) is not int or etype not in (1, 2):
            continue
        slow = dict(attrs)
        slow[A.EVENT_TYPE] = Kind(etype)  # not exactly an int: takes the checked path
        fast, checked = _decode(attrs), _decode(slow)
        assert fast == checked, attrs
        if isinstance(fast, VWOEvent):
            assert [type(getattr(fast, k)) for k in VWOEvent.__slots__ if k != "etype"] == \
                [type(getattr(checked, k)) for k in VWOEvent.__slots__ if k != "etype"]


@pytest.mark.parametrize("etype", [1.0, 2.0, 3.0, True, False, "1", None, 0, 4])
def test_an_event_type_that_is_not_the_int_1_2_or_3_is_malformed(etype):
    attrs = {A.EVENT_TYPE: etype, A.USER_ID: "u", A.CAMPAIGN_ID: 1, A.VARIATION_ID: 1, A.GOAL_ID: 1,
             A.DIMENSION_KEY: "k", A.DIMENSION_VALUE: "v"}
    result = _decode(attrs)
    assert result[0] == "malformed" and "vwo.event.type" in result[1], result


@pytest.mark.parametrize("attrs", [{A.EVENT_TYPE: 2}, {}])
def test_plain_reads_bounded_attributes(attrs):
    from opentelemetry.attributes import BoundedAttributes

    bounded = BoundedAttributes(attributes=attrs)
    assert _plain(bounded) == attrs and type(_plain(bounded)) is dict
    assert _plain(attrs) is attrs and _plain(None) is None


def _legacy_calls(vwo, seed: int = 3) -> None:
    """300 random legacy calls, every argument kind they accept."""
    rnd = random.Random(seed)
    users = ["u1", 7, "é", "日本", "\U0001f600", "a b"]
    for _ in range(300):
        kw = {k: rnd.choice([None, "", "ua", "ü", "1.2.3.4"]) for k in ("visitor_ua", "visitor_ip")}
        call = rnd.choice(["activate", "track", "push"])
        if call == "activate":
            vwo.activate(rnd.randrange(2**63), rnd.randrange(9), rnd.choice(users), **kw)
        elif call == "track":
            vwo.track(5, 2, rnd.randrange(99), rnd.choice(users), revenue=rnd.choice([None, 0, 5, 12.5, -0.0, 2**62]),
                      **kw)
        else:
            vwo.push(rnd.choice(users), {rnd.choice(["k", "ü"]): rnd.choice(["v", 3, 2.5, ""])}, **kw)


def _timeless(events) -> list[tuple]:
    return [tuple(getattr(e, slot) for slot in VWOEvent.__slots__ if slot != "time") for e in events]


def test_the_event_vwoevents_hands_over_is_the_one_decoding_gives():
    """``handoff.event_of`` (VWOEvents builds the event from the attributes it checked) gives
    what decoding the record gives, for every legacy method and argument they accept; where only
    VWO processors would receive the spans (the usual set-up), no span is made and the processor
    queues the same events."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
    from vwo_otel.handoff import event_of

    batch = {"events_per_request": 5000, "request_time_interval": 600}
    spans: list = []

    class Seen(VWOExporter):  # behind a stock processor: it needs the spans' attributes, so they carry them all
        def export(self, batch):
            spans.extend(batch)
            return SpanExportResult.SUCCESS

    processor = VWOSpanProcessor(VWOExporter(12345, "key", disabled=True), batch, background=False)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(Seen(12345, "key", disabled=True)))
    _legacy_calls(VWOEvents(tracer_provider=provider))
    queued = processor.batcher.snapshot().pending
    assert len(queued) == len(spans) == 300
    for event, span in zip(queued, spans, strict=True):
        decoded = from_attributes(_plain(span._attributes), span.start_time)
        assert event == decoded
        assert event_of(_plain(span._attributes), span.start_time) == decoded
    processor.shutdown()

    started: list = []

    class Started(RandomIdGenerator):  # each span started gets a span id
        def generate_span_id(self) -> int:
            started.append(1)
            return super().generate_span_id()

    only = VWOSpanProcessor(VWOExporter(12345, "key", disabled=True), batch, background=False)
    provider = TracerProvider(sampler=VWOSampler(), id_generator=Started(), shutdown_on_exit=False)
    provider.add_span_processor(only)
    _legacy_calls(VWOEvents(tracer_provider=provider))
    assert _timeless(only.batcher.snapshot().pending) == _timeless(queued)
    assert started == [] and len(queued) == 300  # straight to the queue: no span
    only.shutdown()


def test_log_records_hand_over_the_event_decoding_gives():
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor

    from vwo_otel import VWOEvents, VWOExporter, VWOLogRecordProcessor
    from vwo_otel.event import from_record

    batch = {"events_per_request": 5000, "request_time_interval": 600}
    records: list = []

    class Seen(VWOExporter):  # behind a stock processor: the records carry every attribute
        def export(self, batch):
            records.extend(batch)
            return LogRecordExportResult.SUCCESS

    def emit(vwo) -> None:
        for i in range(20):
            vwo.activate(1, 2, f"u{i}", visitor_ua="ua" if i % 2 else None)
            vwo.track(1, 2, 3, f"u{i}", revenue=i / 2 if i % 3 else None)
            vwo.push(f"u{i}", {"plan": "pro"})

    processor = VWOLogRecordProcessor(VWOExporter(12345, "key", disabled=True), batch, background=False)
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(processor)
    provider.add_log_record_processor(SimpleLogRecordProcessor(Seen(12345, "key", disabled=True)))
    emit(VWOEvents(logger_provider=provider))
    queued = processor.batcher.snapshot().pending
    assert list(queued) == [from_record(r) for r in records] and len(queued) == 60
    # only VWO processors: the event straight to the queue, no record emitted
    emitted: list = []

    class Emitted(LoggerProvider):  # what each record is emitted with
        def get_logger(self, *args, **kwargs):
            logger = super().get_logger(*args, **kwargs)

            class Logger:
                def emit(self, **record):
                    emitted.append(dict(record.get("attributes") or {}))
                    logger.emit(**record)
            return Logger()

    only = VWOLogRecordProcessor(VWOExporter(12345, "key", disabled=True), batch, background=False)
    provider = Emitted(shutdown_on_exit=False)
    provider.add_log_record_processor(only)
    emit(VWOEvents(logger_provider=provider))
    assert _timeless(only.batcher.snapshot().pending) == _timeless(queued)
    assert emitted == [] and len(queued) == 60


def test_processors_on_a_thread_pool_get_every_attribute_and_the_same_events():
    """A provider whose processors run on a thread pool cannot take the handed event (another
    thread): its spans carry every attribute and are decoded, to the same events."""
    from opentelemetry.sdk.trace import ConcurrentMultiSpanProcessor, TracerProvider

    from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor

    batch = {"events_per_request": 5000, "request_time_interval": 600}
    queued = []
    for pool in (False, True):
        processor = VWOSpanProcessor(VWOExporter(12345, "key", disabled=True), batch, background=False)
        provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False,
                                  active_span_processor=ConcurrentMultiSpanProcessor(2) if pool else None)
        provider.add_span_processor(processor)
        _legacy_calls(VWOEvents(tracer_provider=provider))
        queued.append(_timeless(processor.batcher.snapshot().pending))
        provider.shutdown()
    assert len(queued[1]) == 300 and queued[1] == queued[0]
