"""``vwo-otel gateway``: an OTLP/HTTP receiver that batches VWO events from many processes.

Apps (or OpenTelemetry Collectors in front of them) export spans / log records with OTLP/HTTP
to ``POST /v1/traces`` and ``POST /v1/logs`` (protobuf or JSON, optionally gzip/deflate).
Items that carry ``vwo.event.type`` become VWO events (the same attributes and decoding as
``VWOSpanProcessor``: span start time / log timestamp -> ``sId``); everything else is accepted
and ignored. Each event goes to the VWO account named by ``vwo.account_id`` (on the item, else
on its resource, else the default account, which only a gateway with one account has) and
through that account's ``Batcher`` (count/age batching, retries, 413 splitting, bounded backlog,
optional spool) to ``VWOExporter``. SDK keys live only in the gateway's configuration.

OTLP semantics: 200 with an ``Export*ServiceResponse`` in the request's encoding, whose
``partial_success`` counts malformed or unknown-account VWO items; 400 undecodable body;
401 no valid bearer token (when ``auth_tokens`` are set; answered on the request's head, before
its body is read, and the connection closes); 403 an item for an account the token may not
write to; 413 too large; 415 unsupported media type or encoding; 429 + ``Retry-After`` when an
account's backlog cannot take the whole request and 503 + ``Retry-After`` while draining
(in every refusal nothing of the request is kept, so the sender's retry duplicates nothing). A
request with more events than ``max_backlog`` is taken whole once the backlog has room: its
size is bounded by bytes (``max_inflated_bytes``). ``GET /healthz`` (liveness), ``/readyz``
(503 while draining or a backlog or the disk is full), ``/stats`` and ``/metrics`` (Prometheus).

Binding an address other than loopback needs ``auth_tokens``; ``tls_cert`` / ``tls_key``
serve HTTPS. Operations (workers, probes, metrics, sizing, deployment): ``docs/gateway.md``.

Modules: ``config`` (``GatewayConfig``, ``Account``, the JSON file), ``admission`` (tokens, what
is taken into the backlogs, readiness, the counters), ``app`` (``Gateway``: accounts, HTTP
routes, the maintenance thread, the draining stop), ``stats`` (delivery figures, the workers'
figures merged), ``prometheus`` (``/metrics``), ``workers`` (``--workers N``: ``Fleet``).
"""

from ..otlp import ACCOUNT_ID
from .app import Gateway
from .config import (
    CONFIG_KEYS,
    DEFAULT_MAX_BACKLOG,
    DEFAULT_PORT,
    SDK_KEY_ENV,
    Account,
    GatewayConfig,
    config_from_mapping,
    is_loopback,
    parse_account,
)

__all__ = ["ACCOUNT_ID", "CONFIG_KEYS", "DEFAULT_MAX_BACKLOG", "DEFAULT_PORT", "SDK_KEY_ENV", "Account", "Gateway",
           "GatewayConfig", "config_from_mapping", "is_loopback", "parse_account"]
