"""The index form of post text (``analysis``): it undoes exactly, it is rewritten inside the
logged JSON without touching anything else, and tantivy's ``simple`` tokenizer over it gives
the tokens of ``analysis.RULES`` (the Unicode regex the index tokenized with before)."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime

import orjson
import pytest
import tantivy
from hypothesis import given, settings
from hypothesis import strategies as st

from gigafactory.grok.memory.analysis import (
    ESC,
    MAX_TOKEN_BYTES,
    SEP,
    index_document,
    index_text,
    rules_analyzer,
    shown_text,
    text_analyzer,
)
from gigafactory.grok.memory.generator import generate_posts
from gigafactory.grok.memory.log import post_document, with_counts

# text, then the tokens the rules give it
EXAMPLES = [
    ("東京タワーに行きました", "東 京 タ ワ ー に 行 き ま し た"),
    ("서울에서 친구를", "서 울 에 서 친 구 를"),
    ("मुझे हिन्दी भाषा पसंद है", "मुझे हिन्दी भाषा पसंद है"),  # viramas inside words
    ("ไม่ต้องห่วง", "ไ ม ่ ต ้ อ ง ห ่ ว ง"),  # Thai tone marks are characters too
    ("İstanbul çok güzel, Straße!", "istanbul cok guzel strasse"),
    ("launch day 🚀🚀 at the pad", "launch day 🚀 🚀 at the pad"),
    ("$TSLA +5% <3 a=b ^_^ `x` |y| ~z", "$ tsla + 5 < 3 a = b ^ ^ ` x ` | y | ~ z"),
    ("48時間ずっとKyotoの話してる 📈", "48 時 間 ず っ と kyoto の 話 し て る 📈"),
    ("snake_case and dot.ted, ok?", "snake case and dot ted ok"),
    (f"odd {SEP} private {ESC}letter{ESC}", f"odd private {ESC}letter{ESC}"),
    ("x" * (MAX_TOKEN_BYTES + 1) + " short", "short"),
    ("ab \u0301 cd 葛\U000e0100飾 ❤️ 1️⃣", "ab cd 葛 飾 ❤ 1️⃣"),  # marks after no letter drop
    ("प्रधानमंत्री ने", "प्रधानमंत्री ने"),  # escaped viramas stay under the length limit
    (unicodedata.normalize("NFD", "ブログnoteを"), "フ ロ ク note を"),  # lone dakuten
]


@pytest.fixture(scope="module")
def rules():
    return rules_analyzer()


def tokens(text: str) -> list[str]:
    """The index's tokens of ``text``, shown as the characters they stand for."""
    return [shown_text(t) for t in text_analyzer().analyze(index_text(text))]


@pytest.mark.parametrize(("text", "want"), EXAMPLES)
def test_examples_give_the_tokens_of_the_rules(rules, text, want):
    if SEP not in text:  # the rules drop a private-use character; the index keeps it
        assert rules.analyze(text) == want.split()
    expected = want.split() if SEP not in text else ["odd", SEP, "private", f"{ESC}letter{ESC}"]
    assert tokens(text) == expected


def test_generated_posts_of_every_language_give_the_tokens_of_the_rules(rules):
    start = datetime(2026, 12, 1, tzinfo=UTC)
    posts = list(generate_posts(6000, seed=11, start=start, rate=100))
    assert {"ja", "en", "es", "de", "fr", "pt"} <= {p.lang for p in posts}
    differ = [p.text for p in posts if tokens(p.text) != rules.analyze(p.text)]
    assert differ == []


@given(st.text(alphabet=st.sampled_from(f"aZ9 .$+~{SEP}{ESC}東ก่ि्😀\ufe0f\u0301é")))
@settings(max_examples=400, deadline=None)
def test_index_form_undoes_exactly_on_the_characters_it_rewrites(text):
    assert shown_text(index_text(text)) == text


@given(st.text())
@settings(max_examples=400, deadline=None)
def test_index_form_undoes_exactly_on_any_text(text):
    assert shown_text(index_text(text)) == text


@given(st.text(alphabet=st.sampled_from('an\\"\n\t /$😀東\u0301\u094d\ufe0fि'), max_size=30))
@settings(max_examples=400, deadline=None)
def test_a_logged_body_gets_the_index_form_of_its_text(text):
    """Rewritten inside the JSON (escapes like "\\n" before a mark included) or parsed, the
    document's text is ``index_text`` of the post's."""
    body = post_document("p1", "a", text, datetime(2026, 12, 7, tzinfo=UTC))
    assert orjson.loads(index_document(body))["text"] == index_text(text)


def test_plain_text_is_its_own_index_form():
    text = "Plain ASCII, with punctuation: (ok)! #tag @handle 100%"
    assert index_text(text) is text
    body = post_document("p1", "a", text, datetime.now(UTC))
    assert index_document(body) is body


TRICKY = [
    'quote " and backslash \\ and a JSON-looking ","created_at":" inside 🚀',
    "ends with a backslash \\",
    "unicode escape look-alike \\u00e9 and é",
    "東京 $5 ❤️",
    "plain",
    "a line\n\u0301second and a tab\t\u094dहिन्दी",  # a mark after an escaped control: lone
    "a\\n\u0301 b",  # a mark after a backslash and an n: in the word "ń"
]


@pytest.mark.parametrize("text", TRICKY)
def test_index_document_rewrites_the_text_and_nothing_else(text):
    body = post_document("p1", "a", text, datetime(2026, 12, 7, tzinfo=UTC), "ja", 1, 2, 3, "r1")
    # the same post as a body of another key order, and with \u escapes (stdlib json)
    reordered = json.dumps(dict(reversed(list(orjson.loads(body).items()))), ensure_ascii=False)
    escaped = json.dumps(orjson.loads(body))
    updated = with_counts(body, '{"likes": 7}')
    for b in (body, reordered, escaped, updated):
        got, orig = orjson.loads(index_document(b)), orjson.loads(b)
        assert got["text"] == index_text(text)
        assert shown_text(got["text"]) == text
        assert {k: v for k, v in got.items() if k != "text"} == {
            k: v for k, v in orig.items() if k != "text"
        }


def test_every_character_tokenizes_as_the_rules_say(rules):
    """Each character of the BMP and the next two planes, inside and between words, after an
    unspaced character and after an emoji, gives the tokens of ``RULES``, except: a symbol
    the rules' ASCII folding turns into punctuation or a letter ("＄" -> "$", "Ⓐ" -> "a")
    stays itself; the private-use characters the index form uses are tokens; and letters
    newer than the regex's Unicode tables are letters (tantivy's ``simple`` knows them)."""
    known = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(r"[\p{L}\p{M}\p{N}\p{S}]")).build()
    differ = []
    for code in range(0x80, 0x30000):
        c = chr(code)
        if 0xD800 <= code < 0xE000:
            continue
        for text in (f"ab {c} cd", f"ab{c}cd", f"東{c}京", f"🚀{c}x"):
            if tokens(text) != rules.analyze(text):
                differ.append(c)
                break
    folded = [c for c in differ if rules.analyze(c) not in ([c], [])]
    reserved = [c for c in differ if 0xE000 <= ord(c) < 0xE020]
    newer = [c for c in differ if not known.analyze(c) and len(tokens(c)) == 1]
    assert set(differ) == set(folded) | set(reserved) | set(newer)
    assert len(folded) < 200 and all(tokens(c) == [c] for c in folded)


def test_the_form_works_without_pythons_unicode_data_for_newer_characters():
    assert tokens("new pink heart 🩷") == ["new", "pink", "heart", "🩷"]  # Unicode 15
