"""examples/wsgi_app.py under a real ``gunicorn -w 2`` (with and without ``--preload``):
every event emitted in every worker reaches the loopback receiver exactly once, including
what is still queued when the master gets SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from helpers import free_port

from vwo_otel import visitor_uuid

pytest.importorskip("gunicorn")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUESTS = 240




def get(url: str) -> dict:
    req = urllib.request.Request(url, headers={"Connection": "close", "User-Agent": "loadgen/1"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited early: {proc.communicate()[1]}")
        try:
            with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("gunicorn did not start listening")


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_deliver_every_event_exactly_once(receiver, preload):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, VWO_ENDPOINT=receiver.url, VWO_ACCOUNT_ID=str(ACCOUNT_ID), VWO_SDK_KEY=SDK_KEY,
               VWO_EXAMPLE_STARTUP="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
           "--pythonpath", os.path.join(REPO, "examples"), "--graceful-timeout", "20", "--log-level", "info"]
    if preload:
        cmd.append("--preload")
    proc = subprocess.Popen([*cmd, "wsgi_app:app"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_ready(base, proc)
        pids: Counter = Counter()
        expected: Counter = Counter()
        lock = threading.Lock()

        def client(k: int) -> None:
            for i in range(k, REQUESTS, 4):
                user = f"g-{i}"
                buy = i % 3 == 0
                answer = get(f"{base}/buy?user={user}&revenue={i}" if buy else f"{base}/?user={user}")
                with lock:
                    pids[answer["pid"]] += 1
                    expected[(visitor_uuid(ACCOUNT_ID, user), 1)] += 1
                    if buy:
                        expected[(visitor_uuid(ACCOUNT_ID, user), 2)] += 1

        clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        assert sum(pids.values()) == REQUESTS
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert "FAILED" not in stderr, stderr

    got = Counter((e["u"], e["eT"]) for e in receiver.events())
    app_events = Counter({k: n for k, n in got.items() if k[1] != 3})
    assert app_events == expected  # every worker's events, each exactly once
    assert max(got.values()) == 1

    # startup custom dimensions: emitted once per process that imported the app
    startup = sorted(n for (_, et), n in got.items() if et == 3)
    importers = 1 if preload else 2  # the master (preload) or each worker
    assert len(startup) == 2 * importers and set(startup) == {1}
    served = len(pids)
    print(f"\ngunicorn preload={preload}: {REQUESTS} requests served by {served} worker(s) {dict(pids)}; "
          f"{sum(got.values())} events delivered, {len(receiver.requests())} requests")
    # (which worker served how many requests is up to the kernel; the startup events above
    # already show both workers, or the master and both workers, delivered exactly once)
