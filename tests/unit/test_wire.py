"""VWO's wire format: visitor uuid, event dicts, batch bodies, cutting by bytes, real-time queries (no network)."""

from __future__ import annotations

import json
import math
import random

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import VWOExporter, visitor_uuid
from vwo_otel.event import VWOEvent
from vwo_otel.export.legacy import LegacyFormat, dimension_tag
from vwo_otel.export.wire import BODY_OVERHEAD, batch_body, compact, cut_by_bytes

COMMON_KEYS = {"eT", "u", "sId", "visitor_ua", "visitor_ip"}


BATCH = {"events_per_request": 100, "request_time_interval": 60}


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        ("Varun", "C4D95C097902569F9A2D2E87CD3201C8"),
        ("Alice", "E3B732864F315FB6974BC3EF4E2FD920"),
        ("__123__", "50A5B167FB6356A796F91D8951E480EE"),
    ],
)
def test_visitor_uuid_published_vectors(user_id, expected):
    assert visitor_uuid(12345, user_id) == expected
    assert visitor_uuid("12345", user_id) == expected  # account id as str or int: same visitor
    assert LegacyFormat(12345, SDK_KEY).visitor(user_id) == expected  # the cached path the exporter uses


def test_visitor_uuid_depends_on_account_and_user():
    assert visitor_uuid(12345, "Varun") != visitor_uuid(12346, "Varun")
    assert visitor_uuid(12345, "Varun") != visitor_uuid(12345, "varun")
    u = visitor_uuid(1, "x")
    assert len(u) == 32 and u == u.upper() and "-" not in u


def test_the_visitor_cache_bound_starts_afresh_and_stays_right(monkeypatch):
    from vwo_otel.export import wire

    monkeypatch.setattr(wire, "VISITOR_CACHE", 3)
    visitor = wire.visitor_hasher(ACCOUNT_ID)
    users = [f"user-{i}" for i in range(10)] * 2
    assert [visitor(u) for u in users] == [visitor_uuid(ACCOUNT_ID, u) for u in users]


def test_the_visitor_cache_does_not_keep_long_user_ids():
    """Its bound is in entries: 65,536 user ids of 64 KiB would hold 4 GiB after their events
    are gone (a gateway's sender chooses them). A long id is hashed, right, and not kept."""
    import gc
    import tracemalloc

    from vwo_otel.export import wire

    visitor = wire.visitor_hasher(ACCOUNT_ID)
    long_id = "x" * 65536
    assert visitor(long_id) == visitor_uuid(ACCOUNT_ID, long_id)
    tracemalloc.start()  # traces what is allocated from here on: the ids below
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100):
            visitor(f"{i:04d}{long_id}")  # each id is gone once hashed, unless the cache keeps it
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2**20, kept  # the cache kept 6.5 MB of them before


def test_encoder_output_is_compact():
    enc = LegacyFormat(ACCOUNT_ID, SDK_KEY)
    evs = [
        VWOEvent(1, "Varun", 1700000000, 1, 2),
        VWOEvent(2, "Varun", 1700000000, 1, 2, 3, 12.5),
        VWOEvent(3, "Varun", 1700000000, key="plan", value="pro"),
    ]
    dicts, parts = enc.encode(evs)
    body = batch_body(parts)
    assert json.loads(body) == {"ev": dicts}
    assert body == json.dumps({"ev": dicts}, separators=(",", ":")).encode()
    assert b" " not in body
    assert dimension_tag("plan", "pro") == '{"u":{"plan":"pro"}}'


@pytest.mark.parametrize("d", [
    {"u": "A1", "sId": 1700000000, "visitor_ua": None, "visitor_ip": None, "eT": 1, "experiment_id": 1},
    {"u": "é\u2028\x00\"\\", "r": 12.5, "big": 2**70, "neg": -0.0, "tiny": 1e-300, "ok": True, "no": False},
    {"t": '{"u":{"plan":"pro"}}', "nested": {"a": [1, None, "x"]}, 7: "int key"},
])
def test_compact_is_the_json_encoders_output_byte_for_byte(d):
    assert compact(d) == json.dumps(d, separators=(",", ":")).encode()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, object()])
