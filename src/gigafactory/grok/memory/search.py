"""Search over the index: the user's query is data, never query syntax.

The query text is split into terms exactly as the index's analyzer splits post text
(``index.text_analyzer``, characters of unspaced scripts as phrases, ``query_clauses``), and
these are OR-ed into a BM25 boolean query built with tantivy's query objects, so quotes, parentheses, ``AND``/``OR`` or ``field:*`` in the input are just
characters and no input can produce a query-syntax error. Filters (time window, author,
language, minimum engagement) are MUST clauses; the BM25 candidates are then re-ranked with
recency and engagement (``rank.combined_score``). An empty query lists the newest posts; a
query with nothing indexable in it (only punctuation) finds nothing. Emoji and other symbols
are tokens, so a query of an emoji finds the posts containing it.
"""

from __future__ import annotations

import math
import threading
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import tantivy

from gigafactory.grok.memory.index import POST, text_analyzer
from gigafactory.grok.memory.rank import RankWeights, combined_score

MAX_CLAUSES = 32  # terms and phrases OR-ed per query
MAX_LIMIT = 100
_UNSPACED_NAMES = ("CJK ", "HIRAGANA", "KATAKANA", "HALFWIDTH KATAKANA", "HANGUL", "THAI ")
_UNSPACED_NAMES += ("LAO ", "KHMER ", "MYANMAR ", "KANGXI ", "IDEOGRAPHIC ")
_analyzers = threading.local()


@dataclass(frozen=True)
class SearchQuery:
    """What a user asks for (times in microseconds since the epoch)."""

    q: str = ""
    since_us: int | None = None
    until_us: int | None = None
    author: str | None = None
    lang: str | None = None
    min_engagement: int | None = None
    limit: int = 20


@dataclass(frozen=True)
class Hit:
    """One ranked result."""

    id: str
    author: str
    text: str
    created_us: int
    lang: str
    likes: int
    reposts: int
    replies: int
    reply_to: str | None
    quote_of: str | None
    bm25: float
    score: float


def _analyze(text: str) -> list[str]:
    a = getattr(_analyzers, "a", None)
    if a is None:
        a = _analyzers.a = text_analyzer()
    return a.analyze(text)


def _unspaced(token: str) -> bool:
    """Whether ``token`` is one character of a script the index splits per character."""
    return len(token) == 1 and unicodedata.name(token, "").startswith(_UNSPACED_NAMES)


Clause = str | tuple[str, ...]
"""A term, or a phrase: tokens that must be adjacent."""


def query_clauses(q: str) -> list[Clause]:
    """The query text as the index's analyzer splits post text (``index.text_analyzer``):
    words as terms; a run of characters of an unspaced script (CJK, Thai ...) as the phrase
    of the whole run plus the phrases of its character bigrams, so that a longer run still
    finds posts sharing part of it, ranked below exact matches (the bigram scheme of CJK
    search engines). Distinct, in order, at most ``MAX_CLAUSES``."""
    out: list[Clause] = []

    def add(c: Clause) -> None:
        if c not in out and len(out) < MAX_CLAUSES:
            out.append(c)

    def flush(run: list[str]) -> None:
        if len(run) == 1:
            add(run[0])
        elif run:
            add(tuple(run))
            if len(run) > 2:
                for i in range(len(run) - 1):
                    add((run[i], run[i + 1]))
        run.clear()

    for chunk in q.split():
        run: list[str] = []
        for tok in _analyze(chunk):
            if _unspaced(tok):
                run.append(tok)
            else:
                flush(run)
                add(tok)
        flush(run)
    return out


def _clause_query(schema: tantivy.Schema, clause: Clause, boost: float) -> tantivy.Query:
    Q = tantivy.Query
    query = (
        Q.term_query(schema, "text", clause, index_option="freq")
        if isinstance(clause, str)
        else Q.phrase_query(schema, "text", list(clause))
    )
    return query if boost == 1.0 else Q.boost_query(query, boost)


def build_query(
    schema: tantivy.Schema, sq: SearchQuery, boosts: Mapping[Clause, float] | None = None
) -> tuple[tantivy.Query, bool]:
    """(query, has_text): the terms OR-ed for BM25 plus the filters as MUST clauses; a clause
    in ``boosts`` has its BM25 contribution multiplied by its boost (``global_boosts``)."""
    Q, Occur = tantivy.Query, tantivy.Occur
    terms = query_clauses(sq.q)
    must: list[tuple[tantivy.Occur, tantivy.Query]] = []
    if terms:
        boosts = boosts or {}
        text = Q.boolean_query(
            [(Occur.Should, _clause_query(schema, t, boosts.get(t, 1.0))) for t in terms]
        )
        must.append((Occur.Must, text))
    else:
        must.append((Occur.Must, Q.term_query(schema, "kind", POST)))
    if sq.since_us is not None or sq.until_us is not None:
        must.append(
            (
                Occur.Must,
                Q.range_query(
                    schema, "created_us", tantivy.FieldType.Integer, sq.since_us, sq.until_us
                ),
            )
        )
    if sq.min_engagement is not None and sq.min_engagement > 0:
        must.append(
            (
                Occur.Must,
                Q.range_query(
                    schema, "engagement", tantivy.FieldType.Integer, sq.min_engagement, None
                ),
            )
        )
    if sq.author:
        must.append((Occur.Must, Q.term_query(schema, "author", sq.author)))
    if sq.lang:
        must.append((Occur.Must, Q.term_query(schema, "lang", sq.lang)))
    if len(must) == 1 and terms:
        return must[0][1], True
    return Q.boolean_query(must), bool(terms)


