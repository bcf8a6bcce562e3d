"""The event model and ``VWOEvents`` argument checks (no network)."""

from __future__ import annotations

import math

import pytest

from vwo_otel import VWOEvents

BATCH = {"events_per_request": 100, "request_time_interval": 60}


U_VARUN = "C4D95C097902569F9A2D2E87CD3201C8"




def test_bad_input_error_is_clear():
    """The message says what was expected and what was given."""
    from opentelemetry.sdk.trace import TracerProvider

    events = VWOEvents(tracer_provider=TracerProvider(shutdown_on_exit=False))
    with pytest.raises(TypeError) as exc:
        events.activate("231", 1, "u")
    assert "campaign_id" in str(exc.value) and "int" in str(exc.value) and "'231'" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        events.track(1, 2, 3, "u", revenue=math.nan)
    assert "revenue" in str(exc.value) and "finite" in str(exc.value)


def test_vwo_events_refuses_both_providers():
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.trace import TracerProvider

    with pytest.raises(ValueError, match="tracer_provider or logger_provider"):
        VWOEvents(tracer_provider=TracerProvider(shutdown_on_exit=False),
                  logger_provider=LoggerProvider(shutdown_on_exit=False))




def test_a_provider_of_the_other_signal_is_named_not_an_attribute_error():
    """A LoggerProvider passed as tracer_provider= (or the other way round) raises a TypeError
    naming the keyword to use, not "'LoggerProvider' object has no attribute 'get_tracer'"."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.trace import TracerProvider

    with pytest.raises(TypeError, match=r"tracer_provider= .*LoggerProvider.*logger_provider="):
        VWOEvents(tracer_provider=LoggerProvider(shutdown_on_exit=False))
    with pytest.raises(TypeError, match=r"logger_provider= .*TracerProvider.*tracer_provider="):
        VWOEvents(logger_provider=TracerProvider(shutdown_on_exit=False))
