"""The HTTP API of Grok's memory (FastAPI). A thin layer over ``GrokService``.

``GET /healthz`` (liveness, no details) is open; every ``/v1`` route needs an API key (``X-API-Key: K`` or ``Authorization: Bearer K``).
Errors are JSON ``{"detail": "..."}``: 401 bad key, 413 body or batch too large, 422 malformed
body or parameter, 429 over the per-key rate (with ``Retry-After``), 503 index or trends unavailable.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from gigafactory.grok.api.page import mount_page
from gigafactory.grok.api.ratelimit import RateLimiter
from gigafactory.grok.memory.indexer import TrendsUnavailable
from gigafactory.grok.memory.ingest import BatchError, BatchTooLarge, parse_batch
from gigafactory.grok.memory.log import created_us
from gigafactory.grok.memory.post import MAX_ENGAGEMENT, to_utc
from gigafactory.grok.memory.search import MAX_LIMIT, SearchQuery
from gigafactory.grok.memory.service import GrokService, IngestResult
from gigafactory.grok.memory.trends import TrendWindowError, parse_window
from gigafactory.grok.settings import GrokSettings

log = logging.getLogger(__name__)


class RefusalOut(BaseModel):
    index: int
    id: str | None
    reason: str
    message: str


class IngestOut(BaseModel):
    """``accepted`` items are durably logged; ``refused`` lists the others with reasons."""

    accepted: int
    refused: list[RefusalOut]
    last_seq: int


class HitOut(BaseModel):
    id: str
    author: str
    text: str
    created_at: datetime
    lang: str
    likes: int
    reposts: int
    replies: int
    reply_to: str | None
    quote_of: str | None
    bm25: float
    score: float


class SearchOut(BaseModel):
    hits: list[HitOut]
    took_ms: float
    searchable_seq: int


class TrendOut(BaseModel):
    term: str
    count: int
    expected: float
    ratio: float
    score: float


class TrendsOut(BaseModel):
    window_s: float
    at: datetime
    trends: list[TrendOut]


_MIN_US = created_us(datetime.min.replace(tzinfo=UTC))  # times the index can hold
_MAX_US = created_us(datetime.max.replace(tzinfo=UTC))
_RELATIVE = re.compile(r"^\s*\d+(\.\d+)?\s*[smhd]\s*$", re.IGNORECASE)


def parse_time(value: str | None, name: str) -> int | None:
    """An ISO-8601 time (naive = UTC) or a duration ago (``15m``, ``2h``) -> µs since epoch."""
    if value is None or not value.strip():
        return None
    try:
        if _RELATIVE.match(value):
            us = int((time.time() - parse_window(value)) * 1_000_000)
        else:
            us = created_us(to_utc(datetime.fromisoformat(value.strip().replace("z", "Z"))))
        if not _MIN_US <= us <= _MAX_US:
            raise ValueError("out of range")
        return us
    except (ValueError, OverflowError):
        raise HTTPException(
            422,
            f"{name}={value!r}: give an ISO-8601 time (2025-01-01T12:00:00Z) "
            "or a duration ago (15m, 2h)",
        ) from None


def _result(res: IngestResult) -> Response:
    """The ``IngestOut`` body, serialised directly (the hot path of single-post clients: no
    response-model validation of what the service built)."""
    body = {
        "accepted": res.accepted,
        "refused": [r.__dict__ for r in res.refused],
        "last_seq": res.last_seq,
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def read_capped(request: Request, cap: int, hint: str = "") -> bytes:
    """The request body, read only while it stays within ``cap`` bytes: a declared or
    streamed body over it is a 413 (with ``hint`` after the reason) at once, never read in
    full."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, f"body of {int(declared):,} bytes exceeds {cap:,} bytes{hint}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, f"body exceeds {cap:,} bytes{hint}")
        chunks.append(chunk)
    return b"".join(chunks)


MAX_SEQ = 2**63 - 1
MAX_WAIT_MS = 30_000


