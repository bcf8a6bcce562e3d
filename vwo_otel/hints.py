"""What to do about a delivery error, in words: the fix hints ``vwo-otel check`` prints and the
app's log lines carry (one text, one place, so both say the same)."""

from __future__ import annotations

from .errors import HTTPStatusError, NetworkError, PayloadTooLarge, VWODeliveryError

#: VWO refused the account id / sdk key pair (401, 403).
CREDENTIALS = ("check the account id and the sdk key (VWO_ACCOUNT_ID and VWO_SDK_KEY, or account_id= and "
               "sdk_key=): they are the two values given to vwo.init (FME) or vwo.get_settings_file (the legacy "
               "SDK); `vwo-otel check` tests them")
#: Nothing collects VWO events at that path (404).
ENDPOINT = ("check the endpoint (VWO_ENDPOINT or endpoint=): VWO's host, with a data-residency prefix only "
            "when the settings file has a collectionPrefix")
#: A proxy in front of the endpoint refused one small event as too large (413).
BODY_LIMIT = "a proxy in front of the endpoint limits request bodies; VWO itself accepts up to 10 MB"
#: The queue (``max_queue_size``) was full: the app emits faster than VWO takes its events.
QUEUE_FULL = ("events come faster than they are delivered: block_when_full= lets emitting threads wait for "
              "room, spool= keeps the overflow on disk, max_queue_size= raises the bound")
#: The TLS handshake failed on an https:// endpoint whose server does not speak TLS.
PLAIN_HTTP = "is it a plain-HTTP port? Then use http://"

_TLS_WORDS = ("handshake", "wrong_version_number", "wrong version number", "record layer", "unknown protocol",
              "ssl:", "sslerror", "_ssl.c")


def is_tls_failure(error: VWODeliveryError) -> bool:
    """The request failed in its TLS handshake (not a refused or silent connection)."""
    text = str(error).lower()
    return isinstance(error, NetworkError) and "certificate" not in text and any(w in text for w in _TLS_WORDS)


def hint(error: BaseException) -> str | None:
    """The fix for ``error`` in one sentence, or None where the error says it all."""
    if isinstance(error, PayloadTooLarge):
        return BODY_LIMIT if error.status == 413 else None
    if isinstance(error, HTTPStatusError):
        if error.status in (401, 403):
            return CREDENTIALS
        if error.status == 404:
            return ENDPOINT
        return None
    if isinstance(error, VWODeliveryError) and is_tls_failure(error):
        return PLAIN_HTTP
    return None
