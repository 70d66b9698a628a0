"""The real-time tantivy index and the feeder that tails the log into it.

One long-lived ``IndexWriter`` is owned by the ``IndexFeeder``, which runs in its own process
(``gigafactory.grok.memory.indexer``). It reads log events after the last indexed sequence number,
adds them to the writer and, at most every ``commit_interval_s``, commits, so a post becomes
searchable about one interval after it was acknowledged. The API process opens the same index
read-only and reloads its searcher after each commit.

The last indexed log sequence is stored *inside* each commit as a checkpoint document
(``kind=checkpoint``, one more at every commit; the newest, highest ``seq``, counts, and the
older ones are deleted together now and then, ``KEEP_CHECKPOINTS``): tantivy commits are
atomic, so the documents and the sequence they cover can never disagree. On open,
``open_index`` checks the index in constant time (readable, checkpoint present, as many post
documents as the checkpoint counted, and the log's event at the checkpoint's seq is the one
the index saw there); a missing, unreadable or inconsistent index is deleted (only if this
service created it) and rebuilt from the log, and a good one catches up from its
checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import tantivy

from gigafactory.errors import GigafactoryError
from gigafactory.grok.memory.analysis import TEXT_ANALYZER, index_document, text_analyzer
from gigafactory.grok.memory.log import KIND_POST, LogReader, Row, with_counts

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
POST = "post"
SCHEMA_VERSION = 4
"""2: multilingual text analyzer with positions; 3: checkpoints kept (by ``seq``), time and
engagement as fast columns only; 4: text in its index form under the ``simple`` tokenizer
(``analysis``)."""
MARKER = ".grok-index"
"""A file in every index folder this service created: the only folders it deletes."""
KEEP_CHECKPOINTS = 1000
"""Checkpoint documents an index holds before the feeder deletes the older ones (in one
commit, about every 100 s at 10 commits/s). Deleting the previous one at every commit
instead leaves a deleted document in every segment, and tantivy merges a segment with
deletes by decompressing and rewriting its stored documents instead of copying their
blocks: +2 µs of indexer CPU per post (+7 %), measured indexing 400,000 posts in commits of
4,000."""


def register_analyzers(index: tantivy.Index) -> tantivy.Index:
    """Register ``text_analyzer`` on ``index`` (tokenizers are not stored in the index, so
    every process opening it does this) and return it."""
    index.register_tokenizer(TEXT_ANALYZER, text_analyzer())
    return index


def build_schema() -> tantivy.Schema:
    """Fields of the index. ``text`` holds the index form of the post's text
    (``analysis.index_text``), analysed by ``text_analyzer`` with positions (phrase queries
    over characters of unspaced scripts); ids and names are raw terms; time and
    engagement are fast fields (columns, not terms) for filters and re-ranking."""
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("kind", stored=False, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("author", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("lang", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("text", stored=True, tokenizer_name=TEXT_ANALYZER, index_option="position")
    sb.add_text_field("reply_to", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("quote_of", stored=True, tokenizer_name="raw", index_option="basic")
    # range filters read the fast columns: indexing these too made one term per distinct
    # value (nearly one per post) for merges to rewrite, +1.7 µs of indexer CPU per post
    sb.add_integer_field("created_us", stored=True, indexed=False, fast=True)
    sb.add_integer_field("engagement", stored=True, indexed=False, fast=True)
    sb.add_integer_field("likes", stored=True)
    sb.add_integer_field("reposts", stored=True)
    sb.add_integer_field("replies", stored=True)
    # of the checkpoint document (see Checkpoint)
    sb.add_integer_field("seq", stored=True, indexed=True, fast=True)
    sb.add_integer_field("version", stored=True)
    sb.add_integer_field("posts", stored=True)
    sb.add_text_field("log_id", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_integer_field("log_us", stored=True)
    return sb.build()


class IndexCorrupt(Exception):
    """The on-disk index cannot be trusted; it will be rebuilt from the log."""


class IndexOutdated(IndexCorrupt):
    """The index is this service's (its checkpoint document says so) of another schema."""


@dataclass(frozen=True)
class Checkpoint:
    """What the last commit covers: log events up to ``seq`` (the event at ``seq`` has
    ``log_id`` and ``log_us``), ``posts`` post documents."""

    seq: int = 0
    posts: int = 0
    log_id: str = ""
    log_us: int = 0
    kept: int = 0
    """Checkpoint documents in the index (this one and older ones, ``KEEP_CHECKPOINTS``)."""


def _checkpoints(searcher: tantivy.Searcher, schema: tantivy.Schema) -> tantivy.SearchResult:
    """The newest checkpoint document (highest ``seq``), with the count of all of them."""
    query = tantivy.Query.term_query(schema, "kind", CHECKPOINT)
    return searcher.search(query, 1, count=True, order_by_field="seq")


