"""Listening sockets: one for a server (``listen``), or one port for several worker processes
(``listen_many``) that no other process shares unnoticed.

Several workers on one port: where the kernel balances new connections across sockets bound
with ``SO_REUSEPORT`` and tells who listens where (Linux: ``/proc/net/tcp``, ``tcp6``), each
worker gets a socket of its own; elsewhere they share one listening socket, inherited across
``fork`` (a pre-fork listener). ``SO_REUSEPORT`` would also let a second gateway (or any process
of the same user setting it) bind the same port and silently take a share of the connections,
so ``listen_many`` refuses a port on which another socket listens, before listening itself and
again after (two starting at once: at least one refuses; never both serve). Such a refusal, like
a taken port, is ``OSError(EADDRINUSE)`` naming the address.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

__all__ = ["REUSE_PORT", "listen", "listen_many", "listening_inodes"]

#: Workers get a socket each (``SO_REUSEPORT``, kernel-balanced, listeners checkable) on Linux;
#: elsewhere they share one. A module setting, so a test can take the shared path.
REUSE_PORT = (sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
              and os.path.exists("/proc/net/tcp"))
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bound(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {_shown(host, port)}: {exc.strerror or exc}") from None
    return sock


def listen(host: str, port: int, backlog: int = 256) -> socket.socket:
    """A non-blocking socket listening on ``host``:``port`` (IPv6 when the host has a ``:``);
    ``OSError`` naming the address if it cannot be."""
    sock = _bound(host, port, False)
    try:
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {_shown(host, port)}: {exc.strerror or exc}") from None
    return sock


def listening_inodes(port: int) -> set[int]:
    """The inodes of the TCP sockets listening on ``port`` (any address) in this network
    namespace, from ``/proc/net/tcp`` and ``tcp6``."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii") as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        found.add(int(fields[9]))
        except FileNotFoundError:  # no IPv6 here
            continue
    return found


def _refuse_if_shared(socks: list[socket.socket], host: str, port: int) -> None:
    ours = {os.fstat(s.fileno()).st_ino for s in socks}
    others = listening_inodes(port) - ours
    if others:
        raise OSError(errno.EADDRINUSE, f"cannot listen on {_shown(host, port)}: another process already listens "
                                        "on that port (the workers' SO_REUSEPORT would share it with that process)")


def listen_many(host: str, port: int, n: int, backlog: int = 256) -> list[socket.socket]:
    """``n`` listening sockets on one port for ``n`` worker processes (see the module docstring):
    ``n`` distinct ones with ``REUSE_PORT``, else the same one ``n`` times. Port 0: one free port."""
    if n <= 1 or not REUSE_PORT:
        return [listen(host, port, backlog)] * max(1, n)
    socks: list[socket.socket] = []
    try:
        socks.append(_bound(host, port, True))
        port = int(socks[0].getsockname()[1])
        socks += [_bound(host, port, True) for _ in range(n - 1)]
        _refuse_if_shared(socks, host, port)  # ours do not listen yet: any listener is another's
        for sock in socks:
            sock.listen(backlog)
            sock.setblocking(False)
        _refuse_if_shared(socks, host, port)  # one that started at the same moment
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks
