"""Index shards fed from the broker: one tantivy index per partition, each written by one
``gigafactory indexer --partition K`` process, read together by the API.

The indexer is a durable JetStream pull consumer (``indexer-K``, filtered on the partition's
subject). Exactly as the log indexer stores the last indexed log sequence inside each tantivy
commit (``index.IndexFeeder``), the shard stores the last indexed *stream* sequence there.
That checkpoint is the consumer position: at start the indexer (re)creates its consumer at
``checkpoint + 1``; messages are acknowledged (``AckPolicy.ALL``) only after the commit that
covers them, and any message at or below the checkpoint (redelivered after a crash between a
commit and its ack) is skipped. So a SIGKILL at any instant neither loses nor duplicates a
post: the committed index and its position never disagree, and everything after the position
is still in the stream. A missing or unreadable shard is rebuilt from the start of the stream.

Engagement updates travel on the post's partition, so the shard that holds a post applies its
updates (the post's document is replaced with the new counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nats.errors
import nats.js.errors
import orjson
import tantivy
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from gigafactory.grok.memory.broker import (
    KIND_HEADER,
    STREAM,
    TRANSIENT,
    Broker,
    BrokerError,
    subject_of,
)
from gigafactory.grok.memory.index import (
    POST,
    IndexCorrupt,
    IndexFeeder,
    OpenedIndex,
    build_schema,
    checkpoint_of,
    open_index,
    register_analyzers,
)
from gigafactory.grok.memory.log import with_counts
from gigafactory.grok.memory.rank import RankWeights
from gigafactory.grok.memory.search import (
    COMMON_DOC_FRACTION,
    COMMON_MIN_DOCS,
    MAX_LIMIT,
    Clause,
    Hit,
    SearchQuery,
    _hit,
    _newest_slices,
    build_query,
    query_clauses,
    rank_candidates,
    search,
)
from gigafactory.grok.memory.trends import Trend, TrendCounter

log = logging.getLogger(__name__)

KIND_UPDATE = "update"
_STORED = ("id", "author", "lang", "text", "reply_to", "quote_of")
_COUNTS = ("created_us", "engagement", "likes", "reposts", "replies")


def shard_dir(data_dir: Path, partition: int) -> Path:
    """Where partition ``partition``'s index lives under a data dir."""
    return Path(data_dir) / f"shard-{partition}"


def consumer_name(partition: int) -> str:
    """The durable consumer of one partition."""
    return f"indexer-{partition}"


def open_shard(path: Path) -> OpenedIndex:
    """Open a shard and read its checkpoint (stream sequence), or create it empty; an
    unreadable one is deleted and rebuilt from the stream (the reason is in ``rebuilt``)."""
    return open_index(path, None)


def stored_body(doc: tantivy.Document) -> str:
    """The index document of a stored post, as the JSON the indexer was given."""
    d: dict[str, object] = {"kind": POST}
    for name in (*_STORED, *_COUNTS):
        value = doc.get_first(name)
        if value is not None:
            d[name] = value
    return orjson.dumps(d).decode()


class ShardFeeder(IndexFeeder):
    """The one writer of a shard: adds posts, applies updates, commits with the covered stream
    sequence in the commit (``IndexFeeder._commit``)."""

    def __init__(self, opened: OpenedIndex, heap_bytes: int = 128_000_000, threads: int = 1):
        super().__init__(opened, None, heap_bytes=heap_bytes, threads=threads)  # type: ignore[arg-type]
        self._pending: dict[str, str] = {}  # id -> body added since the last commit
        self.skipped = 0

    def add(self, seq: int, kind: str, body: bytes) -> None:
        """Index the message at stream sequence ``seq`` (skipped if the checkpoint covers it)."""
        if seq <= self.indexed_seq:
            self.skipped += 1
            return
        w = self.writer
        assert w is not None
        text = body.decode()
        if kind == KIND_UPDATE:
            pid = orjson.loads(body)["id"]
            old = self._pending.get(pid) or self._committed_body(pid)
            if old is None:
                log.warning("engagement update for unknown post %s skipped", pid)
            else:
                new = with_counts(old, text)
                w.delete_documents_by_term("id", pid)
                w.add_json(new)
                self._pending[pid] = new
        else:
            w.add_json(text)
            self._pending[orjson.loads(body)["id"]] = text
            self.posts += 1
        self.indexed_seq = seq

    def _committed_body(self, pid: str) -> str | None:
        self.index.reload()
        searcher = self.index.searcher()
        query = tantivy.Query.term_query(self.index.schema, "id", pid)
        hits = searcher.search(query, 1).hits
        return stored_body(searcher.doc(hits[0][1])) if hits else None

    def commit(self) -> None:
        """Commit the added documents with ``indexed_seq`` as the checkpoint."""
        self._commit()
        self._pending.clear()


