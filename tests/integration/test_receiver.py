"""The loopback VWO receiver, exercised over real HTTP with ``requests``."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import wait_until

from vwo_otel.testing.receiver import PAYLOAD_TOO_LARGE, Receiver

ACCOUNT = 12345
KEY = "rx-test-key-abcdef"
U1 = "C4D95C097902569F9A2D2E87CD3201C8"  # visitor "Varun" in account 12345
U2 = "E3B732864F315FB6974BC3EF4E2FD920"  # visitor "Alice"
BATCH_PATH = "/server-side/batch-events"


def visitor(u: str = U1, e: int = 231, c: int = 1, sid: int = 1795663948) -> dict:
    return {"u": u, "sId": sid, "visitor_ua": "", "visitor_ip": "", "e": e, "c": c, "eT": 1}


def goal(u: str = U1, g: int = 2, r: Any = None, sid: int = 1795663949) -> dict:
    ev = {"u": u, "sId": sid, "visitor_ua": "ua/1", "visitor_ip": "10.0.0.1", "e": 231, "c": 1, "g": g, "eT": 2}
    if r is not None:
        ev["r"] = r
    return ev


def dimension(key: str = "plan", value: str = "gold", u: str = U2) -> dict:
    return {"u": u, "sId": 1795663950, "visitor_ua": "", "visitor_ip": "", "eT": 3,
            "t": json.dumps({"u": {key: value}}, separators=(",", ":"))}


@pytest.fixture
def rx():
    """A receiver checking account and key; closed afterwards."""
    receiver = Receiver(account_id=ACCOUNT, sdk_key=KEY)
    receiver.start()
    yield receiver
    receiver.close()


@pytest.fixture
def session():
    with requests.Session() as s:
        yield s


def post(session: requests.Session, rx: Receiver, events: Any = None, *, body: bytes | None = None,
         prefix: str = "", account: Any = ACCOUNT, env: str | None = KEY, auth: str | None = "same",
         ctype: str | None = "application/json", timeout: float = 5.0) -> requests.Response:
    """POST a batch the way VWO's SDK does; each argument can be bent to break one rule."""
    params = {"sdk": "vwo-python-sdk", "sdk-v": "1.68.2"}
    if account is not None:
        params["a"] = str(account)
    if env is not None:
        params["env"] = env
    headers = {"User-Agent": "test"}
    if auth == "same":
        auth = env
    if auth is not None:
        headers["Authorization"] = auth
    if ctype is not None:
        headers["Content-Type"] = ctype
    if body is None:
        body = json.dumps({"ev": events if events is not None else [visitor()]}).encode()
    return session.post(rx.url + prefix + BATCH_PATH, params=params, data=body, headers=headers, timeout=timeout)


def get(session: requests.Session, rx: Receiver, endpoint: str, headers: dict | None = None,
        **params: Any) -> requests.Response:
    """A real-time GET with VWO's common query parameters, overridable (None removes one)."""
    query = {"random": "0.5", "sdk": "vwo-python-sdk", "sdk-v": "1.68.2", "ap": "server", "sId": "1795663948",
             "u": U1, "account_id": str(ACCOUNT), "env": KEY, "visitor_ua": "", "visitor_ip": ""}
    query.update(params)
    query = {k: v for k, v in query.items() if v is not None}
    return session.get(f"{rx.url}/server-side/{endpoint}", params=query, headers=headers or {}, timeout=5)


# --------------------------------------------------------------------------- batch happy path


