"""README.md's ```python blocks run as written, in order, in one fresh interpreter, against
the loopback receiver. Substituted for the test: the endpoint of every VWOExporter (and
VWO_ENDPOINT) is the receiver, the OTLP exporter is an in-memory one, and any connection or
name lookup off loopback fails. A block after a line ``<!-- not run: reason -->`` is skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vwo_otel import attributes as A
from vwo_otel.testing.receiver import Receiver

README = Path(__file__).resolve().parent.parent.parent / "README.md"
_BLOCK = re.compile(r"(?:^<!-- not run: (?P<why>[^\n]*?) -->\n)?^```python\n(?P<code>.*?)^```", re.M | re.S)

PRELUDE = textwrap.dedent('''
    import os, socket, sys, types

    def _is_loopback(host):
        return isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost"))

    _connect = socket.socket.connect
    def _connect_loopback_only(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise OSError(f"README snippet tried to reach {address[0]}: only loopback in tests")
        return _connect(self, address)
    socket.socket.connect = _connect_loopback_only
    _getaddrinfo = socket.getaddrinfo
    def _getaddrinfo_loopback_only(host, *args, **kwargs):
        if host is not None and not _is_loopback(host if isinstance(host, str) else host.decode()):
            raise socket.gaierror(f"README snippet tried to resolve {host}: only loopback in tests")
        return _getaddrinfo(host, *args, **kwargs)
    socket.getaddrinfo = _getaddrinfo_loopback_only

    # "your existing pipeline": an OTLP exporter that keeps spans in memory
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    class OTLPSpanExporter(InMemorySpanExporter):
        def __init__(self, *args, **kwargs):
            super().__init__()
    name = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    parts = name.split(".")
    for i in range(2, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].OTLPSpanExporter = OTLPSpanExporter

    import vwo_otel
    class _ToReceiver(vwo_otel.VWOExporter):
        def __init__(self, *args, endpoint=None, **kwargs):
            super().__init__(*args, endpoint=os.environ["VWO_ENDPOINT"], **kwargs)
    vwo_otel.VWOExporter = _ToReceiver
''')


def blocks() -> list[tuple[int, str | None, str]]:
    """(line, skip reason or None, code) of every ```python block."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start("code")) + 1, m.group("why"), m.group("code"))
            for m in _BLOCK.finditer(text)]


def test_readme_has_runnable_python_blocks():
    found = blocks()
    assert sum(1 for _, why, _ in found if why is None) >= 3
    for line, why, _ in found:
        assert why is None or why.strip(), f"README line {line}: say why the block is not run"


def test_readme_python_blocks_run(tmp_path):
    runner = [PRELUDE, "ns = {'__name__': '__main__'}"]
    for line, why, code in blocks():
        if why is not None:
            continue
        runner.append(textwrap.dedent(f"""
            try:
                exec(compile({code!r}, "README.md:{line}", "exec"), ns)
            except BaseException:
                print("README python block at line {line} failed", file=sys.stderr)
                raise
        """))
    runner.append("print('README blocks done', flush=True)")
    (tmp_path / "readme_blocks.py").write_text("\n".join(runner))
    with Receiver() as rx:  # any account id / sdk key, as the README's placeholders
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VWO_"))}
        env.update({"VWO_ACCOUNT_ID": "123456", "VWO_SDK_KEY": "readme-sdk-key", "VWO_ENDPOINT": rx.url,
                    "OTEL_METRICS_EXPORTER": "none"})
        proc = subprocess.run([sys.executable, "readme_blocks.py"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            pytest.fail(f"a README python block failed (make it runnable, or put `<!-- not run: why -->` "
                        f"before it):\n{proc.stderr[-3000:]}")
        assert "README blocks done" in proc.stdout
        # the quick start's two events (flushed), and the set-up's, at exit without a flush: each in its format
        got = rx.events()
        assert sorted(e["eT"] for e in got if "eT" in e) == [A.VISITOR, A.VISITOR, A.GOAL, A.CUSTOM_DIMENSION]
        assert sorted(e["d"]["event"]["name"] for e in got if "d" in e) == sorted(
            ["purchase", "purchase", A.VARIATION_SHOWN, A.SYNC_VISITOR_PROP])
        assert proc.stdout.count("delivered 1") == 2  # the quick start's flush_callback: a request per format


def test_readme_states_the_retry_policys_statuses():
    """The README lists the retryable statuses once; they must be the policy's (one fact, one place)."""
    import re

    from vwo_otel.export.retry import RetryPolicy

    text = README.read_text()
    (listed,) = re.findall(r"`RetryPolicy.statuses`: by default ([0-9, ]+)\)", text)
    assert {int(s) for s in listed.split(",")} == RetryPolicy().statuses
    (paused,) = re.findall(r"`RetryPolicy.pause_statuses`: ([0-9, ]+)\)", text.replace("\n", " "))
    assert {int(s) for s in paused.split(",")} == RetryPolicy().pause_statuses


def test_readme_attribute_tables_name_every_event_type_attribute():
    """Every attribute a row of the event-type table reads is in the README's attribute tables."""
    from vwo_otel.event_types import TYPES, VISITOR_ATTRIBUTES

    text = README.read_text()
    names = {f.attr for row in TYPES.values() for f in row.all_fields} | set(VISITOR_ATTRIBUTES)
    assert sorted(n for n in names if f"`{n}`" not in text) == []


def test_readme_states_the_attribute_count_a_vwo_event_needs():
    """The README's attribute-count floor is the one VWOEvents checks (event_types.MAX_EVENT_ATTRIBUTES)."""
    from vwo_otel.event_types import MAX_EVENT_ATTRIBUTES

    text = " ".join(README.read_text().split())
    (stated,) = re.findall(r"fewer than (\d+) attributes per span / log record", text)
    assert int(stated) == MAX_EVENT_ATTRIBUTES
