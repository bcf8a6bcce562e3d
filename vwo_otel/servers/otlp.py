"""OTLP/HTTP payloads for the gateway: decode trace and log export requests, encode the answers.

Protobuf requests need the optional ``opentelemetry-proto`` package (``pip install
'vwo-otel[gateway]'``); OTLP/JSON is decoded with the standard library alone. Only what the
gateway needs is extracted: for every span / log record that carries ``vwo.event.type``,
its attributes (as plain Python values) and its event time in unix nanoseconds (a span's
start; a log record's ``vwo_otel.event.log_time``), grouped with the ``vwo.account_id`` of its
resource. Responses and error statuses are small fixed messages, encoded here by hand in
either format.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import attributes as A
from ..event import log_time

TRACES = "traces"
LOGS = "logs"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
#: Media types accepted for each encoding (parameters such as charset are ignored).
MEDIA_TYPES = {"application/x-protobuf": PROTOBUF, "application/protobuf": PROTOBUF, "application/json": JSON}
#: The attribute (on the span / log record, else on its resource) naming the VWO account.
ACCOUNT_ID = "vwo.account_id"

_EVENT_TYPE = A.EVENT_TYPE
#: Ranges of OTLP's integer fields: ``intValue`` is int64, times are fixed64.
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
#: How deep attribute values may nest (arrays / key-value lists): protobuf decoders stop at
#: about this depth too, and past it a recursive decoder would exhaust the stack.
MAX_VALUE_DEPTH = 32

_PB_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError)
try:  # the optional [gateway] extra
    from google.protobuf.message import DecodeError as _PbDecodeError
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as _logs_pb2
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as _trace_pb2

    _PB_ERRORS = (_PbDecodeError, ValueError, TypeError)
except ImportError:  # pragma: no cover - exercised by monkeypatching in tests
    _trace_pb2 = _logs_pb2 = None  # type: ignore[assignment]



class DecodeError(ValueError):
    """The body is not a valid OTLP export request of the expected signal."""


class Item(NamedTuple):
    """One span / log record carrying ``vwo.event.type``: its attributes as plain Python
    values and its event time in unix ns (0: none given)."""

    attributes: dict[str, Any]
    time_ns: int


class Group(NamedTuple):
    """The VWO items of one resource, with the resource's ``vwo.account_id`` (None if absent)."""

    account: Any
    items: list[Item]


@dataclass(frozen=True)
class Decoded:
    """What the gateway needs from one export request."""

    groups: list[Group]  #: VWO items by resource
    items: int  #: spans / log records in the request, VWO or not

    @property
    def vwo_items(self) -> int:
        """Number of spans / log records carrying ``vwo.event.type``."""
        return sum(len(group.items) for group in self.groups)


def protobuf_available() -> bool:
    """True when ``opentelemetry-proto`` is installed (protobuf requests can be decoded)."""
    return _trace_pb2 is not None and _logs_pb2 is not None


def decode(signal: str, media_type: str, body: bytes) -> Decoded:
    """Decode an ``ExportTraceServiceRequest`` / ``ExportLogsServiceRequest``; raises ``DecodeError``."""
    if media_type != JSON and not protobuf_available():
        raise RuntimeError("protobuf support needs opentelemetry-proto: pip install 'vwo-otel[gateway]'")
    try:
        return _decode_json(signal, body) if media_type == JSON else _decode_proto(signal, body)
    except RecursionError:  # nesting the depth checks did not foresee: still the sender's fault
        raise DecodeError("body nests values too deeply") from None


# -- protobuf ---------------------------------------------------------------------------------

