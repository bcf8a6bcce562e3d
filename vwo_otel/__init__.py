"""vwo_otel: VWO A/B-testing events (impressions, conversions, custom dimensions) delivered
through OpenTelemetry, batched the way VWO's event batching promises.

Data path: ``VWOEvents`` (spans / log records) -> ``VWOSpanProcessor`` /
``VWOLogRecordProcessor`` (queue, timer) -> ``VWOExporter`` (wire format, HTTP)
-> ``flush_callback(err, events)``.
"""

from . import _log, attributes
from ._engine.lifecycle import shutdown_all
from ._engine.spool import Spool
from ._version import __version__
from .api import VWOEvents, VWOSampler
from .config import BatchEvents
from .env import exporter_from_env, log_processor_from_env, span_processor_from_env
from .errors import (
    ConfigError,
    EventsDropped,
    HTTPStatusError,
    NetworkError,
    Outcome,
    PayloadTooLarge,
    VWODeliveryError,
)
from .event import VWOEvent
from .export.exporter import VWOExporter
from .export.retry import RetryPolicy
from .export.wire import visitor_uuid
from .processor import VWOLogRecordProcessor, VWOSpanProcessor

_log.install()  # one prefix on every log line: "vwo_otel: ..."

__all__ = [
    "attributes", "BatchEvents", "ConfigError", "EventsDropped", "exporter_from_env", "HTTPStatusError",
    "log_processor_from_env", "NetworkError", "Outcome", "PayloadTooLarge", "RetryPolicy",
    "shutdown_all", "span_processor_from_env", "Spool", "visitor_uuid", "VWODeliveryError", "VWOEvent", "VWOEvents",
    "VWOExporter", "VWOLogRecordProcessor", "VWOSampler", "VWOSpanProcessor", "__version__",
]
