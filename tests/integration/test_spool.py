"""The on-disk spool: kill -9 loses nothing committed; replay; isolation between processes."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import Spool, VWOExporter, VWOSpanProcessor, visitor_uuid
from vwo_otel._engine import spoolfile, spoolowner
from vwo_otel.event import VWOEvent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EMITTER = textwrap.dedent("""
    import os, signal, sys, time
    from opentelemetry.sdk.trace import TracerProvider
    import vwo_otel
    url, spool, prefix = sys.argv[1:4]
    n, epr, commit, pace = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
    exporter = vwo_otel.VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=url, timeout=2,
                                    retry=vwo_otel.RetryPolicy(budget=1, initial_backoff=0.01, max_backoff=0.05))
    processor = vwo_otel.VWOSpanProcessor(exporter, {"events_per_request": epr, "request_time_interval": 600},
                                          spool=vwo_otel.Spool(spool, commit_interval=commit))
    provider = TracerProvider(sampler=vwo_otel.VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = vwo_otel.VWOEvents(tracer_provider=provider)
    for i in range(n):
        vwo.track(1, 2, 3, f"{prefix}-{i}", revenue=i)
        print(i, flush=True)  # emitted (and, with commit 0, committed) before this line
        if pace:
            time.sleep(pace)
    if n and commit > 0:
        time.sleep(commit * 4)  # let the group commit run
    print("done", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no flush, no atexit
""").replace("ACCOUNT_ID", str(ACCOUNT_ID)).replace("SDK_KEY", repr(SDK_KEY))


def _emitter(receiver, spool_dir, prefix, n, epr=5000, commit=0.0, pace=0.0):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", EMITTER, receiver.url, str(spool_dir), prefix, str(n), str(epr),
                             str(commit), str(pace)], stdout=subprocess.PIPE, text=True, env=env)


def _uids(prefix, n):
    return [visitor_uuid(ACCOUNT_ID, f"{prefix}-{i}") for i in range(n)]


@pytest.mark.parametrize("commit", [0.0, 0.02])
def test_kill_9_before_any_flush_then_replay_delivers_everything(receiver, make_exporter, callbacks, tmp_path, commit):
    proc = _emitter(receiver, tmp_path, "k", 200, commit=commit)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and "done" in out
    assert receiver.event_count() == 0  # nothing was sent before the crash
    assert len(list(tmp_path.glob("spool-*.sqlite"))) == 1

    processor = VWOSpanProcessor(make_exporter(), {"events_per_request": 1000, "request_time_interval": 1,
                                                   "flush_callback": callbacks}, spool=tmp_path)
    try:
        # the crashed process queued them over a second ago: overdue, so they go out at once
        assert receiver.wait_for_events(200, timeout=10)
        assert sorted(e["u"] for e in receiver.events()) == sorted(_uids("k", 200))
        assert processor.force_flush(5000)
    finally:
        processor.shutdown()
    assert not list(tmp_path.glob("spool-*.sqlite")), "settled spool files are removed"


def test_delivered_events_leave_the_spool(receiver, pipeline, tmp_path):
    spool = Spool(tmp_path, commit_interval=0)
    vwo, processor, _ = pipeline({"events_per_request": 10, "request_time_interval": 60}, spool=spool)
    for i in range(25):
        vwo.activate(1, 1, f"s-{i}")
    assert spool.pending_rows() in (5, 15, 25)  # the two full batches may not be acked yet
    assert processor.flush_events() is True
    spool.commit()
    assert spool.pending_rows() == 0
    assert receiver.event_count() == 25


def test_live_processors_never_adopt_each_others_spool(receiver, make_exporter, tmp_path):
    a = VWOSpanProcessor(make_exporter(), {"events_per_request": 100}, spool=Spool(tmp_path, commit_interval=0))
    a.batcher.put(VWOEvent(1, "mine", int(time.time()), 1, 1))
    b = VWOSpanProcessor(make_exporter(), {"events_per_request": 100}, spool=tmp_path)
    assert b.batcher.snapshot().pending == ()  # b saw a's file locked and left it alone
    b.shutdown()
    assert a.flush_events() is True
    a.shutdown()
    assert [e["u"] for e in receiver.events()] == [visitor_uuid(ACCOUNT_ID, "mine")]


def test_young_replayed_events_wait_for_their_deadline(receiver, make_exporter, tmp_path):
    proc = _emitter(receiver, tmp_path, "y", 3)
    proc.communicate(timeout=60)
    processor = VWOSpanProcessor(make_exporter(), {"events_per_request": 1000, "request_time_interval": 600},
                                 spool=tmp_path)
    try:
        end = time.monotonic() + 10  # replay runs in the background: construction does not wait for it
        while len(processor.batcher.snapshot().pending) < 3 and time.monotonic() < end:
            time.sleep(0.01)
        assert len(processor.batcher.snapshot().pending) == 3
        assert not receiver.wait_for_events(1, timeout=0.3)  # not due for ~600 s
        assert processor.flush_events() is True
        assert receiver.event_count() == 3
    finally:
        processor.shutdown()


def test_corrupt_spool_file_is_moved_aside_and_the_app_keeps_running(receiver, make_exporter, tmp_path, caplog):
    bad = tmp_path / "spool-999999-deadbeef.sqlite"
    bad.write_bytes(b"this is not a sqlite database" * 100)
    processor = VWOSpanProcessor(make_exporter(), {"events_per_request": 10}, spool=tmp_path)
    try:
        assert processor.flush_events() is True  # a flush covers the adoption at start
        assert not bad.exists()
        assert list(tmp_path.glob("spool-999999-deadbeef.sqlite.corrupt-*"))
        assert any("unreadable" in r.getMessage() for r in caplog.records)
    finally:
        processor.shutdown()


def test_spool_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="commit_interval"):
        Spool(tmp_path, commit_interval=-1)
    with pytest.raises(TypeError, match="spool"):
        Spool(42)  # type: ignore[arg-type]


def test_crash_loop_loses_nothing_and_duplicates_stay_in_the_window(receiver, make_exporter, tmp_path):
    """Kill emitters at random points (mid-batch, mid-request); every printed event is
    delivered in the end; duplicates only from requests accepted just before a kill."""
    rng = random.Random(1234)
    printed: list[str] = []
    kills = 6
    epr = 7
    for k in range(kills):
        proc = _emitter(receiver, tmp_path, f"c{k}", 150, epr=epr, pace=0.004)
        proc.stdout.readline()  # started emitting
        time.sleep(rng.uniform(0.0, 0.8))  # somewhere while emitting and sending
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        printed += [f"c{k}-{line}" for line in out.split() if line.isdigit()]
    processor = VWOSpanProcessor(make_exporter(), {"events_per_request": 50, "request_time_interval": 1},
                                 spool=tmp_path)
    try:
        assert processor.flush_events() is True
    finally:
        processor.shutdown()
    delivered = Counter(e["u"] for e in receiver.events())
    want = {visitor_uuid(ACCOUNT_ID, p) for p in printed}
    assert want <= set(delivered), f"lost {len(want - set(delivered))} of {len(want)}"
    duplicates = sum(c - 1 for c in delivered.values())
    assert duplicates <= kills * epr, duplicates
    assert not list(tmp_path.glob("spool-*.sqlite"))


def test_spool_rows_hold_what_is_queued(tmp_path):
    spool = Spool(tmp_path, commit_interval=0)
    ev = VWOEvent(2, "u", 1700000000, 1, 2, 3, 9.5, visitor_ua="ua", visitor_ip="ip")
    spool.put(ev)
    with sqlite3.connect(spool.path) as conn:
        (stored,) = conn.execute("SELECT event FROM events").fetchone()
        assert conn.execute("PRAGMA user_version").fetchone()[0] == spoolfile.SCHEMA_VERSION
    assert json.loads(stored) == ev.fields()
    spool.settle([ev], None)
    spool.close(time.monotonic() + 5)
    assert not os.path.exists(spool.path)


FORKER = textwrap.dedent("""
    import os, signal, sys, time
    from opentelemetry.sdk.trace import TracerProvider
    import vwo_otel
    url, spool = sys.argv[1:3]
    exporter = vwo_otel.VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=url)
    processor = vwo_otel.VWOSpanProcessor(exporter, {"events_per_request": 5000, "request_time_interval": 600},
                                          spool=vwo_otel.Spool(spool, commit_interval=0))
    provider = TracerProvider(sampler=vwo_otel.VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = vwo_otel.VWOEvents(tracer_provider=provider)
    for i in range(3):
        vwo.activate(1, 1, f"parent-{i}")
    import threading
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # a worker that outlives its parent
        while any(t.name == "vwo_otel-replay" for t in threading.enumerate()):
            time.sleep(0.01)  # its look for orphans is over (the parent's file was locked)
        os.write(w, b"r")
        time.sleep(30)
        os._exit(0)
    os.read(r, 1)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""").replace("ACCOUNT_ID", str(ACCOUNT_ID)).replace("SDK_KEY", repr(SDK_KEY))


def test_a_dead_parents_spool_is_adoptable_while_its_forked_child_lives(receiver, make_exporter, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", FORKER, receiver.url, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env=env)
    child = int(proc.stdout.readline())
    proc.wait(timeout=30)
    try:
        processor = VWOSpanProcessor(make_exporter(), {"events_per_request": 100, "request_time_interval": 1},
                                     spool=tmp_path)
        try:
            assert receiver.wait_for_events(3, timeout=10)
        finally:
            processor.shutdown()
    finally:
        os.kill(child, signal.SIGKILL)
    assert sorted(e["u"] for e in receiver.events()) == sorted(visitor_uuid(ACCOUNT_ID, f"parent-{i}")
                                                             for i in range(3))


def test_a_failed_spool_commit_is_tried_again_not_forgotten(tmp_path, caplog):
    """Another writer holding the file's lock past SQLite's busy timeout (5 s) fails the commit
    that deletes a delivered row, as a full disk would."""
    spool = Spool(tmp_path, commit_interval=0)
    a, b = VWOEvent(1, "a", 1700000000, 1, 1), VWOEvent(1, "b", 1700000000, 1, 1)
    spool.put(a)
    spool.put(b)
    assert spool.pending_rows() == 2
    (path,) = tmp_path.glob("spool-*.sqlite")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        spool.settle([a], None)  # delivered: this commit fails, the deletion must not be lost
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert spool.pending_rows() == 2
    assert any("commit failed" in r.getMessage() for r in caplog.records)
    assert spool.commit() is True
    assert spool.pending_rows() == 1  # a's row is gone now; b stays until settled


def test_two_processes_adopting_the_same_file_never_call_it_corrupt(receiver, make_exporter, tmp_path, caplog,
                                                                    monkeypatch):
    owner = spoolowner.of(make_exporter())
    _dead_spool(tmp_path, [json.dumps(VWOEvent(1, "orphan", 1700000000, 1, 1).fields())], owner)
    listing = spoolfile.glob.glob(os.path.join(str(tmp_path), spoolfile.PATTERN))
    first = VWOSpanProcessor(make_exporter(), {"events_per_request": 10}, spool=tmp_path)
    assert first.flush_events() is True  # the first adopter delivered it and removed the file
    first.shutdown()
    assert receiver.event_count() == 1 and not os.path.exists(listing[0])
    monkeypatch.setattr(spoolfile.glob, "glob", lambda pattern: list(listing))  # a listing made before that
    assert spoolfile.adopt(str(tmp_path), "", owner) == ([], Counter())
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    assert not os.path.exists(listing[0] + ".lock")  # no stray lock file left behind


# -- the row layout: versioned, one JSON object per event ------------------------------------

#: The owner of the files below whose process is gone (an exporter's, never contacted).
OWNER = spoolowner.of(VWOExporter(ACCOUNT_ID, SDK_KEY))


def _dead_spool(directory, stored_events=(), owner=OWNER, user_version=None):
    """A spool file of ``owner``'s whose process is gone (no lock held on it), holding the given
    ``event`` column texts."""
    path = os.path.join(str(directory), f"spool-{len(os.listdir(directory)) + 900000}-0000dead.sqlite")
    temp = os.path.join(str(directory), f"writing-{os.path.basename(path)}")  # moved in whole: a live scan
    conn = spoolfile.connect(temp, owner)  # never sees it half written
    conn.executemany("INSERT INTO events (queued_at, event) VALUES (?, ?)",
                     [(1700000000.0 + i, text) for i, text in enumerate(stored_events)])
    if user_version is not None:
        conn.execute(f"PRAGMA user_version = {user_version}")
    conn.close()
    os.rename(temp, path)
    return path


def test_rows_with_an_unknown_key_or_without_an_optional_one_replay(tmp_path):
    full = VWOEvent(2, "a", 1700000000, 1, 2, 3, 9.5, visitor_ua="ua", visitor_ip="ip")
    lean = {k: v for k, v in VWOEvent(1, "b", 1700000001, 4, 5).fields().items()
            if k not in ("revenue", "visitor_ua", "visitor_ip")}
    _dead_spool(tmp_path, [json.dumps({**full.fields(), "added_later": [1, 2]}), json.dumps(lean)])
    (orphan,), _ = spoolfile.adopt(str(tmp_path), "", OWNER)
    rows = orphan.read(10)
    assert [ev for _, _, ev in rows] == [full, VWOEvent(1, "b", 1700000001, 4, 5)]
    assert [queued_at for _, queued_at, _ in rows] == [1700000000.0, 1700000001.0]
    assert orphan.bad == []
    orphan.outstanding = len(rows)  # as its owner counts them: read, not settled
    orphan.finish()


def test_a_bad_row_is_kept_aside_and_the_others_replay(receiver, make_exporter, tmp_path, caplog):
    good = [json.dumps(VWOEvent(1, f"g{i}", 1700000000, 1, 1).fields()) for i in range(2)]
    bad = ["not json", "[1, 2]", json.dumps({"etype": 1, "time": 1700000000}),  # no user_id
           json.dumps({**VWOEvent(1, "x", 1700000000, 1, 1).fields(), "etype": 99})]
    path = _dead_spool(tmp_path, [good[0], *bad, good[1]], spoolowner.of(make_exporter()))
    processor = VWOSpanProcessor(make_exporter(), {"events_per_request": 100, "request_time_interval": 1},
                                 spool=tmp_path)  # never raises for what a file holds
    try:
        assert processor.flush_events() is True
    finally:
        processor.shutdown()
    assert sorted(e["u"] for e in receiver.events()) == sorted(visitor_uuid(ACCOUNT_ID, u) for u in ("g0", "g1"))
    assert not os.path.exists(path)
    (aside,) = [p for p in tmp_path.glob("spool-*.sqlite.quarantine-*") if not p.name.endswith(("-wal", "-shm"))]
    with sqlite3.connect(aside) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT event FROM events")) == sorted(bad)
    assert any("hold no usable event" in r.getMessage() for r in caplog.records)


def test_a_file_of_a_newer_layout_is_left_alone(tmp_path, caplog):
    path = _dead_spool(tmp_path, [json.dumps(VWOEvent(1, "u", 1700000000, 1, 1).fields())],
                       user_version=spoolfile.SCHEMA_VERSION + 1)
    assert spoolfile.adopt(str(tmp_path), "", OWNER) == ([], Counter())
    assert os.path.exists(path) and not list(tmp_path.glob("*.corrupt-*"))
    assert any("cannot read" in r.getMessage() for r in caplog.records)
    fd = spoolfile.lock(path + ".lock")
    assert fd is not None, "the file is unlocked again, for a vwo_otel that can read it"
    os.close(fd)


@pytest.mark.parametrize("version", [0, 1])
def test_a_file_of_an_older_layout_without_an_owner_is_left_alone(receiver, make_exporter, tmp_path, caplog,
                                                                  version):
    """Layouts 0 (a column per field) and 1 (JSON rows) record no owner: nothing says whose
    events they hold (another account's, a development-mode process's), so none is sent; one
    WARNING says so. (vwo_otel was never released with them.)"""
    path = str(tmp_path / "spool-1-00000000.sqlite")
    with sqlite3.connect(path) as conn:
        if version:
            conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, queued_at REAL NOT NULL, event TEXT NOT NULL)")
            conn.execute("INSERT INTO events VALUES (1, 1700000000.5, ?)",
                         (json.dumps(VWOEvent(1, "u", 1700000000, 1, 1).fields()),))
            conn.execute("PRAGMA user_version = 1")
        else:
            conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, queued_at REAL NOT NULL, etype, user_id, time, "
                         "campaign_id, variation_id, goal_id, revenue, key, value, visitor_ua, visitor_ip)")
            conn.execute("INSERT INTO events VALUES (1, 1700000000.5, 2, 'u', 1700000000, 1, 2, 3, 9.5, NULL, NULL, "
                         "'ua', 'ip')")
    conn.close()
    processor = VWOSpanProcessor(make_exporter(), {"events_per_request": 10}, spool=tmp_path)
    try:
        assert processor.flush_events() is True
    finally:
        processor.shutdown()
    assert receiver.event_count() == 0 and os.path.exists(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 file(s) without a readable owner record" in m for m in warnings), warnings
    fd = spoolfile.lock(path + ".lock")
    assert fd is not None, "the file is unlocked again"
    os.close(fd)
