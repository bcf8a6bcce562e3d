"""SIGTERM / SIGINT on the paths real deployments take: plain ``python app.py`` (Kubernetes,
systemd, docker stop), uvicorn (1 and 2 workers), gunicorn (sync and uvicorn workers) and
hypercorn. What is queued when the signal arrives is delivered (bounded by
``shutdown_timeout``) without the app adding code, and a handler the app or the server
installed still runs. The app (tests/apps/sigterm_app.py) queues events behind a 600 s
``request_time_interval``, so nothing but the signal path can deliver them in time."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import ACCOUNT_ID, SDK_KEY
from helpers import free_port, wait_listening

from vwo_otel import visitor_uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APPS = os.path.join(REPO, "tests", "apps")


def _env(receiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VWO_")}
    env.update(VWO_ENDPOINT=receiver.url, VWO_ACCOUNT_ID=str(ACCOUNT_ID), VWO_SDK_KEY=SDK_KEY,
               PYTHONPATH=os.pathsep.join([REPO, APPS, os.environ.get("PYTHONPATH", "")]), **extra)
    return env






def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> str:
    """Send ``sig`` and wait for the exit; stderr (stdout is kept in ``proc.out``)."""
    proc.send_signal(sig)
    try:
        proc.out, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        raise AssertionError(f"did not exit within {timeout} s after signal {sig}: {stderr}") from None
    return str(stderr)


_started: list[subprocess.Popen] = []


def _spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    _started.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_strays():
    """Kill what a failed test left running."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- plain Python ------------------------------------------------------------------------------

def _plain(receiver, n: int, **env: str) -> subprocess.Popen:
    proc = _spawn([sys.executable, os.path.join(APPS, "sigterm_app.py"), str(n)], env=_env(receiver, **env))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_plain_python_delivers_the_queued_tail_then_dies_by_the_signal(receiver, sig):
    proc = _plain(receiver, 250)  # 200 go out as two full batches, 50 wait on the 600 s timer
    assert receiver.wait_for_events(200, timeout=10)
    started = time.monotonic()
    stderr = _stop(proc, sig)
    took = time.monotonic() - started
    assert len(receiver.events()) == 250, stderr
    assert "FAILED" not in stderr
    assert proc.returncode == -sig  # the signal still does what it would have done
    assert took < 5 + 2  # bounded by shutdown_timeout (5 s in the app)


def test_signal_while_the_main_thread_is_emitting(receiver):
    """The signal lands while the main thread is inside the engine (holding its lock): delivery
    must not wait for that thread, and every event emitted before shutdown began is delivered."""
    proc = _spawn([sys.executable, os.path.join(APPS, "sigterm_app.py"), "busy"], env=_env(receiver))
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("emitted") and int(line.split()[1]) >= 5000:
            break
    started = time.monotonic()
    stderr = _stop(proc)
    assert time.monotonic() - started < 5 + 1, stderr  # shutdown_timeout 5 s in the app
    assert "did not finish in time" not in stderr, stderr
    failed = [ln for ln in stderr.splitlines() if ln.startswith("FAILED")]
    assert all("already_shutdown" in ln for ln in failed), failed  # emitted after shutdown began: refused
    assert proc.returncode == -signal.SIGTERM
    users = {e["u"] for e in receiver.events()}
    assert len(users) >= 5000 == len(users & {visitor_uuid(ACCOUNT_ID, f"busy-{i}") for i in range(5000)})


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_app_handler_still_runs_and_decides(receiver, when):
    """The app's own SIGTERM handler (a graceful stop) is neither swallowed nor replaced; the
    app then ends normally and its queue is delivered at exit."""
    proc = _plain(receiver, 250, APP_HANDLER=when)
    assert receiver.wait_for_events(200, timeout=10)
    stderr = _stop(proc)
    out = proc.out
    assert "app handler ran" in out and "app stopped" in out, (out, stderr)
    assert proc.returncode == 0, stderr
    assert len(receiver.events()) == 250, stderr


def test_opt_out_leaves_signals_alone(receiver):
    """VWO_SIGNALS=false: no handler; SIGTERM's default action ends the process at once."""
    proc = _plain(receiver, 250, VWO_SIGNALS="false")
    assert receiver.wait_for_events(200, timeout=10)
    _stop(proc)
    assert proc.returncode == -signal.SIGTERM
    time.sleep(0.2)  # nothing is in flight: the 50 queued events were never sent
    assert len(receiver.events()) == 200


# -- servers -----------------------------------------------------------------------------------