def test_valid_batch_is_accepted_and_stored(rx: Receiver, session: requests.Session) -> None:
    sent = [visitor(), goal(r=12.5), goal(u=U2, g=3), goal(r=7), dimension()]
    resp = post(session, rx, sent)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"status": "ok", "events": 5}
    assert rx.events() == sent  # same dicts, arrival order, r only where given, int r stays int
    assert isinstance(rx.events()[3]["r"], int)
    assert rx.event_count() == 5
    raw = rx.events(with_raw=True)
    assert [json.loads(e["raw"]) for e in raw] == sent
    assert {e["request_id"] for e in raw} == {rx.requests()[0]["id"]}

    (req,) = rx.requests()
    assert req["method"] == "POST" and req["path"] == BATCH_PATH and req["status"] == 200
    assert req["n_events"] == 5 and req["accepted"] is True and req["error"] is None
    assert req["body_bytes"] == int(resp.request.headers["Content-Length"])
    assert "a=12345" in req["query"] and "sdk=vwo-python-sdk" in req["query"]
    assert KEY not in req["query"] and "env=***" in req["query"]


def test_keep_alive_connection_is_reused_with_nodelay(rx: Receiver) -> None:
    body = json.dumps({"ev": [visitor()]})
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=5)
    try:
        socks = []
        for _ in range(3):
            conn.request("POST", f"{BATCH_PATH}?a={ACCOUNT}&env={KEY}", body=body,
                         headers={"Authorization": KEY, "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Connection") is None
            assert int(resp.getheader("Content-Length", "-1")) == len(resp.read())
            socks.append(conn.sock)
        assert socks[0] is not None and socks[0] is socks[1] is socks[2]
        conns = rx.open_sockets()
        assert conns and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in conns)
    finally:
        conn.close()
    assert rx.event_count() == 3


def test_prefix_path_and_routing(rx: Receiver, session: requests.Session) -> None:
    assert post(session, rx, prefix="/myprefix").status_code == 200
    assert rx.requests()[-1]["path"] == "/myprefix" + BATCH_PATH
    assert post(session, rx, prefix="/two/segments").status_code == 404
    assert session.post(rx.url + "/server-side/batch-events-v3", data=b"{}", timeout=5).status_code == 404
    resp = session.get(rx.url + BATCH_PATH, timeout=5)
    assert resp.status_code == 405 and resp.headers["Allow"] == "POST"
    assert session.put(rx.url + BATCH_PATH, data=b"x", timeout=5).status_code == 501
    assert rx.event_count() == 1
    assert [r["status"] for r in rx.requests()] == [200, 404, 404, 405, 501]


# --------------------------------------------------------------------------- batch validation


def _with(base: dict, **changes: Any) -> dict:
    ev = dict(base)
    for k, v in changes.items():
        if v is _DROP:
            ev.pop(k, None)
        else:
            ev[k] = v
    return ev


_DROP = object()

_BAD_EVENTS = [
    ("eT 4", _with(visitor(), eT=4)),
    ("eT string", _with(visitor(), eT="1")),
    ("eT bool", _with(visitor(), eT=True)),
    ("u lowercase", _with(visitor(), u=U1.lower())),
    ("u short", _with(visitor(), u=U1[:-1])),
    ("u missing", _with(visitor(), u=_DROP)),
    ("sId string", _with(visitor(), sId="1795663948")),
    ("sId float", _with(visitor(), sId=1795663948.5)),
    ("visitor_ua missing", _with(visitor(), visitor_ua=_DROP)),
    ("visitor_ip null", _with(visitor(), visitor_ip=None)),
    ("visitor e missing", _with(visitor(), e=_DROP)),
    ("visitor c string", _with(visitor(), c="1")),
    ("goal g missing", _with(goal(), g=_DROP)),
    ("goal r string", _with(goal(), r="12.5")),
    ("goal r bool", _with(goal(), r=True)),
    ("goal r null", _with(goal(), r=None)),
    ("dim t object", _with(dimension(), t={"u": {"plan": "gold"}})),
    ("dim t not json", _with(dimension(), t="{nope")),
    ("dim t two keys", _with(dimension(), t='{"u":{"a":"1","b":"2"}}')),
    ("dim t no u wrapper", _with(dimension(), t='{"plan":"gold"}')),
    ("dim t value not string", _with(dimension(), t='{"u":{"plan":{"x":1}}}')),
    ("event not object", [visitor()]),
]


