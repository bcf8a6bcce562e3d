"""The HTTP server under the gateway and the receiver (``servers/httpd.py``) with bounded
resources: idle keep-alive connections hold no thread, a low file limit does not stop service,
whole deadlines cut idle connections, trickled heads and bodies and clients that never read,
pipelined requests are all answered, TLS still works. Real sockets, real deadlines."""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import requests
import test_gateway_auth
from conftest import ACCOUNT_ID, SDK_KEY
from test_gateway import ROOT, goal, traces_json

from vwo_otel.servers import httpd
from vwo_otel.servers.httpd import App, Request, Response, Server

tls_files = test_gateway_auth.tls_files  # the throwaway CA and 127.0.0.1 certificate (trustme)

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"


def _status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in KiB (Linux), else the peak from getrusage."""
    try:
        with open("/proc/self/status") as f:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
    except OSError:  # pragma: no cover - not Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"VmRSS": peak, "VmHWM": peak}


def _responses(sock: socket.socket, n: int, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    """Read ``n`` HTTP responses (status, body) off ``sock`` (Content-Length framed)."""
    deadline = time.monotonic() + timeout
    data, out = b"", []
    while len(out) < n:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode("latin-1").split("\r\n")
            length = next(int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:"))
            if len(data) >= end + 4 + length:
                out.append((int(head[0].split()[1]), data[end + 4:end + 4 + length]))
                data = data[end + 4 + length:]
                continue
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(out)} of {n} responses"
        data += chunk
    return out


def _until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Read until the server closes ``sock``: (what it sent, monotonic time of the close)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic()


def _trickle(sock: socket.socket, data: bytes, every: float, limit: float) -> tuple[float, int]:
    """Send ``data`` a byte every ``every`` seconds until the server answers or closes (or
    ``limit`` seconds pass); (monotonic time of the first byte, bytes sent)."""
    t0 = time.monotonic()
    for i, byte in enumerate(data):
        try:
            sock.send(bytes([byte]))
        except OSError:
            return t0, i
        if select.select([sock], [], [], every)[0] or time.monotonic() - t0 > limit:
            return t0, i + 1
    return t0, len(data)


def _httpd_threads(port: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"vwo_otel-httpd:{port}-")]


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_300_idle_keep_alive_connections_hold_no_thread_and_new_clients_are_served(make_gateway) -> None:
    gw = make_gateway()
    before_threads, before = threading.active_count(), _status()
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(300)]
    try:
        for s in socks:  # all at once: a thread per connection would be 300 threads
            s.sendall(HEALTHZ)
        for s in socks:
            assert _responses(s, 1) == [(200, b"ok\n")]
        idle_threads, after = threading.active_count(), _status()
        t0 = time.monotonic()
        assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200
        new_client = time.monotonic() - t0
        socks[0].sendall(HEALTHZ)  # the idle ones are still there, kept alive
        assert _responses(socks[0], 1) == [(200, b"ok\n")]
        print(f"\n300 idle keep-alive connections: threads {before_threads} -> {idle_threads} "
              f"(workers <= {httpd.DEFAULT_MAX_WORKERS}); a new client answered in {new_client * 1000:.1f} ms; "
              f"RSS {before['VmRSS'] / 1024:.1f} -> {after['VmRSS'] / 1024:.1f} MiB, "
              f"peak {after['VmHWM'] / 1024:.1f} MiB (the whole test process)")
        assert idle_threads - before_threads <= httpd.DEFAULT_MAX_WORKERS
        assert new_client < 1.0
        assert after["VmRSS"] - before["VmRSS"] < 64 * 1024  # KiB: 300 connections cost far less than 64 MiB
    finally:
        for s in socks:
            s.close()
    port = gw.port
    assert gw.stop(2)
    assert _wait(lambda: not _httpd_threads(port), 5), _httpd_threads(port)  # no worker left behind


_LOW_LIMIT_GATEWAY = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from vwo_otel.servers import httpd
from vwo_otel.servers.gateway import Account, Gateway, GatewayConfig
account = Account(int(sys.argv[2]), sys.argv[3])
gw = Gateway(GatewayConfig(accounts={account.account_id: account}, endpoint=sys.argv[1], port=0)).start()
print(gw.port, httpd.connection_limit(httpd.DEFAULT_MAX_CONNECTIONS), flush=True)
sys.stdin.read()
ok = gw.stop(2)
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")]
print(ok, hwm[0] if hwm else 0, flush=True)
"""


