"""examples/fme_app.py against the stand-ins: the SDK's settings from ``FMEStandIn``, vwo_otel's
events to the project's validating ``Receiver``. It ends without a flush call and loses nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from fmetests import ACCOUNT, REPO, SDK_KEY, needs_fme_delivery

from vwo_otel.testing import Receiver

pytest.importorskip("wingify", reason="needs the FME SDK: run in .venv-fme (python3 dev.py fme)")
pytest_plugins = ("fmetests",)  # the fixtures sdk_side and otel_side


@needs_fme_delivery
def test_fme_example_app_delivers_everything_at_exit(sdk_side):
    with Receiver(account_id=ACCOUNT, sdk_key=SDK_KEY) as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VWO_"))}
        env.update(VWO_ACCOUNT_ID=str(ACCOUNT), VWO_SDK_KEY=SDK_KEY, VWO_ENDPOINT=receiver.url,
                   FME_PROXY_URL=sdk_side.url)
        proc = subprocess.run([sys.executable, str(REPO / "examples" / "fme_app.py"), "50"], env=env,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert "50 users, flag enabled for 47; exiting without a flush" in proc.stdout
        names = Counter(e["d"]["event"]["name"] for e in receiver.events())
        assert [r["status"] for r in receiver.requests()] == [200] * len(receiver.requests())
    # (3 of the 50 users are in the holdout: the flag is off for them)
    assert names["purchase"] == 25 and names["vwo_syncVisitorProp"] == 50 and names["vwo_fmeSdkInit"] == 1
    assert names["vwo_variationShown"] >= 50
    assert sdk_side.event_requests() == []  # the SDK sent nothing itself


@needs_fme_delivery
def test_fme_example_runs_offline_with_local():
    """``--local``, as its docstring says to run it: both VWO hosts on loopback, nothing else set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VWO_"))}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "fme_app.py"), "--local", "10"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("the loopback receiver stored") and last.endswith("the SDK sent 0 itself"), proc.stdout
    assert "purchase" in last and "vwo_variationShown" in last
