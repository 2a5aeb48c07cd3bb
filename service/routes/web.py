"""The web page: plain files in service/static, no build step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Every file of the page is revalidated on every load (a 304 for an unchanged one, by its ETag): a browser that
# kept them by heuristic freshness would, after a deploy, run a new module with an old one it imports.
NO_CACHE = {"Cache-Control": "no-cache"}


class RevalidatedFiles(StaticFiles):
    """The page's files, each answered (200 or 304) with `Cache-Control: no-cache`."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(NO_CACHE)
        return response


def install_web_page(app: FastAPI) -> None:
    """Mount the static files and serve the page at `/`."""
    # One instance serves /static and the page itself, so that both answer alike; made here, when the app is, so
    # that it serves whatever STATIC_DIR names then.
    files = RevalidatedFiles(directory=STATIC_DIR)
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        """The page, as its files are: 304 for an If-None-Match naming its ETag (a bare FileResponse ignores it)."""
        return await files.get_response("index.html", request.scope)

    app.mount("/static", files, name="static")
    app.include_router(router)
