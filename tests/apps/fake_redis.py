"""A Redis stand-in on loopback for the RQ tests: fakeredis's TCP server, printing its port.

One fix to the stand-in: its CLIENT INFO shows ``addr`` as a Python tuple with a space, which
redis-py 5.0.1 (pinned by vwo-python-sdk) cannot parse, and RQ's worker asks for it at start."""

from __future__ import annotations

import threading
import time

from fakeredis import TcpFakeServer
from fakeredis.model._client_info import ClientInfo


def _as_bytes(self: ClientInfo) -> bytes:
    def shown(value: object) -> object:
        return f"{value[0]}:{value[1]}" if isinstance(value, tuple) else value
    return " ".join(f"{k}={shown(v)}" for k, v in self.items()).encode()


ClientInfo.as_bytes = _as_bytes  # type: ignore[method-assign]

server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_address[1], flush=True)
time.sleep(600)  # the test terminates it
