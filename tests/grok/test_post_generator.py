"""Post validation and the synthetic generator."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gigafactory.grok import MAX_TEXT_CHARS, EngagementUpdate, Post
from gigafactory.grok.memory.generator import (
    burst_weight,
    engagement_at,
    generate_events,
    generate_posts,
    post_texts,
)
from gigafactory.grok.memory.ingest import BatchError, BatchTooLarge, parse_batch, validate_posts
from gigafactory.grok.memory.post import hashtags, mentions, strip_controls

from .conftest import NOW, post


def test_post_cleans_controls_and_normalises_time():
    p = Post.model_validate(post("a1", "hi\x00 there\x1b[0m\u202e!", age_s=0))
    assert p.text == "hi there[0m!"
    naive = Post.model_validate({**post("a2", "x"), "created_at": "2025-01-01T00:00:00"})
    assert naive.created_at.tzinfo is not None and naive.created_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (post("a", "x" * (MAX_TEXT_CHARS + 1)), "oversized"),
        (post("bad id!", "x"), "malformed"),
        (post("a", "x", author="no spaces allowed"), "malformed"),
        (post("a", "\x00\x01"), "malformed"),
        ({**post("a", "x"), "likes": -1}, "malformed"),
        ({**post("a", "x"), "extra": 1}, "malformed"),
        ({"id": "a", "text": "no author"}, "malformed"),
        (post("a", "x", age_s=-3600), "future"),
        ([1, 2], "malformed"),
    ],
)
def test_validation_refuses_with_reason(item, reason):
    ok, refused = validate_posts([post("good", "fine"), item])
    assert [i for i, _ in ok] == [0]
    assert len(refused) == 1 and refused[0].index == 1 and refused[0].reason == reason
    assert refused[0].message


def test_future_skew_is_allowed():
    ok, refused = validate_posts([post("a", "x", age_s=-60)], now=NOW, max_future_s=300)
    assert len(ok) == 1 and not refused


def test_parse_batch_array_and_lines():
    assert len(parse_batch(b'[{"a":1},{"b":2}]', 10)) == 2
    assert len(parse_batch(b'{"a":1}\n\n{"b":2}\n', 10)) == 2
    for bad in (b"", b"[1,", b'{"a":1}\nnope', b'{"a": [1]}'[:5]):
        with pytest.raises(BatchError):
            parse_batch(bad, 10)
    with pytest.raises(BatchTooLarge):
        parse_batch(b"[" + b",".join([b"{}"] * 11) + b"]", 10)


def test_text_helpers():
    assert hashtags("go #Starship and #AI!") == ["starship", "ai"]
    assert mentions("@bob hi @carol_1") == ["bob", "carol_1"]
    assert strip_controls("a\tb\nc\x07") == "a\tb\nc"


def test_generator_is_deterministic_and_seed_dependent():
    a = [p.model_dump() for p in generate_posts(300, seed=7)]
    b = [p.model_dump() for p in generate_posts(300, seed=7)]
    c = [p.model_dump() for p in generate_posts(300, seed=8)]
    assert a == b and a != c
    events = list(generate_events(300, seed=7))
    assert [e.model_dump() for e in events if isinstance(e, Post)] == a
    assert list(post_texts(5, seed=7)) == [p["text"] for p in a[:5]]


def test_generator_properties():
    posts = list(generate_posts(6000, seed=3, start=datetime(2025, 1, 1, tzinfo=UTC), rate=500))
    ids = [p.id for p in posts]
    assert len(set(ids)) == len(ids)
    # every post passes the service's validation once cleaned
    for p in posts[:2000]:
        Post.model_validate(p.model_dump())
    # times increase at about the requested rate
    span = (posts[-1].created_at - posts[0].created_at).total_seconds()
    assert 10 < span < 14
    assert all(a.created_at <= b.created_at for a, b in itertools.pairwise(posts))
    # skewed authors: the busiest author posts far more than the median one
    counts = Counter(p.author for p in posts)
    assert (
        len(counts) > 1000
        and counts.most_common(1)[0][1] > 20 * sorted(counts.values())[len(counts) // 2]
    )
    # several languages, hashtags, mentions, replies and quotes to earlier ids
    assert {"en", "es", "fr", "de", "pt", "ja"} <= {p.lang for p in posts}
    assert sum(bool(hashtags(p.text)) for p in posts) > 1000
    assert sum(bool(mentions(p.text)) for p in posts) > 500
    seen = set()
    refs = 0
    for p in posts:
        for ref in (p.reply_to, p.quote_of):
            if ref is not None:
                assert ref in seen
                refs += 1
        seen.add(p.id)
    assert refs > 600
    # a few hostile posts
    texts = [p.text for p in posts]
    assert any(
        "Ignore all previous instructions" in t or "SYSTEM:" in t or "<|im_start|>" in t
        for t in texts
    ) or any(any(len(w) > 100 for w in t.split()) for t in texts)
    assert any(strip_controls(t) != t for t in texts)
    # varied text (templates x vocabularies)
    assert len(set(texts)) > 0.6 * len(texts)


def test_trending_topics_burst_and_fade():
    posts = list(generate_posts(30000, seed=1, rate=50))  # 600 simulated seconds
    tags_by_minute: dict[int, Counter[str]] = {}
    t0 = posts[0].created_at
    for p in posts:
        m = int((p.created_at - t0).total_seconds() // 60)
        tags_by_minute.setdefault(m, Counter()).update(hashtags(p.text))
    # some hashtag's share varies by a large factor across minutes (a burst)
    tags = set().union(*tags_by_minute.values())
    swing = max(
        max(c.get(t, 0) for c in tags_by_minute.values())
        / (1 + min(c.get(t, 0) for c in tags_by_minute.values()))
        for t in tags
    )
    assert swing > 20


def test_engagement_updates_grow_after_posting():
    events = list(generate_events(2000, seed=5))
    ups: dict[str, list[EngagementUpdate]] = {}
    created = {}
    for e in events:
        if isinstance(e, Post):
            created[e.id] = e.created_at
        else:
            assert e.id in created and e.at > created[e.id]  # updates follow their post
            ups.setdefault(e.id, []).append(e)
    assert len(ups) > 200
    for seq in ups.values():
        likes = [u.likes for u in seq]
        assert likes == sorted(likes)


@given(st.integers(0, 10**6), st.floats(0, 1e5), st.floats(0, 1e5))
def test_engagement_at_is_monotone_and_bounded(final, a, b):
    lo, hi = sorted((a, b))
    assert 0 <= engagement_at(final, lo) <= engagement_at(final, hi) <= final


def test_burst_weight_rises_then_fades():
    w = [burst_weight(t, 5.0, 100.0) for t in (0, 10, 60, 300, 1000)]
    assert w[0] == 0 and w[1] < w[2] and w[2] > w[3] > w[4]
    assert burst_weight(-1, 5, 100) == 0


def test_post_requires_fields():
    with pytest.raises(ValidationError):
        Post.model_validate({"id": "x"})
