#!/usr/bin/env python3
"""Set up ``.venv`` (once) and run the demo or the whole test suite.

    python3 dev.py demo      # the demo against the embedded loopback VWO receiver
    python3 dev.py test      # lint (ruff), types (mypy), the whole test suite, the other Pythons, the FME SDK's tests
    python3 dev.py test ARGS # pytest ARGS only (after lint and types), e.g. -x -q tests/unit
    python3 dev.py pythons   # the unit layer + core integration subset on every other CPython (noxfile.py)
    python3 dev.py fme       # the FME SDK's tests only (tests/integration/fme, in .venv-fme); pytest args follow

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
#: The FME SDK installs a top-level `vwo` package, like the legacy SDK in .venv: its tests get their own.
FME_VENV = os.path.join(ROOT, ".venv-fme")
FME_PY = os.path.join(FME_VENV, "Scripts" if os.name == "nt" else "bin", "python")
FME_TESTS = os.path.join("tests", "integration", "fme")


def ensure_venv(extra: str, venv_dir: str = VENV) -> None:
    """Create ``venv_dir`` and install the package (with ``extra``) unless it is already up to date."""
    python = os.path.join(venv_dir, "Scripts" if os.name == "nt" else "bin", "python")
    if not os.path.exists(python):
        print(f"creating {venv_dir}", flush=True)
        venv.create(venv_dir, with_pip=True)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        digest = hashlib.sha256(f.read() + extra.encode()).hexdigest()
    stamp = os.path.join(venv_dir, f".installed-{extra or 'base'}")
    if os.path.exists(stamp) and open(stamp).read() == digest:
        return
    target = f".[{extra}]" if extra else "."
    print(f"installing vwo-otel{f'[{extra}]' if extra else ''} into {os.path.basename(venv_dir)}", flush=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", target],
                   cwd=ROOT, check=True)
    with open(stamp, "w") as f:
        f.write(digest)


def ensure_haproxy() -> None:
    """Debian's haproxy for tests/integration/test_deploy.py (the compose topology as processes):
    installed with apt-get when missing and this is root; otherwise that test skips, saying why."""
    import shutil

    if shutil.which("haproxy") or not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    print("installing haproxy (apt-get) for tests/integration/test_deploy.py", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "install", "-y", "-q", "haproxy"], ["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "haproxy"]):
        try:
            subprocess.run(step, env=env, capture_output=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            return
        if shutil.which("haproxy"):
            return


def run(*cmd: str) -> int:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def fme_tests(*args: str) -> int:
    """The FME SDK's tests, in their own environment (.venv-fme)."""
    ensure_venv("fme-test", FME_VENV)
    return run(FME_PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(args or (FME_TESTS,)))


def beside(log, *cmds: tuple[str, ...]) -> int:
    """Run ``cmds`` one after another with their output into ``log``, at the lowest CPU priority
    (the whole suite beside them has timing tests: it gets the cores first), pytest's temporary
    folders in a root of their own (removed after); the first non-zero exit code (0 if none)."""
    import shutil
    import tempfile

    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    with tempfile.TemporaryDirectory(prefix="vwo-otel-beside-", ignore_cleanup_errors=True) as root:
        env = {**os.environ, "PYTEST_DEBUG_TEMPROOT": root}
        for cmd in cmds:
            log.write("+ " + " ".join(cmd) + "\n")
            log.flush()
            code = subprocess.run([*nice, *cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            if code:
                return code
    return 0


def main(argv: list) -> int:
    if not argv or argv[0] not in ("demo", "test", "pythons", "fme"):
        print(__doc__)
        return 2
    if argv[0] == "demo":
        ensure_venv("")
        return run(PY, "-m", "vwo_otel", "demo", *argv[1:])
    if argv[0] == "fme":
        return fme_tests(*argv[1:])
    ensure_venv("test")
    ensure_haproxy()
    pythons = (PY, "-m", "nox")  # noxfile.py: 3.10 / 3.12 / 3.13 (those found), unit + core integration
    if argv[0] == "pythons":
        return run(*pythons, *argv[1:])
    for step in ((PY, "-m", "ruff", "check", "vwo_otel", "tests", "benchmarks", "examples", "noxfile.py", "dev.py"),
                 (PY, "-m", "mypy")):  # the package, settings in pyproject.toml ([tool.mypy])
        code = run(*step)
        if code:
            return code
    suite = (PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *argv[1:])
    if argv[1:]:
        return run(*suite)
    # The whole run: the other Pythons and the FME SDK's tests (tests/integration/fme is skipped
    # in .venv, without the FME SDK) run beside the whole suite, which mostly waits on sockets,
    # servers and timers (about half a core of 2): the run takes the suite's time, not the sum.
    import tempfile
    import threading

    ensure_venv("fme-test", FME_VENV)
    codes: list[int] = []
    with tempfile.TemporaryFile("w+") as log:
        other = threading.Thread(target=lambda: codes.append(beside(
            log, pythons, (FME_PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", FME_TESTS))))
        other.start()
        print("the other Pythons (nox) and the FME SDK's tests run beside the suite; their output follows it",
              flush=True)
        code = run(*suite)
        other.join()
        log.seek(0)
        sys.stdout.write(log.read())
        sys.stdout.flush()
    return code or (codes[0] if codes else 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
