"""Input checks, one per fact, used by every entry point (API calls, processors, exporter,
``VWO_*`` variables, gateway, receiver, command line) and the one sdk-key redaction rule.

Each check returns the value it accepts (normalised: a digit string account id becomes an
int) or raises ``TypeError``/``ValueError`` whose message names ``name`` and the allowed range.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

#: Ids (account, campaign, variation, goal) are non-negative and fit VWO's signed 64 bits.
ID_LIMIT = 2**63
DEFAULT_ENDPOINT = "https://dev.visualwebsiteoptimizer.com"
#: The part of a URL VWO's endpoints add: an endpoint given with it would be sent twice.
_VWO_PATH = "/server-side/"


def number(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf, integer: bool = False,
           low_open: bool = False, unit: str = "") -> Any:
    """An int (``integer``) or finite int/float within [``low``, ``high``] (``low`` excluded
    when ``low_open``); bool is never a number. A value of another type raises ``TypeError``."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {describe(low=low, high=high, integer=integer, low_open=low_open, unit=unit)}"
                        f", got {type(value).__name__} {value!r}")
    ok = integer or (-math.inf < value < math.inf if type(value) is float else -(2**1023) < value < 2**1023)
    if not (ok and (low < value if low_open else low <= value) and value <= high):
        raise ValueError(f"{name} must be {describe(low=low, high=high, integer=integer, low_open=low_open, unit=unit)}"
                         f", got {value!r}")
    return value


def describe(*, low: float = -math.inf, high: float = math.inf, integer: bool = False, low_open: bool = False,
             unit: str = "") -> str:
    """The allowed range in words, as errors and docs show it: "an int from 1 to 5000"."""
    kind = "an int" if integer else f"a number{' of ' + unit if unit else ''}"
    if low > -math.inf and high < math.inf:
        if low_open:
            return f"{kind} > {_shown(low)} and <= {_shown(high)}"
        return f"{kind} from {_shown(low)} to {_shown(high)}"
    if low > -math.inf:
        return f"{kind} {'>' if low_open else '>='} {_shown(low)}"
    return kind if high == math.inf else f"{kind} <= {_shown(high)}"


