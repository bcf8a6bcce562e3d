#!/usr/bin/env python3
"""What ``kill -9`` of a gateway costs: events it answered 200 for that never reach VWO, without
``--spool`` and with it (then a gateway started again on the same directory).

    python benchmarks/gateway_crash.py              # 5 rounds each way
    python benchmarks/gateway_crash.py --rounds 2 --request-time-interval 10

Each round: a gateway process (``events_per_request`` 100, the loopback receiver as VWO), one
sender posting 10 events a request on a kept-alive connection as fast as the answers come,
SIGKILL to the gateway at a random moment 1-2 s in. "acknowledged" counts the events of requests
answered 200; "lost" those of them VWO never got (with ``--spool``: after a second gateway
started on the same spool directory had 10 s to deliver what the first left).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ACCOUNT_ID = 12345
SDK_KEY = "bench-sdk-key-0123456789"


def _gateway(receiver_url: str, interval: float, spool: str | None) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), **{f"VWO_SDK_KEY_{ACCOUNT_ID}": SDK_KEY})
    cmd = [sys.executable, "-m", "vwo_otel", "gateway", "--account", str(ACCOUNT_ID), "--default-account",
           str(ACCOUNT_ID), "--endpoint", receiver_url, "--port", "0", "--request-time-interval", str(interval),
           "--log-level", "ERROR", *(["--spool", spool] if spool else [])]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"the gateway did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


def _body(users: list[str]) -> bytes:
    import json

    now = str(time.time_ns())
    spans = [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "s", "kind": 1,
              "startTimeUnixNano": now, "endTimeUnixNano": now,
              "attributes": [{"key": "vwo.event.type", "value": {"intValue": "1"}},
                             {"key": "vwo.user_id", "value": {"stringValue": u}},
                             {"key": "vwo.campaign_id", "value": {"intValue": "231"}},
                             {"key": "vwo.variation_id", "value": {"intValue": "1"}}]} for u in users]
    return json.dumps({"resourceSpans": [{"resource": {"attributes": []},
                                          "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}]}]}).encode()


def run_round(receiver: Any, interval: float, spool: bool, rng: random.Random, n: int) -> dict[str, Any]:
    import requests

    from vwo_otel import visitor_uuid

    receiver.reset()
    directory = tempfile.mkdtemp(prefix="vwo-crash-") if spool else None
    proc, url = _gateway(receiver.url, interval, directory)
    acked: list[str] = []
    stop = threading.Event()

    def send() -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            users = [f"r{n}-{i + j}" for j in range(10)]
            i += 10
            try:
                r = session.post(url + "/v1/traces", data=_body(users), timeout=5,
                                 headers={"Content-Type": "application/json"})
            except requests.RequestException:
                return
            if r.status_code == 200:
                acked.extend(users)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(1 + rng.random())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sender.join(10)
    stop.set()
    if spool:
        again, _ = _gateway(receiver.url, interval, directory)
        receiver.wait_for_events(len(acked), 10)
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=60)
    else:
        time.sleep(1)
    got = {ev["u"] for ev in receiver.events()}
    lost = sum(1 for u in acked if visitor_uuid(ACCOUNT_ID, u) not in got)
    return {"spool": spool, "acknowledged": len(acked), "lost": lost}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds each way (default 5)")
    parser.add_argument("--request-time-interval", type=float, default=1.0, help="the gateway's (default 1 s)")
    parser.add_argument("--seed", type=int, default=22)
    args = parser.parse_args(argv)

    from vwo_otel.testing.receiver import Receiver

    rng = random.Random(args.seed)
    print(f"# kill -9 of a vwo-otel gateway: events_per_request 100, request_time_interval "
          f"{args.request_time_interval:g} s, {args.rounds} rounds each way", flush=True)
    rows = []
    with Receiver(account_id=ACCOUNT_ID, sdk_key=SDK_KEY) as receiver:
        for n in range(args.rounds):
            for spool in (False, True):
                row = run_round(receiver, args.request_time_interval, spool, rng, n)
                rows.append(row)
                print(f"  {'--spool   ' if spool else 'no spool  '} acknowledged {row['acknowledged']:>6}  "
                      f"lost {row['lost']:>4}", flush=True)
    for spool in (False, True):
        lost = [r["lost"] for r in rows if r["spool"] == spool]
        print(f"{'with --spool' if spool else 'without --spool'}: lost {min(lost)}-{max(lost)} acknowledged events "
              f"per kill -9 ({', '.join(map(str, lost))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
