"""The A/B's other side for ``benchmarks/run.py --only http``: the exporter's direct HTTP/1.1
client with h11 doing the framing (the request head, reading the answer) instead of
``vwo_otel/export/http1.py``'s own parser. Everything else is the library's: the kept-alive
connections, the deadline sockets, the body sent while watching for an early answer, the
bounds, and the same rules for a 101, an answer without a length, a 413 and a 2xx cut short.
(Issue #20 item 4: h11 in the client only if delivery stays within 5 %.)"""

from __future__ import annotations

from typing import Any

import h11

from vwo_otel.export import http1
from vwo_otel.export.http import MAX_ANSWER_BYTES, MAX_HEAD_BYTES, Reply, Transport
from vwo_otel.export.sockets import ConnectionError, InvalidHeader, TransportError, failure


class _Client(h11.Connection):
    """h11's client side, reading a ``101`` (no request of ours asks to upgrade) as an answer
    instead of refusing it, so the exporter reports it failed rather than retrying it."""

    def _server_switch_event(self, event: Any) -> Any:
        return None


def _answer(conn: _Client, sock: Any, method: str) -> http1.Answer:
    """Read one answer through h11 (``conn`` already holds what arrived while sending)."""
    response = None
    parts: list[bytes] = []
    size = 0
    complete = unframed = looked = False
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if unframed:  # no length: what has arrived is the body, the end is not waited for
                    arrived = b"" if looked else sock.arrived(MAX_ANSWER_BYTES)
                    if not arrived:
                        break
                    looked = True
                    conn.receive_data(arrived)
                    continue
                conn.receive_data(sock.recv(65536))
                continue
            kind = type(event)
            if kind is h11.InformationalResponse:
                if event.status_code != 101:
                    continue  # 100 Continue, 103 Early Hints: the real answer follows
                response = event
                break
            if kind is h11.Response:
                response = event
                names = {name for name, _ in event.headers}
                unframed = (b"content-length" not in names and b"transfer-encoding" not in names
                            and event.status_code not in (204, 304) and method != "HEAD")
            elif kind is h11.Data:
                parts.append(event.data)
                size += len(event.data)
                if size >= MAX_ANSWER_BYTES:
                    break
            elif kind is h11.EndOfMessage:
                complete = True
                break
            else:  # ConnectionClosed before an answer
                raise ConnectionError("RemoteDisconnected: Remote end closed connection without response")
    except (h11.RemoteProtocolError, TransportError, OSError) as exc:
        if response is None or not 200 <= response.status_code < 300:
            if isinstance(exc, h11.RemoteProtocolError):
                raise ConnectionError(f"RemoteProtocolError: {exc}") from None
            raise
        complete = False  # a 2xx arrived: VWO has the batch, whatever its body did after it
    assert response is not None
    headers = http1.AnswerHeaders()
    for name, value in response.headers:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    framed_twice = "content-length" in headers and "transfer-encoding" in headers
    reusable = (complete and not framed_twice and conn.our_state is h11.DONE and conn.their_state is h11.DONE)
    text = b"".join(parts)[:MAX_ANSWER_BYTES].decode("utf-8", "replace")
    return http1.Answer(Reply(response.status_code, text, headers), reusable)


def exchange(sock: Any, method: str, where: http1.Target, headers: dict[str, str], body: bytes | None) -> http1.Answer:
    """``http1.exchange`` with h11's framing."""
    conn = _Client(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    fields = [("Host", where.host_header)]
    if not any(k.lower() == "accept-encoding" for k in headers):
        fields.append(("Accept-Encoding", "identity"))
    try:
        fields += [(k, v.encode("latin-1")) for k, v in headers.items()]  # type: ignore[misc]
        if body is not None:
            fields.append(("Content-Length", str(len(body))))
        head = conn.send(h11.Request(method=method, target=where.target, headers=fields))
        if body:
            conn.send_with_data_passthrough(h11.Data(data=body))
        conn.send(h11.EndOfMessage())
    except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
        raise InvalidHeader(f"{type(exc).__name__}: {exc}") from None
    early = bytearray()
    try:
        try:
            if body is not None and len(body) > http1.WATCH_ABOVE:
                whole = http1.send_watching(sock, (head, body), early)
            else:
                sock.sendall(head + body if body else head)
                whole = True
        except OSError as exc:
            if exc.errno not in http1._SENT_BEFORE_ANSWER:
                raise
            try:
                return _answer(conn, sock, method)._replace(reusable=False)
            except Exception:
                raise exc from None
        if early:
            conn.receive_data(bytes(early))
        answer = _answer(conn, sock, method)
        if not whole or answer.reply.status_code == 413:
            return answer._replace(reusable=False)
        return answer
    except Exception as exc:
        raise failure(exc, connecting=False) from None


class H11Transport(Transport):
    """``Transport`` with h11's framing on its direct path."""

    def _direct(self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float,
                verify: bool | str | None) -> Reply:
        where = http1.target(url)
        key = (where.scheme, where.host, where.port, verify)
        link = self._take(key)
        if link is None:
            link = self._connect(where, timeout, verify)
        answer = None
        try:
            answer = exchange(link.sock, method, where, headers, body)
            return answer.reply
        finally:
            self._give_back(key, link, answer is not None and answer.reusable)
