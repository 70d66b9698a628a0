"""The indexer and trend processes: the tantivy writer, and the trend counter, each in a
process of its own, and their supervisor.

The API process parses, validates and logs posts; the indexer process tails the SQLite log
by sequence number (WAL readers never block the writer), feeds tantivy and commits every
``commit_interval_s`` with the log position inside the commit (``index.IndexFeeder``). Each
process has its own GIL, so indexing no longer competes with ingest for one core.

The two talk over one socket pair (pickled messages of ``multiprocessing.connection``):

    child -> parent  ("ready", checkpoint_seq, rebuilt, pid)   index opened (caught up later)
                     ("commit", seq)                           events up to seq searchable
                     ("counted", seq)                          trends count events to seq
                     ("trends", id, trends or error text)      answer to a trend query
                     ("error", text)                           just before it exits on error
    parent -> child  ("trends", id, args)                      a trend query (TrendFeeder)
                     ("stop",)                                 index the rest, commit, exit

The same entry point with ``--role trends`` is the trend process (``trends.TrendFeeder``):
it tails the log on its own and keeps the trend counts (``trends.TrendCounter``), in log
order, so they match a log position exactly and are saved with it (``trends.TrendStore``); a
restart loads them and counts only the log after that position. It runs at a lower CPU
priority (``TREND_NICE``): counting every post's terms costs about as much Python time as
feeding tantivy, and on a saturated machine it then takes what the indexer leaves, so trends
fall seconds behind rather than posts becoming searchable later.

The child dies with its parent: on Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the kernel
kill it when the supervisor thread that started it goes away (also under SIGKILL of the
whole server), and everywhere a watcher thread exits the child when the socket reaches EOF.
So a killed server leaves no orphan writer holding the index lock; a new writer still retries
a busy lock for a while (``index.take_writer``). If the child dies alone, the supervisor
reports it (``/healthz`` turns ``degraded``) and starts a new one, which catches up from the
last commit's checkpoint.

Run by hand: ``python -m gigafactory.grok.memory.indexer --data-dir D --fd N --parent-pid P``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import tantivy

from gigafactory.errors import GigafactoryError
from gigafactory.grok.memory.index import IndexFeeder, open_index, register_analyzers
from gigafactory.grok.memory.log import LogReader
from gigafactory.grok.memory.trends import Trend, TrendCounter, TrendFeeder, TrendStore

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
RESTART_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Waits before restarting an indexer process that died, by consecutive failure."""
TREND_NICE = 10
"""How much the trend process lowers its CPU priority (``os.nice``) below the indexer's."""
ROLES = {"index": "indexer", "trends": "trend"}
"""What a child process does (``--role``), and its name in messages."""


class IndexerError(GigafactoryError):
    """The indexer process could not be started."""


class TrendsUnavailable(GigafactoryError):
    """The indexer process cannot answer a trend query now (HTTP 503)."""


class _Answer:
    """A trend query waiting for the indexer process's answer."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None


# -- the child -------------------------------------------------------------------------------
def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent (thread) dies; exit at once if
    the parent is already gone (the race between fork and prctl)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(3)


def _watch_parent(conn: Connection, halt: threading.Event, queries: queue.SimpleQueue) -> None:
    """Queue trend queries for the feeder; set ``halt`` on ``("stop",)``; end the process
    when the parent's end closes."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            os._exit(4)  # the parent is gone: the log has everything, nothing to save
        if msg and msg[0] == "trends":
            queries.put((msg[1], msg[2]))
        elif msg and msg[0] == "stop":
            halt.set()


