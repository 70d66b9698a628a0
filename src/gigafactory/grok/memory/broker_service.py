"""``GrokService``'s interface over the broker: posts go to NATS JetStream, search and trends
fan out over the index shards that ``gigafactory indexer`` processes write.

A batch is answered only after JetStream has acknowledged every accepted item (its
``PubAck``); an item whose publish failed or timed out is refused with reason
``unavailable`` (retrying it is safe: the stream drops a repeat of the same ``Nats-Msg-Id``
within its duplicate window and answers ``duplicate``). ``last_seq`` is the highest stream
sequence of the batch.

Search asks every shard for its best candidates with global IDF and re-ranks them together
(``search.search_shards``). Trends are counted by each partition's indexer; a trend query
asks every indexer for its window counts (NATS request/reply on ``grok.trends.K``), adds them
up (counts add, so the merge is exact) and ranks the sum, so every API replica answers the
same, whatever replica published the posts. A partition that does not answer within
``TREND_TIMEOUT_S`` makes the query fail (``TrendsUnavailable``, HTTP 503) rather than
answer from part of the posts. The Grok chat calls ``search`` and ``top_trends`` as on the
embedded service.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from datetime import UTC, datetime
from typing import Any

import nats.errors
import orjson

from gigafactory.grok.memory.broker import (
    KIND_HEADER,
    STREAM,
    Broker,
    partition_of,
    subject_of,
)
from gigafactory.grok.memory.index import post_documents
from gigafactory.grok.memory.indexer import TrendsUnavailable
from gigafactory.grok.memory.ingest import Refusal, prepare_posts, validate_updates
from gigafactory.grok.memory.search import Hit, SearchQuery
from gigafactory.grok.memory.service import GrokService, IngestResult
from gigafactory.grok.memory.shards import (
    KIND_UPDATE,
    ShardPositions,
    ShardSet,
    consumer_name,
    read_trend_answer,
    search_shards,
    trend_subject,
)
from gigafactory.grok.memory.trends import Trend, WindowCounts, check_window, now_us
from gigafactory.grok.settings import GrokSettings

TREND_TIMEOUT_S = 2.0
"""How long a trend query waits for every partition's indexer."""


