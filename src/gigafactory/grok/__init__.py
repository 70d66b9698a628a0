"""Grok: a chatbot with real-time access to a stream of posts.

Three rooms:

- ``memory``: the post model and generator, the durable SQLite (WAL) log, the tantivy index and
  its indexer process, ingest validation, ranked search and trends (``GrokService`` composes
  them);
- ``answers``: question understanding, retrieval, answer backends, citation checks and
  spotlighting of untrusted post text;
- ``api``: the FastAPI service (routes, schemas, rate limiting) and the page's static files.

``settings`` holds ``GrokSettings``, read by the memory service and the API alike.
"""

from gigafactory.grok.memory.generator import generate_events, generate_posts, post_texts
from gigafactory.grok.memory.post import MAX_TEXT_CHARS, EngagementUpdate, Post

__all__ = [
    "MAX_TEXT_CHARS",
    "EngagementUpdate",
    "Post",
    "generate_events",
    "generate_posts",
    "post_texts",
]
