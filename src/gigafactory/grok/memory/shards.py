"""Index shards fed from the broker: one tantivy index per partition, each written by one
``gigafactory indexer --partition K`` process, read together by the API.

The indexer is a durable JetStream pull consumer (``indexer-K``, filtered on the partition's
subject). Exactly as the log indexer stores the last indexed log sequence inside each tantivy
commit (``index.IndexFeeder``), the shard stores the last indexed *stream* sequence there,
with the stream's creation time (its identity). That checkpoint is the consumer position: at
start the indexer (re)creates its consumer at ``checkpoint + 1``; messages are acknowledged
(``AckPolicy.ALL``) only after the commit that covers them, and any message at or below the
checkpoint (redelivered after a crash between a commit and its ack) is skipped. So a SIGKILL at
any instant neither loses nor duplicates a post: the committed index and its position never
disagree, and everything after the position is still in the stream. A missing or unreadable
shard is rebuilt from the start of the stream.

Guards against silent loss: a shard whose stream was deleted and recreated (another creation
time) is refused with what to do; a stream that lost its tail (last sequence below the shard's
checkpoint, same creation time) rewinds the shard's position to it instead of skipping the new
messages that reuse those sequences; a delivery that never arrived (a gap in the consumer's
delivery sequence) makes the indexer re-fetch from its position. An idle partition's position
follows the stream (``searchable_seq`` of the API, the smallest shard position, never stalls).

A post whose id the shard already holds (a retry past the stream's duplicate window) is
skipped: the first copy stays, with its engagement counts, as the embedded log refuses a
logged id. Engagement updates travel on the post's partition, so the shard that holds a post
applies its updates (the post's document is replaced with the new counts).

Each indexer also counts its partition's posts for trends (``trends.TrendCounter``), saved
beside the shard with the stream sequence they cover (``trends.TrendStore``, ``shard-K/trends``)
so a restart replays only the stream after the save; it answers ``grok.trends.K`` requests
with its window counts, which the API merges over the partitions (``trend_answer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import orjson
import tantivy
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, SequenceInfo, StreamInfo

from gigafactory.grok.memory.analysis import index_document, shown_text
from gigafactory.grok.memory.broker import (
    KIND_HEADER,
    STREAM,
    TRANSIENT,
    Broker,
    BrokerError,
    partitions_of,
    subject_of,
)
from gigafactory.grok.memory.index import (
    POST,
    Checkpoint,
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
    candidate_tiers,
    clause_tiers,
    rank_candidates,
    search,
)
from gigafactory.grok.memory.trends import (
    STOPWORDS,
    TrendCounter,
    TrendStore,
    WindowCounts,
    now_us,
)

log = logging.getLogger(__name__)

KIND_UPDATE = "update"
TREND_PREFIX = "grok.trends"
_STORED = ("id", "author", "lang", "text", "reply_to", "quote_of")
_COUNTS = ("created_us", "engagement", "likes", "reposts", "replies")


def ack_wait_s(commit_interval_s: float) -> float:
    """How long the server waits for an ack before redelivering: messages are acknowledged
    only after the commit that covers them, so comfortably more than a commit interval (and
    a slow commit) -- a redelivery is harmless (skipped) but doubles the traffic."""
    return max(30.0, 5 * commit_interval_s)


class StreamReplaced(BrokerError):
    """The stream is not the one the shard was indexed from (deleted and recreated)."""


def shard_dir(data_dir: Path, partition: int) -> Path:
    """Where partition ``partition``'s index lives under a data dir."""
    return Path(data_dir) / f"shard-{partition}"


def consumer_name(partition: int) -> str:
    """The durable consumer of one partition."""
    return f"indexer-{partition}"


def trend_subject(partition: int) -> str:
    """Where partition ``partition``'s indexer answers trend requests (NATS request/reply)."""
    return f"{TREND_PREFIX}.{partition}"


def open_shard(path: Path) -> OpenedIndex:
    """Open a shard and read its checkpoint (stream sequence), or create it empty; an
    unreadable one is deleted and rebuilt from the stream (the reason is in ``rebuilt``)."""
    return open_index(path, None)


