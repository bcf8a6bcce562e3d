"""Events straight to the queue: where only VWO processors (and OpenTelemetry's stock ones for the
app's exporters, which skip VWOSampler's record-only spans) receive them, ``VWOEvents`` puts a
legacy event into the VWO processors' queues on the emitting thread and makes no span or log
record (``Route.handoff``). Every set-up where something else would read the record gets it,
with every attribute (the attack reviews of the earlier "bare record" form found two that lost
events without a word: a ``VWOExporter`` added after the first event, and a processor subclass
that passes spans to another thread)."""

from __future__ import annotations

import concurrent.futures

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from vwo_otel import VWOEvents, VWOExporter, VWOLogRecordProcessor, VWOSampler, VWOSpanProcessor
from vwo_otel import attributes as A

BATCH = {"events_per_request": 5000, "request_time_interval": 600}


def _processor(cls=VWOSpanProcessor, **kw):
    return cls(VWOExporter(12345, "key", disabled=True), BATCH, background=False, **kw)


class Seen(VWOExporter):
    """A VWOExporter that keeps what it is given (its records need every attribute)."""

    def __init__(self) -> None:
        super().__init__(12345, "key", disabled=True)
        self.records: list = []

    def export(self, batch):
        self.records.extend(batch)
        return SpanExportResult.SUCCESS if batch and hasattr(batch[0], "name") else LogRecordExportResult.SUCCESS


def _attributes(record) -> dict:
    return dict(getattr(record, "attributes", None) or getattr(record, "log_record", record).attributes or {})


def _after_a_first_event(sampler=None):
    """A VWO processor alone on a provider, one event emitted: the route is taken."""
    processor = _processor()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = VWOEvents(tracer_provider=provider)
    vwo.activate(1, 2, "first")
    return processor, provider, vwo


def test_a_vwo_exporter_added_after_the_first_event_gets_every_attribute():
    processor, provider, vwo = _after_a_first_event()  # no VWOSampler: stock processors see VWO spans
    seen = Seen()
    provider.add_span_processor(SimpleSpanProcessor(seen))
    vwo.activate(1, 2, "second")
    assert [(_attributes(r)[A.USER_ID]) for r in seen.records] == ["second"]
    assert processor.stats()["queued"] == 2 and processor.stats()["dropped"] == {}


def test_log_records_too():
    processor = _processor(VWOLogRecordProcessor)
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(processor)
    vwo = VWOEvents(logger_provider=provider)
    vwo.track(1, 2, 3, "first")
    seen = Seen()
    provider.add_log_record_processor(SimpleLogRecordProcessor(seen))
    vwo.track(1, 2, 3, "second")
    assert [_attributes(r)[A.USER_ID] for r in seen.records] == ["second"]
    assert processor.stats()["queued"] == 2


def test_an_app_exporter_added_after_the_first_event_stops_the_events_instead_of_leaking_them(caplog):
    processor, provider, vwo = _after_a_first_event()
    app = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(app))
    vwo.activate(1, 2, "second")
    assert app.get_finished_spans() == () and processor.stats()["queued"] == 1
    assert "would export them, user ids included" in caplog.text


def test_a_processor_that_passes_spans_to_another_thread_gets_every_attribute():
    pool = concurrent.futures.ThreadPoolExecutor(2)

    class Deferred(VWOSpanProcessor):
        def on_end(self, span):
            pool.submit(super().on_end, span).result()

    processor = _processor(Deferred)
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = VWOEvents(tracer_provider=provider)
    for i in range(10):
        vwo.activate(1, 2, f"u{i}")
    pool.shutdown()
    assert processor.stats()["queued"] == 10 and processor.stats()["dropped"] == {}


class Counting(RandomIdGenerator):
    """The SDK's id generator, counting the spans started (each gets a span id)."""

    def __init__(self) -> None:
        self.spans = 0

    def generate_span_id(self) -> int:
        self.spans += 1
        return super().generate_span_id()


def test_beside_stock_processors_no_span_is_made_and_beside_an_unknown_one_it_is_whole():
    ended: list = []

    class Mine(SpanProcessor):  # could hold another account's VWO processor, or a thread pool
        def on_end(self, span):
            ended.append(span)

    for extra, whole in ((SimpleSpanProcessor(InMemorySpanExporter()), False), (Mine(), True)):
        ids = Counting()
        provider = TracerProvider(sampler=VWOSampler(), id_generator=ids, shutdown_on_exit=False)
        processor = _processor()
        provider.add_span_processor(processor)
        provider.add_span_processor(extra)
        VWOEvents(tracer_provider=provider).push("u", {"k": "v"})
        assert ids.spans == (1 if whole else 0)  # none: the event went straight to the queue
        assert processor.stats()["queued"] == 1
    assert [(s.name, dict(s.attributes)[A.USER_ID]) for s in ended] == [("vwo.custom_dimension", "u")]


