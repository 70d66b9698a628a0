"""How post text (and query text) becomes index terms: tantivy's ``simple`` tokenizer over an
*index form* of the text, which ``shown_text`` turns back into the text as posted.

The tokens, for every language of the stream:

- a character of a script written without spaces between words (Han, kana, Thai, Lao, Khmer,
  Myanmar) or of Hangul (whose particles attach to words) is a token of its own; a query word
  of them is a phrase of its characters (``search.query_clauses``), so "東京" finds
  "東京タワーに行きました" and "서울" finds "서울에서" (character n-gram indexing in its
  unigram-plus-positions form, as Lucene's CJK analysers index bigrams);
- a word of any other script is a run of letters, digits and the combining marks inside it,
  so Devanagari "हिन्दी" (whose virama is a mark) stays one word;
- each symbol (emoji, currency, math: Unicode classes So, Sc, Sm, Sk) is a token of its own,
  so a query of an emoji finds the posts containing it; punctuation is dropped;
- then ``ascii_fold`` (Lucene's ASCIIFoldingFilter: "İ" -> "I", "ç" -> "c", "ß" -> "ss") and
  ``lowercase`` fold case and accents, so "istanbul" finds "İstanbul"; tokens over
  ``MAX_TOKEN_BYTES`` are dropped.

``RULES`` writes these rules as a Unicode regex, which is how the index tokenized until
schema 4 (tantivy's regex tokenizer). That tokenizer costs about 0.5 µs per token whatever
the pattern, against under 0.1 µs for ``simple`` (runs of alphanumeric characters), so the
text is rewritten instead into a form ``simple`` splits by the same rules: indexing
generated posts costs a quarter less CPU, rewrite included (``bench/grok_analysis.py``), and
the indexer is nearly half of the CPU a post costs at full ingest. On generated posts of
every language the tokens are the same (``tests/grok/test_analysis.py``).

The index form (``index_text``) leaves plain text alone (ASCII letters, digits, punctuation,
as about half of the posts are) and rewrites, character by character:

- a character of an unspaced script: ``SEP`` + the character + ``SEP`` (``SEP`` is a
  private-use character, not alphanumeric, so ``simple`` splits there);
- a symbol: ``SEP`` + ``ESC`` + its code point in 6 hex digits + ``SEP`` -- a word of
  ``simple`` (``ESC`` is a letter no language writes: CYRILLIC LETTER MULTIOCULAR O);
- a combining mark ``simple`` would split a word at (a virama, a combining accent): ``ESC`` +
  6 hex digits, alphanumeric, so the word stays one token;
- ``SEP`` and ``ESC`` in the text are escaped too (``SEP`` as a symbol is, ``ESC`` as a mark
  is), so the rewrite can be undone.

The index stores the index form and ``shown_text`` undoes it (the log keeps the post as
posted).

Where the tokens differ from ``RULES``: a combining mark that follows no letter (a variation
selector after an emoji, which picks its colour form; a stray accent) is a token of its own
(a stray accent right before a letter starts that letter's word), which queries leave out
(``analyze``); a symbol is matched as written (fullwidth "＄" is not "$", circled "Ⓐ" is not
"a"); and scripts are told by Unicode character names, so the few characters whose names and
scripts disagree ("ー", "〆") count as unspaced.
"""

from __future__ import annotations

import re
import threading
import unicodedata

import orjson
import tantivy

TEXT_ANALYZER = "grok_text"
"""Name under which ``text_analyzer`` is registered on every opened index."""
MAX_TOKEN_BYTES = 40  # longer tokens are dropped (tantivy's RemoveLongFilter limit)
SEP = "\ue000"
"""Separates the characters of unspaced scripts and the escaped symbols in the index form."""
ESC = "\ua66e"
"""Starts an escaped character in the index form: ``ESC`` + 6 lower-case hex digits."""
UNSPACED_NAMES = ("CJK ", "HIRAGANA", "KATAKANA", "HALFWIDTH KATAKANA", "HENTAIGANA", "HANGUL")
UNSPACED_NAMES += ("HALFWIDTH HANGUL", "THAI ", "LAO ", "KHMER ", "MYANMAR ", "KANGXI ")
UNSPACED_NAMES += ("IDEOGRAPHIC ", "HANGZHOU ")
"""Unicode name prefixes of the characters indexed one per token (scripts without spaces)."""
_UNSPACED_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
RULES = (
    rf"[{_UNSPACED_SCRIPTS}]"  # one token per character of a script written without spaces
    r"|[\p{So}\p{Sc}\p{Sm}\p{Sk}]"  # one token per symbol
    rf"|[[\p{{L}}\p{{N}}]--[{_UNSPACED_SCRIPTS}]][[\p{{L}}\p{{M}}\p{{N}}]--[{_UNSPACED_SCRIPTS}]]*"
)
"""The tokens as a Unicode regex (Rust syntax): the reference the index form is held to."""
_SYMBOLS = frozenset(("So", "Sc", "Sm", "Sk"))
_EMOJI_MARKS = (range(0xFE00, 0xFE10), range(0xE0100, 0xE01F0), range(0x20E3, 0x20E4))
"""Variation selectors (after an emoji or a Han character) and the keycap mark ("1️⃣"):
marks that follow symbols, escaped as tokens of their own (``SEP`` on both sides)."""

