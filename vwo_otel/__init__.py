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
from .events import VWOEvent
from .exporter import VWOExporter
from .processor import VWOLogRecordProcessor, VWOSpanProcessor
from .results import EventsDropped, HTTPStatusError, NetworkError, Outcome, PayloadTooLarge, VWODeliveryError
from .retry import RetryPolicy
from .spool import Spool
from .wire import visitor_uuid

__all__ = [
    "BatchEvents", "EventsDropped", "HTTPStatusError", "NetworkError", "Outcome", "PayloadTooLarge",
    "RetryPolicy", "Spool", "VWODeliveryError", "VWOEvent", "VWOEvents", "VWOExporter", "VWOLogRecordProcessor",
    "VWOSampler", "VWOSpanProcessor", "__version__", "attributes", "visitor_uuid",
]
