"""Who may send, and what the gateway takes: bearer tokens (``Tokens``), the answer a refused
request gets (``Refused``), and ``Admission``: a decoded request's VWO items into the accounts'
backlogs whole or not at all (403 an account the token may not write to, 429 a full backlog or
spool, 503 while stopping or when the spool cannot write), with the counters ``/stats`` shows."""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ... import checks
from ..._engine.batcher import Batcher
from ..._engine.settle import LogLimiter
from ...event import MalformedEvent, VWOEvent, from_attributes
from .. import otlp
from ..otlp import ACCOUNT_ID
from .config import GatewayConfig

_WWW_AUTHENTICATE = ("WWW-Authenticate", 'Bearer realm="vwo-otel-gateway"')
_MAX_MESSAGE = 512


class Refused(Exception):
    """A request answered with an error: HTTP ``status``, OTLP status ``code``, ``message``, more ``headers``."""

    def __init__(self, status: int, code: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, tuple(headers)


@dataclass(frozen=True)
class _Token:
    """A configured bearer token, kept as its SHA-256 (compared in constant time), and the
    accounts it may write to (None: all)."""

    digest: bytes
    accounts: frozenset[int] | None


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token).digest()


class Tokens:
    """The gateway's bearer tokens (none: no authentication, loopback only)."""

    def __init__(self, tokens: Mapping[str, frozenset[int] | None]) -> None:
        self._tokens = [_Token(_digest(t), accounts) for t, accounts in tokens.items()]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: str | None) -> frozenset[int] | None:
        """The accounts the ``Authorization`` header's bearer token may write to (None: all, also
        when no tokens are configured); ``Refused`` 401 without a valid token. Every token is
        compared, in constant time, so the answer's timing tells nothing about which one nearly matched."""
        if not self._tokens:
            return None
        scheme, _, given = (authorization or "").strip().partition(" ")
        digest = _digest(given.strip().encode("latin-1", "replace")) if scheme.lower() == "bearer" else b""
        found: _Token | None = None
        for token in self._tokens:
            if hmac.compare_digest(token.digest, digest):
                found = token
        if found is None:
            raise Refused(401, otlp.UNAUTHENTICATED, "missing or wrong bearer token: send Authorization: "
                          "Bearer <token> (one of the gateway's auth_tokens)", (_WWW_AUTHENTICATE,))
        return found.accounts


