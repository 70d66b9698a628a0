"""Grok's web page: static files shipped in the package (``static/``), served at ``/`` with
no API key; the page itself calls the ``/v1`` routes with the key its user enters."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def mount_page(app: FastAPI) -> None:
    """Serve ``static/index.html`` at ``/`` and the other files under ``/static/``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})
