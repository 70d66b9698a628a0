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
import threading
import time
from collections.abc import Callable
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
    checkpoint_of,
    open_index,
    register_analyzers,
)
from gigafactory.grok.memory.log import with_counts

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
        ack_wait=60.0,
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
    last_msg = None
    last_commit = time.monotonic()
    while True:
        stopping = halt.is_set()
        msgs = []
        try:
            if sub is None:
                sub = await _bind_consumer(broker, partition, feeder.indexed_seq + 1)
            msgs = await sub.fetch(batch, timeout=min(commit_interval_s, 0.5))
        except nats.errors.TimeoutError:
            pass
        except nats.js.errors.NotFoundError:
            sub = None  # the consumer is gone (a server lost its state): recreate it
            await asyncio.sleep(0.2)
        except TRANSIENT as exc:  # the server is away; the client reconnects by itself
            log.info("partition %d: %s; retrying", partition, type(exc).__name__)
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
                out.append(checkpoint_of(ix)[0] if ix is not None else 0)
            except IndexCorrupt:
                out.append(0)
        return out