class Counters:
    """What ``/stats`` counts about requests: by signal, answers by status, items seen, VWO events
    accepted and rejected by reason, per account accepted and requests to VWO; one lock."""

    def __init__(self, accounts: Sequence[int]) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {otlp.TRACES: 0, otlp.LOGS: 0}
        self.responses: dict[int, int] = {}
        self.counts: dict[str, int] = {"items": 0, "vwo_items": 0, "accepted": 0, "throttled_events": 0}
        self.rejected: dict[str, int] = {"malformed": 0, "unknown_account": 0}
        self.per_account = {a: {"accepted": 0, "requests_ok": 0, "requests_failed": 0} for a in accounts}

    def response(self, status: int) -> None:
        with self.lock:
            self.responses[status] = self.responses.get(status, 0) + 1

    def request(self, signal_: str) -> None:
        with self.lock:
            self.requests[signal_] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as ``/stats`` shows them (without the accounts' live figures)."""
        with self.lock:
            return {
                "requests": dict(self.requests),
                "responses": {str(k): v for k, v in sorted(self.responses.items())},
                **self.counts,
                "ignored_items": self.counts["items"] - self.counts["vwo_items"],
                "rejected": dict(self.rejected),
                "per_account": {k: dict(v) for k, v in self.per_account.items()},
            }


@dataclass
class _Rejected:
    """The VWO items of one request rejected for one reason: how many, and the first one's detail."""

    first: str
    count: int = 0


def _forbidden(allowed: frozenset[int], where: int | str, raw: Any) -> Refused:
    """403 for an item going to an account outside the token's ``allowed`` ones."""
    target = where if isinstance(where, int) else "no account" if raw is None else otlp.shorten(raw)
    return Refused(403, otlp.PERMISSION_DENIED, f"this token may write to account(s) "
                   f"{', '.join(map(str, sorted(allowed)))} only; an item goes to {target}; nothing was kept")


class Admission:
    """Queues a request's VWO events into the accounts' ``Batcher``s, or refuses it whole."""

    def __init__(self, config: GatewayConfig, batchers: Mapping[int, Batcher], counters: Counters,
                 log: LogLimiter) -> None:
        self.config, self._batchers, self._counters, self._log = config, batchers, counters, log
        self._lock = threading.Lock()
        self.stopping = False
        #: why an event without an account is refused (only ever without a default account)
        self._no_account = f"no {ACCOUNT_ID} on the record or its resource " + (
            "and no default account" if len(batchers) == 1 else "(a gateway with several accounts has no default)")

    def stop(self) -> None:
        """From now on every request is refused 503 + ``Retry-After``."""
        with self._lock:
            self.stopping = True

    def unready(self) -> str | None:
        """Why the gateway should be sent nothing now (``/readyz`` 503), or None: it is draining,
        or an account's backlog (or, with a spool, its disk) cannot take one more event."""
        if self.stopping:
            return "draining"
        for account_id in self._batchers:
            why = self._full(account_id, 1, 0)
            if why is not None:
                return why
        return None

    def retry_after(self) -> tuple[str, str]:
        """The ``Retry-After`` header of a 429 / 503: ``retry_after`` in whole seconds."""
        return ("Retry-After", str(max(0, math.ceil(self.config.retry_after))))

    def _full(self, account_id: int, n: int, nbytes: int) -> str | None:
        """Why account ``account_id`` cannot take ``n`` more events of ``nbytes``, or None. The
        backlog takes up to ``max_backlog`` events and ``max_backlog_bytes`` (a request larger
        than either is taken once the backlog is below it: it could never fit otherwise, and
        ``max_inflated_bytes`` bounds it); with a spool, the disk must have room for the whole
        backlog should VWO stop answering."""
        c, batcher = self.config, self._batchers[account_id]
        held, held_bytes = batcher.queue_size(), batcher.queue_bytes()
        if not (held + n <= c.max_backlog or (n > c.max_backlog and held < c.max_backlog)):
            return "backlog full (events)"
        if not (held_bytes + nbytes <= c.max_backlog_bytes or (nbytes > c.max_backlog_bytes and held_bytes == 0)):
            return "backlog full (bytes)"
        return batcher.backlog.refuse(held_bytes, nbytes)

    def _resolve(self, raw: Any) -> int | str:
        """The configured account an item goes to, or why it cannot go anywhere."""
        if raw is None:
            if self.config.default_account is None:
                return "unknown_account"
            return self.config.default_account
        try:
            account_id = checks.account_id(raw, ACCOUNT_ID)
        except ValueError:
            return "malformed_account"
        return account_id if account_id in self._batchers else "unknown_account"

    def accept(self, signal_: str, decoded: otlp.Decoded, allowed: frozenset[int] | None) -> tuple[int, str]:
        """Turn the request's VWO items into events and queue them all, or refuse the whole
        request (403 an item for an account outside ``allowed``, 429/503); returns
        (rejected items, partial-success message)."""
        by_account: dict[int, list[VWOEvent]] = {}
        sizes: dict[int, int] = {}  # their VWOEvent.nbytes
        problems: dict[str, _Rejected] = {}

        def reject(reason: str, detail: str, count: int = 1) -> None:
            problems.setdefault(reason, _Rejected(detail)).count += count

        if decoded.oversized:
            reject("malformed", f"larger than {otlp.MAX_ITEM_BYTES} bytes", decoded.oversized)

        for group in decoded.groups:
            for item in group.items:
                attrs = item.attributes
                raw = attrs.get(ACCOUNT_ID, group.account)
                where = self._resolve(raw)
                if allowed is not None and where not in allowed:
                    raise _forbidden(allowed, where, raw)
                if isinstance(where, str):
                    if where == "unknown_account":
                        reject("unknown_account", f"{ACCOUNT_ID} {raw} is not configured on this gateway"
                               if raw is not None else self._no_account)
                    else:
                        reject("malformed", f"{ACCOUNT_ID} must be a positive integer, got {otlp.shorten(raw)}")
                    continue
                try:
                    event = from_attributes(attrs, item.time_ns)
                except MalformedEvent as exc:
                    reject("malformed", str(exc))
                    continue
                nbytes = event.nbytes()
                if nbytes > otlp.MAX_ITEM_BYTES:
                    reject("malformed", f"larger than {otlp.MAX_ITEM_BYTES} bytes")
                    continue
                by_account.setdefault(where, []).append(event)
                sizes[where] = sizes.get(where, 0) + nbytes
        with self._lock:
            if self.stopping:
                raise Refused(503, otlp.UNAVAILABLE, "gateway is shutting down; retry (elsewhere)",
                               (self.retry_after(),))
            full = {a: why for a, events in by_account.items()
                    if (why := self._full(a, len(events), sizes[a])) is not None}
            if full:
                throttled = sum(len(by_account[a]) for a in full)
                with self._counters.lock:
                    self._counters.counts["throttled_events"] += decoded.vwo_items
                what = "; ".join(f"account {a}: {why}" for a, why in full.items())
                self._log.warn(("backlog_full", tuple(full.items())), throttled,
                               "vwo_otel gateway: %s; answering 429 (sender retries)", what)
                raise Refused(429, otlp.RESOURCE_EXHAUSTED, f"{what}; retry later",
                               (self.retry_after(),))
            for account_id, events in by_account.items():
                self._batchers[account_id].admit(events)
        # counted once queued (before the disk): accepted never trails delivered
        rejected = sum(p.count for p in problems.values())
        counters = self._counters
        with counters.lock:
            counters.counts["items"] += decoded.items
            counters.counts["vwo_items"] += decoded.vwo_items
            counters.counts["accepted"] += decoded.vwo_items - rejected
            for reason, p in problems.items():
                counters.rejected[reason] += p.count
            for account_id, events in by_account.items():
                counters.per_account[account_id]["accepted"] += len(events)
        for account_id in by_account:  # durable before the sender hears 200 (kill -9 loses nothing)
            if not self._batchers[account_id].backlog.commit():
                # Queued in memory but not on disk: the sender must keep its copy. If this gateway
                # delivers its own, the sender's retry makes a duplicate, never a loss.
                raise Refused(503, otlp.UNAVAILABLE, f"account {account_id}: the spool cannot write to disk; "
                               "retry later", (self.retry_after(),))
        if not rejected:
            return 0, ""
        parts = [f"{p.count} {reason.replace('_', ' ')} ({p.first})" for reason, p in problems.items()]
        message = f"rejected {rejected} of {decoded.vwo_items} VWO event(s): " + "; ".join(parts)
        for reason, p in problems.items():
            self._log.warn(("rejected", reason), p.count, "vwo_otel gateway: rejected %d VWO %s(s) as %s: %s",
                           p.count, "span" if signal_ == otlp.TRACES else "log record", reason, p.first)
        return rejected, message[:_MAX_MESSAGE]
