"""Zero-code: ``opentelemetry-instrument python app.py`` with ``VWO_*`` set instruments the FME
SDK through the ``vwo_fme`` entry point (vwo-otel's ``instruments-any`` extra names either SDK,
so the launcher does not skip it where the legacy SDK is absent): an app that only calls
``vwo.init`` and the SDK's API delivers through vwo_otel and ends at once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from fmetests import ACCOUNT, SDK_KEY, needs_fme_delivery

pytest.importorskip("wingify", reason="needs the FME SDK: run in .venv-fme (python3 dev.py fme)")
pytest_plugins = ("fmetests",)  # the fixtures sdk_side and otel_side

APP = """
import vwo
client = vwo.init({"sdk_key": %r, "account_id": %d, "proxy_url": %r})
for i in range(5):
    ctx = {"id": f"zero-{i}"}
    client.get_flag("checkout", ctx)
    client.track_event("purchase", ctx, {"amount": i})
print("done", flush=True)
"""


def test_the_entry_point_names_the_fme_instrumentor():
    eps = {ep.name: ep.value for ep in entry_points(group="opentelemetry_instrumentor")}
    assert eps["vwo_fme"] == "vwo_otel.instrumentation:VWOFMEInstrumentor"


@needs_fme_delivery
def test_opentelemetry_instrument_delivers_the_fme_sdks_events(tmp_path, sdk_side, otel_side):
    app = tmp_path / "app.py"
    app.write_text(APP % (SDK_KEY, ACCOUNT, sdk_side.url))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VWO_"))}
    env.update(VWO_ACCOUNT_ID=str(ACCOUNT), VWO_SDK_KEY=SDK_KEY, VWO_ENDPOINT=otel_side.url,
               OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    launcher = Path(sys.executable).parent / "opentelemetry-instrument"
    proc = subprocess.run([str(launcher), sys.executable, str(app)], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout
    assert sdk_side.event_requests() == []
    names = Counter(d["event"]["name"] for d in otel_side.events())
    assert names["purchase"] == 5 and names["vwo_fmeSdkInit"] == 1
