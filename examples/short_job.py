"""A short-lived job (cron task, CLI, data script) that emits VWO events and just exits.

    vwo-otel receive --port 8000 &      # a loopback VWO (it prints each request it gets)
    VWO_ACCOUNT_ID=123456 VWO_SDK_KEY=test-key VWO_ENDPOINT=http://127.0.0.1:8000 python examples/short_job.py [N_USERS]

(Without ``VWO_ENDPOINT`` it sends to VWO itself: give it your account's id and sdk key.)

There is no flush call: at interpreter exit vwo_otel delivers whatever is queued (bounded by
``shutdown_timeout`` / ``VWO_SHUTDOWN_TIMEOUT``, 10 s by default), even though the batch
settings below would otherwise wait up to 10 minutes for a full batch.
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import vwo_otel

logging.basicConfig(level=logging.INFO, format="%(message)s")  # vwo_otel says at exit what it delivered
provider = TracerProvider(sampler=vwo_otel.VWOSampler())
provider.add_span_processor(vwo_otel.span_processor_from_env(
    batch_events={"events_per_request": 100, "request_time_interval": 600}))
trace.set_tracer_provider(provider)
vwo = vwo_otel.VWOEvents()

users = int(sys.argv[1]) if len(sys.argv) > 1 else 250
emitted = 0
for i in range(users):
    user = f"job-user-{i}"
    vwo.activate(412, 1 + i % 2, user)
    emitted += 1
    if i % 5 == 0:
        vwo.track(412, 1 + i % 2, 9, user, revenue=float(i))
        emitted += 1
print(f"emitted {emitted} VWO events; exiting without a flush", flush=True)