def stored_body(doc: tantivy.Document) -> str:
    """A stored post as the JSON body it was logged with (its text as posted: the index
    holds its index form)."""
    d: dict[str, object] = {"kind": POST}
    for name in (*_STORED, *_COUNTS):
        value = doc.get_first(name)
        if value is not None:
            d[name] = shown_text(value) if name == "text" else value
    return orjson.dumps(d).decode()


def created_us(info: StreamInfo) -> int:
    """The stream's creation time in µs since the epoch: its identity (a stream deleted and
    recreated under the same name has another)."""
    if not isinstance(info.created, datetime):
        raise BrokerError(
            "the broker does not report when the stream was created; use a newer nats-server"
        )
    return int(info.created.timestamp() * 1_000_000)


def check_stream(cp: Checkpoint, info: StreamInfo, where: Path) -> bool:
    """Whether the shard at ``where`` (checkpoint ``cp``) may go on from the stream ``info``:
    raises ``StreamReplaced`` for another stream; True when the stream lost messages the shard
    indexed (same stream, last sequence below the checkpoint: the position must rewind)."""
    if cp.seq == 0:
        return False
    last = info.state.last_seq
    if (cp.log_us and cp.log_us != created_us(info)) or (not cp.log_us and cp.seq > last):
        had = datetime.fromtimestamp(cp.log_us / 1e6).isoformat() if cp.log_us else "unknown"
        raise StreamReplaced(
            f"{where} was indexed up to sequence {cp.seq} of stream {STREAM} created {had}, "
            f"but the stream on the broker was created {info.created} (last sequence {last}): "
            "it was deleted and recreated, and the shard's position means nothing in it. Move "
            f"{where} away to index the new stream from its start, or point --broker at the "
            "original stream"
        )
    return cp.seq > last


