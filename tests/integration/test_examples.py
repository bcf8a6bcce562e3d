"""The examples run as written (real subprocesses, real HTTP on loopback) and do what they say."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import ACCOUNT_ID, SDK_KEY
from helpers import free_port

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def _env(receiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VWO_"))}
    env.update({"VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY, "VWO_ENDPOINT": receiver.url,
                "PYTHONUNBUFFERED": "1", **extra})
    return env




def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited early: {proc.communicate()}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not come up")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_short_job_loses_nothing_at_exit(receiver):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "short_job.py"), "250"], env=_env(receiver),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "emitted 300 VWO events; exiting without a flush" in proc.stdout
    assert receiver.event_count() == 300  # delivered at exit, before the process ended
    assert [r["n_events"] for r in receiver.requests()] == [100, 100, 100]


def test_flask_app_keeps_its_traces_and_adds_vwo(receiver):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "flask_app.py")], env=_env(receiver, PORT=str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_up(base + "/health", proc)
        for user in ("alice", "bob", "carol"):
            assert requests.get(f"{base}/product/7", params={"user": user}, timeout=5).json()["product"] == 7
        assert requests.post(f"{base}/buy/7", params={"user": "alice"}, timeout=5).json() == {"bought": 7}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert receiver.event_count() == 5  # 3 impressions, 1 conversion, 1 custom dimension: sent at exit
    assert sorted(e["eT"] for e in receiver.events()) == [1, 1, 1, 2, 3]
    assert "VWO: 5 event(s) delivered" in err  # the flush_callback
    names = [span["name"] for span in _json_lines(out)]
    assert sorted(names) == ["GET /product/<id>"] * 3 + ["POST /buy/<id>"]  # no vwo.* span leaked
    assert all(s["resource"]["attributes"]["service.name"] == "flask-shop" for s in _json_lines(out))


def test_asyncio_app_emits_from_async_handlers(receiver):
    pytest.importorskip("uvicorn")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "asyncio_app.py")], env=_env(receiver, PORT=str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_up(base + "/", proc)
        for i in range(60):
            requests.get(base + "/", params={"user": f"u{i}"}, timeout=5)
        assert receiver.wait_for_events(50, timeout=10)  # a full batch of 50 went on its own
        requests.post(base + "/signup", params={"user": "u1"}, timeout=5)
        assert requests.post(base + "/flush", timeout=5).json() == {"flushing": True}
        assert receiver.wait_for_events(62, timeout=10)  # 1 from _wait_up + 60 + 1, sent by the flush
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "VWO flush at shutdown: all delivered" in err
    assert receiver.event_count() == 62
    names = {span["name"] for span in _json_lines(out)}
    assert names == {"GET /", "POST /signup"}


def test_asyncio_app_under_uvicorn_sigterm_delivers_every_event_exactly_once(receiver):
    """`uvicorn asyncio_app:app`, requests from several threads, then SIGTERM at once: the
    lifespan's awaited flush and shutdown deliver what was queued, each event once."""
    pytest.importorskip("uvicorn")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    receiver.stall(0.1)  # VWO 100 ms away: the flush at shutdown waits, the loop does not
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "asyncio_app:app", "--port", str(port),
                             "--log-level", "warning"], cwd=EXAMPLES, env=_env(receiver),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_up(base + "/", proc)  # user "anonymous": 1 event
        users = [f"user-{t}-{i}" for t in range(4) for i in range(40)]

        def visit(batch: list[str]) -> None:
            with requests.Session() as s:
                for user in batch:
                    assert s.get(base + "/", params={"user": user}, timeout=10).status_code == 200
                    assert s.post(base + "/signup", params={"user": user}, timeout=10).status_code == 200

        threads = [threading.Thread(target=visit, args=(users[t::4],)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn raises the signal again once it stopped
    assert "VWO flush at shutdown: all delivered" in err
    events = receiver.events()
    keys = [(e["eT"], e["u"]) for e in events]
    assert len(keys) == 1 + 2 * len(users) and len(set(keys)) == len(keys)  # all of them, each once
    assert sorted(e["eT"] for e in events).count(2) == len(users)


def test_sdk_app_runs_the_official_sdk_offline_through_vwo_otel(receiver):
    """The official SDK with the test settings file (no network), VWOInstrumentor(strict=True),
    under uvicorn: every activate / track reaches the receiver in vwo_otel's batches, once; the
    SDK sends nothing itself."""
    pytest.importorskip("vwo", reason="needs vwo-python-sdk 1.68.x (and setuptools<81)")
    from vwo_otel.export.wire import visitor_uuid

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "sdk_app.py")], env=_env(receiver, PORT=str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    users = [f"user-{i}" for i in range(10)]
    try:
        _wait_up(base + "/?user=warm-up", proc)
        for user in users:
            assert requests.get(base + "/", params={"user": user}, timeout=5).json()["variation"] in (
                "Control", "Variation-1")
            assert requests.post(base + "/buy", params={"user": user}, timeout=5).json()["tracked"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "VWO flush at shutdown: all delivered" in err, err
    assert {r["path"] for r in receiver.requests()} == {"/server-side/batch-events"}  # nothing from the SDK itself
    events = [(e["eT"], e["u"]) for e in receiver.events()]
    expected = [(1, visitor_uuid(ACCOUNT_ID, u)) for u in ["warm-up", *users]] + \
        [(2, visitor_uuid(ACCOUNT_ID, u)) for u in users]
    assert sorted(events) == sorted(expected)  # each once
