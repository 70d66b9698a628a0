"""How post text (and query text) becomes index terms: tantivy's ``simple`` tokenizer over an
*index form* of the text, which ``shown_text`` turns back into the text as posted.

The tokens, for every language of the stream:

- a character of a script written without spaces between words (Han, kana, Thai, Lao, Khmer,
  Myanmar) or of Hangul (whose particles attach to words) is a token of its own; a query word
  of them is a phrase of its characters (``search.query_clauses``), so "東京" finds
  "東京タワーに行きました" and "서울" finds "서울에서" (character n-gram indexing in its
  unigram-plus-positions form, as Lucene's CJK analysers index bigrams);
- a word of any other script is a run of letters, digits and the combining marks inside it,
  so Devanagari "हिन्दी" (whose virama is a mark) stays one word; a mark that follows no
  letter (a variation selector after an emoji, which picks its colour form) is dropped;
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
the indexer is nearly half of the CPU a post costs at full ingest.

The index form (``index_text``) leaves plain text alone (ASCII letters, digits, punctuation,
as about half of the posts are) and rewrites, character by character:

- a character of an unspaced script: ``SEP`` + the character + ``SEP`` (``SEP`` is a
  private-use character, not alphanumeric, so ``simple`` splits there);
- a symbol: ``SEP`` + ``ESC`` + its code point in 6 hex digits + ``SEP`` -- a word of
  ``simple`` (``ESC`` is a letter no language writes: CYRILLIC LETTER MULTIOCULAR O);
- a combining mark inside a word: itself, or ``ESC`` + 6 hex digits where ``simple`` would
  split the word at it (a virama, a combining accent), so the word stays one token;
- a combining mark after no letter: its 6 hex digits as private-use characters between two
  ``SEP`` (no token, no position: phrases across it still match);
- the private-use characters the form uses, and ``ESC``, are escaped like symbols and marks,
  so the rewrite can be undone.

Which class a character is in is asked of tantivy's own Unicode tables (Rust's, probed once
per character), not of Python's ``unicodedata``, which is older (an emoji of Unicode 15 is
unknown to Python 3.11). The index stores the index form and ``shown_text`` undoes it (the
log keeps the post as posted).

``tests/grok/test_analysis.py`` holds the tokens to ``RULES`` for every character of the
first three Unicode planes in four contexts. They differ only where the rules' ASCII folding
turns a symbol into punctuation or a letter (fullwidth "＄" stays itself, not "$"), on the
private-use characters the form reserves, on letters newer than the regex's tables, and on
words whose index form is longer than ``MAX_TOKEN_BYTES`` (the rules measure the word).
"""

from __future__ import annotations

import functools
import re
import threading

import orjson
import tantivy

TEXT_ANALYZER = "grok_text"
"""Name under which ``text_analyzer`` is registered on every opened index."""
MAX_TOKEN_BYTES = 160
"""Longer tokens (bytes of the index form) are dropped (tantivy's RemoveLongFilter), as hashes
and base64 runs should be. An escaped mark takes 9 bytes for its 2 or 3, so a word of marks
can take up to 4.5 times its own bytes: every word up to 35 bytes fits (a Hindi word of 36
bytes with three viramas takes 54), but a 51-letter Sanskrit compound of 153 bytes, which
``RULES`` keeps, takes 237 and is dropped."""
SEP = "\ue000"
"""Separates the characters of unspaced scripts and the escaped symbols in the index form."""
ESC = "\ua66e"
"""Starts an escaped character in the index form: ``ESC`` + 6 lower-case hex digits."""
_UNSPACED_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_UNSPACED = f"[{_UNSPACED_SCRIPTS}]"
_SYMBOL = r"[\p{So}\p{Sc}\p{Sm}\p{Sk}]"
RULES = (
    rf"{_UNSPACED}"  # one token per character of a script written without spaces
    rf"|{_SYMBOL}"  # one token per symbol
    rf"|[[\p{{L}}\p{{N}}]--{_UNSPACED}][[\p{{L}}\p{{M}}\p{{N}}]--{_UNSPACED}]*"  # words
)
"""The tokens as a Unicode regex (Rust syntax): the reference the index form is held to."""

_PLAIN_ASCII_SYMBOLS = re.compile(r"[$+<=>^`|~]")
"""The ASCII characters ``index_text`` rewrites (symbols; other punctuation is dropped)."""
_TO_REWRITE = re.compile(r"[^\x00-\x23\x25-\x2a\x2c-\x3b\x3f-\x5d\x5f\x61-\x7b\x7d\x7f]+")
"""Runs of characters ``index_text`` may rewrite: anything but plain ASCII."""
_ESCAPED = re.compile(ESC + "([0-9a-f]{6})")
_TEXT_KEY, _STRING_END = '"text":"', '","'
"""A logged post body holds its text after ``_TEXT_KEY``, and the first ``_STRING_END``
after it ends the text (a JSON string cannot hold it: each quote in it is escaped)."""
_MAX_FORMS = 200_000
"""Characters whose forms (``_FORMS``) and classes (``unspaced``) are kept; those of others are
worked out each time."""


