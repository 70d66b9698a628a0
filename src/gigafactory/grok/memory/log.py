"""The durable post log: SQLite in WAL mode, one sequence number for every event.

Every accepted post and engagement update is one row of ``log`` with a sequence number
(``seq``) that only grows; the indexer tails the log by ``seq``. A batch is acknowledged only
after its transaction has committed.

Durability: ``synchronous=FULL`` (the default) makes SQLite fsync the WAL at every commit, so
an acknowledged batch survives a process kill *and* a power loss. ``NORMAL`` skips that fsync
(WAL commits then survive a process crash but the last ones may roll back on power loss); it
is offered for machines whose fsync is slow, at the price of that weaker promise.

Group commit: batches appended while a commit is in flight share the next transaction (one
fsync for all of them), so many clients sending one post per request cost one fsync per
round, not one per post; each is still answered only after its own data has committed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from gigafactory.errors import GigafactoryError
from gigafactory.grok.memory.post import EngagementUpdate, Post

KIND_POST = 1
KIND_ENGAGEMENT = 2
SYNC_MODES = ("FULL", "NORMAL", "EXTRA")
_CHUNK = 900  # ids per IN (...) lookup, under SQLite's host-parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log(
    seq INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    post_id TEXT NOT NULL,
    body TEXT NOT NULL,
    ingested_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS posts(id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
"""


def post_document(
    pid: str,
    author: str,
    text: str,
    created_at: datetime,
    lang: str = "und",
    likes: int = 0,
    reposts: int = 0,
    replies: int = 0,
    reply_to: str | None = None,
    quote_of: str | None = None,
) -> str:
    """The logged JSON of a post: its fields (``None`` ones left out) plus what the index
    derives from them -- ``kind``, ``created_us`` (µs since the epoch) and ``engagement``
    (likes + reposts + replies) -- so the indexer can hand it to tantivy unparsed (its text
    rewritten in place into the index form, ``analysis.index_document``).
    ``created_at`` must be aware (UTC)."""
    d: dict[str, Any] = {
        "kind": "post",
        "id": pid,
        "author": author,
        "text": text,
        "created_at": created_at,
        "lang": lang,
        "likes": likes,
        "reposts": reposts,
        "replies": replies,
        "created_us": created_us(created_at),
        "engagement": likes + reposts + replies,
    }
    if reply_to is not None:
        d["reply_to"] = reply_to
    if quote_of is not None:
        d["quote_of"] = quote_of
    return orjson.dumps(d).decode()


