"""``vwo-otel receive`` playing VWO's bad days (--delay, --fail-rate, --status, --body-limit) as a
real subprocess over real HTTP, and what a newcomer tripped on: a port in use, ``check``'s
words (batch mode, https to a plain-HTTP port), the one fix hint shared by ``check`` and the
app's log, one prefix on every log line."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from opentelemetry.sdk.trace import TracerProvider

from vwo_otel import RetryPolicy, VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
from vwo_otel import attributes as A
from vwo_otel.__main__ import main
from vwo_otel.event import from_attributes
from vwo_otel.hints import CREDENTIALS
from vwo_otel.testing.receiver import Receiver

CLI = [sys.executable, "-m", "vwo_otel"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("VWO_"):
            monkeypatch.delenv(name)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VWO_")}


@pytest.fixture
def receive() -> Iterator:
    """``receive(*options)`` -> the URL of a ``vwo-otel receive --port 0 ...`` subprocess (stopped after)."""
    procs: list[subprocess.Popen[str]] = []

    def start(*options: str) -> str:
        proc = subprocess.Popen([*CLI, "receive", "--port", "0", "--quiet", *options], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        first = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
        assert match, first + proc.stderr.read()
        return match.group(1)

    yield start
    for proc in procs:
        proc.terminate()
        proc.communicate(timeout=10)


@dataclasses.dataclass(frozen=True)
class NoRetry(RetryPolicy):
    """One attempt per request, with the whole timeout: to see each answer as the receiver gave it."""

    budget: float = 30.0

    def is_retryable(self, status=None, error=None) -> bool:
        return False


def _exporter(url: str, **kwargs) -> VWOExporter:
    kwargs.setdefault("retry", NoRetry())
    return VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=url, **kwargs)


def _event(user: str = "u", value: str = "ok"):
    return from_attributes({A.EVENT_TYPE: A.CUSTOM_DIMENSION, A.USER_ID: user, A.DIMENSION_KEY: "k",
                            A.DIMENSION_VALUE: value}, time.time_ns())


def _post(exporter: VWOExporter, n: int = 1, value: str = "ok") -> tuple[int | None, float]:
    """One batch request of ``n`` events: (HTTP status or None, seconds it took)."""
    started = time.monotonic()
    (outcome,) = exporter.send_batch([_event(f"u{i}", value) for i in range(n)])
    took = time.monotonic() - started
    return (200 if outcome.error is None else outcome.error.status), took


# -- receive: VWO's bad days from the command line ---------------------------------------------

def test_delay_answers_every_request_late(receive):
    url = receive("--delay", "300")
    exporter = _exporter(url)
    try:
        for _ in range(2):
            status, took = _post(exporter)
            assert status == 200 and took >= 0.3, (status, took)
    finally:
        exporter.shutdown()


def test_status_alone_fails_every_request_with_that_status(receive):
    url = receive("--status", "503")
    exporter = _exporter(url)
    try:
        assert [_post(exporter)[0] for _ in range(3)] == [503, 503, 503]
    finally:
        exporter.shutdown()


def test_fail_rate_fails_about_that_share(receive):
    url = receive("--fail-rate", "0.5", "--status", "500")
    exporter = _exporter(url)
    try:
        statuses = [_post(exporter)[0] for _ in range(40)]
    finally:
        exporter.shutdown()
    assert set(statuses) == {200, 500}, statuses  # both, with a 1 in 2**39 chance of a false failure
    assert 8 <= statuses.count(500) <= 32, statuses


def test_fail_rate_without_status_also_drops_connections(receive):
    url = receive("--fail-rate", "1")
    exporter = _exporter(url)
    try:
        statuses = [_post(exporter)[0] for _ in range(20)]
    finally:
        exporter.shutdown()
    assert 200 not in statuses and set(statuses) <= {None, 429, 500, 502, 503, 504}, statuses


def test_body_limit_answers_413_above_it(receive):
    url = receive("--body-limit", "2000")
    exporter = _exporter(url)
    try:
        assert _post(exporter, 1)[0] == 200
        assert _post(exporter, 1, value="x" * 3000)[0] == 413
    finally:
        exporter.shutdown()


def test_a_processor_rides_out_a_rehearsed_outage(receive):
    """The rehearsal README describes: answers 100 ms late, 30 % of requests failing; every
    event delivered once by the processor's retries."""
    url = receive("--delay", "100", "--fail-rate", "0.3", "--status", "503", "--db", ":memory:")
    processor = VWOSpanProcessor(_exporter(url, retry=RetryPolicy(budget=20, initial_backoff=0.01,
                                                                  max_backoff=0.05)),
                                 {"events_per_request": 10, "request_time_interval": 60})
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    events = VWOEvents(tracer_provider=provider)
    for i in range(50):
        events.activate(231, 1, f"user-{i}")
    assert processor.flush_events() is True
    assert processor.stats()["events"] == {"delivered": 50, "failed": 0}
    provider.shutdown()