def child_main(argv: list[str] | None = None) -> int:
    """Entry point of the indexer process (``--role index``) and of the trend process
    (``--role trends``)."""
    ap = argparse.ArgumentParser(prog="python -m gigafactory.grok.memory.indexer")
    ap.add_argument("--role", choices=sorted(ROLES), default="index")
    ap.add_argument("--nice", type=int, default=0, help="lower the CPU priority by this much")
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--fd", type=int, required=True, help="socket to the parent")
    ap.add_argument("--parent-pid", type=int, required=True)
    ap.add_argument("--synchronous", default="FULL")
    ap.add_argument("--commit-interval", type=float, default=0.1)
    ap.add_argument("--heap-mb", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trend-bucket-s", type=int, default=60)
    ap.add_argument("--trend-retention-s", type=int, default=6 * 3600)
    ap.add_argument("--trend-save-s", type=float, default=5.0)
    args = ap.parse_args(argv)
    _die_with_parent(args.parent_pid)
    if args.nice > 0:
        os.nice(args.nice)
    # Ctrl-C in a terminal signals the whole process group: the parent stops this process
    # with ("stop",) after its own shutdown, so the child must not die (and be mourned) first
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name = ROLES[args.role]
    logging.basicConfig(level="WARNING", format=f"%(asctime)s {name} %(levelname)s %(message)s")
    conn = Connection(args.fd)
    halt = threading.Event()
    queries: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_watch_parent, args=(conn, halt, queries), daemon=True).start()
    send_lock = threading.Lock()

    def send(*msg: Any) -> None:
        with send_lock:
            conn.send(msg)

    try:
        reader = LogReader(args.data_dir / "log.sqlite3", args.synchronous)
        if args.role == "trends":
            counter = TrendFeeder(
                reader,
                TrendCounter(args.trend_bucket_s, args.trend_retention_s),
                TrendStore(args.data_dir / "trends"),
                args.trend_save_s,
            )
            counter.queries = queries
            gc.freeze()  # start-up's objects stay: full collections walk what the loop makes
            send("ready", 0, None, os.getpid())
            counter.run(
                halt, lambda rid, res: send("trends", rid, res), lambda seq: send("counted", seq)
            )
            return 0
        opened = open_index(args.data_dir / "index", reader)
        feeder = IndexFeeder(
            opened,
            reader,
            args.commit_interval,
            heap_bytes=args.heap_mb * 1_000_000,
            threads=args.threads,
        )
        gc.freeze()
        send("ready", opened.checkpoint_seq, opened.rebuilt, os.getpid())
        feeder.run(halt, lambda seq: send("commit", seq))
    except BaseException as exc:
        log.exception("%s failed", name)
        with contextlib.suppress(OSError):
            send("error", f"{type(exc).__name__}: {exc}")
        return 1
    return 0


