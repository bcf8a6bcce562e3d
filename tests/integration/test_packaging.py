"""The wheel: built from the sources alone, installed into a fresh venv (no network: the
dependencies come from this environment), imported from there and `vwo-otel --help` run."""

from __future__ import annotations

import email
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RUNTIME_DEPS = {"opentelemetry-api", "opentelemetry-sdk", "requests", "h11"}


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_builds_installs_and_runs(tmp_path):
    src = tmp_path / "src"  # build from a copy: no build/ or egg-info in the work tree
    shutil.copytree(ROOT / "vwo_otel", src / "vwo_otel", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src,
         cwd=tmp_path)
    (wheel,) = dist.glob("vwo_otel-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(info))
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "vwo_otel/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]
    runtime = {r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
               for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r}
    assert runtime == RUNTIME_DEPS
    assert "vwo-otel = vwo_otel.cli:main" in entry_points
    assert "vwo_otel = vwo_otel.auto:configure" in entry_points

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                        cwd=tmp_path).strip())
    # this environment's packages (opentelemetry, requests) without their .pth hooks (so no
    # editable vwo_otel): a plain path entry, after the venv's own site-packages
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    (purelib / "_deps_from_test_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel, cwd=tmp_path)

    where = _run(python, "-c", "import vwo_otel, opentelemetry.sdk; print(vwo_otel.__file__, vwo_otel.__version__)",
                 cwd=tmp_path)
    assert where.startswith(str(purelib)), where  # the installed wheel, not the work tree
    out = _run(bindir / "vwo-otel", "--help", cwd=tmp_path)
    assert "demo" in out and "receive" in out and "check" in out
    out = _run(bindir / "vwo-otel", "check", "--help", cwd=tmp_path)
    assert "VWO_" in out
