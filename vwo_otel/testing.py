"""Testing aids: the loopback VWO-compatible receiver (``Receiver``) that the demo, the
test suite and the benchmarks deliver to. It speaks VWO's batch and real-time endpoints,
checks each event as VWO would, stores what it accepted and can inject faults."""

from .servers.receiver import Receiver

__all__ = ["Receiver"]
