"""VWOExporter: sends batches as VWO's batch request over HTTP, with retries and 413 splitting."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from opentelemetry import context as otel_context
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .. import checks
from ..errors import HTTPStatusError, NetworkError, Outcome, PayloadTooLarge, VWODeliveryError
from ..event import MalformedEvent, VWOEvent, from_record
from ..event_types import TYPES
from . import formats
from .http import Reply, Transport, TransportError
from .retry import RetryPolicy
from .wire import Format, batch_body, cut_by_bytes

logger = logging.getLogger("vwo_otel")

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
#: After a 413 the limit doubles back toward the cap after an accepted request, so transient
#: 413s cannot shrink later batches for long; each doubling a 413 refuses doubles the number
#: of accepted requests before the next one (up to this), so a real limit costs few 413s.
MAX_PROBE_AFTER = 1024
#: Extra requests one batch may spend isolating events a 400 refuses (two per halving: about
#: 2 * log2(batch size) per bad event), so a 400 fails only the bad events, at bounded cost.
MAX_ISOLATION_REQUESTS = 32
#: ``observer(method, events, nbytes, status, error, seconds)``: one HTTP request's size, answer
#: (status, or the ``TransportError``) and duration.
Observer = Callable[[str, int, int, int | None, BaseException | None, float], None]
_SUPPRESS = [otel_context._SUPPRESS_INSTRUMENTATION_KEY, otel_context._SUPPRESS_HTTP_INSTRUMENTATION_KEY]


@dataclass
class _Send:
    """The events of one wire format in a ``send_batch`` call: its one deadline (retries, 413
    splits and 400 isolation all share it; the budget from the call's start, or the caller's
    deadline if sooner), the caller's deadline (``hard``: no request of the call, a first
    attempt included, waits past it), its outcomes and what it learned about the server's limit."""

    fmt: Format
    url: str
    dicts: list[dict[str, Any]]
    parts: list[bytes]
    deadline: float
    hard: float
    outcomes: list[Outcome] = field(default_factory=list)
    largest_accepted: int = 0  # bytes of the largest body accepted
    refused: bool = False  # whether a 413 was seen
    limit: int = 0  # cut what is left of this batch below the smallest body refused with 413
    isolation_left: int = MAX_ISOLATION_REQUESTS
    held: list[VWODeliveryError] = field(default_factory=list)  # an answer that asked for a long wait


def _not_sent(why: str, held: list[VWODeliveryError]) -> VWODeliveryError:
    """The error of events a call did not send: a later try may get them through (and after
    the server's wait, if it asked for one)."""
    return VWODeliveryError(f"not sent: {why}", retryable=True, retry_after=held[0].retry_after if held else None)


#: A 413's split is a WARNING at most this often (seconds); the splits between are counted in it.
SPLIT_SAID_EVERY = 60.0


class _PayloadLimit:
    """The largest batch body to send: the cap, or what a 413 taught, doubling back toward the
    cap after ``probe_after`` accepted requests. Plain attribute updates: delivery threads
    racing here can only make one probe more or less."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.bytes = cap
        self.probe_after = 1
        self._floor = cap  # what the last 413 taught
        self._wins = 0
        self._said = -math.inf  # when a split was last logged as a WARNING
        self._unsaid = 0  # splits since then (logged at DEBUG)

    def split(self, nbytes: int, events: int) -> None:
        """A 413 splits a request of ``nbytes`` (``events`` events): a WARNING at most once per
        ``SPLIT_SAID_EVERY`` seconds, counting the splits since (a whole in-flight limit of
        batches can meet the 413 before the learned size applies: a line each flooded the log)."""
        now = time.monotonic()
        if now - self._said < SPLIT_SAID_EVERY:
            self._unsaid += 1
            logger.debug("VWO answered 413 to %d bytes (%d events): splitting", nbytes, events)
            return
        since = f" ({self._unsaid} more split since the last such line)" if self._unsaid else ""
        self._said, self._unsaid = now, 0
        logger.warning("VWO answered 413 to %d bytes (%d events): splitting%s", nbytes, events, since)

    def learned(self, accepted: int) -> None:
        """A batch met a 413 and ``accepted`` bytes went through: cut later batches there."""
        if self.bytes > self._floor:  # a probe above the last lesson was refused: probe less often
            self.probe_after = min(self.probe_after * 2, MAX_PROBE_AFTER)
        self.bytes = self._floor = min(self.cap, accepted)
        self._wins = 0
        logger.info("VWO payload limit learned from 413: batches cut at %d bytes", self.bytes)

    def accepted(self) -> None:
        """One request was accepted: probe upward once enough have been."""
        if self.bytes >= self.cap:
            return
        self._wins += 1
        if self._wins >= self.probe_after:
            self.bytes, self._wins = min(self.cap, self.bytes * 2), 0
            if self.bytes == self.cap:
                logger.info("VWO payload limit back to %d bytes", self.cap)


def _after_fork_in_child(exporter: weakref.ref[VWOExporter]) -> None:
    """Each exporter's own at-fork hook (it holds the exporter weakly)."""
    alive = exporter()
    if alive is not None:
        alive.after_fork()


