"""Helpers the tests share: a free loopback port, waiting for a condition or a listening server."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the caller binds it soon; another process could take it first)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (checked every ``interval``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def wait_listening(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 30.0,
                   host: str = "127.0.0.1") -> None:
    """Until something accepts connections on ``port``; fails at once if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"server exited early ({proc.returncode}): {(err or out or '')[-3000:]}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {host}:{port} within {timeout} s")


def fill(directory: Any) -> None:
    """Write a ballast file into ``directory`` until its file system is full (a ``make_tmpfs`` disk)."""
    chunk = b"\0" * 4096
    with open(f"{directory}/ballast", "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass


def until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> None:
    """Wait until ``condition()`` holds; AssertionError naming ``what`` after ``timeout`` seconds."""
    if not wait_until(condition, timeout, interval):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts a connection on ``port`` now."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def varint(n: int) -> bytes:
    """A protobuf varint, written here rather than taken from the decoder under test."""
    out = bytearray()
    n &= (1 << 64) - 1
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A protobuf length-delimited field (``field`` number, wire type 2)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload
