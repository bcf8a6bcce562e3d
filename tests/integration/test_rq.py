"""RQ workers (``vwo_otel.integrations.rq.Worker``): a REAL ``rq worker`` process, whose default
Worker runs each job in a forked work horse ending with ``os._exit``, against a loopback Redis
stand-in (fakeredis's TCP server, ``tests/apps/fake_redis.py``); real HTTP to the receiver."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

rq = pytest.importorskip("rq", reason="RQ is in the test extra")
pytest.importorskip("fakeredis", reason="fakeredis is in the test extra")
from redis import Redis  # noqa: E402

APPS = Path(__file__).resolve().parent.parent / "apps"
JOBS = textwrap.dedent('''
    from opentelemetry.sdk.trace import TracerProvider

    import vwo_otel

    # request_time_interval 600: nothing leaves on its own while a job runs
    processor = vwo_otel.span_processor_from_env(batch_events={"events_per_request": 100,
                                                               "request_time_interval": 600})
    provider = TracerProvider(sampler=vwo_otel.VWOSampler())
    provider.add_span_processor(processor)
    vwo = vwo_otel.VWOEvents(tracer_provider=provider)


    def emit(user):
        vwo.activate(231, 1, user)
        vwo.track(231, 1, 7, user, revenue=2)
        return user
''')
USERS = [f"user-{i}" for i in range(6)]


@pytest.fixture
def redis_url():
    proc = subprocess.Popen([sys.executable, str(APPS / "fake_redis.py")], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def _run_worker(tmp_path: Path, receiver, redis_url: str, worker_class: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "jobs.py").write_text(JOBS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VWO_", "OTEL_"))}
    env.update({"VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY, "VWO_ENDPOINT": receiver.url,
                "PYTHONPATH": str(tmp_path)})
    queue = rq.Queue(connection=Redis.from_url(redis_url))
    for user in USERS:
        queue.enqueue("jobs.emit", user)
    return subprocess.run([sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", redis_url,
                           "-w", worker_class], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_each_work_horse_delivers_its_jobs_events(tmp_path, receiver, redis_url):
    proc = _run_worker(tmp_path, receiver, redis_url, "vwo_otel.integrations.rq.Worker")
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("Job OK") == len(USERS), proc.stdout + proc.stderr
    keys = [(e["eT"], e["u"]) for e in receiver.events()]
    assert len(keys) == 2 * len(USERS) and len(set(keys)) == len(keys)  # each once


def test_without_it_a_work_horse_loses_its_queue(tmp_path, receiver, redis_url):
    """Why it exists: rq's default Worker ends each horse with os._exit, unreported."""
    proc = _run_worker(tmp_path, receiver, redis_url, "rq.Worker")
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("Job OK") == len(USERS), proc.stdout + proc.stderr
    assert receiver.event_count() == 0
