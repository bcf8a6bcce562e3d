"""The gateway's figures beyond what the batcher counts, and one view of several workers.

``Delivery`` (one per account): failed events by reason, HTTP requests to VWO by outcome and
their durations (a histogram on ``metrics.DURATION_BUCKETS``), fed by the batcher's results
and the exporter's observer. ``Peers``: worker processes serving one port each publish their
``/stats`` snapshot to a directory they share (every ``PUBLISH_INTERVAL`` s, and at stop), so
whichever worker answers ``/stats`` or ``/metrics`` answers for all (``merge``); a worker that
is gone is ``retire``d: its counters stay in the sums, its gauges (what it held) leave them.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from ...errors import EventsDropped
from ...metrics import DURATION_BUCKETS, request_outcome

logger = logging.getLogger("vwo_otel")

#: Seconds between a worker's publications of its snapshot (how stale a peer's figures may be).
PUBLISH_INTERVAL = 1.0
#: Keys (anywhere in a snapshot) that say what a worker holds now, not what it did: summed
#: over live workers, zero for one that is gone.
GAUGES = frozenset({"backlog", "backlog_bytes", "on_disk", "oldest_age", "workers", "ready_workers",
                    "draining_workers"})
#: Gauges merged by their largest value rather than summed (``max_backlog`` and
#: ``max_backlog_bytes`` are summed: each worker holds that much, so the port holds their sum).
_LARGEST = frozenset({"oldest_age"})
#: The histogram's bucket keys: the upper bounds, then "+Inf".
BUCKETS = tuple(f"{b:g}" for b in DURATION_BUCKETS) + ("+Inf",)


class Delivery:
    """One account's delivery figures (thread-safe): ``settled`` is part of its batcher's
    results callback, ``observe`` its exporter's observer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failed_by: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self._buckets = [0] * len(BUCKETS)
        self._sum = 0.0

    def settled(self, err: BaseException | None, events: list[Any]) -> None:
        """A batch's result: its failed events by the error's ``reason`` (drops are the batcher's)."""
        if err is None or isinstance(err, EventsDropped):
            return
        reason = str(getattr(err, "reason", "delivery_failed"))
        with self._lock:
            self.failed_by[reason] = self.failed_by.get(reason, 0) + len(events)

    def observe(self, method: str, events: int, nbytes: int, status: int | None, error: BaseException | None,
                seconds: float) -> None:
        """One HTTP request to VWO (each retry too): its outcome and duration."""
        outcome = request_outcome(status)
        i = next((i for i, bound in enumerate(DURATION_BUCKETS) if seconds <= bound), len(DURATION_BUCKETS))
        with self._lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1
            self._buckets[i] += 1
            self._sum += seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"failed_by": dict(self.failed_by), "vwo_requests": dict(self.requests),
                    "vwo_request_seconds": {"buckets": dict(zip(BUCKETS, self._buckets, strict=True)),
                                            "sum": self._sum, "count": sum(self._buckets)}}


def _merge(a: Any, b: Any, key: str = "") -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _merge(a.get(k), b.get(k), k) for k in {**a, **b}}
    if key in _LARGEST:
        return max(a, b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    return a


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' ``/stats`` as one: counters, gauges and the backlogs' bounds summed (the
    oldest event's age: the largest)."""
    out: dict[str, Any] = {}
    for snapshot in snapshots:
        out = _merge(out, snapshot) if out else snapshot
    return out


def retire(snapshot: Any, key: str = "") -> Any:
    """A snapshot of a worker that is gone: its counters as they were, its gauges zero."""
    if isinstance(snapshot, dict):
        return {k: retire(v, k) for k, v in snapshot.items()}
    if key in GAUGES and isinstance(snapshot, (int, float)):
        return 0
    return snapshot


class Peers:
    """The directory worker processes share their snapshots in: ``worker-<pid>.json`` for a
    live worker, ``retired-<pid>.json`` for one that is gone."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, kind: str, pid: int) -> str:
        return os.path.join(self.directory, f"{kind}-{pid}.json")

    def publish(self, snapshot: dict[str, Any], pid: int | None = None) -> None:
        """Replace this worker's snapshot (atomically: a reader sees the old one or the new one)."""
        pid = os.getpid() if pid is None else pid
        tmp = self._path(".tmp", pid)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(snapshot, f, separators=(",", ":"))
            os.replace(tmp, self._path("worker", pid))
        except OSError as exc:
            logger.debug("vwo_otel gateway: cannot publish this worker's figures in %s: %s", self.directory, exc)

    def _load(self, path: str) -> dict[str, Any] | None:
        try:
            with open(path, encoding="utf-8") as f:
                return dict(json.load(f))
        except (OSError, ValueError):
            return None

    def gather(self, own: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every worker's snapshot merged; ``own``, fresh, instead of this process's published one."""
        mine = self._path("worker", os.getpid())
        found = [s for path in sorted(glob.glob(os.path.join(self.directory, "*.json")))
                 if (own is None or path != mine) and (s := self._load(path)) is not None]
        return merge([*([own] if own is not None else []), *found])

    def retire(self, pid: int) -> None:
        """Worker ``pid`` is gone: keep what it counted, not what it held."""
        path = self._path("worker", pid)
        snapshot = self._load(path)
        if snapshot is not None:
            retired = self._path("retired", pid)
            with open(retired + ".tmp", "w", encoding="utf-8") as f:
                json.dump(retire(snapshot), f, separators=(",", ":"))
            os.replace(retired + ".tmp", retired)
        with contextlib.suppress(OSError):
            os.remove(path)