# -- the parent ------------------------------------------------------------------------------
class IndexerProcess:
    """Starts and supervises the indexer process, and holds the API process's read-only view
    of the index (reloaded after each of the child's commits).

    ``searchable_seq`` is the log position the searcher currently covers; ``wait_searchable``
    blocks until it reaches a position. The constructor returns once the child has opened
    (or rebuilt) the index; ``stop`` has it index the rest, commit and exit.

    With ``role="trends"`` it supervises the trend process instead (at ``nice``): no index,
    ``counted_seq`` is how far the trend counts reach, ``trends`` asks them."""

    def __init__(
        self,
        data_dir: Path,
        synchronous: str = "FULL",
        commit_interval_s: float = 0.1,
        heap_mb: int = 256,
        threads: int = 1,
        start_timeout_s: float = 600.0,
        trend_bucket_s: int = 60,
        trend_retention_s: int = 6 * 3600,
        trend_save_s: float = 5.0,
        role: str = "index",
        nice: int = 0,
    ):
        if role not in ROLES:
            raise ValueError(f"role {role!r}: one of {', '.join(sorted(ROLES))}")
        self.role, self.name = role, ROLES[role]
        self.data_dir = Path(data_dir)
        self.args = [
            "--role",
            role,
            "--nice",
            str(nice),
            "--data-dir",
            str(self.data_dir),
            "--synchronous",
            synchronous,
            "--commit-interval",
            repr(commit_interval_s),
            "--heap-mb",
            str(heap_mb),
            "--threads",
            str(threads),
            "--trend-bucket-s",
            str(trend_bucket_s),
            "--trend-retention-s",
            str(trend_retention_s),
            "--trend-save-s",
            repr(trend_save_s),
        ]
        self._ids = itertools.count(1)
        self._asked: dict[int, _Answer] = {}
        self._send_lock = threading.Lock()
        self.index: tantivy.Index | None = None
        self.searchable_seq = 0
        self.counted_seq = 0
        self.commits = 0
        self.restarts = 0
        self.rebuilt: str | None = None
        self.start_seq = 0
        self.error: str | None = None
        self.pid: int | None = None
        self.ready = False
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._halt = threading.Event()
        self._started = threading.Event()
        self._visible = threading.Condition()
        # the supervisor thread starts the child, so PR_SET_PDEATHSIG follows its lifetime
        self._thread = threading.Thread(target=self._supervise, name=f"grok-{role}", daemon=True)
        self._thread.start()
        if not self._started.wait(start_timeout_s) or self.pid is None:
            self.stop()
            raise IndexerError(
                f"the {self.name} process did not start ({self.error or 'timed out'}); "
                f"see its log above and check {self.data_dir} is writable"
            )

    # -- supervision ---------------------------------------------------------------------
    def _spawn(self) -> tuple[subprocess.Popen, Connection]:
        parent_sock, child_sock = socket.socketpair()
        fd = child_sock.fileno()
        cmd = [sys.executable, "-m", "gigafactory.grok.memory.indexer", "--fd", str(fd)]
        cmd += ["--parent-pid", str(os.getpid()), *self.args]
        try:
            proc = subprocess.Popen(cmd, pass_fds=(fd,), stdin=subprocess.DEVNULL)
        finally:
            child_sock.close()
        return proc, Connection(parent_sock.detach())

    def _supervise(self) -> None:
        failures = 0
        while not self._halt.is_set():
            proc, conn = self._spawn()
            self._proc, self._conn = proc, conn
            child_error = None
            try:
                while True:
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        break
                    if msg[0] == "commit":
                        self._on_commit(msg[1])
                        failures = 0
                    elif msg[0] == "counted":
                        self.counted_seq = msg[1]
                        failures = 0
                    elif msg[0] == "ready":
                        self._on_ready(msg[1], msg[2], msg[3])
                    elif msg[0] == "trends":
                        self._on_answer(msg[1], msg[2])
                    elif msg[0] == "error":
                        child_error = msg[1]
            finally:
                conn.close()
                for rid in list(self._asked):  # questions to a dead child: no answer
                    self._on_answer(rid, f"the {self.name} process exited; retry")
                rc = proc.wait()
                self.ready = False
            if self._halt.is_set():
                break
            self.error = f"{self.name} process {proc.pid} exited with code {rc}" + (
                f": {child_error}" if child_error else ""
            )
            log.error("%s; restarting it", self.error)
            if not self._started.is_set():  # failed at first start: give up, say why
                self._started.set()
                return
            self._halt.wait(RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)])
            failures += 1
            self.restarts += 1
        self._started.set()

    def _on_ready(self, checkpoint_seq: int, rebuilt: str | None, pid: int) -> None:
        index = None
        if self.role == "index":
            index = register_analyzers(tantivy.Index.open(str(self.data_dir / "index")))
            index.config_reader("Manual")
        with self._visible:
            self.index = index
            self.searchable_seq = checkpoint_seq
            self.pid = pid
            self.ready = True
            self.error = None
            if not self._started.is_set():
                self.rebuilt = rebuilt
                self.start_seq = checkpoint_seq
            elif rebuilt:
                log.warning("indexer rebuilt the index after a restart: %s", rebuilt)
        self._started.set()

    def _on_commit(self, seq: int) -> None:
        assert self.index is not None
        self.index.reload()
        with self._visible:
            self.searchable_seq = seq
            self.commits += 1
            self._visible.notify_all()

    def _on_answer(self, rid: int, result: Any) -> None:
        slot = self._asked.pop(rid, None)
        if slot is not None:
            slot.result = result
            slot.done.set()

    # -- API -------------------------------------------------------------------------------
    def trends(
        self,
        window_s: float,
        at_us: int | None,
        baseline: int,
        limit: int,
        min_count: int,
        min_seq: int = 0,
        timeout_s: float = 10.0,
    ) -> list[Trend]:
        """``TrendCounter.top`` of the counts the trend process keeps, once they reach log
        position ``min_seq`` (or after ``TrendFeeder.max_wait_s``); raises
        ``TrendsUnavailable`` when it cannot answer (down, restarting, loading its counts,
        no answer in ``timeout_s``)."""
        slot = _Answer()
        rid = next(self._ids)
        self._asked[rid] = slot
        try:
            conn = self._conn
            if conn is None or not self.ready:
                raise TrendsUnavailable(f"the {self.name} process is starting; retry")
            with self._send_lock:
                conn.send(("trends", rid, (window_s, at_us, baseline, limit, min_count, min_seq)))
            if not slot.done.wait(timeout_s):
                raise TrendsUnavailable(f"no trend answer in {timeout_s:g}s; retry")
        except OSError:
            raise TrendsUnavailable(f"the {self.name} process is restarting; retry") from None
        finally:
            self._asked.pop(rid, None)
        if isinstance(slot.result, str):
            raise TrendsUnavailable(slot.result)
        return slot.result

    def is_alive(self) -> bool:
        """Whether the child process is running and ready (the indexer: has opened the
        index)."""
        proc = self._proc
        return self.ready and proc is not None and proc.poll() is None

    def failure(self) -> str | None:
        """Why the child is not serving, or None: its last error, or, from the moment it
        dies until the supervisor has read why, that it is not running."""
        error = self.error
        if error is None and not self.is_alive():
            return f"the {self.name} process is not running (restarting)"
        return error

    def wait_searchable(self, seq: int, timeout: float = 10.0) -> bool:
        """Block until events up to ``seq`` are searchable (or ``timeout`` seconds pass)."""
        with self._visible:
            return self._visible.wait_for(lambda: self.searchable_seq >= seq, timeout)

    def kill_child(self) -> int | None:
        """SIGKILL the indexer process (for tests and drills); the supervisor restarts it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        proc.kill()
        return proc.pid

    def request_stop(self) -> None:
        """Ask the child to finish (index or count what is left, commit or save) and exit,
        without waiting; ``stop`` waits."""
        self._halt.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError), self._send_lock:
                conn.send(("stop",))

    def stop(self, timeout: float = 60.0) -> None:
        """Have the child index what is left, commit and exit; kill it if it does not."""
        if not self._halt.is_set():
            self.request_stop()
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error(
                    "%s process %s did not stop in %ss; killing it", self.name, proc.pid, timeout
                )
                proc.kill()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


if __name__ == "__main__":
    sys.exit(child_main())
