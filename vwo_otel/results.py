"""Delivery results: the errors handed to ``flush_callback(err, events)`` and ``Outcome``."""

from __future__ import annotations

from typing import NamedTuple


class VWODeliveryError(Exception):
    """A batch (or single event) did not reach VWO; ``reason`` says why in one word."""

    reason = "delivery_failed"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HTTPStatusError(VWODeliveryError):
    """VWO answered with a non-2xx status (``status``)."""

    reason = "http_status"


class NetworkError(VWODeliveryError):
    """The request never got an answer: connection refused/reset, DNS, timeout."""

    reason = "network"


class PayloadTooLarge(VWODeliveryError):
    """One event alone is larger than the payload cap or the server's limit (413)."""

    reason = "payload_too_large"


class EventsDropped(VWODeliveryError):
    """Events were dropped before any request: ``reason`` is ``queue_full``,
    ``already_shutdown`` or ``shutdown_timeout``."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Outcome(NamedTuple):
    """How one request settled: ``error`` is None when VWO accepted ``events`` (wire dicts)."""

    error: VWODeliveryError | None
    events: list[dict]

    @property
    def ok(self) -> bool:
        return self.error is None
