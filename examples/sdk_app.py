"""The official VWO SDK (vwo-python-sdk 1.68, its FullStack API) in a Starlette app, its events
delivered by vwo_otel through VWOInstrumentor; runs locally, against the loopback receiver.

    python3 -m venv .venv && .venv/bin/pip install -e '.[vwo-sdk]' starlette uvicorn   # once; then, in two terminals:
    .venv/bin/vwo-otel receive --port 8000 --account-id 12345 --sdk-key test-sdk-key-0123456789
    VWO_ENDPOINT=http://127.0.0.1:8000 .venv/bin/python examples/sdk_app.py   # http://127.0.0.1:8002 ($PORT)
    curl 'http://127.0.0.1:8002/?user=alice'; curl -X POST 'http://127.0.0.1:8002/buy?user=alice'

In production the settings file comes from VWO (``vwo.get_settings_file(account_id, sdk_key)``,
which needs the network); here it is the test suite's (``tests/data/vwo_settings.json``, or the
path in ``$SETTINGS_FILE``), so the example runs offline. The account id and sdk key are the
settings file's own. ``strict=True`` refuses a set-up where the SDK would send events itself
(``vwo.launch`` raises naming both accounts), so a local run never reaches VWO.
(``python3 dev.py test`` makes a .venv that has all of them too.)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import vwo_otel
from vwo_otel.instrumentation import VWOInstrumentor

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # the SDK's import, not ours
import vwo  # noqa: E402

SETTINGS = Path(os.environ.get("SETTINGS_FILE") or Path(__file__).parent.parent / "tests" / "data" /
                "vwo_settings.json")
settings_file = SETTINGS.read_text()  # production: vwo.get_settings_file(account_id, sdk_key)
settings = json.loads(settings_file)

provider = TracerProvider(sampler=vwo_otel.VWOSampler())
processor = vwo_otel.span_processor_from_env(  # VWO_ENDPOINT (and VWO_* batching) from the environment
    account_id=settings["accountId"], sdk_key=settings["sdkKey"],
    batch_events={"events_per_request": 100, "request_time_interval": 30})
provider.add_span_processor(processor)
VWOInstrumentor().instrument(tracer_provider=provider, strict=True)
client = vwo.launch(settings_file)  # every activate / track / push now goes through `processor`


async def home(request: Request) -> JSONResponse:
    user = request.query_params.get("user", "anonymous")
    variation = client.activate("ab", user)  # the SDK decides and returns, as before
    return JSONResponse({"user": user, "variation": variation})


async def buy(request: Request) -> JSONResponse:
    user = request.query_params.get("user", "anonymous")
    tracked = client.track("ab", user, "purchase", revenue_value=49.9)
    return JSONResponse({"user": user, "tracked": bool(tracked)})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    delivered = await processor.aflush_events()  # what the SDK's calls queued, without blocking the loop
    print(f"VWO flush at shutdown: {'all delivered' if delivered else 'NOT all delivered'}; "
          f"{processor.stats()['events']}", file=sys.stderr, flush=True)
    await processor.ashutdown()


app = Starlette(routes=[Route("/", home), Route("/buy", buy, methods=["POST"])], lifespan=lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8002")), log_level="warning")
