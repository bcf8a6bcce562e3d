"""The spool when the disk misbehaves (full, read-only), when VWO is down longer than the
retry budget, when forked children come and go, and when a dead process's file is damaged.
Every event ends as exactly one of: delivered, reported failed, or still on disk."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import pytest
from conftest import ACCOUNT_ID
from helpers import fill

from vwo_otel import RetryPolicy, Spool, VWOSpanProcessor, visitor_uuid
from vwo_otel._engine import spoolfile, spoolowner
from vwo_otel.event import VWOEvent

#: A retry budget shorter than the outages below.
SHORT = RetryPolicy(budget=0.2, initial_backoff=0.01, max_backoff=0.05)
HELD = {"events_per_request": 1000, "request_time_interval": 60}  # nothing goes out before a flush


def u(user_id: str) -> str:
    return visitor_uuid(ACCOUNT_ID, user_id)


@pytest.fixture
def disk(make_tmpfs):
    """A 512 KiB tmpfs of its own (a disk that can fill up or be made read-only)."""
    return make_tmpfs(512)




@pytest.fixture
def ro_disk(tmp_path):
    """An 8 MiB ext4 file system (a loop device) mounted with errors=remount-ro, so
    ``read_only`` can turn it read-only under open files, as a failing disk does."""
    image, mnt = tmp_path / "disk.img", tmp_path / "ext4"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", str(image)], capture_output=True).returncode == 0
    if not made or subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)],
                                  capture_output=True).returncode != 0:
        pytest.skip("needs root, mkfs.ext4 and a loop device")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def read_only(mnt: Path) -> None:
    """Make the ext4 file system read-only now, open files and all (ext4's error path)."""
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True,
                            check=True).stdout.strip()
    Path(f"/sys/fs/ext4/{os.path.basename(device)}/trigger_fs_error").write_text("1")
    with pytest.raises(OSError):
        (mnt / "probe").write_text("x")


def fixed(directory: Path, to: Path) -> Path:
    """The spool files of a broken disk copied to a good one (the disk was repaired)."""
    to.mkdir()
    for path in directory.glob("spool-*.sqlite*"):
        if not path.name.endswith((".lock", "-shm")):
            shutil.copy(path, to / path.name)
    return to


def on_disk(directory: Path, scratch: Path) -> Counter:
    """Visitor uuids of the events in the spool files of ``directory`` (read from copies, so a
    read-only or full disk does not matter)."""
    found: Counter = Counter()
    scratch.mkdir(exist_ok=True)
    for path in directory.glob("spool-*.sqlite"):
        copy = scratch / path.name
        shutil.copy(path, copy)
        if os.path.exists(f"{path}-wal"):
            shutil.copy(f"{path}-wal", f"{copy}-wal")
        with sqlite3.connect(copy) as conn:
            found.update(u(json.loads(text)["user_id"]) for (text,) in conn.execute("SELECT event FROM events"))
        conn.close()
    return found


def reported(callbacks) -> Counter:
    return Counter(e["u"] for err, evs in callbacks.failed for e in evs)


def kept_in_log(caplog) -> int:
    """The count the shutdown log says stays on disk (0 when it says nothing)."""
    lines = [r for r in caplog.records if "stay in the spool" in r.getMessage()]
    return int(lines[-1].args[0]) if lines else 0


def test_full_disk_with_vwo_down_every_event_is_reported_or_on_disk(receiver, make_exporter, pipeline, callbacks,
                                                                    disk, tmp_path, caplog):
    receiver.stop()  # VWO down for the whole run
    spool = Spool(disk, commit_interval=0.02)
    vwo, processor, _ = pipeline(HELD, exporter=make_exporter(retry=SHORT), spool=spool, shutdown_timeout=2)
    vwo.activate(1, 1, "first")  # some rows reach the disk before it is full
    time.sleep(0.1)
    fill(disk)
    users = ["first"] + [f"f-{i}" for i in range(4000)]
    for user in users[1:]:
        vwo.activate(1, 1, user)
    processor.shutdown()

    kept = on_disk(disk, tmp_path / "copies")
    lost = reported(callbacks)
    assert receiver.event_count() == 0
    assert sum(kept.values()) + sum(lost.values()) == len(users), (sum(kept.values()), sum(lost.values()))
    assert set(kept) | set(lost) == {u(x) for x in users} and not set(kept) & set(lost)
    assert lost, "a full disk cannot keep 4000 events: those it did not take are reported"
    assert kept_in_log(caplog) == sum(kept.values())  # the log says what really stays


