"""uWSGI without ``enable-threads``: under a REAL uWSGI (pyuwsgi, in the test extra) a worker
runs no Python thread but the request's, so the delivery thread never runs; a processor made
there logs one WARNING naming the option. Real HTTP on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from conftest import ACCOUNT_ID, SDK_KEY
from helpers import free_port

UWSGI = Path(sys.executable).parent / "uwsgi"
if not UWSGI.exists():
    pytest.skip("uWSGI is not installed (pyuwsgi is in the test extra)", allow_module_level=True)

APP = textwrap.dedent('''
    from opentelemetry.sdk.trace import TracerProvider

    import vwo_otel

    processor = vwo_otel.span_processor_from_env(batch_events={"events_per_request": 100,
                                                               "request_time_interval": 1})
    provider = TracerProvider(sampler=vwo_otel.VWOSampler())
    provider.add_span_processor(processor)
    vwo = vwo_otel.VWOEvents(tracer_provider=provider)


    def application(environ, start_response):
        vwo.activate(231, 1, environ.get("QUERY_STRING") or "anonymous")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
''')
WARNING = "set enable-threads = true in the uWSGI ini (or --enable-threads, or threads = N)"




def _serve(tmp_path: Path, receiver, *options: str) -> tuple[subprocess.Popen[str], str]:
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VWO_", "OTEL_"))}
    env.update({"VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY, "VWO_ENDPOINT": receiver.url})
    proc = subprocess.Popen([str(UWSGI), "--http-socket", f"127.0.0.1:{port}", "--wsgi-file", "app.py",
                             "--master", "--processes", "1", "--die-on-term", "--need-app", *options],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[0])
        try:
            requests.get(base + "/?warm-up", timeout=2)
            return proc, base
        except requests.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"uWSGI did not come up: {proc.communicate()[0]}")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=90)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(proc.communicate()[0]) from None


def test_without_enable_threads_one_warning_names_the_option(tmp_path, receiver):
    proc, base = _serve(tmp_path, receiver)
    try:
        for user in ("a", "b", "c"):
            assert requests.get(f"{base}/?{user}", timeout=5).text == "ok"
    finally:
        log = _stop(proc)
    # (whether the events arrive is left to chance there: the delivery thread runs only while a
    # request runs Python code, and a worker stopped by SIGTERM delivered 0 of 4 in one of three runs)
    assert log.count(WARNING) == 1, log


@pytest.mark.parametrize("option", [["--enable-threads"], ["--threads", "2"]])
def test_with_threads_no_warning_and_the_timer_delivers(tmp_path, receiver, option):
    proc, base = _serve(tmp_path, receiver, *option)
    try:
        for user in ("a", "b", "c"):
            assert requests.get(f"{base}/?{user}", timeout=5).text == "ok"
        assert receiver.wait_for_events(4, timeout=10)  # warm-up + 3, by the 1 s timer, while serving
    finally:
        log = _stop(proc)
    assert WARNING not in log, log
