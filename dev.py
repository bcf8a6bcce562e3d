#!/usr/bin/env python3
"""Set up ``.venv`` (once) and run the demo or the whole test suite.

    python3 dev.py demo      # the demo against the embedded loopback VWO receiver
    python3 dev.py test      # lint (ruff), types (mypy), the whole test suite, then the other Pythons
    python3 dev.py test ARGS # pytest ARGS only (after lint and types), e.g. -x -q tests/unit
    python3 dev.py pythons   # the unit layer + core integration subset on every other CPython (noxfile.py)

Needs only Python 3.10+ with pip and venv; everything else is installed into ``.venv``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
BIN = os.path.join(VENV, "Scripts" if os.name == "nt" else "bin")
PY = os.path.join(BIN, "python")


def ensure_venv(extra: str) -> None:
    """Create .venv and install the package (with ``extra``) unless it is already up to date."""
    if not os.path.exists(PY):
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        digest = hashlib.sha256(f.read() + extra.encode()).hexdigest()
    stamp = os.path.join(VENV, f".installed-{extra or 'base'}")
    if os.path.exists(stamp) and open(stamp).read() == digest:
        return
    target = f".[{extra}]" if extra else "."
    print(f"installing vwo-otel{f'[{extra}]' if extra else ''} into .venv", flush=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", target],
                   cwd=ROOT, check=True)
    with open(stamp, "w") as f:
        f.write(digest)


def run(*cmd: str) -> int:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def main(argv: list) -> int:
    if not argv or argv[0] not in ("demo", "test", "pythons"):
        print(__doc__)
        return 2
    if argv[0] == "demo":
        ensure_venv("")
        return run(PY, "-m", "vwo_otel", "demo", *argv[1:])
    ensure_venv("test")
    pythons = (PY, "-m", "nox")  # noxfile.py: 3.10 / 3.12 / 3.13 (those found), unit + core integration
    if argv[0] == "pythons":
        return run(*pythons, *argv[1:])
    steps = [
        (PY, "-m", "ruff", "check", "vwo_otel", "tests", "benchmarks", "examples", "noxfile.py", "dev.py"),
        (PY, "-m", "mypy"),  # the package, settings in pyproject.toml ([tool.mypy])
        (PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *argv[1:]),
    ]
    if not argv[1:]:  # the whole run: every other Python too
        steps.append(pythons)
    for step in steps:
        code = run(*step)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