def test_more_idle_connections_than_the_file_limit_still_serve_new_clients(receiver) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _LOW_LIMIT_GATEWAY, receiver.url, str(ACCOUNT_ID), SDK_KEY],
                            cwd=ROOT, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port, limit = map(int, proc.stdout.readline().split())
        assert limit == 256 - 64  # a quarter of the limit kept for other files
        for _ in range(400):  # more connections than the process may open files
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(HEALTHZ)
            assert _responses(s, 1) == [(200, b"ok\n")]
            socks.append(s)
        t0 = time.monotonic()
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        new_client = time.monotonic() - t0
        socks[-1].sendall(HEALTHZ)  # the newest idle ones stay usable
        assert _responses(socks[-1], 1) == [(200, b"ok\n")]

        def closed(s: socket.socket) -> bool:
            s.setblocking(False)
            try:
                return s.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                return False
            except ConnectionResetError:
                return True

        evicted = sum(closed(s) for s in socks)
        assert evicted >= 400 - limit  # the longest-idle ones made room
        out, err = proc.communicate("", timeout=15)  # end of stdin: the gateway stops
        ok, hwm = out.split()
        print(f"\n400 idle connections, RLIMIT_NOFILE 256: max_connections {limit}, {evicted} longest-idle closed, "
              f"a new client answered in {new_client * 1000:.1f} ms; gateway peak RSS {int(hwm) / 1024:.1f} MiB")
        assert ok == "True" and proc.returncode == 0
        assert "Traceback" not in err, err
        assert int(hwm) < 256 * 1024
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(make_gateway) -> None:
    gw = make_gateway(idle_timeout=0.5)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(HEALTHZ)
        assert _responses(s, 1) == [(200, b"ok\n")]
        t0 = time.monotonic()
        data, at = _until_closed(s, 5)
    assert data == b"" and 0.45 <= at - t0 < 2.0, at - t0


def test_a_trickled_head_is_cut_at_header_timeout_with_408(make_gateway) -> None:
    gw = make_gateway(header_timeout=1.0)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as slow, \
            socket.create_connection(("127.0.0.1", gw.port), timeout=5) as stuck:
        stuck.sendall(b"GET /healthz HTTP/1.1\r\n")  # half a head, then nothing
        t_stuck = time.monotonic()
        t0, sent = _trickle(slow, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * 100, 0.2, 5)
        data, at = _until_closed(slow, 5)
        assert 0.9 <= at - t0 < 2.0 and sent <= 10, (at - t0, sent)
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data  # a byte racing the close may reset it
        data, at = _until_closed(stuck, 5)
        assert data.startswith(b"HTTP/1.1 408 ") and 0.9 <= at - t_stuck < 2.5, (data, at - t_stuck)
        assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200


def test_a_trickled_body_is_cut_at_body_timeout_with_408(make_gateway, receiver) -> None:
    gw = make_gateway(body_timeout=1.0)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n")
        t0, sent = _trickle(s, b"{" + b" " * 999, 0.3, 5)  # the byte at 0.9 s is read before the 1 s deadline
        data, at = _until_closed(s, 5)
    assert 0.9 <= at - t0 < 2.0 and sent <= 8, (at - t0, sent)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert receiver.event_count() == 0


class _Big(App):
    """``GET /big``: a 16 MiB answer; anything else: ``ok``."""

    def __call__(self, request: Request) -> Response:
        return Response(200, b"x" * (16 << 20) if request.path == "/big" else b"ok", "application/octet-stream")


def test_a_client_that_never_reads_its_answer_does_not_hold_the_worker() -> None:
    server = Server(("127.0.0.1", 0), _Big(), max_workers=1, body_timeout=0.5)
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    port = server.server_port
    hog = socket.socket()
    try:
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.connect(("127.0.0.1", port))
        hog.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        assert select.select([hog], [], [], 5)[0]  # the only worker is writing its answer
        t0 = time.monotonic()
        r = requests.get(f"http://127.0.0.1:{port}/small", timeout=5)
        waited = time.monotonic() - t0
        assert r.status_code == 200 and r.content == b"ok"
        assert 0.2 <= waited < 3.0, waited  # the one worker was free once the write's 0.5 s deadline passed
        data, _ = _until_closed(hog, 5)
        assert 0 < len(data) < (16 << 20)  # part of the answer, then closed
    finally:
        hog.close()
        server.shutdown()
        server.server_close()
        server.close_connections(2)
        loop.join(2)
    assert not loop.is_alive() and not _httpd_threads(port)


