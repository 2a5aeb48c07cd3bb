"""`QueryModelRoute` (the /segment query parameters in one pydantic call) answers every query string as FastAPI's
own field-by-field handler does: the same values when valid, the same 422 when not."""

from __future__ import annotations

import asyncio
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import Response

from service.routes.query_model import QueryModelRoute
from service.routes.segment_query import SegmentQuery

QUERIES = [
    "", "output=polygons", "output=labels&output=stats", "output=nope", "output=", "Output=stats",
    "alpha=0.25", "alpha=1", "alpha=1.5", "alpha=-0", "alpha=", "alpha=nan", "alpha=abc", "alpha=0.1&alpha=2",
    "format=png", "format=PNG", "format=gif", "tolerance=1e30", "tolerance=inf", "tolerance=nan", "tolerance=-1",
    "min_area=", "min_area=0", "min_area=12.5", "min_area=-3", "min_area=null", "crf=true", "crf=1", "crf=yes",
    "crf=off", "crf=maybe", "crf=", "unknown=1&alpha=0.3", "alpha=%200.5", "alpha=0.5%20", "tolerance=1_0",
    "output=overlay&format=png&alpha=0&crf=false&min_area=1&tolerance=0",
]


async def _echo(request: Request, query: Annotated[SegmentQuery, Query()]) -> Response:
    return Response(repr(query.model_dump()))  # repr: inf and nan too


def _post(route_class: type, query: str) -> tuple[int, str]:
    router = APIRouter(route_class=route_class)
    router.post("/q")(_echo)
    app = FastAPI()
    app.include_router(router)

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            return await client.post(f"/q?{query}")

    r = asyncio.run(post())
    return r.status_code, r.text


@pytest.mark.parametrize("query", QUERIES)
def test_query_model_route_answers_as_fastapi_does(query: str) -> None:
    assert _post(QueryModelRoute, query) == _post(APIRouter().route_class, query)


def test_query_model_route_needs_one_model() -> None:
    async def loose(request: Request, alpha: float = 0.5) -> Response:
        return Response()

    router = APIRouter(route_class=QueryModelRoute)
    with pytest.raises(TypeError, match="one pydantic model"):
        router.post("/q")(loose)