class _Probe:
    """Asks tantivy's own Unicode tables (Rust's, which may be newer than Python's
    ``unicodedata``) what a character is, under a lock (an analyzer is not shared between
    threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alnum = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).build()
        classes = (("u", _UNSPACED), ("s", _SYMBOL), ("m", r"\p{M}"))  # in the rules' order
        self._regex = {
            k: tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(p)).build() for k, p in classes
        }

    def kind(self, c: str) -> tuple[bool, str]:
        """(alphanumeric, class): whether ``simple`` keeps ``c`` in a word
        (``char::is_alphanumeric``), and "u" (a character of an unspaced script), "s" (a
        symbol), "m" (a combining mark) or "" (anything else)."""
        with self._lock:
            alnum = self._alnum.analyze(c) == [c]
            for k, analyzer in self._regex.items():
                if analyzer.analyze(c) == [c]:
                    return alnum, k
            return alnum, ""


_probe = _Probe()
_MARKS: set[str] = set()
"""Combining marks seen: in a word they stay in it (escaped when ``simple`` would split the
word there); after no letter they are written with ``_LONE`` digits (no token, as the rules
drop them)."""
_WORDY: set[str] = set()
"""Characters (beyond ASCII) whose form ends in a letter a following mark joins."""
_LONE_DIGITS = 0xE010
"""A mark after no letter is ``SEP`` + its code point in 6 hex digits written as the
private-use characters ``_LONE_DIGITS`` + digit (not alphanumeric: no token) + ``SEP``."""
_RESERVED = range(0xE000, _LONE_DIGITS + 16)
"""Private-use characters the index form uses: escaped when a text holds them."""
_LONE = re.compile(f"{SEP}([{chr(_LONE_DIGITS)}-{chr(_LONE_DIGITS + 15)}]{{6}}){SEP}")


def _lone(c: str) -> str:
    return SEP + "".join(chr(_LONE_DIGITS + int(d, 16)) for d in f"{ord(c):06x}") + SEP


def _unlone(m: re.Match[str]) -> str:
    return chr(int("".join(f"{ord(d) - _LONE_DIGITS:x}" for d in m[1]), 16))


@functools.lru_cache(maxsize=_MAX_FORMS)
def unspaced(c: str) -> bool:
    """Whether ``c`` is a character of a script the index splits per character."""
    return _probe.kind(c)[1] == "u"


class _Forms(dict):
    """Code point -> its index form (``str.translate`` table), filled in on first sight; a
    mark's is its form inside a word (``_rewrite`` writes the others)."""

    def __missing__(self, code: int) -> str | int:
        c = chr(code)
        alnum, kind = _probe.kind(c)
        escaped = f"{ESC}{code:06x}"
        form: str | int = code
        if code in _RESERVED or kind == "s" or (kind == "u" and not alnum):
            form = SEP + escaped + SEP
        elif kind == "u":
            form = SEP + c + SEP
        elif c == ESC:
            form = escaped
            _WORDY.add(c)
        elif kind == "m":
            form = code if alnum else escaped
            _MARKS.add(c)
        elif alnum:
            _WORDY.add(c)
        if len(self) < _MAX_FORMS:
            self[code] = form
        return form


_FORMS = _Forms()


def _rewrite(m: re.Match[str], json: bool = False) -> str:
    """The index form of a run of ``_TO_REWRITE`` (in a JSON string when ``json``)."""
    run = m[0]
    form = run.translate(_FORMS)
    if _MARKS.isdisjoint(run):
        return form
    # as the rules have it, a mark continues the word before it, and is dropped elsewhere
    string, i = m.string, m.start()
    word = i > 0 and string[i - 1].isalnum()
    if json and word:  # "\n" in a JSON string is a newline: a letter after an odd number of \
        k = i - 2
        while k >= 0 and string[k] == "\\":
            k -= 1
        word = (i - 2 - k) % 2 == 0
    out = []
    for c in run:
        f = _FORMS[ord(c)]
        f = f if isinstance(f, str) else c
        if c in _MARKS:
            out.append(f if word else _lone(c))
        else:
            out.append(f)
            word = c in _WORDY
    return "".join(out)


def _rewrite_json(m: re.Match[str]) -> str:
    return _rewrite(m, json=True)


def index_text(text: str) -> str:
    """The index form of ``text`` (see the module docstring); plain text is returned as is."""
    if text.isascii() and not _PLAIN_ASCII_SYMBOLS.search(text):
        return text
    return _TO_REWRITE.sub(_rewrite, text)


def shown_text(form: str) -> str:
    """The text of which ``form`` is the index form (``index_text`` undone)."""
    if ESC not in form and SEP not in form:
        return form
    form = _LONE.sub(_unlone, form).replace(SEP, "")
    return _ESCAPED.sub(lambda m: chr(int(m[1], 16)), form)


def index_document(body: str) -> str:
    """A logged post body (``log.post_document``'s JSON) with its text in the index form: the
    document the indexer gives tantivy. Rewrites the text inside the JSON without parsing it
    when it can, and through ``orjson`` otherwise (a text last in its body, or with ``\\u``
    escapes)."""
    start = body.find(_TEXT_KEY) + len(_TEXT_KEY)
    end = body.find(_STRING_END, start) if start >= len(_TEXT_KEY) else -1
    if end >= 0 and body.find("\\u", start, end) < 0:
        if body.isascii() and not _PLAIN_ASCII_SYMBOLS.search(body, start, end):
            return body
        return body[:start] + _TO_REWRITE.sub(_rewrite_json, body[start:end]) + body[end:]
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


def analyze(text: str) -> list[str]:
    """The index terms of ``text``, in the index form (as the index holds them): what a query
    of ``text`` looks for."""
    a = getattr(_analyzers, "a", None)
    if a is None:
        a = _analyzers.a = text_analyzer()
    return a.analyze(index_text(text))
