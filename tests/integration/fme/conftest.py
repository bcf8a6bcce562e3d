"""The FME SDK's tests: they run in .venv-fme (``python3 dev.py fme``, or the last step of
``python3 dev.py test``), where ``vwo-fme-python-sdk`` 1.65.0 is installed instead of the legacy
``vwo-python-sdk`` (both install a top-level ``vwo``). Elsewhere this directory is not collected.

Each test drives ``fme_app.py`` in a subprocess (the SDK keeps one client per process, and alone
it never lets a process exit) against two loopback stand-ins: ``sdk_side`` serves the SDK its
settings and records every event request the SDK sends itself; ``otel_side`` is vwo_otel's
endpoint. Helpers are in ``fmetests.py``."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from vwo_otel.testing.fme import FMEStandIn

if importlib.util.find_spec("wingify") is None:  # not .venv-fme: these tests need the FME SDK
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def sdk_side() -> Iterator[FMEStandIn]:
    """Where the SDK fetches its settings and sends whatever it sends itself."""
    from fmetests import SETTINGS
    with FMEStandIn(SETTINGS) as stand_in:
        yield stand_in


@pytest.fixture
def otel_side() -> Iterator[FMEStandIn]:
    """vwo_otel's endpoint (records what vwo_otel's exporter sends)."""
    from fmetests import SETTINGS
    with FMEStandIn(SETTINGS) as stand_in:
        yield stand_in
