"""`GET /results/{id}/{name}`: a recent result rendered again from the results cache."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from ..core.decode import decode_image_keeping_profile
from ..core.engine import Engine
from ..core.errors import DecodeError
from ..core.output_kinds import OUTPUT_KINDS, PNG, RenderOptions
from ..core.outputs.render import render
from ..errors import ApiError
from ..middleware import key_fingerprint_of
from ..openapi_contract import RESULT_RESPONSES
from ..state import ServiceState, loaded_engine, service_state

router = APIRouter()
# Image kinds are rendered again from the cached label map, always as PNG; JSON kinds are not kept as files.
RESULT_FILES = tuple(f"{kind.name}{PNG.suffix}" for kind in OUTPUT_KINDS.values() if not kind.is_json)
ResultFile = Literal[RESULT_FILES]  # type: ignore[valid-type]


# `response_class=Response`: the 200 is image/png alone, not FastAPI's default application/json beside it.
@router.get("/results/{result_id}/{name}", summary="Fetch a recent result again", response_class=Response,
            responses=RESULT_RESPONSES)
async def result(request: Request, result_id: str, name: ResultFile,
                 # As `POST /segment?alpha=` (same default and bounds), so the page's download matches its slider.
                 alpha: float = Query(RenderOptions.alpha, ge=0.0, le=1.0,
                                      description="overlay opacity of the class colours (overlay only)"),
                 state: ServiceState = Depends(service_state), engine: Engine = Depends(loaded_engine)) -> Response:
    # A result is read back only with the key that stored it (none where the service has no keys): its id travels
    # in access logs and Referer headers, which holders of other keys may see. Another key's result is answered as
    # an unknown id, so that nobody learns it exists.
    owner = key_fingerprint_of(request.scope)
    if not state.cache.kept_for(result_id, owner):  # cheap: an unknown id is a 404 even while renders are busy
        raise _not_found(result_id)
    kind = name.removesuffix(PNG.suffix)

    def encode() -> bytes:
        # Read here, under a render slot and off the event loop: under several workers a result is a file of up to
        # tens of MB (its upload), and refetches read on the loop (503 ones too) held up every request of the worker
        # (measured, 2 workers: /healthz p50 613 ms while 12 clients refetched a 19 MB upload's labels; 91 after).
        stored = state.cache.get(result_id)
        if stored is None or stored.owner != owner:  # expired or evicted since (or stored again under the id)
            raise _not_found(result_id)
        # Rendered with the running model's classes and palette, another model's labels would come back named and
        # painted wrong (its ids this model lacks in black): after a swap in place, or from a server on another
        # model sharing the results directory. A result of an older file, with no model recorded, renders as before.
        if stored.model_sha256 is not None and engine.sha256 and stored.model_sha256 != engine.sha256:
            raise ApiError(404, "result_not_found", f"result {result_id!r} was made by another model (sha256 "
                           f"{stored.model_sha256[:12]}...) than the one this server runs ({engine.sha256[:12]}...)")
        made_by.append(stored.model_sha256)
        # The upload was accepted once, so it decodes again; only an overlay needs its pixels. As for
        # `POST /segment`, they keep an RGB ICC profile's numbers and the overlay is drawn in, and carries, it.
        image, profile = None, None
        try:
            if kind == "overlay":
                image, profile = decode_image_keeping_profile(stored.source, state.settings.max_pixels)
        except DecodeError as exc:  # e.g. the decode memory budget is full right now: 503
            raise ApiError.from_decode(exc) from None
        options = RenderOptions(alpha=alpha, format="png", icc_profile=profile)
        body, _ = render(kind, image, stored.labels, engine.metadata, options)
        return body  # type: ignore[return-value]  # image kinds are always bytes

    made_by: list[str | None] = []  # the stored result's model, as `encode` read it
    with state.renders:  # bounded and in its own pool: refetches cannot starve /segment
        data = await state.render_pool.run(encode)
    headers = {"X-Result-ID": result_id}
    if made_by[0]:  # unknown for a result of an older file: no header rather than a guess
        headers["X-Model-SHA256"] = made_by[0]
    return Response(data, media_type="image/png", headers=headers)


def _not_found(result_id: str) -> ApiError:
    return ApiError(404, "result_not_found", f"no result {result_id!r} (unknown or expired)")
