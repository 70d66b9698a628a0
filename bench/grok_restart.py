"""Benchmark: restart to serving, as the log grows.

Fills a data dir with ``--posts`` generated posts spread over the last six hours (straight
into the log, then indexed once by a service), then starts ``gigafactory serve`` on it and
measures the seconds until ``/healthz`` answers 200, until a search answers and until
``/v1/trends`` answers: after a clean stop (trend counts saved at the end) and after a
SIGKILL of the server in the middle of ingest (counts replayed from the last periodic save).

    .venv/bin/python bench/grok_restart.py [--posts 1000000] [--data-dir D] [--json]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from rich.console import Console

from _report import emit
from _server import free_port, start_server
from gigafactory.grok.memory.generator import generate_posts
from gigafactory.grok.memory.log import KIND_POST, PostLog, post_body
from gigafactory.grok.memory.service import GrokService
from gigafactory.grok.settings import GrokSettings

KEY = {"x-api-key": "bench"}


def fill(data: Path, n: int, batch: int = 20_000) -> None:
    """``n`` generated posts over the last 6 h into the log, then indexed by a service."""
    start = datetime.now(UTC) - timedelta(hours=6)
    lg = PostLog(data / "log.sqlite3", "NORMAL")
    ids: list[str] = []
    bodies: list[str] = []
    for p in generate_posts(n, seed=11, start=start, rate=n / 21_000):
        ids.append(p.id)
        bodies.append(post_body(p))
        if len(ids) == batch:
            lg.append(KIND_POST, ids, bodies)
            ids, bodies = [], []
    lg.append(KIND_POST, ids, bodies)
    lg.close()
    svc = GrokService(GrokSettings.load({}, data_dir=data, api_keys="bench", indexer_threads=2))
    svc.indexer.wait_searchable(svc.log.last_seq, 3600)
    svc.close()


def _until(url: str, t0: float, params: dict | None = None, timeout: float = 600) -> float:
    while time.perf_counter() - t0 < timeout:
        try:
            if httpx.get(url, params=params, headers=KEY, timeout=5).status_code == 200:
                return round(time.perf_counter() - t0, 2)
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    return float("nan")


def restart(data: Path, port: int, crash: bool) -> dict[str, float]:
    """Seconds from process start to healthy / searching / trends; then stop (SIGKILL during
    ingest when ``crash``, so the next start has no final trend save)."""
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = start_server(data, port, "bench")
    out = {
        "healthz_s": _until(f"{url}/healthz", t0),
        "search_s": _until(f"{url}/v1/search", t0, {"q": "launch"}),
        "trends_s": _until(f"{url}/v1/trends", t0, {"window": "15m"}),
    }
    now = datetime.now(UTC).isoformat()
    tag = f"r{time.time_ns()}"
    for k in range(10):  # some ingest, so a kill leaves a tail after the last save
        batch = [
            {"id": f"{tag}-{k}-{i}", "author": "bench", "text": f"tail {i}", "created_at": now}
            for i in range(1000)
        ]
        httpx.post(f"{url}/v1/posts", content=orjson.dumps(batch), headers=KEY, timeout=60)
    proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
    proc.wait(120)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--data-dir", type=Path, help="reuse (or keep) this data dir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=args.json)
    tmp = None if args.data_dir else Path(tempfile.mkdtemp(prefix="grok-restart-"))
    data = args.data_dir or tmp / "data"  # type: ignore[operator]
    port = free_port()
    try:
        t0 = time.perf_counter()
        if not (data / "log.sqlite3").exists():
            console.print(f"filling {data} with {args.posts:,} posts ...")
            fill(data, args.posts)
        fill_s = round(time.perf_counter() - t0, 1)
        first = restart(data, port, crash=False)  # may catch up trends without a save
        clean = restart(data, port, crash=True)  # after a clean stop; ends in SIGKILL
        crashed = restart(data, port, crash=False)  # after the SIGKILL
        lg = PostLog(data / "log.sqlite3")
        events = lg.last_seq
        lg.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {"log_events": events, "fill_s": fill_s}
    for name, r in (("first", first), ("after_clean_stop", clean), ("after_sigkill", crashed)):
        result.update({f"{name}_{k}": v for k, v in r.items()})
    emit(result, "grok restart to serving", args.json, console)


if __name__ == "__main__":
    main()
