"""The end-to-end demo behind ``gigafactory demo`` (and ``make run``), as a library.

``Demo`` starts the Grok service (uvicorn on 127.0.0.1, a free port) on a temporary data
directory, streams generated posts into it with the feed client, finds what is trending, asks
Grok about it through the OpenAI-compatible chat API (streamed), and plans the 100,000-GPU
run that would train Grok. ``Demo.run`` yields events (dataclasses) that the CLI renders;
nothing here prints. The service stays up until the ``with`` block ends, so ``--serve`` can
leave the page open.
"""

from __future__ import annotations

import math
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from gigafactory.errors import GigafactoryError
from gigafactory.grok.answers.question import keywords
from gigafactory.grok.memory.feed import Event, FeedClient, FeedStats, generated, run_feed
from gigafactory.grok.memory.post import words
from gigafactory.grok.settings import GrokSettings

MAX_QUESTIONS = 10


class DemoError(GigafactoryError):
    """The demo cannot run with these options, or a step of it failed."""


@dataclass(frozen=True)
class DemoOptions:
    """How long and how hard the demo runs; checked on creation."""

    rate: float = 500.0  # generated posts per second
    history_s: float = 180.0  # seconds of past posts sent first (the trends' baseline)
    warmup_s: float = 10.0  # seconds of live posts before the first question
    questions: int = 3  # trending topics asked about
    seed: int = 0  # generator seed
    port: int = 0  # 0 = a free port
    trend_window: str = "1m"
    timeout_s: float = 30.0  # per HTTP request (a question's whole streamed answer)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise DemoError(f"rate {self.rate}: give a positive number of posts per second")
        if not (math.isfinite(self.history_s) and 0 <= self.history_s <= 3600):
            raise DemoError(f"history {self.history_s}: give 0 to 3600 seconds of past posts")
        if not (math.isfinite(self.warmup_s) and self.warmup_s >= 1):
            raise DemoError(f"warmup {self.warmup_s}: give at least 1 second of posts")
        if not 1 <= self.questions <= MAX_QUESTIONS:
            raise DemoError(f"questions {self.questions}: ask between 1 and {MAX_QUESTIONS}")
        if not 0 <= self.port <= 65535:
            raise DemoError(f"port {self.port}: give 0 (any free port) or 1-65535")
        if not self.timeout_s > 0:
            raise DemoError(f"timeout {self.timeout_s}: give a positive number of seconds")


# --- events (what the CLI renders) -----------------------------------------------------------


@dataclass(frozen=True)
class ServiceUp:
    url: str
    key: str
    data_dir: Path
    startup_s: float


@dataclass(frozen=True)
class Feeding:
    """Progress of the warm-up feed, in seconds of stream time: the first ``history_s`` are
    past posts sent as fast as the service takes them, then posts arrive live."""

    posts: int
    posts_per_s: float
    stream_s: float
    history_s: float
    target_s: float
    index_lag: int = 0  # records logged before the questions and not yet searchable

    @property
    def live(self) -> bool:
        return self.stream_s >= self.history_s


@dataclass(frozen=True)
class Trending:
    window_s: float
    terms: list[dict[str, Any]]  # /v1/trends items: term, count, expected, ratio, score


@dataclass(frozen=True)
class Asking:
    question: str
    model: str


@dataclass(frozen=True)
class AnswerPiece:
    text: str


@dataclass(frozen=True)
class Answered:
    """A whole answer, with its citations and measured latencies.

    ``ack_to_cited_s[i]``: seconds from the service's acknowledgement of cited post ``i`` to
    the moment its citation arrived (``None`` for a post this demo did not feed).
    """

    question: str
    text: str
    citations: list[dict[str, Any]]
    first_token_ms: float
    total_ms: float
    ack_to_cited_s: list[float | None]

    @property
    def freshest_s(self) -> float | None:
        """Age (since acknowledgement) of the freshest cited post, in seconds."""
        ages = [a for a in self.ack_to_cited_s if a is not None]
        return min(ages) if ages else None


@dataclass(frozen=True)
class Planned:
    """The planner's fastest layout of Grok-1 on Colossus and its whole-run totals."""

    step: Any  # gigafactory.plan.step.StepEstimate
    run: Any  # gigafactory.plan.run.RunEstimate
    took_s: float


DemoEvent = ServiceUp | Feeding | Trending | Asking | AnswerPiece | Answered | Planned


# --- parts ---------------------------------------------------------------------------------


def bind(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A listening-ready socket on ``host:port`` (0: a free port); DemoError if taken."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DemoError(
            f"cannot listen on {host}:{port} ({exc.strerror}): pass --port 0 for a free port"
        ) from None
    return sock


