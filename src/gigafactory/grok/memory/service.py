"""The Grok memory as one object: log + index + indexer (which also keeps the trend counts),
with the operations the API exposes. The API module is a thin HTTP layer over
``GrokService``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gigafactory.grok.memory.index import post_documents
from gigafactory.grok.memory.indexer import TREND_NICE, IndexerProcess
from gigafactory.grok.memory.ingest import (
    LoggablePosts,
    Refusal,
    prepare_posts,
    validate_updates,
)
from gigafactory.grok.memory.log import KIND_POST, AppendResult, PostLog
from gigafactory.grok.memory.search import Hit, SearchQuery, search
from gigafactory.grok.memory.trends import Trend, check_window
from gigafactory.grok.settings import GrokSettings

log = logging.getLogger(__name__)

INLINE_ITEMS = 32
"""Batches up to this size are validated on the event loop (``ingest_posts_async``)."""


class IndexLagGate:
    """Back-pressure from the index to ingest: a batch waits (at most ``max_hold_s``) while
    the oldest post this process acknowledged that is not yet searchable is more than
    ``max_lag_s`` old, then goes on regardless (it is never refused: the log, not the index,
    is what acknowledges). Ingest faster than the indexer can follow would otherwise grow the
    index's lag without bound (measured flat out: 40,000 posts/s acknowledged, p99 ack ->
    searchable 7 s); held, clients slow to the rate the machine can index.

    A (re)started indexer catching up on the log (a rebuild, or the posts logged while it was
    down) is not throttled: the gate engages once it has reached the log as it was when its
    start was noticed and is within ``max_lag_s``. ``max_lag_s`` 0 turns the gate off."""

    POLL_S = 0.005

    def __init__(self, indexer: IndexerProcess, postlog: PostLog, max_lag_s: float, hold_s: float):
        self.indexer, self.log = indexer, postlog
        self.max_lag_s, self.max_hold_s = max_lag_s, hold_s
        self._acked: deque[tuple[int, float]] = deque()  # (last seq of a batch, ack time)
        self._lock = threading.Lock()
        self._epoch = indexer.restarts
        self._catch_up_to = postlog.last_seq
        self._live = False
        self.holds = 0
        self.held_s = 0.0

    def acked(self, last_seq: int) -> None:
        """A batch ending at ``last_seq`` was acknowledged now."""
        with self._lock:
            self._acked.append((last_seq, time.monotonic()))

    def lag_s(self) -> float:
        """Seconds the oldest acknowledged, not yet searchable post has waited."""
        searchable = self.indexer.searchable_seq
        with self._lock:
            while self._acked and self._acked[0][0] <= searchable:
                self._acked.popleft()
            return time.monotonic() - self._acked[0][1] if self._acked else 0.0

    def behind(self) -> bool:
        """Whether a batch arriving now should wait for the index."""
        ix = self.indexer
        if not self.max_lag_s or not ix.is_alive():
            return False
        if ix.restarts != self._epoch:  # a restarted indexer catches up unthrottled
            self._epoch, self._catch_up_to, self._live = ix.restarts, self.log.last_seq, False
        lag = self.lag_s()
        if not self._live:
            self._live = ix.searchable_seq >= self._catch_up_to and lag <= self.max_lag_s
            return False
        return lag > self.max_lag_s

    def _held(self, t0: float) -> None:
        with self._lock:
            self.holds += 1
            self.held_s += time.monotonic() - t0

    def _holding(self, t0: float) -> bool:
        return self.behind() and time.monotonic() - t0 < self.max_hold_s

    def wait(self) -> None:
        """Block while ``behind`` (at most ``max_hold_s``)."""
        if not self.behind():
            return
        t0 = time.monotonic()
        while self._holding(t0):
            time.sleep(self.POLL_S)
        self._held(t0)

    async def wait_async(self) -> None:
        """``wait`` for an event loop (the loop goes on serving meanwhile)."""
        if not self.behind():
            return
        t0 = time.monotonic()
        while self._holding(t0):
            await asyncio.sleep(self.POLL_S)
        self._held(t0)


@dataclass(frozen=True)
class IngestResult:
    """What happened to a batch: accepted items are committed to the log."""

    accepted: int
    refused: list[Refusal]
    last_seq: int


class GrokService:
    """Opens the log under ``settings.data_dir`` and starts the indexer process, which opens
    (or rebuilds) the index, and the trend process, which counts trending terms; searches
    read the same index from this process."""

    def __init__(self, settings: GrokSettings):
        self.settings = settings
        d = settings.prepare_data_dir()
        self.log = PostLog(d / "log.sqlite3", settings.synchronous)
        # both children start at once (each constructor returns when its child is ready)
        with ThreadPoolExecutor(2, thread_name_prefix="grok-start") as pool:
            starting = [
                pool.submit(
                    IndexerProcess,
                    d,
                    settings.synchronous,
                    settings.commit_interval_s,
                    heap_mb=settings.indexer_heap_mb,
                    threads=settings.indexer_threads,
                ),
                pool.submit(
                    IndexerProcess,
                    d,
                    settings.synchronous,
                    trend_bucket_s=settings.trend_bucket_s,
                    trend_retention_s=settings.trend_retention_s,
                    trend_save_s=settings.trend_save_s,
                    role="trends",
                    nice=TREND_NICE,
                ),
            ]
        errors = [f.exception() for f in starting]  # the pool is done: both have ended
        if any(errors):
            for f, error in zip(starting, errors, strict=True):
                if error is None:
                    f.result().stop()
            self.log.close()
            raise next(e for e in errors if e is not None)
        self.indexer, self.trend_proc = (f.result() for f in starting)
        self.rebuilt = self.indexer.rebuilt
        self.gate = IndexLagGate(
            self.indexer, self.log, settings.max_index_lag_s, settings.max_ingest_hold_s
        )
        self.started = time.time()
        self._closed = False

    def _prepare(self, items: list[Any]) -> tuple[LoggablePosts, list[Refusal]]:
        return prepare_posts(items, datetime.now(UTC), self.settings.max_future_s)

    def ingest_posts(self, items: list[Any]) -> IngestResult:
        """Validate and durably log posts; see ``gigafactory.grok.memory.ingest`` for semantics.
        Safe to call from many threads: concurrent calls share log commits (group commit)."""
        self.gate.wait()
        ready, refused = self._prepare(items)
        res = self.log.append(KIND_POST, ready.ids, ready.bodies)
        self.gate.acked(res.last_seq)
        return self._result(res, ready.positions, ready.ids, refused)

    async def ingest_posts_async(self, items: list[Any]) -> IngestResult:
        """``ingest_posts`` for an event loop: a small batch is validated in the loop, a
        large one (over ``INLINE_ITEMS``) in a worker thread, and the loop awaits the group
        commit without a thread waiting per request. A batch first waits while the index is
        too far behind (``IndexLagGate``)."""
        await self.gate.wait_async()
        if len(items) > INLINE_ITEMS:
            ready, refused = await asyncio.to_thread(self._prepare, items)
        else:
            ready, refused = self._prepare(items)
        res = await asyncio.wrap_future(self.log.submit(KIND_POST, ready.ids, ready.bodies))
        self.gate.acked(res.last_seq)
        return self._result(res, ready.positions, ready.ids, refused)

    def ingest_updates(self, items: list[Any]) -> IngestResult:
        """Validate and durably log engagement updates of already logged posts."""
        self.gate.wait()
        ok, refused = validate_updates(items, datetime.now(UTC), self.settings.max_future_s)
        res = self.log.append_updates([u for _i, u in ok])
        self.gate.acked(res.last_seq)
        return self._result(res, [i for i, _u in ok], [u.id for _i, u in ok], refused)

    @staticmethod
    def _result(
        res: AppendResult, positions: list[int], ids: list[str], refused: list[Refusal]
    ) -> IngestResult:
        """Merge the log's refusals (by position in what it was given) with validation's."""
        for pos, why in res.refused.items():
            reason, _, message = why.partition(": ")
            refused.append(Refusal(positions[pos], ids[pos], reason, message))
        refused.sort(key=lambda r: r.index)
        return IngestResult(len(res.accepted), refused, res.last_seq)

    def search(self, sq: SearchQuery) -> list[Hit]:
        """Ranked posts for ``sq``."""
        return search(self.indexer.index, sq, self.settings.weights)

    def top_trends(
        self,
        window_s: float,
        baseline: int = 6,
        limit: int = 20,
        min_count: int = 5,
        at_us: int | None = None,
    ) -> list[Trend]:
        """Trending terms over the ``window_s`` seconds up to ``at_us`` (default: now), from
        the counts the trend process keeps, once they cover every post searchable now
        (``TrendWindowError`` for a window longer than the retention, ``TrendsUnavailable``
        while the trend process cannot answer)."""
        check_window(window_s, self.settings.trend_retention_s)
        return self.trend_proc.trends(
            window_s, at_us, baseline, limit, min_count, min_seq=self.indexer.searchable_seq
        )

    def healthy(self) -> bool:
        """Whether the indexer and trend processes run and have not failed since their last
        start."""
        return all(p.failure() is None for p in (self.indexer, self.trend_proc))

    def health(self) -> dict[str, Any]:
        """Log and index positions, and whether the indexer process is alive (a degraded
        status always comes with the reason, read once with it)."""
        ix = self.indexer
        ix_error, trends_error = ix.failure(), self.trend_proc.failure()
        docs = post_documents(ix.index) if ix.index is not None else 0
        return {
            "status": "ok" if ix_error is None and trends_error is None else "degraded",
            "log_seq": self.log.last_seq,
            "searchable_seq": ix.searchable_seq,
            "lag": self.log.last_seq - ix.searchable_seq,
            "commits": ix.commits,
            "log_commits": self.log.commits,
            "index_docs": docs,
            "index_rebuilt": self.rebuilt,
            "indexer_pid": ix.pid,
            "indexer_restarts": ix.restarts,
            "indexer_error": ix_error,
            "trends_counted_seq": self.trend_proc.counted_seq,
            "trends_lag": max(0, self.log.last_seq - self.trend_proc.counted_seq),
            "trends_pid": self.trend_proc.pid,
            "trends_restarts": self.trend_proc.restarts,
            "trends_error": trends_error,
            "index_lag_s": round(self.gate.lag_s(), 3),
            "ingest_holds": self.gate.holds,
            "ingest_held_s": round(self.gate.held_s, 3),
            "uptime_s": round(time.time() - self.started, 1),
        }

    def close(self) -> None:
        """Have the indexer index what is left and commit and the trend process count it
        and save, then close the log (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for child in (self.indexer, self.trend_proc):  # both finish at once
            child.request_stop()
        self.indexer.stop()
        self.trend_proc.stop()
        self.log.close()
