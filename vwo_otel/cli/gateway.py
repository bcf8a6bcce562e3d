"""``vwo-otel gateway``: the OTLP/HTTP gateway in the foreground, from options, a config file and
``VWO_*`` variables."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import checks
from ..servers.gateway import (
    CONFIG_KEYS,
    DEFAULT_MAX_BACKLOG,
    DEFAULT_PORT,
    Gateway,
    GatewayConfig,
    config_from_mapping,
    parse_account,
)
from ..servers.gateway.workers import Fleet, WorkerFailed
from .common import cannot_listen, fail, until_interrupted, while_stopping


def arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=gateway)
    p.add_argument("--config", help="JSON file with the settings below (command-line options win); keys: "
                   + ", ".join(CONFIG_KEYS))
    p.add_argument("--account", action="append", default=[], metavar="ID[=SDK_KEY]",
                   help="a VWO account (repeat for several); without =SDK_KEY the key is read from the "
                        "environment variable VWO_SDK_KEY_<ID> (keeps it out of the process list)")
    p.add_argument("--default-account", metavar="ID", help="account for events without vwo.account_id (only with "
                   "one account: a gateway with several refuses events that do not name theirs)")
    p.add_argument("--endpoint", help=f"VWO collection host (default {checks.DEFAULT_ENDPOINT})")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 to serve other hosts, which "
                   "needs --auth-token-env or auth_tokens)")
    p.add_argument("--auth-token-env", action="append", default=[], metavar="VAR",
                   help="environment variable holding a bearer token senders must present (Authorization: "
                        "Bearer <token>), valid for every account; repeat for several (keeps tokens out of `ps`)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS (with --tls-key unless the file has the key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--port", type=int, help=f"port to bind, 0 for any (default {DEFAULT_PORT})")
    p.add_argument("--events-per-request", type=int, help="VWO batch size (default 100)")
    p.add_argument("--request-time-interval", type=float, help="max age of a batch in seconds (default 60)")
    p.add_argument("--max-backlog", type=int,
                   help=f"events held per account before answering 429 (default {DEFAULT_MAX_BACKLOG})")
    p.add_argument("--retry-after", type=float, help="seconds in Retry-After of 429/503 answers (default 2)")
    p.add_argument("--shutdown-timeout", type=float, help="seconds to deliver backlogs at shutdown (default 10)")
    p.add_argument("--spool", help="directory for the on-disk spool (one subdirectory per account)")
    p.add_argument("--workers", type=int, help="processes serving the port, each with its own backlogs and spool "
                   "files (default 1; about one per core: docs/gateway.md)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def _tokens_from_env(variables: Sequence[str], environ: Mapping[str, str] | None) -> list[str]:
    """The bearer tokens named by ``--auth-token-env VAR`` (each must be set)."""
    environ = os.environ if environ is None else environ
    tokens = []
    for var in variables:
        token = environ.get(var, "")
        if not token:
            raise ValueError(f"--auth-token-env {var}: the environment variable {var} is not set")
        tokens.append(checks.auth_token(token, f"the token in {var}"))
    return tokens


def gateway(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """``vwo-otel gateway``: run in the foreground until Ctrl-C / SIGTERM, then drain and print the stats."""
    try:
        values: dict[str, Any] = {}
        if args.config:
            with open(args.config, encoding="utf-8") as f:
                try:
                    values = json.load(f)
                except ValueError as exc:
                    raise ValueError(f"{args.config} is not valid JSON: {exc}") from None
        accounts = {}
        for text in args.account:
            acct = parse_account(text, environ)
            accounts[acct.account_id] = acct
        config = config_from_mapping(
            values, environ=environ, accounts=accounts, auth_tokens=_tokens_from_env(args.auth_token_env, environ),
            tls_cert=args.tls_cert, tls_key=args.tls_key, default_account=args.default_account,
            endpoint=args.endpoint, host=args.host, port=args.port, events_per_request=args.events_per_request,
            request_time_interval=args.request_time_interval, max_backlog=args.max_backlog,
            retry_after=args.retry_after, shutdown_timeout=args.shutdown_timeout, spool=args.spool,
            workers=args.workers)
    except (OSError, ValueError, TypeError) as exc:
        return fail("gateway", exc)
    level = getattr(logging, str(args.log_level).upper(), None)
    process = " [%(process)d]" if config.workers > 1 else ""
    logging.basicConfig(level=level if isinstance(level, int) else logging.INFO,
                        format=f"%(asctime)s %(levelname)s{process} %(message)s")  # messages say "vwo_otel: ..."
    if config.workers > 1:
        return _fleet(config)
    try:
        server = Gateway(config).start()
    except OSError as exc:
        return fail("gateway", cannot_listen(config.host, config.port, exc))
    except ValueError as exc:
        return fail("gateway", exc)
    return _serve(server.url, config, 0.5, lambda: None, server.stop, server.stats)


def _serve(url: str, config: GatewayConfig, every: float, tick: Callable[[], None], stop: Callable[[], bool],
           stats: Callable[[], dict[str, Any]]) -> int:
    """Say where it listens, ``tick()`` every ``every`` s until SIGTERM / Ctrl-C, then ``stop()``
    and print ``stats()``: one gateway process or the parent of several."""
    with until_interrupted() as stopped:
        _announce(url, config)
        while not stopped.wait(every):
            tick()
    with while_stopping("the gateway"):
        ok = stop()
    return _finish(stats(), ok)


def _announce(url: str, config: GatewayConfig) -> None:
    workers = f" with {config.workers} worker processes" if config.workers > 1 else ""
    sys.stdout.write(f"vwo-otel gateway listening on {url} (POST /v1/traces, /v1/logs){workers} for account(s) "
                     f"{', '.join(str(a) for a in sorted(config.accounts))}; "
                     f"{'bearer tokens required' if config.auth_tokens else 'no authentication (loopback)'}"
                     f"{'; spool ' + str(config.spool) if config.spool else '; no spool (backlog in memory)'}; "
                     "Ctrl-C to stop\n")
    sys.stdout.flush()


def _finish(stats: dict[str, Any], ok: bool) -> int:
    """Print the stats; 0 only if every accepted event was delivered: none failed or dropped while running either."""
    sys.stdout.write(json.dumps(stats) + "\n")
    sys.stdout.flush()
    lost = any(a["failed"] or any(a["dropped"].values()) for a in stats.get("accounts", {}).values())
    return 0 if ok and not lost else 1


def _fleet(config: GatewayConfig) -> int:
    """``--workers N``: the parent of N gateway processes on one port (``servers/gateway/workers.py``)."""
    fleet = Fleet(config)
    try:
        try:
            fleet.start()
        except OSError as exc:
            return fail("gateway", cannot_listen(config.host, config.port, exc))
        except WorkerFailed as exc:
            return fail("gateway", exc)
        return _serve(fleet.url, config, 0.2, fleet.watch, fleet.stop, fleet.stats)
    finally:
        fleet.close()
