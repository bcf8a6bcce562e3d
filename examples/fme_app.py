"""VWO's FME SDK (``vwo-fme-python-sdk``) with vwo_otel delivering its events: install
``vwo-otel[fme]``, instrument before ``vwo.init``, and use the SDK as usual.

    python3 -m venv .venv-fme && .venv-fme/bin/pip install -e '.[fme]'   # (python3 dev.py fme makes it too)
    .venv-fme/bin/python examples/fme_app.py --local [N_USERS]            # offline, on loopback only
    VWO_ACCOUNT_ID=123456 VWO_SDK_KEY=... .venv-fme/bin/python examples/fme_app.py [N_USERS]   # your account

``--local`` runs it offline: the SDK fetches its settings from a loopback ``FMEStandIn`` serving
``tests/data/fme_settings.json`` (its account and key), vwo_otel delivers to the loopback
``Receiver``, and the end says what the receiver stored and what the SDK sent itself (nothing).
The SDK still fetches its settings (and decides flags) itself; every event it makes (impressions,
``track_event``, ``set_attribute``, its init event) becomes a VWO span that the processor batches
with the settings below and delivers. There is no flush call: at exit vwo_otel delivers what is
queued, and the process ends at once (the SDK alone would keep it alive on its settings-poll timer).
``FME_PROXY_URL`` points the SDK at another host (``--local``, the tests: a loopback stand-in), as
the SDK's ``proxy_url`` option does; ``VWO_ENDPOINT`` does the same for vwo_otel.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import vwo_otel
from vwo_otel.instrumentation import VWOFMEInstrumentor

args = [a for a in sys.argv[1:] if a != "--local"]
if len(args) < len(sys.argv) - 1:  # --local: both VWO hosts on loopback, from the test data
    from vwo_otel.testing import Receiver
    from vwo_otel.testing.fme import FMEStandIn

    settings = json.loads((Path(__file__).parent.parent / "tests" / "data" / "fme_settings.json").read_text())
    stand_in = FMEStandIn(settings).start()
    receiver = Receiver(account_id=settings["accountId"], sdk_key=settings["sdkKey"]).start()
    os.environ.update(VWO_ACCOUNT_ID=str(settings["accountId"]), VWO_SDK_KEY=settings["sdkKey"],
                      VWO_ENDPOINT=receiver.url, FME_PROXY_URL=stand_in.url)

    def report() -> None:  # registered first, so it runs after vwo_otel's exit delivery
        names = sorted({e["d"]["event"]["name"] for e in receiver.events()})
        print(f"the loopback receiver stored {receiver.event_count()} events in {len(receiver.requests())} "
              f"request(s) ({', '.join(names)}); the SDK sent {len(stand_in.event_requests())} itself")
        receiver.stop()
        stand_in.stop()

    atexit.register(report)

provider = TracerProvider(sampler=vwo_otel.VWOSampler())
provider.add_span_processor(vwo_otel.span_processor_from_env(
    batch_events={"events_per_request": 100, "request_time_interval": 600}))
trace.set_tracer_provider(provider)
VWOFMEInstrumentor().instrument(tracer_provider=provider)  # before vwo.init

import vwo  # noqa: E402 - the FME SDK, imported after the instrumentor as an app would order it

options = {"account_id": int(os.environ["VWO_ACCOUNT_ID"]), "sdk_key": os.environ["VWO_SDK_KEY"]}
if os.environ.get("FME_PROXY_URL"):
    options["proxy_url"] = os.environ["FME_PROXY_URL"]
client = vwo.init(options)

users = int(args[0]) if args else 50
enabled = 0
for i in range(users):
    context = {"id": f"fme-user-{i}", "user_agent": "Mozilla/5.0 (example)", "ip_address": "10.0.0.1"}
    flag = client.get_flag("checkout", context)
    enabled += flag.is_enabled()
    if i % 2 == 0:
        client.track_event("purchase", context, {"amount": 20 + i, "currency": "EUR"})
    client.set_attribute({"plan": "gold" if i % 3 == 0 else "free"}, context)
print(f"{users} users, flag enabled for {enabled}; exiting without a flush", flush=True)