@pytest.mark.parametrize("name,bad", _BAD_EVENTS, ids=[n for n, _ in _BAD_EVENTS])
def test_invalid_event_rejects_whole_batch(rx: Receiver, session: requests.Session, name: str, bad: Any) -> None:
    resp = post(session, rx, [visitor(), goal(), bad])
    assert resp.status_code == 400
    assert resp.text.startswith("ev[2]: ")
    assert rx.event_count() == 0
    (req,) = rx.requests()
    assert req["status"] == 400 and req["error"] == resp.text and req["n_events"] == 3 and not req["accepted"]


@pytest.mark.parametrize(
    "kwargs,status,text",
    [
        ({"account": None}, 400, "missing query parameter a"),
        ({"account": "12a45"}, 400, "must be numeric"),
        ({"account": 999}, 401, "does not match the account id"),
        ({"env": None, "auth": KEY}, 400, "missing query parameter env"),
        ({"env": "other-key"}, 401, "does not match the sdk key"),
        ({"auth": None}, 401, "missing Authorization header"),
        ({"auth": "other-key"}, 401, "Authorization header does not match env"),
        ({"ctype": "text/plain"}, 400, "Content-Type must be application/json"),
        ({"ctype": None}, 400, "Content-Type must be application/json"),
        ({"body": b"{not json"}, 400, "not valid JSON"),
        ({"body": b'{"ev": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}, 400, "deeper than"),
        ({"body": b'{"ev": [{"eT": 2, "r": 1e400}]}'}, 400, "not a finite number"),
        ({"body": b'{"ev": [{"eT": NaN}]}'}, 400, "not valid JSON"),
        ({"body": b"[]"}, 400, "at least one event"),
        ({"body": b'{"ev": []}'}, 400, "at least one event"),
        ({"body": b'{"ev": {"eT": 1}}'}, 400, "at least one event"),
        ({"body": b'{"events": [1]}'}, 400, "at least one event"),
    ],
)
def test_request_level_validation(rx: Receiver, session: requests.Session, kwargs: dict, status: int,
                                  text: str) -> None:
    resp = post(session, rx, **kwargs)
    assert resp.status_code == status
    assert text in resp.text
    assert KEY not in resp.text
    assert rx.event_count() == 0 and rx.requests()[0]["status"] == status


def test_content_type_with_charset_is_accepted(rx: Receiver, session: requests.Session) -> None:
    assert post(session, rx, ctype="application/json; charset=utf-8").status_code == 200


def test_unconfigured_receiver_accepts_any_account_and_key(session: requests.Session) -> None:
    with Receiver() as rx:
        assert post(session, rx, account=42, env="whatever").status_code == 200
        assert post(session, rx, account=42, env="whatever", auth="different").status_code == 401
        assert get(session, rx, "track-user", account_id="7", env="k", experiment_id="1", combination="2",
                   ed='{"p":"server"}').status_code == 200
        assert rx.event_count() == 2
    rx.close()


# --------------------------------------------------------------------------- body size


def test_payload_too_large(rx: Receiver, session: requests.Session) -> None:
    rx.set_max_body(500)
    small, big = [visitor()], [visitor(sid=i) for i in range(20)]
    resp = post(session, rx, big)
    assert resp.status_code == 413 and resp.text == PAYLOAD_TOO_LARGE
    assert post(session, rx, small).status_code == 200  # same keep-alive connection still usable
    rx.clear_faults()
    assert post(session, rx, big).status_code == 200
    assert rx.event_count() == 21
    statuses = [(r["status"], r["n_events"], r["accepted"]) for r in rx.requests()]
    assert statuses == [(413, 0, False), (200, 1, True), (200, 20, True)]
    assert rx.requests()[0]["body_bytes"] == len(json.dumps({"ev": big}))


def test_constructor_body_limit(session: requests.Session) -> None:
    with Receiver(max_body_bytes=300) as rx:
        assert post(session, rx, [visitor()]).status_code == 200
        assert post(session, rx, [visitor()] * 5).status_code == 413
        rx.clear_faults()  # restores the constructor limit, not 10 MB
        assert post(session, rx, [visitor()] * 5).status_code == 413
    rx.close()


def test_chunked_body_over_the_limit_is_413_and_the_connection_stays_usable(rx: Receiver) -> None:
    rx.set_max_body(100)
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=5)
    try:
        body = json.dumps({"ev": [visitor(sid=i) for i in range(10)]}).encode()
        path = f"{BATCH_PATH}?a={ACCOUNT}&env={KEY}"
        headers = {"Authorization": KEY, "Content-Type": "application/json"}
        conn.request("POST", path, body=iter([body[:50], body[50:]]), headers=headers)  # chunked
        resp = conn.getresponse()
        assert resp.status == 413 and resp.read().decode() == PAYLOAD_TOO_LARGE
        rx.clear_faults()
        conn.request("POST", path, body=iter([body]), headers=headers)  # same connection
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
    finally:
        conn.close()
    assert [(r["status"], r["body_bytes"]) for r in rx.requests()] == [(413, len(body)), (200, len(body))]
    assert rx.event_count() == 10


@pytest.mark.skipif(os.name != "posix", reason="needs SIGTERM")
# --------------------------------------------------------------------------- fault injection


def test_fail_next_with_retry_after(rx: Receiver, session: requests.Session) -> None:
    rx.fail_next(2, status=503, retry_after=7, body="busy")
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    rx.fail_next(1, status=429, retry_after=date)
    r1, r2, r3, r4 = (post(session, rx, [visitor(sid=i)]) for i in range(4))
    assert (r1.status_code, r1.headers["Retry-After"], r1.text) == (503, "7", "busy")
    assert (r2.status_code, r2.headers["Retry-After"]) == (503, "7")
    assert (r3.status_code, r3.headers["Retry-After"]) == (429, date)
    assert r4.status_code == 200 and "Retry-After" not in r4.headers
    assert [e["sId"] for e in rx.events()] == [3]
    # applies to real-time GETs too
    rx.fail_next(1, status=500)
    assert get(session, rx, "push", tags='{"u":{"a":"b"}}').status_code == 500
    assert rx.event_count() == 1
    assert [r["error"] for r in rx.requests()].count("injected failure") == 4


def _post_in_thread(rx: Receiver, events: list, timeout: float = 10.0) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            with requests.Session() as s:
                result["status"] = post(s, rx, events, timeout=timeout).status_code
        except requests.RequestException as exc:
            result["error"] = exc
        result["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_stall_ends_on_clear_faults(rx: Receiver, session: requests.Session) -> None:
    rx.stall(30)
    thread, result = _post_in_thread(rx, [visitor()])
    thread.join(0.3)
    assert thread.is_alive()  # stalled
    rx.clear_faults()
    thread.join(5)
    assert not thread.is_alive() and result["status"] == 200 and result["elapsed"] < 10
    assert rx.event_count() == 1




def test_stall_limited_to_n_requests(rx: Receiver, session: requests.Session) -> None:
    rx.stall(30, n=1)
    thread, result = _post_in_thread(rx, [visitor(sid=1)])
    assert wait_until(lambda: rx.stalled() == 1)  # the first request has taken the stall
    assert post(session, rx, [visitor(sid=2)]).status_code == 200  # the second is not stalled
    assert thread.is_alive()
    rx.clear_faults()
    thread.join(5)
    assert result["status"] == 200
    assert [e["sId"] for e in rx.events()] == [2, 1]


def test_a_stall_per_request_held_slows_each_arrival_by_what_the_server_already_holds(rx: Receiver) -> None:
    """An overloaded server: 0.2 s, plus 0.4 s for each request held in a stall as one arrives
    (counted on arrival, so requests arriving together are not all answered as by an empty server)."""
    rx.stall(0.2, per_held=0.4)
    first, r1 = _post_in_thread(rx, [visitor(sid=1)], timeout=10)
    assert wait_until(lambda: rx.stalled() == 1)
    second, r2 = _post_in_thread(rx, [visitor(sid=2)], timeout=10)
    first.join(5)
    second.join(5)
    assert r1["status"] == r2["status"] == 200
    assert 0.2 <= r1["elapsed"] < 0.5 and 0.6 <= r2["elapsed"] < 1.5, (r1["elapsed"], r2["elapsed"])
    rx.clear_faults()
    start = time.monotonic()
    assert post(requests.Session(), rx, [visitor(sid=3)]).status_code == 200
    assert time.monotonic() - start < 0.2  # cleared: no stall


def test_stall_with_client_timeout_stores_nothing(rx: Receiver) -> None:
    rx.stall(30, n=1)
    thread, result = _post_in_thread(rx, [visitor()], timeout=0.3)
    thread.join(5)
    assert isinstance(result.get("error"), requests.Timeout)
    rx.clear_faults()
    assert wait_until(lambda: bool(rx.requests()))
    (req,) = rx.requests()
    assert req["status"] == 0 and "stall" in req["error"]
    assert rx.event_count() == 0


def test_stop_ends_stall_and_is_bounded() -> None:
    rx = Receiver().start()
    rx.stall(60)
    thread, result = _post_in_thread(rx, [visitor()])
    time.sleep(0.2)
    t0 = time.monotonic()
    rx.stop()
    assert time.monotonic() - t0 < 5
    thread.join(5)
    assert not thread.is_alive() and "error" in result
    rx.stop()  # idempotent
    rx.close()


def test_drop_next(rx: Receiver, session: requests.Session) -> None:
    rx.drop_next(1)
    with pytest.raises(requests.ConnectionError):
        post(session, rx, [visitor(sid=1)])
    assert post(session, rx, [visitor(sid=2)]).status_code == 200
    rx.drop_next(1)
    with pytest.raises(requests.ConnectionError):
        get(session, rx, "track-user", experiment_id="1", combination="1", ed='{"p":"server"}')
    assert [e["sId"] for e in rx.events()] == [2]
    reqs = rx.requests()
    assert [r["status"] for r in reqs] == [0, 200, 0]
    assert reqs[0]["error"] == "injected dropped connection" and reqs[0]["body_bytes"] > 0


def test_accept_then_fail_next(rx: Receiver, session: requests.Session) -> None:
    rx.accept_then_fail_next(1)
    resp = post(session, rx, [visitor(sid=1), goal()])
    assert resp.status_code == 504
    assert rx.event_count() == 2  # stored although the client saw a failure
    assert post(session, rx, [visitor(sid=1), goal()]).status_code == 200  # the client's retry
    assert rx.event_count() == 4
    req = rx.requests()[0]
    assert req["status"] == 504 and req["accepted"] and "after accepting 2" in req["error"]
    assert rx.summary()["accepted_requests"] == 2
    # an invalid request is still rejected (nothing to accept)
    rx.accept_then_fail_next(1, status=500)
    assert post(session, rx, [_with(visitor(), eT=9)]).status_code == 400
    assert rx.event_count() == 4


def test_faults_apply_in_call_order(rx: Receiver, session: requests.Session) -> None:
    rx.fail_next(1, status=502)
    rx.accept_then_fail_next(1, status=500)
    rx.fail_next(1, status=429)
    assert [post(session, rx).status_code for _ in range(4)] == [502, 500, 429, 200]


def test_random_faults(rx: Receiver) -> None:
    rx.random_faults(1.0, seed=1, statuses=(500,), drop=False)
    with requests.Session() as s:
        assert {post(s, rx).status_code for _ in range(5)} == {500}
    rx.random_faults(0.5, seed=7)
    outcomes: list[Any] = []
    for _ in range(40):
        try:
            with requests.Session() as s:
                outcomes.append(post(s, rx).status_code)
        except requests.ConnectionError:
            outcomes.append("drop")
    assert 200 in outcomes and "drop" in outcomes
    assert {o for o in outcomes if o != 200} <= {429, 500, 502, 503, 504, "drop"}
    assert outcomes.count(200) == rx.event_count()
    rx.clear_faults()
    with requests.Session() as s:
        assert all(post(s, rx).status_code == 200 for _ in range(5))


# --------------------------------------------------------------------------- real-time GETs


def test_realtime_endpoints_are_normalised(rx: Receiver, session: requests.Session) -> None:
    hdrs = {"X-Device-User-Agent": "Mozilla/5.0", "VWO-X-Forwarded-For": "203.0.113.9"}
    r1 = get(session, rx, "track-user", hdrs, experiment_id="231", combination="1", ed='{"p": "server"}')
    r2 = get(session, rx, "track-goal", None, experiment_id="231", combination="1", goal_id="2", r="12.5")
    r3 = get(session, rx, "track-goal", None, experiment_id="231", combination="1", goal_id="3")
    r4 = get(session, rx, "push", hdrs, tags='{"u": {"plan": "gold"}}', u=U2)
    assert [r.status_code for r in (r1, r2, r3, r4)] == [200] * 4
    base = {"u": U1, "sId": 1795663948, "visitor_ua": "", "visitor_ip": ""}
    ua_ip = {"visitor_ua": "Mozilla/5.0", "visitor_ip": "203.0.113.9"}
    assert rx.events() == [
        {**base, "eT": 1, "e": 231, "c": 1, **ua_ip},
        {**base, "eT": 2, "e": 231, "c": 1, "g": 2, "r": 12.5},
        {**base, "eT": 2, "e": 231, "c": 1, "g": 3},
        {**base, "eT": 3, "u": U2, "t": '{"u": {"plan": "gold"}}', **ua_ip},
    ]
    assert [list(e) for e in rx.events()][1] == ["eT", "u", "sId", "e", "c", "g", "r", "visitor_ua", "visitor_ip"]
    req = rx.requests()[0]
    assert req["method"] == "GET" and req["path"] == "/server-side/track-user" and KEY not in req["query"]


@pytest.mark.parametrize(
    "endpoint,params,status",
    [
        ("track-user", {"experiment_id": "1", "combination": "1"}, 400),  # no ed
        ("track-user", {"combination": "1", "ed": "{}"}, 400),  # no experiment_id
        ("track-user", {"experiment_id": "x", "combination": "1", "ed": "{}"}, 400),
        ("track-user", {"experiment_id": "1", "combination": "1", "ed": "{}", "u": "abc"}, 400),
        ("track-user", {"experiment_id": "1", "combination": "1", "ed": "{}", "sId": None}, 400),
        ("track-user", {"experiment_id": "1", "combination": "1", "ed": "{}", "account_id": "1"}, 401),
        ("track-user", {"experiment_id": "1", "combination": "1", "ed": "{}", "env": "nope"}, 401),
        ("track-goal", {"experiment_id": "1", "combination": "1"}, 400),  # no goal_id
        ("track-goal", {"experiment_id": "1", "combination": "1", "goal_id": "1", "r": "lots"}, 400),
        ("track-goal", {"experiment_id": "1", "combination": "1", "goal_id": "1", "r": "nan"}, 400),
        ("push", {}, 400),  # no tags
        ("push", {"tags": '{"u": {"a": "1", "b": "2"}}'}, 400),
        ("push", {"tags": '{"a": "1"}'}, 400),
    ],
)
def test_realtime_validation(rx: Receiver, session: requests.Session, endpoint: str, params: dict,
                             status: int) -> None:
    resp = get(session, rx, endpoint, **params)
    assert resp.status_code == status, resp.text
    assert rx.event_count() == 0


def test_realtime_post_not_allowed(rx: Receiver, session: requests.Session) -> None:
    resp = session.post(rx.url + "/server-side/track-user", timeout=5)
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET"


# --------------------------------------------------------------------------- python API


def test_wait_for_events_wakes_promptly(rx: Receiver) -> None:
    assert rx.wait_for_events(1, timeout=0.05) is False
    timer = threading.Timer(0.2, lambda: _post_in_thread(rx, [visitor(), goal()]))
    timer.start()
    t0 = time.monotonic()
    assert rx.wait_for_events(2, timeout=10) is True
    assert time.monotonic() - t0 < 5
    assert rx.wait_for_events(3, timeout=0.05) is False
    timer.join()


def test_summary_and_reset(rx: Receiver, session: requests.Session) -> None:
    assert rx.summary() == {"requests": 0, "accepted_requests": 0, "events": 0, "bytes": 0,
                            "bytes_per_event": 0.0, "events_per_request": 0.0}
    r1 = post(session, rx, [visitor(sid=i) for i in range(4)])
    r2 = post(session, rx, [visitor(sid=i) for i in range(2)])
    post(session, rx, account=1)
    s = rx.summary()
    total = int(r1.request.headers["Content-Length"]) + int(r2.request.headers["Content-Length"])
    assert s == {"requests": 3, "accepted_requests": 2, "events": 6, "bytes": total,
                 "bytes_per_event": total / 6, "events_per_request": 3.0}
    rx.fail_next(5)
    rx.reset()
    assert rx.events() == [] and rx.requests() == [] and rx.event_count() == 0
    assert post(session, rx).status_code == 200  # faults were cleared too


def test_file_db_persists(tmp_path: Path, session: requests.Session) -> None:
    db = tmp_path / "rx.sqlite"
    with Receiver(ACCOUNT, KEY, db_path=str(db)) as rx:
        assert post(session, rx, [visitor(sid=i) for i in range(5)]).status_code == 200
        post(session, rx, env="wrong")
    rx.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT accepted, n_events FROM requests ORDER BY id").fetchall() == [(1, 5), (0, 0)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    again = Receiver(db_path=str(db))
    assert again.event_count() == 5 and len(again.events()) == 5
    again.close()


def test_start_stop_restart_on_same_port(session: requests.Session) -> None:
    rx = Receiver(ACCOUNT, KEY)
    assert rx.start() is rx and rx.start() is rx  # idempotent
    port = rx.port
    assert port > 0 and rx.url == f"http://127.0.0.1:{port}"
    assert post(session, rx).status_code == 200  # leaves an idle keep-alive connection open
    t0 = time.monotonic()
    rx.stop()
    rx.stop()
    assert time.monotonic() - t0 < 5
    assert not rx.running
    with pytest.raises(requests.ConnectionError):
        with requests.Session() as s:
            post(s, rx, timeout=2)
    rx.start()
    assert rx.port == port
    with requests.Session() as s:
        assert post(s, rx).status_code == 200
    assert rx.event_count() == 2
    rx.close()


def test_loopback_only() -> None:
    with pytest.raises(ValueError):
        Receiver(host="0.0.0.0")
    with pytest.raises(ValueError):
        Receiver(account_id="abc")


def test_quiet_on_stderr(rx: Receiver, session: requests.Session, capfd: pytest.CaptureFixture[str]) -> None:
    post(session, rx)
    post(session, rx, env="bad")
    rx.drop_next(1)
    with pytest.raises(requests.ConnectionError):
        post(session, rx)
    with socket.create_connection(("127.0.0.1", rx.port), timeout=5) as raw:
        raw.sendall(b"GARBAGE\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 400")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
