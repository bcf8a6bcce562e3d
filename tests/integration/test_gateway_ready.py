"""Readiness and draining (issue #22 item 4): ``/readyz`` answers 503 while a backlog or the
spool's disk is full and while draining; a draining gateway keeps its listener open and answers
POSTs and ``/readyz`` 503 + ``Retry-After`` (not "connection refused") until its backlogs are
delivered; ``/healthz`` stays liveness (200 while the process serves)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from conftest import ACCOUNT_ID, SDK_KEY
from test_gateway import ROOT, _env, goal, post, traces_json


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def _ready(url: str) -> requests.Response:
    return requests.get(url + "/readyz", timeout=5)


def test_ready_until_a_backlog_is_full_then_ready_again(make_gateway, receiver):
    gw = make_gateway(events_per_request=10, max_backlog=10, retry_after=2)
    assert _ready(gw.url).status_code == 200 and _ready(gw.url).text == "ready\n"
    receiver.stall(30)  # VWO does not answer: the backlog stays full
    assert post(gw, "/v1/traces", traces_json(({}, [goal(f"f{i}") for i in range(10)]))).status_code == 200
    full = _ready(gw.url)
    assert full.status_code == 503 and full.headers["Retry-After"] == "2" and "backlog full" in full.text
    assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200  # alive, only not ready
    assert post(gw, "/v1/traces", traces_json(({}, [goal("more")]))).status_code == 429  # what readiness foretold
    receiver.clear_faults()
    _wait(lambda: _ready(gw.url).status_code == 200, 10, "ready once VWO answers")
    assert gw.flush(5)


def test_not_ready_while_the_spool_disk_is_full(make_gateway, receiver, make_tmpfs):
    disk = make_tmpfs(512)
    filler = disk / "filler"
    with open(filler, "wb") as f:  # the disk is full before the gateway starts
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    gw = make_gateway(spool=str(disk / "spool"))
    r = _ready(gw.url)
    assert r.status_code == 503 and "spool" in r.text
    filler.unlink()
    _wait(lambda: _ready(gw.url).status_code == 200, 15, "ready once the disk has room")


def test_draining_keeps_the_listener_open_and_answers_503(make_gateway, receiver):
    gw = make_gateway(events_per_request=5, retry_after=4, shutdown_timeout=20)
    receiver.stall(30)  # the drain waits for VWO
    assert post(gw, "/v1/traces", traces_json(({}, [goal(f"d{i}") for i in range(5)]))).status_code == 200
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(gw.stop()))
    stopper.start()
    _wait(lambda: gw.stats()["draining_workers"] == 1, 5, "the drain to begin")
    for _ in range(3):  # new connections are still accepted, and told to go elsewhere
        ready = _ready(gw.url)
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "4" and "draining" in ready.text
        late = post(gw, "/v1/traces", traces_json(({}, [goal("late")])))
        assert late.status_code == 503 and late.headers["Retry-After"] == "4"
        assert requests.get(gw.url + "/healthz", timeout=5).status_code == 200
    assert stopper.is_alive()  # still draining: the backlog waits for VWO
    receiver.clear_faults()
    stopper.join(25)
    assert stopped == [True] and receiver.event_count() == 5  # the backlog was delivered, "late" never kept
    with pytest.raises(requests.ConnectionError):  # drained: now the port closes
        _ready(gw.url)


def test_sigterm_drains_with_the_listener_open(tmp_path, receiver):
    """The command: SIGTERM while VWO stalls; probes during the drain get 503, not a refused connection."""
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"accounts": {str(ACCOUNT_ID): {"sdk_key_env": "TEST_GW_KEY"}},
                                  "default_account": ACCOUNT_ID, "endpoint": receiver.url, "port": 0,
                                  "events_per_request": 5, "shutdown_timeout": 20}))
    proc = subprocess.Popen([sys.executable, "-m", "vwo_otel", "gateway", "--config", str(config)], cwd=ROOT,
                            env={**_env(), "TEST_GW_KEY": SDK_KEY}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split("listening on ", 1)[1].split()[0]
        receiver.stall(30)
        doc = traces_json(({}, [goal(f"s{i}") for i in range(5)]))
        assert requests.post(url + "/v1/traces", json=doc, timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        _wait(lambda: _ready(url).status_code == 503, 5, "draining")
        assert "draining" in _ready(url).text and requests.get(url + "/healthz", timeout=5).status_code == 200
        assert requests.post(url + "/v1/traces", json=doc, timeout=5).status_code == 503
        assert proc.poll() is None
        receiver.clear_faults()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["accounts"][str(ACCOUNT_ID)]["delivered"] == 5 and stats["responses"]["503"] == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert os.path.exists(config)
