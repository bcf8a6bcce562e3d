"""The one prefix of the package's log lines: every message of the ``vwo_otel`` logger reads
``vwo_otel: <message>`` (a part of the package names itself next: ``vwo_otel: spool ...``,
``vwo_otel: gateway: ...``), whichever module logged it and however the app formats records
(Python's last-resort handler prints the bare message).

Modules log through ``logging.getLogger("vwo_otel")``; the filter below, installed on that
logger when the package is imported, adds the prefix where a message lacks it, so no module
has to repeat it and none can get it wrong."""

from __future__ import annotations

import logging

PREFIX = "vwo_otel: "
_BARE = "vwo_otel "  # an older style ("vwo_otel spool ..."): given the colon


class PrefixFilter(logging.Filter):
    """Gives each record of the ``vwo_otel`` logger the package's prefix, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, str) and not msg.startswith(PREFIX):
            record.msg = PREFIX + (msg[len(_BARE):] if msg.startswith(_BARE) else msg)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Install the filter on ``logger`` (default: ``vwo_otel``'s) unless it is there already."""
    logger = logger or logging.getLogger("vwo_otel")
    if not any(isinstance(f, PrefixFilter) for f in logger.filters):
        logger.addFilter(PrefixFilter())
