"""The gateway itself: ``Gateway`` (one ``Batcher`` + ``VWOExporter`` per account, its HTTP
server, ``/stats`` and ``/metrics``, a draining stop, dead peers' spool files adopted while it
runs) and its HTTP app (the routes; bodies are decoded here, one at a time). See the package's
docstring for what senders get."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, cast

from ..._engine import lifecycle
from ..._engine.batcher import Batcher
from ..._engine.settle import LogLimiter
from ..._engine.spool import Spool
from ...config import BatchEvents
from ...errors import EventsDropped
from ...export.exporter import VWOExporter
from .. import httpd, otlp
from ..framing import Request, Response
from . import prometheus
from .admission import Admission, Counters, Refused, Tokens
from .config import Account, GatewayConfig
from .stats import PUBLISH_INTERVAL, Delivery, Peers

logger = logging.getLogger("vwo_otel")

#: Request bodies held at once (being received, waiting or decoded), in multiples of
#: ``max_body_bytes``: this times a small factor bounds the gateway's memory whatever senders do
#: (``httpd.Server``'s ``body_budget``: past it, bodies wait unread, then 503).
BODY_BUDGET_FACTOR = 4
#: Requests decoded at once (decoding is CPU-bound: more would only hold more memory).
DECODE_CONCURRENCY = 1
#: Seconds a whole request waits for its turn to be decoded before it is answered 503 +
#: Retry-After (well inside an OTLP exporter's 10 s timeout, so the sender hears the answer).
DECODE_WAIT = httpd.BODY_WAIT
#: Seconds between looks for dead processes' spool files in the spool directory (a peer that
#: died, e.g. a removed gateway sharing the directory): theirs are adopted and delivered.
ADOPT_INTERVAL = 5.0
#: Seconds a stop allows, after the backlogs' delivery (``shutdown_timeout``), for requests in
#: progress to finish and the listener and connections to close.
CLOSE_TIME = 2.0
_ROUTES = {"/v1/traces": otlp.TRACES, "/v1/logs": otlp.LOGS}
_TEXT = "text/plain; charset=utf-8"
_MAX_MESSAGE = 512
#: Why a body could not be used, as the sender is told (``Request.problem``; ``too-large``: 413).
_PROBLEMS = {"no-length": (411, "Content-Length required"), "bad-chunked": (400, "malformed chunked body"),
             "incomplete": (400, "body ended before its announced end")}


class Gateway:
    """OTLP/HTTP in, VWO batches out: one ``Batcher`` + ``VWOExporter`` per configured account.

    ``listener``: a socket already listening to serve instead of binding ``host``:``port`` (a
    worker process's share of the port, ``workers.py``); ``peers``: the directory where the
    workers of one port share their figures, so ``/stats`` and ``/metrics`` cover all of them."""

    def __init__(self, config: GatewayConfig, *, listener: socket.socket | None = None,
                 peers: str | None = None) -> None:
        if not isinstance(config, GatewayConfig):
            raise TypeError(f"config must be a GatewayConfig, got {type(config).__name__}")
        self.config = config
        self._listener = listener
        self._peers = None if peers is None else Peers(peers)
        self._ticking = threading.Event()  # set: the maintenance thread stops
        self._ticker: threading.Thread | None = None
        self._delivery = {a: Delivery() for a in config.accounts}
        self._counters = Counters(list(config.accounts))
        tokens = cast(Mapping[str, "frozenset[int] | None"], config.auth_tokens)  # normalised by GatewayConfig
        self._ssl = config.ssl_context()
        self._log = LogLimiter()
        self._stopped: bool | None = None
        self._server: httpd.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = config.port
        self._batchers: dict[int, Batcher] = {}
        try:
            for acct in config.accounts.values():
                self._batchers[acct.account_id] = self._make_batcher(acct)
        except BaseException:
            for batcher in self._batchers.values():
                batcher.shutdown(0)
            raise
        self._admission = Admission(config, self._batchers, self._counters, self._log)
        self._app = _App(config, Tokens(tokens), self._admission, self._counters, self._log, self.fleet_stats)

    def _make_batcher(self, acct: Account) -> Batcher:
        c = self.config
        exporter = VWOExporter(acct.account_id, acct.sdk_key, endpoint=acct.endpoint or c.endpoint,
                               timeout=c.timeout, retry=c.retry)
        counters = self._counters
        counts = counters.per_account[acct.account_id]
        delivery = self._delivery[acct.account_id]
        exporter.add_observer(delivery.observe)

        def settled(err: BaseException | None, events: list[Any]) -> None:
            if isinstance(err, EventsDropped):
                return  # drops: counted by the batcher itself
            delivery.settled(err, events)
            with counters.lock:
                counts["requests_ok" if err is None else "requests_failed"] += 1

        batch = BatchEvents(c.events_per_request, float(c.request_time_interval), settled)
        spool = None
        if c.spool is not None:
            spool = Spool(os.path.join(os.fspath(c.spool), str(acct.account_id)), max_bytes=c.spool_max_bytes,
                          max_age=c.spool_max_age)
        return Batcher(exporter, batch, max_queue_size=c.max_backlog, shutdown_timeout=c.shutdown_timeout, spool=spool,
                       count_bytes=True)

    def __repr__(self) -> str:
        return f"Gateway({self.url}, accounts={sorted(self._batchers)}, default={self.config.default_account})"

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (the configured one before start)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL for OTLP/HTTP senders, e.g. ``http://127.0.0.1:4318``."""
        host, scheme = self.config.host, self.config.scheme
        return f"{scheme}://[{host}]:{self._port}" if ":" in host else f"{scheme}://{host}:{self._port}"

    def start(self) -> Gateway:
        """Bind and serve in a daemon thread; raises ``OSError`` if the address is taken."""
        if self._admission.stopping:
            raise RuntimeError("a stopped gateway cannot be started again")
        if self._server is not None:
            return self
        c = self.config
        server = httpd.Server((c.host, c.port), self._app, self._ssl, max_workers=httpd.DEFAULT_MAX_WORKERS,
                              max_connections=c.max_connections, idle_timeout=c.idle_timeout,
                              header_timeout=c.header_timeout, body_timeout=c.body_timeout,
                              max_body_bytes=c.max_body_bytes, body_budget=BODY_BUDGET_FACTOR * c.max_body_bytes,
                              listener=self._listener)
        self._port = int(server.server_address[1])
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"vwo_otel-gateway:{self._port}", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        if self._peers is not None:
            self._peers.publish(self.stats())  # counted among the workers from the start
        if self._peers is not None or c.spool is not None:
            self._ticker = threading.Thread(target=self._tick, name=f"vwo_otel-gateway-tick:{self._port}", daemon=True)
            self._ticker.start()
        logger.info("vwo_otel gateway listening on %s for accounts %s (default %s)", self.url,
                    ", ".join(str(a) for a in sorted(self._batchers)), self.config.default_account)
        return self

    def _tick(self) -> None:
        """The maintenance thread: publish this worker's figures for its peers (every
        ``PUBLISH_INTERVAL``); with a spool, try a disk that refused writes again (a gateway not
        ready for it gets no requests whose commits would) and adopt dead processes' spool files
        (every ``ADOPT_INTERVAL``)."""
        next_adopt = time.monotonic() + ADOPT_INTERVAL  # the batchers adopted at their start
        while not self._ticking.wait(PUBLISH_INTERVAL):
            try:
                if self._peers is not None:
                    self._peers.publish(self.stats())
                if self.config.spool is None:
                    continue
                for batcher in self._batchers.values():
                    if batcher.backlog.refuse(0, 0) is not None:
                        batcher.backlog.commit()  # with nothing to write: a probe of the disk
                if time.monotonic() >= next_adopt:
                    next_adopt = time.monotonic() + ADOPT_INTERVAL
                    for batcher in self._batchers.values():
                        batcher.adopt()
            except Exception:  # the figures and the adoption must never stop the gateway
                self._log.warn("tick", 0, "vwo_otel gateway: maintenance failed; it goes on", exc_info=True)

    def stop_accepting(self) -> None:
        """From now on, export requests and ``/readyz`` are answered 503 + ``Retry-After``
        (nothing is kept); the listener stays open."""
        self._admission.stop()

    def stop(self, timeout: float | None = None) -> bool:
        """Drain: stop accepting (POSTs and ``/readyz`` answered 503 + ``Retry-After`` while the
        listener stays open, so probes and collectors hear it rather than "connection refused"),
        deliver every backlog in parallel within ``timeout`` (default ``shutdown_timeout``), then
        close the listener and connections (within ``CLOSE_TIME`` more). True if all was
        delivered. Idempotent."""
        if self._stopped is not None:
            return self._stopped
        budget = self.config.shutdown_timeout if timeout is None else max(0.0, float(timeout))
        deadline = time.monotonic() + budget
        self.stop_accepting()
        self._ticking.set()
        ok = lifecycle.shutdown_all(max(0.0, deadline - time.monotonic()), self._batchers.values())
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            # Requests still in progress can no longer queue anything (stop_accepting) and are
            # answered 503: give them a moment, then close what is left.
            close_by = time.monotonic() + CLOSE_TIME
            server.shutdown()
            server.server_close()
            self._app.wait_idle(max(0.0, close_by - time.monotonic() - 0.5))
            server.close_connections(max(0.0, min(close_by - time.monotonic(), 0.5)))
            thread.join(max(0.0, close_by - time.monotonic()))
        if self._ticker is not None:
            self._ticker.join(1.0)
        if self._peers is not None:
            self._peers.publish(self.stats())
        self._log.flush()
        stats = self.stats()
        logger.info("vwo_otel gateway stopped: %d event(s) accepted, delivered %d, failed %d, dropped %s",
                    stats["accepted"], sum(a["delivered"] for a in stats["accounts"].values()),
                    sum(a["failed"] for a in stats["accounts"].values()),
                    {k: v for a in stats["accounts"].values() for k, v in a["dropped"].items()} or 0)
        self._stopped = ok
        return ok

    def flush(self, timeout: float | None = None) -> bool:
        """Send every account's queued events now; True if all of it was delivered in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ok = True
        for batcher in self._batchers.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ok = batcher.flush(left) and ok
        return ok

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """This process's counters: requests by signal, responses by status, items seen, VWO
        events accepted / rejected by reason, and per account what was accepted, delivered,
        failed (by reason: ``failed_by``), dropped, queued (events and bytes; the oldest one's
        age), waiting on disk, and the requests to VWO (by outcome, and their durations)."""
        out = self._counters.snapshot()
        per = out.pop("per_account")
        accounts = {}
        now = time.time()
        for account_id, batcher in sorted(self._batchers.items()):
            oldest = batcher.oldest()
            accounts[str(account_id)] = {
                **per.get(account_id, {}), **batcher.counts, "dropped": dict(batcher.dropped),
                "backlog": batcher.queue_size(), "max_backlog": self.config.max_backlog,
                "backlog_bytes": batcher.queue_bytes(), "max_backlog_bytes": self.config.max_backlog_bytes,
                "oldest_age": 0.0 if oldest is None else round(max(0.0, now - oldest), 3),
                # waiting on disk (spool) for VWO to answer again; after stop, all left there for the next start
                "on_disk": batcher.backlog.on_disk(),
                **self._delivery[account_id].snapshot(),
            }
        out["accounts"] = accounts
        unready = self._admission.unready()
        out.update(workers=1, ready_workers=int(unready is None), draining_workers=int(self._admission.stopping))
        return out

    def fleet_stats(self) -> dict[str, Any]:
        """``stats()`` of every worker serving this port (``peers``), merged: what ``/stats``
        and ``/metrics`` show; a peer's figures are at most ``PUBLISH_INTERVAL`` s old."""
        own = self.stats()
        return own if self._peers is None else self._peers.gather(own)


class _App(httpd.App):
    """The gateway's HTTP routes. A POST's bearer token is checked on its head, before its body
    is read (401 at once, then the connection closes); bodies are decoded one at a time."""

    server_name = "vwo-otel-gateway"

    def __init__(self, config: GatewayConfig, tokens: Tokens, admission: Admission, counters: Counters,
                 log: LogLimiter, stats: Callable[[], dict[str, Any]]) -> None:
        self.config, self.tokens, self.admission, self.counters, self._log, self._stats = (
            config, tokens, admission, counters, log, stats)
        self._decoding = threading.BoundedSemaphore(DECODE_CONCURRENCY)
        self._busy = 0
        self._idle = threading.Condition()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no POST is being processed; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, max(0.0, timeout))

    def head(self, request: Request) -> Response | int | None:
        """A POST: its token (401 without a valid one) and, while stopping, 503, before its body.
        Other methods carry no body the gateway keeps (one sent is read and dropped: an anonymous
        GET cannot fill the body budget)."""
        if request.method != "POST":
            return 0
        try:
            request.context = self.tokens.check(request.headers.get("Authorization"))
            if self.admission.stopping:
                raise Refused(503, otlp.UNAVAILABLE, "gateway is shutting down; retry (elsewhere)",
                              (self.admission.retry_after(),))
        except Refused as refused:
            return self._refusal(request, refused)
        return self.config.max_body_bytes

    def overloaded(self, request: Request) -> Response:
        return self._refusal(request, Refused(503, otlp.UNAVAILABLE, "too many request bodies in progress; retry",
                                              (self.admission.retry_after(),)))

    def __call__(self, request: Request) -> Response:
        if request.method == "POST":
            with self._idle:
                self._busy += 1
            try:
                return self._post(request)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
        if request.method == "GET":
            return self._get(request)
        return Response(501, f"unsupported method {request.method}\n".encode(), _TEXT, close=True)

    def _refusal(self, request: Request, refused: Refused) -> Response:
        """``refused`` as an OTLP status in the request's encoding (JSON unless it sent protobuf)."""
        self.counters.response(refused.status)
        reply, reply_type = otlp.encode_status(_media(request), refused.code, refused.message)
        return Response(refused.status, reply, reply_type, refused.headers)

    def _get(self, request: Request) -> Response:
        path = request.path
        if path == "/stats" or path == "/metrics":
            try:
                if self.tokens.check(request.headers.get("Authorization")) is not None:
                    raise Refused(403, otlp.PERMISSION_DENIED, f"{path} needs a token for every account\n")
            except Refused as refused:
                self.counters.response(refused.status)
                return Response(refused.status, refused.message.encode(), _TEXT, refused.headers)
            if path == "/metrics":
                return Response(200, prometheus.render(self._stats()), prometheus.CONTENT_TYPE)
            return Response(200, json.dumps(self._stats(), separators=(",", ":")).encode(), otlp.JSON)
        if path == "/healthz":  # liveness: the process serves (draining too)
            return Response(200, b"ok\n", _TEXT)
        if path == "/readyz":
            unready = self.admission.unready()
            if unready is not None:
                return Response(503, f"not ready: {unready}\n".encode(), _TEXT, (self.admission.retry_after(),))
            return Response(200, b"ready\n", _TEXT)
        if path in _ROUTES:
            return Response(405, b"use POST\n", _TEXT, (("Allow", "POST"),))
        return Response(404, b"not found: POST /v1/traces or /v1/logs; GET /healthz, /readyz, /stats or /metrics\n",
                        _TEXT)

    def _post(self, request: Request) -> Response:
        signal_ = _ROUTES.get(request.path)
        ctype = request.headers.get("Content-Type") or ""
        media = _media(request)
        try:
            self._check_body(request)
            if signal_ is None:
                raise Refused(404, otlp.UNIMPLEMENTED, "unknown path: POST /v1/traces or /v1/logs")
            self.counters.request(signal_)
            if media is None:
                raise Refused(415, otlp.INVALID_ARGUMENT, f"unsupported Content-Type {ctype!r}: use "
                              f"{otlp.PROTOBUF} or {otlp.JSON}")
            if media == otlp.PROTOBUF and not otlp.protobuf_available():
                raise Refused(415, otlp.UNIMPLEMENTED, "this gateway cannot decode protobuf (install "
                              "'vwo-otel[gateway]' for opentelemetry-proto); send OTLP/JSON or install it")
            decoded = self._decode(signal_, media, request)
            rejected, message = self.admission.accept(signal_, decoded, request.context)
        except Refused as refused:
            return self._refusal(request, refused)
        except Exception:  # a bug must never take the gateway down: answer 500, keep serving
            self._log.warn("internal_error", 0, "vwo_otel gateway: unexpected error handling a request",
                           exc_info=True)
            failed = self._refusal(request, Refused(500, otlp.INTERNAL, "internal error"))
            return dataclasses.replace(failed, close=True)
        self.counters.response(200)
        return Response(200, otlp.encode_response(signal_, media, rejected, message), media)

    def _check_body(self, request: Request) -> None:
        """``Refused`` unless the request has a usable body (at most ``max_body_bytes``)."""
        if request.problem is None and request.body is not None:
            return
        if request.problem == "too-large":
            limit = self.config.max_body_bytes
            size = f" of {request.nbytes} bytes" if request.headers.get("Content-Length") else ""
            raise Refused(413, otlp.INVALID_ARGUMENT, f"body{size} is larger than {limit} bytes")
        status, message = _PROBLEMS.get(request.problem or "", (400, "unreadable body"))
        raise Refused(status, otlp.INVALID_ARGUMENT, message)

    def _decode(self, signal_: str, media: str, request: Request) -> otlp.Decoded:
        """Inflate and decode the request's body (one request at a time; the body is let go once
        inflated); ``Refused`` 503 / 413 / 415 / 400."""
        if not self._decoding.acquire(timeout=DECODE_WAIT):
            raise Refused(503, otlp.UNAVAILABLE, "too many requests being decoded; retry",
                          (self.admission.retry_after(),))
        try:
            body, request.body = request.body, None
            assert body is not None
            data = otlp.decompress(body, request.headers.get("Content-Encoding"), self.config.max_inflated_bytes)
            del body
            return otlp.decode(signal_, media, data, self.config.max_items)
        except otlp.UnsupportedEncoding as exc:
            raise Refused(415, otlp.INVALID_ARGUMENT, str(exc)) from None
        except otlp.TooLarge as exc:
            raise Refused(413, otlp.INVALID_ARGUMENT, str(exc)) from None
        except otlp.DecodeError as exc:
            raise Refused(400, otlp.INVALID_ARGUMENT, str(exc)[:_MAX_MESSAGE]) from None
        finally:
            self._decoding.release()


def _media(request: Request) -> str | None:
    """The OTLP encoding the request's Content-Type names (None: neither protobuf nor JSON)."""
    ctype = request.headers.get("Content-Type") or ""
    return otlp.MEDIA_TYPES.get(ctype.split(";", 1)[0].strip().lower())