class ShardFeeder(IndexFeeder):
    """The one writer of a shard: adds posts (a repeat of an id the shard holds is skipped),
    applies updates, commits with the covered stream sequence and the stream's identity in the
    commit (``IndexFeeder._commit``).

    With ``trends``, it counts every post of the partition for trends: the counts cover the
    posts up to stream sequence ``counted_seq`` (``counted_seq`` given: a save at that
    sequence; not given: the counter already holds the shard's posts). Messages above it are
    counted as they are read; the counts are complete (``trends_complete``) once they have
    caught up with the checkpoint the shard was opened at."""

    def __init__(
        self,
        opened: OpenedIndex,
        heap_bytes: int = 128_000_000,
        threads: int = 1,
        stream_created_us: int = 0,
        trends: TrendCounter | None = None,
        counted_seq: int | None = None,
        path: Path = Path("shard"),
    ):
        super().__init__(opened, None, heap_bytes=heap_bytes, threads=threads)  # type: ignore[arg-type]
        self.path = path  # for messages
        self.last = (STREAM, stream_created_us)  # the identity kept in every commit
        self._pending: dict[str, str] = {}  # id -> body added since the last commit
        self._searcher = self.index.searcher()  # the last commit (for ids and updates)
        self.skipped = 0  # messages at or below both positions (redeliveries)
        self.repeats = 0  # posts whose id the shard already held
        self.trends = trends
        self.counted_seq = opened.checkpoint_seq if counted_seq is None else counted_seq
        self.count_to = opened.checkpoint_seq
        self._to_count: list[tuple[int, str]] = []

    @property
    def resume_seq(self) -> int:
        """The stream sequence after which messages are still needed (to index or count)."""
        return min(self.indexed_seq, self.counted_seq)

    @property
    def trends_complete(self) -> bool:  # type: ignore[override]
        """Whether the counts cover every post up to the checkpoint the shard opened at."""
        return self.trends is not None and self.counted_seq >= self.count_to

    def add(self, seq: int, kind: str, body: bytes) -> None:
        """Take the message at stream sequence ``seq``: index it unless the checkpoint covers
        it, count it for trends unless the counts cover it."""
        index, count = seq > self.indexed_seq, seq > self.counted_seq
        if not (index or count):
            self.skipped += 1
            return
        doc = orjson.loads(body)
        if kind == KIND_UPDATE:
            if index:
                self._update(doc["id"], body.decode())
        else:
            new = True
            if index:
                new = self._add_post(doc["id"], body.decode())
            if count and new and self.trends is not None:
                # replayed messages (at or below the checkpoint) are counted without the id
                # check: the shard holds them all
                self._to_count.append((doc["created_us"], doc["text"]))
        self.indexed_seq = max(self.indexed_seq, seq)
        self.counted_seq = max(self.counted_seq, seq)

    def _add_post(self, pid: str, text: str) -> bool:
        """Add a post unless its id is already in the shard; whether it was added."""
        if pid in self._pending or self._searcher.doc_freq("id", pid):
            self.repeats += 1  # doc_freq also counts replaced documents: never 0 once added
            return False
        w = self.writer
        assert w is not None
        w.add_json(index_document(text))
        self._pending[pid] = text
        self.posts += 1
        return True

    def _update(self, pid: str, text: str) -> None:
        old = self._pending.get(pid) or self._committed_body(pid)
        if old is None:
            log.warning("engagement update for unknown post %s skipped", pid)
            return
        w = self.writer
        assert w is not None
        new = with_counts(old, text)
        w.delete_documents_by_term("id", pid)
        w.add_json(index_document(new))
        self._pending[pid] = new

    def _committed_body(self, pid: str) -> str | None:
        query = tantivy.Query.term_query(self.index.schema, "id", pid)
        hits = self._searcher.search(query, 1).hits
        return stored_body(self._searcher.doc(hits[0][1])) if hits else None

    def count_pending(self) -> None:
        """Add the posts taken since the last call to the trend counts (one pass a batch)."""
        if self._to_count and self.trends is not None:
            self.trends.add_many(self._to_count)
        self._to_count = []

    def advance(self, seq: int) -> None:
        """The partition holds nothing more up to stream sequence ``seq`` (every message of
        it up to there was taken): both positions move there, so an idle partition's
        checkpoint follows the stream."""
        self.indexed_seq = max(self.indexed_seq, seq)
        self.counted_seq = max(self.counted_seq, seq)

    def rewind(self, seq: int) -> None:
        """The stream's last sequence is ``seq``, below this shard's position (it lost
        messages the shard had indexed): commit the position ``seq``, so the messages that
        reuse the sequences above it are indexed instead of skipped. The posts already
        indexed stay (a repeat of one is skipped by its id)."""
        self.indexed_seq = min(self.indexed_seq, seq)
        self.counted_seq = min(self.counted_seq, seq)
        self.count_to = min(self.count_to, seq)
        self.commit()

    def commit(self) -> None:
        """Commit the added documents with ``indexed_seq`` as the checkpoint."""
        self._commit()
        self._pending.clear()
        self.index.reload()
        self._searcher = self.index.searcher()


def count_shard(index: tantivy.Index, trends: TrendCounter) -> int:
    """Count, for trends, the posts ``index`` holds that were created within the counter's
    retention; how many."""
    since_us = now_us() - trends.retention_s * 1_000_000
    index.reload()
    searcher = index.searcher()
    query = tantivy.Query.range_query(
        index.schema, "created_us", tantivy.FieldType.Integer, since_us, None
    )
    hits = searcher.search(query, max(1, searcher.num_docs), count=False).hits
    posts = []
    for _s, addr in hits:
        doc = searcher.doc(addr)
        posts.append((doc.get_first("created_us"), shown_text(doc.get_first("text"))))
    trends.add_many(posts)
    return len(posts)


def load_trends(opened: OpenedIndex, trends: TrendCounter, store: TrendStore) -> int | None:
    """Restore ``trends`` from ``store``; the stream sequence the counts cover, or None when
    there is no usable save and the counts were taken from the shard's posts instead (they
    then cover its checkpoint)."""
    seq = store.load(trends)
    if seq is None:
        trends.restore({})
        count_shard(opened.index, trends)
    return seq


# -- trend requests (NATS request/reply) ---------------------------------------------------
def _packed(d: dict[str, Any]) -> bytes:
    return zlib.compress(orjson.dumps(d), 1)


