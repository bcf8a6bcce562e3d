"""Shared fixtures: the project's own loopback VWO receiver and pipelines wired to it."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from vwo_otel import RetryPolicy, VWOEvents, VWOExporter, VWOSampler, VWOSpanProcessor
from vwo_otel.servers.gateway import Account, Gateway, GatewayConfig
from vwo_otel.testing.receiver import Receiver

ACCOUNT_ID = 12345
SDK_KEY = "test-sdk-key-0123456789"
#: Short retry waits so reliability tests run fast; budgets stay honest.
FAST_RETRY = RetryPolicy(budget=5.0, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def receiver():
    """A fresh VWO-compatible receiver on 127.0.0.1 checking our account and key."""
    with Receiver(account_id=ACCOUNT_ID, sdk_key=SDK_KEY) as rx:
        yield rx


class Callbacks:
    """Collects ``flush_callback(err, events)`` calls, thread-safely."""

    def __init__(self) -> None:
        self.calls: list = []
        self._cond = threading.Condition()

    def __call__(self, err: BaseException | None, events: list) -> None:
        with self._cond:
            self.calls.append((err, list(events)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list], bool], timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.calls), timeout)

    @property
    def ok_events(self) -> list:
        return [e for err, evs in self.calls if err is None for e in evs]

    @property
    def failed(self) -> list:
        return [(err, evs) for err, evs in self.calls if err is not None]


@pytest.fixture
def callbacks() -> Callbacks:
    return Callbacks()


@pytest.fixture
def make_exporter(receiver) -> Callable[..., VWOExporter]:
    def make(cls: type[VWOExporter] = VWOExporter, **kwargs: Any) -> VWOExporter:
        """An exporter (or ``cls``, a subclass) for the test receiver, with fast retries."""
        kwargs.setdefault("endpoint", receiver.url)
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("timeout", 5.0)
        return cls(ACCOUNT_ID, SDK_KEY, **kwargs)

    return make


@pytest.fixture
def pipeline(make_exporter, callbacks):
    """``pipeline(batch_events=..., **processor_kwargs)`` -> (events, processor, provider).
    ``flush_callback`` defaults to the ``callbacks`` fixture. Providers are shut down after."""
    made: list = []

    def make(batch_events: Any = "default", exporter: VWOExporter | None = None, **kwargs: Any):
        if batch_events == "default":
            batch_events = {"events_per_request": 10, "request_time_interval": 60}
        if isinstance(batch_events, dict):
            batch_events = {"flush_callback": callbacks, **batch_events}
        processor = VWOSpanProcessor(exporter or make_exporter(), batch_events, **kwargs)
        provider = TracerProvider(sampler=VWOSampler(), shutdown_on_exit=False)
        provider.add_span_processor(processor)
        made.append(provider)
        return VWOEvents(tracer_provider=provider), processor, provider

    yield make
    for provider in made:
        provider.shutdown()


@pytest.fixture
def make_gateway(receiver):
    """``make_gateway(**config)`` -> a started OTLP gateway delivering to the ``receiver`` fixture."""
    made: list[Gateway] = []

    def make(**kw: Any) -> Gateway:
        kw.setdefault("accounts", {ACCOUNT_ID: Account(ACCOUNT_ID, SDK_KEY)})
        kw.setdefault("default_account", ACCOUNT_ID)
        kw.setdefault("endpoint", receiver.url)
        kw.setdefault("port", 0)
        kw.setdefault("retry", FAST_RETRY)
        kw.setdefault("timeout", 5.0)
        kw.setdefault("events_per_request", 10)
        kw.setdefault("request_time_interval", 1)
        kw.setdefault("retry_after", 1)
        kw.setdefault("shutdown_timeout", 5)
        gw = Gateway(GatewayConfig(**kw)).start()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop(2)


@pytest.fixture
def make_tmpfs(tmp_path):
    """``make_tmpfs(kib)`` -> a directory on a tmpfs of that size (a disk that fills up or can be
    made read-only; root only, else the test is skipped); unmounted after the test."""
    mounted: list[Any] = []

    def make(kib: int) -> Any:
        mnt = tmp_path / f"disk{len(mounted)}"
        mnt.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mnt)],
                          capture_output=True).returncode != 0:
            pytest.skip("needs root to mount a tmpfs")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
