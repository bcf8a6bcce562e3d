"""VWOExporter: sends batches as VWO's batch request over HTTP, with retries and 413 splitting."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from opentelemetry import context as otel_context
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .. import checks
from .._version import SDK_NAME, __version__
from ..errors import HTTPStatusError, NetworkError, Outcome, PayloadTooLarge, VWODeliveryError
from ..event import MalformedEvent, VWOEvent, from_record
from .http import Reply, Transport, TransportError
from .retry import RetryPolicy
from .wire import Encoder, batch_body, cut_by_bytes

logger = logging.getLogger("vwo_otel")

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
#: How long a limit learned from a 413 is kept before the configured cap applies again.
LEARNED_LIMIT_TTL = 600.0
#: ``observer(method, events, nbytes, status, error, seconds)``: one HTTP request's size, answer
#: (status, or the ``TransportError``) and duration.
Observer = Callable[[str, int, int, int | None, BaseException | None, float], None]
_inherited: list[Transport] = []  # transports inherited across fork (see after_fork)
_SUPPRESS = [otel_context._SUPPRESS_INSTRUMENTATION_KEY, otel_context._SUPPRESS_HTTP_INSTRUMENTATION_KEY]


@dataclass
class _Learning:
    """What one ``send_batch`` call learns about the server's payload limit."""

    largest_accepted: int = 0  # bytes of the largest body accepted
    refused: bool = False  # whether a 413 was seen


def _quiet_context() -> otel_context.Context:
    ctx = otel_context.Context()
    for key in _SUPPRESS:
        ctx = otel_context.set_value(key, True, ctx)
    return ctx


