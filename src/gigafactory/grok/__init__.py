"""Grok's real-time memory: the post feed, a durable log and a sub-second search index.

- ``post``: the pydantic ``Post`` / ``EngagementUpdate`` models;
- ``generator``: seeded synthetic posts (also the trainer's default corpus);
- ``log``: the durable SQLite (WAL) log; ``index``: the tantivy index and its indexer;
- ``search`` / ``trends``: ranking and trend detection; ``api``: the FastAPI service.
"""

from gigafactory.grok.generator import generate_events, generate_posts, post_texts
from gigafactory.grok.post import MAX_TEXT_CHARS, EngagementUpdate, Post

__all__ = [
    "MAX_TEXT_CHARS",
    "EngagementUpdate",
    "Post",
    "generate_events",
    "generate_posts",
    "post_texts",
]
