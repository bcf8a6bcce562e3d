"""The table of VWO wire formats, by the format name of ``event_types`` rows: a new wire format
is a module implementing ``wire.Format`` and a row here."""

from __future__ import annotations

from collections.abc import Callable

from ..event_types import FME, LEGACY
from .fme import FMEFormat
from .legacy import LegacyFormat
from .wire import Format

FORMATS: dict[str, Callable[[int, str], Format]] = {LEGACY: LegacyFormat, FME: FMEFormat}


def bind(account_id: int, sdk_key: str) -> dict[str, Format]:
    """Every wire format, bound to one account and sdk key."""
    return {name: make(account_id, sdk_key) for name, make in FORMATS.items()}
