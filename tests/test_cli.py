"""The ``vwo-otel`` command: ``receive`` (live, --list, --export) and ``check``, over loopback."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import VWOExporter, VWOSpanProcessor
from vwo_otel.__main__ import main
from vwo_otel.servers.receiver import Receiver


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("VWO_"):
            monkeypatch.delenv(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send(url: str, n: int, *, batch: int = 10, sdk_key: str = SDK_KEY) -> None:
    processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, sdk_key, endpoint=url),
                                 {"events_per_request": batch, "request_time_interval": 60})
    from opentelemetry.sdk.trace import TracerProvider

    from vwo_otel import VWOEvents, VWOSampler
    provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    events = VWOEvents(tracer_provider=provider)
    for i in range(n):
        events.activate(231, 1, f"user-{i}")
    processor.flush_events()
    provider.shutdown()


# -- receive ---------------------------------------------------------------------------

def test_receive_live_then_list_and_export(tmp_path, capsys):
    db = tmp_path / "rx.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vwo_otel", "receive", "--port", "0", "--db", str(db),
         "--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("VWO receiver listening on http://127.0.0.1:"), first + proc.stderr.read()
        url = first.split()[4].rstrip(",;")
        _send(url, 25)  # 10 + 10 + 5
        _send(url, 1, sdk_key="wrong-key-0123456789")  # refused: shown, not stored
        lines = [proc.stdout.readline() for _ in range(4)]  # live: a line per request as it arrives
        assert [ln.split()[1:3] for ln in lines] == [["POST", "/server-side/batch-events"]] * 4, lines
        assert sorted(int(ln.split()[4]) for ln in lines[:3]) == [5, 10, 10]  # concurrent: any order
        assert "200" in lines[0] and "stored" in lines[0]
        assert "401" in lines[3] and "not stored" in lines[3]
    finally:
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stopped: 4 request(s), 3 accepted, 25 event(s) stored" in rest

    assert main(["receive", "--db", str(db), "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[-1].startswith("4 request(s), 3 accepted, 25 event(s) stored")
    assert main(["receive", "--db", str(db), "--list", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and json.loads(out[-1])["events"] == 25 and json.loads(out[-1])["requests"] == 4

    assert main(["receive", "--db", str(db), "--export", "json"]) == 0
    captured = capsys.readouterr()
    events = json.loads(captured.out)
    assert len(events) == 25 and {e["eT"] for e in events} == {1} and "raw" not in events[0]
    assert "exported 25 event(s) as json" in captured.err

    target = tmp_path / "events.csv"
    assert main(["receive", "--db", str(db), "--export", "csv", "-o", str(target)]) == 0
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 25 and rows[0]["eT"] == "1" and rows[0]["e"] == "231"

    assert main(["receive", "--db", str(db), "--export", "jsonl"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 25


def test_receive_stored_needs_a_db_file(tmp_path, capsys):
    assert main(["receive", "--list"]) == 2
    assert "give --db FILE" in capsys.readouterr().err
    assert main(["receive", "--db", str(tmp_path / "nope.sqlite"), "--export", "json"]) == 2
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite").exists()


def test_receive_refuses_a_non_loopback_host(capsys):
    assert main(["receive", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def test_receive_sigterm_prints_summary(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vwo_otel", "receive", "--port", str(port), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith(f"VWO receiver listening on http://127.0.0.1:{port}")
        _send(f"http://127.0.0.1:{port}", 3)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.startswith("stopped: 1 request(s), 1 accepted, 3 event(s) stored, ")  # --quiet: no request lines
    assert len(out.splitlines()) == 1


# -- check -----------------------------------------------------------------------------

def _check(capsys, *argv: str) -> tuple[int, str]:
    code = main(["check", *argv])
    return code, capsys.readouterr().out


def test_check_ok_batch_and_realtime(receiver, capsys, monkeypatch):
    monkeypatch.setenv("VWO_ACCOUNT_ID", str(ACCOUNT_ID))
    monkeypatch.setenv("VWO_SDK_KEY", SDK_KEY)
    monkeypatch.setenv("VWO_ENDPOINT", receiver.url)
    code, out = _check(capsys)
    assert code == 0, out
    assert "real-time" in out and "GET /server-side/push" in out
    assert "ok: the endpoint accepted the event (HTTP 200 in" in out
    monkeypatch.setenv("VWO_EVENTS_PER_REQUEST", "50")
    code, out = _check(capsys)
    assert code == 0, out
    assert "50 events or 600 s per request" in out and "POST /server-side/batch-events" in out
    assert SDK_KEY not in out and f"***{SDK_KEY[-4:]}" in out
    assert [json.loads(e["t"]) for e in receiver.events()] == [{"u": {"vwo_otel_check": "ok"}}] * 2
    assert [r["method"] for r in receiver.requests()] == ["GET", "POST"]


def test_check_arguments_win_over_env(receiver, capsys, monkeypatch):
    monkeypatch.setenv("VWO_ACCOUNT_ID", "999")
    monkeypatch.setenv("VWO_SDK_KEY", "wrong-key-0123456789")
    monkeypatch.setenv("VWO_ENDPOINT", "http://127.0.0.1:1")
    code, out = _check(capsys, "--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY, "--endpoint", receiver.url,
                       "--mode", "batch")
    assert code == 0, out
    assert receiver.event_count() == 1


def test_check_reports_bad_credentials(receiver, capsys):
    code, out = _check(capsys, "--account-id", str(ACCOUNT_ID), "--sdk-key", "wrong-key-0123456789",
                       "--endpoint", receiver.url)
    assert code == 1
    assert "FAILED: the endpoint refused the credentials (HTTP 401): check VWO_ACCOUNT_ID and VWO_SDK_KEY" in out
    assert "wrong-key-0123456789" not in out


def test_check_reports_connection_refused(capsys):
    code, out = _check(capsys, "--account-id", "1", "--sdk-key", SDK_KEY,
                       "--endpoint", f"http://127.0.0.1:{_free_port()}")
    assert code == 1
    assert "FAILED: connection refused by http://127.0.0.1:" in out


def test_check_reports_payload_too_large(capsys):
    with Receiver(max_body_bytes=64) as rx:
        code, out = _check(capsys, "--account-id", "1", "--sdk-key", SDK_KEY, "--endpoint", rx.url,
                           "--mode", "batch")
    assert code == 1
    assert "FAILED: the endpoint refused one small event as too large (HTTP 413)" in out


def test_check_reports_wrong_path_and_server_errors(receiver, capsys):
    base = ["--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY, "--mode", "batch"]
    code, out = _check(capsys, *base, "--endpoint", receiver.url + "/a/b")
    assert code == 1 and "(HTTP 404): check VWO_ENDPOINT" in out
    receiver.fail_next(1, status=503)
    code, out = _check(capsys, *base, "--endpoint", receiver.url)
    assert code == 1 and "overloaded or failing (HTTP 503)" in out


@pytest.mark.parametrize("env, expected", [
    ({}, "config error: VWO_ACCOUNT_ID is not set: set it to your VWO account id, or pass --account-id"),
    ({"VWO_ACCOUNT_ID": "1"}, "config error: VWO_SDK_KEY is not set"),
    ({"VWO_ACCOUNT_ID": "abc", "VWO_SDK_KEY": "k"}, "config error: VWO_ACCOUNT_ID must be a positive int"),
    ({"VWO_ACCOUNT_ID": "1", "VWO_SDK_KEY": "k", "VWO_EVENTS_PER_REQUEST": "9000"},
     "config error: VWO_EVENTS_PER_REQUEST must be an int from 1 to 5000, got '9000'"),
    ({"VWO_ACCOUNT_ID": "1", "VWO_SDK_KEY": "k", "VWO_ENDPOINT": "localhost:80"},
     "config error: VWO_ENDPOINT must be an http(s) URL"),
])
def test_check_reports_bad_config(capsys, monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out = _check(capsys)
    assert code == 2
    assert expected in out


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "receive", "check"):
        assert command in out