async def _bind_consumer(broker: Broker, partition: int, start_seq: int):
    """(Re)create the partition's durable consumer at ``start_seq`` and bind a pull
    subscription to it."""
    js, name = broker.js, consumer_name(partition)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(STREAM, name)
    config = ConsumerConfig(
        durable_name=name,
        filter_subject=subject_of(partition),
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
        ack_policy=AckPolicy.ALL,
        ack_wait=10.0,  # a safety net: lost deliveries are re-fetched from the checkpoint
        max_ack_pending=-1,
    )
    await js.add_consumer(STREAM, config)
    return await js.pull_subscribe_bind(durable=name, stream=STREAM)


async def consume(
    broker: Broker,
    partition: int,
    feeder: ShardFeeder,
    halt: threading.Event,
    commit_interval_s: float = 0.1,
    batch: int = 2000,
    on_commit: Callable[[int], None] | None = None,
) -> None:
    """Index the partition until ``halt`` is set, then commit what was added and return."""
    sub = None
    bound_at = -1  # broker.reconnects when the consumer was last (re)created
    last_msg = None
    last_commit = time.monotonic()
    while True:
        stopping = halt.is_set()
        msgs = []
        try:
            # after a reconnect, messages the server counts as delivered may never have
            # arrived (they would come back only after ack_wait): restart at our position
            if sub is None or bound_at != broker.reconnects:
                bound_at = broker.reconnects
                sub = await _bind_consumer(broker, partition, feeder.indexed_seq + 1)
            msgs = await sub.fetch(batch, timeout=min(commit_interval_s, 0.5))
        except nats.errors.TimeoutError:
            pass
        except nats.js.errors.NotFoundError:
            sub = None  # the consumer is gone (a server lost its state): recreate it
            await asyncio.sleep(0.2)
        except TRANSIENT as exc:  # the server is away; the client reconnects by itself
            log.info("partition %d: %s; retrying", partition, type(exc).__name__)
            sub = None
            await asyncio.sleep(0.2)
        for m in msgs:
            kind = (m.headers or {}).get(KIND_HEADER, POST)
            feeder.add(m.metadata.sequence.stream, kind, m.data)
            last_msg = m
        now = time.monotonic()
        dirty = feeder.indexed_seq > feeder.searchable_seq
        if dirty and (now - last_commit >= commit_interval_s or stopping):
            feeder.commit()
            last_commit = now
            if on_commit is not None:
                on_commit(feeder.searchable_seq)
        if last_msg is not None and feeder.indexed_seq == feeder.searchable_seq:
            try:  # acks everything up to it; a lost ack only means a skipped redelivery
                await last_msg.ack()
                last_msg = None
            except TRANSIENT:
                pass
        if stopping and not msgs:
            break
    feeder.close()