def created_us(t: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (as the index stores
    time: ``int(timestamp * 1e6)``, truncated)."""
    return int(t.timestamp() * 1_000_000)


def post_body(post: Post) -> str:
    """``post_document`` of a validated ``Post``."""
    return post_document(
        post.id,
        post.author,
        post.text,
        post.created_at,
        post.lang,
        post.likes,
        post.reposts,
        post.replies,
        post.reply_to,
        post.quote_of,
    )


def with_counts(body: str, update: str) -> str:
    """A logged post body with the counts of a logged engagement update applied."""
    d = orjson.loads(body)
    u = orjson.loads(update)
    for k in ("likes", "reposts", "replies"):
        d[k] = u.get(k, 0)
    d["engagement"] = d["likes"] + d["reposts"] + d["replies"]
    return orjson.dumps(d).decode()


class LogError(GigafactoryError):
    """The post log cannot be opened or used."""


class Record(NamedTuple):
    """One event of the log (a named tuple: the indexer reads tens of thousands a second)."""

    seq: int
    kind: int
    post_id: str
    body: str
    ingested_us: int


Row = tuple[int, int, str, str, int]
"""A log event as a plain tuple: ``Record``'s fields in order (``LogReader.rows_after``)."""


@dataclass(frozen=True)
class AppendResult:
    """What a batch append did: the positions (in the input) accepted and refused."""

    accepted: list[int]
    refused: dict[int, str]
    last_seq: int


class _Pending:
    """A batch waiting for its group commit; ``future`` gets its result (or the error)."""

    __slots__ = ("bodies", "future", "ids", "kind")

    def __init__(self, kind: int, ids: Sequence[str], bodies: Sequence[str]):
        self.kind, self.ids, self.bodies = kind, ids, bodies
        self.future: Future[AppendResult] = Future()


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.execute("PRAGMA busy_timeout=30000")
    return con


class LogReader:
    """Read access to the log at ``path``: one connection per thread (WAL readers never block
    the writer, nor each other). The indexer process tails the log through one of these."""

    def __init__(self, path: Path, synchronous: str = "FULL"):
        self.path = Path(path)
        self.synchronous = synchronous
        self._local = threading.local()

    def _reader(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = _connect(self.path, self.synchronous)
            except sqlite3.Error as exc:
                raise LogError(f"cannot read the post log {self.path}: {exc}") from exc
            self._local.con = con
        return con

    @property
    def last_seq(self) -> int:
        """Sequence number of the last committed event (0 for an empty log)."""
        return self._reader().execute("SELECT coalesce(max(seq), 0) FROM log").fetchone()[0]

    def read_after(self, seq: int, limit: int = 5000) -> list[Record]:
        """Up to ``limit`` events with sequence numbers above ``seq``, in order."""
        return list(map(Record._make, self.rows_after(seq, limit)))

    def rows_after(self, seq: int, limit: int = 5000) -> list[Row]:
        """``read_after`` as plain tuples (``Record``'s fields, in order): the indexer and
        the trend process read tens of thousands of events a second, and making each a
        named tuple cost them more than fetching it."""
        return (
            self._reader()
            .execute(
                "SELECT seq, kind, post_id, body, ingested_us FROM log WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            .fetchall()
        )

    def texts_after(self, seq: int, limit: int = 5000) -> tuple[int, int, list[tuple[int, str]]]:
        """What trend counting reads of the next ``limit`` events after ``seq``: the seq of
        the last of them (``seq`` when there are none), how many there are, and
        ``(created_us, text)`` of the posts among them, taken out of the logged JSON by
        SQLite (``json_extract``: a third less time than fetching each body and parsing it
        in Python)."""
        rows = (
            self._reader()
            .execute(
                "SELECT seq, kind, json_extract(body, '$.created_us'), "
                "json_extract(body, '$.text') FROM log WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            .fetchall()
        )
        if not rows:
            return seq, 0, []
        return rows[-1][0], len(rows), [(r[2], r[3]) for r in rows if r[1] == KIND_POST]

    def iter_back(self, upto_seq: int, since_us: int, batch: int = 5000) -> Iterator[Record]:
        """Events with ``seq <= upto_seq`` ingested at or after ``since_us``, newest first
        (a scan from the tail that stops at the first older event)."""
        top = upto_seq
        con = self._reader()
        while top > 0:
            rows = con.execute(
                "SELECT seq, kind, post_id, body, ingested_us FROM log WHERE seq <= ? "
                "ORDER BY seq DESC LIMIT ?",
                (top, batch),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                if row[4] < since_us:
                    return
                yield Record(*row)
            top = rows[-1][0] - 1

    def record_at(self, seq: int) -> Record | None:
        """The event with sequence number ``seq``, if any."""
        row = (
            self._reader()
            .execute("SELECT seq, kind, post_id, body, ingested_us FROM log WHERE seq = ?", (seq,))
            .fetchone()
        )
        return None if row is None else Record(*row)

    def first_seq_since(self, since_us: int) -> int:
        """The first sequence number ingested at or after ``since_us`` (``last_seq + 1``
        when none): a binary search over ``seq``, along which ingestion times only grow."""
        con = self._reader()
        lo, hi = 1, self.last_seq + 1  # the answer is in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            row = con.execute(
                "SELECT ingested_us FROM log WHERE seq >= ? ORDER BY seq LIMIT 1", (mid,)
            ).fetchone()
            if row is not None and row[0] >= since_us:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def post_bodies(self, ids: Sequence[str]) -> dict[str, str]:
        """The logged body of each post in ``ids`` that exists."""
        out: dict[str, str] = {}
        con = self._reader()
        for i in range(0, len(ids), _CHUNK):
            chunk = list(ids[i : i + _CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = con.execute(
                f"SELECT p.id, l.body FROM posts p JOIN log l ON l.seq = p.seq "
                f"WHERE p.id IN ({marks})",
                chunk,
            )
            out.update(rows)
        return out

    def count_posts(self, upto_seq: int | None = None) -> int:
        """Number of posts with ``seq <= upto_seq`` (all posts when None)."""
        con = self._reader()
        if upto_seq is None:
            return con.execute("SELECT count(*) FROM posts").fetchone()[0]
        return con.execute(
            "SELECT count(*) FROM log WHERE seq <= ? AND kind = ?", (upto_seq, KIND_POST)
        ).fetchone()[0]


class PostLog(LogReader):
    """The log in ``data_dir/log.sqlite3``: ``LogReader`` plus appends, serialised by one lock
    on one writer connection."""

    def __init__(self, path: Path, synchronous: str = "FULL"):
        synchronous = synchronous.upper()
        if synchronous not in SYNC_MODES:
            raise LogError(f"synchronous={synchronous!r}: use one of {', '.join(SYNC_MODES)}")
        super().__init__(path, synchronous)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._w = _connect(self.path, synchronous)
            self._w.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise LogError(
                f"cannot open the post log {self.path}: {exc}; "
                "check the data dir is writable and not a corrupt file"
            ) from exc
        self._lock = threading.Lock()  # the writer connection
        self._turn = threading.Condition()  # the group-commit queue
        self._queue: list[_Pending] = []
        self._closing = False
        self._committer = threading.Thread(
            target=self._commit_loop, name="grok-log-commit", daemon=True
        )
        self._committer.start()
        self.commits = 0  # transactions committed by ``append``
        self._last_seq = self._w.execute("SELECT coalesce(max(seq), 0) FROM log").fetchone()[0]

    @property
    def last_seq(self) -> int:
        """Sequence number of the last committed event (0 for an empty log)."""
        return self._last_seq

    def _existing(self, con: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), _CHUNK):
            chunk = list(ids[i : i + _CHUNK])
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0] for r in con.execute(f"SELECT id FROM posts WHERE id IN ({marks})", chunk)
            )
        return found

    # -- writing ---------------------------------------------------------------------------
    def append(self, kind: int, ids: Sequence[str], bodies: Sequence[str]) -> AppendResult:
        """Append events of one ``kind`` (already serialised ``bodies``): a post whose id is
        already logged or repeated in the batch is refused as a duplicate, an engagement
        update of an unlogged post as unknown. Returns once the transaction holding the batch
        has committed (durable per ``synchronous``). See ``submit``."""
        return self.submit(kind, ids, bodies).result()

    def submit(self, kind: int, ids: Sequence[str], bodies: Sequence[str]) -> Future[AppendResult]:
        """``append`` without waiting: the future is done once the batch has committed.

        Group commit: one committer thread takes every batch queued while it was committing
        and commits them in one transaction (one fsync), each batch in its own savepoint so
        that the verdicts are those of appending them one by one in arrival order. A failing
        commit fails every batch of its group. Callers may be threads or, through
        ``asyncio.wrap_future``, an event loop (no thread waits per request)."""
        req = _Pending(kind, ids, bodies)
        with self._turn:
            if self._closing:
                raise LogError("the post log is closed")
            self._queue.append(req)
            self._turn.notify()
        return req.future

    def _commit_loop(self) -> None:
        """The committer thread: commit what is queued, as one group, until closed."""
        while True:
            with self._turn:
                while not self._queue and not self._closing:
                    self._turn.wait()
                if not self._queue:
                    return  # closing, and everything queued is committed
                group, self._queue = self._queue, []
            self._commit_group(group)

    def _commit_group(self, group: list[_Pending]) -> None:
        """One transaction for the batches of ``group``; sets each one's result or error."""
        con = self._w
        seq0 = self._last_seq
        now_us = time.time_ns() // 1000
        try:
            with self._lock:
                con.execute("BEGIN IMMEDIATE")
                try:
                    results = [self._append_one(r, now_us) for r in group]
                    con.execute("COMMIT")
                    self.commits += 1
                except BaseException:
                    con.execute("ROLLBACK")
                    self._last_seq = seq0
                    raise
        except BaseException as exc:
            for r in group:
                r.future.set_exception(exc)
            return
        for r, res in zip(group, results, strict=True):
            r.future.set_result(res)

    def _append_one(self, req: _Pending, now_us: int) -> AppendResult:
        """Insert one batch inside the open transaction, in a savepoint: optimistically all
        of it, else the accepted items after checking ids against the log."""
        con, kind, ids, bodies = self._w, req.kind, req.ids, req.bodies
        if kind == KIND_POST:  # optimistic: a batch of new, distinct ids in one go
            con.execute("SAVEPOINT batch")
            try:
                done = self._insert(kind, ids, bodies, range(len(ids)), now_us)
                con.execute("RELEASE batch")
                return AppendResult(done, {}, self._last_seq)
            except sqlite3.IntegrityError:
                con.execute("ROLLBACK TO batch")
                con.execute("RELEASE batch")
        existing = self._existing(con, ids)
        refused: dict[int, str] = {}
        accepted: list[int] = []
        seen: set[str] = set()
        for i, pid in enumerate(ids):
            if kind != KIND_POST:
                if pid in existing:
                    accepted.append(i)
                else:
                    refused[i] = "unknown: no post with this id is in the log"
            elif pid in existing:
                refused[i] = "duplicate: a post with this id is already in the log"
            elif pid in seen:
                refused[i] = "duplicate: this id appears earlier in the batch"
            else:
                seen.add(pid)
                accepted.append(i)
        self._insert(kind, ids, bodies, accepted, now_us)
        return AppendResult(accepted, refused, self._last_seq)

    def _insert(
        self,
        kind: int,
        ids: Sequence[str],
        bodies: Sequence[str],
        accepted: Sequence[int],
        now_us: int,
    ) -> list[int]:
        """Insert the ``accepted`` events (inside the caller's transaction) and advance
        ``last_seq``; a duplicate post id raises ``sqlite3.IntegrityError`` with nothing
        advanced."""
        con = self._w
        seq0 = self._last_seq
        rows = [(seq0 + n + 1, kind, ids[i], bodies[i], now_us) for n, i in enumerate(accepted)]
        con.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", rows)
        if kind == KIND_POST:
            con.executemany("INSERT INTO posts VALUES (?, ?)", [(r[2], r[0]) for r in rows])
        self._last_seq = seq0 + len(rows)
        return list(accepted)

    def append_posts(self, posts: Sequence[Post]) -> AppendResult:
        """Append new posts in one transaction (see ``append``)."""
        return self.append(KIND_POST, [p.id for p in posts], [post_body(p) for p in posts])

    def append_updates(self, updates: Sequence[EngagementUpdate]) -> AppendResult:
        """Append engagement updates in one transaction (see ``append``)."""
        return self.append(
            KIND_ENGAGEMENT, [u.id for u in updates], [u.model_dump_json() for u in updates]
        )

    def close(self) -> None:
        """Commit what is queued, stop the committer and close the writer connection
        (readers close with their threads). Idempotent."""
        with self._turn:
            self._closing = True
            self._turn.notify()
        if self._committer is not threading.current_thread():
            self._committer.join()
        with self._lock:
            self._w.close()
