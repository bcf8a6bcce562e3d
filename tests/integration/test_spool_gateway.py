"""The gateway's spool on a disk that is full when it starts (issue #21 item 7): a gateway
killed with events on disk, the disk filled, a restart on the same ``--spool``. It must start,
deliver what is on disk as room allows and say so. Real gateway processes, kill -9, tmpfs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from conftest import ACCOUNT_ID, SDK_KEY
from helpers import fill
from test_gateway import traces_json, visit

from vwo_otel import visitor_uuid

ROOT = Path(__file__).resolve().parent.parent.parent


def _traces(users: list[str]) -> bytes:
    """One visit per user, timed now (a spool's max_age reports old events failed)."""
    return json.dumps(traces_json(({}, [visit(u) for u in users]), start_ns=time.time_ns())).encode()


def _gateway(tmp_path: Path, name: str, spool: Path, endpoint: str, interval: int) -> tuple[subprocess.Popen, str]:
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"accounts": {str(ACCOUNT_ID): {"sdk_key_env": "TEST_GW_KEY"}},
                                  "default_account": ACCOUNT_ID, "request_time_interval": interval,
                                  "events_per_request": 1000, "shutdown_timeout": 2, "spool": str(spool)}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(TEST_GW_KEY=SDK_KEY, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "vwo_otel", "gateway", "--config", str(config), "--port", "0",
                             "--endpoint", endpoint], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / f"{name}.err", "w"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, (tmp_path / f"{name}.err").read_text()[-3000:]
    return proc, line.split("listening on ", 1)[1].split()[0]


def _post(url: str, users: list[str]) -> int:
    return requests.post(url + "/v1/traces", data=_traces(users), headers={"Content-Type": "application/json"},
                         timeout=10).status_code




def test_a_gateway_restarted_on_a_full_spool_disk_starts_and_delivers_what_is_on_disk(receiver, make_tmpfs,
                                                                                        tmp_path):
    disk = make_tmpfs(512)
    first, url = _gateway(tmp_path, "first", disk, receiver.url, interval=600)  # nothing goes out before a kill
    try:
        users = [f"g-{i}" for i in range(150)]
        assert all(_post(url, users[i:i + 50]) == 200 for i in range(0, 150, 50))  # on disk before each 200
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert receiver.event_count() == 0
    fill(disk)

    second, url = _gateway(tmp_path, "second", disk, receiver.url, interval=1)  # crashed at start before
    try:
        assert receiver.wait_for_events(150, timeout=15), (tmp_path / "second.err").read_text()[-3000:]
        assert sorted(e["u"] for e in receiver.events()) == sorted(visitor_uuid(ACCOUNT_ID, u) for u in users)
        deadline = time.monotonic() + 10
        while list((disk / str(ACCOUNT_ID)).glob("spool-*.sqlite")) and time.monotonic() < deadline:
            time.sleep(0.05)  # the dead gateway's file goes once all its events are delivered
        status = _post(url, ["late-0"])
        assert status in (200, 429, 503)  # 429 / 503 while the disk has no room for this gateway's own file
    finally:
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=15)
    log = (tmp_path / "second.err").read_text()
    assert "no room" in log and "replaying up to 150 event(s)" in log  # it says so
    assert second.returncode in (0, 1), log[-3000:]
    assert receiver.event_count() == 150 + (status == 200)
    assert json.loads(out.strip().splitlines()[-1])["accounts"][str(ACCOUNT_ID)]["dropped"] == {}
