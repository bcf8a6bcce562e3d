"""VWO's FME SDK (``vwo-fme-python-sdk``) with vwo_otel delivering its events: install
``vwo-otel[fme]``, instrument before ``vwo.init``, and use the SDK as usual.

    VWO_ACCOUNT_ID=123456 VWO_SDK_KEY=... python examples/fme_app.py [N_USERS]

The SDK still fetches its settings (and decides flags) itself; every event it makes (impressions,
``track_event``, ``set_attribute``, its init event) becomes a VWO span that the processor batches
with the settings below and delivers. There is no flush call: at exit vwo_otel delivers what is
queued, and the process ends at once (the SDK alone would keep it alive on its settings-poll timer).
``VWO_FME_PROXY_URL`` points the SDK at another host (the tests: a loopback stand-in), as the
SDK's ``proxy_url`` option does; ``VWO_ENDPOINT`` does the same for vwo_otel.
"""

from __future__ import annotations

import os
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import vwo_otel
from vwo_otel.instrumentation import VWOFMEInstrumentor

provider = TracerProvider(sampler=vwo_otel.VWOSampler())
provider.add_span_processor(vwo_otel.span_processor_from_env(
    batch_events={"events_per_request": 100, "request_time_interval": 600}))
trace.set_tracer_provider(provider)
VWOFMEInstrumentor().instrument(tracer_provider=provider)  # before vwo.init

import vwo  # noqa: E402 - the FME SDK, imported after the instrumentor as an app would order it

options = {"account_id": int(os.environ["VWO_ACCOUNT_ID"]), "sdk_key": os.environ["VWO_SDK_KEY"]}
if os.environ.get("VWO_FME_PROXY_URL"):
    options["proxy_url"] = os.environ["VWO_FME_PROXY_URL"]
client = vwo.init(options)

users = int(sys.argv[1]) if len(sys.argv) > 1 else 50
enabled = 0
for i in range(users):
    context = {"id": f"fme-user-{i}", "user_agent": "Mozilla/5.0 (example)", "ip_address": "10.0.0.1"}
    flag = client.get_flag("checkout", context)
    enabled += flag.is_enabled()
    if i % 2 == 0:
        client.track_event("purchase", context, {"amount": 20 + i, "currency": "EUR"})
    client.set_attribute({"plan": "gold" if i % 3 == 0 else "free"}, context)
print(f"{users} users, flag enabled for {enabled}; exiting without a flush", flush=True)
