"""`AsyncSegmentClient`: the asyncio twin of `service.client.SegmentClient`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx

from .client_types import (
    ImageInput,
    Output,
    OverlayFormat,
    Resolution,
    ResultName,
    SegmentResult,
    output_kinds,
    resolution_param,
    response_json,
)
from .client_wire import (
    Retries,
    auth_headers,
    raise_for_error,
    request_body,
    result_path,
    segment_params,
    segment_result,
    server_url,
)
from .core.output_kinds import DEFAULT_OUTPUT
from .core.priorities import Priority


class AsyncSegmentClient:
    """The asyncio twin of `SegmentClient`, for callers already in an event loop."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0, retries: int = 2,
                 max_connections: int = 8, transport: httpx.AsyncBaseTransport | None = None,
                 retry_budget: float | None = None, priority: Priority | None = None,
                 resolution: Resolution | None = None) -> None:
        """The arguments, retries and errors of `SegmentClient`."""
        self.url = server_url(url)
        self.retries = max(0, retries)
        self.retry_budget = retry_budget
        self.priority = priority
        resolution_param(resolution)  # a ValueError here, not at the first call
        self.resolution = resolution
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.url, headers=auth_headers(api_key), timeout=timeout,
                                       limits=limits, transport=transport)

    async def __aenter__(self) -> AsyncSegmentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer, after the retries `Retries` allows; a 503 left is returned, a transport failure raised."""
        retries = Retries(self.retries, self.retry_budget)
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                wait = retries.after_failure(method, f"{self.url}{path}", exc)
            else:
                if (wait := retries.after_answer(response)) is None:
                    return response
            await asyncio.sleep(wait)

    async def segment(self, image: ImageInput, output: Output = DEFAULT_OUTPUT, *, alpha: float | None = None,
                      format: OverlayFormat | None = None, tolerance: float | None = None,
                      min_area: float | None = None, crf: bool | None = None,
                      timeout_s: float | None = None, priority: Priority | None = None,
                      resolution: Resolution | None = None) -> SegmentResult:
        """Segment one image; see `SegmentClient.segment`."""
        # Reading a file is blocking; do it off the loop.
        content, media = await asyncio.to_thread(request_body, image)
        params = segment_params(output, alpha, format, tolerance, min_area, crf, timeout_s, priority or self.priority,
                                self.resolution if resolution is None else resolution)
        response = await self._send("POST", "/segment", content=content, headers={"Content-Type": media},
                                    params=params)
        return segment_result(response, output)

    async def result(self, result_id: str, name: ResultName, alpha: float | None = None) -> bytes:
        """A recent result again as PNG; see `SegmentClient.result`."""
        params = {} if alpha is None else {"alpha": alpha}
        response = await self._send("GET", result_path(result_id, name), params=params)
        raise_for_error(response)
        return response.content

    async def classes(self) -> Mapping[str, Any]:
        """The model's class names and colours."""
        return await self._json("/classes")

    async def outputs(self) -> list[dict[str, Any]]:
        """The output kinds the service answers with; see `SegmentClient.outputs`."""
        return output_kinds(await self._json("/outputs"))

    async def _json(self, path: str) -> dict[str, Any]:
        response = await self._send("GET", path)
        raise_for_error(response)
        return response_json(response)  # `SegmentResponseError` for a body that is not JSON, as in the sync client