class VWOExporter(SpanExporter, LogRecordExporter):
    """Sends VWO events to ``{endpoint}/server-side/batch-events`` (batches) or VWO's
    single-event GET endpoints (real time). Every request settles into an ``Outcome``;
    transient failures are retried within ``retry.budget`` seconds per batch."""

    def __init__(
        self,
        account_id: int | str,
        sdk_key: str,
        *,
        endpoint: str = checks.DEFAULT_ENDPOINT,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        account_id = checks.account_id(account_id)
        sdk_key = checks.sdk_key(sdk_key)
        endpoint = checks.endpoint(endpoint)
        timeout = checks.seconds("timeout", timeout, low_open=True)
        checks.number("max_payload_bytes", max_payload_bytes, low=1024, high=MAX_PAYLOAD_BYTES, integer=True)
        self.account_id = account_id
        self._sdk_key = sdk_key
        self.endpoint = endpoint
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_payload_bytes = max_payload_bytes
        self._encoder = Encoder(account_id)
        query = urlencode({"a": account_id, "env": sdk_key, "sdk": SDK_NAME, "sdk-v": __version__})
        self._batch_url = f"{self.endpoint}/server-side/batch-events?{query}"
        self._headers = {"Authorization": sdk_key, "User-Agent": SDK_NAME, "Content-Type": "application/json"}
        self._quiet = _quiet_context()
        self._learned: tuple[int, float] = (max_payload_bytes, 0.0)  # (limit, expires at)
        self._cutoff = math.inf  # no retry waits past this monotonic time (set by hurry/shutdown)
        self._wake = threading.Condition()
        self._closed = False
        self._transport = Transport()
        self._observers: tuple[Observer, ...] = ()

    def __repr__(self) -> str:
        return f"VWOExporter(account_id={self.account_id}, endpoint={self.endpoint!r})"

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(method, events, nbytes, status, error, seconds)`` on the delivery thread
        after each HTTP request (each retry too); it must not raise. Without observers this costs nothing."""
        self._observers += (observer,)

    # -- what the processors call -------------------------------------------------
    def encode(self, events: Sequence[VWOEvent]) -> list[dict[str, Any]]:
        """The wire dicts of ``events`` (what ``flush_callback`` receives); raises if an event
        cannot be encoded, as sending it would."""
        return self._encoder.encode(events)[0]

    def send_batch(self, events: Sequence[VWOEvent]) -> list[Outcome]:
        """Deliver ``events`` in as few batch requests as the payload cap allows; one
        ``Outcome`` per request (a 413 splits the request in halves, recursively)."""
        if not events:
            return []
        dicts, parts = self._encoder.encode(events)
        deadline = time.monotonic() + self.retry.budget
        outcomes: list[Outcome] = []
        learn = _Learning()
        for lo, hi in cut_by_bytes(parts, self.payload_limit()):
            self._send_run(dicts, parts, lo, hi, deadline, outcomes, learn)
        if learn.refused and learn.largest_accepted:
            # After a 413 the pieces that were accepted show a size the server takes: cut
            # later batches there (not just below the refused size), so they need no 413.
            limit = min(self.payload_limit(), learn.largest_accepted)
            self._learned = (limit, time.monotonic() + LEARNED_LIMIT_TTL)
            logger.info("VWO payload limit learned from 413: batches cut at %d bytes for %.0f s",
                        limit, LEARNED_LIMIT_TTL)
        return outcomes

    def send_event(self, event: VWOEvent) -> Outcome:
        """Deliver one event in real time with VWO's single-event GET."""
        path, query, headers = self._encoder.realtime(event, self._sdk_key)
        url = f"{self.endpoint}{path}?{urlencode(query)}"
        headers["User-Agent"] = SDK_NAME
        error = self._request("GET", url, None, headers, time.monotonic() + self.retry.budget)
        return Outcome(error, [self._encoder.event_dict(event)])

    def payload_limit(self) -> int:
        """Largest batch body to send now: the cap, or less while a 413-learned limit holds."""
        limit, expires = self._learned
        if limit < self.max_payload_bytes and time.monotonic() >= expires:
            self._learned = (self.max_payload_bytes, 0.0)
            logger.info("VWO payload limit learned from a 413 expired; back to %d bytes", self.max_payload_bytes)
            return self.max_payload_bytes
        return limit

    def hurry(self, deadline: float) -> None:
        """Let no retry wait run past ``deadline`` (monotonic); wakes a wait in progress."""
        with self._wake:
            self._cutoff = min(self._cutoff, deadline)
            self._wake.notify_all()

    def _sleep(self, until: float) -> bool:
        """Wait until ``until`` (monotonic); False at once if ``hurry`` moved the cutoff before it."""
        with self._wake:
            while self._cutoff >= until:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return True
                self._wake.wait(remaining)
            return False

    def after_fork(self) -> None:
        """In a forked child: use a fresh HTTP transport (never share the parent's sockets).
        The parent's one is kept referenced, never closed or garbage-collected here, so
        the child cannot disturb the connections the parent still uses."""
        _inherited.append(self._transport)
        self._transport = Transport()
        self._wake = threading.Condition()
        self._cutoff = math.inf

    # -- requests -------------------------------------------------------------------
    def _send_run(self, dicts: list[dict[str, Any]], parts: list[bytes], lo: int, hi: int, deadline: float,
                  outcomes: list[Outcome], learn: _Learning) -> None:
        body = batch_body(parts[lo:hi])
        if hi - lo == 1 and len(body) > self.max_payload_bytes:
            outcomes.append(Outcome(PayloadTooLarge(
                f"event of {len(body)} bytes exceeds max_payload_bytes={self.max_payload_bytes}", status=None),
                dicts[lo:hi]))
            return
        error = self._request("POST", self._batch_url, body, self._headers, deadline, events=hi - lo)
        if not isinstance(error, PayloadTooLarge):  # from _request, always a 413
            if error is None:
                learn.largest_accepted = max(learn.largest_accepted, len(body))
            outcomes.append(Outcome(error, dicts[lo:hi]))
            return
        learn.refused = True
        if hi - lo == 1:
            outcomes.append(Outcome(PayloadTooLarge(
                f"VWO refused a single event of {len(body)} bytes with 413 (payload too large)", status=413),
                dicts[lo:hi]))
            return
        limit = min(self.payload_limit(), len(body) - 1)
        self._learned = (limit, time.monotonic() + LEARNED_LIMIT_TTL)
        logger.warning("VWO answered 413 to %d bytes (%d events): splitting; limit now %d bytes",
                       len(body), hi - lo, limit)
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            for x, y in cut_by_bytes(parts[a:b], limit):
                self._send_run(dicts, parts, a + x, a + y, deadline, outcomes, learn)

    def _request(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                 deadline: float, events: int = 1) -> VWODeliveryError | None:
        """One request with retries; None on 2xx, else the final error (``PayloadTooLarge`` with
        status 413 at once: the caller splits the batch)."""
        attempt = 0
        started = time.monotonic()
        while True:
            now = time.monotonic()
            limit = min(deadline, self._cutoff)
            timeout = min(self.timeout, max(limit - now, 0.1))
            error: VWODeliveryError
            retry_after: str | None = None
            token = otel_context.attach(self._quiet)
            try:
                response = self._attempt(method, url, body, headers, timeout, events)
            except TransportError as exc:
                error = NetworkError(f"{type(exc).__name__}: {checks.redact(str(exc), self._sdk_key)}")
                retryable = self.retry.is_retryable(error=exc)
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return None
                if status == 413:
                    what = "the event" if body is None else f"{len(body)} bytes"
                    return PayloadTooLarge(f"VWO refused {what} with 413 (payload too large)", status=413)
                text = checks.redact(response.text[:4096], self._sdk_key)[:200]  # a server may echo the URL
                error = HTTPStatusError(f"VWO answered HTTP {status}: {text!r}", status=status)
                retryable = self.retry.is_retryable(status)
                retry_after = response.headers.get("Retry-After")
            finally:
                otel_context.detach(token)
            if not retryable or self._closed:
                return error
            wait = self.retry.wait(attempt, retry_after)
            now = time.monotonic()
            if now + wait > min(deadline, self._cutoff):
                error.args = (f"{error.args[0]} (gave up after {attempt + 1} attempt(s) in {now - started:.1f} s)",)
                return error
            logger.debug("VWO request failed (%s); retry %d in %.2f s", error, attempt + 1, wait)
            if not self._sleep(now + wait):
                error.args = (f"{error.args[0]} (retry interrupted by shutdown after {attempt + 1} attempt(s))",)
                return error
            attempt += 1

    def _attempt(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                 timeout: float, events: int) -> Reply:
        """One HTTP request, reported to the observers (if any) with its size, answer and duration."""
        observers = self._observers
        send = self._transport.request
        if not observers:
            return send(method, url, body, headers, timeout)
        nbytes = len(body) if body is not None else len(urlsplit(url).query)
        started = time.perf_counter()
        try:
            response = send(method, url, body, headers, timeout)
        except TransportError as exc:
            seconds = time.perf_counter() - started
            for observer in observers:
                observer(method, events, nbytes, None, exc, seconds)
            raise
        seconds = time.perf_counter() - started
        for observer in observers:
            observer(method, events, nbytes, response.status_code, None, seconds)
        return response

    # -- OpenTelemetry exporter interface -----------------------------------------------
    def export(self, batch: Sequence[Any]) -> Any:  # type: ignore[override]
        """Export spans or log records that are VWO events (others are skipped) in one go."""
        is_logs = bool(batch) and hasattr(batch[0], "log_record")
        events = []
        bad: list[MalformedEvent] = []
        for record in batch:
            try:
                event = from_record(record)
            except MalformedEvent as exc:
                bad.append(exc)
                continue
            if event is not None:
                events.append(event)
        if bad:  # one line per export call, not one per record
            logger.warning("skipping %d malformed VWO event(s): %s", len(bad), bad[0])
        ok = all(o.ok for o in self.send_batch(events))
        if is_logs:
            return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        """Stop retrying at once and close the HTTP session; idempotent."""
        self._closed = True
        self.hurry(time.monotonic())
        self._transport.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered in the exporter itself."""
        return True

