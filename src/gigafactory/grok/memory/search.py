"""Search over the index: the user's query is data, never query syntax.

The query text is split into terms exactly as the index's tokenizer splits post text
(``post.words``), and the terms are OR-ed into a BM25 boolean query built with tantivy's
query objects, so quotes, parentheses, ``AND``/``OR`` or ``field:*`` in the input are just
characters and no input can produce a query-syntax error. Filters (time window, author,
language, minimum engagement) are MUST clauses; the BM25 candidates are then re-ranked with
recency and engagement (``rank.combined_score``). An empty query lists the newest posts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import tantivy

from gigafactory.grok.memory.index import POST
from gigafactory.grok.memory.post import words
from gigafactory.grok.memory.rank import RankWeights, combined_score

MAX_TERMS = 32
MAX_TERM_BYTES = 39  # tantivy's default tokenizer drops tokens of 40 bytes or more
MAX_LIMIT = 100


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


def query_terms(q: str) -> list[str]:
    """Distinct index terms of the query text, in order (at most ``MAX_TERMS``)."""
    out: list[str] = []
    for w in words(q):
        if len(w.encode()) <= MAX_TERM_BYTES and w not in out:
            out.append(w)
            if len(out) == MAX_TERMS:
                break
    return out


def build_query(
    schema: tantivy.Schema, sq: SearchQuery, boosts: Mapping[str, float] | None = None
) -> tuple[tantivy.Query, bool]:
    """(query, has_text): the terms OR-ed for BM25 plus the filters as MUST clauses; a term
    in ``boosts`` has its BM25 contribution multiplied by its boost (``global_boosts``)."""
    Q, Occur = tantivy.Query, tantivy.Occur
    terms = query_terms(sq.q)
    must: list[tuple[tantivy.Occur, tantivy.Query]] = []
    if terms:
        clauses = []
        for t in terms:
            tq = Q.term_query(schema, "text", t, index_option="freq")
            boost = boosts.get(t, 1.0) if boosts else 1.0
            clauses.append((Occur.Should, tq if boost == 1.0 else Q.boost_query(tq, boost)))
        text = Q.boolean_query(clauses)
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
    ``Bm25Weight`` uses the same form)."""
    return math.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def global_boosts(
    searchers: Sequence[tantivy.Searcher], terms: list[str]
) -> list[dict[str, float]]:
    """Per shard, the factor that turns each term's shard-local IDF into the IDF over all
    shards (document counts and document frequencies summed, as Elasticsearch's
    ``dfs_query_then_fetch`` does): a term's BM25 contribution is ``idf · tf-part``, so
    multiplying it by ``idf_global / idf_shard`` gives every shard the same IDF. The
    length normalisation keeps each shard's average length (hash partitioning makes the
    shards uniform samples, so those agree closely)."""
    n = [s.num_docs for s in searchers]
    df = {t: [s.doc_freq("text", t) for s in searchers] for t in terms}
    total = sum(n)
    out: list[dict[str, float]] = []
    for k in range(len(searchers)):
        boosts = {}
        for t in terms:
            if df[t][k]:
                boosts[t] = bm25_idf(total, sum(df[t])) / bm25_idf(n[k], df[t][k])
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
    terms = query_terms(sq.q)
    if not terms:  # the newest posts of every shard, merged by time
        newest = []
        for ix, searcher in zip(indexes, searchers, strict=True):
            query, _ = build_query(ix.schema, sq)
            hits = searcher.search(query, limit, count=False, order_by_field="created_us").hits
            newest += [(created, searcher, a) for created, a in hits]
        newest.sort(key=lambda t: t[0], reverse=True)
        return [_hit(searcher.doc(a), 0.0, 0.0) for _c, searcher, a in newest[:limit]]
    boosts = global_boosts(searchers, terms) if len(indexes) > 1 else [{}]
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
