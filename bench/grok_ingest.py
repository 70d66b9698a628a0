"""Benchmark: sustained ingest rate and ack -> searchable latency of `gigafactory serve`.

Starts the server as a subprocess on loopback with a fresh data dir, pre-generates posts and
serialises them into batches, then for ``--duration`` seconds ``--clients`` threads post
batches as fast as the server acknowledges them (or paced at ``--rate``) while ``--probes``
probe threads each, again and again, post one post carrying a unique word and time until a
search finds it (ack -> searchable). ``--probe min-seq`` (the default) searches once with
``min_seq`` set to the post's ``last_seq``, so the server answers as soon as its index covers
the post (exact to one request's round trip); ``--probe poll`` searches every ``--poll-ms``
until the post shows up (errs high by up to one interval, and at 10 ms the polling alone
costs the server about a fifth of a core).

    .venv/bin/python bench/grok_ingest.py [--duration 20] [--batch 2000] [--clients 2]
        [--rate POSTS_PER_S] [--probes 2] [--probe min-seq|poll] [--poll-ms 10]
        [--sync FULL] [--burn N] [--json]

``--burn N`` starts N processes that each keep one core busy for the whole run (the issue's
"while another process keeps one core busy").
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from rich.console import Console

from _report import emit, pct
from _server import free_port, start_server, wait_up
from gigafactory.grok.memory.generator import generate_posts

KEY = {"x-api-key": "bench", "content-type": "application/json"}


def _batches(n: int, size: int) -> list[tuple[int, bytes]]:
    """``n`` generated posts as JSON batches of ``size`` (ids unique to this run)."""
    start = datetime.now(UTC)
    batches = []
    chunk: list[dict] = []
    for p in generate_posts(n, seed=int(time.time()), start=start, rate=20_000):
        d = p.model_dump(mode="json")
        d["created_at"] = start.isoformat()  # never "future" however fast we replay
        chunk.append(d)
        if len(chunk) == size:
            batches.append((len(chunk), orjson.dumps(chunk)))
            chunk = []
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--rate", type=float, default=0.0, help="offered posts/s (0 = flat out)")
    ap.add_argument("--posts", type=int, default=600_000, help="posts pre-generated (cap)")
    ap.add_argument("--probes", type=int, default=2, help="probe threads")
    ap.add_argument(
        "--probe",
        choices=["min-seq", "poll"],
        default="min-seq",
        help="min-seq: one search with min_seq=the post's last_seq (waits server-side, exact); "
        "poll: search every --poll-ms until found (errs high by up to one interval, and "
        "the polling itself loads the server)",
    )
    ap.add_argument("--poll-ms", type=float, default=10.0, help="search poll interval")
    ap.add_argument("--sync", default="FULL")
    ap.add_argument("--commit-interval", type=float, default=0.1)
    ap.add_argument(
        "--burn", type=int, default=0, help="processes that each keep one core busy meanwhile"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=args.json)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="grok-bench-"))
    console.print(f"pre-generating {args.posts:,} posts ...")
    batches = _batches(args.posts, args.batch)
    server = start_server(
        tmp / "data",
        port,
        "bench",
        "--synchronous",
        args.sync,
        "--commit-interval",
        str(args.commit_interval),
    )
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burn)
    ]
    try:
        wait_up(url)
        next_batch = iter(enumerate(batches))
        lock = threading.Lock()
        stop = threading.Event()
        acked = [0]
        ack_ms: list[float] = []
        vis_ms: list[float] = []

        def client() -> None:
            with httpx.Client(headers=KEY, timeout=60) as c:
                while not stop.is_set():
                    with lock:
                        item = next(next_batch, None)
                    if item is None:
                        return
                    k, (_n, body) = item
                    if args.rate > 0:  # pace: batch k leaves at k * batch / rate
                        delay = t0 + k * args.batch / args.rate - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                    t_send = time.perf_counter()
                    r = c.post(f"{url}/v1/posts", content=body)
                    r.raise_for_status()
                    with lock:
                        acked[0] += r.json()["accepted"]
                        ack_ms.append((time.perf_counter() - t_send) * 1000)

        def probe(n: int) -> None:
            with httpx.Client(headers=KEY, timeout=60) as c:
                i = 0
                while not stop.is_set():
                    word = f"probe{n}x{i}z{port}"
                    item = {
                        "id": f"probe-{n}-{i}",
                        "author": "probe",
                        "text": f"{word} here",
                        "created_at": datetime.now(UTC).isoformat(),
                    }
                    r = c.post(f"{url}/v1/posts", content=orjson.dumps([item]))
                    r.raise_for_status()
                    t_ack = time.perf_counter()
                    if args.probe == "min-seq":  # one search that waits for the write
                        params = {"q": word, "limit": 1, "min_seq": r.json()["last_seq"]}
                        hits = c.get(f"{url}/v1/search", params=params | {"wait_ms": 30000})
                        hits.raise_for_status()
                        assert hits.json()["hits"], f"{word} not found at its min_seq"
                        vis_ms.append((time.perf_counter() - t_ack) * 1000)
                    while args.probe == "poll" and not stop.is_set():
                        hits = c.get(f"{url}/v1/search", params={"q": word, "limit": 1})
                        if hits.json()["hits"]:
                            vis_ms.append((time.perf_counter() - t_ack) * 1000)
                            break
                        time.sleep(args.poll_ms / 1000)
                    i += 1
                    time.sleep(0.05)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        threads += [threading.Thread(target=probe, args=(n,)) for n in range(args.probes)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        stop.wait(args.duration)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        health = httpx.get(f"{url}/v1/status", headers=KEY).json()
    finally:
        for b in burners:
            b.kill()
            b.wait()
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "posts_acked": acked[0],
        "seconds": round(elapsed, 2),
        "posts_per_s": round(acked[0] / elapsed),
        "offered_rate": args.rate or "max",
        "busy_cores": args.burn,
        "batch": args.batch,
        "clients": args.clients,
        "synchronous": args.sync,
        "probe": args.probe if args.probe == "min-seq" else f"poll {args.poll_ms:g} ms",
        "ack_p50_ms": round(pct(ack_ms, 50), 1),
        "ack_p99_ms": round(pct(ack_ms, 99), 1),
        "ack_to_searchable_n": len(vis_ms),
        "ack_to_searchable_p50_ms": round(pct(vis_ms, 50), 1),
        "ack_to_searchable_p99_ms": round(pct(vis_ms, 99), 1),
        "ack_to_searchable_max_ms": round(max(vis_ms, default=float("nan")), 1),
        "index_lag_at_end": health["lag"],
        "ingest_holds": health.get("ingest_holds"),
        "ingest_held_s": health.get("ingest_held_s"),
        "trends_lag_at_end": health.get("trends_lag"),
        "indexer_restarts": health.get("indexer_restarts"),
    }
    emit(result, "grok ingest (loopback: API process + indexer process)", args.json, console)


if __name__ == "__main__":
    main()