def trend_answer(feeder: ShardFeeder, request: bytes, max_bytes: int) -> bytes:
    """The answer of a partition's indexer to a trend request (``{"window_s", "at_us",
    "baseline"}``): its window counts (stop words left out: they never rank) with the
    length of its buckets, or ``{"error": why}``; compressed JSON."""
    try:
        if feeder.trends is None:
            raise ValueError("this indexer counts no trends")
        if not feeder.trends_complete:
            raise ValueError(
                f"trend counts are loading (stream read up to {feeder.counted_seq} of "
                f"{feeder.count_to})"
            )
        q = orjson.loads(request)
        bucket_s = feeder.trends.bucket_s
        wc = feeder.trends.window_counts(float(q["window_s"]), int(q["at_us"]), int(q["baseline"]))
    except Exception as exc:  # the asker gets the reason; the indexer goes on
        return _packed({"error": f"{type(exc).__name__}: {exc}"})
    data = _packed(
        {
            "bucket_s": bucket_s,
            "covered": wc.covered,
            "n_base": wc.n_base,
            "now": {t: c for t, c in wc.now.items() if t not in STOPWORDS},
            "before": {t: c for t, c in wc.before.items() if t not in STOPWORDS},
        }
    )
    if len(data) > max_bytes:
        return _packed(
            {
                "error": f"the window counts take {len(data):,} bytes, over the broker's "
                f"max_payload of {max_bytes:,}; ask for a shorter window or raise "
                "max_payload in the nats-server configuration"
            }
        )
    return data


def read_trend_answer(data: bytes, bucket_s: int) -> WindowCounts:
    """The window counts of a ``trend_answer``; ValueError with the indexer's reason."""
    d = orjson.loads(zlib.decompress(data))
    if "error" in d:
        raise ValueError(d["error"])
    if d["bucket_s"] != bucket_s:
        raise ValueError(
            f"it counts in {d['bucket_s']} s buckets, this API in {bucket_s} s; give serve "
            "and the indexers the same trend_bucket_s (env GROK_TREND_BUCKET_S)"
        )
    return WindowCounts(Counter(d["now"]), Counter(d["before"]), d["covered"], d["n_base"])


# -- the consumer loop ---------------------------------------------------------------------
async def _bind_consumer(broker: Broker, partition: int, feeder: ShardFeeder, ack_wait: float):
    """Check that the stream is still the shard's (raises ``StreamReplaced``, or rewinds the
    position when it lost messages), then (re)create the partition's durable consumer after
    the feeder's position and bind a pull subscription to it."""
    js, name = broker.js, consumer_name(partition)
    info = await js.stream_info(STREAM)
    cp = Checkpoint(feeder.indexed_seq, log_us=feeder.last[1])
    if check_stream(cp, info, feeder.path):
        log.warning(
            "partition %d: the stream's last sequence %d is below the shard's position %d "
            "(the broker lost messages); going on from %d",
            partition,
            info.state.last_seq,
            feeder.indexed_seq,
            info.state.last_seq,
        )
        feeder.rewind(info.state.last_seq)
    feeder.last = (STREAM, created_us(info))  # the same stream (or an empty shard adopts it)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(STREAM, name)
    config = ConsumerConfig(
        durable_name=name,
        filter_subject=subject_of(partition),
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=feeder.resume_seq + 1,
        ack_policy=AckPolicy.ALL,
        ack_wait=ack_wait,  # a safety net: lost deliveries are re-fetched from the position
        max_ack_pending=-1,
    )
    await js.add_consumer(STREAM, config)
    return await js.pull_subscribe_bind(durable=name, stream=STREAM)


def in_order(msgs: list[Msg], last_delivery: int) -> tuple[list[Msg], bool]:
    """The messages of a fetch that follow delivery ``last_delivery`` of the consumer without
    a gap, and whether a gap (a delivery that never arrived) cut them short. Every delivery,
    redeliveries included, takes the next consumer sequence."""
    for i, m in enumerate(msgs):
        if m.metadata.sequence.consumer != last_delivery + 1:
            return msgs[:i], True
        last_delivery += 1
    return msgs, False


