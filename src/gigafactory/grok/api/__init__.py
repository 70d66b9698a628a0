"""Grok's HTTP API: the FastAPI app (``app.create_app``), its rate limiter and static files."""
