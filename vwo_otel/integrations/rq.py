"""RQ workers: deliver what each job emitted before its work horse ends.

    rq worker -w vwo_otel.integrations.rq.Worker          # instead of rq's default Worker

Why: RQ's default ``Worker`` runs every job in a forked "work horse" that ends with
``os._exit()`` (no ``atexit``, no finalizers), so events a job queued in vwo_otel would be lost
without a report. This ``Worker`` delivers them in the horse once the job is done: every live
VWO processor's queue (``vwo_otel.shutdown_all()``, bounded by its ``shutdown_timeout``), just
before the horse exits. The job is marked finished a moment earlier, so a horse killed in
between loses that job's events. ``rq.SimpleWorker`` runs jobs in the worker process itself:
it needs nothing (batching as usual; ``atexit`` delivers when the worker exits).
"""

from __future__ import annotations

from typing import Any

import rq

from .. import shutdown_all

__all__ = ["Worker"]


class Worker(rq.Worker):  # type: ignore[misc]
    """``rq.Worker`` whose work horse delivers its VWO events before it exits."""

    _vwo_otel_horse = False

    def main_work_horse(self, *args: Any, **kwargs: Any) -> Any:
        """The forked horse's entry point (it runs the job, then ``os._exit``)."""
        self._vwo_otel_horse = True
        return super().main_work_horse(*args, **kwargs)

    def perform_job(self, *args: Any, **kwargs: Any) -> bool:
        """The job, then (in a horse) the delivery of everything it queued."""
        try:
            return bool(super().perform_job(*args, **kwargs))
        finally:
            if self._vwo_otel_horse:
                shutdown_all()