async def caught_up_to(broker: Broker, partition: int, last_delivery: int) -> int | None:
    """After a fetch that found nothing: the stream sequence up to which the partition has
    been delivered entirely (0 when messages are pending), or None when the consumer has
    delivered more than the ``last_delivery`` this indexer received (re-fetch).

    The sequence is the consumer's own scan position (``delivered.stream_seq``: the server
    moves it past the messages of other subjects, to the end of the stream, whenever a fetch
    finds nothing more), not the stream's last sequence: on a replicated stream the
    consumer reads its own replica, which may not hold the leader's newest messages yet."""
    ci = await broker.js.consumer_info(STREAM, consumer_name(partition))
    delivered = ci.delivered or SequenceInfo(0, 0)
    if delivered.consumer_seq != last_delivery:
        return None
    return 0 if ci.num_pending else delivered.stream_seq


async def consume(
    broker: Broker,
    partition: int,
    feeder: ShardFeeder,
    halt: threading.Event,
    commit_interval_s: float = 0.1,
    batch: int = 2000,
    on_commit: Callable[[int], None] | None = None,
    trend_store: TrendStore | None = None,
    trend_save_s: float = 5.0,
) -> None:
    """Index the partition until ``halt`` is set, answering trend requests meanwhile; then
    commit what was added, save the trend counts and return."""

    async def answer(msg: Msg) -> None:
        with contextlib.suppress(*TRANSIENT):  # the asker times out and says so
            await msg.respond(trend_answer(feeder, msg.data, broker.nc.max_payload))

    replies = await broker.nc.subscribe(trend_subject(partition), cb=answer)
    try:
        await _consume(broker, partition, feeder, halt, commit_interval_s, batch, on_commit,
                       trend_store, trend_save_s)  # fmt: skip
    finally:
        with contextlib.suppress(*TRANSIENT):
            await replies.unsubscribe()
    feeder.close()


async def _consume(
    broker: Broker,
    partition: int,
    feeder: ShardFeeder,
    halt: threading.Event,
    commit_interval_s: float,
    batch: int,
    on_commit: Callable[[int], None] | None,
    trend_store: TrendStore | None,
    trend_save_s: float,
) -> None:
    sub = None
    bound_at = -1  # broker.reconnects when the consumer was last (re)created
    delivered = 0  # the consumer sequence of the last delivery taken since binding
    last_msg = None
    last_commit = last_save = last_check = time.monotonic()
    saved_seq = -1
    short = -1  # ``delivered`` when the consumer last said it had delivered more
    while True:
        stopping = halt.is_set()
        msgs, idle = [], False
        try:
            # after a reconnect, messages the server counts as delivered may never have
            # arrived (they would come back only after ack_wait): restart at our position
            if sub is None or bound_at != broker.reconnects:
                if sub is not None:
                    with contextlib.suppress(*TRANSIENT):
                        await sub.unsubscribe()
                    sub = None
                bound_at = broker.reconnects
                sub = await _bind_consumer(broker, partition, feeder, ack_wait_s(commit_interval_s))
                delivered, last_msg, short = 0, None, -1
            msgs = await sub.fetch(batch, timeout=min(commit_interval_s, 0.5))
        except nats.errors.TimeoutError:
            idle = True
        except nats.js.errors.NotFoundError:
            sub = None  # the consumer is gone (a server lost its state): recreate it
            await asyncio.sleep(0.2)
        except TRANSIENT as exc:  # the server is away; the client reconnects by itself
            log.info("partition %d: %s; retrying", partition, type(exc).__name__)
            sub = None
            await asyncio.sleep(0.2)
        taken, gap = in_order(msgs, delivered)
        for m in taken:
            kind = (m.headers or {}).get(KIND_HEADER, POST)
            feeder.add(m.metadata.sequence.stream, kind, m.data)
        if taken:
            delivered, last_msg = taken[-1].metadata.sequence.consumer, taken[-1]
        feeder.count_pending()
        now = time.monotonic()
        if idle and sub is not None and not stopping and now - last_check >= commit_interval_s:
            last_check = now
            try:  # an idle partition: move its position along the stream
                upto = await caught_up_to(broker, partition, delivered)
            except TRANSIENT:
                upto = 0
            # a message of a pull that expired as it was sent may still be on its way:
            # only the same shortfall at two checks (a fetch between them) is a loss
            if upto is None:
                gap, short = short == delivered, delivered
            else:
                short = -1
                if upto:
                    feeder.advance(upto)
        if gap:  # a delivery never arrived: fetch again from the position
            log.warning("partition %d: a delivery was lost; re-fetching", partition)
            with contextlib.suppress(*TRANSIENT):
                await sub.unsubscribe()  # type: ignore[union-attr]
            sub = None
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
        if trend_store is not None and (stopping or now - last_save >= trend_save_s):
            last_save = now
            if feeder.trends_complete and feeder.counted_seq != saved_seq:
                assert feeder.trends is not None
                try:  # a failed save is retried; the counts in memory stay right
                    trend_store.save(feeder.trends, feeder.counted_seq)
                    saved_seq = feeder.counted_seq
                except OSError as exc:
                    log.warning("partition %d: trend counts not saved: %s", partition, exc)
        if stopping and not msgs:
            break


