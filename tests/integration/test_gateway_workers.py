"""More than one core, and gateways that come and go (issue #22 items 2, 5 and 7): ``--workers N``
processes on one port, each with its own spool file, all drained by one SIGTERM; a second gateway
never shares a port the first holds; a worker killed with ``kill -9`` is replaced; a live gateway
delivers what a dead peer left in their shared spool directory, without a restart. Real
processes, real signals, the loopback receiver."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ACCOUNT_ID, SDK_KEY
from test_gateway import traces_json, visit

from vwo_otel import visitor_uuid
from vwo_otel.servers import listeners
from vwo_otel.servers.gateway.app import ADOPT_INTERVAL
from vwo_otel.servers.gateway.stats import PUBLISH_INTERVAL

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="--workers forks (POSIX)")


def _traces(users: list[str]) -> bytes:
    """One visit per user, timed now (a spool's max_age reports old events failed)."""
    return json.dumps(traces_json(({}, [visit(u) for u in users]), start_ns=time.time_ns())).encode()


def _post(url: str, users: list[str]) -> int:
    """One request on a connection of its own (the kernel spreads new connections over the workers)."""
    headers = {"Content-Type": "application/json", "Connection": "close"}
    return requests.post(url + "/v1/traces", data=_traces(users), headers=headers, timeout=10).status_code


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


class Gateway:
    """A ``vwo-otel gateway`` process (``--workers`` and more as ``args``), its URL and logs."""

    def __init__(self, tmp: Path, name: str, endpoint: str, *args: str, spool: Path | None = None,
                 prelude: str = "", interval: float = 1, batch: int = 100) -> None:
        self.err_path = tmp / f"{name}.err"
        config = tmp / f"{name}.json"
        config.write_text(json.dumps({
            "accounts": {str(ACCOUNT_ID): {"sdk_key_env": "TEST_GW_KEY"}}, "default_account": ACCOUNT_ID,
            "endpoint": endpoint, "request_time_interval": interval, "events_per_request": batch,
            "shutdown_timeout": 5, **({"spool": str(spool)} if spool else {})}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(TEST_GW_KEY=SDK_KEY, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cli = ["gateway", "--config", str(config), *args]
        code = f"{prelude or 'pass'}; from vwo_otel.cli import main; raise SystemExit(main({cli!r}))"
        cmd = [sys.executable, "-c", code]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.err_path.open("w"),
                                     text=True)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline()
        self.url = self.line.split("listening on ", 1)[1].split()[0] if "listening on" in self.line else ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        return dict(requests.get(self.url + "/stats", timeout=5).json())

    def workers(self) -> list[int]:
        """The pids of its worker processes (the parent's children)."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]

    def stop(self) -> tuple[int, dict[str, Any]]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return self.proc.returncode, json.loads(out.strip().splitlines()[-1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _accepted_by_worker(err: str) -> dict[int, int]:
    """Each worker's accepted events, from its "gateway stopped" log line."""
    return {int(pid): int(n) for pid, n in re.findall(r"\[(\d+)\] vwo_otel: gateway stopped: (\d+) event", err)}


@pytest.mark.parametrize("reuse_port", [True, False], ids=["reuseport", "shared-listener"])
def test_workers_share_one_port_each_with_its_spool_and_one_sigterm_drains_all(tmp_path, receiver, reuse_port):
    if reuse_port and not listeners.REUSE_PORT:
        pytest.skip("SO_REUSEPORT with /proc/net/tcp is Linux's")
    spool = tmp_path / "spool"
    prelude = "" if reuse_port else "import vwo_otel.servers.listeners as L; L.REUSE_PORT = False"
    gw = Gateway(tmp_path, "gw", receiver.url, "--port", "0", "--workers", "2", spool=spool, prelude=prelude,
                 interval=30, batch=1000)
    try:
        assert "with 2 worker processes" in gw.line, gw.err()
        assert len(gw.workers()) == 2
        users = [f"w{i}" for i in range(600)]
        for i in range(0, len(users), 20):
            assert _post(gw.url, users[i:i + 20]) == 200
        # one /stats answers for both workers (a peer's figures are up to PUBLISH_INTERVAL old)
        _wait(lambda: gw.stats()["accepted"] == 600, PUBLISH_INTERVAL + 5, "/stats to count both workers' events")
        assert gw.stats()["workers"] == 2
        # each worker keeps its own spool file in the one directory
        assert len(glob.glob(str(spool / str(ACCOUNT_ID) / "spool-*.sqlite"))) == 2
        assert receiver.event_count() == 0  # 1,000 a batch, 30 s: held until the drain
        code, final = gw.stop()
        assert code == 0, gw.err()[-3000:]
        assert final["accepted"] == 600 and final["accounts"][str(ACCOUNT_ID)]["delivered"] == 600
        seen = Counter(ev["u"] for ev in receiver.events())
        assert set(seen) == {visitor_uuid(ACCOUNT_ID, u) for u in users} and max(seen.values()) == 1
        per_worker = _accepted_by_worker(gw.err())
        assert len(per_worker) == 2 and sum(per_worker.values()) == 600, per_worker  # both ran and drained
        # SO_REUSEPORT spreads connections by their address; a shared listener goes to whichever
        # worker accepts first, which on a loaded machine was one of them for all 30 (a full run)
        assert not reuse_port or all(n > 0 for n in per_worker.values()), per_worker  # both served
        assert not glob.glob(str(spool / str(ACCOUNT_ID) / "spool-*.sqlite"))  # all delivered: no file left
    finally:
        gw.close()


def test_a_second_gateway_never_shares_the_port_the_first_holds(tmp_path, receiver):
    first = Gateway(tmp_path, "first", receiver.url, "--port", "0", "--workers", "2")
    try:
        assert first.url, first.err()
        for name, workers in (("second", "2"), ("single", "1")):
            other = Gateway(tmp_path, name, receiver.url, "--port", str(first.port), "--workers", workers)
            assert other.proc.wait(30) == 2 and not other.url
            err = other.err().strip()
            assert len(err.splitlines()) == 1 and "already in use" in err and str(first.port) in err, err
        assert _post(first.url, ["still-mine"]) == 200
    finally:
        first.close()
    # and a port another program holds with SO_REUSEPORT (a gateway would silently share it)
    if listeners.REUSE_PORT:
        with socket.socket() as foreign:
            foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            foreign.bind(("127.0.0.1", 0))
            foreign.listen()
            port = foreign.getsockname()[1]
            gw = Gateway(tmp_path, "sharer", receiver.url, "--port", str(port), "--workers", "2")
            assert gw.proc.wait(30) == 2 and "already in use" in gw.err()


def test_a_killed_worker_is_replaced_and_what_it_held_is_delivered(tmp_path, receiver):
    receiver.fail_next(10**6, status=503)  # VWO down: what the workers accept waits in their spool files
    gw = Gateway(tmp_path, "gw", receiver.url, "--port", "0", "--workers", "2", spool=tmp_path / "spool")
    try:
        users = [f"k{i}" for i in range(400)]
        for i in range(0, len(users), 20):
            assert _post(gw.url, users[i:i + 20]) == 200
        # published figures (a worker's last PUBLISH_INTERVAL is missing from them if it is killed)
        _wait(lambda: gw.stats()["accepted"] == 400, PUBLISH_INTERVAL + 5, "both workers' figures")
        victim = gw.workers()[0]
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: victim not in gw.workers() and len(gw.workers()) == 2, 15, "a new worker")
        _wait(lambda: "was killed by signal 9" in gw.err(), 5, "the parent to say so")
        receiver.clear_faults()  # VWO is back: the survivor or the newcomer delivers the dead worker's file
        _wait(lambda: receiver.event_count() >= len(users), 30, "every event at VWO")
        seen = Counter(ev["u"] for ev in receiver.events())
        assert set(seen) == {visitor_uuid(ACCOUNT_ID, u) for u in users} and max(seen.values()) == 1
        _wait(lambda: gw.stats()["workers"] == 2, 5, "/stats to count the new worker, not the dead one")
        _wait(lambda: gw.stats()["accepted"] == 400, PUBLISH_INTERVAL + 5, "the dead worker's counts in the sums")
        code, _ = gw.stop()
        assert code == 1  # a worker died: said in the exit status
    finally:
        gw.close()


def test_a_live_gateway_delivers_what_a_dead_peer_left_in_the_shared_spool(tmp_path, receiver):
    """Two gateways of one account on one spool directory; VWO is down while B takes events (on
    disk before each 200), and B is killed with SIGKILL. VWO comes back; A, running all along,
    adopts B's file within ``ADOPT_INTERVAL`` and delivers it: no restart. Before: A adopted only
    at its start."""
    spool = tmp_path / "spool"
    receiver.fail_next(10**6, status=503)
    a = Gateway(tmp_path, "a", receiver.url, "--port", "0", spool=spool)
    b = Gateway(tmp_path, "b", receiver.url, "--port", "0", spool=spool)
    try:
        users = [f"p{i}" for i in range(150)]
        for i in range(0, len(users), 50):
            assert _post(b.url, users[i:i + 50]) == 200
        assert b.stats()["accounts"][str(ACCOUNT_ID)]["delivered"] == 0
        b.proc.kill()
        b.proc.wait(5)
        receiver.clear_faults()
        killed = time.monotonic()
        _wait(lambda: receiver.event_count() >= len(users), ADOPT_INTERVAL + 15, "A to deliver B's events")
        took = time.monotonic() - killed
        seen = Counter(ev["u"] for ev in receiver.events())
        assert set(seen) == {visitor_uuid(ACCOUNT_ID, u) for u in users} and max(seen.values()) == 1
        assert a.proc.poll() is None  # no restart
        print(f"\n[adoption] {len(users)} events of a killed peer delivered {took:.1f} s after the kill")
        code, _ = a.stop()
        assert code == 0
    finally:
        a.close()
        b.close()
