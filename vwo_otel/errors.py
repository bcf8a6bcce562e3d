"""The library's errors: a bad ``VWO_*`` variable (``ConfigError``), the delivery errors handed
to ``flush_callback(err, events)``, and ``Outcome``, how one request settled."""

from __future__ import annotations

from typing import Any, NamedTuple


class ConfigError(ValueError):
    """A ``VWO_*`` variable is missing, unknown or has a bad value; ``variable`` names it."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable


class VWODeliveryError(Exception):
    """A batch (or single event) did not reach VWO; ``reason`` says why in one word.
    ``retryable``: the retry policy would have sent it again (a lost answer, 429, 5xx...) had
    time allowed, so a later try may get through; False for failures no resend fixes.
    ``retry_after``: seconds the server asked senders to wait (a 429 or 503 with ``Retry-After``,
    capped at ``RetryPolicy.max_retry_after``) when that wait ended the retries; the engine then
    starts no request for that long and keeps the events for a later try. None otherwise."""

    reason = "delivery_failed"

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


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
    """Events were dropped before any request: ``reason`` is ``queue_full`` (backlog full;
    impressions and custom dimensions go before conversions), ``already_shutdown`` (emitted
    after shutdown), ``shutdown_timeout`` (still queued when ``shutdown_timeout`` ran out),
    ``shutdown_in_flight`` (a request still unanswered at that deadline: VWO may or may not
    have them), ``invocation_deadline`` (not delivered by the deadline of
    ``vwo_otel.serverless.deliver_before_return``) or ``malformed`` (a record claiming to be a
    VWO event that cannot be one; the callback gets its attributes). ``count`` is how many were
    dropped; the callback's events list at most max(``max_queue_size``, 10000) of them per report."""

    def __init__(self, message: str, *, reason: str, count: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.count = count


class Outcome(NamedTuple):
    """How one request settled: ``error`` is None when VWO accepted ``events`` (wire dicts)."""

    error: VWODeliveryError | None
    events: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.error is None
