"""``GET /metrics``: the gateway's ``/stats`` in the Prometheus text format (version 0.0.4).

One table, ``METRICS``: each metric's name, type, help and where its samples come from in the
``/stats`` snapshot, so ``/stats`` and ``/metrics`` never disagree. Names start ``vwo_gateway_``;
the label ``account`` is the VWO account id. ``examples/grafana/`` and ``examples/prometheus/``
name only these (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .stats import BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Sample = tuple[str, dict[str, str], float]  # name suffix, labels, value


@dataclass(frozen=True)
class Metric:
    """One metric family: ``samples(stats)`` yields its samples from a ``/stats`` snapshot."""

    name: str
    kind: str  # counter, gauge, histogram
    help: str
    samples: Callable[[dict[str, Any]], Iterator[Sample]]


def _per_account(key: str) -> Callable[[dict[str, Any]], Iterator[Sample]]:
    def samples(stats: dict[str, Any]) -> Iterator[Sample]:
        for account, figures in stats["accounts"].items():
            yield "", {"account": account}, figures.get(key) or 0
    return samples


def _by(key: str, label: str) -> Callable[[dict[str, Any]], Iterator[Sample]]:
    def samples(stats: dict[str, Any]) -> Iterator[Sample]:
        for value, n in stats[key].items():
            yield "", {label: value}, n
    return samples


def _per_account_by(key: str, label: str) -> Callable[[dict[str, Any]], Iterator[Sample]]:
    def samples(stats: dict[str, Any]) -> Iterator[Sample]:
        for account, figures in stats["accounts"].items():
            for value, n in figures.get(key, {}).items():
                yield "", {"account": account, label: value}, n
    return samples


def _top(key: str) -> Callable[[dict[str, Any]], Iterator[Sample]]:
    def samples(stats: dict[str, Any]) -> Iterator[Sample]:
        yield "", {}, stats.get(key) or 0
    return samples


def _failed(stats: dict[str, Any]) -> Iterator[Sample]:
    """Events that will never reach VWO, by reason: delivery failures (``http_status``,
    ``network``, ``payload_too_large``, ...) and drops (``queue_full``, ``shutdown_timeout``, ...)."""
    for account, figures in stats["accounts"].items():
        reasons: dict[str, int] = {}
        for part in (figures.get("failed_by", {}), figures.get("dropped", {})):
            for reason, n in part.items():
                reasons[reason] = reasons.get(reason, 0) + n
        for reason, n in sorted(reasons.items()):
            yield "", {"account": account, "reason": reason}, n


def _latency(stats: dict[str, Any]) -> Iterator[Sample]:
    for account, figures in stats["accounts"].items():
        hist = figures.get("vwo_request_seconds") or {}
        counts = hist.get("buckets", {})
        total = 0
        for bound in BUCKETS:
            total += counts.get(bound, 0)
            yield "_bucket", {"account": account, "le": bound}, total
        yield "_sum", {"account": account}, hist.get("sum", 0.0)
        yield "_count", {"account": account}, hist.get("count", 0)


METRICS: tuple[Metric, ...] = (
    Metric("vwo_gateway_events_accepted_total", "counter", "VWO events accepted (queued; with --spool on disk) "
           "per account", _per_account("accepted")),
    Metric("vwo_gateway_events_delivered_total", "counter", "VWO events VWO accepted, per account",
           _per_account("delivered")),
    Metric("vwo_gateway_events_failed_total", "counter", "VWO events that will not reach VWO, per account and "
           "reason (delivery failures and drops)", _failed),
    Metric("vwo_gateway_events_rejected_total", "counter", "VWO items refused in a 200's partial_success, by reason",
           _by("rejected", "reason")),
    Metric("vwo_gateway_events_throttled_total", "counter", "VWO items in requests answered 429 (the sender "
           "retries them)", _top("throttled_events")),
    Metric("vwo_gateway_backlog_events", "gauge", "VWO events held per account (queued, batched, in flight)",
           _per_account("backlog")),
    Metric("vwo_gateway_backlog_bytes", "gauge", "Memory the held events take, per account",
           _per_account("backlog_bytes")),
    Metric("vwo_gateway_backlog_max_events", "gauge", "The most events held per account (max_backlog times the "
           "workers; a worker past its share answers 429)", _per_account("max_backlog")),
    Metric("vwo_gateway_backlog_max_bytes", "gauge", "The most bytes held per account (max_backlog_bytes times the "
           "workers)", _per_account("max_backlog_bytes")),
    Metric("vwo_gateway_backlog_oldest_age_seconds", "gauge", "Age (by its own timestamp) of the oldest event "
           "held in memory, per account; 0 when none is", _per_account("oldest_age")),
    Metric("vwo_gateway_events_on_disk", "gauge", "VWO events waiting on disk (--spool) for VWO to answer again, "
           "per account", _per_account("on_disk")),
    Metric("vwo_gateway_vwo_request_duration_seconds", "histogram", "Duration of HTTP requests to VWO (each retry "
           "too), per account", _latency),
    Metric("vwo_gateway_vwo_requests_total", "counter", "HTTP requests to VWO per account and outcome (success, "
           "http_error, payload_too_large, network_error)", _per_account_by("vwo_requests", "outcome")),
    Metric("vwo_gateway_requests_total", "counter", "OTLP export requests received, by signal",
           _by("requests", "signal")),
    Metric("vwo_gateway_responses_total", "counter", "Answers to OTLP requests by HTTP status (429: a backlog "
           "full, 503: draining or overloaded)", _by("responses", "code")),
    Metric("vwo_gateway_workers", "gauge", "Worker processes serving the port", _top("workers")),
    Metric("vwo_gateway_workers_ready", "gauge", "Workers whose /readyz answers 200", _top("ready_workers")),
    Metric("vwo_gateway_workers_draining", "gauge", "Workers draining (stopping: 503 to new requests)",
           _top("draining_workers")),
)
#: Every metric family name ``/metrics`` shows.
NAMES = frozenset(m.name for m in METRICS)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(stats: dict[str, Any]) -> bytes:
    """The snapshot as Prometheus text."""
    lines = []
    for metric in METRICS:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for suffix, labels, value in metric.samples(stats):
            lines.append(f"{metric.name}{suffix}{_labels(labels)} {_number(value)}")
    return ("\n".join(lines) + "\n").encode()
