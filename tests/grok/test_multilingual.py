"""Search in the languages the stream carries (issue 10): every script finds its words, case
and accents fold, unspaced scripts match by characters, emoji are content, punctuation-only
queries find nothing."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta

import pytest

from gigafactory.grok.memory.generator import TOPICS, generate_posts
from gigafactory.grok.memory.log import created_us
from gigafactory.grok.memory.search import SearchQuery

from .conftest import ingest_and_wait, post

# (id, text, queries that must find it)
CORPUS = [
    ("ja1", "東京タワーに行きました", ["東京", "タワー", "東京タワー", "行きました"]),
    ("zh1", "我爱北京天安门", ["北京", "天安门", "爱"]),
    ("ko1", "서울에서 친구를 만났어요", ["서울", "친구"]),
    ("hi1", "मुझे हिन्दी भाषा पसंद है", ["हिन्दी", "भाषा"]),
    ("th1", "ฉันชอบกรุงเทพมาก", ["กรุงเทพ"]),
    ("tr1", "İstanbul çok güzel", ["istanbul", "İSTANBUL", "cok", "güzel"]),
    ("de1", "Die Straße in München ist schön", ["strasse", "munchen", "München", "SCHÖN"]),
    ("fr1", "Élève à l'école française", ["eleve", "ecole", "FRANÇAISE"]),
    ("ru1", "Привет из Москвы", ["привет", "МОСКВЫ"]),
    ("el1", "Καλημέρα Αθήνα", ["αθήνα", "ΚΑΛΗΜΈΡΑ"]),  # no accent folding outside Latin
    ("ar1", "مرحبا بالعالم", ["مرحبا"]),
    ("em1", "launch day 🚀 at the pad", ["🚀"]),
    ("en1", "Tokyo tower at night #travel", ["tokyo", "#travel"]),
    ("zh2", "上海的天气很好", ["上海"]),
    ("ja2", "大阪城は美しい", ["大阪"]),
    ("th2", "ไม่ต้องห่วงนะ", ["ต้อง", "ห่วง"]),  # tone marks inside the phrase
    ("hi2", "नमस्ते दुनिया", ["नमस्ते"]),
    ("sym1", "$TSLA up +5% today ❤️", ["$", "+", "❤️", "❤", "$TSLA"]),
    ("pua1", "odd \ue000 private \ua66e letter", ["\ua66e", "private"]),
    ("hi3", "प्रधानमंत्री मोदी ने कहा", ["प्रधानमंत्री"]),  # 36 bytes, 3 viramas
    ("ja3", "葛\U000e0100飾区に住んでいます", ["葛飾"]),  # a variation selector inside
    ("ja4", unicodedata.normalize("NFD", "かがみを見た"), [unicodedata.normalize("NFD", "がみ")]),
    ("ja5", unicodedata.normalize("NFD", "ブログnoteを更新"), ["note"]),
    ("em2", "new pink heart 🩷", ["🩷"]),  # newer than Python 3.11's Unicode data
]


@pytest.fixture(scope="module")
def corpus_service(tmp_path_factory):
    from gigafactory.grok.memory.service import GrokService
    from gigafactory.grok.settings import GrokSettings

    settings = GrokSettings.load(
        {}, data_dir=tmp_path_factory.mktemp("ml") / "d", api_keys="k", commit_interval_s=0.05
    )
    svc = GrokService(settings)
    ingest_and_wait(svc, [post(pid, text, age_s=30) for pid, text, _q in CORPUS])
    yield svc
    svc.close()


def _ids(svc, q: str, **kw) -> list[str]:
    return [h.id for h in svc.search(SearchQuery(q=q, limit=100, **kw))]


@pytest.mark.parametrize(
    ("pid", "q"), [(pid, q) for pid, _text, qs in CORPUS for q in qs], ids=lambda v: str(v)
)
def test_each_script_finds_its_words(corpus_service, pid, q):
    got = _ids(corpus_service, q)
    assert got and got[0] == pid, (q, got)


@pytest.mark.parametrize(
    ("q", "not_pid"), [("北京", "ja1"), ("東京", "zh1"), ("上海", "zh1"), ("大阪", "ja1")]
)
def test_unspaced_words_do_not_match_other_words_sharing_a_character(corpus_service, q, not_pid):
    assert not_pid not in _ids(corpus_service, q)


@pytest.mark.parametrize("q", ["***", "!!!", "...", "#", "()"])
def test_query_without_indexable_words_finds_nothing(corpus_service, q):
    assert _ids(corpus_service, q) == []


def test_search_shows_each_text_exactly_as_posted(corpus_service):
    """The index holds an index form of the text (``analysis``); hits show the original."""
    for pid, text, _q in CORPUS:
        hits = corpus_service.search(SearchQuery(q=text, limit=100))
        assert [h.text for h in hits if h.id == pid] == [text]


def test_emoji_query_finds_exactly_the_posts_with_it(corpus_service):
    assert _ids(corpus_service, "🚀") == ["em1"]
    assert _ids(corpus_service, "🔥") == []


def test_generated_entity_mentions_are_findable_in_every_language(make_service):
    """Recall of the generator's entity mentions, per language (the issue saw about a third
    of the Japanese ones found). A mention is the entity not inside a longer ASCII word
    ("Monaco" in "#MonacoGP" is not one); "Starshipの" is one."""
    svc = make_service()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=120)
    posts = list(generate_posts(1500, seed=7, start=start, rate=50))
    ingest_and_wait(svc, [p.model_dump(mode="json") for p in posts])
    entities = {e for t in TOPICS for e in t.entities}
    checked: dict[str, list[bool]] = {}
    for p in posts:
        for e in sorted(entities):
            if re.search(rf"(?<![^\W_]){re.escape(e)}(?![^\W_])", p.text, re.ASCII):
                t_us = created_us(p.created_at)  # narrow to this post's author and time
                found = p.id in _ids(svc, e, author=p.author, since_us=t_us, until_us=t_us)
                checked.setdefault(p.lang, []).append(found)
                break
    assert {"ja", "en", "es", "de", "fr", "pt"} <= set(checked)
    recall = {lang: sum(v) / len(v) for lang, v in checked.items()}
    assert all(r == 1.0 for r in recall.values()), recall
