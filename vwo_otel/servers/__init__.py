"""Servers, never imported by the SDK core (``import vwo_otel``): the OTLP gateway
(``gateway``, with its OTLP decoding in ``otlp``), the loopback VWO-compatible receiver
used by the demo, tests and benchmarks (``receiver``), and their shared HTTP base (``httpd``)."""