class LocalServer:
    """The Grok API served by uvicorn in a thread of this process, on ``sock``."""

    def __init__(
        self, settings: GrokSettings, sock: socket.socket, startup_timeout_s: float = 60.0
    ):
        import uvicorn

        from gigafactory.grok.api.app import create_app

        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="grok-api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                sock.close()
                raise DemoError(f"the Grok service did not start on {self.url}; see the log")
            if time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise DemoError(f"the Grok service did not start in {startup_timeout_s:.0f} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Shut down (the service closes its log and stops its indexer)."""
        self._server.should_exit = True
        self._thread.join(timeout=30)


class AckClock(FeedClient):
    """A feed client that remembers when each post it sent in the last ``keep_s`` seconds
    was acknowledged (``--serve`` feeds for hours: older acks are forgotten)."""

    def __init__(self, url: str, key: str | None, timeout_s: float = 30.0, keep_s: float = 900):
        super().__init__(url, key, timeout_s)
        self.keep_s = keep_s
        self.acked: dict[str, float] = {}  # post id -> time.monotonic() of the ack
        self._batches: deque[tuple[float, list[str]]] = deque()

    def send(self, kind: str, items: list[dict[str, Any]], stats: FeedStats) -> None:
        super().send(kind, items, stats)
        if kind != "posts":
            return
        now = time.monotonic()
        ids = [item["id"] for item in items]
        self.acked.update(dict.fromkeys(ids, now))
        self._batches.append((now, ids))
        while self._batches[0][0] < now - self.keep_s:
            for pid in self._batches.popleft()[1]:
                self.acked.pop(pid, None)


def sse_data(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of server-sent ``data:`` lines, up to ``data: [DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield orjson.loads(data)


def question_about(term: str) -> str:
    """The question the demo (and the page's trend buttons) asks about a trending term."""
    return f"What is happening with {term} right now?"


def worth_asking(term: str, covered: set[str]) -> bool:
    """Whether a question about ``term`` (a trend: a word or a hashtag) would search for a
    keyword not in ``covered`` (the words of posts already quoted). A stop or question word
    ("last" of "last minute winner") yields no keyword and is not worth asking about."""
    return bool(set(keywords(term)) - covered)


def plan_grok_run() -> Planned:
    """The planner's fastest layout of Grok-1 on the 100,000-GPU Colossus, and the run."""
    from gigafactory.plan.run import estimate_run
    from gigafactory.plan.search import search_layouts
    from gigafactory.spec import load_cluster, load_hardware, load_model

    t0 = time.perf_counter()
    model, cluster = load_model("grok-1"), load_cluster("colossus")
    hardware = load_hardware(cluster.gpu)
    found = search_layouts(model, hardware, cluster, top=1)
    if not found.best:
        raise DemoError("no layout of Grok-1 fits on Colossus: check the catalog presets")
    step = found.best[0]
    return Planned(step, estimate_run(step, cluster, hardware), time.perf_counter() - t0)


# --- the demo ------------------------------------------------------------------------------


@dataclass
class _Feed:
    """The feed thread's shared state."""

    stats: FeedStats = field(default_factory=FeedStats)
    error: BaseException | None = None
    stream_s: float = 0.0  # stream time of the newest event handed to the client
    stop: threading.Event = field(default_factory=threading.Event)


class Demo:
    """``with Demo(options) as demo: for event in demo.run(): ...`` -- the service and the
    feed run until the block ends; ``data_dir`` (default: a temporary one, removed at the
    end) holds the log and index."""

    def __init__(self, options: DemoOptions | None = None, data_dir: Path | None = None):
        self.options = options or DemoOptions()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="grok-demo-"))
        self.key = "demo-" + secrets.token_hex(4)
        self.server: LocalServer | None = None
        self.http: httpx.Client | None = None
        self._client: AckClock | None = None
        self._feed = _Feed()
        self._thread: threading.Thread | None = None
        self._startup_s = 0.0

    # lifecycle

    def __enter__(self) -> Demo:
        t0 = time.perf_counter()
        try:
            sock = bind(self.options.port)
            settings = GrokSettings.load(
                {},
                data_dir=self.data_dir,
                api_keys=(self.key,),
                port=sock.getsockname()[1],
                synchronous="NORMAL",  # a throw-away directory: no fsync per batch
            )
            self.server = LocalServer(settings, sock)
            self.http = httpx.Client(
                base_url=self.server.url,
                headers={"x-api-key": self.key},
                timeout=self.options.timeout_s,
            )
        except BaseException:
            self.close()
            raise
        self._startup_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the feed, the service, and remove a temporary data directory."""
        self._feed.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._client is not None:
            self._client.close()
        if self.http is not None:
            self.http.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def url(self) -> str:
        if self.server is None:
            raise DemoError("the demo service is not running: use `with Demo(...) as demo`")
        return self.server.url

    @property
    def feed_stats(self) -> FeedStats:
        return self._feed.stats

    # steps

    def start_feed(self) -> None:
        """Stream generated posts (timed from now) into the service until ``close``."""
        if self._thread is not None:
            return
        self._client = AckClock(self.url, self.key, self.options.timeout_s)
        feed, client, opts = self._feed, self._client, self.options
        start = datetime.now(UTC) - timedelta(seconds=opts.history_s)

        def events() -> Iterator[Event]:
            for t, kind, item in generated(opts.seed, opts.rate, start):
                if feed.stop.is_set():
                    return
                feed.stream_s = t
                yield t - opts.history_s, kind, item  # the past is due at once

        def work() -> None:
            def progress(stats: FeedStats) -> None:
                feed.stats = stats

            try:
                feed.stats = run_feed(events(), client, None, on_progress=progress)
            except BaseException as exc:  # reported to the main thread by check
                feed.error = exc

        self._thread = threading.Thread(target=work, name="grok-demo-feed", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise ``DemoError`` if the feed thread has failed."""
        if self._feed.error is not None:
            raise DemoError(f"the feed stopped: {self._feed.error}")

    def warm_up(self, every_s: float = 0.25) -> Iterator[Feeding]:
        """Send ``options.history_s`` seconds of past posts, feed live posts for
        ``options.warmup_s`` seconds, then wait until the index has caught up with what was
        logged by then (search sees posts once indexed, trends once counted);
        report progress every ``every_s``."""
        self.start_feed()
        opts, feed = self.options, self._feed
        target = opts.history_s + opts.warmup_s
        goal: int | None = None  # the log position the index must reach
        deadline = math.inf
        while True:
            self.check()
            lag = 0
            if feed.stream_s >= target:
                health = self._get("/v1/status")
                goal = health["log_seq"] if goal is None else goal
                lag = max(0, goal - health["searchable_seq"])
                deadline = min(deadline, time.monotonic() + opts.timeout_s)
            s = feed.stats
            yield Feeding(
                s.accepted_posts, s.posts_per_s, feed.stream_s, opts.history_s, target, lag
            )
            if goal is not None and lag == 0:
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the index is still {lag} records behind the log after "
                    f"{opts.timeout_s:g} s: lower --rate or --history"
                )
            time.sleep(every_s)

    def _get(self, path: str, **params: Any) -> Any:
        assert self.http is not None
        try:
            r = self.http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise DemoError(f"{self.url}{path}: {exc}") from None
        if r.status_code != 200:
            raise DemoError(f"{self.url}{path} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def trending(self) -> Trending:
        """The terms rising most in ``options.trend_window``, three per question asked (at
        least one, else DemoError)."""
        out = self._get(
            "/v1/trends",
            window=self.options.trend_window,
            limit=3 * self.options.questions,
            min_count=3,
        )
        if not out["trends"]:
            raise DemoError(
                f"nothing trends after {self.feed_stats.accepted_posts} posts: "
                "raise --rate, --history or --warmup"
            )
        return Trending(out["window_s"], out["trends"])

    def model(self) -> str:
        """The first model ``GET /v1/models`` lists."""
        models = self._get("/v1/models")["data"]
        if not models:
            raise DemoError(f"{self.url}/v1/models lists no model")
        return models[0]["id"]

    def ask(self, question: str, model: str) -> Iterator[AnswerPiece | Answered]:
        """Ask ``question`` with ``stream: true``; yield each piece, then the whole answer."""
        assert self.http is not None
        body = {"model": model, "messages": [{"role": "user", "content": question}]}
        pieces: list[str] = []
        citations: list[dict[str, Any]] = []
        first_ms = math.nan
        t0 = time.perf_counter()
        try:
            with self.http.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}
            ) as r:
                if r.status_code != 200:
                    r.read()
                    raise DemoError(
                        f"{self.url}/v1/chat/completions answered {r.status_code}: {r.text[:300]}"
                    )
                for chunk in sse_data(r.iter_lines()):
                    if "error" in chunk:
                        raise DemoError(f"Grok failed mid-answer: {chunk['error'].get('message')}")
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            if not pieces:
                                first_ms = (time.perf_counter() - t0) * 1000
                            pieces.append(piece)
                            yield AnswerPiece(piece)
                    citations = chunk.get("citations") or citations
        except httpx.HTTPError as exc:
            raise DemoError(f"{self.url}/v1/chat/completions: {exc}") from None
        now = time.monotonic()
        total_ms = (time.perf_counter() - t0) * 1000
        acked = self._client.acked if self._client else {}
        ages = [None if c.get("id") not in acked else now - acked[c["id"]] for c in citations]
        yield Answered(question, "".join(pieces), citations, first_ms, total_ms, ages)

    def run(self) -> Iterator[DemoEvent]:
        """The whole demo: service up, posts streaming, trending questions answered, plan."""
        yield ServiceUp(self.url, self.key, self.data_dir, self._startup_s)
        yield from self.warm_up()
        trending = self.trending()
        yield trending
        model = self.model()
        covered: set[str] = set()
        asked = 0
        for term in [t["term"] for t in trending.terms]:
            if asked == self.options.questions:
                break
            if not worth_asking(term, covered):
                continue  # e.g. an earlier answer already quotes it ("var" after "drama")
            question = question_about(term)
            asked += 1
            yield Asking(question, model)
            for ev in self.ask(question, model):
                if isinstance(ev, Answered):
                    covered.update(words(" ".join(c.get("text", "") for c in ev.citations)))
                yield ev
            self.check()
        yield plan_grok_run()
