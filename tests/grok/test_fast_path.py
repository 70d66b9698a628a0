"""The hot ingest path (``prepare_posts`` / ``fast_post``) against the reference: the pydantic
``Post`` model + ``post_body``. Same verdicts, same messages, byte-identical log documents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gigafactory.grok.memory.generator import generate_posts
from gigafactory.grok.memory.ingest import fast_post, prepare_posts, validate_posts
from gigafactory.grok.memory.log import post_body

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)

STAMPS = [
    "2026-05-01T11:59:00Z",
    "2026-05-01T11:59:00",
    "2026-05-01T11:59:00.5Z",
    "2026-05-01T11:59:00.123456+00:00",
    "2026-05-01T11:59:00.1234567Z",
    "2026-05-01T16:29:00+05:30",
    "2026-05-01T06:59:00-05:00",
    "2026-05-01T12:04:59Z",  # just inside the 300 s of allowed skew
    "2026-05-01T12:05:01Z",  # future
    "2030-01-01T00:00:00Z",
    "2026-05-01",
    "2026-05-01 11:59:00",
    "2026-05-01T11:59:00z",
    "2026-13-01T00:00:00Z",
    "2026-05-01T24:00:00Z",
    "2026-05-01T11:59:60Z",
    "2026-05-01T11:59:00+25:00",
    "٢٠٢٦-05-01T11:59:00Z",
    "yesterday",
    "",
    1_777_000_000,
    1_777_000_000.5,
    None,
]
IDS = ["a1", "ok.id:-_9", "x" * 64, "x" * 65, "bad id", "", "ü", "a1\n", 7, None]
TEXTS = [
    "hello #world",
    "x" * 4000,
    "x" * 4001,
    "\x00\x01",
    " \u200b ",
    "hi\x00 there\x1b[0m\u202e!",
    "a" + "\x07" * 5000,
    "🚀" * 10,
    "",
    5,
    None,
]
COUNTS = [0, 1, 10**12, 10**12 + 1, -1, True, 1.0, 2.5, "5", None]
LANGS = ["en", "pt-BR", "und", "EN", "e", "en-", "zh-Hant", "", 3]


def _field(values: list[Any], text: st.SearchStrategy | None = None) -> st.SearchStrategy:
    s = st.sampled_from(values)
    return s if text is None else st.one_of(s, text)


ITEMS = st.fixed_dictionaries(
    {},
    optional={
        "id": _field(IDS, st.text(max_size=66)),
        "author": _field(["alice", "a" * 33, "no spaces", "bob_1", 1], st.text(max_size=8)),
        "text": _field(TEXTS, st.text(max_size=40)),
        "created_at": _field(STAMPS),
        "lang": _field(LANGS),
        "likes": _field(COUNTS),
        "reposts": _field(COUNTS),
        "replies": _field(COUNTS),
        "reply_to": _field(IDS),
        "quote_of": _field(IDS),
        "extra": st.just(1),
    },
)
# most items: a valid post with one to three fields replaced (or dropped), so every odd value
# above meets an otherwise valid item
BASE = {"id": "p1", "author": "alice", "text": "fine", "created_at": "2026-05-01T11:00:00Z"}
VALUES = {
    "id": IDS,
    "author": ["alice", "a" * 33, "no spaces", "bob_1", 1],
    "text": TEXTS,
    "created_at": STAMPS,
    "lang": LANGS,
    "likes": COUNTS,
    "reposts": COUNTS,
    "replies": COUNTS,
    "reply_to": IDS,
    "quote_of": IDS,
    "extra": [1],
}
_DROP = object()
MUTATION = st.sampled_from(sorted(VALUES)).flatmap(
    lambda k: st.tuples(st.just(k), st.sampled_from([*VALUES[k], _DROP]))
)


@st.composite
def _mutated(draw: st.DrawFn) -> dict[str, Any]:
    item = dict(BASE)
    for key, value in draw(st.lists(MUTATION, min_size=1, max_size=3)):
        if value is _DROP:
            item.pop(key, None)
        else:
            item[key] = value
    return item


COMPLETE = _mutated()


def _reference(items: list[Any]) -> tuple[dict[int, tuple], dict[int, tuple]]:
    ok, refused = validate_posts(items, NOW, 300)
    accepted = {i: (p.id, post_body(p)) for i, p in ok}
    return accepted, {r.index: (r.id, r.reason, r.message) for r in refused}


def _fast(items: list[Any]) -> tuple[dict[int, tuple], dict[int, tuple]]:
    ready, refused = prepare_posts(items, NOW, 300)
    accepted = {
        i: (pid, body)
        for i, pid, body in zip(ready.positions, ready.ids, ready.bodies, strict=True)
    }
    return accepted, {r.index: (r.id, r.reason, r.message) for r in refused}


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(ITEMS, COMPLETE, st.integers(), st.lists(st.none())), max_size=4))
def test_fast_path_agrees_with_the_post_model(items):
    assert _fast(items) == _reference(items)


def test_generated_feed_takes_the_fast_path_and_matches():
    start = NOW - timedelta(hours=1)
    items = [p.model_dump(mode="json") for p in generate_posts(3000, seed=5, start=start)]
    assert all(fast_post(it) is not None for it in items)  # hostile posts included
    fast, ref = _fast(items), _reference(items)
    assert len(fast[0]) == 3000 and fast == ref
