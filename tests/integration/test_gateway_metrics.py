"""``GET /metrics`` (issue #22 item 3): the gateway's ``/stats`` in Prometheus' text format, behind
the same tokens; and the example dashboard and alert rules name only metrics that exist: the
gateway's (a live ``/metrics``) and the apps' (``vwo_otel.metrics`` through the OpenTelemetry
Prometheus exporter, ``examples/prometheus_metrics.py`` run as written)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import ACCOUNT_ID, SDK_KEY
from test_gateway import post, traces_json
from test_gateway_auth import LIMITED, TOKEN, bearer
from test_gateway_ready import _wait

from vwo_otel.servers.gateway import prometheus

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client (the test extra) is not installed")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
T0_S = 1_700_000_000  # test_gateway's span times (T0), in seconds
#: The metric names the examples may use: ours and vwo_otel.metrics' (as the Prometheus exporter names them).
NAMED = re.compile(r"\b(?:vwo_gateway|vwo_exporter|otel_sdk)_[a-z0-9_]+\b")
_SUFFIXES = ("_bucket", "_sum", "_count")


def _goal(user: str) -> dict:
    return {"vwo.event.type": 2, "vwo.user_id": user, "vwo.campaign_id": 231, "vwo.variation_id": 2, "vwo.goal_id": 7}


def _families(text: str) -> dict[str, str]:
    """Metric family name -> type, from the ``# TYPE`` lines of Prometheus text."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)}


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, parsed by prometheus_client (so the format is valid)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


def _exists(name: str, families: dict[str, str]) -> bool:
    if name in families:
        return True
    base = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), None)
    return base is not None and families.get(base) == "histogram"


def test_metrics_needs_the_stats_token_and_shows_what_stats_counts(make_gateway, receiver):
    gw = make_gateway(auth_tokens={TOKEN: None, LIMITED: [ACCOUNT_ID]}, events_per_request=5, max_backlog=10)
    assert requests.get(gw.url + "/metrics", timeout=5).status_code == 401
    assert requests.get(gw.url + "/metrics", headers=bearer(LIMITED), timeout=5).status_code == 403
    receiver.fail_next(1, status=401)  # one batch VWO refuses (no resend fixes it): failed, reason http_status
    assert post(gw, "/v1/traces", traces_json(({}, [_goal(f"m{i}") for i in range(10)])),
                headers={**bearer(TOKEN), "Content-Type": "application/json"}).status_code == 200
    assert not gw.flush(5)  # one batch failed
    receiver.stall(30)  # a full backlog: 429
    doc = traces_json(({}, [_goal(f"n{i}") for i in range(10)]))
    headers = {**bearer(TOKEN), "Content-Type": "application/json"}
    assert post(gw, "/v1/traces", doc, headers=headers).status_code == 200
    assert post(gw, "/v1/traces", doc, headers=headers).status_code == 429
    answer = requests.get(gw.url + "/metrics", headers=bearer(TOKEN), timeout=5)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = answer.text
    assert set(_families(text)) == prometheus.NAMES
    got = _samples(text)
    acct = frozenset({("account", str(ACCOUNT_ID))})

    def value(name: str, **labels: str) -> float:
        return got[(name, acct | frozenset(labels.items()))]

    stats = gw.stats()["accounts"][str(ACCOUNT_ID)]
    assert value("vwo_gateway_events_accepted_total") == 20 == stats["accepted"]
    assert value("vwo_gateway_events_delivered_total") == 5
    assert value("vwo_gateway_events_failed_total", reason="http_status") == 5 == stats["failed_by"]["http_status"]
    assert value("vwo_gateway_backlog_events") == 10 and value("vwo_gateway_backlog_max_events") == 10
    assert value("vwo_gateway_backlog_bytes") > 0
    assert abs(value("vwo_gateway_backlog_oldest_age_seconds") - (time.time() - T0_S)) < 60  # the events' own time
    assert value("vwo_gateway_events_on_disk") == 0
    assert got[("vwo_gateway_responses_total", frozenset({("code", "429")}))] == 1
    assert got[("vwo_gateway_responses_total", frozenset({("code", "401")}))] == 1
    assert value("vwo_gateway_vwo_requests_total", outcome="success") == 1
    assert value("vwo_gateway_vwo_requests_total", outcome="http_error") == 1
    count = value("vwo_gateway_vwo_request_duration_seconds_count")
    assert count >= 2 and value("vwo_gateway_vwo_request_duration_seconds_bucket", le="+Inf") == count
    assert got[("vwo_gateway_workers_ready", frozenset())] == 0  # the backlog is full
    receiver.clear_faults()
    assert gw.flush(5)


def _gateway_metrics(make_gateway) -> dict[str, str]:
    gw = make_gateway()
    assert post(gw, "/v1/traces", traces_json(({}, [_goal("d1")]))).status_code == 200
    assert gw.flush(5)
    return _families(requests.get(gw.url + "/metrics", timeout=5).text)


def _app_metrics(receiver) -> dict[str, str]:
    """The example app's metrics, as its OpenTelemetry Prometheus exporter serves them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VWO_"))}
    env.update({"VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY, "VWO_ENDPOINT": receiver.url,
                "METRICS_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "prometheus_metrics.py"), "150"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "emitted 150 VWO events" in line, proc.stderr.read() if proc.stderr else line
        _wait(lambda: receiver.event_count() >= 150, 10, "the app's events at VWO")
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0
    return _families(text)


def _named(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in NAMED.findall(expr)}


def _exprs(node: object) -> list[str]:
    """Every ``expr`` string in a JSON / YAML tree (Grafana targets, Prometheus rules)."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "expr" and isinstance(v, str)] + [
            e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_dashboard_and_alert_rules_name_only_metrics_that_exist(make_gateway, receiver):
    dashboard = json.loads((EXAMPLES / "grafana" / "vwo-otel.json").read_text())
    alerts = yaml.safe_load((EXAMPLES / "prometheus" / "alerts.yaml").read_text())
    assert yaml.safe_load((EXAMPLES / "prometheus" / "prometheus.yml").read_text())["rule_files"] == ["alerts.yaml"]
    dash_names, alert_names = _named(_exprs(dashboard)), _named(_exprs(alerts))
    templated = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    names = dash_names | alert_names | _named(templated)
    gateway_side = {n for n in names if n.startswith("vwo_gateway_")}
    app_side = names - gateway_side
    assert len(gateway_side) >= 10 and len(app_side) >= 5  # both sides are charted
    families = {**_gateway_metrics(make_gateway), **_app_metrics(receiver)}
    missing = sorted(n for n in names if not _exists(n, families))
    assert not missing, f"named by the examples but not served: {missing}"
    charted = {next((n[: -len(s)] for s in _SUFFIXES if n.endswith(s)), n) for n in dash_names}
    assert prometheus.NAMES <= charted  # and the dashboard charts everything the gateway serves
