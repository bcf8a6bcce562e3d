"""The refusal on a provider without VWOSampler names a fix that works where the app does not
create the provider: under opentelemetry-instrument the launcher builds it, and the sampler
comes from OTEL_TRACES_SAMPLER (vwo_otel's entry points: ``vwo``, ``vwo_<sdk sampler name>``)."""

from __future__ import annotations

import logging

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vwo_otel import VWOEvents, VWOExporter, VWOSpanProcessor

BATCH = {"events_per_request": 5000, "request_time_interval": 600}


def test_the_refusal_without_vwosampler_names_the_sampler_variable_too(caplog):
    caplog.set_level(logging.WARNING, logger="vwo_otel")
    provider = TracerProvider()  # as opentelemetry-instrument builds it from OTEL_TRACES_SAMPLER (unset)
    app = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(app))
    processor = VWOSpanProcessor(VWOExporter(12345, "key", disabled=True), BATCH, background=False)
    provider.add_span_processor(processor)
    VWOEvents(tracer_provider=provider).activate(1, 2, "user-1")
    assert app.get_finished_spans() == () and processor.stats()["queued"] == 0
    (refusal,) = [r.getMessage() for r in caplog.records if "user ids included" in r.getMessage()]
    assert "sampler=vwo_otel.VWOSampler(" in refusal  # the fix in code
    assert "OTEL_TRACES_SAMPLER=vwo" in refusal  # and where opentelemetry-instrument builds the provider