def test_the_listening_line_says_what_is_rehearsed():
    proc = subprocess.Popen([*CLI, "receive", "--port", "0", "--delay", "250", "--fail-rate", "0.2", "--status",
                             "503", "--body-limit", "4096"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert "answers 250 ms late" in first, first
    assert "20% of requests answered 503" in first, first
    assert "bodies over 4096 bytes answered 413" in first, first


@pytest.mark.parametrize("argv, words", [
    (["--delay", "-1"], "--delay must be"),
    (["--fail-rate", "1.5"], "--fail-rate must be"),
    (["--status", "200"], "--status must be"),
    (["--status", "700"], "--status must be"),
    (["--body-limit", "0"], "--body-limit must be an int >= 1"),
])
def test_bad_fault_options_are_one_line(capsys, argv, words):
    assert main(["receive", "--port", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vwo-otel receive: error: {words}") and err.count("\n") == 1, err


# -- a port in use: one line, exit 2 -----------------------------------------------------------

def _servers_raise_a_clean_oserror() -> bool:
    """Whether a server constructor on a port in use raises OSError (the servers' part of this
    fix: until it is merged, the constructor fails with an AttributeError while cleaning up)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        try:
            Receiver(port=held.getsockname()[1]).start().close()
        except OSError:
            return True
        except Exception:
            return False
    return False


needs_clean_bind_error = pytest.mark.xfail(not _servers_raise_a_clean_oserror(), strict=True,
                                           reason="the server constructor does not raise a clean OSError yet "
                                                  "(servers/httpd.py, another branch)")


@needs_clean_bind_error
@pytest.mark.parametrize("command", ["receive", "gateway"])
def test_a_port_in_use_is_one_line_and_exit_2(command):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        extra = ["--account", f"{ACCOUNT_ID}={SDK_KEY}"] if command == "gateway" else []
        proc = subprocess.run([*CLI, command, "--port", str(port), *extra], env=_env(), capture_output=True,
                              text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"vwo-otel {command}: error: 127.0.0.1:{port} is already in use (another process "
                           f"listens there): stop it, or choose another --port (0: any free one)\n"), proc.stderr


# -- check: say the truth -----------------------------------------------------------------------

def _check(capsys, *argv: str) -> tuple[int, str]:
    code = main(["check", *argv])
    return code, capsys.readouterr().out


def test_check_mode_batch_says_it_sends_a_batch(receiver, capsys):
    code, out = _check(capsys, "--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY, "--endpoint", receiver.url,
                       "--mode", "batch")
    assert code == 0, out
    assert "one request per event" not in out, out  # no VWO_EVENTS_PER_REQUEST: configured real-time, but ...
    assert "batching    none configured (real-time); --mode batch: this check sends one batch POST" in out, out
    assert [r["method"] for r in receiver.requests()] == ["POST"]


def test_check_mode_realtime_with_batching_configured_says_so(receiver, capsys, monkeypatch):
    monkeypatch.setenv("VWO_EVENTS_PER_REQUEST", "50")
    code, out = _check(capsys, "--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY, "--endpoint", receiver.url,
                       "--mode", "realtime")
    assert code == 0, out
    assert "50 events or 600 s per request; --mode realtime: this check sends one real-time request" in out, out
    assert [r["method"] for r in receiver.requests()] == ["GET"]


@pytest.fixture
def plain_http_port() -> Iterator[int]:
    """A plain-HTTP server that answers anything (a TLS ClientHello too) with a 400 at once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_check_https_to_a_plain_http_port_says_what_happened(receiver, plain_http_port, capsys):
    for port in (receiver.port, plain_http_port):  # one that keeps silent, one that answers 400
        code, out = _check(capsys, "--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY, "--endpoint",
                           f"https://127.0.0.1:{port}", "--timeout", "3")
        assert code == 1, out
        failed = out.splitlines()[-1]
        assert failed.startswith(f"FAILED: the TLS handshake with https://127.0.0.1:{port} failed"), failed
        assert "is it a plain-HTTP port? Then use http://" in failed, failed
        assert "within 3 s" not in failed, failed


# -- one fix hint, one prefix ----------------------------------------------------------------------

def test_a_401_in_the_app_carries_the_hint_check_gives(receiver, capsys, caplog):
    code, out = _check(capsys, "--account-id", str(ACCOUNT_ID), "--sdk-key", "wrong-key-0123456789",
                       "--endpoint", receiver.url)
    assert code == 1 and CREDENTIALS in out, out
    processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, "wrong-key-0123456789", endpoint=receiver.url,
                                             retry=NoRetry()),
                                 {"events_per_request": 10, "request_time_interval": 60})
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        VWOEvents(tracer_provider=provider).activate(231, 1, "user-1")
        assert processor.flush_events() is False
    provider.shutdown()
    failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failed and CREDENTIALS in failed[0], caplog.text
    assert "wrong-key-0123456789" not in caplog.text


def test_every_log_line_has_the_one_prefix(receiver, caplog):
    """Lines from the engine, the exporter, the env reader and the instrumentation alike."""
    from vwo_otel.env import read_env

    with caplog.at_level(logging.DEBUG, logger="vwo_otel"):
        read_env({"VWO_PREFIX_CHECK_NAME": "1"})
        receiver.set_max_body(2000)
        receiver.fail_next(1, status=503)
        processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=receiver.url,
                                                 retry=RetryPolicy(budget=5, initial_backoff=0.01)),
                                     {"events_per_request": 30, "request_time_interval": 60})
        provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
        provider.add_span_processor(processor)
        events = VWOEvents(tracer_provider=provider)
        for i in range(30):
            events.push(f"user-{i}", {"k": "v" * 40})
        processor.flush_events()
        provider.shutdown()
    ours = [r.getMessage() for r in caplog.records if r.name == "vwo_otel"]
    assert len(ours) >= 5, ours  # the unknown name, request lines, the 503 retry, the 413 split
    assert [m for m in ours if not m.startswith("vwo_otel: ") or m.startswith("vwo_otel: vwo_otel")] == []


def test_check_waits_for_a_slow_answer_within_its_timeout(receive, capsys):
    """check sent with a retry budget of 0, which cut every request to 0.1 s: a VWO answering
    300 ms late failed as "no answer within 10 s"."""
    url = receive("--delay", "300", "--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY)
    code, out = _check(capsys, "--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY, "--endpoint", url)
    assert code == 0, out
    assert "ok: the endpoint accepted the event (HTTP 200 in" in out
