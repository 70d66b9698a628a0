"""The offline backend: an extractive answer from the context, no model weights.

It states how many posts match ("412 posts in the last 15 minutes mention ..., mostly about
..."), or what trends in an overview, then quotes each context post (the first
``QUOTE_WORDS`` words) with its author, engagement, near-duplicate count and its marker [n].
The same context gives the same answer, word for word. ``temperature`` does not apply.

A request whose system turn carries a spotlighted posts block and no live search (as sent by
another gigafactory using this one as its OpenAI-compatible backend) is answered from those
posts, keeping their numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

from gigafactory.grok.answers.backends import Compose, words_of
from gigafactory.grok.answers.retrieve import Context, engagement

QUOTE_WORDS = 25


def quote(text: str, n_words: int = QUOTE_WORDS) -> str:
    """The first ``n_words`` words of a post on one line, "…" if cut."""
    ws = text.split()
    return " ".join(ws[:n_words]) + (" …" if len(ws) > n_words else "")


def headline(ctx: Context) -> str:
    """The first sentence: counts, window, keywords or trends, and what the posts are about."""
    q = ctx.question
    window = f" {q.window}" if q.window else ""
    about = f", mostly about {', '.join(ctx.topics)}" if ctx.topics else ""
    if ctx.trends:
        trends = ", ".join(f"{t.term} ({t.count:,} posts)" for t in ctx.trends[:3])
        return f"Trending{window}: {trends}."
    if q.keywords:
        what = " ".join(q.keywords)
        by = f" by {', '.join('@' + a for a in q.authors)}" if q.authors else ""
        if not ctx.posts:
            return f"I found no posts{by}{window} about {what}."
        noun = "post" if ctx.matched == 1 else "posts"
        return f"{ctx.matched:,} {noun}{by}{window} mention {what}{about}."
    if q.authors:
        who = ", ".join("@" + a for a in q.authors)
        if not ctx.posts:
            return f"I found no posts by {who}{window}."
        return f"{who} posted {ctx.matched:,} times{window}{about}."
    if not ctx.posts:
        return f"I found no posts{window} to answer from."
    return f"{ctx.matched:,} posts{window}{about}."


def line(n: int, ctx: Context) -> str:
    """One quoted post: ``@author (1,234 likes, +3 similar): “text” [n]``."""
    h = ctx.posts[n - 1]
    notes = []
    if engagement(h):
        notes.append(f"{h.likes:,} likes")
    if n - 1 < len(ctx.similar) and ctx.similar[n - 1]:
        notes.append(f"+{ctx.similar[n - 1]} similar")
    extra = f" ({', '.join(notes)})" if notes else ""
    return f"@{h.author}{extra}: “{quote(h.text)}” [{n}]"


def answer_text(ctx: Context) -> str:
    """The whole answer (see the module docstring)."""
    parts = [headline(ctx)]
    parts += [line(n, ctx) for n in range(1, len(ctx.posts) + 1)]
    return " ".join(parts)


class ExtractiveBackend:
    """Backend ``offline``."""

    name = "grok-offline"
    description = "extractive answers from the retrieved posts (no model weights)"

    def compose(self, req: Compose) -> Iterator[str]:
        yield from words_of(answer_text(req.context))
