"""What an app's exit says with VWO down (issue #23 item 7): within a second, that delivery is
being attempted and why it waits; at the end, one line with the totals (delivered, failed,
dropped, kept on disk). A newcomer's app: no logging set up, Python's last-resort handler."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

from conftest import SDK_KEY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

APP = textwrap.dedent("""
    import sys
    from opentelemetry.sdk.trace import TracerProvider
    import vwo_otel
    endpoint, n, timeout, key = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    spool = sys.argv[5] if len(sys.argv) > 5 else None
    exporter = vwo_otel.VWOExporter(12345, key, endpoint=endpoint, timeout=10)
    processor = vwo_otel.VWOSpanProcessor(exporter, {"events_per_request": 10, "request_time_interval": 600},
                                          shutdown_timeout=timeout, spool=spool)
    provider = TracerProvider(sampler=vwo_otel.VWOSampler())
    provider.add_span_processor(processor)
    events = vwo_otel.VWOEvents(tracer_provider=provider)
    for i in range(n):
        events.activate(1, 2, f"exit-{i}")
    print("main done", flush=True)
""")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_app(*args: str) -> tuple[float, list[tuple[float, str]]]:
    """Run the app; (when its main ended, [(when, stderr line)]) on the monotonic clock."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", APP, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), x.rstrip()) for x in proc.stderr))
    reader.start()
    assert proc.stdout.readline().strip() == "main done"
    ended = time.monotonic()
    assert proc.wait(timeout=60) == 0
    reader.join(5)
    return ended, lines


def test_exit_with_vwo_down_says_early_what_it_waits_for_and_ends_with_one_total():
    ended, lines = run_app(f"http://127.0.0.1:{closed_port()}", "35", "4", SDK_KEY)
    text = "\n".join(x for _, x in lines)
    notices = [(t, x) for t, x in lines if "still delivering" in x]
    assert len(notices) == 1, text
    when, line = notices[0]
    assert when - ended < 2.5, f"the first word came {when - ended:.1f} s into a 4 s exit:\n{text}"
    assert "35 VWO event(s)" in line and "Connection" in line and "shutdown_timeout" in line, line
    (total,) = [x for _, x in lines if "shut down:" in x]
    assert lines[-1][1] == total, text  # the last word
    assert "0 VWO event(s) delivered, 35 failed, 0 dropped, 0 kept on disk" in total, total
    assert SDK_KEY not in text


def test_exit_with_a_spool_and_vwo_down_counts_what_stays_on_disk(tmp_path):
    ended, lines = run_app(f"http://127.0.0.1:{closed_port()}", "20", "2", SDK_KEY, str(tmp_path))
    (total,) = [x for _, x in lines if "shut down:" in x]
    assert "20 kept on disk for the next start" in total and "0 dropped" in total, total


def test_a_quiet_exit_says_nothing(receiver):
    ended, lines = run_app(receiver.url, "20", "4", SDK_KEY)
    assert receiver.wait_for_events(20, timeout=5)
    assert lines == []  # all delivered: the summary is INFO, below the last-resort handler's WARNING
