"""Shared by the benchmarks: percentiles and the result as a rich table or one JSON line."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``xs``; NaN when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def emit(result: dict[str, Any], title: str, as_json: bool, console: Console) -> None:
    """Print ``result`` as one JSON object on stdout, or as a two-column metric table."""
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(data_dir: str, key: str, *args: str, timeout_s: float = 60.0):
    """``gigafactory serve`` as a subprocess on a free loopback port, once ``/healthz``
    answers: returns (base URL, process). The caller terminates the process."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    cmd = [sys.executable, "-c", "from gigafactory.cli import main; main()", "serve"]
    cmd += ["--data-dir", data_dir, "--port", str(port), "--api-key", key, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gigafactory serve exited with {proc.returncode}")
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return url, proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gigafactory serve did not answer within {timeout_s:g} s")
