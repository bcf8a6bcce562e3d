"""The wire-format seam: what every VWO wire format provides (``Format``; the table of them is
``formats.FORMATS``), and what the formats share: VWO's visitor uuid, compact JSON, visitor
headers, the ``{"ev": [...]}`` batch body and cutting a batch by bytes.

A format turns the events of its rows (``event_types``) into wire dicts and bytes for one
account and sdk key, names its batch request, and builds the real-time request of one event.
``VWOExporter`` picks each event's format from its row: one processor may carry both.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from hashlib import sha1
from typing import Any, NamedTuple, Protocol

from ..event import VWOEvent

VWO_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://vwo.com")
#: Compact JSON; NaN and infinities, which are not JSON, raise (the event fails alone, never its batch).
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_quote = json.encoder.encode_basestring_ascii  # what _dumps uses for strings (ensure_ascii)
_float_repr = float.__repr__  # what _dumps uses for finite floats
BODY_OVERHEAD = len('{"ev":[]}')


class Request(NamedTuple):
    """One HTTP request to VWO: ``path`` (after the endpoint), ``query`` (URL-encoded by the
    exporter), headers and body (None for a GET)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes | None = None


class Format(Protocol):
    """One VWO wire format, bound to one account and sdk key."""

    name: str
    batch: Request  # the batch request without its body (path, query, headers)

    def encode(self, events: Sequence[VWOEvent]) -> tuple[list[dict[str, Any]], list[bytes]]:
        """Wire dicts as reports show them (``flush_callback``: no sdk key in them) and the bytes
        sent, one per event (so batches can be cut, split and resent by bytes)."""

    def event_dict(self, event: VWOEvent) -> dict[str, Any]:
        """The event as it goes into the batch body (with the sdk key where the format carries it)."""

    def realtime(self, event: VWOEvent) -> Request:
        """The real-time (unbatched) request for one event."""

    def accepted(self, events: Sequence[dict[str, Any]]) -> None:
        """VWO accepted a request holding ``events`` (what a format sends only until then)."""


def visitor_uuid(account_id: object, user_id: object) -> str:
    """VWO's visitor id ``u`` (FME: ``visId``): uppercase hex of uuid5(uuid5(VWO_NS, account), user)."""
    return uuid.uuid5(uuid.uuid5(VWO_NAMESPACE, str(account_id)), str(user_id)).hex.upper()


#: Visitor uuids each account's hasher keeps (a bound, not an LRU: when full it starts afresh;
#: a miss costs a little less than under ``lru_cache``, a hit about the same).
VISITOR_CACHE = 65536
#: Longer user ids are hashed each time, never kept: the bound above counts entries, and 65,536
#: ids of 64 KiB would hold 4 GiB (a lookup hashes the id too, so a long one saves little).
VISITOR_CACHE_ID_CHARS = 256


def visitor_hasher(account_id: int) -> Callable[[str], str]:
    """``visitor_uuid(account_id, user_id)`` for one account, without building UUID objects; a
    user id seen lately (a visitor's impressions and conversions share it) is one dict lookup."""
    prefix = uuid.uuid5(VWO_NAMESPACE, str(account_id)).bytes
    cache: dict[str, str] = {}

    def visitor(user_id: str) -> str:
        u = cache.get(user_id)
        if u is None:
            # uuid.uuid5(namespace, user_id).hex.upper() without building UUID objects
            h = bytearray(sha1(prefix + user_id.encode("utf-8")).digest()[:16])
            h[6] = (h[6] & 0x0F) | 0x50  # version 5
            h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
            u = h.hex().upper()
            if len(user_id) <= VISITOR_CACHE_ID_CHARS:
                if len(cache) >= VISITOR_CACHE:
                    cache.clear()
                cache[user_id] = u
        return u

    return visitor


def visitor_of(event: VWOEvent, account_id: int, hashed: Callable[[str], str]) -> str:
    """The event's visitor id: the one computed upstream (only into its own account's requests:
    it is a hash of that account id), else the hash of its user id."""
    if event.visitor_uuid is None:
        return hashed(event.user_id)
    if event.account_id != account_id:
        raise ValueError(f"an event of account {event.account_id} (vwo.account_id) cannot go into a request "
                         f"for account {account_id}: its visitor uuid belongs to its own account")
    return event.visitor_uuid


def compact(d: dict[str, Any]) -> bytes:
    """``_dumps(d).encode()`` for a flat dict with plain keys: formatted directly when every value
    is a str / int / finite float, byte for byte what the JSON encoder writes but without its
    per-call cost; anything else goes to the encoder."""
    out = []
    for k, v in d.items():
        t = type(v)
        if t is str:
            out.append(f'"{k}":{_quote(v)}')
        elif t is int:
            out.append(f'"{k}":{v}')
        elif t is float and -math.inf < v < math.inf:
            out.append(f'"{k}":{_float_repr(v)}')
        else:
            return _dumps(d).encode()
    return ("{" + ",".join(out) + "}").encode()


def header_safe(value: str) -> bool:
    """Whether a visitor value can travel in a header (else it goes in the query or body only)."""
    return value.isascii() and value.isprintable()


def visitor_headers(event: VWOEvent) -> dict[str, str]:
    """The visitor headers VWO reads first in a real-time request; a value no header can carry
    (non-ASCII, control characters) still reaches it in the query or body instead of failing."""
    headers = {}
    if event.visitor_ua and header_safe(event.visitor_ua):
        headers["X-Device-User-Agent"] = event.visitor_ua
    if event.visitor_ip and header_safe(event.visitor_ip):
        headers["VWO-X-Forwarded-For"] = event.visitor_ip
    return headers


def batch_body(parts: Sequence[bytes]) -> bytes:
    """``{"ev":[...]}`` from already-encoded events."""
    return b'{"ev":[' + b",".join(parts) + b"]}"


def cut_by_bytes(parts: Sequence[bytes], limit: int) -> list[tuple[int, int]]:
    """Split encoded events into [lo, hi) runs whose batch body stays within ``limit`` bytes.
    An event too large on its own gets a run of its own (the caller rejects it)."""
    n = len(parts)
    if n and BODY_OVERHEAD + sum(map(len, parts)) + n - 1 <= limit:  # the usual case: it all fits
        return [(0, n)]
    runs: list[tuple[int, int]] = []
    lo, size = 0, BODY_OVERHEAD
    for i, part in enumerate(parts):
        add = len(part) + (1 if i > lo else 0)
        if i > lo and size + add > limit:
            runs.append((lo, i))
            lo, size, add = i, BODY_OVERHEAD, len(part)
        size += add
    if lo < len(parts):
        runs.append((lo, len(parts)))
    return runs