def _hit(doc: tantivy.Document, bm25: float, score: float) -> Hit:
    g = doc.get_first
    return Hit(
        id=g("id"),
        author=g("author"),
        text=g("text"),
        created_us=g("created_us"),
        lang=g("lang"),
        likes=g("likes") or 0,
        reposts=g("reposts") or 0,
        replies=g("replies") or 0,
        reply_to=g("reply_to"),
        quote_of=g("quote_of"),
        bm25=round(bm25, 4),
        score=round(score, 4),
    )


def bm25_idf(n_docs: int, doc_freq: int) -> float:
    """BM25's inverse document frequency ``ln(1 + (N - n + 0.5) / (n + 0.5))`` of a term in
    ``n`` of ``N`` documents (Robertson & Zaragoza, "The Probabilistic Relevance Framework:
    BM25 and Beyond", 2009, eq. 3.3, with Lucene's +1 that keeps it positive; tantivy's
    ``Bm25Weight`` uses the same form, and sums it over the terms of a phrase)."""
    return math.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


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
    terms = {t for c in clauses for t in ((c,) if isinstance(c, str) else c)}
    df = {t: [s.doc_freq("text", t) for s in searchers] for t in terms}
    out: list[dict[Clause, float]] = []
    for k in range(len(searchers)):
        boosts: dict[Clause, float] = {}
        for c in clauses:
            words = (c,) if isinstance(c, str) else c
            if all(df[t][k] for t in words):
                local = sum(bm25_idf(n[k], df[t][k]) for t in words)
                boosts[c] = sum(bm25_idf(total, sum(df[t])) for t in words) / local
        out.append(boosts)
    return out


def search(
    index: tantivy.Index,
    sq: SearchQuery,
    weights: RankWeights | None = None,
    now_us: int | None = None,
) -> list[Hit]:
    """The ``sq.limit`` best posts for ``sq`` (see the module docstring)."""
    return search_shards([index], sq, weights, now_us)


def search_shards(
    indexes: Sequence[tantivy.Index],
    sq: SearchQuery,
    weights: RankWeights | None = None,
    now_us: int | None = None,
) -> list[Hit]:
    """``search`` over several index shards: each returns its best candidates scored with
    global IDF (``global_boosts``), and the merged candidates are re-ranked together."""
    w = weights or RankWeights()
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    limit = max(1, min(sq.limit, MAX_LIMIT))
    searchers = [ix.searcher() for ix in indexes]
    clauses = query_clauses(sq.q)
    if not clauses and sq.q.strip():
        return []  # text with nothing indexable in it (punctuation only) matches nothing
    if not clauses:  # the newest posts of every shard, merged by time
        newest = []
        for ix, searcher in zip(indexes, searchers, strict=True):
            query, _ = build_query(ix.schema, sq)
            hits = searcher.search(query, limit, count=False, order_by_field="created_us").hits
            newest += [(created, searcher, a) for created, a in hits]
        newest.sort(key=lambda t: t[0], reverse=True)
        return [_hit(searcher.doc(a), 0.0, 0.0) for _c, searcher, a in newest[:limit]]
    boosts = global_boosts(searchers, clauses) if len(indexes) > 1 else [{}]
    cands = []
    for ix, searcher, b in zip(indexes, searchers, boosts, strict=True):
        query, _ = build_query(ix.schema, sq, b)
        hits = searcher.search(query, max(limit, w.candidates), count=False).hits
        addrs = [a for _s, a in hits]
        created = searcher.fast_field_values("created_us", addrs) if hits else []
        eng = searcher.fast_field_values("engagement", addrs) if hits else []
        for (s, a), c, e in zip(hits, created, eng, strict=True):
            cands.append((s, c or 0, e or 0, searcher, a))
    if not cands:
        return []
    best = max(c[0] for c in cands)
    scored = sorted(
        (
            (combined_score(s, best, (now_us - c) / 1e6, e, w), s, searcher, a)
            for s, c, e, searcher, a in cands
        ),
        key=lambda t: t[0],
        reverse=True,
    )[:limit]
    return [_hit(searcher.doc(a), s, score) for score, s, searcher, a in scored]
