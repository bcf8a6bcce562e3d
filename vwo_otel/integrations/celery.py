"""Celery workers: deliver what each task emitted before the task is done, and what a worker
process still holds when it ends.

    # tasks.py, next to app = Celery(...)
    processor = vwo_otel.span_processor_from_env(...)
    vwo_otel.integrations.celery.instrument_worker(processor)

Why: a prefork pool's child processes end through billiard, which runs neither ``atexit`` nor
``multiprocessing``'s finalizers, so a child's queue would be lost at a warm shutdown (or when
``worker_max_tasks_per_child`` recycles it). ``instrument_worker`` connects

* ``task_postrun`` (``per_task=True``, the default): after every task, ``force_flush`` within
  ``timeout`` seconds, so a task's events are at VWO before the worker takes its next task (a
  worker killed later, even with SIGKILL, has lost nothing). Costs one VWO round trip per task
  that emitted; ``per_task=False`` leaves delivery to the processor's batching;
* ``worker_process_shutdown`` (a prefork child ending) and ``worker_shutdown`` (the worker
  ending: ``--pool=solo`` / ``threads`` run tasks in it): ``shutdown()`` of each processor,
  bounded by its ``shutdown_timeout``.

Pools: ``prefork`` (the default) needs the shutdown hook; fork safety holds already (a child
starts with an empty queue and its own threads). ``solo`` and ``threads`` run tasks in the
worker process, whose exit delivers through ``atexit`` too; the hook makes it explicit and
bounded. With ``threads``, one task's flush also delivers what concurrent tasks queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..processor import VWOProcessor

logger = logging.getLogger("vwo_otel")

__all__ = ["instrument_worker"]


def instrument_worker(*processors: VWOProcessor, per_task: bool = True, timeout: float = 10.0) -> Callable[[], None]:
    """Connect Celery's worker signals to ``processors`` (see the module doc); returns a function
    that disconnects them again."""
    from celery import signals  # type: ignore[import-untyped]  # only here: vwo_otel does not need Celery

    if not processors or not all(isinstance(p, VWOProcessor) for p in processors):
        raise TypeError("instrument_worker takes one or more VWOSpanProcessor / VWOLogRecordProcessor")
    timeout_millis = int(timeout * 1000)
    if timeout_millis <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")

    def after_task(**_: Any) -> None:
        for processor in processors:
            if not processor.force_flush(timeout_millis):
                logger.warning("not every VWO event of the task was delivered within %g s (see flush_callback "
                               "and processor.stats())", timeout)

    def at_exit(**_: Any) -> None:
        for processor in processors:
            processor.shutdown()

    connected = [(signals.worker_process_shutdown, at_exit), (signals.worker_shutdown, at_exit)]
    if per_task:
        connected.append((signals.task_postrun, after_task))
    for signal, handler in connected:
        signal.connect(handler, weak=False)

    def disconnect() -> None:
        for signal, handler in connected:
            signal.disconnect(handler)
    return disconnect