_PLAIN_ASCII_SYMBOLS = re.compile(r"[$+<=>^`|~]")
"""The ASCII characters ``index_text`` rewrites (symbols; other punctuation is dropped)."""
_TO_REWRITE = re.compile(r"[^\x00-\x23\x25-\x2a\x2c-\x3b\x3f-\x5d\x5f\x61-\x7b\x7d\x7f]+")
"""Runs of characters ``index_text`` may rewrite: anything but plain ASCII."""
_ESCAPED = re.compile(ESC + "([0-9a-f]{6})")
_TEXT_KEY = '"text":"'
_TEXT_END = '","created_at":"'
"""What follows the text in a logged post body (``log.post_document``'s order); a JSON
string cannot hold it unescaped, so the first one after ``_TEXT_KEY`` ends the text."""

_probe_lock = threading.Lock()
_probe = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).build()


def _alphanumeric(c: str) -> bool:
    """Whether ``simple`` keeps ``c`` inside a word (Rust's ``char::is_alphanumeric``, whose
    Alphabetic property Python's ``unicodedata`` does not have)."""
    with _probe_lock:
        return _probe.analyze(f"a{c}a") == [f"a{c}a"]


class _Forms(dict):
    """Code point -> its index form (``str.translate`` table), filled in on first sight."""

    def __missing__(self, code: int) -> str | int:
        c = chr(code)
        cat = unicodedata.category(c)
        escaped = f"{ESC}{code:06x}"
        form: str | int = code
        if c == SEP or cat in _SYMBOLS or any(code in r for r in _EMOJI_MARKS):
            form = SEP + escaped + SEP
        elif cat[0] in "LNM" and unicodedata.name(c, "").startswith(UNSPACED_NAMES):
            form = SEP + (c if _alphanumeric(c) else escaped) + SEP
        elif c == ESC or (cat[0] == "M" and not _alphanumeric(c)):
            form = escaped
        self[code] = form
        return form


_FORMS = _Forms()


def _rewrite(m: re.Match[str]) -> str:
    return m[0].translate(_FORMS)


def index_text(text: str) -> str:
    """The index form of ``text`` (see the module docstring); plain text is returned as is."""
    if text.isascii() and not _PLAIN_ASCII_SYMBOLS.search(text):
        return text
    return _TO_REWRITE.sub(_rewrite, text)


def shown_text(form: str) -> str:
    """The text of which ``form`` is the index form (``index_text`` undone)."""
    if ESC not in form and SEP not in form:
        return form
    return _ESCAPED.sub(lambda m: chr(int(m[1], 16)), form.replace(SEP, ""))


def index_document(body: str) -> str:
    """A logged post body (``log.post_document``'s JSON) with its text in the index form: the
    document the indexer gives tantivy. Rewrites the text inside the JSON without parsing it
    when it can (the body's other fields are ASCII identifiers and numbers), and through
    ``orjson`` otherwise (a body of another key order, or with ``\\u`` escapes)."""
    start = body.find(_TEXT_KEY) + len(_TEXT_KEY)
    end = body.find(_TEXT_END, start) if start >= len(_TEXT_KEY) else -1
    if end >= 0 and body.find("\\u", start, end) < 0:
        if body.isascii() and not _PLAIN_ASCII_SYMBOLS.search(body, start, end):
            return body
        return body[:start] + _TO_REWRITE.sub(_rewrite, body[start:end]) + body[end:]
    doc = orjson.loads(body)
    if not isinstance(doc.get("text"), str):
        return body
    doc["text"] = index_text(doc["text"])
    return orjson.dumps(doc).decode()


def rules_analyzer() -> tantivy.TextAnalyzer:
    """``RULES`` with the same filters as ``text_analyzer``, over the text as posted: the
    reference (tests, ``bench/grok_analysis.py``), five times slower per token."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(RULES))
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.lowercase())
        .build()
    )


def text_analyzer() -> tantivy.TextAnalyzer:
    """The analyzer of the ``text`` field, over index forms: ``simple`` words, long tokens
    dropped, accents folded, lower-cased."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.lowercase())
        .build()
    )


_analyzers = threading.local()


def lone_mark(token: str) -> bool:
    """Whether ``token`` is one combining mark outside the unspaced scripts (whose marks are
    tokens of the phrases their words become)."""
    c = shown_text(token)
    return (
        len(c) == 1
        and unicodedata.category(c)[0] == "M"
        and not unicodedata.name(c, "").startswith(UNSPACED_NAMES)
    )


def analyze(text: str) -> list[str]:
    """The index terms of ``text`` (in the index form, as the index holds them) but lone
    marks (``lone_mark``): what a query of ``text`` looks for."""
    a = getattr(_analyzers, "a", None)
    if a is None:
        a = _analyzers.a = text_analyzer()
    return [t for t in a.analyze(index_text(text)) if not lone_mark(t)]