def test_compact_refuses_what_json_cannot_carry(bad):
    with pytest.raises((ValueError, TypeError)):
        compact({"r": bad})


def test_exporter_encode_is_the_wire_dicts_and_refuses_what_cannot_be_sent():
    """``VWOExporter.encode`` gives what ``flush_callback`` receives, and raises for an event the
    batch body could not carry (the engine then reports that event alone)."""
    exporter = VWOExporter(ACCOUNT_ID, SDK_KEY)
    ev = VWOEvent(2, "Varun", 1700000000, 1, 2, 3, 12.5)
    assert exporter.encode([ev]) == LegacyFormat(ACCOUNT_ID, SDK_KEY).encode([ev])[0]
    with pytest.raises(TypeError):
        exporter.encode([VWOEvent(2, "odd", 1, 1, 1, 1, revenue=object())])  # type: ignore[arg-type]
    exporter.shutdown()


def _check_runs(parts: list[bytes], limit: int, runs: list[tuple[int, int]]) -> None:
    # contiguous, in order, covering every part exactly once, never empty
    assert runs, "non-empty input gives at least one run"
    assert [lo for lo, _ in runs] == [0] + [hi for _, hi in runs[:-1]]
    assert runs[-1][1] == len(parts)
    for lo, hi in runs:
        assert hi > lo
        size = len(batch_body(parts[lo:hi]))
        if hi - lo > 1:
            assert size <= limit, (lo, hi, size, limit)
        # greedy: the next part would not have fitted
        if hi < len(parts):
            assert len(batch_body(parts[lo:hi + 1])) > limit


def test_cut_by_bytes_empty():
    assert cut_by_bytes([], 1000) == []


def test_cut_by_bytes_all_fit_in_one_run():
    parts = [b"x" * 10] * 5
    assert cut_by_bytes(parts, 10_000) == [(0, 5)]


def test_cut_by_bytes_exact_limit_is_inclusive():
    parts = [b"a" * 10, b"b" * 10]
    exact = len(batch_body(parts))
    assert exact == BODY_OVERHEAD + 21
    assert cut_by_bytes(parts, exact) == [(0, 2)]
    assert cut_by_bytes(parts, exact - 1) == [(0, 1), (1, 2)]


def test_cut_by_bytes_oversize_single_event_alone():
    parts = [b"s" * 10, b"H" * 500, b"s" * 10, b"s" * 10]
    runs = cut_by_bytes(parts, 100)
    assert runs == [(0, 1), (1, 2), (2, 4)]
    assert len(batch_body(parts[1:2])) > 100  # the caller rejects that run
    assert cut_by_bytes([b"H" * 500], 100) == [(0, 1)]


@pytest.mark.parametrize("seed", range(20))
def test_cut_by_bytes_random_respects_limit(seed):
    rng = random.Random(seed)
    limit = rng.randint(BODY_OVERHEAD + 1, 2000)
    parts = [b"e" * rng.randint(1, 400) for _ in range(rng.randint(1, 200))]
    _check_runs(parts, limit, cut_by_bytes(parts, limit))


def test_cut_by_bytes_on_real_events():
    enc = LegacyFormat(ACCOUNT_ID, SDK_KEY)
    evs = [VWOEvent(2, f"user-{i}", 1700000000 + i, 1, 2, 3, i * 0.5, visitor_ua="x" * (i % 50)) for i in range(300)]
    _, parts = enc.encode(evs)
    runs = cut_by_bytes(parts, 4096)
    _check_runs(parts, 4096, runs)
    assert len(runs) > 1
    # re-joining the runs gives every event once, in order
    joined = [d for lo, hi in runs for d in json.loads(batch_body(parts[lo:hi]))["ev"]]
    assert [d["u"] for d in joined] == [visitor_uuid(ACCOUNT_ID, f"user-{i}") for i in range(300)]
