"""Benchmark: one post per request from many clients, against the server's plain request rate.

Starts ``gigafactory serve`` on loopback with a fresh data dir, then drives it from
``--procs`` client processes holding ``--clients`` keep-alive connections in all (raw
HTTP/1.1 over asyncio streams, so the client costs little next to the server), in two phases
of ``--duration`` seconds each with the same clients:

1. ``GET /healthz`` (the trivial endpoint: the server's plain request rate);
2. ``POST /v1/posts`` with one post per request (durable: each answer follows its commit).

It reports both rates, their ratio, latency percentiles and the log's commits per request
(group commit makes requests that arrive during a commit share the next one).

    .venv/bin/python bench/grok_single.py [--clients 64] [--procs 2] [--duration 10]
        [--sync FULL] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import signal
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from rich.console import Console

from _report import emit, pct
from _server import free_port, start_server, wait_up

KEY = "bench"
SPAWN_S = 5.0  # time allowed for the client processes to start and connect


def _request(method: str, path: str, port: int, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-api-key: {KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(
    port: int, phase: str, tag: str, start_at: float, stop_at: float, lat: list[float]
) -> int:
    """Requests on one keep-alive connection from ``start_at`` until ``stop_at``; returns
    the 2xx count."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    now = datetime.now(UTC).isoformat()
    ok = n = 0
    while time.perf_counter() < stop_at:
        if phase == "trivial":
            req = _request("GET", "/healthz", port)
        else:
            item = {"id": f"{tag}-{n}", "author": "bench", "text": f"single post {n}"}
            req = _request("POST", "/v1/posts", port, orjson.dumps([item | {"created_at": now}]))
        n += 1
        t0 = time.perf_counter()
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        lat.append((time.perf_counter() - t0) * 1000)
        ok += head[9:10] == b"2"
    writer.close()
    return ok


def _client_proc(
    port: int, phase: str, conns: int, proc_id: int, start_at: float, stop_at: float, out
) -> None:
    async def run() -> tuple[int, list[float]]:
        lat: list[float] = []
        oks = await asyncio.gather(
            *(
                _connection(port, phase, f"p{proc_id}c{c}", start_at, stop_at, lat)
                for c in range(conns)
            )
        )
        return sum(oks), lat

    out.put(asyncio.run(run()))


def _phase(port: int, phase: str, clients: int, procs: int, duration: float) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    # all clients start together once spawned (perf_counter is system-wide on Linux)
    start_at = time.perf_counter() + SPAWN_S
    stop_at = start_at + duration
    per = [clients // procs + (i < clients % procs) for i in range(procs)]
    ps = [
        ctx.Process(target=_client_proc, args=(port, phase, n, i, start_at, stop_at, q))
        for i, n in enumerate(per)
    ]
    for p in ps:
        p.start()
    results = [q.get(timeout=duration + 120) for _ in ps]
    for p in ps:
        p.join()
    ok = sum(r[0] for r in results)
    lat = [x for r in results for x in r[1]]
    return {
        "requests_ok": ok,
        "per_s": round(ok / duration),
        "p50_ms": round(pct(lat, 50), 1),
        "p99_ms": round(pct(lat, 99), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64, help="connections in all")
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--sync", default="FULL")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=args.json)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="grok-single-"))
    server = start_server(tmp / "data", port, KEY, "--synchronous", args.sync)
    try:
        wait_up(url)
        trivial = _phase(port, "trivial", args.clients, args.procs, args.duration)
        before = httpx.get(f"{url}/v1/status", headers={"x-api-key": KEY}).json()
        single = _phase(port, "single", args.clients, args.procs, args.duration)
        after = httpx.get(f"{url}/v1/status", headers={"x-api-key": KEY}).json()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
    commits = after["log_commits"] - before["log_commits"]
    result = {
        "clients": args.clients,
        "client_procs": args.procs,
        "synchronous": args.sync,
        "trivial_req_per_s": trivial["per_s"],
        "trivial_p99_ms": trivial["p99_ms"],
        "single_post_per_s": single["per_s"],
        "single_post_p50_ms": single["p50_ms"],
        "single_post_p99_ms": single["p99_ms"],
        "single_over_trivial": round(single["per_s"] / max(1, trivial["per_s"]), 2),
        "posts_per_commit": round(single["requests_ok"] / max(1, commits), 1),
    }
    emit(result, "grok single-post ingest vs plain request rate (loopback)", args.json, console)


if __name__ == "__main__":
    main()
