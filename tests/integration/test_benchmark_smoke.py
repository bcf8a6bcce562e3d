"""A tiny smoke run of the benchmark script (the sections that need no official SDK), so
it cannot rot; its numbers are not looked at here (speed targets live in the script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_benchmark_quick_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "hot,timer,stall,spool,soak",
         "--json", str(tmp_path / "results.json")],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for metric in ("1a hot path", "5b timer lag p99", "6a emit latency p99", "8a emit cost with the spool"):
        assert metric in proc.stdout
    soak = next(line for line in proc.stdout.splitlines() if line.startswith("S soak"))
    assert soak.rstrip().endswith("yes"), soak  # emitted = delivered + reported + on disk
    assert (tmp_path / "results.json").exists()


def test_gateway_benchmark_quick_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gateway.py"), "--quick",
                           "--json", str(tmp_path / "gateway.json")],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "did not deliver" not in proc.stdout and "8 bombs at once" in proc.stdout
    assert "VWO events are not emitted" not in proc.stdout + proc.stderr


def test_gateway_workers_and_crash_benchmarks_quick_smoke():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gateway_workers.py"), "--quick"],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "events/CPU-s" in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gateway_crash.py"), "--rounds", "1"],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "with --spool: lost 0-0" in proc.stdout  # what it acknowledged survived the kill


def test_send_batch_benchmark_quick_smoke():
    """Against this checkout itself as the baseline: it runs and prints both rows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "send_batch.py"), "--baseline", str(ROOT),
                           "--quick"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "encode" in proc.stdout and "send_batch" in proc.stdout
