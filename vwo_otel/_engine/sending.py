"""One batch to the exporter, from a delivery thread: in batches or event by event (real-time),
and what to report when sending fails unexpectedly (a bug, or an event the encoder cannot take)."""

from __future__ import annotations

from ..errors import Outcome, VWODeliveryError
from ..event import VWOEvent
from ..export.exporter import VWOExporter
from .settle import LogLimiter


def send(exporter: VWOExporter, realtime: bool, batch: list[VWOEvent],
         deadline: float | None = None) -> list[Outcome]:
    """The batch's outcomes, by ``deadline`` (monotonic) if given, else within the retry
    budget (may raise on a bug: see ``salvage``). Their events follow the batch's order: put
    it in ``in_send_order`` first."""
    if realtime:
        if deadline is None:
            return [exporter.send_event(ev) for ev in batch]
        return [exporter.send_event(ev, deadline) for ev in batch]
    if deadline is None:
        return exporter.send_batch(batch)
    return exporter.send_batch(batch, deadline)


def in_send_order(exporter: VWOExporter, realtime: bool, batch: list[VWOEvent]) -> list[VWOEvent]:
    """The batch in the order its outcomes list its events (one request per wire format), so a
    backlog settles each event with its own outcome; the batch itself when that is its order."""
    if realtime or len(batch) < 2:
        return batch
    return exporter.send_order(batch)


def salvage(exporter: VWOExporter, realtime: bool, batch: list[VWOEvent], exc: Exception,
            log: LogLimiter) -> list[Outcome]:
    """``send`` raised: events that cannot be encoded fail on their own, the others are sent
    once more; whatever happens, every event of the batch gets an outcome."""
    log.warn(("unexpected", type(exc).__name__), len(batch), "vwo_otel delivery failed unexpectedly: %r", exc,
             exc_info=True)
    good: list[VWOEvent] = []
    outcomes: list[Outcome] = []
    for ev in batch:
        try:
            exporter.encode([ev])
        except Exception as bad:
            outcomes.append(Outcome(VWODeliveryError(f"event cannot be encoded: {type(bad).__name__}: {bad}"),
                                    [ev.fields()]))
        else:
            good.append(ev)
    if not good:
        return outcomes
    if outcomes:  # the bad ones were the problem: send the rest
        try:
            return outcomes + send(exporter, realtime, good)
        except Exception as again:
            exc = again
    error = VWODeliveryError(f"unexpected {type(exc).__name__}: {exc}")
    return outcomes + [Outcome(error, exporter.encode(good))]
