"""A spool whose disk fills up while VWO is down (issue #21 item 1): the full queue must not
keep spilling into memory while every commit fails, and a SIGTERM must report, within
``shutdown_timeout``, every event the disk never took. Real tmpfs, real signals."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from helpers import fill

from vwo_otel import RetryPolicy, Spool, visitor_uuid

ROOT = Path(__file__).resolve().parent.parent.parent
SHORT = RetryPolicy(budget=0.2, initial_backoff=0.01, max_backoff=0.05)




def rows_on_disk(directory: Path) -> list[str]:
    """User ids of the event rows in the spool files of ``directory`` (read-only)."""
    users: list[str] = []
    for path in directory.glob("spool-*.sqlite"):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            users += [json.loads(text)["user_id"] for (text,) in conn.execute("SELECT event FROM events")]
        except sqlite3.OperationalError:  # a file the full disk left without its table
            pass
        finally:
            conn.close()
    return users


def test_a_failing_disk_takes_no_more_spills_and_shutdown_reports_what_it_never_took(
        receiver, pipeline, callbacks, make_tmpfs, caplog):
    disk = make_tmpfs(256)
    receiver.stall(30)  # VWO hangs: the queue fills and spills
    spool = Spool(disk, commit_interval=0.02)
    vwo, processor, _ = pipeline({"events_per_request": 100, "request_time_interval": 60}, spool=spool,
                                 max_queue_size=500, shutdown_timeout=2)
    fill(disk)
    for i in range(600):
        vwo.activate(1, 1, f"w-{i}")
    time.sleep(0.3)  # several group commits fail
    before = processor.batcher.snapshot().spilled
    assert before <= 100
    for i in range(20_000):
        vwo.activate(1, 1, f"x-{i}")
    snap = processor.batcher.snapshot()
    assert snap.spilled == before, "nothing more spills into memory while the disk refuses every commit"
    assert snap.held <= 500
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        started = time.monotonic()
        processor.shutdown()
        took = time.monotonic() - started
    receiver.clear_faults()
    assert took < 2 + 1.0, took
    users = {visitor_uuid(ACCOUNT_ID, u) for u in [f"w-{i}" for i in range(600)] + [f"x-{i}" for i in range(20_000)]}
    reported = {e["u"] for err, evs in callbacks.failed for e in evs}
    unlisted = sum(getattr(err, "count", len(evs)) - len(evs) for err, evs in callbacks.failed)
    kept = {visitor_uuid(ACCOUNT_ID, u) for u in rows_on_disk(disk)}
    # the stalled requests reported shutdown_in_flight may still reach VWO once it answers
    assert receiver.wait_for_events(200, timeout=10) and {e["u"] for e in receiver.events()} <= reported
    assert len(users - reported - kept) <= unlisted and not reported & kept
    said = [r for r in caplog.records if "stay in the spool" in r.getMessage()]
    assert (int(said[-1].args[0]) if said else 0) == len(kept)  # the log says what really stays


APP = textwrap.dedent("""
    import os, sys, threading, time
    from opentelemetry.sdk.trace import TracerProvider
    import vwo_otel
    url, spool_dir, out, threads, seconds = sys.argv[1:4] + [int(sys.argv[4]), float(sys.argv[5])]
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def reported(err, events):
        if err is None:
            return
        lines = [f"R {e['u']}" for e in events if isinstance(e, dict) and "u" in e]
        unlisted = (getattr(err, "count", None) or len(events)) - len(lines)
        if unlisted > 0:
            lines.append(f"U {unlisted}")
        os.write(fd, ("\\n".join(lines) + "\\n").encode())

    exporter = vwo_otel.VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=url, timeout=1.0,
                                    retry=vwo_otel.RetryPolicy(budget=0.5, initial_backoff=0.01, max_backoff=0.1))
    processor = vwo_otel.VWOSpanProcessor(
        exporter, {"events_per_request": 100, "request_time_interval": 1, "flush_callback": reported},
        max_queue_size=500, shutdown_timeout=2.0, spool=vwo_otel.Spool(spool_dir, commit_interval=0.05))
    provider = TracerProvider(sampler=vwo_otel.VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = vwo_otel.VWOEvents(tracer_provider=provider)
    print("started", flush=True)
    sys.stdin.readline()  # the test fills the disk
    counts = [0] * threads

    def emit(t):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(500):
                vwo.track(1, 2, 3, f"{t}-{counts[t]}", revenue=1)
                counts[t] += 1
            time.sleep(0.01)

    workers = [threading.Thread(target=emit, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    os.write(fd, "".join(f"E {t} {n}\\n" for t, n in enumerate(counts)).encode())
    print("emitted", flush=True)
    time.sleep(60)
""").replace("ACCOUNT_ID", str(ACCOUNT_ID)).replace("SDK_KEY", repr(SDK_KEY))


def test_sigterm_with_a_full_disk_and_vwo_down_accounts_for_every_event(receiver, make_tmpfs, tmp_path):
    """The soak's failing shape, small: a full disk, VWO refusing, SIGTERM. Every emitted event
    ends delivered, reported to flush_callback (before the process dies) or on disk."""
    disk = make_tmpfs(512)
    receiver.fail_next(10**9)  # VWO down (503) for the whole run
    out = tmp_path / "ledger.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", APP, receiver.url, str(disk), str(out), "8", "6"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "started"
        fill(disk)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "emitted"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGTERM, err[-3000:]
    assert took < 2 + 2.0, (took, err[-3000:])
    emitted: set[str] = set()
    reported: set[str] = set()
    unlisted = 0
    for line in out.read_text().splitlines():
        kind, *rest = line.split() or ["-"]
        if kind == "E":
            emitted |= {visitor_uuid(ACCOUNT_ID, f"{rest[0]}-{i}") for i in range(int(rest[1]))}
        elif kind == "R":
            reported.add(rest[0])
        elif kind == "U":
            unlisted += int(rest[0])
    kept = {visitor_uuid(ACCOUNT_ID, u) for u in rows_on_disk(disk)}
    delivered = {e["u"] for e in receiver.events()}
    assert emitted, err[-3000:]
    unaccounted = emitted - delivered - reported - kept
    assert len(unaccounted) <= unlisted, (len(emitted), len(reported), unlisted, len(kept), err[-3000:])
    assert not reported & kept
    assert "not passed to it" not in err, err[-3000:]  # every report reached flush_callback


@pytest.fixture(autouse=True)
def _quiet_receiver(receiver):
    yield
    receiver.clear_faults()
