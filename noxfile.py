"""Every Python vwo_otel claims: the unit layer and a core integration subset (delivery, signals,
fork, exit, the official SDK, asyncio) on each CPython besides the one ``.venv`` runs the whole
suite on. ``python3 dev.py test`` runs these sessions beside the whole suite
(``python3 dev.py pythons`` runs only them; ``.venv/bin/nox -s core-3.12`` one).

The Python running nox (``.venv``'s, whose whole suite ``dev.py test`` runs) gets no
session of its own. An interpreter is looked for as ``python3.X`` on PATH (pyenv's shims answer only for the
versions pyenv has selected, so each is asked for its version) and in pyenv's
``versions/3.X.*``; a version not found is one line, and the run goes on.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import nox

#: The versions pyproject.toml's classifiers name; the whole suite runs on .venv's (3.11 here).
VERSIONS = ("3.10", "3.11", "3.12", "3.13")
#: The core integration subset (the whole suite stays on one version).
CORE = ["tests/unit", "tests/integration/test_events_delivery.py", "tests/integration/test_signals.py",
        "tests/integration/test_fork.py", "tests/integration/test_instrumentation.py",
        "tests/integration/test_asyncio.py", "tests/integration/test_backlog.py",
        "tests/integration/test_retryable.py", "tests/integration/test_fme_delivery.py"]
#: Exit: the tests named *exit* of these modules (delivery at interpreter exit, bounded).
EXIT = ["tests/integration/test_batching.py", "tests/integration/test_reliability.py",
        "tests/integration/test_thread_idle.py"]

nox.options.error_on_missing_interpreters = False
nox.options.reuse_venv = "yes"


def find(version: str) -> str | None:
    """A working ``python{version}``: on PATH, or in pyenv's versions directory."""
    candidates = [shutil.which(f"python{version}")]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")),
                         reverse=True)
    for path in candidates:
        if not path:
            continue
        try:
            out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if out == version:
            return path
    return None


def _core(session: nox.Session) -> None:
    session.install("--disable-pip-version-check", "-q", "-e", ".[test]")
    pytest = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    session.run(*pytest, *CORE, *session.posargs)
    session.run(*pytest, *EXIT, "-k", "exit", *session.posargs)


def _register(version: str) -> bool:
    """Register ``core-{version}`` if that Python is found (else one line); True if registered."""
    path = find(version)
    if path is None:
        print(f"Python {version} not found (not on PATH, not in pyenv): its core tests are skipped")
        return False

    def core(session: nox.Session) -> None:
        _core(session)
    core.__doc__ = f"unit layer + core integration subset on Python {version} ({path})"
    nox.session(name=f"core-{version}", python=path)(core)
    return True


_found = [_register(v) for v in VERSIONS if v != f"{sys.version_info[0]}.{sys.version_info[1]}"]
if not any(_found):  # no other Python on this machine: say so, and let the run pass

    @nox.session(python=False, name="no-other-python")
    def no_other_python(session: nox.Session) -> None:
        """Stands in when no other CPython was found."""
        session.log("no other CPython found: only the whole suite's Python was tested")