def _shown(bound: float) -> str:
    """A range bound as written: 10485760, not 1.04858e+07; 0.5 stays 0.5."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def seconds(name: str, value: Any, *, low: float = 0.0, low_open: bool = False, high: float = math.inf) -> float:
    """A finite number of seconds within the range, as a float."""
    return float(number(name, value, low=low, high=high, low_open=low_open, unit="seconds"))


@dataclass(frozen=True)
class Range:
    """An allowed range of a numeric setting: ``check`` applies it, ``str()`` says it in words."""

    low: float = -math.inf
    high: float = math.inf
    integer: bool = False
    low_open: bool = False
    unit: str = ""

    def check(self, name: str, value: Any) -> Any:
        """``value`` if it is in range (as a float unless the range is of ints), else
        ``TypeError`` / ``ValueError`` naming ``name`` and the range."""
        value = number(name, value, low=self.low, high=self.high, integer=self.integer, low_open=self.low_open,
                       unit=self.unit)
        return value if self.integer else float(value)

    def __str__(self) -> str:
        return describe(low=self.low, high=self.high, integer=self.integer, low_open=self.low_open, unit=self.unit)


#: The numeric settings' ranges, one each, whichever way a setting arrives (argument,
#: ``batch_events`` key, ``VWO_*`` variable, gateway option).
EVENTS_PER_REQUEST = Range(1, 5000, integer=True)
REQUEST_TIME_INTERVAL = Range(1, unit="seconds")
MAX_QUEUE_SIZE = Range(1, integer=True)
MAX_CONCURRENT_REQUESTS = Range(1, 256, integer=True)
#: The longest wait a lock or a thread's join can take is ``threading.TIMEOUT_MAX`` (about 292
#: years on Linux): a longer one raises OverflowError when it comes (at shutdown, in SIGTERM's
#: handler, on the emitting thread). The settings that become such waits stop at a day.
MAX_WAIT = 86400
SHUTDOWN_TIMEOUT = Range(0, MAX_WAIT, low_open=True, unit="seconds")
TIMEOUT = Range(0, low_open=True, unit="seconds")  # one HTTP request
RETRY_BUDGET = Range(0, unit="seconds")
MAX_RETRIES = Range(0, 1000, integer=True)  # RetryPolicy.max_retries (FME retry_config's)
RETRY_BACKOFF = Range(0.001, unit="seconds")  # RetryPolicy's backoffs: never 0, which would retry in a hot loop
BACKOFF_MULTIPLIER = Range(1, 10)  # RetryPolicy.backoff_multiplier
MAX_PAYLOAD_BYTES = Range(1024, 10 * 1024 * 1024, integer=True)
BLOCK_WHEN_FULL = Range(0, MAX_WAIT, unit="seconds")  # how long an emitting thread may wait for room in a full queue
#: The on-disk spool (``Spool``): group-commit interval, and how long / how much event data may
#: wait on disk for VWO to answer again before it is reported failed.
SPOOL_COMMIT_INTERVAL = Range(0, 60, unit="seconds")
SPOOL_MAX_AGE = Range(60, 30 * 86400, unit="seconds")
SPOOL_MAX_BYTES = Range(64 * 1024, 2**40, integer=True)
#: The gateway's own settings (``GatewayConfig``): the port it binds, its backlog's bytes per
#: account, OTLP items per request, ``Retry-After``, request body and inflated sizes, its server's
#: idle / header / body deadlines and open connections, and its worker processes.
PORT = Range(0, 65535, integer=True)
MAX_BACKLOG_BYTES = Range(64 * 1024, 2**40, integer=True)
MAX_ITEMS = Range(1, 10_000_000, integer=True)
RETRY_AFTER = Range(0, 3600, unit="seconds")
MAX_BODY_BYTES = Range(1024, 1024**3, integer=True)
SERVER_TIMEOUT = Range(0, 3600, low_open=True, unit="seconds")
MAX_CONNECTIONS = Range(1, 1_000_000, integer=True)
WORKERS = Range(1, 256, integer=True)


#: The largest integral float accepted as an account id: above 2**53 a double no longer holds
#: every integer, so 123456789012345678.0 may not be the id that was written.
FLOAT_ID_LIMIT = 2**53


def account_id(value: Any, name: str = "account_id") -> int:
    """A VWO account id: a positive int below 2**63, a string of ASCII digits, or an integral
    float up to 2**53 (a Collector's filelog parser without ``parse_ints`` makes 123456 123456.0)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    elif isinstance(value, float) and value.is_integer() and 0 < value <= FLOAT_ID_LIMIT:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < ID_LIMIT:
        raise ValueError(f"{name} must be a positive int below 2**63 (your VWO account id; also accepted: a string "
                         f"of digits, or an integral float up to 2**53 such as 123456.0), got {value!r}")
    return value


def sdk_key(value: Any, name: str = "sdk_key") -> str:
    """A VWO sdk key: non-empty printable ASCII without surrounding spaces (it travels in a header)."""
    if (not isinstance(value, str) or not value or not value.isascii() or not value.isprintable()
            or value != value.strip()):
        raise ValueError(f"{name} must be a non-empty str of printable ASCII characters without surrounding "
                         "spaces (your VWO SDK key; it is sent as a header)")
    return value


def endpoint(value: Any, name: str = "endpoint") -> str:
    """VWO's collection host as an http(s) URL, optionally with a path prefix (data residency),
    without the ``/server-side/...`` path, a query or a fragment; returned in one spelling (scheme
    and host in lower case, without a default port or a trailing /): a spool file names it."""
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        port = parts.port if parts is not None else None  # raises for a port out of range
    except ValueError:
        parts = port = None
    problem = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() for c in value) or (port is not None and not 0 < port < 65536)):
        problem = "must be an http(s) URL with a valid host and port"
    elif parts.query or parts.fragment or value.endswith(("?", "#")):
        problem = "must not carry a query or fragment"
    elif _VWO_PATH in parts.path + "/":
        problem = "must be the host (and an optional path prefix) without VWO's /server-side/ path"
    if problem:
        raise ValueError(f"{name} {problem}, such as {DEFAULT_ENDPOINT!r}, got {value!r}")
    assert parts is not None
    user, at, host = parts.netloc.rpartition("@")
    host = host.lower()
    if port == {"http": 80, "https": 443}[parts.scheme]:
        host = host[:host.rfind(":")]
    return f"{parts.scheme}://{user}{at}{host}{parts.path}".rstrip("/")


def event_id(name: str, value: Any) -> int:
    """A VWO id (campaign, variation, goal): an int from 0 to 2**63-1 (bool is not an id)."""
    if type(value) is int and 0 <= value < ID_LIMIT:  # the common case, without the calls below
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if not 0 <= value < ID_LIMIT:  # larger ids would make VWO refuse the whole batch
        raise ValueError(f"{name} must be an int >= 0 (and < 2**63), got {value}")
    return value