def post_documents(index: tantivy.Index) -> int:
    """Post documents in the searcher of ``index`` as last reloaded (all documents less the
    checkpoint documents)."""
    searcher = index.searcher()
    return searcher.num_docs - (_checkpoints(searcher, index.schema).count or 0)


def checkpoint_of(index: tantivy.Index) -> Checkpoint:
    """The checkpoint of an opened index; raises IndexCorrupt."""
    index.reload()
    searcher = index.searcher()
    schema = index.schema
    found = _checkpoints(searcher, schema)
    hits, kept = found.hits, found.count or 0
    docs = searcher.num_docs
    if not hits:
        if docs:
            raise IndexCorrupt(f"{docs} documents but no checkpoint document")
        return Checkpoint()
    cp = searcher.doc(hits[0][1])
    if cp.get_first("version") != SCHEMA_VERSION:
        raise IndexOutdated(f"index schema version {cp.get_first('version')} != {SCHEMA_VERSION}")
    probe = searcher.search(tantivy.Query.term_query(schema, "kind", POST), 1).hits
    for _score, addr in probe:
        searcher.doc(addr)  # the doc store must decode
    got = Checkpoint(
        int(cp.get_first("seq")),
        int(cp.get_first("posts")),
        cp.get_first("log_id") or "",
        int(cp.get_first("log_us") or 0),
        kept,
    )
    if docs - kept != got.posts:
        raise IndexCorrupt(f"{docs - kept} post documents but the checkpoint says {got.posts}")
    return got


def _check_against_log(cp: Checkpoint, postlog: LogReader) -> None:
    """Raise IndexCorrupt unless the log holds, at the checkpoint's seq, the event the index
    saw there (a constant-time check, whatever the log's size: a log replaced by another,
    shorter or not, differs there)."""
    if cp.seq > postlog.last_seq:
        raise IndexCorrupt(f"index at seq {cp.seq} is ahead of the log ({postlog.last_seq})")
    if cp.seq == 0:
        return
    rec = postlog.record_at(cp.seq)
    if rec is None or (rec.post_id, rec.ingested_us) != (cp.log_id, cp.log_us):
        raise IndexCorrupt(f"the log's event {cp.seq} is not the one the index covered")


@dataclass(frozen=True)
class OpenedIndex:
    """An opened (and if needed rebuilt) index and how it was found."""

    index: tantivy.Index
    checkpoint: Checkpoint
    rebuilt: str | None

    @property
    def checkpoint_seq(self) -> int:
        return self.checkpoint.seq


class ForeignIndexFolder(GigafactoryError):
    """The index folder holds files this service did not create; it is never deleted."""


def _create(path: Path, schema: tantivy.Schema) -> tantivy.Index:
    """A new, empty index at ``path``, marked as ours (``MARKER``) before anything else."""
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("created by gigafactory grok; deleted and rebuilt when unusable\n")
    return register_analyzers(tantivy.Index(schema, str(path), reuse=False))


def open_index(path: Path, postlog: LogReader | None) -> OpenedIndex:
    """Open the index at ``path``, or create/rebuild it when it is missing, unreadable or
    inconsistent with ``postlog`` (the reason is returned in ``rebuilt``). Without a
    ``postlog`` (a shard fed from the broker, ``shards.open_shard``) only the index itself is
    checked, and a rebuilt one starts from checkpoint 0 of its source.

    Only a folder this service created (it holds ``MARKER``) is ever deleted: a non-empty
    folder without the marker is adopted if it is a consistent index of this schema (and
    marked), else ``ForeignIndexFolder`` is raised and nothing is touched."""
    path = Path(path)
    schema = build_schema()
    reason = None
    if path.exists() and any(path.iterdir()):
        ours = (path / MARKER).exists()
        try:
            if not ours and not (path / "meta.json").exists():  # opening would create one
                raise IndexCorrupt("no tantivy index (meta.json) in it")
            index = register_analyzers(tantivy.Index(schema, str(path), reuse=True))
            cp = checkpoint_of(index)
            if postlog is not None:
                _check_against_log(cp, postlog)
            if not ours:
                (path / MARKER).write_text("adopted by gigafactory grok: a consistent index\n")
            return OpenedIndex(index, cp, None)
        except (Exception, BaseException) as exc:  # tantivy panics surface as BaseException
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            reason = f"{type(exc).__name__}: {exc}"
            if not ours and not isinstance(exc, IndexOutdated):
                raise ForeignIndexFolder(
                    f"{path} is not empty and was not created by this service (no {MARKER}) "
                    f"and is not a usable index ({reason}); move it away or choose another "
                    "--data-dir: it is never deleted"
                ) from None
            log.warning("index at %s is unusable (%s); rebuilding it from the log", path, reason)
            shutil.rmtree(path, ignore_errors=True)
    elif postlog is not None and postlog.last_seq:
        reason = "index missing"
        log.warning("no index at %s; rebuilding it from the log", path)
    return OpenedIndex(_create(path, schema), Checkpoint(), reason)


