"""Zero-code: `opentelemetry-instrument python app.py` with VWO_* set delivers VWO events
through the provider the launcher builds, keeps them out of the app's traces, and the
exporter's own (instrumented) requests create no spans. Real subprocesses, loopback only."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import VWOSampler, auto

BIN = Path(sys.executable).parent
INSTRUMENT = BIN / "opentelemetry-instrument"

APP = textwrap.dedent("""
    import sys

    import requests
    from opentelemetry import trace

    import vwo_otel

    tracer = trace.get_tracer("shop")
    vwo = vwo_otel.VWOEvents()  # the global provider, as the launcher built it
    with tracer.start_as_current_span("checkout"):
        for i in range(7):
            vwo.activate(231, 1 + i % 2, f"user-{i}")
        vwo.track(231, 1, 5, "user-0", revenue=9.5)
        requests.get(sys.argv[1] + "/health", timeout=5)  # the app's own call: traced as usual
    print("sampler:", trace.get_tracer_provider().sampler.get_description(), flush=True)
    # no flush, no shutdown: the queue is delivered at exit
""")


def _entry_points(group: str) -> dict[str, str]:
    return {ep.name: ep.value for ep in metadata.entry_points(group=group)}


def test_entry_points_are_installed():
    assert _entry_points("opentelemetry_pre_instrument").get("vwo_otel") == "vwo_otel.auto:configure"
    samplers = _entry_points("opentelemetry_traces_sampler")
    assert samplers["vwo_parentbased_traceidratio"] == "vwo_otel.auto:parentbased_traceidratio"


def _run(tmp_path: Path, receiver, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if not INSTRUMENT.exists():
        pytest.fail(f"{INSTRUMENT} missing: install the test extra (opentelemetry-instrumentation)")
    (tmp_path / "app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VWO_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY, "VWO_ENDPOINT": receiver.url,
        "VWO_EVENTS_PER_REQUEST": "100", "VWO_REQUEST_TIME_INTERVAL": "600",
        "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "shop", **extra_env,
    })
    return subprocess.run([str(INSTRUMENT), sys.executable, "app.py", receiver.url], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def _spans(stdout: str) -> list[dict]:
    """The console exporter's JSON spans (pretty-printed objects, one after another)."""
    decoder = json.JSONDecoder()
    return [decoder.raw_decode(stdout, m.start())[0] for m in re.finditer(r"^\{$", stdout, re.M)]


def test_instrumented_app_delivers_vwo_events(tmp_path, receiver):
    proc = _run(tmp_path, receiver, {})
    assert proc.returncode == 0, proc.stderr
    assert receiver.wait_for_events(8, timeout=10), proc.stderr
    assert [r["n_events"] for r in receiver.requests() if r["path"].endswith("batch-events")] == [8]
    assert sorted(e["eT"] for e in receiver.events()) == [1] * 7 + [2]
    assert "sampler: VWOSampler{ParentBased" in proc.stdout
    names = [s["name"] for s in _spans(proc.stdout)]
    assert "checkout" in names and "GET" in names  # the app's own spans and its own HTTP call
    assert not [n for n in names if n.startswith("vwo.")]  # VWO events stay out of the app's traces
    assert not [n for n in names if n == "POST"]  # the exporter's request is not traced


def test_sampler_chosen_by_name(tmp_path, receiver):
    """OTEL_TRACES_SAMPLER=vwo_parentbased_traceidratio picks the wrapped sampler by name."""
    proc = _run(tmp_path, receiver, {"OTEL_TRACES_SAMPLER": "vwo_parentbased_traceidratio",
                                     "OTEL_TRACES_SAMPLER_ARG": "0"})
    assert proc.returncode == 0, proc.stderr
    assert receiver.wait_for_events(8, timeout=10), proc.stderr
    assert "sampler: VWOSampler{ParentBased{root:TraceIdRatioBased{0.0}" in proc.stdout
    assert _spans(proc.stdout) == []  # ratio 0: no app spans, VWO events still delivered


def test_without_an_sdk_configurator_a_provider_is_set(tmp_path, receiver):
    """A launcher that built no SDK provider (no distro / configurator): vwo_otel sets one."""
    proc = _run(tmp_path, receiver, {"OTEL_PYTHON_CONFIGURATOR": "none-installed"})
    assert proc.returncode == 0, proc.stderr
    assert receiver.wait_for_events(8, timeout=10), proc.stderr
    assert "sampler: VWOSampler{ParentBased{root:AlwaysOnSampler" in proc.stdout


def test_bad_setting_is_reported_and_app_runs(tmp_path, receiver):
    proc = _run(tmp_path, receiver, {"VWO_EVENTS_PER_REQUEST": "lots"})
    assert proc.returncode == 0, proc.stderr
    assert "VWO_EVENTS_PER_REQUEST must be an int from 1 to 5000, got 'lots'" in proc.stderr
    assert receiver.event_count() == 0


