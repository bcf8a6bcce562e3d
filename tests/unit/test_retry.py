"""RetryPolicy on its own: which failures are retried and how long each wait is (no HTTP, no sleeps)."""

from __future__ import annotations

import email.utils
import time

import pytest

from vwo_otel.export import http as transport
from vwo_otel.export.retry import RETRY_STATUSES, RetryPolicy, parse_retry_after


@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
def test_transient_statuses_are_retried(status: int) -> None:
    assert RetryPolicy().is_retryable(status) and status in RetryPolicy().statuses


@pytest.mark.parametrize("status", [200, 204, 301, 400, 401, 403, 404, 413, 422, 501, 505])
def test_final_statuses_are_not_retried(status: int) -> None:
    assert not RetryPolicy().is_retryable(status)


def test_the_statuses_are_the_policys_own() -> None:
    """One more retryable status is one field of one policy: nothing else restates the list."""
    extra = next(s for s in range(400, 600) if s not in RETRY_STATUSES)
    policy = RetryPolicy(statuses=RETRY_STATUSES | {extra})
    assert policy.is_retryable(extra) and not RetryPolicy().is_retryable(extra)
    assert RetryPolicy().pause_statuses <= RetryPolicy().statuses
    with pytest.raises(ValueError, match="RetryPolicy.statuses"):
        RetryPolicy(statuses={"429"})  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [200, 204, 302, 100, 413])
def test_a_status_that_is_never_retried_is_refused_in_the_policy_with_the_range(status: int) -> None:
    """A careless ``statuses={200}`` was taken and did nothing (a 2xx is delivered, a 413 splits
    the batch, before the policy is asked): the error names the field and the range."""
    for name in ("statuses", "pause_statuses"):
        with pytest.raises(ValueError, match=f"RetryPolicy.{name} .*400 to 599.*except 413"):
            RetryPolicy(**{name: {status}})


def test_max_retries_and_multiplier() -> None:
    policy = RetryPolicy(max_retries=2, initial_backoff=1.0, backoff_multiplier=3.0, max_backoff=100.0)
    assert [policy.allows(a) for a in range(4)] == [True, True, False, False]
    assert RetryPolicy().allows(10**6)
    assert 0.8 * 9 <= policy.backoff(2) <= 1.2 * 9
    for bad in ({"max_retries": -1}, {"max_retries": 1.5}, {"backoff_multiplier": 0.5}):
        with pytest.raises((TypeError, ValueError), match=next(iter(bad))):
            RetryPolicy(**bad)


def test_fme_retry_config_maps_onto_the_policy() -> None:
    """VWO FME SDKs' ``retry_config`` keys, next to vwo_otel's budget."""
    policy = RetryPolicy.from_retry_config({"max_retries": 5, "initial_delay": 2, "backoff_multiplier": 2},
                                           budget=30.0)
    assert (policy.max_retries, policy.initial_backoff, policy.backoff_multiplier, policy.budget) == (5, 2, 2, 30.0)
    assert RetryPolicy.from_retry_config({"should_retry": False}).max_retries == 0
    assert RetryPolicy.from_retry_config({}).max_retries == 3  # FME's default
    with pytest.raises(ValueError, match="unknown key"):
        RetryPolicy.from_retry_config({"retries": 3})
    with pytest.raises(TypeError, match="should_retry"):
        RetryPolicy.from_retry_config({"should_retry": "no"})


@pytest.mark.parametrize("error", [transport.ConnectionError, transport.ConnectTimeout, transport.ReadTimeout,
                                   transport.SSLError])
def test_transport_errors_a_resend_could_fix_are_retried(error: type[transport.TransportError]) -> None:
    assert RetryPolicy().is_retryable(error=error("boom"))


@pytest.mark.parametrize("error", [transport.InvalidURL, transport.InvalidHeader, transport.InvalidRequest])
def test_requests_no_attempt_could_send_are_not_retried(error: type[transport.TransportError]) -> None:
    assert not RetryPolicy().is_retryable(error=error("boom"))


def test_nothing_to_judge_is_not_retried() -> None:
    assert not RetryPolicy().is_retryable()


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    policy = RetryPolicy(budget=60, initial_backoff=0.5, max_backoff=3.0)
    for attempt, base in enumerate([0.5, 1, 2, 3, 3, 3]):
        waits = [policy.wait(attempt) for _ in range(300)]
        assert all(0.8 * base - 1e-9 <= w <= 1.2 * base + 1e-9 for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > 0.2 * base  # jitter spreads retries, not a fixed schedule
    assert policy.wait(10_000) <= 3.6  # no overflow for huge attempt numbers


@pytest.mark.parametrize("kwargs", [{"initial_backoff": 0}, {"max_backoff": 0}, {"initial_backoff": -1}])
def test_a_zero_backoff_is_refused_it_would_retry_in_a_hot_loop(kwargs) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RetryPolicy(**kwargs)
    with pytest.raises(ValueError, match="initial_backoff"):
        RetryPolicy.from_retry_config({"initial_delay": 0})


def test_retry_after_seconds_is_a_floor() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.2)
    assert policy.wait(0, "7") == 7.0
    assert policy.wait(0, " 2.5 ") == 2.5
    assert 0.08 <= policy.wait(0, "0.01") <= 0.12  # the backoff when the server asks for less


def test_retry_after_zero_still_backs_off() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.2)
    assert all(0.08 <= policy.wait(0, "0") <= 0.12 for _ in range(100))


def test_retry_after_http_date() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.2)
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= policy.wait(0, later) <= 30  # the header has whole seconds
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert 0.08 <= policy.wait(0, past) <= 0.12


@pytest.mark.parametrize("garbage", [None, "", "soon", "Tue, 99 Foo 2024", "1,5"])
def test_retry_after_garbage_is_ignored(garbage: str | None) -> None:
    assert 0.08 <= RetryPolicy(initial_backoff=0.1, max_backoff=0.2).wait(0, garbage) <= 0.12


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("") is None


@pytest.mark.parametrize("field", ["budget", "initial_backoff", "max_backoff"])
@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "5", None])
def test_constructor_checks_each_field(field: str, bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match=f"RetryPolicy.{field} must be a number of seconds >= 0"):
        RetryPolicy(**{field: bad})  # type: ignore[arg-type]


def test_policy_is_an_immutable_value() -> None:
    policy = RetryPolicy(budget=5)
    assert policy == RetryPolicy(budget=5, initial_backoff=0.5, max_backoff=30.0)
    with pytest.raises(AttributeError):
        policy.budget = 1  # type: ignore[misc]
