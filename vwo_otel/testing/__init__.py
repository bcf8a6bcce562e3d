"""Testing aids: the loopback VWO-compatible receiver (``Receiver``) that the demo, the
test suite and the benchmarks deliver to. It speaks VWO's batch and real-time endpoints,
checks each event as VWO would, stores what it accepted and can inject faults. Also the
request bodies a hostile OTLP sender posts (``hostile_bodies``), to test a gateway's bounds."""

from __future__ import annotations

import zlib
from typing import NamedTuple

from ..servers.otlp import JSON, PROTOBUF, _varint
from .receiver import Receiver

__all__ = ["HostileBody", "Receiver", "hostile_bodies"]


class HostileBody(NamedTuple):
    """One attack: what it is, where it goes (``/v1/traces`` or ``/v1/logs``), its gzip body and headers."""

    name: str
    path: str
    body: bytes
    headers: dict[str, str]


def _gzip_of(head: bytes, unit: bytes, total: int, tail: bytes = b"") -> bytes:
    """gzip of ``head + unit * n + tail`` (``len(unit) * n`` about ``total``), built in 1 MiB pieces."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = unit * (1024 * 1024 // len(unit))
    out = [c.compress(head)]
    out.extend(c.compress(chunk) for _ in range(total // len(chunk)))
    out += [c.compress(tail), c.flush()]
    return b"".join(out)


def hostile_bodies(inflated: int = 64 * 1024 * 1024) -> list[HostileBody]:
    """Small gzip bodies (about 0.1 % of what they inflate to) that cost a naive OTLP decoder
    gigabytes: JSON of millions of empty objects, protobuf of millions of empty resources,
    millions of empty log records in one scope, millions of fields no one knows."""
    gz_json = {"Content-Type": JSON, "Content-Encoding": "gzip"}
    gz_pb = {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}
    n = inflated // 4  # empty log records (2 bytes each) in one scope of one resource: half the size
    scope = b"\x12" + _varint(2 * n)  # ResourceLogs.scope_logs holding them
    return [
        HostileBody("JSON empty objects", "/v1/traces",
                    _gzip_of(b'{"resourceSpans":[', b"{},", inflated, b"{}]}"), gz_json),
        HostileBody("protobuf empty resources", "/v1/traces", _gzip_of(b"", b"\x0a\x00", inflated), gz_pb),
        HostileBody("protobuf empty log records", "/v1/logs",
                    _gzip_of(b"\x0a" + _varint(len(scope) + 2 * n) + scope, b"\x12\x00", 2 * n), gz_pb),
        HostileBody("protobuf unknown fields", "/v1/logs", _gzip_of(b"", b"\x12\x00", inflated // 2), gz_pb),
    ]