def test_each_vwo_processor_of_the_provider_gets_the_event_once_in_order():
    first, second = _processor(), _processor()
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(first)
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    provider.add_span_processor(second)
    vwo = VWOEvents(tracer_provider=provider)
    for i in range(3):
        vwo.track(1, 2, 3, f"u{i}")
    third = _processor()
    provider.add_span_processor(third)  # the route is taken again: the new one gets the next events
    vwo.activate(1, 2, "later")
    users = [[e.user_id for e in p.batcher.snapshot().pending] for p in (first, second, third)]
    assert users == [["u0", "u1", "u2", "later"], ["u0", "u1", "u2", "later"], ["later"]]


def test_a_vwo_processor_that_looks_at_spans_starting_gets_whole_spans():
    started: list = []

    class Watching(VWOSpanProcessor):
        def on_start(self, span, parent_context=None):
            started.append(span.name)

    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    processor = _processor(Watching)
    provider.add_span_processor(processor)
    VWOEvents(tracer_provider=provider).activate(1, 2, "u")
    assert started == ["vwo.visitor"] and processor.stats()["queued"] == 1


def test_an_app_span_named_like_a_vwo_event_is_sampled_as_the_app_s_sampler_says():
    app = InMemorySpanExporter()
    provider = TracerProvider(sampler=VWOSampler(ParentBased(ALWAYS_ON)), shutdown_on_exit=False)
    provider.add_span_processor(_processor())
    provider.add_span_processor(SimpleSpanProcessor(app))
    tracer = provider.get_tracer("my.app")
    vwo = VWOEvents(tracer_provider=provider)
    with tracer.start_as_current_span("checkout"):
        with tracer.start_as_current_span("vwo.goal"):  # no attributes, a VWO event's name
            vwo.track(1, 2, 3, "u")
            tracer.start_span("db.query").end()
    assert sorted(s.name for s in app.get_finished_spans()) == ["checkout", "db.query", "vwo.goal"]


# -- the second attack review's finds --------------------------------------------------------

def test_a_route_refused_after_an_earlier_warning_says_so_again(caplog):
    provider = TracerProvider(sampler=None, shutdown_on_exit=False)
    vwo = VWOEvents(tracer_provider=provider)
    vwo.activate(1, 2, "nowhere")  # no VWO processor yet: refused, warned
    processor = _processor()
    provider.add_span_processor(processor)
    vwo.activate(1, 2, "queued")
    caplog.clear()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))  # an app exporter, no VWOSampler
    vwo.activate(1, 2, "refused")
    assert processor.stats()["queued"] == 1
    assert "would export them, user ids included" in caplog.text


def test_under_a_sampler_that_is_not_vwosampler_spans_carry_every_attribute():
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class ByAttribute(Sampler):  # records what carries vwo.event.type, drops the rest
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None):
            keep = bool(attributes) and A.EVENT_TYPE in attributes
            return SamplingResult(Decision.RECORD_ONLY if keep else Decision.DROP, attributes)

        def get_description(self) -> str:
            return "ByAttribute"

    processor, _, vwo = _after_a_first_event(ByAttribute())
    for i in range(3):
        vwo.activate(1, 2, f"u{i}")
    assert processor.stats()["queued"] == 4


def test_a_hook_replaced_on_the_instance_gets_every_attribute():
    pool = concurrent.futures.ThreadPoolExecutor(2)
    processor = _processor()
    direct = processor.on_end
    processor.on_end = lambda span: pool.submit(direct, span).result()
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = VWOEvents(tracer_provider=provider)
    for i in range(5):
        vwo.track(1, 2, 3, f"u{i}")
    pool.shutdown()
    assert processor.stats()["queued"] == 5 and processor.stats()["dropped"] == {}


def test_an_app_span_started_inside_a_vwo_span_s_start_is_the_app_s():
    app = InMemorySpanExporter()

    class Starting(VWOSpanProcessor):  # on_start overridden: it gets whole spans
        def on_start(self, span, parent_context=None):
            if span.name.startswith("vwo."):
                tracer.start_span("app.audit").end()

    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    processor = _processor(Starting)
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(app))
    tracer = provider.get_tracer("my.app")
    VWOEvents(tracer_provider=provider).activate(1, 2, "u")
    assert [s.name for s in app.get_finished_spans()] == ["app.audit"] and processor.stats()["queued"] == 1


