"""The durable post log: SQLite in WAL mode, one sequence number for every event.

Every accepted post and engagement update is one row of ``log`` with a sequence number
(``seq``) that only grows; the indexer tails the log by ``seq``. A batch is acknowledged only
after its transaction has committed.

Durability: ``synchronous=FULL`` (the default) makes SQLite fsync the WAL at every commit, so
an acknowledged batch survives a process kill *and* a power loss. ``NORMAL`` skips that fsync
(WAL commits then survive a process crash but the last ones may roll back on power loss); it
is offered for machines whose fsync is slow, at the price of that weaker promise. One fsync
per batch is cheap when batches hold hundreds of posts.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
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
    (likes + reposts + replies) -- so the indexer can hand it to tantivy unparsed.
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


@dataclass(frozen=True)
class AppendResult:
    """What a batch append did: the positions (in the input) accepted and refused."""

    accepted: list[int]
    refused: dict[int, str]
    last_seq: int


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
        rows = self._reader().execute(
            "SELECT seq, kind, post_id, body, ingested_us FROM log WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return list(map(Record._make, rows))

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
        self._lock = threading.Lock()
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
        """Append events of one ``kind`` (already serialised ``bodies``) in one transaction:
        a post whose id is already logged or repeated in the batch is refused as a
        duplicate, an engagement update of an unlogged post as unknown. Returns once the
        transaction has committed (durable per ``synchronous``)."""
        now_us = time.time_ns() // 1000
        with self._lock:
            if kind == KIND_POST:  # optimistic: a batch of new, distinct ids in one go
                done = self._write(kind, ids, bodies, list(range(len(ids))), now_us, True)
                if done is not None:
                    return AppendResult(done, {}, self._last_seq)
            existing = self._existing(self._w, ids)
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
            self._write(kind, ids, bodies, accepted, now_us, False)
            return AppendResult(accepted, refused, self._last_seq)

    def _write(
        self,
        kind: int,
        ids: Sequence[str],
        bodies: Sequence[str],
        accepted: list[int],
        now_us: int,
        optimistic: bool,
    ) -> list[int] | None:
        """Insert the ``accepted`` events in one transaction (caller holds the lock). With
        ``optimistic``, a duplicate post id rolls the transaction back and returns None."""
        con = self._w
        seq0 = self._last_seq
        rows = [(seq0 + n + 1, kind, ids[i], bodies[i], now_us) for n, i in enumerate(accepted)]
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", rows)
            if kind == KIND_POST:
                con.executemany("INSERT INTO posts VALUES (?, ?)", [(r[2], r[0]) for r in rows])
            con.execute("COMMIT")
        except sqlite3.IntegrityError:
            con.execute("ROLLBACK")
            if optimistic:
                return None
            raise
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._last_seq = seq0 + len(rows)
        return accepted

    def append_posts(self, posts: Sequence[Post]) -> AppendResult:
        """Append new posts in one transaction (see ``append``)."""
        return self.append(KIND_POST, [p.id for p in posts], [post_body(p) for p in posts])

    def append_updates(self, updates: Sequence[EngagementUpdate]) -> AppendResult:
        """Append engagement updates in one transaction (see ``append``)."""
        return self.append(
            KIND_ENGAGEMENT, [u.id for u in updates], [u.model_dump_json() for u in updates]
        )

    def close(self) -> None:
        """Close the writer connection (readers close with their threads)."""
        with self._lock:
            self._w.close()
