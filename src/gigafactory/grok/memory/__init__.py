"""Grok's real-time memory: posts, the durable log, the search index, search and trends.

- ``post``: the pydantic ``Post`` / ``EngagementUpdate`` models;
- ``generator``: seeded synthetic posts (also the trainer's default corpus); ``feed``: a client
  that streams them (or a JSONL file) into a running service;
- ``log``: the durable SQLite (WAL) log; ``ingest``: validation of incoming batches;
- ``index``: the tantivy index; ``indexer``: the process that tails the log into it;
- ``search`` / ``rank`` / ``trends``: ranking and trend detection;
- ``service``: ``GrokService``, which composes all of the above.
"""