def _wait_for_stream(broker: Broker, halt: threading.Event, wait_s: float) -> StreamInfo:
    """The stream's state, waiting up to ``wait_s`` for ``serve --broker`` to create the
    stream (indexers may start first)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return broker.stream_info()
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
    trend_bucket_s: int = 60,
    trend_retention_s: int = 6 * 3600,
    trend_save_s: float = 5.0,
) -> OpenedIndex:
    """Open partition ``partition``'s shard under ``data_dir`` and index it from the broker at
    ``url`` until ``halt`` is set (waiting up to ``stream_wait_s`` for the broker and its
    stream to be there), counting its posts for trends and answering trend requests.
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
        info = _wait_for_stream(broker, halt, max(0.0, deadline - time.monotonic()))
        partitions = partitions_of(info)
        if not 0 <= partition < partitions:
            raise BrokerError(
                f"--partition {partition}: the stream has partitions 0..{partitions - 1}"
            )
        path = shard_dir(data_dir, partition)
        opened = open_shard(path)
        check_stream(opened.checkpoint, info, path)  # another stream: refused before writing
        trends = TrendCounter(trend_bucket_s, trend_retention_s)
        store = TrendStore(path / "trends")
        counted = load_trends(opened, trends, store)
        feeder = ShardFeeder(
            opened,
            heap_bytes=heap_mb * 1_000_000,
            stream_created_us=created_us(info),
            trends=trends,
            counted_seq=counted,
            path=path,
        )
        broker.run(
            consume(broker, partition, feeder, halt, commit_interval_s, on_commit=on_commit,
                    trend_store=store, trend_save_s=trend_save_s)
        )  # fmt: skip
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
    clauses, partial = clause_tiers(sq.q)
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
        want = max(limit, w.candidates)
        for tier in candidate_tiers(clauses, partial):  # as one index would (enough = summed)
            boosts = global_boosts(searchers, tier)
            per_shard = []
            for ix, searcher, b in zip(indexes, searchers, boosts, strict=True):
                query, _ = build_query(ix.schema, sq, tier, b)
                per_shard.append((searcher, searcher.search(query, want, count=False).hits))
            if sum(len(hits) for _s, hits in per_shard) >= want:
                break
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
    committed past (the smallest shard position, a lower bound of what is searchable; idle
    partitions follow the stream), and a view over the shards' indexes."""

    POLL_S = 0.005

    def __init__(self, shards: ShardSet):
        self.shards = shards
        self.index = ShardsView(shards)

    @property
    def searchable_seq(self) -> int:
        return min(self.shards.checkpoints(), default=0)

    def wait_searchable(self, seq: int, timeout: float = 10.0) -> bool:
        """Block until every shard covers stream sequence ``seq`` (or ``timeout`` seconds
        pass), as ``IndexerProcess.wait_searchable``: the shards' positions are read, not
        signalled, so they are polled."""
        deadline = time.monotonic() + timeout
        while not (ok := self.searchable_seq >= seq) and time.monotonic() < deadline:
            time.sleep(self.POLL_S)
        return ok
