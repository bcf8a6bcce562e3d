"""Whose events a dead process's spool file holds, and who may deliver them, over real HTTP:
only a process sending to the same account, endpoint and sdk key, as the same OS user. Before,
any process adopted any orphaned file in its directory: a production app sent a dead staging
app's events under its own account and key; a development-mode start (``VWO_DISABLED``)
reported them ``not_sent`` and deleted them; a file another local user planted in a shared
directory was delivered under the app's account and key."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import VWOExporter, VWOSpanProcessor, visitor_uuid
from vwo_otel.testing import Receiver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELD = {"events_per_request": 100, "request_time_interval": 1}

#: An app that spools ``n`` events (committed one by one) and is killed before it sends any.
APP = textwrap.dedent("""
    import os, signal, sys
    from opentelemetry.sdk.trace import TracerProvider
    import vwo_otel
    account, key, url, spool, prefix, n, disabled = sys.argv[1:8]
    exporter = vwo_otel.VWOExporter(int(account), key, endpoint=url, disabled=disabled == "1")
    processor = vwo_otel.VWOSpanProcessor(exporter, {"events_per_request": 1000, "request_time_interval": 600},
                                          spool=vwo_otel.Spool(spool, commit_interval=0))
    provider = TracerProvider(sampler=vwo_otel.VWOSampler(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    vwo = vwo_otel.VWOEvents(tracer_provider=provider)
    for i in range(int(n)):
        vwo.activate(1, 1, f"{prefix}-{i}")
    print("spooled", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no flush, no atexit
""")


def killed_app(spool, account, key, url, prefix, n=3, disabled=False):
    """Run ``APP`` until it kills itself; its spool file stays behind, its owner gone."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", APP, str(account), key, url, str(spool), prefix, str(n),
                           "1" if disabled else "0"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == -signal.SIGKILL and "spooled" in proc.stdout, proc.stderr[-3000:]


def spool_rows(directory) -> int:
    total = 0
    for path in directory.glob("spool-*.sqlite"):
        with sqlite3.connect(path) as conn:
            total += conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        conn.close()
    return total


def deliver(exporter, spool) -> VWOSpanProcessor:
    """A processor started on ``spool`` that flushed (a flush covers what it adopts at start)."""
    processor = VWOSpanProcessor(exporter, HELD, spool=spool)
    try:
        assert processor.flush_events() is True
    finally:
        processor.shutdown()
    return processor


def uids(account, prefix, n=3):
    return Counter(visitor_uuid(account, f"{prefix}-{i}") for i in range(n))


def test_an_app_of_another_account_and_key_leaves_a_dead_apps_file_alone(receiver, make_exporter, tmp_path,
                                                                         caplog):
    staging_key = "STAGING-key-aaaaaaaaaaaaaaaa"
    with Receiver(777777, staging_key) as staging:
        killed_app(tmp_path, 777777, staging_key, staging.url, "staging")
        assert spool_rows(tmp_path) == 3
        with caplog.at_level(logging.INFO, logger="vwo_otel"):
            deliver(make_exporter(), tmp_path)  # production: ACCOUNT_ID, SDK_KEY
        assert receiver.event_count() == 0 and spool_rows(tmp_path) == 3
        left = [m for r in caplog.records if r.levelno == logging.WARNING and "left alone" in (m := r.getMessage())]
        assert len(left) == 1, left
        assert "1 file(s) of another account, endpoint or sdk key holding 3 event(s)" in left[0], left
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert staging_key not in text and SDK_KEY not in text
        # the staging app started again delivers them, under its own account and key
        deliver(VWOExporter(777777, staging_key, endpoint=staging.url), tmp_path)
        assert Counter(e["u"] for e in staging.events()) == uids(777777, "staging")
        assert all("a=777777" in r["query"] for r in staging.requests())
    assert receiver.event_count() == 0 and not list(tmp_path.glob("spool-*.sqlite"))


@pytest.mark.parametrize("differs", ["sdk key", "endpoint"])
def test_the_same_account_with_another_key_or_endpoint_leaves_it_alone(tmp_path, differs):
    with Receiver() as vwo, Receiver() as elsewhere:  # both take any account and key
        key, url = ("rotated-sdk-key-0123456789", vwo.url) if differs == "sdk key" else (SDK_KEY, elsewhere.url)
        killed_app(tmp_path, ACCOUNT_ID, key, url, "old")
        deliver(VWOExporter(ACCOUNT_ID, SDK_KEY, endpoint=vwo.url), tmp_path)
        assert vwo.event_count() == 0 and elsewhere.event_count() == 0 and spool_rows(tmp_path) == 3
        deliver(VWOExporter(ACCOUNT_ID, key, endpoint=url), tmp_path)
        got = vwo if differs == "sdk key" else elsewhere
        assert Counter(e["u"] for e in got.events()) == uids(ACCOUNT_ID, "old")
    assert not list(tmp_path.glob("spool-*.sqlite"))


def test_a_development_mode_start_leaves_a_dead_apps_events_for_a_sending_start(receiver, make_exporter,
                                                                                tmp_path, caplog):
    killed_app(tmp_path, ACCOUNT_ID, SDK_KEY, receiver.url, "real")
    with caplog.at_level(logging.INFO, logger="vwo_otel"):
        disabled = deliver(make_exporter(disabled=True), tmp_path)  # VWO_DISABLED=true: nothing is sent
    assert disabled.stats()["events"] == {"delivered": 0, "failed": 0, "not_sent": 0}
    assert spool_rows(tmp_path) == 3, "the events stay on disk for a start that sends"
    assert any("left alone" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    deliver(make_exporter(), tmp_path)
    assert Counter(e["u"] for e in receiver.events()) == uids(ACCOUNT_ID, "real")
    assert not list(tmp_path.glob("spool-*.sqlite"))


def test_a_development_mode_apps_events_are_never_sent_by_a_sending_start(receiver, make_exporter, tmp_path):
    killed_app(tmp_path, ACCOUNT_ID, SDK_KEY, receiver.url, "dev", disabled=True)
    deliver(make_exporter(), tmp_path)
    assert receiver.event_count() == 0 and spool_rows(tmp_path) == 3
    dev = deliver(make_exporter(disabled=True), tmp_path)  # another development-mode start takes them
    assert dev.stats()["events"]["not_sent"] == 3 and not list(tmp_path.glob("spool-*.sqlite"))
    assert receiver.event_count() == 0


def test_this_processs_spool_file_is_private(make_exporter, tmp_path):
    processor = VWOSpanProcessor(make_exporter(), HELD, spool=tmp_path)
    try:
        (path,) = tmp_path.glob("spool-*.sqlite")
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    finally:
        processor.shutdown()


@pytest.fixture
def nobody():
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root, to plant a file as another user")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")


def test_a_file_another_local_user_planted_in_a_shared_directory_is_never_sent(receiver, make_exporter, tmp_path,
                                                                              nobody, caplog):
    """A sticky, world-writable directory (``/tmp``-like). Another user copies in a genuine spool
    file (the right layout and owner record, as a dead process of this app would leave it); the
    app must not deliver it under its account and key."""
    genuine = tmp_path / "genuine"
    killed_app(genuine, ACCOUNT_ID, SDK_KEY, receiver.url, "planted")
    (source,) = genuine.glob("spool-*.sqlite")
    with sqlite3.connect(source) as conn:  # its WAL into the file: one file to copy
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    shared = tempfile.mkdtemp(prefix="vwo-shared-spool-")
    try:
        os.chmod(shared, 0o1777)
        planted = os.path.join(shared, "spool-99999-cafebabe.sqlite")
        subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'xb').write(sys.stdin.buffer.read())",
                        planted], input=source.read_bytes(), check=True, timeout=30,
                       preexec_fn=lambda: (os.setgid(nobody.pw_gid), os.setuid(nobody.pw_uid)))
        assert os.stat(planted).st_uid == nobody.pw_uid
        with caplog.at_level(logging.INFO, logger="vwo_otel"):
            deliver(make_exporter(), shared)
        assert receiver.event_count() == 0, "a file of another OS user was delivered"
        assert os.path.exists(planted)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("writable by other users" in m for m in warnings), warnings
        assert any("left alone" in m and "another OS user" in m for m in warnings), warnings
    finally:
        shutil.rmtree(shared)
    deliver(make_exporter(), genuine)  # the genuine file, where its own process left it, is delivered
    assert Counter(e["u"] for e in receiver.events()) == uids(ACCOUNT_ID, "planted")


def test_a_lock_file_made_a_link_leaves_our_dead_file_alone_not_set_aside(receiver, make_exporter, tmp_path,
                                                                          caplog):
    """Someone replaced a dead file's ``.lock`` with a link: the file is left where it is (it was
    renamed ``*.unadoptable-*`` for good), and delivered once the link is gone."""
    killed_app(tmp_path, ACCOUNT_ID, SDK_KEY, receiver.url, "linked")
    (db,) = tmp_path.glob("spool-*.sqlite")
    lock = tmp_path / (db.name + ".lock")
    lock.unlink(missing_ok=True)
    lock.symlink_to(tmp_path / "elsewhere")
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        deliver(make_exporter(), tmp_path)
    assert receiver.event_count() == 0 and db.exists() and not list(tmp_path.glob("*.unadoptable-*"))
    assert any("lock file cannot be locked" in r.getMessage() for r in caplog.records), caplog.text
    lock.unlink()
    deliver(make_exporter(), tmp_path)
    assert Counter(e["u"] for e in receiver.events()) == uids(ACCOUNT_ID, "linked")