def _pb_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(_pb_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _pb_find(attrs: Any, key: str) -> Any:
    for kv in attrs:
        if kv.key == key:
            return _pb_value(kv.value)
    return None


def _decode_proto(signal: str, body: bytes) -> Decoded:
    try:
        if signal == TRACES:
            request: Any = _trace_pb2.ExportTraceServiceRequest.FromString(body)
        else:
            request = _logs_pb2.ExportLogsServiceRequest.FromString(body)
    except _PB_ERRORS as exc:
        raise DecodeError(f"body is not a protobuf Export{'Trace' if signal == TRACES else 'Logs'}"
                          f"ServiceRequest: {exc}") from None
    if signal == TRACES:
        resources, scopes, items = request.resource_spans, "scope_spans", "spans"

        def stamp(item: Any) -> int:
            return int(item.start_time_unix_nano)
    else:
        resources, scopes, items = request.resource_logs, "scope_logs", "log_records"

        def stamp(item: Any) -> int:
            return log_time(item.time_unix_nano, item.observed_time_unix_nano) or 0
    groups: list[Group] = []
    n = 0
    for resource in resources:
        found: list[Item] = []
        for scope in getattr(resource, scopes):
            records = getattr(scope, items)
            n += len(records)
            for rec in records:
                attrs = rec.attributes
                for kv in attrs:
                    if kv.key == _EVENT_TYPE:
                        found.append(Item({kv.key: _pb_value(kv.value) for kv in attrs}, stamp(rec)))
                        break
        if found:
            groups.append(Group(_pb_find(resource.resource.attributes, ACCOUNT_ID), found))
    return Decoded(groups, n)


# -- JSON (OTLP/JSON: lowerCamelCase keys, int64 as string or number, ids in hex) ---------------

def _j_field(obj: Any, camel: str, snake: str, what: str) -> Any:
    if type(obj) is not dict:
        raise DecodeError(f"{what} must be a JSON object")
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _j_list(obj: Any, camel: str, snake: str, what: str) -> list[Any]:
    value = _j_field(obj, camel, snake, what)
    if value is None:
        return []
    if type(value) is not list:
        raise DecodeError(f"{what}.{camel} must be an array")
    return value


def _j_int(value: Any, what: str, bounds: tuple[int, int] = INT64) -> int:
    """An OTLP/JSON integer (number or decimal string) within ``bounds`` (int64 or fixed64)."""
    if value is None:
        return 0
    number: int | None = None
    if type(value) is int:
        number = value
    elif type(value) is str and len(value) <= 21:  # a longer decimal cannot fit 64 bits
        try:
            number = int(value)
        except ValueError:
            pass
    elif type(value) is float and value.is_integer():
        number = int(value)
    if number is None:
        raise DecodeError(f"{what} must be an integer (number or decimal string), got {shorten(value)}")
    if not bounds[0] <= number <= bounds[1]:
        raise DecodeError(f"{what} must be an integer from {bounds[0]} to {bounds[1]}, got {shorten(number)}")
    return number


def shorten(value: Any) -> str:
    """``repr(value)`` cut to a readable length for an error message (a huge int by its digit count)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**60 else f"an int of {len(str(value))} digits"
    return text if len(text) <= 80 else text[:77] + "..."


_DOUBLE_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _j_value(value: Any, depth: int = 0) -> Any:
    """An ``AnyValue`` as a Python value (int, float, str, bool, bytes, tuple, dict or None)."""
    if value is None:
        return None
    if type(value) is not dict:
        raise DecodeError(f"attribute value must be a JSON object such as {{\"stringValue\": \"x\"}}, "
                          f"got {shorten(value)}")
    if depth >= MAX_VALUE_DEPTH:
        raise DecodeError(f"attribute values nest deeper than {MAX_VALUE_DEPTH} levels")
    for key, v in value.items():
        if key in ("stringValue", "string_value"):
            if type(v) is not str:
                raise DecodeError(f"stringValue must be a string, got {shorten(v)}")
            return v
        if key in ("intValue", "int_value"):
            return _j_int(v, "intValue")
        if key in ("doubleValue", "double_value"):
            if type(v) in (int, float):
                return float(v)
            if type(v) is str and v in _DOUBLE_WORDS:
                return _DOUBLE_WORDS[v]
            raise DecodeError(f"doubleValue must be a number, got {shorten(v)}")
        if key in ("boolValue", "bool_value"):
            if type(v) is not bool:
                raise DecodeError(f"boolValue must be true or false, got {shorten(v)}")
            return v
        if key in ("arrayValue", "array_value"):
            return tuple(_j_value(x, depth + 1) for x in _j_list(v, "values", "values", "arrayValue"))
        if key in ("kvlistValue", "kvlist_value"):
            return _j_attrs(_j_list(v, "values", "values", "kvlistValue"), depth + 1)
        if key in ("bytesValue", "bytes_value"):
            try:
                return base64.b64decode(v, validate=True)
            except (ValueError, TypeError):
                raise DecodeError(f"bytesValue must be base64, got {shorten(v)}") from None
    return None


def _j_attrs(kvs: Sequence[Any], depth: int = 0) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        if type(kv) is not dict or type(kv.get("key")) is not str:
            raise DecodeError(f"attribute must be {{\"key\": ..., \"value\": ...}}, got {shorten(kv)}")
        out[kv["key"]] = _j_value(kv.get("value"), depth)
    return out


def _j_has_type(kvs: list[Any]) -> bool:
    for kv in kvs:
        if type(kv) is dict and kv.get("key") == _EVENT_TYPE:
            return True
    return False


def _j_resource_account(parent: dict[str, Any]) -> Any:
    resource = _j_field(parent, "resource", "resource", "resource")
    if resource is None:
        return None
    for kv in _j_list(resource, "attributes", "attributes", "resource"):
        if type(kv) is dict and kv.get("key") == ACCOUNT_ID:
            return _j_value(kv.get("value"))
    return None


def _decode_json(signal: str, body: bytes) -> Decoded:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise DecodeError("body nests JSON arrays / objects too deeply") from None
    if type(doc) is not dict:
        raise DecodeError("body must be a JSON object")
    if signal == TRACES:
        outer, outer_s, scope, scope_s, leaf, leaf_s = (
            "resourceSpans", "resource_spans", "scopeSpans", "scope_spans", "spans", "spans")
    else:
        outer, outer_s, scope, scope_s, leaf, leaf_s = (
            "resourceLogs", "resource_logs", "scopeLogs", "scope_logs", "logRecords", "log_records")
    groups: list[Group] = []
    n = 0
    for rs in _j_list(doc, outer, outer_s, "request"):
        found: list[Item] = []
        for ss in _j_list(rs, scope, scope_s, outer):
            items = _j_list(ss, leaf, leaf_s, scope)
            n += len(items)
            for item in items:
                kvs = _j_list(item, "attributes", "attributes", leaf)
                if not _j_has_type(kvs):
                    continue
                if signal == TRACES:
                    stamp = _j_int(_j_field(item, "startTimeUnixNano", "start_time_unix_nano", leaf),
                                   "startTimeUnixNano", UINT64)
                else:
                    stamp = log_time(
                        _j_int(_j_field(item, "timeUnixNano", "time_unix_nano", leaf), "timeUnixNano", UINT64),
                        _j_int(_j_field(item, "observedTimeUnixNano", "observed_time_unix_nano", leaf),
                               "observedTimeUnixNano", UINT64)) or 0
                found.append(Item(_j_attrs(kvs), stamp))
        if found:
            groups.append(Group(_j_resource_account(rs), found))
    return Decoded(groups, n)


# -- encoding answers ----------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int32/int64 are ten-byte two's complement on the wire
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pb_string(field: int, text: str) -> bytes:
    data = text.encode("utf-8")
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def encode_response(signal: str, media_type: str, rejected: int = 0, message: str = "") -> bytes:
    """An ``ExportTraceServiceResponse`` / ``ExportLogsServiceResponse``; ``partial_success``
    is set only when something was rejected or there is a message (as the spec requires)."""
    if media_type == JSON:
        if not rejected and not message:
            return b"{}"
        key = "rejectedSpans" if signal == TRACES else "rejectedLogRecords"
        partial: dict[str, str] = {}
        if rejected:
            partial[key] = str(rejected)  # int64 is a decimal string in proto3 JSON
        if message:
            partial["errorMessage"] = message
        return json.dumps({"partialSuccess": partial}, separators=(",", ":")).encode()
    if not rejected and not message:
        return b""
    inner = b""
    if rejected:
        inner += b"\x08" + _varint(rejected)  # field 1: rejected_spans / rejected_log_records (int64)
    if message:
        inner += _pb_string(2, message)  # field 2: error_message
    return b"\x0a" + _varint(len(inner)) + inner  # field 1: partial_success


#: gRPC status codes used in error answers (``google.rpc.Status.code``).
INVALID_ARGUMENT = 3
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16


def encode_status(media_type: str | None, code: int, message: str) -> tuple[bytes, str]:
    """The body of an error answer: a ``google.rpc.Status`` in the request's encoding
    (plain text when the request's media type is not one we speak). Returns (body, content type)."""
    if media_type == JSON:
        return json.dumps({"code": code, "message": message}, separators=(",", ":")).encode(), JSON
    if media_type == PROTOBUF:
        return (b"\x08" + _varint(code) if code else b"") + _pb_string(2, message), PROTOBUF
    return message.encode("utf-8"), "text/plain; charset=utf-8"


class TooLarge(ValueError):
    """The body (or what it inflates to) is larger than allowed."""


class UnsupportedEncoding(ValueError):
    """A ``Content-Encoding`` the gateway cannot decode."""


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, deflate) with at most ``limit`` bytes out;
    raises ``UnsupportedEncoding``, ``TooLarge`` or ``DecodeError``."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity", "none"):
        return body
    if enc in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, limit, enc)
    if enc == "deflate":  # RFC 9110 says zlib-wrapped; some senders send raw deflate
        try:
            return _inflate(body, zlib.MAX_WBITS, limit, enc)
        except DecodeError:
            return _inflate(body, -zlib.MAX_WBITS, limit, enc)
    raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported (use gzip, deflate or none)")


def _inflate(data: bytes, wbits: int, limit: int, enc: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    try:
        while True:
            d = zlib.decompressobj(wbits)
            out = d.decompress(data, limit + 1 - total)
            total += len(out)
            if total > limit or d.unconsumed_tail:
                raise TooLarge(f"body inflates to more than {limit} bytes")
            if not d.eof:
                raise DecodeError(f"{enc} body is truncated")
            parts.append(out)
            data = d.unused_data
            if not data or wbits <= zlib.MAX_WBITS:  # only gzip has several members
                return b"".join(parts)
    except zlib.error as exc:
        raise DecodeError(f"body is not valid {enc}: {exc}") from None