def _wait_for_stream(broker: Broker, halt: threading.Event, wait_s: float) -> int:
    """The stream's partition count, waiting up to ``wait_s`` for ``serve --broker`` to
    create the stream (indexers may start first)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return broker.stream_partitions()
        except (BrokerError, *TRANSIENT):  # no stream yet, or the server is restarting
            if time.monotonic() > deadline or halt.is_set():
                raise
        halt.wait(0.2)


def run_indexer(
    url: str,
    partition: int,
    data_dir: Path,
    halt: threading.Event,
    commit_interval_s: float = 0.1,
    heap_mb: int = 128,
    on_commit: Callable[[int], None] | None = None,
    stream_wait_s: float = 60.0,
) -> OpenedIndex:
    """Open partition ``partition``'s shard under ``data_dir`` and index it from the broker at
    ``url`` until ``halt`` is set (waiting up to ``stream_wait_s`` for the broker and its
    stream to be there).
    Returns how the shard was opened."""
    deadline = time.monotonic() + stream_wait_s
    while True:  # the broker may be starting or restarting: wait for it
        try:
            broker = Broker(url, f"grok-indexer-{partition}")
            break
        except BrokerError:
            if time.monotonic() > deadline or halt.is_set():
                raise
            halt.wait(0.5)
    try:
        partitions = _wait_for_stream(broker, halt, max(0.0, deadline - time.monotonic()))
        if not 0 <= partition < partitions:
            raise BrokerError(
                f"--partition {partition}: the stream has partitions 0..{partitions - 1}"
            )
        opened = open_shard(shard_dir(data_dir, partition))
        feeder = ShardFeeder(opened, heap_bytes=heap_mb * 1_000_000)
        broker.run(consume(broker, partition, feeder, halt, commit_interval_s, on_commit=on_commit))
        return opened
    finally:
        broker.close()


class ShardSet:
    """The API's read-only view of every shard under a data dir, reloaded at most every
    ``reload_s`` seconds (the shards commit in other processes, perhaps other machines)."""

    def __init__(self, data_dir: Path, partitions: int, reload_s: float = 0.05):
        self.data_dir = Path(data_dir)
        self.partitions = partitions
        self.reload_s = reload_s
        self._indexes: list[tantivy.Index | None] = [None] * partitions
        self._reloaded = 0.0
        self._lock = threading.Lock()

    def indexes(self) -> list[tantivy.Index]:
        """The shards that exist, each reloaded to its newest commit."""
        with self._lock:
            now = time.monotonic()
            fresh = now - self._reloaded < self.reload_s
            for k, ix in enumerate(self._indexes):
                if ix is None:
                    path = shard_dir(self.data_dir, k)
                    if (path / "meta.json").exists():
                        ix = register_analyzers(tantivy.Index.open(str(path)))
                        ix.config_reader("Manual")
                        self._indexes[k] = ix
                        ix.reload()
                elif not fresh:
                    ix.reload()
            if not fresh:
                self._reloaded = now
            return [ix for ix in self._indexes if ix is not None]

    def checkpoints(self) -> list[int]:
        """Each shard's committed stream sequence (0 for a shard not created yet)."""
        self.indexes()
        out = []
        for ix in self._indexes:
            try:
                out.append(checkpoint_of(ix).seq if ix is not None else 0)
            except IndexCorrupt:
                out.append(0)
        return out


# -- search over the shards -------------------------------------------------------------------
def bm25_idf(n_docs: int, doc_freq: int) -> float:
    """BM25's inverse document frequency ``ln(1 + (N - n + 0.5) / (n + 0.5))`` of a term in
    ``n`` of ``N`` documents (Robertson & Zaragoza, "The Probabilistic Relevance Framework:
    BM25 and Beyond", 2009, eq. 3.3, with Lucene's +1 that keeps it positive; tantivy's
    ``Bm25Weight`` uses the same form, and sums it over the terms of a phrase)."""
    return math.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def _words(clause: Clause) -> tuple[str, ...]:
    return (clause,) if isinstance(clause, str) else clause


def global_boosts(
    searchers: Sequence[tantivy.Searcher], clauses: list[Clause]
) -> list[dict[Clause, float]]:
    """Per shard, the factor that turns each clause's shard-local IDF into the IDF over all
    shards (document counts and document frequencies summed, as Elasticsearch's
    ``dfs_query_then_fetch`` does): a clause's BM25 contribution is ``idf · tf-part``, so
    multiplying it by ``idf_global / idf_shard`` gives every shard the same IDF. The length
    normalisation keeps each shard's average length (hash partitioning makes the shards
    uniform samples, so those agree closely)."""
    n = [s.num_docs for s in searchers]
    total = sum(n)
    df = {t: [s.doc_freq("text", t) for s in searchers] for c in clauses for t in _words(c)}
    out: list[dict[Clause, float]] = []
    for k in range(len(searchers)):
        boosts: dict[Clause, float] = {}
        for c in clauses:
            if all(df[t][k] for t in _words(c)):
                local = sum(bm25_idf(n[k], df[t][k]) for t in _words(c))
                boosts[c] = sum(bm25_idf(total, sum(df[t])) for t in _words(c)) / local
        out.append(boosts)
    return out


