"""Instrumentors for VWO's SDKs, OpenTelemetry style: an app keeps its VWO SDK calls and its
events are delivered by vwo_otel's processors (``routing``: where an event cannot arrive, the
SDK sends it itself, never lost, never twice).

- ``VWOFMEInstrumentor``: VWO's current SDK, ``vwo-fme-python-sdk`` / ``wingify-fme-python-sdk``
  1.65.x (FME's events, its ``batch-events-v2`` format): ``fme``.
- ``VWOInstrumentor``: the deprecated ``vwo-python-sdk`` 1.68.x (the legacy format): ``legacy``.

Both need ``opentelemetry-instrumentation`` (the ``fme`` / ``vwo-sdk`` extras); ``opentelemetry-
instrument`` finds them through the ``vwo_fme`` and ``vwo`` entry points.
"""

from .fme import VWOFMEInstrumentor
from .legacy import VWOInstrumentor

__all__ = ["VWOFMEInstrumentor", "VWOInstrumentor"]
