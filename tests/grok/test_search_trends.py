"""Search filters and ranking, query input as data, trends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigafactory.grok.memory.rank import (
    RankWeights,
    combined_score,
    engagement_score,
    recency_score,
)
from gigafactory.grok.memory.search import SearchQuery, build_query, query_clauses, search
from gigafactory.grok.memory.trends import TrendCounter, parse_window, trend_score, trend_terms

from .conftest import NOW, ingest_and_wait, post

US = 1_000_000


@pytest.fixture
def svc(make_service):
    s = make_service()
    items = [
        post("old", "rocket launch today", age_s=3 * 86400, author="bob", lang="en"),
        post("new", "rocket launch today", age_s=60, author="bob", lang="en"),
        post("es1", "lanzamiento del rocket hoy", age_s=120, author="ana", lang="es"),
        post("pop", "rocket", age_s=7200, author="carol", likes=5000, reposts=100),
        post("weak", "a rocket among many many other unrelated filler words here", age_s=10),
        post("other", "nothing to see", age_s=5),
    ]
    ingest_and_wait(s, items)
    return s


def ids(s, **kw):
    return [h.id for h in s.search(SearchQuery(**kw))]


def test_filters(svc):
    now_us = int(NOW.timestamp() * US)
    assert set(ids(svc, q="rocket", author="bob")) == {"old", "new"}
    assert ids(svc, q="rocket", lang="es") == ["es1"]
    assert ids(svc, q="rocket", min_engagement=1000) == ["pop"]
    assert "old" not in ids(svc, q="rocket", since_us=now_us - 86400 * US)
    assert ids(svc, q="rocket", until_us=now_us - 86400 * US) == ["old"]
    assert ids(svc, q="nothing") == ["other"]
    assert ids(svc, q="rocket", limit=2).__len__() == 2
    # no query text: newest first, filters still apply
    assert ids(svc, limit=2) == ["other", "weak"]
    assert ids(svc, author="carol") == ["pop"]
    assert ids(svc, q="zzzunknown") == []


def test_ranking_combines_relevance_recency_engagement(svc):
    got = ids(svc, q="rocket launch today")
    assert got.index("new") < got.index("old")  # same text, the recent one first
    assert got[0] == "new"
    # with only text relevance, the exact match beats the long filler post
    text_only = RankWeights(recency=0.0, engagement=0.0)
    order = [h.id for h in search(svc.indexer.index, SearchQuery(q="rocket"), text_only)]
    assert order.index("pop") < order.index("weak")
    heavy_eng = RankWeights(text=0.1, recency=0.0, engagement=5.0)
    order = [h.id for h in search(svc.indexer.index, SearchQuery(q="rocket"), heavy_eng)]
    assert order[0] == "pop"


@pytest.mark.parametrize(
    "q", ['"foo AND (', "title:*", "text:[* TO *]", "a OR", ")(", "*", "\\", "NOT", "~2^", "ü" * 80]
)
def test_query_syntax_is_data(svc, q):
    svc.search(SearchQuery(q=q))  # never raises


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_any_query_text_builds_a_query(q):
    import tantivy

    from gigafactory.grok.memory.index import build_schema

    schema = build_schema()
    build_query(schema, SearchQuery(q=q, author=q[:10] or None))
    clauses = query_clauses(q)
    assert len(clauses) <= 32
    tokens = [t for c in clauses for t in ((c,) if isinstance(c, str) else c)]
    assert all(0 < len(t.encode()) <= 40 for t in tokens)
    index = tantivy.Index(schema)
    index.searcher().search(build_query(schema, SearchQuery(q=q))[0], 5)


def test_rank_formulas():
    assert recency_score(0, 3600) == 1.0
    assert recency_score(3600, 3600) == pytest.approx(0.5)
    assert recency_score(-5, 3600) == 1.0
    assert engagement_score(0, 1000) == 0
    assert engagement_score(1000, 1000) == pytest.approx(1.0)
    assert engagement_score(10**6, 1000) == 1.0
    assert 0 < engagement_score(10, 1000) < engagement_score(100, 1000)
    w = RankWeights()
    assert combined_score(10, 10, 0, 0, w) == pytest.approx(1.5)
    assert combined_score(5, 10, 0, 0, w) < combined_score(10, 10, 0, 0, w)


T0 = 1_700_000_000  # a fixed clock for the counter tests
AT_US = (T0 + 60 * 60 - 1) * US  # the last second of the hour the tests fill


def _add(tc: TrendCounter, minute: int, text: str, n: int) -> None:
    for i in range(n):
        tc.add((T0 + minute * 60 + i % 60) * US, text, at_us=AT_US)


def test_trends_find_the_rising_term():
    tc = TrendCounter(bucket_s=60)
    for m in range(60):  # steady chatter for an hour
        _add(tc, m, "steady coffee chatter #morning", 20)
    for m in range(45, 60):  # a burst in the last 15 minutes
        _add(tc, m, "huge #eclipse over the city", 5 + (m - 45) * 3)
    top = tc.top(15 * 60, AT_US, baseline=3)
    assert {t.term for t in top[:3]} == {"#eclipse", "huge", "city"}
    steady = next(t for t in tc.top(15 * 60, AT_US, baseline=3, limit=100) if t.term == "coffee")
    assert steady.score == pytest.approx(0, abs=0.5)
    assert trend_score(10, 10) == 0 and trend_score(20, 5) > trend_score(20, 10)


def test_trend_terms_and_windows():
    assert trend_terms("The #AI model is GREAT 2024 #x1") == ["the", "#ai", "model", "great", "#x1"]
    assert parse_window("15m") == 900 and parse_window("2h") == 7200 and parse_window("30") == 30
    for bad in ("", "abc", "-5m", "0", "nan"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_service_trends_see_ingested_burst(make_service):
    s = make_service()
    base = [post(f"b{i}", "weather talk #rain", age_s=3600 - i * 6) for i in range(400)]
    burst = [post(f"x{i}", "wow #Starship launch", age_s=300 - i) for i in range(120)]
    ingest_and_wait(s, base + burst)
    top = s.top_trends(15 * 60, baseline=3, limit=5)
    assert top[0].term in {"#starship", "starship", "launch", "wow"}
    assert all(t.term not in {"#rain", "rain"} for t in top[:4])


def test_very_common_words_are_dropped_or_searched_newest_first(make_service, monkeypatch):
    from gigafactory.grok.memory import search as search_mod

    monkeypatch.setattr(search_mod, "COMMON_MIN_DOCS", 10)  # a small index counts as large
    s = make_service()
    items = [post(f"c{i}", f"the post number{i} of a day", age_s=7200 - i * 10) for i in range(60)]
    items.append(post("z", "the zebra crossing at one corner", age_s=7000))
    ingest_and_wait(s, items)
    searcher = s.indexer.index.searcher()
    assert search_mod.common_terms(searcher, ["the", "zebra", ("東", "京")]) == {"the"}
    # with another word, the common one is dropped: only that word decides
    assert ids(s, q="the zebra") == ["z"]
    # only common words: the newest matches come first, from the newest time slice
    got = ids(s, q="the a", limit=3)
    assert got == ["c59", "c58", "c57"]
    assert ids(s, q="the", limit=3, since_us=None) == ["c59", "c58", "c57"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZé9_# \n-東京🚀'İ"), max_size=40))
def test_trend_terms_match_the_two_branch_definition(text):
    """The one-lookbehind pattern finds exactly what the definition says: hashtags and words
    of 3+ characters starting with a letter, neither glued to a word character or '#'."""
    import re

    two = re.compile(r"(?<![\w#])#[^\W_]\w{0,63}|(?<![\w#])[^\W\d_][^\W_]{2,}")
    assert trend_terms(text) == two.findall(text.lower())
