"""Benchmark: search latency p50/p99 over a large index (default 1,000,000 posts).

Builds (or reuses, with ``--data-dir``) a data dir holding ``--posts`` generated posts through
the real log + indexer path (no HTTP), then times ``--queries`` searches in process: one- to
three-word queries drawn from the generator's vocabulary, hashtags, Japanese words written
without spaces, a third of them with filters (time window, language, author, minimum
engagement), and one in ten a very common word over the last hour in one language
(``q=the&since=1h&lang=en``, reported apart too), ranked as the API ranks them.

    .venv/bin/python bench/grok_search.py [--posts 1000000] [--data-dir DIR] [--queries 2000]
        [--json]
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from _report import emit, pct
from gigafactory.grok.memory.generator import LANGS, TOPICS, generate_posts
from gigafactory.grok.memory.search import SearchQuery
from gigafactory.grok.memory.service import GrokService
from gigafactory.grok.settings import GrokSettings


def build(svc: GrokService, n: int, console: Console) -> float:
    """Ingest ``n`` generated posts (created over the last hours) and wait until searchable."""
    t0 = time.perf_counter()
    start = datetime.now(UTC) - timedelta(seconds=n / 200)
    batch: list[dict] = []
    for i, p in enumerate(generate_posts(n, seed=42, start=start, rate=200), 1):
        batch.append(p.model_dump(mode="json"))
        if len(batch) == 5000:
            svc.ingest_posts(batch)
            batch = []
        if i % 100_000 == 0:
            console.print(f"  {i:,} posts logged ({time.perf_counter() - t0:.0f}s)")
    if batch:
        svc.ingest_posts(batch)
    svc.indexer.wait_searchable(svc.log.last_seq, 3600)
    return time.perf_counter() - t0


COMMON = [("the", "en"), ("the", None), ("de", "es"), ("la", "fr"), ("die", "de"), ("の", "ja")]


def queries(n: int, authors: list[str]) -> list[SearchQuery]:
    """A seeded mix of realistic queries."""
    rng = random.Random(7)
    now_us = time.time_ns() // 1000
    vocab = [w for t in TOPICS for w in (*t.entities, *t.nouns, *t.events)]
    vocab += [a for lang in LANGS.values() for a in lang.adjs]
    out = []
    for i in range(n):
        kind = rng.random()
        f: dict = {}
        if kind < 0.1:  # very common words, the probe's worst case: q=the&since=1h&lang=en
            q, lang = rng.choice(COMMON)
            out.append(SearchQuery(q=q, since_us=now_us - 3600 * 1_000_000, lang=lang))
            continue
        if kind < 0.2:
            q = "#" + rng.choice(rng.choice(TOPICS).tags)
        elif kind < 0.3:  # Japanese: an entity and a word written without spaces
            q = rng.choice(vocab) + rng.choice(LANGS["ja"].adjs)
        else:
            q = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 3)))
        if i % 3 == 0:
            pick = rng.randrange(4)
            if pick == 0:
                f["since_us"] = now_us - rng.choice((600, 3600, 6 * 3600)) * 1_000_000
            elif pick == 1:
                f["lang"] = rng.choice(list(LANGS))
            elif pick == 2:
                f["author"] = rng.choice(authors)
            else:
                f["min_engagement"] = rng.choice((10, 100, 1000))
        out.append(SearchQuery(q=q, limit=20, **f))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="reuse/keep the index here (default: a temporary dir, removed)",
    )
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=args.json)
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="grok-search-"))
    settings = GrokSettings.load({}, data_dir=data, api_keys="bench", trend_retention_s=60)
    svc = GrokService(settings)
    try:
        have = svc.log.count_posts()
        build_s = None
        if have < args.posts:
            console.print(f"building an index of {args.posts - have:,} more posts in {data} ...")
            build_s = build(svc, args.posts - have, console)
        docs = svc.health()["index_docs"]
        authors = [h.author for h in svc.search(SearchQuery(limit=100))]
        qs = queries(args.queries, authors)
        for q in qs[:50]:  # warm-up (page cache, searcher)
            svc.search(q)
        lat, common, found = [], [], 0
        for q in qs:
            t0 = time.perf_counter()
            hits = svc.search(q)
            ms = (time.perf_counter() - t0) * 1000
            lat.append(ms)
            if (q.q, q.lang) in COMMON and q.since_us:
                common.append(ms)
            found += bool(hits)
    finally:
        svc.close()
        if args.data_dir is None:  # a temporary index is not left behind
            shutil.rmtree(data, ignore_errors=True)
    result = {
        "index_docs": docs,
        "build_s": None if build_s is None else round(build_s, 1),
        "queries": len(qs),
        "with_hits": found,
        "p50_ms": round(pct(lat, 50), 2),
        "p90_ms": round(pct(lat, 90), 2),
        "p99_ms": round(pct(lat, 99), 2),
        "max_ms": round(max(lat), 2),
        "common_word_since_1h_n": len(common),
        "common_word_since_1h_p50_ms": round(pct(common, 50), 2),
        "common_word_since_1h_p99_ms": round(pct(common, 99), 2),
        "data_dir": str(data) if args.data_dir else "(temporary, removed)",
    }
    emit(result, "grok search latency (in process, ranked, 20 hits)", args.json, console)


if __name__ == "__main__":
    main()
