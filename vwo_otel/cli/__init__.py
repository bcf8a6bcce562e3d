"""The ``vwo-otel`` command (also ``python -m vwo_otel``): every option of every command, and the
commands themselves, which call into the demo, the loopback receiver and the gateway.

Exit codes: 0 ok, 1 the command ran but something failed (delivery), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from . import check, demo, gateway, receive
from .common import until_interrupted

__all__ = ["main", "parser", "until_interrupted"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vwo-otel``: parse ``argv`` (default ``sys.argv[1:]``) and run the command."""
    args = parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


def parser() -> argparse.ArgumentParser:
    """The ``vwo-otel`` parser: one subcommand each for demo, receive, check and gateway."""
    p = argparse.ArgumentParser(prog="vwo-otel", description="VWO events through OpenTelemetry: a demo, a local "
                                "VWO-compatible receiver, a configuration check and the OTLP gateway.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.arguments(sub.add_parser(
        "demo", help="emit VWO events through OpenTelemetry and show what goes over the wire",
        description="A small app emits VWO events through OpenTelemetry with batching, against an embedded "
                    "loopback receiver (or --endpoint), and reports what went over the wire."))
    receive.arguments(sub.add_parser(
        "receive", help="run the local VWO-compatible receiver, showing each request as it arrives; "
                        "or --list / --export what a --db FILE stored",
        description="Run the local VWO-compatible receiver (loopback only) in the foreground with a line per "
                    "request, or list / export what it stored in a --db FILE."))
    check.arguments(sub.add_parser(
        "check", help="validate the configuration (arguments / VWO_* variables) and send one test event",
        description="Validate the VWO configuration from arguments and VWO_* variables, then send one harmless "
                    "custom-dimension event and report what is wrong, if anything. Exit 0 ok, 1 delivery "
                    "failed, 2 bad configuration."))
    gateway.arguments(sub.add_parser(
        "gateway", help="run the OTLP/HTTP gateway that batches VWO events from many processes",
        description="OTLP/HTTP gateway: receives VWO events as spans / log records from any OpenTelemetry "
                    "sender (POST /v1/traces, /v1/logs; protobuf or JSON; gzip) and delivers them to VWO "
                    "in batches, per account."))
    return p