def wait_covered(s: GrokService, seq: int, timeout_s: float) -> None:
    """Block until the index covers log position ``seq``: 422 for a position past the log's
    end (it would never come), 504 when ``timeout_s`` passes first."""
    postlog = getattr(s, "log", None)  # the embedded log (a broker's stream is not read)
    logged = postlog.last_seq if postlog is not None else None
    if logged is not None and seq > logged:
        raise HTTPException(422, f"min_seq={seq} is past the end of the log ({logged})")
    ix = s.indexer
    if not ix.wait_searchable(seq, timeout_s):
        raise HTTPException(
            504,
            f"the index has not reached seq {seq} in {timeout_s:g}s "
            f"(it covers {ix.searchable_seq}); retry, or search without min_seq",
        )


def get_service(request: Request) -> GrokService:
    """The app's service (a FastAPI dependency)."""
    return request.app.state.service


def api_key(request: Request) -> str:
    """The caller's API key, checked against the app's keys (a FastAPI dependency)."""
    key = request.headers.get("x-api-key")
    if key is None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
    if not key or key not in request.app.state.keys:
        raise HTTPException(
            401,
            "missing or invalid API key: send header X-API-Key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key


Key = Annotated[str, Depends(api_key)]
Svc = Annotated[GrokService, Depends(get_service)]


def create_app(
    settings: GrokSettings, service: GrokService | None = None, close_service: bool = False
) -> FastAPI:
    """The FastAPI app. The service is opened at startup and closed at shutdown (or
    ``service`` is used as is, and closed at shutdown only with ``close_service``: uvicorn
    re-raises SIGTERM after its shutdown, so code after ``uvicorn.run`` may never run)."""
    ingest_limit = RateLimiter(settings.ingest_rate, settings.ingest_burst)
    query_limit = RateLimiter(settings.query_rate, settings.query_burst)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = service is None or close_service
        svc = service or await run_in_threadpool(GrokService, settings)
        app.state.service = svc
        if svc.rebuilt:
            log.warning("index rebuilt at startup: %s", svc.rebuilt)
        try:
            yield
        finally:
            if own:
                await run_in_threadpool(svc.close)

    app = FastAPI(
        title="Grok real-time memory",
        version="1",
        summary="Durable post feed, sub-second full-text index, search and trends.",
        lifespan=lifespan,
    )
    app.state.keys = frozenset(settings.api_keys)
    mount_page(app)

    def limit(limiter: RateLimiter, key: str, n: float) -> None:
        wait = limiter.take(key, n)
        if wait == math.inf:
            raise HTTPException(
                413, f"{n:g} items exceed this key's burst of {limiter.capacity:g}; split the batch"
            )
        if wait > 0:
            raise HTTPException(
                429,
                f"rate limit: {limiter.rate:g}/s per key; retry in {wait:.2f}s",
                headers={"Retry-After": str(math.ceil(wait))},
            )

    async def read_items(request: Request) -> list[Any]:
        body = await read_capped(request, settings.max_body_bytes, "; send smaller batches")
        try:
            return parse_batch(body, settings.max_batch)
        except BatchTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except BatchError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.post(
        "/v1/posts",
        response_model=IngestOut,
        tags=["feed"],
        summary="Ingest a batch of posts (JSON array or JSON lines)",
    )
    async def post_posts(request: Request, key: Key, s: Svc) -> Response:
        """Each item is accepted or refused on its own (reasons: malformed, oversized,
        future, duplicate). The answer comes after the accepted posts are committed."""
        items = await read_items(request)
        limit(ingest_limit, key, max(1, len(items)))
        return _result(await s.ingest_posts_async(items))

    @app.post(
        "/v1/engagement",
        response_model=IngestOut,
        tags=["feed"],
        summary="Update engagement counts of logged posts",
    )
    async def post_engagement(request: Request, key: Key, s: Svc) -> Response:
        """Items ``{"id", "likes", "reposts", "replies", "at"?}`` with absolute counts; the
        latest in log order wins. Unknown ids are refused (reason ``unknown``)."""
        items = await read_items(request)
        limit(ingest_limit, key, max(1, len(items)))
        return _result(await run_in_threadpool(s.ingest_updates, items))

    @app.get("/v1/search", response_model=SearchOut, tags=["search"])
    def get_search(
        key: Key,
        s: Svc,
        q: Annotated[str, Query(max_length=2000, description="words; syntax is ignored")] = "",
        since: Annotated[str | None, Query(description="ISO time or duration ago")] = None,
        until: Annotated[str | None, Query(description="ISO time or duration ago")] = None,
        author: Annotated[str | None, Query(max_length=64)] = None,
        lang: Annotated[str | None, Query(max_length=16)] = None,
        min_engagement: Annotated[int | None, Query(ge=0, le=MAX_ENGAGEMENT)] = None,
        limit_: Annotated[int, Query(alias="limit", ge=1, le=MAX_LIMIT)] = 20,
        min_seq: Annotated[
            int | None,
            Query(
                ge=0,
                le=MAX_SEQ,
                description="read your writes: first wait until the index covers this log "
                "position (the last_seq of an ingest answer)",
            ),
        ] = None,
        wait_ms: Annotated[
            int, Query(ge=0, le=MAX_WAIT_MS, description="how long min_seq may wait")
        ] = 5000,
    ) -> SearchOut:
        """Posts ranked by BM25 relevance combined with recency and engagement. With
        ``min_seq``, the search runs once the index covers that log position (a client that
        just posted searches what it posted; 504 if it takes longer than ``wait_ms``)."""
        limit(query_limit, key, 1)
        if min_seq is not None:
            wait_covered(s, min_seq, wait_ms / 1000)
        sq = SearchQuery(
            q,
            parse_time(since, "since"),
            parse_time(until, "until"),
            author or None,
            lang or None,
            min_engagement,
            limit_,
        )
        t0 = time.perf_counter()
        try:
            hits = s.search(sq)
        except Exception as exc:
            log.exception("search failed")
            raise HTTPException(503, f"index unavailable: {type(exc).__name__}") from None
        took = (time.perf_counter() - t0) * 1000
        out = [
            HitOut(
                created_at=datetime.fromtimestamp(h.created_us / 1e6, UTC),
                **{k: v for k, v in h.__dict__.items() if k != "created_us"},
            )
            for h in hits
        ]
        return SearchOut(hits=out, took_ms=round(took, 3), searchable_seq=s.indexer.searchable_seq)

    @app.get("/v1/trends", response_model=TrendsOut, tags=["search"])
    def get_trends(
        key: Key,
        s: Svc,
        window: Annotated[str, Query(description="15m, 1h, 90s ...")] = "15m",
        baseline: Annotated[int, Query(ge=1, le=48)] = 6,
        limit_: Annotated[int, Query(alias="limit", ge=1, le=200)] = 20,
        min_count: Annotated[int, Query(ge=1)] = 5,
    ) -> TrendsOut:
        """Terms and hashtags whose count in the window rises most above the ``baseline``
        windows before it; the window ends at the server clock and is at most the retention
        (``trend_retention_s``, default 6 h)."""
        limit(query_limit, key, 1)
        try:
            window_s = parse_window(window)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        at = datetime.now(UTC)
        try:
            trends = s.top_trends(window_s, baseline, limit_, min_count, created_us(at))
        except TrendWindowError as exc:
            raise HTTPException(422, str(exc)) from None
        except TrendsUnavailable as exc:
            raise HTTPException(503, f"trends unavailable: {exc}") from None
        bucket = s.settings.trend_bucket_s
        whole = max(1, round(window_s / bucket)) * bucket  # windows are whole buckets
        return TrendsOut(window_s=whole, at=at, trends=[TrendOut(**t.__dict__) for t in trends])

    from gigafactory.grok.api.chat import router as chat_router  # chat.py imports this module

    app.include_router(chat_router)
    app.state.limit_query = lambda key: limit(query_limit, key, 1)  # chat answers are queries

    @app.get("/healthz", tags=["ops"])
    def healthz(s: Svc) -> JSONResponse:
        """Liveness for load balancers, without a key: ``{"status": "ok"}``, or 503
        ``{"status": "degraded"}`` while the indexer is down. Details: ``/v1/status``."""
        ok = s.healthy()
        return JSONResponse({"status": "ok" if ok else "degraded"}, 200 if ok else 503)

    @app.get("/v1/status", tags=["ops"])
    def status(key: Key, s: Svc) -> JSONResponse:
        """Log and index positions, lag, indexer process id, restarts and last error (needs a
        key); 503 when the indexer has stopped."""
        h = s.health()
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    return app