def test_forgotten_secret_leaks_nothing_and_names_the_variable(tmp_path, receiver):
    """VWO_SDK_KEY missing (a forgotten secret) with the app's own trace exporter: no VWO span,
    and so no user id, reaches that exporter; a WARNING names the missing variable."""
    proc = _run(tmp_path, receiver, {"VWO_SDK_KEY": ""})
    assert proc.returncode == 0, proc.stderr
    spans = _spans(proc.stdout)
    assert [s["name"] for s in spans] and all(not s["name"].startswith("vwo.") for s in spans), proc.stdout
    assert "user-" not in proc.stdout
    assert "VWO_SDK_KEY not set" in proc.stderr
    assert receiver.events() == []


#: Names an app may well use for its own settings (issue #21 item 9: 6 of these 10 switched VWO off).
APP_VARIABLES = {"VWO_ENV": "staging", "VWO_API_KEY": "app-key-1", "VWO_ACCOUNT": "acme", "VWO_TIMEOUT_MS": "1500",
                 "VWO_ENABLED": "true", "VWO_DEBUG": "1", "VWO_LOG_LEVEL": "debug", "VWO_CAMPAIGN_KEY": "checkout",
                 "VWO_SETTINGS_FILE": "/etc/vwo.json", "VWO_USER_ID": "u-1"}


@pytest.mark.parametrize("name", list(APP_VARIABLES))
def test_an_apps_own_vwo_variable_disables_nothing(tmp_path, receiver, name):
    """The app's own VWO_ENV=staging (or the like) next to correct credentials: every event
    delivered, and at most one warning naming the variable, without a "did you mean"."""
    proc = _run(tmp_path, receiver, {name: APP_VARIABLES[name]})
    assert proc.returncode == 0, proc.stderr
    assert receiver.wait_for_events(8, timeout=10), proc.stderr
    assert receiver.event_count() == 8
    lines = [line for line in proc.stderr.splitlines() if name in line]
    assert len(lines) <= 1 and "did you mean" not in proc.stderr, proc.stderr
    assert "not enabled" not in proc.stderr, proc.stderr


def test_unusable_spool_does_not_stop_instrumentation(tmp_path, receiver):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    proc = _run(tmp_path, receiver, {"VWO_SPOOL": str(blocker / "spool")})
    assert proc.returncode == 0, proc.stderr
    assert f"spool directory {blocker / 'spool'} is unusable" in proc.stderr
    assert receiver.wait_for_events(8, timeout=10), proc.stderr


def test_configure_is_a_no_op_without_credentials(caplog):
    assert auto.configure({}) is None
    assert auto.configure({"VWO_ACCOUNT_ID": "1"}) is None
    with caplog.at_level(logging.ERROR, logger="vwo_otel"):
        assert auto.configure({"VWO_ACCOUNT_ID": "x", "VWO_SDK_KEY": "k"}) is None
    assert "VWO_ACCOUNT_ID must be a positive int" in caplog.text


def test_an_apps_own_variable_alone_is_no_set_up_attempt(caplog):
    """VWO_ENV set by an app that does not use vwo_otel zero-code: no "not set" warning."""
    with caplog.at_level(logging.DEBUG, logger="vwo_otel"):
        assert auto.configure({"VWO_ENV": "staging"}) is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        assert auto.configure({"VWO_ENDPOINT": "http://127.0.0.1:1"}) is None  # one of ours: meant to
    assert "VWO_ACCOUNT_ID and VWO_SDK_KEY not set" in caplog.text


def test_a_misspelt_secret_is_named_in_the_not_set_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        assert auto.configure({"VWO_ACCOUNT_ID": "123456", "VWO_SKD_KEY": "key"}) is None
    assert "VWO_SDK_KEY not set (VWO_SKD_KEY is set: a misspelling of VWO_SDK_KEY?)" in caplog.text


@pytest.mark.parametrize("name, arg, description", [
    ("vwo", None, "VWOSampler{ParentBased{root:AlwaysOnSampler"),
    ("vwo_always_on", None, "VWOSampler{AlwaysOnSampler}"),
    ("vwo_always_off", None, "VWOSampler{AlwaysOffSampler}"),
    ("vwo_traceidratio", "0.25", "VWOSampler{TraceIdRatioBased{0.25}}"),
    ("vwo_parentbased_always_off", None, "VWOSampler{ParentBased{root:AlwaysOffSampler"),
    ("vwo_parentbased_traceidratio", "", "VWOSampler{ParentBased{root:TraceIdRatioBased{1.0}"),
])
def test_sampler_factories_through_the_sdk(monkeypatch, name, arg, description):
    from opentelemetry.sdk._configuration import _import_sampler

    if arg is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    sampler = _import_sampler(name)
    assert isinstance(sampler, VWOSampler)
    assert sampler.get_description().startswith(description)


def test_bad_sampler_rate_is_refused():
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG"):
        auto.traceidratio("2")
