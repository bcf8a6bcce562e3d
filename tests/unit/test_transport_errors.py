"""Which transport failures a resend could fix (no sockets): certificate and TLS-version
failures are final on both paths, straight to the server and through urllib3's proxy managers."""

from __future__ import annotations

import ssl

from urllib3 import exceptions as u3

from vwo_otel.export import proxy, sockets


def verify_failed() -> ssl.SSLCertVerificationError:
    return ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")


def tls_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] ...")
    error.reason = reason
    return error


def test_certificate_and_tls_version_failures_are_final_others_retried() -> None:
    assert not sockets.failure(verify_failed(), connecting=True).retryable
    for reason in ("WRONG_VERSION_NUMBER", "TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"):
        assert not sockets.failure(tls_error(reason), connecting=True).retryable
    for transient in (tls_error("UNEXPECTED_EOF_WHILE_READING"), ssl.SSLEOFError(8, "EOF"), ConnectionResetError(),
                      TimeoutError()):
        assert sockets.failure(transient, connecting=True).retryable


def test_through_a_proxy_a_certificate_failure_is_final_too() -> None:
    final = proxy.transport_error(u3.SSLError(verify_failed()))
    assert isinstance(final, sockets.SSLError) and not final.retryable
    transient = proxy.transport_error(u3.SSLError(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")))
    assert isinstance(transient, sockets.SSLError) and transient.retryable
    assert proxy.transport_error(u3.ProtocolError("Connection aborted.", ConnectionResetError())).retryable
