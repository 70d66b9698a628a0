"""Grok's answers: understand the question, retrieve posts, compose with a backend, check.

- ``question``: keywords, time window, authors and follow-ups from the chat turns;
- ``retrieve``: ranked search (plus trends for "what is happening"), near-duplicates grouped,
  informative and engaged posts chosen as the numbered context;
- ``spotlight``: untrusted post text delimited and datamarked before it reaches a model;
- ``backends``: offline extractive answers, the project's trained checkpoint, or any
  OpenAI-compatible server, behind one interface;
- ``guard``: citation markers checked against the context, planted canaries removed;
- ``pipeline``: all of it as one generator of text pieces that the API only frames.
"""
