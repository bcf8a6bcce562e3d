"""``FMEStandIn``: VWO as the FME SDK (``vwo-fme-python-sdk`` / ``wingify-fme-python-sdk``) sees it,
on loopback, for tests and benchmarks.

The FME SDK fetches its settings file (``GET /server-side/v2-settings``) from the host it sends its
events to (``proxy_url=stand_in.url`` points both at this server). The stand-in serves the
settings it was given, records every event request raw (``POST /server-side/batch-events-v2``,
``POST /events/t``: path, query, headers, JSON body, the answer it gave) without judging it, and
answers as scripted: 200 ``{}`` unless told otherwise (``answer_next``), after ``delay`` seconds.
It is the capture harness of the FME tests: what the SDK alone sends, and what it still sends
itself when instrumented. (Validating events as VWO does is ``Receiver``'s job.)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ..servers.framing import Request, Response
from ..servers.httpd import App, Server

logger = logging.getLogger("vwo_otel")

SETTINGS_PATH = "/server-side/v2-settings"
BATCH_PATH = "/server-side/batch-events-v2"
EVENTS_PATH = "/events/t"
_JSON = "application/json"
_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """What the stand-in answers one event request: status, body, content type."""

    status: int = 200
    body: bytes = b"{}"
    content_type: str = _JSON


@dataclass
class Captured:
    """One request the stand-in received."""

    method: str
    path: str  #: the path, any ``collectionPrefix`` included
    query: dict[str, str]  #: raw values (the FME SDK does not URL-encode them); keys in order
    headers: dict[str, str]
    raw: bytes  #: the body as sent
    body: Any  #: the body parsed as JSON, None if it is not JSON
    status: int  #: what the stand-in answered
    at: float = field(default_factory=time.monotonic)

    @property
    def kind(self) -> str:
        """``batch`` (batch-events-v2), ``event`` (events/t), ``settings`` or ``other``."""
        if self.path.endswith(BATCH_PATH):
            return "batch"
        if self.path.endswith(EVENTS_PATH):
            return "event"
        return "settings" if self.path.endswith(SETTINGS_PATH) else "other"

    @property
    def events(self) -> list[dict[str, Any]]:
        """The ``d`` objects the request carried (``{"ev": [{"d": ...}]}`` or a bare ``{"d": ...}``)."""
        body = self.body
        if self.kind == "batch" and isinstance(body, dict) and isinstance(body.get("ev"), list):
            return [e["d"] for e in body["ev"] if isinstance(e, dict) and "d" in e]
        if self.kind == "event" and isinstance(body, dict) and "d" in body:
            return [body["d"]]
        return []


class _App(App):
    server_name = "vwo-otel-fme-stand-in"

    def __init__(self, stand_in: FMEStandIn) -> None:
        self.stand_in = stand_in

    def head(self, request: Request) -> int:
        return _MAX_BODY

    def __call__(self, request: Request) -> Response | None:
        return self.stand_in._serve(request)


class FMEStandIn:
    """A loopback VWO for the FME SDK: settings out, event requests recorded (see the module doc)."""

    def __init__(self, settings: Mapping[str, Any], *, host: str = "127.0.0.1", port: int = 0,
                 delay: float = 0.0) -> None:
        self.settings = dict(settings)
        self.delay = delay  #: seconds every event request waits before its answer
        self._address = (host, port)
        self._lock = threading.Condition()
        self._captured: list[Captured] = []
        self._script: deque[Answer] = deque()
        self._reject: Callable[[dict[str, Any]], bool] | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the SDK's ``proxy_url``, or vwo_otel's endpoint."""
        assert self._server is not None, "start the stand-in first"
        host, port = str(self._server.server_address[0]), self._server.server_port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> FMEStandIn:
        if self._server is None:
            self._server = Server(self._address, _App(self))
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="vwo-otel-fme-stand-in", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections(1.0)
        if self._thread is not None:
            self._thread.join(2.0)

    def __enter__(self) -> FMEStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- script ------------------------------------------------------------------------------------
    def answer_next(self, n: int, status: int = 200, body: bytes = b"{}", content_type: str = _JSON) -> None:
        """The next ``n`` event requests get this answer (then 200 ``{}`` again)."""
        with self._lock:
            self._script.extend([Answer(status, body, content_type)] * n)

    def reject(self, predicate: Callable[[dict[str, Any]], bool] | None) -> None:
        """Answer 400 to every event request holding an event ``d`` for which ``predicate`` holds
        (as VWO refuses a batch with a malformed event); None: stop."""
        with self._lock:
            self._reject = predicate

    # -- what arrived ------------------------------------------------------------------------------
    def requests(self, kind: str | None = None) -> list[Captured]:
        """Requests received, in arrival order; ``kind``: only ``batch``, ``event``, ``settings``."""
        with self._lock:
            return [c for c in self._captured if kind is None or c.kind == kind]

    def event_requests(self) -> list[Captured]:
        """The event requests (batch-events-v2 and events/t), in arrival order."""
        with self._lock:
            return [c for c in self._captured if c.kind in ("batch", "event")]

    def events(self, *, accepted: bool = True) -> list[dict[str, Any]]:
        """The ``d`` of every event received in a request answered 2xx (``accepted=False``: in any)."""
        return [d for c in self.event_requests() if not accepted or 200 <= c.status < 300 for d in c.events]

    def wait_for(self, predicate: Callable[[FMEStandIn], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (checked at each request); False after ``timeout``."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self), timeout)

    def wait_for_events(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` events arrived in accepted requests."""
        return self.wait_for(lambda s: len(s.events()) >= n, timeout)

    def reset(self) -> None:
        """Forget what arrived and the script."""
        with self._lock:
            self._captured.clear()
            self._script.clear()

    # -- serving -----------------------------------------------------------------------------------
    def _serve(self, h: Request) -> Response:
        path = h.path
        query = {}
        for pair in h.query.split("&") if h.query else ():
            key, _, value = pair.partition("=")
            query[unquote(key)] = unquote(value)
        raw = bytes(h.body or b"")
        headers = dict(h.headers.items())
        if path.endswith(SETTINGS_PATH) and h.method == "GET":
            self._record(Captured("GET", path, query, headers, raw, None, 200))
            return Response(200, json.dumps(self.settings).encode(), _JSON)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        captured = Captured(h.method, path, query, headers, raw, parsed, 200)
        with self._lock:
            reject = self._reject
            if reject is not None and any(reject(d) for d in captured.events):
                answer = Answer(400, b'{"message": "invalid event"}')
            else:
                answer = self._script.popleft() if self._script else Answer()
        captured.status = answer.status
        if self.delay > 0:
            time.sleep(self.delay)
        self._record(captured)
        return Response(answer.status, answer.body, answer.content_type)

    def _record(self, captured: Captured) -> None:
        with self._lock:
            self._captured.append(captured)
            self._lock.notify_all()
