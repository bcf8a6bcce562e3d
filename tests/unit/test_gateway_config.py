"""The gateway's settings take exactly the ranges ``checks.py`` gives them: one rule per setting,
whichever entry point (the SDK, ``VWO_*`` variables, the gateway) a value comes through."""

from __future__ import annotations

import math

import pytest

from vwo_otel import checks
from vwo_otel.servers.gateway import Account, GatewayConfig

ACCOUNTS = {1: Account(1, "sdk-key-0123456789")}
SHARED = {  # the gateway's settings the SDK has too, and the range checks.py holds for them
    "shutdown_timeout": checks.SHUTDOWN_TIMEOUT, "events_per_request": checks.EVENTS_PER_REQUEST,
    "request_time_interval": checks.REQUEST_TIME_INTERVAL, "max_backlog": checks.MAX_QUEUE_SIZE,
    "timeout": checks.TIMEOUT, "spool_max_bytes": checks.SPOOL_MAX_BYTES, "spool_max_age": checks.SPOOL_MAX_AGE,
}


def _probes(allowed: checks.Range) -> list[float]:
    """Values on and around the range's ends."""
    values = [0, 1, -1, 1e9 + 1, 3601]
    for end in (allowed.low, allowed.high):
        if math.isfinite(end):
            values += [end, end - 1, end + 1, end - 0.001, end + 0.001]
    return [int(v) if allowed.integer and float(v).is_integer() else v for v in values]


def _accepts(make: object, name: str, value: float) -> bool:
    try:
        make(name, value)  # type: ignore[operator]
    except (TypeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("name", sorted(SHARED))
def test_a_shared_setting_has_the_one_range_checks_py_gives_it(name: str) -> None:
    allowed = SHARED[name]
    extra = {"max_backlog": 10_000_000} if name == "events_per_request" else {}
    for value in _probes(allowed):
        if name == "max_backlog" and isinstance(value, int) and value < 100:
            extra = {"events_per_request": 1}  # a backlog must hold one batch
        by_checks = _accepts(lambda n, v: allowed.check(n, v), name, value)
        by_gateway = _accepts(lambda n, v, more=extra: GatewayConfig(accounts=ACCOUNTS, **{**more, n: v}), name, value)
        assert by_gateway == by_checks, (name, value, by_checks)


def test_shutdown_timeout_zero_is_one_rule() -> None:
    """It was allowed by the gateway (which then waited 1 ms) and refused by ``checks``."""
    with pytest.raises(ValueError, match="shutdown_timeout must be a number of seconds > 0"):
        GatewayConfig(accounts=ACCOUNTS, shutdown_timeout=0)
    with pytest.raises(ValueError, match="shutdown_timeout"):
        checks.SHUTDOWN_TIMEOUT.check("shutdown_timeout", 0)
    assert GatewayConfig(accounts=ACCOUNTS, shutdown_timeout=0.5).shutdown_timeout == 0.5


def test_default_account_only_with_one_account() -> None:
    """With several accounts an event without ``vwo.account_id`` could be anyone's (a collector
    that splits a batch drops the resource's attributes): no default, the config says why."""
    two = {**ACCOUNTS, 2: Account(2, "sdk-key-abcdefghij")}
    assert GatewayConfig(accounts=ACCOUNTS, default_account=1).default_account == 1
    assert GatewayConfig(accounts=two).default_account is None
    with pytest.raises(ValueError, match="several accounts has no default") as err:
        GatewayConfig(accounts=two, default_account=1)
    assert "on each record" in str(err.value)