def test_read_only_disk_failed_events_are_reported_or_kept_never_both(receiver, make_exporter, pipeline, callbacks,
                                                                      ro_disk, tmp_path, caplog):
    """VWO refuses (400) events written before the disk went read-only: their rows cannot be
    deleted, so they are not reported; the next start (disk writable again) reports them."""
    vwo, processor, _ = pipeline(HELD, exporter=make_exporter(retry=SHORT), spool=Spool(ro_disk, commit_interval=0),
                                 shutdown_timeout=2)
    users = [f"r-{i}" for i in range(300)]
    for user in users:
        vwo.activate(1, 1, user)
    read_only(ro_disk)
    receiver.fail_next(100_000, status=400)
    assert processor.flush_events() is False
    processor.shutdown()
    kept = on_disk(ro_disk, tmp_path / "copies")
    assert not reported(callbacks) and receiver.event_count() == 0
    assert set(kept) == {u(x) for x in users} and kept_in_log(caplog) == len(users)

    good = fixed(ro_disk, tmp_path / "good")
    receiver.fail_next(100_000, status=400)
    again = VWOSpanProcessor(make_exporter(retry=SHORT), {**HELD, "request_time_interval": 1,
                                                          "flush_callback": callbacks}, spool=good)
    assert callbacks.wait_for(lambda calls: sum(len(e) for err, e in calls if err) == len(users), timeout=10)
    again.shutdown()
    assert reported(callbacks) == Counter({u(x): 1 for x in users})
    assert not on_disk(good, tmp_path / "copies2")


def test_read_only_disk_with_vwo_down_keeps_everything_and_a_later_start_delivers_once(
        receiver, make_exporter, pipeline, callbacks, ro_disk, tmp_path, caplog):
    vwo, processor, _ = pipeline(HELD, exporter=make_exporter(retry=SHORT), spool=Spool(ro_disk, commit_interval=0),
                                 shutdown_timeout=1)
    users = [f"d-{i}" for i in range(200)]
    for user in users:
        vwo.activate(1, 1, user)
    read_only(ro_disk)
    receiver.stop()
    assert processor.flush_events() is False  # NetworkError: parked, not reported
    processor.shutdown()
    assert not callbacks.failed
    assert kept_in_log(caplog) == len(users)

    receiver.start()
    again = VWOSpanProcessor(make_exporter(), {**HELD, "request_time_interval": 1},
                             spool=fixed(ro_disk, tmp_path / "good"))
    try:
        assert receiver.wait_for_events(len(users), timeout=10)
        assert again.flush_events() is True
    finally:
        again.shutdown()
    assert Counter(e["u"] for e in receiver.events()) == Counter({u(x): 1 for x in users})


def test_delivered_events_the_disk_cannot_delete_are_announced_as_resent(receiver, make_exporter, pipeline, ro_disk,
                                                                         tmp_path, caplog):
    vwo, processor, _ = pipeline(HELD, exporter=make_exporter(), spool=Spool(ro_disk, commit_interval=0))
    for i in range(50):
        vwo.activate(1, 1, f"x-{i}")
    read_only(ro_disk)
    assert processor.flush_events() is True
    processor.shutdown()
    assert receiver.event_count() == 50
    assert sum(on_disk(ro_disk, tmp_path / "copies").values()) == 50
    (line,) = [r for r in caplog.records if "sends them again" in r.getMessage()]
    assert line.args[0] == 50
    assert kept_in_log(caplog) == 0  # none of them is called undelivered


