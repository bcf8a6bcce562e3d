"""VWO's wire format: visitor uuid, event dicts, the batch body and real-time query strings."""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Callable, Sequence
from functools import lru_cache
from hashlib import sha1
from typing import Any

from .. import attributes as A
from .._version import SDK_NAME, __version__
from ..event import VWOEvent

VWO_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://vwo.com")
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_quote = json.encoder.encode_basestring_ascii  # what _dumps uses for strings (ensure_ascii)
_float_repr = float.__repr__  # what _dumps uses for finite floats
BODY_OVERHEAD = len('{"ev":[]}')


def visitor_uuid(account_id: object, user_id: object) -> str:
    """VWO's visitor id ``u``: uppercase hex of uuid5(uuid5(VWO_NS, account), user)."""
    return uuid.uuid5(uuid.uuid5(VWO_NAMESPACE, str(account_id)), str(user_id)).hex.upper()


def dimension_tag(key: str, value: str) -> str:
    """The custom-dimension payload ``{"u": {key: value}}`` as a JSON string."""
    return _dumps({"u": {key: value}})


class Encoder:
    """Turns records into wire dicts and bytes for one account (visitor uuids are cached)."""

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id
        prefix = uuid.uuid5(VWO_NAMESPACE, str(account_id)).bytes

        @lru_cache(maxsize=65536)
        def visitor(user_id: str) -> str:
            # uuid.uuid5(namespace, user_id).hex.upper() without building UUID objects (3x faster)
            h = bytearray(sha1(prefix + user_id.encode("utf-8")).digest()[:16])
            h[6] = (h[6] & 0x0F) | 0x50  # version 5
            h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
            return h.hex().upper()

        self.visitor: Callable[[str], str] = visitor

    def event_dict(self, ev: VWOEvent) -> dict[str, Any]:
        """The event as it goes into ``{"ev": [...]}``."""
        u = self._u(ev) if ev.visitor_uuid else self.visitor(ev.user_id)  # one call for the usual events
        d: dict[str, Any] = {"u": u, "sId": ev.time, "visitor_ua": ev.visitor_ua,
                             "visitor_ip": ev.visitor_ip, "eT": ev.etype}
        if ev.etype == A.CUSTOM_DIMENSION:
            d["t"] = dimension_tag(ev.key or "", ev.value or "")
        else:
            d["e"] = ev.campaign_id
            d["c"] = ev.variation_id
            if ev.etype == A.GOAL:
                d["g"] = ev.goal_id
                if ev.revenue is not None:
                    d["r"] = ev.revenue
        return d

    def _u(self, ev: VWOEvent) -> str:
        """The event's visitor id: the one computed upstream (only into its own account's requests:
        it is a hash of that account id), else the hash of its user id."""
        if ev.visitor_uuid is None:
            return self.visitor(ev.user_id)
        if ev.account_id != self.account_id:
            raise ValueError(f"an event of account {ev.account_id} (vwo.account_id) cannot go into a request "
                             f"for account {self.account_id}: its visitor uuid belongs to its own account")
        return ev.visitor_uuid

    def encode(self, events: Sequence[VWOEvent]) -> tuple[list[dict[str, Any]], list[bytes]]:
        """Wire dicts and their compact JSON, one per event (so batches can be cut by bytes)."""
        dicts = [self.event_dict(ev) for ev in events]
        return dicts, [_compact(d) for d in dicts]

    def realtime(self, ev: VWOEvent, sdk_key: str) -> tuple[str, dict[str, str], dict[str, str]]:
        """Path, query and extra headers of VWO's single-event GET for ``ev``."""
        query = {
            "random": repr(random.random()), "sdk": SDK_NAME, "sdk-v": __version__, "ap": "server",
            "sId": str(ev.time), "u": self._u(ev), "account_id": str(self.account_id),
            "env": sdk_key, "visitor_ua": ev.visitor_ua, "visitor_ip": ev.visitor_ip,
        }
        if ev.etype == A.CUSTOM_DIMENSION:
            path = "/server-side/push"
            query["tags"] = dimension_tag(ev.key or "", ev.value or "")
        else:
            query["experiment_id"] = str(ev.campaign_id)
            query["combination"] = str(ev.variation_id)
            if ev.etype == A.VISITOR:
                path = "/server-side/track-user"
                query["ed"] = '{"p":"server"}'
            else:
                path = "/server-side/track-goal"
                query["goal_id"] = str(ev.goal_id)
                if ev.revenue is not None:
                    query["r"] = repr(ev.revenue)
        # VWO reads the visitor from these headers first; a value no header can carry (non-ASCII,
        # control characters) still reaches it in the query above, instead of failing the event.
        headers = {}
        if ev.visitor_ua and _header_safe(ev.visitor_ua):
            headers["X-Device-User-Agent"] = ev.visitor_ua
        if ev.visitor_ip and _header_safe(ev.visitor_ip):
            headers["VWO-X-Forwarded-For"] = ev.visitor_ip
        return path, query, headers


def _header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable()


def _compact(d: dict[str, Any]) -> bytes:
    """``_dumps(d).encode()`` for a dict made by ``Encoder.event_dict`` (keys in that order):
    formatted directly when every value is a plain str / int / finite float, byte for byte
    what the JSON encoder writes but without its per-call cost; anything else goes to it."""
    u, sid, ua, ip, et = d["u"], d["sId"], d["visitor_ua"], d["visitor_ip"], d["eT"]
    if type(u) is str and type(sid) is int and type(ua) is str and type(ip) is str and type(et) is int:
        head = f'{{"u":{_quote(u)},"sId":{sid},"visitor_ua":{_quote(ua)},"visitor_ip":{_quote(ip)},"eT":{et}'
        n = len(d)
        t = d.get("t")
        if n == 6 and type(t) is str:
            return f'{head},"t":{_quote(t)}}}'.encode()
        e, c = d.get("e"), d.get("c")
        if type(e) is int and type(c) is int:
            if n == 7:
                return f'{head},"e":{e},"c":{c}}}'.encode()
            g = d.get("g")
            if type(g) is int:
                if n == 8:
                    return f'{head},"e":{e},"c":{c},"g":{g}}}'.encode()
                r = d.get("r")
                if n == 9 and type(r) is int:
                    return f'{head},"e":{e},"c":{c},"g":{g},"r":{r}}}'.encode()
                if n == 9 and type(r) is float and -math.inf < r < math.inf:
                    return f'{head},"e":{e},"c":{c},"g":{g},"r":{_float_repr(r)}}}'.encode()
    return _dumps(d).encode()


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
