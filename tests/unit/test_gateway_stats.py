"""The gateway's figures across workers (``stats.merge`` / ``retire``) and their Prometheus text
(``prometheus.render``): no sockets."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from vwo_otel.servers.gateway import prometheus
from vwo_otel.servers.gateway.stats import BUCKETS, Delivery, merge, retire


def _worker(accepted: int, backlog: int, age: float) -> dict:
    delivery = Delivery()
    delivery.observe("POST", 100, 1000, 200, None, 0.02)
    delivery.observe("POST", 100, 1000, None, OSError("reset"), 7.0)
    return {"requests": {"traces": 1, "logs": 0}, "responses": {"200": 1}, "accepted": accepted,
            "throttled_events": 0, "rejected": {"malformed": 0, "unknown_account": 2}, "workers": 1,
            "ready_workers": 1, "draining_workers": 0,
            "accounts": {"7": {"accepted": accepted, "delivered": accepted, "failed": 0, "dropped": {"queue_full": 1},
                               "backlog": backlog, "backlog_bytes": 10 * backlog, "max_backlog": 50,
                               "max_backlog_bytes": 500, "oldest_age": age, "on_disk": 0, **delivery.snapshot()}}}


def test_workers_merge_into_one_view_and_a_gone_one_keeps_its_counts_only():
    merged = merge([_worker(10, 3, 1.5), _worker(5, 4, 9.0)])
    acct = merged["accounts"]["7"]
    assert merged["accepted"] == 15 and merged["workers"] == 2 and merged["rejected"]["unknown_account"] == 4
    assert acct["backlog"] == 7 and acct["oldest_age"] == 9.0 and acct["max_backlog"] == 100  # the port holds 2 x 50
    assert acct["dropped"] == {"queue_full": 2} and acct["vwo_requests"] == {"success": 2, "network_error": 2}
    hist = acct["vwo_request_seconds"]
    assert hist["count"] == 4 and hist["buckets"]["0.025"] == 2 and hist["buckets"]["10"] == 2
    gone = retire(_worker(5, 4, 9.0))
    after = merge([_worker(10, 3, 1.5), gone])
    assert after["accepted"] == 15 and after["accounts"]["7"]["backlog"] == 3 and after["workers"] == 1
    assert after["accounts"]["7"]["oldest_age"] == 1.5


def test_prometheus_text_parses_and_sums_buckets_cumulatively():
    stats = merge([_worker(10, 3, 1.5)])
    stats["accounts"]['9"\\x'] = stats["accounts"]["7"]  # a label value that needs escaping
    text = prometheus.render(stats).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    hist = families["vwo_gateway_vwo_request_duration_seconds"]
    buckets = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels["account"] == "7"]
    assert [s.labels["le"] for s in buckets] == list(BUCKETS)
    assert [s.value for s in buckets][-1] == 2 and buckets[0].value == 0 and buckets[2].value == 1
    assert any(s.labels.get("account") == '9"\\x' for s in families["vwo_gateway_backlog_events"].samples)
    failed = {s.labels["reason"]: s.value for s in families["vwo_gateway_events_failed"].samples
              if s.labels["account"] == "7"}
    assert failed == {"queue_full": 1}
