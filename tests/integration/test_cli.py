"""The ``vwo-otel`` command: ``demo``, ``receive`` (live, --list, --export), ``check`` and the parser
(the gateway command's run is tested in test_gateway.py), over loopback."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from helpers import free_port
from opentelemetry.sdk.trace import TracerProvider

from vwo_otel import VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
from vwo_otel.__main__ import main
from vwo_otel.cli import parser, until_interrupted
from vwo_otel.testing.receiver import Receiver


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("VWO_"):
            monkeypatch.delenv(name)




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
    listed = json.loads(capsys.readouterr().out)  # one JSON document, nothing else
    assert listed["summary"]["events"] == 25 and listed["summary"]["requests"] == 4
    assert [r["n_events"] for r in listed["requests"]].count(10) == 2 and len(listed["requests"]) == 4

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


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_receive_export_into_a_reader_that_stops_early(tmp_path, fmt):
    """`receive --export ... | head`: the pipe breaks; that is not a database error."""
    db = tmp_path / "rx.sqlite"
    with Receiver(account_id=ACCOUNT_ID, sdk_key=SDK_KEY, db_path=str(db)) as rx:
        event = {"u": "A" * 32, "sId": 1, "visitor_ua": "", "visitor_ip": "", "eT": 1, "e": 1, "c": 1}
        body = json.dumps({"ev": [event] * 3000}).encode()  # exported, far more than a pipe buffer
        req = urllib.request.Request(f"{rx.url}/server-side/batch-events?a={ACCOUNT_ID}&env={SDK_KEY}&sdk=t&sdk-v=1",
                                     data=body, headers={"Authorization": SDK_KEY, "Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=10).status == 200
    piped = subprocess.run(f"'{sys.executable}' -m vwo_otel receive --db '{db}' --export {fmt} | head -c 10",
                           shell=True, capture_output=True, text=True, timeout=30)
    assert piped.stderr == "", piped.stderr


def test_receive_stored_needs_a_db_file(tmp_path, capsys):
    assert main(["receive", "--list"]) == 2
    assert "give --db FILE" in capsys.readouterr().err
    assert main(["receive", "--db", str(tmp_path / "nope.sqlite"), "--export", "json"]) == 2
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite").exists()


def test_receive_refuses_a_non_loopback_host(capsys):
    assert main(["receive", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--account-id", "1" * 300], "--account-id must be a positive int"),
    (["--account-id", "0"], "--account-id must be a positive int"),
    (["--sdk-key", " padded "], "--sdk-key must be"),
    (["--port", "70000"], "--port must be an int from 0 to 65535"),
    (["--max-body-bytes", "0"], "--body-limit must be an int >= 1"),  # --body-limit's other name
])
def test_receive_refuses_bad_options_in_one_line(capsys, argv, words):
    assert main(["receive", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vwo-otel receive: error: {words}") and err.count("\n") == 1, err


def test_receive_json_summary_at_exit(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "vwo_otel", "receive", "--port", "0", "--db",
                             str(tmp_path / "rx.sqlite"), "--quiet", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split(" on ", 1)[1].split()[0]
        _send(url, 2)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["events"] == 2


def test_receive_sigterm_prints_summary(tmp_path):
    port = free_port()
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
    assert "FAILED: the endpoint refused the credentials (HTTP 401): check the account id and the sdk key " \
           "(VWO_ACCOUNT_ID and VWO_SDK_KEY" in out
    assert "wrong-key-0123456789" not in out


def test_check_reports_connection_refused(capsys):
    code, out = _check(capsys, "--account-id", "1", "--sdk-key", SDK_KEY,
                       "--endpoint", f"http://127.0.0.1:{free_port()}")
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
    assert code == 1 and "(HTTP 404): check the endpoint (VWO_ENDPOINT" in out
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


def test_check_names_the_bad_option(capsys):
    code, out = _check(capsys, "--account-id", "9" * 300, "--sdk-key", SDK_KEY)
    assert code == 2 and "config error: --account-id must be a positive int" in out


# -- demo ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--users", "0"], "--users must be an int from 1 to 1000000, got 0"),
    (["--events-per-request", "0"], "--events-per-request must be"),
    (["--events-per-request", "9000"], "--events-per-request must be"),
    (["--request-time-interval", "nan"], "--request-time-interval must be"),
    (["--account-id", "1" * 300], "--account-id must be a positive int"),
    (["--sdk-key", ""], "--sdk-key must be"),
    (["--endpoint", "localhost:80"], "--endpoint must be an http(s) URL"),
])
def test_demo_refuses_bad_options_in_one_line(capsys, argv, words):
    assert main(["demo", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"vwo-otel demo: error: {words}") and captured.err.count("\n") == 1, captured.err
    if "events-per-request" in words:
        assert "1 to 5000" in captured.err


def test_demo_runs_against_the_embedded_receiver(capsys):
    assert main(["demo", "--users", "20", "--events-per-request", "10", "--request-time-interval", "1"]) == 0
    out = capsys.readouterr().out
    assert "embedded VWO-compatible receiver listening on http://127.0.0.1:" in out
    assert "delivered" in out and "failed 0" in out
    assert "us per event, counting each request's own span and a cold start" in out  # not a warm per-event cost


# -- the parser ------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["demo"], ["receive"], ["check"], ["gateway"]])
def test_help_is_plain_text(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and out.startswith(f"usage: vwo-otel {' '.join(command)}".rstrip())
    if not command:
        for name in ("demo", "receive", "check", "gateway"):
            assert name in out


def test_every_option_has_help():
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"vwo-otel {name} {'/'.join(action.option_strings)} has no help"


def test_gateway_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["gateway", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--config", "--account", "--default-account", "--endpoint", "--host", "--port",
                   "--events-per-request", "--request-time-interval", "--max-backlog", "--retry-after",
                   "--shutdown-timeout", "--spool", "--log-level"):
        assert option in out


def test_gateway_refuses_a_huge_account_id_cleanly(capsys):
    assert main(["gateway", "--account", "7" * 300 + "=secret-key-123"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vwo-otel gateway: error: --account must be a positive int") and "secret-key-123" not in err


def test_until_interrupted_ends_quietly_on_sigterm_and_restores_the_handler() -> None:
    def mine(signum: int, frame: Any) -> None:  # pragma: no cover - never called
        raise AssertionError("the previous handler ran")

    previous = signal.signal(signal.SIGTERM, mine)
    reached = []
    try:
        with until_interrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            reached.append("after the sleep")  # pragma: no cover
        with until_interrupted():
            raise KeyboardInterrupt  # Ctrl-C too
        assert signal.getsignal(signal.SIGTERM) is mine
        with pytest.raises(ValueError), until_interrupted():
            raise ValueError("other errors go through")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert reached == []


def test_check_in_development_mode_says_nothing_was_sent(receiver, capsys, monkeypatch):
    monkeypatch.setenv("VWO_DISABLED", "true")
    assert main(["check", "--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY, "--endpoint", receiver.url]) == 0
    out = capsys.readouterr().out
    assert "development mode" in out and "nothing was sent" in out and "ok:" not in out
    assert receiver.requests() == []


def test_check_and_export_speak_fme(receiver, capsys, tmp_path):
    """`check --format fme` sends one FME event (batch: batch-events-v2, real time: /events/t), and
    `receive --export` writes FME events (csv: one row each, the properties as JSON)."""
    common = ("--account-id", str(ACCOUNT_ID), "--sdk-key", SDK_KEY, "--endpoint", receiver.url, "--format", "fme")
    code, out = _check(capsys, *common, "--mode", "batch")
    assert code == 0 and "as POST /server-side/batch-events-v2" in out, out
    code, out = _check(capsys, *common, "--mode", "realtime")
    assert code == 0 and "as POST /events/t" in out, out
    assert [r["path"] for r in receiver.requests()] == ["/server-side/batch-events-v2", "/events/t"]

    db = tmp_path / "rx.sqlite"
    with Receiver(ACCOUNT_ID, SDK_KEY, db_path=str(db)) as rx:
        processor = VWOSpanProcessor(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=rx.url), None)
        provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
        provider.add_span_processor(processor)
        events = VWOEvents(tracer_provider=provider)
        events.track_event("purchase", "Varun", {"amount": 12.5, "note": f"debug env={SDK_KEY}"})
        events.activate(231, 2, "Varun")
        events.push("Varun", {"where": SDK_KEY})  # a legacy value holding the key: masked too
        assert processor.force_flush(5000)
        provider.shutdown()
    rx.close()
    target = tmp_path / "events.csv"
    assert main(["receive", "--db", str(db), "--export", "csv", "-o", str(target)]) == 0
    rows = sorted(csv.DictReader(io.StringIO(target.read_text())), key=lambda r: r["format"])
    assert [r["format"] for r in rows] == ["fme", "legacy", "legacy"]
    assert rows[0]["name"] == "purchase" and json.loads(rows[0]["props"])["amount"] == 12.5
    assert json.loads(rows[0]["props"])["note"] == "debug env=***"  # no --sdk-key: read off the events
    assert sorted((r["eT"], r["e"]) for r in rows[1:]) == [("1", "231"), ("3", "")]
    # the sdk key VWO's FME format carries is *** in every export (users share these files)
    assert SDK_KEY not in target.read_text() and json.loads(rows[0]["props"])["vwo_envKey"] == "***"
    assert json.loads(rows[0]["visitor_props"])["vwo_fs_environment"] == "***"
    for fmt in ("json", "jsonl"):
        assert main(["receive", "--db", str(db), "--export", fmt]) == 0
        out = capsys.readouterr().out
        assert SDK_KEY not in out and '"vwo_envKey": "***"' in out.replace('":"', '": "'), out


def test_check_refuses_a_misspelt_variable_whose_right_name_is_unset(receiver, capsys, monkeypatch):
    """A typo in a batching variable would make the app send one request per event: `check` says so
    and exits 2 (the app itself only warns); with the right name set too, it is only a note."""
    for name, value in (("VWO_ACCOUNT_ID", str(ACCOUNT_ID)), ("VWO_SDK_KEY", SDK_KEY),
                        ("VWO_ENDPOINT", receiver.url), ("VWO_EVENTS_PER_REQEUST", "100")):
        monkeypatch.setenv(name, value)
    code, out = _check(capsys)
    assert code == 2 and "VWO_EVENTS_PER_REQEUST looks like a misspelling of VWO_EVENTS_PER_REQUEST" in out, out
    assert receiver.requests() == []
    monkeypatch.setenv("VWO_EVENTS_PER_REQUEST", "100")
    code, out = _check(capsys)
    assert code == 0 and "did you mean VWO_EVENTS_PER_REQUEST" in out, out


def test_check_says_an_ignored_variable_once(receiver):
    """An app's own VWO_ variable is named once, in the check's list, not again as the library's warning."""
    env = {**os.environ, "VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY, "VWO_ENDPOINT": receiver.url,
           "VWO_APP_STAGE": "staging"}
    done = subprocess.run([sys.executable, "-m", "vwo_otel", "check"], env=env, capture_output=True, text=True,
                          timeout=60)
    said = done.stdout + done.stderr
    assert done.returncode == 0 and said.count("VWO_APP_STAGE") == 1, said