class BrokerService(GrokService):
    """The Grok memory on a NATS JetStream stream of ``partitions`` subjects (created with
    ``replicas`` copies if it does not exist yet) and the shards under ``settings.data_dir``.

    A ``GrokService`` whose log is the stream and whose index is the shards: every method
    that touches the log or the indexer process (ingest, search, health, close) is its own;
    ``top_trends`` ranks the partitions' counts merged (``trend_counts``), so the interface
    the API and the Grok chat call stays one."""

    def __init__(  # the parent's __init__ opens a log and an indexer process: not called
        self, settings: GrokSettings, url: str, partitions: int = 2, replicas: int = 1
    ):
        self.settings = settings
        self.broker = Broker(url, "grok-api")
        try:
            self.partitions = self.broker.ensure_stream(partitions, replicas)
        except BaseException:
            self.broker.close()
            raise
        self.shards = ShardSet(settings.data_dir, self.partitions)
        self.indexer = ShardPositions(self.shards)  # type: ignore[assignment]
        self.rebuilt: str | None = None
        self.started = time.time()

    def top_trends(
        self,
        window_s: float,
        baseline: int = 6,
        limit: int = 20,
        min_count: int = 5,
        at_us: int | None = None,
    ) -> list[Trend]:
        """``GrokService.top_trends`` from the partitions' counts added up (exact: counts
        add; each partition's indexer counts what it indexes)."""
        check_window(window_s, self.settings.trend_retention_s)
        at_us = now_us() if at_us is None else at_us
        return self.trend_counts(window_s, at_us, baseline).rank(limit, min_count)

    def trend_counts(self, window_s: float, at_us: int, baseline: int) -> WindowCounts:
        """The window counts of every partition (asked of its indexer), added up; raises
        ``TrendsUnavailable`` naming a partition that did not answer or cannot."""
        request = orjson.dumps({"window_s": window_s, "at_us": at_us, "baseline": baseline})
        subjects = [trend_subject(k) for k in range(self.partitions)]
        parts = []
        for k, reply in enumerate(self.broker.request_each(subjects, request, TREND_TIMEOUT_S)):
            if isinstance(reply, nats.errors.NoRespondersError):
                why = f"no indexer answers for partition {k}; start `gigafactory indexer "
                why += f"--partition {k}`"
            elif isinstance(reply, BaseException):
                why = f"partition {k} did not answer ({type(reply).__name__}); retry"
            else:
                try:
                    parts.append(read_trend_answer(reply, self.settings.trend_bucket_s))
                    continue
                except ValueError as exc:
                    why = f"partition {k}: {exc}"
            raise TrendsUnavailable(why)
        return WindowCounts.merge(parts)

    def _publish(
        self,
        positions: list[int],
        ids: list[str],
        messages: list[tuple[str, bytes, dict[str, str]]],
        refused: list[Refusal],
    ) -> tuple[list[int], int]:
        """Publish one message per item; (indices of the items JetStream stored, highest
        stream sequence). The others join ``refused``."""
        stored, last_seq = [], 0
        for j, ack in enumerate(self.broker.publish(messages)):
            if isinstance(ack, Exception):
                why = f"the broker did not acknowledge it ({type(ack).__name__}); retry"
                refused.append(Refusal(positions[j], ids[j], "unavailable", why))
            elif ack.duplicate:
                why = "an item with this id is already in the stream"
                refused.append(Refusal(positions[j], ids[j], "duplicate", why))
            else:
                stored.append(j)
                last_seq = max(last_seq, ack.seq)
        return stored, last_seq

    def ingest_posts(self, items: list[Any]) -> IngestResult:
        """Validate posts and publish each to its partition; see the module docstring."""
        ready, refused = prepare_posts(items, datetime.now(UTC), self.settings.max_future_s)
        keep: list[int] = []
        seen: set[str] = set()
        for j, pid in enumerate(ready.ids):
            if pid in seen:
                why = "this id appears earlier in the batch"
                refused.append(Refusal(ready.positions[j], pid, "duplicate", why))
            else:
                seen.add(pid)
                keep.append(j)
        messages = [
            (
                subject_of(partition_of(ready.ids[j], self.partitions)),
                ready.bodies[j].encode(),
                {"Nats-Msg-Id": ready.ids[j]},
            )
            for j in keep
        ]
        positions = [ready.positions[j] for j in keep]
        stored, last_seq = self._publish(positions, [ready.ids[j] for j in keep], messages, refused)
        refused.sort(key=lambda r: r.index)
        return IngestResult(len(stored), refused, last_seq)

    async def ingest_posts_async(self, items: list[Any]) -> IngestResult:
        """``ingest_posts`` for an event loop (in a worker thread: it waits for PubAcks)."""
        return await asyncio.to_thread(self.ingest_posts, items)

    def ingest_updates(self, items: list[Any]) -> IngestResult:
        """Validate engagement updates and publish each to its post's partition (the shard
        holding the post applies it; an update of an unknown post is dropped there)."""
        ok, refused = validate_updates(items, datetime.now(UTC), self.settings.max_future_s)
        messages = []
        for _i, u in ok:
            body = u.model_dump_json().encode()
            headers = {KIND_HEADER: KIND_UPDATE, "Nats-Msg-Id": f"upd:{u.id}:{zlib.crc32(body)}"}
            messages.append((subject_of(partition_of(u.id, self.partitions)), body, headers))
        ids = [u.id for _i, u in ok]
        stored, last_seq = self._publish([i for i, _u in ok], ids, messages, refused)
        refused.sort(key=lambda r: r.index)
        return IngestResult(len(stored), refused, last_seq)

    def search(self, sq: SearchQuery) -> list[Hit]:
        """Ranked posts for ``sq`` over every shard."""
        return search_shards(self.shards.indexes(), sq, self.settings.weights)

    def _consumers(self) -> list[dict[str, Any]]:
        async def info() -> list[dict[str, Any]]:
            out = []
            for k in range(self.partitions):
                try:
                    ci = await self.broker.js.consumer_info(STREAM, consumer_name(k))
                    out.append({"pending": ci.num_pending, "unacked": ci.num_ack_pending})
                except Exception as exc:  # no indexer yet, or the server is away
                    out.append({"error": type(exc).__name__})
            return out

        return self.broker.run(info(), 10)

    def healthy(self) -> bool:
        """Whether the broker is connected and every shard exists."""
        return self.broker.nc.is_connected and len(self.shards.indexes()) == self.partitions

    def health(self) -> dict[str, Any]:
        """Broker connection, and per partition its shard's checkpoint and consumer lag."""
        checkpoints = self.shards.checkpoints()
        consumers = self._consumers()
        return {
            "status": "ok" if self.healthy() else "degraded",
            "broker": self.broker.url,
            "broker_connected": self.broker.nc.is_connected,
            "partitions": [
                {"partition": k, "searchable_seq": checkpoints[k], **consumers[k]}
                for k in range(self.partitions)
            ],
            "searchable_seq": min(checkpoints, default=0),
            "index_docs": sum(post_documents(ix) for ix in self.shards.indexes()),
            "uptime_s": round(time.time() - self.started, 1),
        }

    def close(self) -> None:
        """Close the broker connection (the indexers run on)."""
        self.broker.close()
