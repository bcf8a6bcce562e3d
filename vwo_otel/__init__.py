"""vwo_otel: VWO A/B-testing events (impressions, conversions, custom dimensions) delivered
through OpenTelemetry, batched the way VWO's event batching promises.

Data path: ``VWOEvents`` (spans / log records) -> ``VWOSpanProcessor`` /
``VWOLogRecordProcessor`` (queue, timer) -> ``VWOExporter`` (wire format, HTTP)
-> ``flush_callback(err, events)``.
"""

from . import attributes
from ._version import __version__
from .config import BatchEvents
from .emit import VWOEvents, VWOSampler
from .env import ConfigError, exporter_from_env, log_processor_from_env, span_processor_from_env
from .events import VWOEvent
from .exporter import VWOExporter
from .processor import VWOLogRecordProcessor, VWOSpanProcessor
from .results import EventsDropped, HTTPStatusError, NetworkError, Outcome, PayloadTooLarge, VWODeliveryError
from .retry import RetryPolicy
from .spool import Spool
from .wire import visitor_uuid

__all__ = [
    "attributes", "BatchEvents", "ConfigError", "EventsDropped", "exporter_from_env", "HTTPStatusError",
    "log_processor_from_env", "NetworkError", "Outcome", "PayloadTooLarge", "RetryPolicy",
    "span_processor_from_env", "Spool", "visitor_uuid", "VWODeliveryError", "VWOEvent", "VWOEvents", "VWOExporter",
    "VWOLogRecordProcessor", "VWOSampler", "VWOSpanProcessor", "__version__",
]
