"""Benchmark: the post stream on NATS JetStream with 1 and 2 partitions -- posts/s acknowledged
and indexed, and ack -> searchable freshness.

For each partition count P (``--partitions 1 2``): a fresh ``nats-server -js`` on loopback
(temp store), a ``BrokerService`` in this process (what ``serve --broker`` runs behind HTTP)
and P ``gigafactory indexer`` processes. ``--clients`` threads ingest pre-generated batches
of ``--batch`` posts as fast as JetStream acknowledges them (or paced at ``--rate`` posts/s)
for ``--duration`` seconds; after every acknowledged batch its last post becomes a probe, and a probe thread polls the shards
(reloaded every poll) until the probe's id is searchable: freshness = ack -> searchable,
including up to one ``--poll-ms``. "indexed posts/s" is every acknowledged post over the
time until the last of them was searchable. "trends p50 ms" is a 15-minute trend query
afterwards (each indexer's window counts over NATS request/reply, merged and ranked).

    .venv/bin/python bench/grok_broker.py [--partitions 1 2] [--duration 15] [--batch 500]
        [--clients 2] [--rate POSTS_PER_S] [--commit-interval 0.1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

import tantivy
from rich.console import Console
from rich.table import Table

from _report import pct
from gigafactory.grok.memory.broker import partition_of
from gigafactory.grok.memory.broker_service import BrokerService
from gigafactory.grok.memory.generator import generate_posts
from gigafactory.grok.memory.shards import ShardSet
from gigafactory.grok.settings import GrokSettings

CLI = [sys.executable, "-c", "from gigafactory.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def batches_of(n_posts: int, batch: int, seed: int) -> list[list[dict]]:
    now = datetime.now(UTC).isoformat()
    out, chunk = [], []
    for p in generate_posts(n_posts, seed=seed, rate=20_000):
        d = p.model_dump(mode="json")
        d["created_at"] = now  # never "future" however fast it is replayed
        chunk.append(d)
        if len(chunk) == batch:
            out.append(chunk)
            chunk = []
    return out


def visible(shards: ShardSet, pid: str) -> bool:
    ix = shards.indexes()[partition_of(pid, shards.partitions)]
    query = tantivy.Query.term_query(ix.schema, "id", pid)
    return bool(ix.searcher().search(query, 1, count=False).hits)


def run(partitions: int, args, batches: list[list[dict]], tmp: Path) -> dict:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    root = tmp / f"p{partitions}"
    root.mkdir()
    nats = subprocess.Popen(
        ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(root / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    indexers: list[subprocess.Popen] = []
    svc = None
    try:
        wait(lambda: accepts(port), 10, "nats-server")
        settings = GrokSettings.load({}, data_dir=root / "data", api_keys="bench")
        svc = BrokerService(settings, url, partitions)
        for k in range(partitions):
            cmd = [*CLI, "indexer", "--broker", url, "--partition", str(k), "--data-dir",
                   str(root / "data"), "--commit-interval", str(args.commit_interval)]  # fmt: skip
            indexers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        shards = ShardSet(root / "data", partitions, reload_s=0.0)
        wait(lambda: len(shards.indexes()) == partitions, 60, "the indexers")

        queue = iter(enumerate(batches))
        lock = threading.Lock()
        stop = threading.Event()
        acked: list[int] = [0]
        probes: deque[tuple[float, str]] = deque()
        fresh_ms: list[float] = []
        t0 = time.perf_counter()

        def client() -> None:
            while not stop.is_set():
                with lock:
                    item = next(queue, None)
                if item is None:
                    return
                k, items = item
                if args.rate > 0:  # pace: batch k leaves at k * batch / rate
                    delay = t0 + k * args.batch / args.rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                res = svc.ingest_posts(items)
                t_ack = time.perf_counter()
                with lock:
                    acked[0] += res.accepted
                    probes.append((t_ack, items[-1]["id"]))

        def probe() -> None:
            while not (stop.is_set() and not probes):
                if not probes:
                    time.sleep(args.poll_ms / 1000)
                    continue
                t_ack, pid = probes[0]
                if visible(shards, pid):
                    fresh_ms.append((time.perf_counter() - t_ack) * 1000)
                    probes.popleft()
                else:
                    time.sleep(args.poll_ms / 1000)

        clients = [threading.Thread(target=client) for _ in range(args.clients)]
        prober = threading.Thread(target=probe)
        for t in [*clients, prober]:
            t.start()
        time.sleep(args.duration)
        stop.set()
        for t in clients:
            t.join()
        t_acked = time.perf_counter()
        prober.join()
        total = acked[0]
        wait(lambda: sum(max(0, ix.searcher().num_docs - 1) for ix in shards.indexes()) >= total,
             120, "every acknowledged post to be indexed")  # fmt: skip
        t_indexed = time.perf_counter()
        trend_ms = []  # GET /v1/trends's work: every partition's window counts, merged
        for _ in range(20):
            t = time.perf_counter()
            svc.top_trends(900)
            trend_ms.append((time.perf_counter() - t) * 1000)
        return {
            "partitions": partitions,
            "offered": f"{args.rate:g}/s" if args.rate else "flat out",
            "posts": total,
            "acked_posts_per_s": round(total / (t_acked - t0)),
            "indexed_posts_per_s": round(total / (t_indexed - t0)),
            "fresh_p50_ms": round(pct(fresh_ms, 50), 1),
            "fresh_p99_ms": round(pct(fresh_ms, 99), 1),
            "probes": len(fresh_ms),
            "trends_p50_ms": round(pct(trend_ms, 50), 1),
        }
    finally:
        for p in indexers:
            p.send_signal(signal.SIGTERM)
        for p in indexers:
            p.wait(60)
        if svc is not None:
            svc.close()
        nats.terminate()
        nats.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partitions", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--rate", type=float, default=0.0, help="offered posts/s (0 = flat out)")
    ap.add_argument("--posts", type=int, default=300_000, help="posts pre-generated (cap)")
    ap.add_argument("--commit-interval", type=float, default=0.1)
    ap.add_argument("--poll-ms", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=args.json)
    console.print(f"pre-generating {args.posts:,} posts ...")
    tmp = Path(tempfile.mkdtemp(prefix="grok-broker-bench-"))
    try:
        rows = []
        for p in args.partitions:
            batches = batches_of(args.posts, args.batch, seed=p)  # fresh ids per run
            rows.append(run(p, args, batches, tmp))
            console.print(f"{p} partition(s) done")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        for r in rows:
            print(json.dumps({**r, "load": load}))
        return
    table = Table(title=f"grok on NATS JetStream ({os.cpu_count()} CPUs, {load})")
    for col in rows[0]:
        table.add_column(col.replace("_", " "), justify="right")
    for r in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in r.values()))
    console.print(table)


if __name__ == "__main__":
    main()
