"""Shared by the grok benchmarks: a free loopback port, a ``gigafactory serve`` child process
and waiting until it answers."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx

from gigafactory.cli.grok import serve_argv


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int, key: str, *options: str) -> subprocess.Popen:
    """``gigafactory serve`` on ``data`` and ``port`` (output discarded)."""
    argv = serve_argv(data, port, key, *options)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_up(url: str, timeout_s: float = 30.0) -> None:
    """Return once ``url/healthz`` answers at all (the server is listening)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