def _load(port: int, requests: int, per_request: int) -> set[int]:
    """``requests`` GETs, each emitting ``per_request`` impressions; the worker pids that answered."""
    pids: set[int] = set()
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(k, requests, 4):
            url = f"http://127.0.0.1:{port}/?user=r{i}&n={per_request}"
            req = urllib.request.Request(url, headers={"Connection": "close"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                pid = json.loads(resp.read())["pid"]
            with lock:
                pids.add(pid)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return pids


SERVERS = {
    "uvicorn-1": lambda port: [sys.executable, "-m", "uvicorn", "--port", str(port), "--host", "127.0.0.1",
                               "--workers", "1", "--app-dir", APPS, "sigterm_app:asgi"],
    "uvicorn-2": lambda port: [sys.executable, "-m", "uvicorn", "--port", str(port), "--host", "127.0.0.1",
                               "--workers", "2", "--app-dir", APPS, "sigterm_app:asgi"],
    "gunicorn-sync": lambda port: [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
                                   "--chdir", APPS, "sigterm_app:wsgi"],
    "gunicorn-uvicorn": lambda port: [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
                                      "-k", "uvicorn_worker.UvicornWorker", "--chdir", APPS, "sigterm_app:asgi"],
    "hypercorn": lambda port: [sys.executable, "-m", "hypercorn", "-b", f"127.0.0.1:{port}", "--workers", "1",
                               "--root-path", "", "sigterm_app:asgi"],
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_server_sigterm_delivers_every_event(receiver, server):
    module = {"uvicorn": "uvicorn", "gunicorn": "gunicorn", "hypercorn": "hypercorn"}[server.split("-")[0]]
    pytest.importorskip(module)
    if server == "gunicorn-uvicorn":
        pytest.importorskip("uvicorn_worker")
    port = free_port()
    proc = _spawn(SERVERS[server](port), env=_env(receiver), cwd=APPS)
    try:
        wait_listening(port, proc)
        pids = _load(port, requests=40, per_request=3)  # 120 events: most wait on the timer
    finally:
        stderr = _stop(proc)
    assert "FAILED" not in stderr, stderr
    got = receiver.events()
    assert len(got) == 120, (len(got), pids, stderr[-3000:])
    assert len({(e["u"]) for e in got}) == 120  # each exactly once


# -- a signal another thread takes --------------------------------------------------------------

def _tgkill(pid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to one thread ``tid`` of process ``pid`` (Linux x86-64 ``tgkill``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234, pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="needs Linux x86-64 tgkill")
def test_the_gateway_stops_on_a_sigterm_another_thread_takes(receiver, tmp_path):
    """The kernel hands a process's SIGTERM to any thread that does not block it (under load, a
    thread busy in a system call can take it before the main thread wakes), and Python runs the
    handler only when the main thread next runs Python code. A gateway whose main thread slept
    through that ignored SIGTERM (test_rotel's restart saw one not exit in 30 s): here the
    signal goes to a thread other than the main one on purpose."""
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"accounts": {str(ACCOUNT_ID): {"sdk_key_env": "TEST_GW_KEY"}},
                                  "default_account": ACCOUNT_ID, "shutdown_timeout": 2}))
    proc = _spawn([sys.executable, "-m", "vwo_otel", "gateway", "--config", str(config), "--port", "0",
                   "--endpoint", receiver.url], env={**_env(receiver), "TEST_GW_KEY": SDK_KEY}, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, proc.stderr.read() if proc.poll() is not None else line
    others = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
    assert others, "the gateway runs threads besides its main one"
    _tgkill(proc.pid, others[0], signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=10)  # shutdown_timeout 2 s, nothing queued
    except subprocess.TimeoutExpired:
        raise AssertionError("the gateway did not stop within 10 s of a SIGTERM another thread took") from None
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["accepted"] == 0


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_vwo_otel_threads_leave_sigterm_and_sigint_to_the_main_thread(pipeline, receiver, tmp_path):
    """Python runs a signal handler only on the main thread, once it next runs Python code: a
    process-directed SIGTERM the kernel hands to another thread waits while the main thread
    sleeps in C (an app's ``time.sleep(60)``; the test_spool_full app under the full suite did
    not exit for 30 s). vwo_otel's own threads block both signals, so they are never that thread."""
    vwo, processor, _ = pipeline({"events_per_request": 2, "request_time_interval": 60},
                                 spool=str(tmp_path / "spool"))
    for i in range(4):
        vwo.activate(1, 1, f"t-{i}")  # delivery, callback and spool writer threads run
    assert processor.flush_events() is True
    engine = {"vwo_otel-delivery", "vwo_otel-callbacks", "vwo_otel-spool", "vwo_otel-replay"}
    ours = [t for t in threading.enumerate() if t.name in engine and t.native_id]
    assert {t.name for t in ours} >= {"vwo_otel-delivery", "vwo_otel-callbacks", "vwo_otel-spool"}
    wanted = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
    for t in ours:
        with open(f"/proc/self/task/{t.native_id}/status") as f:
            blocked = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
        assert blocked & wanted == wanted, (t.name, hex(blocked))
