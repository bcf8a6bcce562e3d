"""VWO's wire format: visitor uuid, event dicts, the batch body and real-time query strings."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from functools import lru_cache
from typing import Callable

from . import attributes as A
from ._version import SDK_NAME, __version__
from .events import VWOEvent

VWO_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://vwo.com")
_dumps = json.JSONEncoder(separators=(",", ":")).encode
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
        namespace = uuid.uuid5(VWO_NAMESPACE, str(account_id))
        uuid5 = uuid.uuid5

        @lru_cache(maxsize=65536)
        def visitor(user_id: str) -> str:
            return uuid5(namespace, user_id).hex.upper()

        self.visitor: Callable[[str], str] = visitor

    def event_dict(self, ev: VWOEvent) -> dict:
        """The event as it goes into ``{"ev": [...]}``."""
        d: dict = {"u": self.visitor(ev.user_id), "sId": ev.time, "visitor_ua": ev.visitor_ua,
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

    def encode(self, events: Sequence[VWOEvent]) -> tuple[list[dict], list[bytes]]:
        """Wire dicts and their compact JSON, one per event (so batches can be cut by bytes)."""
        dicts = [self.event_dict(ev) for ev in events]
        return dicts, [_dumps(d).encode() for d in dicts]

    def realtime(self, ev: VWOEvent, sdk_key: str) -> tuple[str, dict[str, str], dict[str, str]]:
        """Path, query and extra headers of VWO's single-event GET for ``ev``."""
        query = {
            "random": repr(random.random()), "sdk": SDK_NAME, "sdk-v": __version__, "ap": "server",
            "sId": str(ev.time), "u": self.visitor(ev.user_id), "account_id": str(self.account_id),
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
        headers = {}
        if ev.visitor_ua:
            headers["X-Device-User-Agent"] = ev.visitor_ua
        if ev.visitor_ip:
            headers["VWO-X-Forwarded-For"] = ev.visitor_ip
        return path, query, headers


def batch_body(parts: Sequence[bytes]) -> bytes:
    """``{"ev":[...]}`` from already-encoded events."""
    return b'{"ev":[' + b",".join(parts) + b"]}"


def cut_by_bytes(parts: Sequence[bytes], limit: int) -> list[tuple[int, int]]:
    """Split encoded events into [lo, hi) runs whose batch body stays within ``limit`` bytes.
    An event too large on its own gets a run of its own (the caller rejects it)."""
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
