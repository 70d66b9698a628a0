"""Benchmark: CPU per post of indexing generated posts, by text analysis.

Generates ``--posts`` posts of every language of the generator, logs them as the API does
(``log.post_document``), then indexes them ``--rounds`` times each way, alternating, into an
in-memory tantivy index with the service's schema, and reports the process CPU (all threads:
tokenizing and merging run in tantivy's threads) per post:

- ``rules``: the text as posted under ``analysis.RULES`` (tantivy's regex tokenizer), as the
  index did until schema 4;
- ``index form``: ``analysis.index_document`` (the text rewritten) under ``simple``, as now;
- ``rewrite only``: ``analysis.index_document`` alone (its share of the above).

    .venv/bin/python bench/grok_analysis.py [--posts 60000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import tantivy
from rich.console import Console
from rich.progress import track

from _report import emit
from gigafactory.grok.memory.analysis import (
    TEXT_ANALYZER,
    index_document,
    index_text,
    rules_analyzer,
    text_analyzer,
)
from gigafactory.grok.memory.generator import generate_posts
from gigafactory.grok.memory.index import build_schema
from gigafactory.grok.memory.log import post_document


def index_cpu_us(bodies: list[str], analyzer: tantivy.TextAnalyzer, form: Callable) -> float:
    """CPU µs per post of adding ``form(body)`` for every body and committing."""
    index = tantivy.Index(build_schema())
    index.register_tokenizer(TEXT_ANALYZER, analyzer)
    writer = index.writer(256_000_000, 1)
    t0 = time.process_time()
    for b in bodies:
        writer.add_json(form(b))
    writer.commit()
    writer.wait_merging_threads()
    return (time.process_time() - t0) / len(bodies) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=args.json)
    if args.posts < 1 or args.rounds < 1:
        ap.error("--posts and --rounds must be at least 1")

    posts = list(generate_posts(args.posts, seed=5, start=datetime.now(UTC), rate=1000))
    bodies = [
        post_document(p.id, p.author, p.text, p.created_at, p.lang, p.likes, p.reposts, p.replies)
        for p in posts
    ]
    ways: dict[str, list[float]] = {"rules": [], "index form": [], "rewrite only": []}
    for _ in track(range(args.rounds), description="indexing", console=console):
        ways["rules"].append(index_cpu_us(bodies, rules_analyzer(), lambda b: b))
        ways["index form"].append(index_cpu_us(bodies, text_analyzer(), index_document))
        t0 = time.process_time()
        for b in bodies:
            index_document(b)
        ways["rewrite only"].append((time.process_time() - t0) / len(bodies) * 1e6)
    rewritten = sum(index_text(p.text) is not p.text for p in posts) / len(posts)
    result: dict[str, object] = {"posts": len(posts), "rounds": args.rounds}
    result |= {f"{k} us/post (median)": round(statistics.median(v), 2) for k, v in ways.items()}
    result |= {f"{k} us/post (all)": " ".join(f"{x:.2f}" for x in v) for k, v in ways.items()}
    result["posts whose text is rewritten"] = f"{rewritten:.0%}"
    emit(result, "indexing CPU per post by text analysis", args.json, console)


if __name__ == "__main__":
    main()
