"""The feed client: streams generated posts, or replays a JSONL file, into a running service
at a paced rate. Library code: progress goes to a callback, the CLI renders it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from gigafactory.errors import GigafactoryError
from gigafactory.grok.memory.generator import generate_events
from gigafactory.grok.memory.post import Post


class FeedError(GigafactoryError):
    """The feed cannot reach the service or read its input."""


@dataclass
class FeedStats:
    """Running totals of one feed session."""

    sent_posts: int = 0
    accepted_posts: int = 0
    sent_updates: int = 0
    accepted_updates: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    throttled: int = 0
    elapsed_s: float = 0.0
    ack_ms: list[float] = field(default_factory=list)

    @property
    def posts_per_s(self) -> float:
        """Accepted posts per second of wall time."""
        return self.accepted_posts / self.elapsed_s if self.elapsed_s else 0.0


Event = tuple[float, str, dict[str, Any]]  # (seconds from start, "posts"|"engagement", item)


def generated(seed: int, rate: float, start: datetime | None = None) -> Iterator[Event]:
    """Endless generated events timed from now (``created_at`` = real time of sending)."""
    start = start or datetime.now(UTC)
    for ev in generate_events(None, seed=seed, start=start, rate=rate):
        if isinstance(ev, Post):
            yield (ev.created_at - start).total_seconds(), "posts", ev.model_dump(mode="json")
        else:
            yield (ev.at - start).total_seconds(), "engagement", ev.model_dump(mode="json")


def replayed(path: Path, speed: float = 1.0) -> Iterator[Event]:
    """Events of a JSONL file (posts have ``text``; other lines are engagement updates),
    timed by their ``created_at``/``at`` relative to the first line, divided by ``speed``
    (``speed <= 0``: as fast as possible)."""
    first: float | None = None
    if not Path(path).is_file():
        raise FeedError(f"cannot read {path}: pass an existing JSONL file")
    with Path(path).open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
                kind = "posts" if "text" in item else "engagement"
                stamp = item.get("created_at") or item.get("at")
                t = datetime.fromisoformat(stamp).timestamp() if stamp else None
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
                raise FeedError(f"{path}:{n}: not a post or update object ({exc})") from None
            if t is None:
                t = first or 0.0
            if first is None:
                first = t
            yield ((t - first) / speed if speed > 0 else 0.0), kind, item


class FeedClient:
    """Posts batches to ``url`` with API key ``key``, retrying throttled (429) batches."""

    def __init__(self, url: str, key: str | None, timeout_s: float = 30.0):
        headers = {"content-type": "application/json"}
        if key:
            headers["x-api-key"] = key
        self.url = url.rstrip("/")
        self.http = httpx.Client(headers=headers, timeout=timeout_s)

    def send(self, kind: str, items: list[dict[str, Any]], stats: FeedStats) -> None:
        """Send one batch; count what was accepted and refused."""
        body = orjson.dumps(items)
        while True:
            t0 = time.perf_counter()
            try:
                r = self.http.post(f"{self.url}/v1/{kind}", content=body)
            except httpx.HTTPError as exc:
                raise FeedError(
                    f"cannot reach {self.url}: {exc}; is `gigafactory serve` running there?"
                ) from None
            stats.requests += 1
            if r.status_code == 429:
                stats.throttled += 1
                time.sleep(min(5.0, float(r.headers.get("retry-after", "1"))))
                continue
            if r.status_code != 200:
                raise FeedError(f"{self.url} answered {r.status_code}: {r.text[:300]}")
            break
        stats.ack_ms.append((time.perf_counter() - t0) * 1000)
        out = r.json()
        if kind == "posts":
            stats.sent_posts += len(items)
            stats.accepted_posts += out["accepted"]
        else:
            stats.sent_updates += len(items)
            stats.accepted_updates += out["accepted"]
        for ref in out["refused"]:
            stats.refused[ref["reason"]] = stats.refused.get(ref["reason"], 0) + 1

    def close(self) -> None:
        self.http.close()


def run_feed(
    events: Iterable[Event],
    client: FeedClient,
    duration_s: float | None,
    batch_s: float = 0.05,
    max_batch: int = 5000,
    on_progress: Callable[[FeedStats], None] | None = None,
) -> FeedStats:
    """Send ``events`` when their time comes, in batches gathered over ``batch_s``, until
    ``duration_s`` (of event time) has passed or the events end."""
    stats = FeedStats()
    t0 = time.monotonic()
    pending: dict[str, list[dict[str, Any]]] = {"posts": [], "engagement": []}
    it = iter(events)
    nxt = next(it, None)
    while nxt is not None:
        now = time.monotonic() - t0
        horizon = now + batch_s
        while nxt is not None and nxt[0] <= horizon and len(pending["posts"]) < max_batch:
            if duration_s is not None and nxt[0] > duration_s:
                nxt = None
                break
            pending[nxt[1]].append(nxt[2])
            nxt = next(it, None)
        for kind in ("posts", "engagement"):
            if pending[kind]:
                client.send(kind, pending[kind], stats)
                pending[kind] = []
        stats.elapsed_s = time.monotonic() - t0
        if on_progress:
            on_progress(stats)
        if nxt is not None:
            delay = nxt[0] - (time.monotonic() - t0) - batch_s
            if delay > 0:
                time.sleep(delay)
    stats.elapsed_s = time.monotonic() - t0
    return stats


def write_jsonl(events: Iterable[Event], path: Path, count: int) -> int:
    """Write the first ``count`` posts of ``events`` (and the updates among them) as JSONL."""
    n = 0
    with Path(path).open("wb") as fh:
        for _t, kind, item in events:
            if kind == "posts":
                if n == count:
                    break
                n += 1
            fh.write(orjson.dumps(item) + b"\n")
    return n
