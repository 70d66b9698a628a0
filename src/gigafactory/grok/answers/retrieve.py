"""Retrieval: the numbered posts a backend answers from, and the counts it reports.

``retrieve`` runs the ranked search (``GrokService.search``) for the question's keywords in its
window, per named author; an overview question ("what is happening?") searches the top
trending terms instead. ``select`` then groups near-duplicates (word-set Jaccard similarity
>= ``NEAR_DUP_JACCARD``, Broder 1997 "On the resemblance and containment of documents") and
keeps one post per group, preferring posts that contain more of the keywords, are more
informative (distinct words, no injected instructions) and more engaged.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import tantivy

from gigafactory.grok.answers.errors import SourcesUnavailable
from gigafactory.grok.answers.guard import is_instruction
from gigafactory.grok.answers.question import QUESTION_WORDS, Question
from gigafactory.grok.answers.spotlight import Source
from gigafactory.grok.memory.indexer import TrendsUnavailable
from gigafactory.grok.memory.post import words
from gigafactory.grok.memory.search import Hit, SearchQuery, build_query, query_terms
from gigafactory.grok.memory.service import GrokService
from gigafactory.grok.memory.trends import STOPWORDS, Trend

NEAR_DUP_JACCARD = 0.6
CANDIDATES = 60
ENGAGED_CANDIDATES = 20
ENGAGED_ROUNDS = 6
INFORMATIVE_WORDS = 12  # distinct words at which a post counts as fully informative
ENGAGEMENT_WEIGHT = 2.0  # tenfold engagement (+0.67) outweighs a terse post (<= 1)
INSTRUCTION_PENALTY = 10.0  # posts carrying instructions come last
_NAME = re.compile(r"(?<![\w#])#[^\W_]\w{1,63}|\b[A-Z][a-z]{2,}(?![^\W_])")


@dataclass(frozen=True)
class SearchParams:
    """How to search (xAI's ``search_parameters``; times in µs since the epoch)."""

    mode: str = "auto"  # auto | on | off
    since_us: int | None = None
    until_us: int | None = None
    max_results: int = 5
    included: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()


@dataclass(frozen=True)
class Context:
    """What a backend answers from: the question and posts numbered 1..n."""

    question: Question
    posts: list[Hit] = field(default_factory=list)
    similar: list[int] = field(default_factory=list)  # near-duplicates behind each post
    matched: int = 0  # posts in the window containing every keyword
    topics: list[str] = field(default_factory=list)  # the most frequent other terms
    trends: list[Trend] = field(default_factory=list)
    searched: bool = False
    took_ms: dict[str, float] = field(default_factory=dict)  # where retrieval's time went

    @property
    def sources(self) -> list[Source]:
        """The posts as a model sees them (``spotlight``)."""
        return [
            Source(i, h.author, iso_utc(h.created_us), h.text) for i, h in enumerate(self.posts, 1)
        ]


def iso_utc(us: int) -> str:
    """µs since the epoch -> ``2025-01-01T12:00:00Z``."""
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signature(text: str) -> frozenset[str]:
    """The words of a post that make it what it is (no numbers, no single letters)."""
    return frozenset(w for w in words(text) if len(w) > 1 and not w.isdigit())


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b| (1 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def group_near_duplicates(hits: list[Hit]) -> list[list[Hit]]:
    """Greedy single pass: each post joins the first group whose first post is at least
    ``NEAR_DUP_JACCARD`` similar, else starts a group. Groups keep the input order."""
    groups: list[tuple[frozenset[str], list[Hit]]] = []
    for h in hits:
        sig = signature(h.text)
        for rep, members in groups:
            if jaccard(sig, rep) >= NEAR_DUP_JACCARD:
                members.append(h)
                break
        else:
            groups.append((sig, [h]))
    return [members for _sig, members in groups]


def coverage(hit: Hit, keywords: tuple[str, ...]) -> float:
    """The fraction of the keywords found among the post's words (1 with no keywords)."""
    if not keywords:
        return 1.0
    ws = set(words(hit.text))
    return sum(k in ws for k in keywords) / len(keywords)


def informativeness(hit: Hit) -> float:
    """Distinct words / ``INFORMATIVE_WORDS`` capped at 1; 0 for a post carrying
    instructions (prompt injection)."""
    if is_instruction(hit.text):
        return 0.0
    return min(1.0, len(signature(hit.text)) / INFORMATIVE_WORDS)


def engagement(hit: Hit) -> int:
    """likes + reposts + replies."""
    return hit.likes + hit.reposts + hit.replies


def popularity(total: int) -> float:
    """``log(1 + total) / log(1 + 1000)``: ``rank.engagement_score`` without its cap, so
    that among very engaged posts the more engaged still wins."""
    return math.log1p(max(total, 0)) / math.log1p(1000)


def select(hits: list[Hit], keywords: tuple[str, ...], k: int) -> tuple[list[Hit], list[int]]:
    """The ``k`` best posts, one per near-duplicate group (its most engaged member), and
    the group sizes less one. Only posts with the best keyword coverage are kept; among
    them the value is informativeness + ``ENGAGEMENT_WEIGHT`` x popularity, ties broken by
    the search's rank."""
    if not hits:
        return [], []
    best = max(coverage(h, keywords) for h in hits)
    kept = [h for h in hits if coverage(h, keywords) >= best]
    scored = []
    for order, group in enumerate(group_near_duplicates(kept)):
        rep = max(group, key=lambda h: (engagement(h), h.created_us))
        value = informativeness(rep) + ENGAGEMENT_WEIGHT * popularity(engagement(rep))
        if is_instruction(rep.text):
            value -= INSTRUCTION_PENALTY
        scored.append((-value, order, rep, len(group) - 1))
    scored.sort(key=lambda t: (t[0], t[1]))
    top = scored[:k]
    return [t[2] for t in top], [t[3] for t in top]


def topics(hits: list[Hit], exclude: set[str], n: int = 3) -> list[str]:
    """The ``n`` hashtags and capitalised names found in most posts (one count per post,
    at least two posts), less stop words, question words and ``exclude``."""
    counts: Counter[str] = Counter()
    for h in hits:
        counts.update({t if t[0] == "#" else t.lower() for t in _NAME.findall(h.text)})
    out: list[str] = []
    for term, c in counts.most_common():
        if c < 2:
            break
        bare = term.lstrip("#")
        if term in STOPWORDS or bare in QUESTION_WORDS or bare in exclude or len(bare) < 3:
            continue
        if any(bare.lower() == o.lstrip("#").lower() for o in out):
            continue
        out.append(term)
        if len(out) == n:
            break
    return out


def count_matches(index: tantivy.Index, keywords: tuple[str, ...], base: SearchQuery) -> int:
    """How many posts pass ``base``'s filters and contain every keyword."""
    Q, Occur = tantivy.Query, tantivy.Occur
    filters, _ = build_query(index.schema, replace(base, q=""))
    must = [(Occur.Must, filters)]
    must += [
        (Occur.Must, Q.term_query(index.schema, "text", t)) for t in query_terms(" ".join(keywords))
    ]
    return index.searcher().search(Q.boolean_query(must), 1, count=True).count


def _engaged(svc: GrokService, sq: SearchQuery, above: int) -> list[Hit]:
    """Posts matching ``sq`` more engaged than ``above``, up to the most engaged: each
    round asks for posts above the best engagement seen so far, until a round returns
    fewer than ``ENGAGED_CANDIDATES`` (then it held every post above its threshold)."""
    out: list[Hit] = []
    for _round in range(ENGAGED_ROUNDS):
        batch = svc.search(replace(sq, min_engagement=above + 1, limit=ENGAGED_CANDIDATES))
        out += batch
        if len(batch) < ENGAGED_CANDIDATES:
            break
        above = max(engagement(h) for h in batch)
    return out


def _search_all(
    svc: GrokService,
    q: str,
    base: SearchQuery,
    authors: tuple[str, ...],
    excluded: tuple[str, ...] = (),
) -> list[Hit]:
    """Search once per author (or once), merged by id, best first, less the ``excluded``
    authors; plus the most engaged
    matching posts (``_engaged``: the ranked search weighs engagement only lightly, and the
    most engaged posts are the ones an answer should not miss)."""
    seen: dict[str, Hit] = {}
    for author in authors or (None,):
        sq = replace(base, q=q, author=author)
        hits = svc.search(sq)
        if len(hits) == base.limit:  # there may be more engaged ones beyond the first page
            hits += _engaged(svc, sq, max(engagement(h) for h in hits))
        for h in hits:
            if h.author not in excluded:
                seen.setdefault(h.id, h)
    return sorted(seen.values(), key=lambda h: h.score, reverse=True)


def _per_trend(
    svc: GrokService,
    trends: list[Trend],
    base: SearchQuery,
    authors: tuple[str, ...],
    params: SearchParams,
) -> tuple[list[Hit], list[int]]:
    """For an overview: the best posts of each trend in turn, each post once (trends that
    share posts, like "flash" and "flood", give the next best ones)."""
    per_trend = max(1, params.max_results // max(1, len(trends)))
    hits: list[Hit] = []
    similar: list[int] = []
    for t in trends:
        found = _search_all(svc, t.term, base, authors, params.excluded)
        top, sim = select(found, tuple(query_terms(t.term)), per_trend + len(hits))
        new = [(h, n) for h, n in zip(top, sim, strict=True) if h.id not in {x.id for x in hits}]
        hits += [h for h, _n in new[:per_trend]]
        similar += [n for _h, n in new[:per_trend]]
    return hits, similar


def dated(q: Question, params: SearchParams) -> Question:
    """``q`` with the window ``from_date``/``to_date`` set, which override the question's
    (a bound not given keeps the question's), and a label that says so."""
    since = params.since_us if params.since_us is not None else q.since_us
    until = params.until_us if params.until_us is not None else q.until_us
    if since is not None and until is not None:
        label = f"between {iso_utc(since)} and {iso_utc(until)}"
    elif since is not None:
        label = f"since {iso_utc(since)}"
    else:
        label = f"until {iso_utc(until)}"
    return replace(q, since_us=since, until_us=until, window=label)


def retrieve(
    svc: GrokService, q: Question, params: SearchParams, now_us: int | None = None
) -> Context:
    """The context for ``q`` (see the module docstring)."""
    if params.mode == "off":
        return Context(q)
    t0 = time.perf_counter()
    took: dict[str, float] = {}
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    if params.since_us is not None or params.until_us is not None:
        q = dated(q, params)
    since, until = q.since_us, q.until_us
    authors = tuple(dict.fromkeys(params.included + q.authors))
    base = SearchQuery(since_us=since, until_us=until, limit=CANDIDATES)
    index = svc.indexer.index
    overview = q.overview or not (q.keywords or authors)
    trends: list[Trend] = []
    keywords = q.keywords
    if overview:
        window_s = (now_us - since) / 1e6 if since is not None else 900.0
        try:
            trends = svc.top_trends(max(window_s, 60.0), limit=5, min_count=3)
        except TrendsUnavailable as exc:
            raise SourcesUnavailable(f"trends cannot be read right now ({exc})") from None
        took["trends"] = round((time.perf_counter() - t0) * 1000, 1)
        keywords = ()
        hits, similar = _per_trend(svc, trends[:3], base, authors, params)
        pool = hits
    else:
        pool = _search_all(svc, q.query, base, authors, params.excluded)
        hits, similar = select(pool, keywords, params.max_results)
    matched = sum(
        count_matches(index, keywords, replace(base, author=a)) for a in authors or (None,)
    )
    exclude = set(keywords) | {a.lower() for a in authors}
    found = topics(pool, exclude)
    took["retrieve"] = round((time.perf_counter() - t0) * 1000, 1)
    return Context(
        q,
        hits[: params.max_results],
        similar[: params.max_results],
        matched,
        found,
        trends,
        True,
        took,
    )