def test_vwo_down_longer_than_the_retry_budget_then_up_delivers_everything_once(receiver, make_exporter, pipeline,
                                                                               callbacks, tmp_path):
    spool = Spool(tmp_path, commit_interval=0)
    vwo, processor, _ = pipeline({"events_per_request": 10, "request_time_interval": 60},
                                 exporter=make_exporter(retry=SHORT), spool=spool)
    receiver.stop()
    users = [f"o-{i}" for i in range(50)]
    for user in users:
        vwo.activate(1, 1, user)
    assert processor.flush_events() is False  # the budget ran out: the events wait on disk
    assert spool.pending_rows() == 50
    time.sleep(0.5)  # several retry rounds while VWO stays down
    receiver.start()
    assert receiver.wait_for_events(50, timeout=10)
    assert processor.flush_events() is True
    spool.commit()
    assert spool.pending_rows() == 0 and spool.on_disk() == 0
    assert not callbacks.failed
    assert Counter(e["u"] for e in receiver.events()) == Counter({u(x): 1 for x in users})
    assert processor.stats()["events"] == {"delivered": 50, "failed": 0}


def test_events_past_the_spool_max_age_are_reported_failed(receiver, make_exporter, pipeline, callbacks, tmp_path):
    spool = Spool(tmp_path, commit_interval=0, max_age=3600)
    _, processor, _ = pipeline(HELD, exporter=make_exporter(retry=SHORT), spool=spool)
    receiver.stop()
    old, young = VWOEvent(1, "old", int(time.time()) - 7200, 1, 1), VWOEvent(1, "young", int(time.time()), 1, 1)
    processor.batcher.put(old)
    processor.batcher.put(young)
    assert processor.flush_events() is False
    (err, evs), = callbacks.failed
    assert [e["u"] for e in evs] == [u("old")] and "max_age" in str(err)
    assert spool.pending_rows() == 1 and spool.on_disk() == 1  # the young one waits on disk
    processor.shutdown()


def test_spool_policy_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="max_age"):
        Spool(tmp_path, max_age=0)
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(tmp_path, max_bytes=10)


def _dead_file(directory, users, exporter):
    """A spool file of a process of ``exporter``'s owner that is gone (no lock held on it),
    holding events for ``users``."""
    path = os.path.join(str(directory), f"spool-{len(os.listdir(directory)) + 900000}-0000dead.sqlite")
    temp = os.path.join(str(directory), f"writing-{os.path.basename(path)}")  # moved in whole: a live scan
    conn = spoolfile.connect(temp, spoolowner.of(exporter))  # never sees it half written
    conn.executemany(spoolfile.INSERT, [(i, time.time() - 5, spoolfile.encode(VWOEvent(1, user, int(time.time()) - 5,
                                                                                      1, 1)))
                                        for i, user in enumerate(users, 1)])
    conn.close()
    os.rename(temp, path)
    return path


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_short_lived_forked_children_never_drop_adopted_events(receiver, make_exporter, tmp_path):
    processor = VWOSpanProcessor(make_exporter(), HELD, spool=tmp_path)
    users = [f"s-{k}-{i}" for k in range(4) for i in range(100)]
    for k in range(4):
        _dead_file(tmp_path, users[k * 100:(k + 1) * 100], make_exporter())  # siblings that died meanwhile
    drops = tmp_path / "drops"
    for k in range(8):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # a child that ends at once, while its replay may still be running
            line = ""
            try:
                time.sleep(k * 0.004)  # lives a few ms: shuts down before, during or after its replay
                processor.shutdown()
                line = json.dumps(processor.stats()["dropped"])
            except BaseException:  # the child's failure is the test's failure, not a missing line
                line = json.dumps({"child_error": traceback.format_exc()})
            finally:
                with open(drops, "a") as f:
                    f.write(line + "\n")
                os._exit(0)
        os.waitpid(pid, 0)
    processor.shutdown()
    assert all(json.loads(line) == {} for line in drops.read_text().splitlines()), drops.read_text()
    final = VWOSpanProcessor(make_exporter(), {**HELD, "request_time_interval": 1}, spool=tmp_path)
    try:
        assert final.flush_events() is True
    finally:
        final.shutdown()
    assert Counter(e["u"] for e in receiver.events()) == Counter({u(x): 1 for x in users}), sorted(
        p.name for p in tmp_path.iterdir())
    assert not list(tmp_path.glob("spool-*.sqlite"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_shutting_down_adopts_nothing(make_exporter, tmp_path):
    processor = VWOSpanProcessor(make_exporter(), HELD, spool=tmp_path)
    processor.shutdown()
    path = _dead_file(tmp_path, ["late"], make_exporter())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os._exit(0 if os.path.exists(path) else 1)
    _, status = os.waitpid(pid, 0)
    time.sleep(0.1)
    assert os.waitstatus_to_exitcode(status) == 0 and os.path.exists(path)


def test_a_damaged_spool_directory_never_stops_the_processor(receiver, make_exporter, tmp_path, caplog):
    good = _dead_file(tmp_path, ["g0", "g1"], make_exporter())
    (tmp_path / "spool-7-0000aaaa.sqlite").write_bytes(b"x")
    (tmp_path / "spool-7-0000aaaa.sqlite.lock").mkdir()  # locking it raises IsADirectoryError: left alone
    odd = tmp_path / "spool-8-0000bbbb.sqlite"  # the right version and owner, the wrong columns and values
    with sqlite3.connect(odd) as conn:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, queued_at, payload TEXT)")
        conn.execute("INSERT INTO events VALUES (1, 'yesterday', '{}')")
        conn.execute(spoolowner.TABLE)
        conn.execute(spoolowner.WRITE, (spoolowner.text(spoolowner.of(make_exporter())),))
        conn.execute(f"PRAGMA user_version = {spoolfile.SCHEMA_VERSION}")
    conn.close()
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        processor = VWOSpanProcessor(make_exporter(), {**HELD, "request_time_interval": 1}, spool=tmp_path)
    try:
        assert processor.flush_events() is True
    finally:
        processor.shutdown()
    assert sorted(e["u"] for e in receiver.events()) == sorted([u("g0"), u("g1")])
    assert not os.path.exists(good)
    assert (tmp_path / "spool-7-0000aaaa.sqlite").exists() and not list(tmp_path.glob("*.unadoptable-*"))
    assert any("lock file cannot be locked" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.glob("spool-8-0000bbbb.sqlite.quarantine-*"))


def test_a_disk_full_before_start_costs_the_spool_not_the_app(receiver, make_exporter, pipeline, callbacks, disk,
                                                              caplog):
    """A spool that cannot even be created (disk already full) must not make the processor's
    constructor raise: events are kept in memory only and delivered, with an ERROR saying so."""
    fill(disk)
    with caplog.at_level(logging.ERROR, logger="vwo_otel"):
        events, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60}, spool=disk / "spool")
    assert any("no room" in r.getMessage() and "memory only" in r.getMessage() for r in caplog.records)
    for i in range(5):
        events.activate(1, 1, f"fulldisk-{i}")
    assert proc.flush_events() is True
    assert receiver.event_count() == 5


