"""Servers, never imported by the SDK core (``import vwo_otel``): the OTLP gateway
(``gateway``, with its OTLP decoding in ``otlp``) and the HTTP server under it and under the
loopback receiver (``vwo_otel.testing``): ``httpd`` (connections, deadlines, threads), with
``framing`` (h11: requests and answers), ``connection`` and ``bounds``."""