def test_a_provider_that_disables_vwo_otels_scope_is_named_not_silent(caplog):
    """The SDK's (experimental) tracer / logger configurator can disable an instrumentation scope:
    its records then reach no processor. Emitting refuses with a warning naming the scope."""
    from opentelemetry.sdk._logs._internal import _LoggerConfig
    from opentelemetry.sdk.trace import _TracerConfig

    def off(config):
        return lambda scope: config(is_enabled=scope.name != A.SCOPE)

    for log in (False, True):
        caplog.clear()
        if log:
            provider = LoggerProvider(_logger_configurator=off(_LoggerConfig))
            processor = _processor(VWOLogRecordProcessor)
            provider.add_log_record_processor(processor)
            events = VWOEvents(logger_provider=provider)
        else:
            provider = TracerProvider(sampler=VWOSampler(), _tracer_configurator=off(_TracerConfig))
            processor = _processor()
            provider.add_span_processor(processor)
            events = VWOEvents(tracer_provider=provider)
        events.activate(1, 2, "u")
        events.activate(1, 2, "v")
        warnings = [r.getMessage() for r in caplog.records if "scope" in r.getMessage()]
        assert len(warnings) == 1 and "'vwo_otel'" in warnings[0] and "configurator" in warnings[0], warnings
        assert processor.batcher.snapshot().pending == ()


def test_a_scope_disabled_after_the_first_event_is_named_not_the_sampler(caplog):
    """The configurator may change after the route was taken (``_set_tracer_configurator``): the
    unrecorded span's warning names the scope, not VWOSampler, which the provider has."""
    from opentelemetry.sdk.trace import _TracerConfig

    processor, provider, vwo = _after_a_first_event(VWOSampler())
    provider._set_tracer_configurator(
        tracer_configurator=lambda scope: _TracerConfig(is_enabled=scope.name != A.SCOPE))
    caplog.clear()
    vwo.activate(1, 2, "second")
    vwo.track_event("purchase", "second")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "'vwo_otel'" in warnings[0] and "configurator" in warnings[0], warnings
    assert "VWOSampler" not in warnings[0], warnings


def test_a_logger_scope_disabled_after_the_first_event_is_named_not_silent(caplog):
    """A logger configurator changed after the first event: the SDK logger's emit would drop the
    records without a word; each record is refused with one warning naming the scope, and taken
    again once the scope is back on."""
    from opentelemetry.sdk._logs._internal import _LoggerConfig

    provider = LoggerProvider()
    processor = _processor(VWOLogRecordProcessor)
    provider.add_log_record_processor(processor)
    vwo = VWOEvents(logger_provider=provider)
    vwo.activate(1, 2, "first")
    provider._set_logger_configurator(logger_configurator=lambda scope: _LoggerConfig(is_enabled=scope.name != A.SCOPE))
    caplog.clear()
    vwo.activate(1, 2, "second")
    vwo.track_event("purchase", "second")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "'vwo_otel'" in warnings[0] and "configurator" in warnings[0], warnings
    provider._set_logger_configurator(logger_configurator=lambda scope: _LoggerConfig(is_enabled=True))
    vwo.activate(1, 2, "third")
    assert [ev.user_id for ev in processor.batcher.snapshot().pending] == ["first", "third"]


# -- the tenth attack review's finds ---------------------------------------------------------

def test_a_provider_disabled_by_otel_sdk_disabled_gets_no_event_and_says_why(monkeypatch, caplog):
    """``OTEL_SDK_DISABLED=true`` (a test run, a staging box that must send nothing): the SDK
    provider records nothing (its tracers and loggers are no-ops). Straight to the queue, the
    events went to VWO anyway (before, the span path lost them with a warning naming VWOSampler,
    the log path silently); now none is emitted and one warning names the variable."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    for log in (False, True):
        caplog.clear()
        if log:
            processor = _processor(VWOLogRecordProcessor)
            provider = LoggerProvider(shutdown_on_exit=False)
            provider.add_log_record_processor(processor)
            vwo = VWOEvents(logger_provider=provider)
        else:
            processor = _processor()
            provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
            provider.add_span_processor(processor)
            vwo = VWOEvents(tracer_provider=provider)
        vwo.activate(1, 2, "u")
        vwo.track(1, 2, 3, "u")
        assert processor.batcher.snapshot().pending == (), log
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "OTEL_SDK_DISABLED" in warnings[0], warnings


def test_a_vwosampler_subclass_that_decides_on_vwo_events_is_asked():
    """A ``VWOSampler`` subclass with its own ``should_sample`` (here: an app's QA users are not
    tracked) decides by the event's attributes: straight to the queue it was never asked and the
    QA user's events reached VWO. Only ``VWOSampler``'s own decision lets events skip the span."""
    from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

    class NoQA(VWOSampler):
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None):
            if attributes and str(attributes.get(A.USER_ID, "")).startswith("qa-"):
                return SamplingResult(Decision.DROP)
            return super().should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    processor = _processor()
    provider = TracerProvider(sampler=NoQA(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = VWOEvents(tracer_provider=provider)
    vwo.activate(1, 2, "qa-1")
    vwo.activate(1, 2, "visitor")
    assert [ev.user_id for ev in processor.batcher.snapshot().pending] == ["visitor"]
