"""Celery workers (``vwo_otel.integrations.celery.instrument_worker``) under a REAL worker
process (``celery worker``) with kombu's filesystem broker: per-task delivery, prefork children's
queues at a warm shutdown, ``--pool=solo`` and ``--pool=threads``. Real HTTP to the loopback
receiver; the broker is a directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

celery = pytest.importorskip("celery", reason="Celery is in the test extra")

TASKS = textwrap.dedent('''
    import os
    from pathlib import Path

    from celery import Celery

    import vwo_otel
    from vwo_otel.integrations.celery import instrument_worker

    HERE = Path(__file__).parent
    app = Celery("tasks", broker="filesystem://", broker_transport_options={
        "data_folder_in": str(HERE / "broker"), "data_folder_out": str(HERE / "broker"),
        "processed_folder": str(HERE / "processed"), "store_processed": False})
    app.conf.task_ignore_result = True
    app.conf.worker_hijack_root_logger = False

    # request_time_interval 600: without a flush, nothing would leave before the worker ends
    processor = vwo_otel.span_processor_from_env(batch_events={"events_per_request": 100,
                                                               "request_time_interval": 600})
    from opentelemetry.sdk.trace import TracerProvider
    provider = TracerProvider(sampler=vwo_otel.VWOSampler())
    provider.add_span_processor(processor)
    vwo = vwo_otel.VWOEvents(tracer_provider=provider)
    HOOK = os.environ["CELERY_TEST_HOOK"]
    if HOOK != "none":
        instrument_worker(processor, per_task=HOOK == "per-task")


    @app.task(name="tasks.emit")
    def emit(user):
        vwo.activate(231, 1, user)
        vwo.track(231, 1, 7, user, revenue=1.5)
        (HERE / "done" / f"{user}-{os.getpid()}").touch()
''')


def _setup(tmp_path: Path) -> None:
    for folder in ("broker", "processed", "done"):
        (tmp_path / folder).mkdir()
    (tmp_path / "tasks.py").write_text(TASKS)


def _producer(tmp_path: Path):
    app = celery.Celery("producer", broker="filesystem://", broker_transport_options={
        "data_folder_in": str(tmp_path / "broker"), "data_folder_out": str(tmp_path / "broker")})
    return app


def _worker(tmp_path: Path, receiver, pool: str, hook: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VWO_", "OTEL_", "CELERY_"))}
    env.update({"VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY, "VWO_ENDPOINT": receiver.url,
                "CELERY_TEST_HOOK": hook, "PYTHONPATH": str(tmp_path), "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", pool,
                             "--concurrency", "2", "--loglevel", "warning", "--without-heartbeat",
                             "--without-mingle", "--without-gossip"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _send(tmp_path: Path, users: list[str]) -> None:
    app = _producer(tmp_path)
    for user in users:
        app.send_task("tasks.emit", args=[user])


def _wait_done(tmp_path: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((tmp_path / "done").iterdir())) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"tasks not done in time: {proc.communicate()}")


def _stop(proc: subprocess.Popen[str], sig: int) -> str:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return err


def _exactly_once(receiver, users: list[str]) -> None:
    keys = [(e["eT"], e["u"]) for e in receiver.events()]
    assert len(keys) == 2 * len(users) and len(set(keys)) == len(keys), (len(keys), len(set(keys)))


USERS = [f"user-{i}" for i in range(12)]


@pytest.mark.parametrize("pool", ["prefork", "solo", "threads"])
def test_per_task_delivery_survives_a_killed_worker(tmp_path, receiver, pool):
    """Each task's events reach VWO before the task is done: SIGKILL afterwards loses nothing."""
    _setup(tmp_path)
    proc = _worker(tmp_path, receiver, pool, "per-task")
    try:
        _send(tmp_path, USERS)
        _wait_done(tmp_path, len(USERS), proc)
        assert receiver.wait_for_events(2 * len(USERS), timeout=30), proc.stderr
    finally:
        if proc.poll() is None:
            _stop(proc, signal.SIGKILL)
    _exactly_once(receiver, USERS)


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_warm_shutdown_delivers_what_worker_processes_hold(tmp_path, receiver, pool):
    """per_task=False: events wait in the processors' queues (interval 600 s); SIGTERM (a warm
    shutdown) ends the worker processes, whose hook delivers them, each once."""
    _setup(tmp_path)
    proc = _worker(tmp_path, receiver, pool, "at-exit")
    try:
        _send(tmp_path, USERS)
        _wait_done(tmp_path, len(USERS), proc)
        assert receiver.event_count() == 0  # nothing flushed per task
    finally:
        err = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    _exactly_once(receiver, USERS)


def test_without_the_hook_a_prefork_child_loses_its_queue(tmp_path, receiver):
    """Why the hook exists: billiard ends a prefork child without atexit or multiprocessing's
    finalizers, so what it queued is lost at a warm shutdown (and never reported)."""
    _setup(tmp_path)
    proc = _worker(tmp_path, receiver, "prefork", "none")
    try:
        _send(tmp_path, USERS)
        _wait_done(tmp_path, len(USERS), proc)
    finally:
        _stop(proc, signal.SIGTERM)
    assert receiver.event_count() < 2 * len(USERS)


def test_instrument_worker_refuses_what_is_not_a_processor():
    from vwo_otel.integrations.celery import instrument_worker

    with pytest.raises(TypeError, match="VWOSpanProcessor"):
        instrument_worker()
    with pytest.raises(TypeError, match="VWOSpanProcessor"):
        instrument_worker(object())  # type: ignore[arg-type]