def user_id(value: Any) -> str:
    """A user id: a non-empty str of valid Unicode (ints become str, as VWO's SDK does)."""
    if type(value) is str and value and value.isprintable():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"user_id must be a non-empty str (or an int), got {type(value).__name__}")  # no value shown
    if not value:
        raise ValueError("user_id must be a non-empty string")
    return text("user_id", value)


_VISITOR_UUID = re.compile(r"[0-9A-F]{32}").fullmatch
_WEB_VISITOR_UUID = re.compile(r"[DJ]?[0-9A-F]{32}").fullmatch


def visitor_uuid(value: Any, name: str = "vwo.visitor.uuid", web: bool = False) -> str:
    """VWO's visitor id ``u`` computed upstream: 32 uppercase hex characters (a uuid5 without dashes);
    with ``web`` (FME's ``visId``) also a web visitor's id, ``D`` or ``J`` and 32 hex characters."""
    if type(value) is not str or not (_WEB_VISITOR_UUID if web else _VISITOR_UUID)(value):
        also = " (or, for FME, D or J and 32 of them: a web visitor's id)" if web else ""
        raise ValueError(f"{name} must be 32 uppercase hex characters{also} (VWO's visitor uuid), got {value!r}")
    return value


def revenue(value: Any) -> float | None:
    """Revenue: None, or a finite int/float (NaN and infinities are refused)."""
    return None if value is None else finite("revenue", value)