def _common_overall(searchers: Sequence[tantivy.Searcher], clauses: list[Clause]) -> set[str]:
    """``search.common_terms`` over all shards together (summed counts)."""
    docs = sum(s.num_docs for s in searchers)
    if docs < COMMON_MIN_DOCS:
        return set()
    freq = {c: sum(s.doc_freq("text", c) for s in searchers) for c in clauses if isinstance(c, str)}
    return {c for c, f in freq.items() if f > COMMON_DOC_FRACTION * docs}


def search_shards(
    indexes: Sequence[tantivy.Index],
    sq: SearchQuery,
    weights: RankWeights | None = None,
    now_us: int | None = None,
) -> list[Hit]:
    """``search.search`` over several shards: the same clauses (very common words judged over
    all shards), each shard's best candidates scored with global IDF (``global_boosts``),
    merged and re-ranked together (``search.rank_candidates``). A query of only very common
    words takes each shard's newest matches (``search._newest_slices``), unboosted: BM25
    barely tells such posts apart and recency decides."""
    if len(indexes) == 1:
        return search(indexes[0], sq, weights, now_us)
    w = weights or RankWeights()
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    limit = max(1, min(sq.limit, MAX_LIMIT))
    searchers = [ix.searcher() for ix in indexes]
    clauses = query_clauses(sq.q)
    if not clauses:
        if sq.q.strip():
            return []  # text with nothing indexable in it (punctuation only) matches nothing
        newest = []
        for ix, searcher in zip(indexes, searchers, strict=True):
            query, _ = build_query(ix.schema, sq, clauses)
            hits = searcher.search(query, limit, count=False, order_by_field="created_us").hits
            newest += [(created, searcher, a) for created, a in hits]
        newest.sort(key=lambda t: t[0], reverse=True)
        return [_hit(searcher.doc(a), 0.0, 0.0) for _c, searcher, a in newest[:limit]]
    common = _common_overall(searchers, clauses)
    per_shard = []
    if len(common) < len(clauses):  # very common words add cost, not relevance: drop them
        clauses = [c for c in clauses if c not in common]
        boosts = global_boosts(searchers, clauses)
        for ix, searcher, b in zip(indexes, searchers, boosts, strict=True):
            query, _ = build_query(ix.schema, sq, clauses, b)
            per_shard.append((searcher, searcher.search(query, max(limit, w.candidates)).hits))
    else:
        for ix, searcher in zip(indexes, searchers, strict=True):
            hits = _newest_slices(searcher, ix.schema, sq, clauses, now_us, w.candidates)
            per_shard.append((searcher, hits))
    return rank_candidates(per_shard, limit, w, now_us)


@dataclass(frozen=True)
class _Counted:
    count: int
    hits: list  # always empty: hits of several shards have no common address space


class _ShardsSearcher:
    def __init__(self, searchers: list[tantivy.Searcher]):
        self.searchers = searchers

    @property
    def num_docs(self) -> int:
        return sum(s.num_docs for s in self.searchers)

    def search(self, query: tantivy.Query, limit: int = 10, count: bool = True, **_: object):
        """Only the count of matches, summed over the shards (``hits`` is empty)."""
        return _Counted(sum(s.search(query, 1, count=True).count for s in self.searchers), [])


class ShardsView:
    """A read-only stand-in for one ``tantivy.Index`` over all shards, for code that counts
    matches on ``service.indexer.index`` (the Grok chat's ``retrieve.count_matches``): the
    common schema, and searchers that count over every shard. Ranked search goes through
    ``search_shards``."""

    def __init__(self, shards: ShardSet):
        self.shards = shards
        self.schema = build_schema()

    def searcher(self) -> _ShardsSearcher:
        return _ShardsSearcher([ix.searcher() for ix in self.shards.indexes()])


class ShardPositions:
    """What the service reads as ``self.indexer``: the stream sequence every shard has
    committed past (the smallest shard checkpoint, a lower bound of what is searchable), and
    the trend counts of the posts this API process has published (``GrokService.top_trends``
    asks ``indexer.trends``)."""

    def __init__(self, shards: ShardSet, trends: TrendCounter):
        self.shards = shards
        self.counter = trends
        self.index = ShardsView(shards)

    @property
    def searchable_seq(self) -> int:
        return min(self.shards.checkpoints(), default=0)

    def trends(
        self, window_s: float, at_us: int | None, baseline: int, limit: int, min_count: int
    ) -> list[Trend]:
        """``TrendCounter.top`` of the counts this process keeps."""
        return self.counter.top(window_s, at_us, baseline, limit, min_count)
