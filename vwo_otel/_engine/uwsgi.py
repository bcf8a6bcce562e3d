"""uWSGI without ``enable-threads``: detect it and say so, once.

uWSGI's Python plugin runs no thread but the request's unless Python threads are enabled
(``enable-threads = true`` in the ini, ``--enable-threads``, or ``threads = N``): the worker
keeps the interpreter lock while it waits for the next request, so vwo_otel's delivery thread
would never run and events would wait in the queue until the worker exits. ``check()`` runs
when a processor is made; it costs an import attempt outside uWSGI (where ``import uwsgi``
fails at once) and nothing more.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("vwo_otel")

_OFF = {b"", b"0", b"false", b"no", b"off", "", "0", "false", "no", "off"}
_WARNED = "_vwo_otel_warned"  # set on the uwsgi module once the warning was logged in this process


def threads_disabled(options: Mapping[str, Any]) -> bool:
    """Whether uWSGI ``options`` (``uwsgi.opt``) leave Python threads off: neither
    ``enable-threads`` nor ``threads`` is set to something true."""
    for name in ("enable-threads", "threads"):
        value = options.get(name)
        if value is None or value is False:
            continue
        if isinstance(value, (bytes, str)) and value.strip().lower() in _OFF:
            continue
        return False
    return True


def check() -> bool:
    """True (after one WARNING naming the option) when running under uWSGI with Python threads off."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        try:
            uwsgi = importlib.import_module("uwsgi")  # only importable inside uWSGI
        except ImportError:
            return False
    if not threads_disabled(getattr(uwsgi, "opt", {}) or {}):
        return False
    if not getattr(uwsgi, _WARNED, False):
        try:
            setattr(uwsgi, _WARNED, True)
        except (AttributeError, TypeError):  # a module that takes no attribute: warn each time rather than never
            pass
        logger.warning("uWSGI runs this worker without Python threads, so VWO events would wait until it exits: "
                       "set enable-threads = true in the uWSGI ini (or --enable-threads, or threads = N)")
    return True
