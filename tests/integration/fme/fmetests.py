"""The FME SDK's tests' fixtures and helpers (each test module loads them: ``pytest_plugins``).

The tests run in .venv-fme (``python3 dev.py fme``, or the last step of ``python3 dev.py test``),
where ``vwo-fme-python-sdk`` 1.65.0 is installed instead of the legacy ``vwo-python-sdk`` (both
install a top-level ``vwo``); elsewhere each module skips itself. Each test drives ``fme_app.py``
in a subprocess (the SDK keeps one client per process, and alone it never lets a process exit)
against two loopback stand-ins: ``sdk_side`` serves the SDK its settings and records every event
request the SDK sends itself; ``otel_side`` is vwo_otel's endpoint. (No conftest.py here: it
would shadow tests/conftest.py, which the other test modules import as ``conftest``.)

PYTEST_DONT_REWRITE (imported by the test modules before pytest loads it as their plugin)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vwo_otel import attributes as A
from vwo_otel.event import MalformedEvent, from_attributes
from vwo_otel.testing.fme import FMEStandIn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SETTINGS = json.loads((REPO / "tests" / "data" / "fme_settings.json").read_text())
ACCOUNT = SETTINGS["accountId"]
SDK_KEY = SETTINGS["sdkKey"]
OTHER_ACCOUNT = 67890


@pytest.fixture
def sdk_side() -> Iterator[FMEStandIn]:
    """Where the SDK fetches its settings and sends whatever it sends itself."""
    with FMEStandIn(SETTINGS) as stand_in:
        yield stand_in


@pytest.fixture
def otel_side() -> Iterator[FMEStandIn]:
    """vwo_otel's endpoint (records what vwo_otel's exporter sends)."""
    with FMEStandIn(SETTINGS) as stand_in:
        yield stand_in


def fme_events_supported() -> bool:
    """Whether vwo_otel's event model already takes FME events (str ``vwo.event.type``): until it
    does, the instrumentor leaves every event to the SDK."""
    try:
        from_attributes({A.EVENT_TYPE: "purchase", A.ACCOUNT_ID: ACCOUNT, A.VISITOR_UUID: "0" * 32,
                         A.SESSION_ID: 1_700_000_000}, 1_700_000_000_000_000_000)
    except MalformedEvent:
        return False
    return True


#: Tests of what vwo_otel delivers (the FME event model, v2 wire and receiver on main).
needs_fme_delivery = pytest.mark.skipif(
    importlib.util.find_spec("wingify") is not None and not fme_events_supported(),
    reason="needs vwo_otel's FME event model and v2 wire format (str vwo.event.type)")


@dataclass
class App:
    """A finished (or killed) run of fme_app.py."""

    returncode: int | None  #: None: it did not end by itself and was killed
    seconds: float
    stdout: str
    stderr: str

    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for line in self.stdout.splitlines():
            if line.startswith("RESULT "):
                out.update(json.loads(line[7:]))
        return out

    def callbacks(self) -> list[tuple[str, int]]:
        return [(err, int(n)) for _, err, n in (line.split(" ") for line in self.stdout.splitlines()
                                                if line.startswith("CALLBACK "))]

    def warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("LOG WARNING vwo_otel")]


def app_env(sdk_side: FMEStandIn, otel_side: FMEStandIn | None, mode: str, **env: Any) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VWO_", "FME_"))}
    out.update(FME_STAND_IN=sdk_side.url, FME_MODE=mode, FME_ACCOUNT=str(ACCOUNT), FME_SDK_KEY=SDK_KEY,
               PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]))
    if otel_side is not None:
        out["FME_ENDPOINT"] = otel_side.url
    for key, value in env.items():
        out[f"FME_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def run_app(sdk_side: FMEStandIn, otel_side: FMEStandIn | None, mode: str, spec: dict[str, Any] | None = None,
            *, timeout: float = 30.0, **env: Any) -> App:
    """Run fme_app.py with ``spec`` until it ends by itself, or kill it after ``timeout`` seconds."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(HERE / "fme_app.py"), json.dumps(spec or {})],
                            env=app_env(sdk_side, otel_side, mode, **env), cwd=str(HERE),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        code = None
    return App(code, time.monotonic() - started, out, err)






def get_json(url: str) -> Any:
    import urllib.request
    req = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(req, timeout=15) as resp:
        return json.loads(resp.read())