def take_writer(
    index: tantivy.Index, heap_bytes: int, threads: int, wait_s: float = 15.0
) -> tantivy.IndexWriter:
    """The index's one ``IndexWriter``. Its lock file may still be held for a moment by a
    writer process that is dying (its parent was killed), so a busy lock is retried for up to
    ``wait_s`` seconds before giving up."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return index.writer(heap_bytes, threads)
        except ValueError as exc:
            if "LockBusy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class IndexFeeder:
    """The one writer: tails ``postlog`` into ``index``, committing at most every
    ``commit_interval_s`` with the covered log sequence in the commit (checkpoint document).
    It runs in the indexer process (``gigafactory.grok.memory.indexer``); the trend counts
    are kept by a process of their own (``trends.TrendFeeder``), so this loop only makes
    posts searchable."""

    def __init__(
        self,
        opened: OpenedIndex,
        postlog: LogReader,
        commit_interval_s: float = 0.1,
        batch: int = 20_000,
        heap_bytes: int = 256_000_000,
        threads: int = 1,
        poll_s: float = 0.005,
    ):
        self.index = opened.index
        self.postlog = postlog
        self.commit_interval_s = commit_interval_s
        self.batch = batch
        self.poll_s = poll_s
        self.writer: tantivy.IndexWriter | None = take_writer(self.index, heap_bytes, threads)
        self.indexed_seq = opened.checkpoint_seq
        self.searchable_seq = opened.checkpoint_seq
        self.posts = opened.checkpoint.posts  # post documents added so far
        self.last = (opened.checkpoint.log_id, opened.checkpoint.log_us)  # event at indexed_seq
        self.checkpoints = opened.checkpoint.kept  # checkpoint documents in the index
        self.commits = 0

    def _apply(self, records: list[Row]) -> None:
        """Add the events ``records`` (``LogReader.rows_after``) to the writer."""
        updates = [r for r in records if r[1] != KIND_POST]
        bodies: dict[str, str] = {}
        if updates:
            in_batch = {pid: body for _s, kind, pid, body, _at in records if kind == KIND_POST}
            missing = [r[2] for r in updates if r[2] not in in_batch]
            bodies = self.postlog.post_bodies(missing) if missing else {}
            bodies.update(in_batch)
        w = self.writer
        assert w is not None
        posts = 0
        for _seq, kind, pid, body, _at in records:
            if kind == KIND_POST:
                w.add_json(index_document(body))
                posts += 1
            else:
                post = bodies.get(pid)
                if post is None:  # cannot happen: the log refuses updates of unknown posts
                    log.error("engagement update for unknown post %s skipped", pid)
                    continue
                w.delete_documents_by_term("id", pid)
                w.add_json(index_document(with_counts(post, body)))
        self.posts += posts
        last = records[-1]
        self.last = (last[2], last[4])

    def _commit(self) -> None:
        w = self.writer
        assert w is not None
        if self.checkpoints >= KEEP_CHECKPOINTS or self.indexed_seq <= self.searchable_seq:
            # enough kept, or a position that does not advance (a shard rewound to a shorter
            # stream): the new one must be the only one with the highest seq
            w.delete_documents_by_term("kind", CHECKPOINT)  # the new one comes after: kept
            self.checkpoints = 0
        w.add_json(
            orjson.dumps(
                {
                    "kind": CHECKPOINT,
                    "id": "~checkpoint",
                    "seq": self.indexed_seq,
                    "version": SCHEMA_VERSION,
                    "posts": self.posts,
                    "log_id": self.last[0],
                    "log_us": self.last[1],
                }
            ).decode()
        )
        w.commit()
        self.checkpoints += 1
        self.commits += 1
        self.searchable_seq = self.indexed_seq

    def run(self, halt: threading.Event, on_commit: Callable[[int], None]) -> None:
        """Tail the log until ``halt`` is set, then index what is left, commit and release
        the writer. ``on_commit(seq)`` is called after every commit."""
        last_commit = time.monotonic()
        while True:
            stopping = halt.is_set()
            records = self.postlog.rows_after(self.indexed_seq, self.batch)
            if records:
                self._apply(records)
                self.indexed_seq = records[-1][0]
            dirty = self.indexed_seq > self.searchable_seq
            now = time.monotonic()
            if dirty and (now - last_commit >= self.commit_interval_s or stopping):
                self._commit()
                on_commit(self.searchable_seq)
                last_commit = now
                continue
            if stopping and not records:
                break
            if len(records) == self.batch:
                continue
            wait = self.poll_s
            if dirty:
                wait = min(wait, max(0.0, self.commit_interval_s - (now - last_commit)))
            halt.wait(wait)
        self.close()

    def close(self) -> None:
        """Finish merges and release the index lock."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.wait_merging_threads()
