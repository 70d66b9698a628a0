"""Search over the index: the user's query is data, never query syntax.

The query text is split into terms exactly as the index's analyzer splits post text
(``analysis.analyze``, characters of unspaced scripts as phrases, ``query_clauses``), and
these are OR-ed into a BM25 boolean query built with tantivy's query objects, so quotes, parentheses, ``AND``/``OR`` or ``field:*`` in the input are just
characters and no input can produce a query-syntax error. Filters (time window, author,
language, minimum engagement) are MUST clauses; the BM25 candidates are then re-ranked with
recency and engagement (``rank.combined_score``). An empty query lists the newest posts; a
query with nothing indexable in it (only punctuation) finds nothing. Emoji and other symbols
are tokens, so a query of an emoji finds the posts containing it.

Very common words (in more than 5 % of the posts of a large index: "the", "de", "の") are
dropped from a query that has other words; a query of only such words takes its candidates
from the newest posts first (``_newest_slices``), so its cost does not grow with the index.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import tantivy

from gigafactory.grok.memory.analysis import analyze, shown_text, unspaced
from gigafactory.grok.memory.index import POST
from gigafactory.grok.memory.rank import RankWeights, combined_score

MAX_CLAUSES = 32  # terms and phrases OR-ed per query
COMMON_DOC_FRACTION = 0.05  # a word in more of the posts than this is "very common"
COMMON_MIN_DOCS = 10_000  # ... once the index is this large
RECENT_SLICES_S = (600, 3600, 6 * 3600)  # newest-first windows for very-common-only queries
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


def _unspaced(token: str) -> bool:
    """Whether ``token`` is one character of a script the index splits per character."""
    char = shown_text(token)
    return len(char) == 1 and unspaced(char)


Clause = str | tuple[str, ...]
"""A term, or a phrase: tokens that must be adjacent."""


def clause_tiers(q: str) -> tuple[list[Clause], frozenset[Clause]]:
    """The query text as the index's analyzer splits post text (``analysis.analyze``, terms in
    their index form), and which of the clauses are partial: words as terms; a run of
    characters of an unspaced script (CJK, Thai ...) as the phrase of the whole run plus,
    partial, the phrases of its character bigrams, so that a longer run still finds posts
    sharing part of it, ranked below exact matches (the bigram scheme of CJK search engines;
    ``candidate_tiers`` says when they are asked). Distinct, in order, the exact ones first;
    at most ``MAX_CLAUSES`` (the bigrams of a long run take what the exact ones leave)."""
    exact: dict[Clause, None] = {}  # ordered sets
    bigrams: dict[Clause, None] = {}

    def flush(run: list[str]) -> None:
        if len(run) == 1:
            exact[run[0]] = None
        elif run:
            exact[tuple(run)] = None
            if len(run) > 2:
                for i in range(len(run) - 1):
                    bigrams[(run[i], run[i + 1])] = None
        run.clear()

    for chunk in q.split():
        run: list[str] = []
        for tok in analyze(chunk):
            if _unspaced(tok):
                run.append(tok)
            else:
                flush(run)
                exact[tok] = None
        flush(run)
    out = list(exact)[:MAX_CLAUSES]
    partial = [c for c in bigrams if c not in exact][: MAX_CLAUSES - len(out)]
    return out + partial, frozenset(partial)


def query_clauses(q: str) -> list[Clause]:
    """The clauses of ``clause_tiers``, exact and partial."""
    return clause_tiers(q)[0]


def candidate_tiers(clauses: list[Clause], partial: frozenset[Clause]) -> list[list[Clause]]:
    """The clause lists to take BM25 candidates with, in turn, until one gives enough: the
    exact clauses first when there are partial ones among ``clauses``, then all of them. The
    phrases of character bigrams only add posts that share part of a run, ranked below its
    exact matches, and they cost the most (two common characters' postings intersected,
    positions checked: "chaoticすごい" over 5M generated posts took 16.6 ms with the bigrams
    of "すごい" and 9.1 ms without), so they are asked only when the exact matches do not fill
    the candidates."""
    exact = [c for c in clauses if c not in partial]
    return [exact, clauses] if exact and len(exact) < len(clauses) else [clauses]


def query_terms(q: str) -> list[str]:
    """The single-word clauses of ``query_clauses(q)``, in the index form (what the Grok
    answers search for one by one and count in posts)."""
    return [c for c in query_clauses(q) if isinstance(c, str)]


def _boosted(query: tantivy.Query, boost: float) -> tantivy.Query:
    return query if boost == 1.0 else tantivy.Query.boost_query(query, boost)


def build_query(
    schema: tantivy.Schema,
    sq: SearchQuery,
    clauses: list[Clause] | None = None,
    boosts: Mapping[Clause, float] | None = None,
) -> tuple[tantivy.Query, bool]:
    """(query, has_text): the ``clauses`` (default: ``query_clauses(sq.q)``) OR-ed for BM25
    plus the filters as MUST clauses; a clause in ``boosts`` has its BM25 contribution
    multiplied by its boost (index shards: ``shards.global_boosts``)."""
    Q, Occur = tantivy.Query, tantivy.Occur
    terms = query_clauses(sq.q) if clauses is None else clauses
    must: list[tuple[tantivy.Occur, tantivy.Query]] = []
    if terms:
        boosts = boosts or {}
        text = Q.boolean_query(
            [
                (
                    Occur.Should,
                    _boosted(
                        Q.term_query(schema, "text", t, index_option="freq")
                        if isinstance(t, str)
                        else Q.phrase_query(schema, "text", list(t)),
                        boosts.get(t, 1.0),
                    ),
                )
                for t in terms
            ]
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


def common_terms(searcher: tantivy.Searcher, clauses: list[Clause]) -> set[str]:
    """The single-word clauses found in more than ``COMMON_DOC_FRACTION`` of the documents
    (once the index holds ``COMMON_MIN_DOCS``): "the", "de", "の" -- stop words learnt from
    the stream itself, in every language."""
    docs = searcher.num_docs
    if docs < COMMON_MIN_DOCS:
        return set()
    cut = COMMON_DOC_FRACTION * docs
    return {c for c in clauses if isinstance(c, str) and searcher.doc_freq("text", c) > cut}


def _newest_slices(
    searcher: tantivy.Searcher,
    schema: tantivy.Schema,
    sq: SearchQuery,
    clauses: list[Clause],
    now_us: int,
    candidates: int,
) -> list[tuple[float, tantivy.DocAddress]]:
    """BM25 candidates of a query of only very common words, taken from the newest posts:
    the last ``RECENT_SLICES_S`` of the asked time window in turn, until one holds enough
    (BM25 barely tells such posts apart, so recency decides; a scan of every match of
    "the" would cost time in proportion to the whole index)."""
    want = max(sq.limit, candidates)
    hits: list[tuple[float, tantivy.DocAddress]] = []
    for slice_s in (*RECENT_SLICES_S, None):
        since = sq.since_us
        if slice_s is not None:
            since = max(since or 0, now_us - slice_s * 1_000_000)
        query, _ = build_query(schema, replace(sq, since_us=since), clauses)
        hits = searcher.search(query, want, count=False).hits
        if len(hits) >= sq.limit or since == sq.since_us:
            break
    return hits


def _hit(doc: tantivy.Document, bm25: float, score: float) -> Hit:
    g = doc.get_first
    return Hit(
        id=g("id"),
        author=g("author"),
        text=shown_text(g("text")),
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


def search(
    index: tantivy.Index,
    sq: SearchQuery,
    weights: RankWeights | None = None,
    now_us: int | None = None,
) -> list[Hit]:
    """The ``sq.limit`` best posts for ``sq`` (see the module docstring)."""
    w = weights or RankWeights()
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    limit = max(1, min(sq.limit, MAX_LIMIT))
    searcher = index.searcher()
    clauses, partial = clause_tiers(sq.q)
    if not clauses:
        if sq.q.strip():
            return []  # text with nothing indexable in it (punctuation only) matches nothing
        query, _ = build_query(index.schema, sq, clauses)
        hits = searcher.search(query, limit, count=False, order_by_field="created_us").hits
        return [_hit(searcher.doc(a), 0.0, 0.0) for _k, a in hits]
    common = common_terms(searcher, clauses)
    if len(common) < len(clauses):  # very common words add cost, not relevance: drop them
        clauses = [c for c in clauses if c not in common]
        want = max(limit, w.candidates)
        hits = []
        for tier in candidate_tiers(clauses, partial):
            query, _ = build_query(index.schema, sq, tier)
            hits = searcher.search(query, want, count=False).hits
            if len(hits) >= want:
                break
    else:
        hits = _newest_slices(searcher, index.schema, sq, clauses, now_us, w.candidates)
    return rank_candidates([(searcher, hits)], limit, w, now_us)


def rank_candidates(
    per_searcher: Sequence[tuple[tantivy.Searcher, list[tuple[float, tantivy.DocAddress]]]],
    limit: int,
    w: RankWeights,
    now_us: int,
) -> list[Hit]:
    """The ``limit`` best of BM25 candidates (of one index, or of several shards scored with
    the same statistics), re-ranked with recency and engagement (``rank.combined_score``)."""
    cands = []
    for searcher, hits in per_searcher:
        if not hits:
            continue
        addrs = [a for _s, a in hits]
        created = searcher.fast_field_values("created_us", addrs)
        eng = searcher.fast_field_values("engagement", addrs)
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