def test_pipelined_requests_on_one_connection_are_all_answered_in_order(make_gateway, receiver) -> None:
    gw = make_gateway()
    body = json.dumps(traces_json(({}, [goal("piped")]))).encode()
    post = (b"POST /v1/traces HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(HEALTHZ + post + b"GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n" + HEALTHZ * 3)
        answers = _responses(s, 6)
        assert [status for status, _ in answers] == [200, 200, 404, 200, 200, 200]
        s.sendall(HEALTHZ[:10])  # a head split across packets, after the pipeline
        time.sleep(0.05)
        s.sendall(HEALTHZ[10:])
        assert _responses(s, 1) == [(200, b"ok\n")]
    assert gw.flush(5) and receiver.event_count() == 1


def test_tls_keep_alive_pipelining_and_a_stalled_handshake(make_gateway, tls_files, monkeypatch) -> None:
    monkeypatch.setattr(httpd, "TLS_HANDSHAKE_TIMEOUT", 0.5)
    gw = make_gateway(tls_cert=tls_files["cert"], tls_key=tls_files["key"])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as stalled:
        stalled.sendall(b"\x16\x03")  # the start of a ClientHello, then nothing
        t0 = time.monotonic()
        with requests.Session() as session:  # meanwhile other TLS clients are served, on one connection
            for _ in range(3):
                assert session.get(gw.url + "/healthz", verify=tls_files["ca"], timeout=5).status_code == 200
        context = ssl.create_default_context(cafile=tls_files["ca"])
        with context.wrap_socket(socket.create_connection(("127.0.0.1", gw.port), timeout=5),
                                 server_hostname="127.0.0.1") as tls:
            tls.sendall(HEALTHZ * 3 + b"GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert [status for status, _ in _responses(tls, 4)] == [200, 200, 200, 404]
        data, at = _until_closed(stalled, 5)
        assert data == b"" and 0.3 <= at - t0 < 2.0, at - t0  # the handshake's deadline, not the idle timeout


def test_gateway_config_checks_the_server_limits() -> None:
    from vwo_otel.servers.gateway import Account, GatewayConfig, config_from_mapping

    acct = {ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY)}
    for name, bad in (("idle_timeout", 0), ("header_timeout", -1), ("body_timeout", 3601), ("max_connections", 0)):
        with pytest.raises(ValueError, match=name):
            GatewayConfig(accounts=acct, **{name: bad})
    with pytest.raises(TypeError, match="max_connections must be an int"):
        GatewayConfig(accounts=acct, max_connections=1.5)
    config = config_from_mapping({"accounts": {str(ACCOUNT_ID): SDK_KEY}, "idle_timeout": 5, "header_timeout": 2,
                                  "body_timeout": 7, "max_connections": 100})
    assert (config.idle_timeout, config.header_timeout, config.body_timeout, config.max_connections) == (5, 2, 7, 100)
    assert os.cpu_count() is None or httpd.DEFAULT_MAX_WORKERS <= 32


# -- slow senders hold connections, never workers -------------------------------------------------

TOKEN = test_gateway_auth.TOKEN


class _Tricklers:
    """``n`` connections that each send ``head`` (announcing a large body), then one body byte
    every ``every`` seconds until the server answers or closes (they are not opened again)."""

    def __init__(self, port: int, n: int, head: bytes, every: float = 0.05) -> None:
        self.socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(head)
            s.setblocking(False)
            self.socks.append(s)
        self.answers: dict[socket.socket, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            for s in self.socks:
                if s in self.answers:
                    continue
                try:
                    got = s.recv(65536)
                    self.answers[s] = got or b"closed"
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    self.answers[s] = b"reset"
                    continue
                try:
                    s.send(b" ")
                except OSError:
                    self.answers[s] = b"reset"

    def wait_answers(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` of them got an answer or were closed."""
        return _wait(lambda: len(self.answers) >= n, timeout)

    def close(self) -> dict[socket.socket, bytes]:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()
        return self.answers


def _legit_latencies(gw: Any, n: int = 5) -> list[float]:
    """``n`` one-event exports with the valid token, one after another: their latencies (each must be 200)."""
    body = json.dumps(traces_json(({}, [goal("legit")]))).encode()
    headers = {**test_gateway_auth.bearer(TOKEN)}
    took = []
    for _ in range(n):
        t0 = time.monotonic()
        r = requests.post(gw.url + "/v1/traces", data=body, headers=headers, timeout=15)
        took.append(time.monotonic() - t0)
        assert r.status_code == 200, r.text
    return took


@pytest.mark.parametrize("with_token", [False, True], ids=["anonymous", "with a token"])
def test_three_times_more_trickling_senders_than_workers_do_not_delay_a_sender_with_a_token(make_gateway,
                                                                                              with_token):
    gw = make_gateway(auth_tokens=[TOKEN])
    n = 3 * httpd.DEFAULT_MAX_WORKERS
    auth = b"Authorization: Bearer %s\r\n" % TOKEN.encode() if with_token else b""
    head = (b"POST /v1/traces HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" + auth
            + b"Content-Length: 1000000\r\n\r\n{")
    attack = _Tricklers(gw.port, n, head)
    try:
        took = _legit_latencies(gw)
        attack.wait_answers(0 if with_token else n, 5)
    finally:
        answers = attack.close()
    print(f"\n{n} trickling senders ({'with' if with_token else 'without'} a token), "
          f"{httpd.DEFAULT_MAX_WORKERS} workers: a sender with a token answered in "
          f"{', '.join(f'{t * 1000:.1f}' for t in took)} ms")
    assert max(took) < 1.0, took  # one worker per trickler would make it wait seconds
    if with_token:
        assert not answers  # their bodies are still being read, on the selector thread
    else:  # refused on their heads, without reading their bodies
        assert len(answers) == n and all(a.startswith(b"HTTP/1.1 401 ") for a in answers.values()), answers


def test_when_connections_run_out_the_oldest_request_in_progress_makes_room():
    """Twenty requests whose bodies trickle hold every connection; the 21st client gets in, the
    oldest of them is answered 503 (told to retry) and closed. The test waits until the server has
    read all twenty heads (the app's ``head`` hook saw them): before that a connection is still
    idle to the server, and the longest-idle one is what the rule closes (a flaky failure)."""
    app = _Recorder()
    server = Server(("127.0.0.1", 0), app, max_connections=20)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    attack = None
    try:
        attack = _Tricklers(server.server_port, 20, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
        with app.cond:
            assert app.cond.wait_for(lambda: len(app.heads) == 20, 5), app.heads
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Id: new\r\nContent-Length: 2\r\n\r\n{}")
            assert _responses(s, 1) == [(200, b"2")]
        took = time.monotonic() - t0
        assert attack.wait_answers(1, 5)
    finally:
        answers = attack.close() if attack is not None else {}
        server.shutdown()
        server.server_close()
        server.close_connections(2)
    assert took < 2.0, took
    assert list(answers.values()) == [b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                                      b"Connection: close\r\n\r\n"], answers  # just one, told to retry
    assert answers.keys() == {attack.socks[0]}  # the oldest


class _Recorder(App):
    """Records the heads it sees (``X-Id``) and answers every whole request 200."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.cond = threading.Condition()

    def head(self, request: Request) -> None:
        with self.cond:
            self.heads.append(request.headers.get("X-Id"))
            self.cond.notify_all()

    def __call__(self, request: Request) -> Response:
        return Response(200, b"%d" % len(request.body or b""))


def test_bodies_beyond_the_budget_wait_unread_then_503_while_the_oldest_goes_on(monkeypatch):
    monkeypatch.setattr(httpd, "BODY_WAIT", 0.5)
    app = _Recorder()
    server = Server(("127.0.0.1", 0), app, body_budget=1024 * 1024, max_body_bytes=1024 * 1024)
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    socks = []
    try:
        for i in range(4):  # 4 x 390,000 bytes of bodies: more than the 1 MiB budget
            s = socket.create_connection(("127.0.0.1", server.server_port), timeout=5)
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Id: %d\r\nContent-Length: 400000\r\n\r\n" % i
                      + b"x" * 390_000)
            socks.append(s)
            with app.cond:
                assert app.cond.wait_for(lambda i=i: len(app.heads) == i + 1, 5)  # in this order: 0 is the oldest
        answers: dict[int, bytes] = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not answers:  # a paused body's wait ends: 503
            for i, s in enumerate(socks[1:], 1):
                if select.select([s], [], [], 0.05)[0]:
                    answers[i] = s.recv(65536)
        assert answers and all(a.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in a
                               for a in answers.values()), answers
        socks[0].sendall(b"x" * 10_000)  # the oldest body ends: it was read whatever the budget
        assert _responses(socks[0], 1) == [(200, b"400000")]
    finally:
        for s in socks:
            s.close()
        server.shutdown()
        server.server_close()
        server.close_connections(2)


def test_a_server_on_an_address_in_use_raises_a_clean_oserror(make_gateway, receiver) -> None:
    from vwo_otel.servers.gateway import Account, Gateway, GatewayConfig
    from vwo_otel.testing import Receiver

    taken = make_gateway()
    second = Gateway(GatewayConfig(accounts={ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY)}, port=taken.port,
                                   endpoint=receiver.url))
    with pytest.raises(OSError, match=f"127.0.0.1:{taken.port}.*in use"):
        second.start()
    assert second.stop(2)  # nothing half-made is left running
    with pytest.raises(OSError, match=f"127.0.0.1:{receiver.port}.*in use"):
        Receiver(port=receiver.port).start()
    assert requests.get(taken.url + "/healthz", timeout=5).status_code == 200  # the first one still serves
