"""Zero-code set-up under ``opentelemetry-instrument`` (opentelemetry-instrumentation / -distro).

``configure`` is registered as an ``opentelemetry_pre_instrument`` entry point: the launcher
calls it after its configurator built the providers and before any instrumentor runs. When
``VWO_ACCOUNT_ID`` and ``VWO_SDK_KEY`` are set it adds a ``VWOSpanProcessor`` configured from
the ``VWO_*`` variables to the global ``TracerProvider`` and wraps that provider's sampler in
``VWOSampler`` (if no SDK provider was built, it sets one with ``VWOSampler()``); otherwise it
does nothing. A bad ``VWO_*`` value is logged as an error and leaves the app running untouched.

The sampler factories below are ``opentelemetry_traces_sampler`` entry points, for set-ups
that choose the sampler by name: ``OTEL_TRACES_SAMPLER=vwo_parentbased_traceidratio``
``OTEL_TRACES_SAMPLER_ARG=0.1`` is ``VWOSampler(ParentBased(TraceIdRatioBased(0.1)))``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from . import checks
from .api import VWOSampler
from .env import VARIABLES, given, span_processor_from_env, unknown_names
from .processor import VWOSpanProcessor

logger = logging.getLogger("vwo_otel")

_lock = threading.Lock()
_installed: VWOSpanProcessor | None = None


def configure(environ: Mapping[str, str] | None = None) -> VWOSpanProcessor | None:
    """Register VWO on the global TracerProvider if ``VWO_ACCOUNT_ID`` and ``VWO_SDK_KEY`` are
    set; returns the processor (the same one when called again), or None. Never raises."""
    global _installed
    env = os.environ if environ is None else environ
    missing = [name for name in ("VWO_ACCOUNT_ID", "VWO_SDK_KEY") if not given(name, env)]
    if missing:
        typos = [f"{name} is set: a misspelling of {close}?" for name, close in unknown_names(env) if close in missing]
        if typos or any(given(name, env) for name in VARIABLES):  # meant to (an app's own VWO_ENV is no sign)
            logger.warning("%s not set%s: VWO events are not enabled (VWOEvents emits nothing, so no "
                           "user id reaches your exporters)", " and ".join(missing),
                           f" ({'; '.join(typos)})" if typos else "")
        else:
            logger.debug("VWO_ACCOUNT_ID / VWO_SDK_KEY not set; zero-code set-up skipped")
        return None
    with _lock:
        if _installed is not None:
            return _installed
        try:  # (an unusable VWO_SPOOL only costs the spool: the processor logs it and goes on)
            processor = span_processor_from_env(environ=env)
        except (ValueError, TypeError, OSError) as exc:  # ConfigError is a ValueError
            logger.error("VWO events are not enabled: %s", exc)
            return None
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):  # the launcher built no SDK provider
            trace.set_tracer_provider(TracerProvider(sampler=VWOSampler()))
            provider = trace.get_tracer_provider()
            if not isinstance(provider, TracerProvider):
                logger.error("the global TracerProvider is a %s, not the SDK's: VWO events "
                             "are not enabled", type(provider).__name__)
                processor.shutdown()
                return None
        elif not isinstance(provider.sampler, VWOSampler):
            # Tracers take the provider's sampler when they are created; this runs before
            # the instrumentors and the app create theirs.
            provider.sampler = VWOSampler(provider.sampler)
        provider.add_span_processor(processor)
        _installed = processor
        logger.info("%r registered on the global TracerProvider", processor)
        return processor


_RATE = checks.Range(0, 1)  # the share of traces sampled


def _rate(arg: str | float | None) -> float:
    if arg is None or (isinstance(arg, str) and not arg.strip()):
        return 1.0
    try:
        rate = float(arg)
    except ValueError:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG must be {_RATE}, got {arg!r}") from None
    return float(_RATE.check("OTEL_TRACES_SAMPLER_ARG", rate))


def always_on(arg: str | None = None) -> Sampler:
    """``OTEL_TRACES_SAMPLER=vwo_always_on``."""
    return VWOSampler(ALWAYS_ON)


def always_off(arg: str | None = None) -> Sampler:
    """``OTEL_TRACES_SAMPLER=vwo_always_off``: no app spans, VWO events still recorded."""
    return VWOSampler(ALWAYS_OFF)


def traceidratio(arg: str | None = None) -> Sampler:
    """``OTEL_TRACES_SAMPLER=vwo_traceidratio`` with the rate in ``OTEL_TRACES_SAMPLER_ARG``."""
    return VWOSampler(TraceIdRatioBased(_rate(arg)))


def parentbased_always_on(arg: str | None = None) -> Sampler:
    """``OTEL_TRACES_SAMPLER=vwo`` or ``vwo_parentbased_always_on`` (the SDK's default, wrapped)."""
    return VWOSampler(ParentBased(ALWAYS_ON))


def parentbased_always_off(arg: str | None = None) -> Sampler:
    """``OTEL_TRACES_SAMPLER=vwo_parentbased_always_off``."""
    return VWOSampler(ParentBased(ALWAYS_OFF))


def parentbased_traceidratio(arg: str | None = None) -> Sampler:
    """``OTEL_TRACES_SAMPLER=vwo_parentbased_traceidratio`` with the rate in ``OTEL_TRACES_SAMPLER_ARG``."""
    return VWOSampler(ParentBased(TraceIdRatioBased(_rate(arg))))
