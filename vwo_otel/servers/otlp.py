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
#: Default bound on the fields walked to find the resources, scopes and spans / log records of
#: one request (a handful per item; rotel and the Collector's batch processor send 8,192 items).
MAX_ITEMS = 100_000
#: A JSON request may hold this many values per item of ``max_items`` (objects, arrays and
#: comma-separated members, counted before parsing; a typical log record has about 70).
JSON_VALUES_PER_ITEM = 10
#: Largest VWO span / log record (and resource naming ``vwo.account_id``) decoded, in bytes:
#: VWO events are a few hundred bytes; this bounds what one message can cost to decode.
MAX_ITEM_BYTES = 1024 * 1024
_EVENT_TYPE_BYTES = A.EVENT_TYPE.encode()
_VWO_PREFIX = "vwo."  # the attributes the gateway reads (events and vwo.account_id)
_J_NESTED = ("arrayValue", "array_value", "kvlistValue", "kvlist_value")
_ACCOUNT_ID_BYTES = ACCOUNT_ID.encode()

_PB_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError)
try:  # the optional [gateway] extra
    from google.protobuf.message import DecodeError as _PbDecodeError
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord as _LogRecord
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource as _Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as _Span

    _PB_ERRORS = (_PbDecodeError, ValueError, TypeError)
except ImportError:  # pragma: no cover - exercised by monkeypatching in tests
    _LogRecord = _Resource = _Span = None  # type: ignore[assignment,misc]



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
    oversized: int = 0  #: VWO items not decoded: larger than ``MAX_ITEM_BYTES``

    @property
    def vwo_items(self) -> int:
        """Number of spans / log records carrying ``vwo.event.type`` (oversized ones included)."""
        return sum(len(group.items) for group in self.groups) + self.oversized


def protobuf_available() -> bool:
    """True when ``opentelemetry-proto`` is installed (protobuf requests can be decoded)."""
    return _Span is not None and _LogRecord is not None and _Resource is not None


def decode(signal: str, media_type: str, body: bytes | bytearray, max_items: int = MAX_ITEMS) -> Decoded:
    """Decode an ``ExportTraceServiceRequest`` / ``ExportLogsServiceRequest``; raises ``DecodeError``,
    or ``TooLarge`` for more than ``max_items`` resources, scopes and items (JSON: values), checked
    before the body is decoded, so a small body of millions of empty messages costs no memory."""
    if media_type != JSON and not protobuf_available():
        raise RuntimeError("protobuf support needs opentelemetry-proto: pip install 'vwo-otel[gateway]'")
    try:
        if media_type == JSON:
            return _decode_json(signal, body, max_items)
        return _decode_proto(signal, body, max_items)
    except RecursionError:  # nesting the depth checks did not foresee: still the sender's fault
        raise DecodeError("body nests values too deeply") from None


# -- protobuf ---------------------------------------------------------------------------------

