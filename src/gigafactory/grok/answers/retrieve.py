"""Retrieval: the numbered posts a backend answers from, and the counts it reports.

``retrieve`` runs the ranked search (``GrokService.search``) for the question's keywords in its
window, per named author; an overview question ("what is happening?") searches the top
trending terms instead. ``select`` then groups near-duplicates (word-set Jaccard similarity
>= ``NEAR_DUP_JACCARD``, Broder 1997 "On the resemblance and containment of documents") and
keeps one post per group, preferring posts that contain more of the keywords, are more
informative (distinct words, no injected instructions) and more engaged.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import tantivy

from gigafactory.grok.answers.guard import is_instruction
from gigafactory.grok.answers.question import QUESTION_WORDS, Question
from gigafactory.grok.answers.spotlight import Source
from gigafactory.grok.memory.post import words
from gigafactory.grok.memory.rank import engagement_score
from gigafactory.grok.memory.search import Hit, SearchQuery, build_query, query_terms
from gigafactory.grok.memory.service import GrokService
from gigafactory.grok.memory.trends import STOPWORDS, Trend

NEAR_DUP_JACCARD = 0.6
CANDIDATES = 60
INFORMATIVE_WORDS = 12
INSTRUCTION_PENALTY = 2.0  # posts carrying instructions come last
_NAME = re.compile(
    r"(?<![\w#])#[^\W_]\w{1,63}|\b[A-Z][^\W\d_]{2,}\b"
)  # distinct words at which a post counts as fully informative


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


def select(hits: list[Hit], keywords: tuple[str, ...], k: int) -> tuple[list[Hit], list[int]]:
    """The ``k`` best posts, one per near-duplicate group (its most engaged member), and
    the group sizes less one. Only posts with the best keyword coverage are kept."""
    if not hits:
        return [], []
    best = max(coverage(h, keywords) for h in hits)
    kept = [h for h in hits if coverage(h, keywords) >= best]
    scored = []
    for order, group in enumerate(group_near_duplicates(kept)):
        rep = max(group, key=lambda h: (engagement(h), h.created_us))
        value = informativeness(rep) + engagement_score(engagement(rep), 1000) + rep.score
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


def _search_all(svc: GrokService, q: str, base: SearchQuery, authors: tuple[str, ...]) -> list[Hit]:
    """Search once per author (or once), merged by id, best first."""
    seen: dict[str, Hit] = {}
    for author in authors or (None,):
        for h in svc.search(replace(base, q=q, author=author)):
            seen.setdefault(h.id, h)
    return sorted(seen.values(), key=lambda h: h.score, reverse=True)


def retrieve(
    svc: GrokService, q: Question, params: SearchParams, now_us: int | None = None
) -> Context:
    """The context for ``q`` (see the module docstring)."""
    if params.mode == "off":
        return Context(q)
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    since = params.since_us if params.since_us is not None else q.since_us
    until = params.until_us if params.until_us is not None else q.until_us
    authors = tuple(dict.fromkeys(params.included + q.authors))
    base = SearchQuery(since_us=since, until_us=until, limit=CANDIDATES)
    index = svc.indexer.index
    overview = q.overview or not (q.keywords or authors)
    trends: list[Trend] = []
    keywords = q.keywords
    if overview:
        window_s = (now_us - since) / 1e6 if since is not None else 900.0
        trends = svc.top_trends(max(window_s, 60.0), limit=5, min_count=3)
        keywords = ()
        per_trend = max(1, params.max_results // max(1, min(3, len(trends))))
        hits, similar = [], []
        for t in trends[:3]:
            found = [
                h
                for h in _search_all(svc, t.term, base, authors)
                if h.author not in params.excluded
            ]
            top, sim = select(found, tuple(query_terms(t.term)), per_trend)
            hits += [h for h in top if h not in hits]
            similar += sim[: len(top)]
        pool = hits
    else:
        pool = [
            h for h in _search_all(svc, q.query, base, authors) if h.author not in params.excluded
        ]
        hits, similar = select(pool, keywords, params.max_results)
    matched = sum(
        count_matches(index, keywords, replace(base, author=a)) for a in authors or (None,)
    )
    exclude = set(keywords) | {a.lower() for a in authors}
    return Context(
        q,
        hits[: params.max_results],
        similar[: params.max_results],
        matched,
        topics(pool, exclude),
        trends,
        True,
    )