def finite(name: str, value: Any) -> float:
    """A finite int or float (NaN, infinities, bool and ints beyond 64 bits are refused)."""
    if type(value) is float and -math.inf < value < math.inf:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a finite number or None, got {type(value).__name__} {value!r}")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:  # also avoids OverflowError in isfinite
        raise ValueError(f"{name} must be a finite number (an int within 64 bits), got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def dimension_value(name: str, value: Any) -> str:
    """A custom dimension value: a str, or an int / finite float sent as its text."""
    if isinstance(value, str):
        return text(name, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a str or number, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a str or finite number, got {value!r}")
    return str(value)


def text(name: str, value: Any) -> str:
    """Optional text (user agent, IP, dimension key/value): None becomes ''; a lone surrogate,
    which no UTF-8 request can carry, is refused here rather than failing a batch later."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # the value is not shown: it may be a user id or a visitor's IP
            raise ValueError(f"{name} must be valid Unicode text: it holds a lone surrogate at character "
                             f"{exc.start} of {len(value)}") from None
    return value


def non_empty_text(name: str, value: Any) -> str:
    """Text that must not be empty (a custom dimension's key)."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return text(name, value)


#: The longest FME event name accepted (VWO's dashboard names are short identifiers).
MAX_EVENT_NAME = 256


def fme_event_name(name: str, value: Any) -> str:
    """An FME event name: printable text without surrounding spaces, at most ``MAX_EVENT_NAME``
    characters, and not a number (a str ``"1"`` is a legacy type 1 written as text by mistake)."""
    if (not isinstance(value, str) or not value or len(value) > MAX_EVENT_NAME or not value.isprintable()
            or value != value.strip()):
        raise ValueError(f"{name} as a str is an FME event name: printable text without surrounding spaces, "
                         f"1 to {MAX_EVENT_NAME} characters, got {value!r}")
    try:
        float(value)
    except ValueError:
        return text(name, value)
    raise ValueError(f"{name} must be the int 1, 2 or 3 for a legacy VWO event (not the str {value!r}), or an "
                     "FME event name such as 'purchase'")


#: How deep the values of FME properties may nest (objects and lists in objects ...).
MAX_JSON_DEPTH = 32


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON text, but no JSON encoder can write it back
        raise ValueError(f"{text} is not a finite number")
    return value


def _depth(doc: Any) -> int:
    """How deep a parsed JSON value nests (a scalar: 0), without recursion."""
    deepest, stack = 0, [(doc, 0)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, (dict, list)):
            level += 1
            deepest = max(deepest, level)
            stack.extend((v, level) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def parse_json(name: str, text: str | bytes | bytearray) -> Any:
    """A JSON document as VWO can take it: no NaN or infinities (nor numbers that overflow to
    them), nested at most ``MAX_JSON_DEPTH`` deep; ``ValueError`` naming ``name`` otherwise."""
    try:
        doc = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"{name} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise ValueError(f"{name} is not valid JSON for VWO: {exc}") from None
    if _depth(doc) > MAX_JSON_DEPTH:
        raise ValueError(f"{name} nests deeper than {MAX_JSON_DEPTH} levels")
    return doc


def json_object(name: str, value: Any) -> str:
    """Text holding a JSON object (FME properties): returned as given once it parses as one, by
    ``parse_json``'s rules."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str holding a JSON object, got {type(value).__name__}")
    doc = parse_json(name, text(name, value))
    if not isinstance(doc, dict):
        raise ValueError(f"{name} must hold a JSON object ({{...}}), got {type(doc).__name__}")
    return value


# -- the sdk key never reaches a log, a repr or a stored request ---------------------------------
_ENV_PARAM = re.compile(r"((?:^|[?&])env=)[^&\s\"']+")


#: A secret this long is masked wherever it appears, glued to letters or digits too: after a
#: percent-escape (``%3D<key>``, a URL echoed as a query value), a JSON escape (``\n<key>``), or
#: itself (``<key><key>``). A shorter one is a test stand-in ("k") more likely than a key: it is
#: masked only where it stands as a token, not in the letters of other words.
WORD_SAFE_SECRET = 8


def mask_secret(text: str, secret: str) -> str:
    """``text`` with ``secret`` (as is, URL-encoded, JSON-escaped, in any letter case: as a
    server may echo it) replaced by ``***``. A secret shorter than ``WORD_SAFE_SECRET`` (a test
    key such as "k") is replaced only where it stands as a token (no letter or digit next to
    it), so it does not mask the letters of other words; a longer one (a real key) wherever it
    stands, glued to other letters or digits too."""
    pattern = "|".join(re.escape(form) for form in _forms(secret))
    if len(secret) < WORD_SAFE_SECRET:
        pattern = f"(?<![A-Za-z0-9])(?:{pattern})(?![A-Za-z0-9])"
    return re.sub(pattern, "***", text, flags=re.IGNORECASE)


def redact(message: str, secret: str | None = None) -> str:
    """``message`` with ``secret`` masked (``mask_secret``) and any ``env=<key>`` query value
    replaced by ``***``."""
    if secret:
        message = mask_secret(message, secret)
    return _ENV_PARAM.sub(r"\1***", message) if "env=" in message else message


def _forms(secret: str) -> list[str]:
    """``secret`` as a server may echo it (``redact``), longest first."""
    forms = {secret, quote_plus(secret), quote(secret, safe=""), json.dumps(secret)[1:-1],
             json.dumps(json.dumps(secret)[1:-1])[1:-1]}
    return sorted(forms, key=len, reverse=True)


def excerpt(text: str, secret: str | None, length: int = 200, read: int = 4096) -> str:
    """The start of ``text`` (a server's answer) to quote in an error: its first ``read``
    characters redacted (``redact``; a huge answer costs no more), then ``length`` of them.
    Where ``read`` cut a form of the secret short, the end that may hold its start is left out
    (redacting what comes before may bring it into the quote)."""
    shown = redact(text[:read], secret)
    if secret and len(text) > read:
        shown = shown[:max(0, len(shown) - len(_forms(secret)[0]) + 1)]
    return shown[:length]


def mask(secret: str) -> str:
    """A secret shown for recognition only: its last four characters."""
    return f"***{secret[-4:]} ({len(secret)} chars)" if len(secret) >= 12 else f"*** ({len(secret)} chars)"


#: What ``flag`` takes, as its errors and the variables' descriptions say it.
FLAG_WORDS = "true or false (1/0, yes/no, on/off)"


def flag(name: str, text: str) -> bool:
    """A yes/no setting written as text: true/false, 1/0, yes/no, on/off (any case)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be {FLAG_WORDS}, got {text!r}")


def boolean(name: str, value: Any) -> bool:
    """A yes/no keyword argument: True or False only (``"false"`` would otherwise be true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


#: A gateway bearer token's length: long enough not to be guessed, short enough for a header.
AUTH_TOKEN_MIN_CHARS = 16
AUTH_TOKEN_MAX_CHARS = 4096


def auth_token(value: Any, name: str = "auth token") -> str:
    """A gateway bearer token: 16 to 4096 visible ASCII characters (it travels in the
    ``Authorization`` header; no spaces)."""
    size = f"from {AUTH_TOKEN_MIN_CHARS} to {AUTH_TOKEN_MAX_CHARS} characters"
    if not isinstance(value, str) or not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError(f"{name} must be a str of visible ASCII characters without spaces, {size}")
    if not AUTH_TOKEN_MIN_CHARS <= len(value) <= AUTH_TOKEN_MAX_CHARS:
        raise ValueError(f"{name} must be {size} long, got {len(value)}")
    return value