def test_a_file_its_process_died_creating_is_removed_quietly(receiver, make_exporter, pipeline, tmp_path, caplog):
    """A child killed between creating its SQLite file and its table leaves an empty database:
    nothing to replay, so no ERROR and no *.corrupt-* file piling up with each crash."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    empty = spool_dir / "spool-999999-deadbeef.sqlite"
    empty.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        _, proc, _ = pipeline({"events_per_request": 5, "request_time_interval": 60}, spool=spool_dir)
        proc.shutdown()
    assert not empty.exists()
    assert not list(spool_dir.glob("*.corrupt-*"))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def lock_fds(directory) -> list[int]:
    """This process's open fds on a ``.lock`` file in ``directory`` (read from ``/proc/self/fd``)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(directory) + os.sep) and target.endswith(".lock"):
            found.append(int(name))
    return found


def test_a_spool_closed_before_a_fork_closes_no_other_file_after_it(tmp_path):
    """after_fork of a spool already closed (a processor shut down earlier in the same process)
    must not close its old lock fd number: by then it may be another file's."""
    old = Spool(tmp_path / "old")
    (number,) = lock_fds(tmp_path / "old")  # the fd its process holds the .lock flock on
    old.close(time.monotonic() + 5)
    opened = []
    while not opened or opened[-1] != number:  # take the freed number (the lowest free fds come first)
        opened.append(os.open(os.devnull, os.O_RDONLY))
        assert len(opened) < 50
    try:
        old.after_fork()  # what the fork handler runs in a child for every tracked batcher
        devnull = os.stat(os.devnull)
        now = os.fstat(number)  # still our file, not closed (and the number handed to a new lock file)
        assert (now.st_dev, now.st_ino) == (devnull.st_dev, devnull.st_ino)
    finally:
        for fd in opened:
            os.close(fd)