def _quiet_context() -> otel_context.Context:
    ctx = otel_context.Context()
    for key in _SUPPRESS:
        ctx = otel_context.set_value(key, True, ctx)
    return ctx


def _log_request(method: str, url: str, answer: int | str, events: int, nbytes: int, seconds: float) -> None:
    """The DEBUG line of one settled HTTP request: the path only (the query holds the sdk key)."""
    logger.debug("VWO request %s %s -> %s (%d events, %d bytes, %.1f ms)",
                 method, urlsplit(url).path, answer, events, nbytes, seconds * 1000)


class VWOExporter(SpanExporter, LogRecordExporter):
    """Sends VWO events to ``endpoint`` as VWO's batch requests, or one real-time request per
    event, in each event's wire format (``export/formats.py``: legacy events to
    ``/server-side/batch-events``, FME events to ``/server-side/batch-events-v2``; one exporter
    carries both). Every request settles into an ``Outcome``; transient failures are retried
    within ``retry.budget`` seconds per batch.

    ``disabled=True`` is development mode (VWO SDKs' ``is_development_mode``, ``VWO_DISABLED``):
    events are still encoded and checked as for sending, cut into the requests they would go
    in, and settle as accepted ``Outcome``s, but no request is made. ``processor.stats()``
    counts them as ``not_sent``, never ``delivered``."""

    def __init__(
        self,
        account_id: int | str,
        sdk_key: str,
        *,
        endpoint: str = checks.DEFAULT_ENDPOINT,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        disabled: bool = False,
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
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a vwo_otel.RetryPolicy, got {type(retry).__name__} {retry!r}")
        self.retry = retry or RetryPolicy()
        self.max_payload_bytes = max_payload_bytes
        self._formats = formats.bind(account_id, sdk_key)
        self._format_of = {key: self._formats[row.format] for key, row in TYPES.items()}
        self._quiet = _quiet_context()
        self._limit = _PayloadLimit(max_payload_bytes)
        self._cutoff = math.inf  # no request or retry wait starts past this monotonic time (hurry/shutdown)
        self._hard_cutoff = math.inf  # no request waits for its answer past this one
        self._wake = threading.Condition()
        self._closed = False
        self._transport = Transport()
        self._pid = os.getpid()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=functools.partial(_after_fork_in_child, weakref.ref(self)))
        self._observers: tuple[Observer, ...] = ()
        self._disabled = checks.boolean("disabled", disabled)
        if disabled:
            logger.info("VWO exporter disabled (development mode): events are checked and counted, none is sent")

    def __repr__(self) -> str:
        extra = ", disabled=True" if self._disabled else ""
        return f"VWOExporter(account_id={self.account_id}, endpoint={self.endpoint!r}{extra})"

    @property
    def disabled(self) -> bool:
        """Development mode: no request is ever made (fixed at construction)."""
        return self._disabled

    @property
    def destination(self) -> dict[str, Any]:
        """Whom this exporter's events belong to, without the key: the account id, the endpoint,
        the sdk key's SHA-256 (hex, of a fixed prefix and the key) and ``disabled``. A spool file
        records it; only a process whose exporter has the same destination replays the file."""
        digest = hashlib.sha256(b"vwo_otel sdk key\0" + self._sdk_key.encode()).hexdigest()
        return {"account_id": self.account_id, "endpoint": self.endpoint, "sdk_key_sha256": digest,
                "disabled": self._disabled}

    def without_threads(self) -> None:
        """Start no thread of the exporter's own from now on (serverless: nothing may run after
        the handler returns): a kept-alive connection unused for ``IDLE_TIMEOUT`` is closed when
        next used instead of by a thread."""
        self._transport.reap = False

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(method, events, nbytes, status, error, seconds)`` on the delivery thread
        after each HTTP request (each retry too); it must not raise. Without observers this costs nothing."""
        self._observers += (observer,)

    # -- what the processors call -------------------------------------------------
    def encode(self, events: Sequence[VWOEvent]) -> list[dict[str, Any]]:
        """The wire dicts of ``events``, each in its format (what ``flush_callback`` receives);
        raises if an event cannot be encoded, as sending it would."""
        groups = self._by_format(events) if events else []
        if len(groups) == 1:
            return groups[0][0].encode(events)[0]
        format_of = self._format_of  # both formats: each event in its place
        return [format_of[ev.etype].encode([ev])[0][0] for ev in events]

    def send_batch(self, events: Sequence[VWOEvent], deadline: float | None = None) -> list[Outcome]:
        """Deliver ``events`` in as few batch requests as the payload cap allows, the events of
        each wire format in their own requests; one ``Outcome`` per request. A 413 splits the
        request in halves, a 400 too (to fail only the events it refuses); retries, splits and
        isolation within one ``retry.budget`` (or by ``deadline``, monotonic, if sooner), never
        past shutdown. Each request's first attempt gets the whole ``timeout`` (the budget bounds
        retrying), cut only by ``deadline`` or shutdown; the call's later requests (the other
        format's, the next cut by bytes) go as long as no request of it failed, else within the
        budget. Once the server asks for a wait longer than that, no further request of the call is sent."""
        if not events:
            return []
        hard = math.inf if deadline is None else deadline
        deadline = self._deadline(deadline)
        outcomes: list[Outcome] = []
        held: list[VWODeliveryError] = []  # the answer that asked for a wait, once one did
        for fmt, group in self._by_format(events):
            dicts, parts = fmt.encode(group)
            url = f"{self.endpoint}{fmt.batch.path}?{urlencode(fmt.batch.query)}"
            send = _Send(fmt, url, dicts, parts, deadline, hard, outcomes, limit=self.payload_limit(), held=held)
            for lo, hi in cut_by_bytes(parts, send.limit):
                # the first request of a call always goes; later ones not past shutdown, the
                # caller's deadline, a server's wait, or (once one failed) the budget
                why = self._stopped(send, first=True) if outcomes and not self._disabled else None
                if why:
                    outcomes.append(Outcome(_not_sent(why, held), dicts[lo:hi]))
                else:
                    self._send_run(send, lo, hi)
            if send.refused and send.largest_accepted:
                # The accepted pieces show a size the server takes: cut later batches there (and
                # probe upward from it), so they need no 413.
                self._limit.learned(send.largest_accepted)
        return outcomes

    def send_order(self, events: list[VWOEvent]) -> list[VWOEvent]:
        """``events`` in the order ``send_batch``'s outcomes list them: grouped by wire format
        (``events`` itself when they share one)."""
        groups = self._by_format(events)
        return events if len(groups) == 1 else [ev for _, group in groups for ev in group]

    def format_of(self, event: VWOEvent) -> Format:
        """The wire format ``event`` goes in (its row's)."""
        return self._format_of[event.etype]

    def _by_format(self, events: Sequence[VWOEvent]) -> list[tuple[Format, Sequence[VWOEvent]]]:
        """The events of each wire format, in order (one group in the usual case)."""
        format_of = self._format_of
        first = format_of[events[0].etype]
        if all(format_of[ev.etype] is first for ev in events):
            return [(first, events)]
        groups: dict[str, list[VWOEvent]] = {}
        for ev in events:
            groups.setdefault(format_of[ev.etype].name, []).append(ev)
        return [(self._formats[name], group) for name, group in groups.items()]

    def send_event(self, event: VWOEvent, deadline: float | None = None) -> Outcome:
        """Deliver one event in real time with its format's single-event request (within
        ``retry.budget``, or by ``deadline`` if sooner)."""
        fmt = self._format_of[event.etype]
        req = fmt.realtime(event)
        url = f"{self.endpoint}{req.path}?{urlencode(req.query)}"
        events = fmt.encode([event])[0]  # as reports show it (no sdk key); the request has its own body
        if self._disabled:
            logger.debug("VWO disabled: not sent %s %s (1 event)", req.method, req.path)
            return Outcome(None, events)
        error = self._request(req.method, url, req.body, req.headers, self._deadline(deadline),
                              math.inf if deadline is None else deadline)
        if error is None:
            fmt.accepted(events)
        return Outcome(error, events)

    def _deadline(self, deadline: float | None) -> float:
        """When a call's retries end: the budget from now, or ``deadline`` if sooner."""
        budget = time.monotonic() + self.retry.budget
        return budget if deadline is None else min(budget, deadline)

    def payload_limit(self) -> int:
        """Largest batch body to send now: the cap, or less after a 413 (growing back)."""
        return self._limit.bytes

    def hurry(self, deadline: float, requests_until: float | None = None) -> None:
        """Start no request or retry wait past ``deadline`` (monotonic; wakes a wait in progress);
        a request already started may wait for its answer until ``requests_until`` (default the same)."""
        with self._wake:
            self._cutoff = min(self._cutoff, deadline)
            self._hard_cutoff = min(self._hard_cutoff, deadline if requests_until is None else requests_until)
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
        """In a forked child: the transport starts afresh (never the parent's sockets), and so
        do the retry waits. Once per process: the engine's fork walk and this exporter's own
        at-fork hook (for an exporter used without a processor) both call it."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._transport.after_fork()
        self._wake = threading.Condition()
        self._cutoff = self._hard_cutoff = math.inf

    # -- requests -------------------------------------------------------------------
    def _send_run(self, send: _Send, lo: int, hi: int, retried: bool = False, resend: bool = False) -> None:
        """Send events ``[lo, hi)`` as one request; split it on a 413 or a 400. ``resend``: they
        were sent before (a split's half, a 413's second try): even its first attempt is a
        retry, within the budget."""
        events = send.dicts[lo:hi]
        body = batch_body(send.parts[lo:hi])
        if hi - lo == 1 and len(body) > self.max_payload_bytes:
            send.outcomes.append(Outcome(PayloadTooLarge(
                f"event of {len(body)} bytes exceeds max_payload_bytes={self.max_payload_bytes}", status=None), events))
            return
        if self._disabled:
            logger.debug("VWO disabled: not sent POST %s (%d events, %d bytes)", send.fmt.batch.path,
                         hi - lo, len(body))
            send.outcomes.append(Outcome(None, events))
            return
        first_until = send.deadline if resend or retried else send.hard
        error = self._request("POST", send.url, body, send.fmt.batch.headers, send.deadline, first_until,
                              events=hi - lo)
        if error is None:
            send.largest_accepted = max(send.largest_accepted, len(body))
            self._limit.accepted()
            send.fmt.accepted(events)
            send.outcomes.append(Outcome(None, events))
        elif error.status == 413 and hi - lo > 1:
            send.refused = True
            send.limit = min(send.limit, len(body) - 1)
            self._limit.split(len(body), hi - lo)
            self._split(send, lo, hi, error)
        elif error.status == 413:  # one event: a 413 may be transient, so it gets one more try
            send.refused = True
            if not retried and self._pause(0, send.deadline):
                self._send_run(send, lo, hi, retried=True)
                return
            send.outcomes.append(Outcome(PayloadTooLarge(
                f"VWO refused a single event of {len(body)} bytes with 413 (payload too large)", status=413), events))
        elif error.status == 400 and hi - lo > 1 and send.isolation_left >= 2:
            send.isolation_left -= 2
            self._split(send, lo, hi, error)
        else:
            if error.retry_after:
                send.held.append(error)
            send.outcomes.append(Outcome(error, events))

    def _split(self, send: _Send, lo: int, hi: int, error: VWODeliveryError) -> None:
        """Send the halves of ``[lo, hi)`` (refused with ``error``; each cut below the batch's
        smallest 413) while the deadline allows; pieces it does not allow report ``error``."""
        mid = (lo + hi) // 2
        pieces = [(a + x, a + y) for a, b in ((lo, mid), (mid, hi))
                  for x, y in cut_by_bytes(send.parts[a:b], send.limit)]
        for a, b in pieces:
            why = self._stopped(send)
            if why:
                send.outcomes.append(Outcome(VWODeliveryError(
                    f"{error.args[0]}; not split further: {why}", status=error.status, retryable=True,
                    retry_after=send.held[0].retry_after if send.held else None), send.dicts[a:b]))
            else:
                self._send_run(send, a, b, resend=True)

    def _stopped(self, send: _Send, first: bool = False) -> str | None:
        """Why no further request of ``send`` may start now (shutdown, the server asked for a
        wait, the caller's deadline or the budget passed), else None. A ``first`` send (events
        not sent before) is held back by the budget only once a request of the call failed:
        the budget bounds retrying, and a healthy call's requests are not retries."""
        now = time.monotonic()
        if self._closed or now >= self._cutoff:
            return "shutting down"
        if send.held:
            return f"the server asked to wait {send.held[0].retry_after:.0f} s"
        if now >= send.hard:
            return "its deadline passed"
        if now >= send.deadline and (not first or any(o.error is not None for o in send.outcomes)):
            return "the retry budget ran out"
        return None

    def _pause(self, attempt: int, deadline: float) -> bool:
        """Wait the backoff before retry ``attempt + 1``; False (at once) if the wait would end
        past ``deadline`` or shutdown cuts it short."""
        wait = self.retry.wait(attempt)
        now = time.monotonic()
        return now + wait <= min(deadline, self._cutoff) and self._sleep(now + wait)

    def _request(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                 deadline: float, first_until: float, events: int = 1) -> VWODeliveryError | None:
        """One request with retries; None on 2xx, else the final error (``PayloadTooLarge`` with
        status 413 at once: the caller splits the batch). The first attempt waits for its answer
        up to ``timeout``, or until ``first_until`` if sooner (a caller's deadline); each retry
        up to ``timeout`` or until ``deadline`` (the budget's end), if sooner; shutdown cuts both."""
        attempt = 0
        started = time.monotonic()
        while True:
            now = time.monotonic()
            limit = min(deadline if attempt else first_until, self._hard_cutoff)
            timeout = min(self.timeout, max(limit - now, 0.1))
            error: VWODeliveryError
            retry_after: str | None = None
            token = otel_context.attach(self._quiet)
            try:
                response = self._attempt(method, url, body, headers, timeout, events)
            except TransportError as exc:
                retryable = self.retry.is_retryable(error=exc)
                error = NetworkError(f"{type(exc).__name__}: {checks.redact(str(exc), self._sdk_key)}",
                                     retryable=retryable)
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return None
                if status == 413:
                    what = "the event" if body is None else f"{len(body)} bytes"
                    return PayloadTooLarge(f"VWO refused {what} with 413 (payload too large)", status=413)
                text = checks.excerpt(response.text, self._sdk_key)  # a server may echo the URL
                retryable = self.retry.is_retryable(status)
                error = HTTPStatusError(f"VWO answered HTTP {status}: {text!r}", status=status, retryable=retryable)
                retry_after = response.headers.get("Retry-After")
            finally:
                otel_context.detach(token)
            if not retryable or self._closed:
                return error
            # a server's wait (429/503 Retry-After) that ends the retries holds the engine that long
            asked = self.retry.server_wait(retry_after) if error.status in self.retry.pause_statuses else None
            if not self.retry.allows(attempt):
                error.args = (f"{error.args[0]} (gave up after {attempt + 1} attempt(s): max_retries)",)
                error.retry_after = asked or None
                return error
            wait = self.retry.wait(attempt, retry_after)
            now = time.monotonic()
            if now + wait > min(deadline, self._cutoff):
                error.args = (f"{error.args[0]} (gave up after {attempt + 1} attempt(s) in {now - started:.1f} s)",)
                if now + wait < self._cutoff:  # the budget ended it, not shutdown: the server's wait holds
                    error.retry_after = asked or None
                return error
            logger.debug("VWO request failed (%s); retry %d in %.2f s", error, attempt + 1, wait)
            if not self._sleep(now + wait):
                error.args = (f"{error.args[0]} (retry interrupted by shutdown after {attempt + 1} attempt(s))",)
                return error
            attempt += 1

    def _attempt(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                 timeout: float, events: int) -> Reply:
        """One HTTP request, reported to the observers (if any) with its size, answer and
        duration, and logged at DEBUG (one line per request: each retry too)."""
        observers = self._observers
        send = self._transport.request
        debug = logger.isEnabledFor(logging.DEBUG)
        if not observers and not debug:
            return send(method, url, body, headers, timeout)
        nbytes = len(body) if body is not None else len(urlsplit(url).query)
        started = time.perf_counter()
        try:
            response = send(method, url, body, headers, timeout)
        except TransportError as exc:
            seconds = time.perf_counter() - started
            for observer in observers:
                observer(method, events, nbytes, None, exc, seconds)
            if debug:
                _log_request(method, url, type(exc).__name__, events, nbytes, seconds)
            raise
        seconds = time.perf_counter() - started
        for observer in observers:
            observer(method, events, nbytes, response.status_code, None, seconds)
        if debug:
            _log_request(method, url, response.status_code, events, nbytes, seconds)
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