def _pb_scalar(value: Any) -> Any:
    """A ``vwo.*`` attribute's value: every one the gateway reads is a scalar, so an array or
    key-value list is not converted (it would cost memory in proportion to its nesting) but
    becomes ``()``, which every VWO field check refuses."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    return () if kind in ("array_value", "kvlist_value") else getattr(value, kind)


def _pb_find(attrs: Any, key: str) -> Any:
    for kv in attrs:
        if kv.key == key:
            return _pb_scalar(kv.value)
    return None


def _read_varint(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """A base-128 varint at ``pos``: (value, position after it)."""
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise DecodeError("body is not valid protobuf: a varint runs past its message")


def _submessages(data: bytes | bytearray, pos: int, end: int, wanted: tuple[int, ...], budget: list[int],
                 ) -> list[tuple[int, int, int]]:
    """The length-delimited fields numbered ``wanted`` in the message ``data[pos:end]`` as
    (field, start, stop), other fields skipped without decoding. Each field walked costs one
    unit of ``budget[0]``; past it ``TooLarge`` (so a body of millions of empty messages is
    refused after a bounded walk)."""
    found: list[tuple[int, int, int]] = []
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        number, wire = key >> 3, key & 7
        budget[0] -= 1
        if budget[0] < 0:
            raise TooLarge(f"body holds more than {budget[1]} resources, scopes, items and their fields")
        if wire == 0:
            _, pos = _read_varint(data, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _read_varint(data, pos, end)
            if number in wanted:
                found.append((number, pos, pos + size))
            pos += size
        else:
            raise DecodeError(f"body is not valid protobuf: wire type {wire} in field {number}")
        if number == 0 or pos > end:
            raise DecodeError("body is not valid protobuf: a field runs past its message")
    return found


def _decode_proto(signal: str, body: bytes | bytearray, max_items: int) -> Decoded:
    """Walk resources, scopes and items without decoding them (bounded by ``max_items``); decode
    only items whose bytes name ``vwo.event.type`` (each at most ``MAX_ITEM_BYTES``) and the
    resources of those that name ``vwo.account_id``: memory stays proportional to the VWO items."""
    if signal == TRACES:
        item_type: Any = _Span

        def stamp(item: Any) -> int:
            return int(item.start_time_unix_nano)
    else:
        item_type = _LogRecord

        def stamp(item: Any) -> int:
            return log_time(item.time_unix_nano, item.observed_time_unix_nano) or 0
    budget = [max_items, max_items]
    groups: list[Group] = []
    n = oversized = 0
    try:
        for _, rs, re_ in _submessages(body, 0, len(body), (1,), budget):
            found: list[Item] = []
            resource: tuple[int, int] | None = None
            for number, ss, se in _submessages(body, rs, re_, (1, 2), budget):
                if number == 1:
                    resource = (ss, se)
                    continue
                for _, start, stop in _submessages(body, ss, se, (2,), budget):
                    n += 1
                    if body.find(_EVENT_TYPE_BYTES, start, stop) < 0:
                        continue
                    if stop - start > MAX_ITEM_BYTES:
                        oversized += 1
                        continue
                    rec = item_type.FromString(body[start:stop])
                    attrs = rec.attributes
                    for kv in attrs:
                        if kv.key == _EVENT_TYPE:  # only vwo.* values become Python objects
                            found.append(Item({kv.key: _pb_scalar(kv.value) for kv in attrs
                                               if kv.key.startswith(_VWO_PREFIX)}, stamp(rec)))
                            break
            if not found:
                continue
            account = None
            if resource is not None and body.find(_ACCOUNT_ID_BYTES, *resource) >= 0:
                if resource[1] - resource[0] > MAX_ITEM_BYTES:
                    raise TooLarge(f"a resource of {resource[1] - resource[0]} bytes is larger than {MAX_ITEM_BYTES}")
                account = _pb_find(_Resource.FromString(body[resource[0]:resource[1]]).attributes, ACCOUNT_ID)
            groups.append(Group(account, found))
    except _PB_ERRORS as exc:
        if isinstance(exc, (TooLarge, DecodeError)):
            raise
        raise DecodeError(f"body is not a protobuf Export{'Trace' if signal == TRACES else 'Logs'}"
                          f"ServiceRequest: {exc}") from None
    return Decoded(groups, n, oversized)


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
                try:
                    return float(v)
                except OverflowError:  # an integer of hundreds of digits
                    raise DecodeError(f"doubleValue out of range, got {shorten(v)}") from None
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


def _j_attrs(kvs: Sequence[Any], depth: int = 0, vwo_only: bool = False) -> dict[str, Any]:
    """Attributes as a dict; ``vwo_only``: only the ``vwo.*`` ones (what the gateway reads)."""
    out = {}
    for kv in kvs:
        if type(kv) is not dict or type(kv.get("key")) is not str:
            raise DecodeError(f"attribute must be {{\"key\": ..., \"value\": ...}}, got {shorten(kv)}")
        if vwo_only:  # as _pb_scalar: only vwo.* attributes, nested values as ()
            if not kv["key"].startswith(_VWO_PREFIX):
                continue
            value = kv.get("value")
            if type(value) is dict and any(k in _J_NESTED for k in value):
                out[kv["key"]] = ()
                continue
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
            return _j_attrs([kv], vwo_only=True)[ACCOUNT_ID]
    return None


def _decode_json(signal: str, body: bytes | bytearray, max_items: int) -> Decoded:
    values = body.count(b"{") + body.count(b"[") + body.count(b",")  # >= the values json.loads would build
    if values > max_items * JSON_VALUES_PER_ITEM:
        raise TooLarge(f"JSON body holds more than {max_items * JSON_VALUES_PER_ITEM} values; send smaller "
                       "batches or OTLP/protobuf")
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
                found.append(Item(_j_attrs(kvs, vwo_only=True), stamp))
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


_INFLATE_STEP = 1024 * 1024


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes | bytearray:
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


def _inflate(data: bytes, wbits: int, limit: int, enc: str) -> bytearray:
    """Inflate in bounded steps into one growing buffer: the peak is about the output itself
    (never output blocks plus their joined copy), and it stops one step past ``limit``."""
    out = bytearray()
    try:
        while True:
            d = zlib.decompressobj(wbits)
            while not d.eof:
                chunk = d.decompress(data, _INFLATE_STEP)
                data = d.unconsumed_tail
                if not chunk and not data:
                    raise DecodeError(f"{enc} body is truncated")
                out += chunk
                if len(out) > limit:
                    raise TooLarge(f"body inflates to more than {limit} bytes")
            data = d.unused_data
            if not data or wbits <= zlib.MAX_WBITS:  # only gzip has several members
                return out
    except zlib.error as exc:
        raise DecodeError(f"body is not valid {enc}: {exc}") from None
