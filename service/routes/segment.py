"""`POST /segment`: read the upload, decode, batch, infer, encode; the answer the client asked for."""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..admission import Admission
from ..batch_runs import DEADLINE_EXCEEDED, InferenceTimeout, WaitSplit
from ..batcher import Batcher
from ..codec import Codec
from ..connection import while_connected
from ..core.crf import CrfPlace
from ..core.crf import available as crf_available
from ..core.decode import Upload
from ..core.engine import Engine
from ..core.output_kinds import OUTPUT_KINDS, RenderOptions, json_bytes, negotiate
from ..core.outputs.polygons import PolygonsTooComplex
from ..core.pipeline import SegmentOptions
from ..core.priorities import Priority
from ..errors import ApiError
from ..metrics import Metrics
from ..middleware import bulk_key_of, key_fingerprint_of
from ..multipart_preamble import without_preamble
from ..openapi_contract import SEGMENT_REQUEST, SEGMENT_RESPONSES
from ..request_memory import HeldResponse, decoded_bytes
from ..results_cache import new_result_id
from ..settings import Settings
from ..state import ServiceState
from ..tile_limits import check_tiles, upright_size
from ..tiled_inference import infer_inputs
from .query_model import QueryModelRoute
from .segment_query import SegmentQuery

try:  # the module's name since python-multipart 0.0.13; the project allows older ones, as Starlette does
    from python_multipart.multipart import parse_options_header
except ModuleNotFoundError:  # pragma: no cover
    from multipart.multipart import parse_options_header  # type: ignore[no-redef]

router = APIRouter(route_class=QueryModelRoute)



# The multipart `charset` parameters accepted (codec names as `codecs.lookup` gives them). Starlette decodes every
# part's name, and every text field, with the body's charset, on the event loop, and catches only UnicodeDecodeError
# and LookupError: Python's punycode decoder is quadratic (a 400 KB field held the loop 4.7 s, so a 20 MB one would
# hold it for hours) and raises plain UnicodeError (a 500), as idna does. Browsers and HTTP libraries send no
# charset at all (utf-8); these three linear C decoders are all a client needs.
MULTIPART_CHARSETS = ("utf-8", "ascii", "iso8859-1")


def _check_multipart_charset(content_type: str) -> None:
    """415 `unsupported_media_type` for a multipart `charset` other than MULTIPART_CHARSETS, read as Starlette
    reads it."""
    _, params = parse_options_header(content_type)
    charset = params.get(b"charset")
    if charset is None:
        return
    name = charset.decode("latin-1")
    try:
        known = codecs.lookup(name).name
    except LookupError:
        known = None
    if known not in MULTIPART_CHARSETS:
        raise ApiError(415, "unsupported_media_type", f"multipart charset {name[:40]!r} is not supported; send "
                       "utf-8 (or no charset), us-ascii or iso-8859-1")


class _MultiPartParser(MultiPartParser):
    """Starlette's multipart parser, told when the closing boundary arrives: python-multipart ends a body cut short
    without a word (its `finalize()` checks nothing), and the form then lacks the part cut off, the image."""

    complete = False

    def on_end(self) -> None:
        self.complete = True  # python-multipart calls it on the closing boundary (`--boundary--`) alone
        super().on_end()


async def _arriving(request: Request, ticket: Admission) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, each reserved in the upload budget first (503 when it is full): an upload
    costs the budget what it has sent, never what it declares (service/admission.py)."""
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            ticket.arrived(len(chunk))
            yield chunk


async def _read_form(request: Request, settings: Settings, ticket: Admission) -> FormData:
    """The multipart body parsed as `Request.form()` parses it; 400 `incomplete_multipart` for one that ends before
    its closing boundary, `bad_request` for a malformed one."""
    received = 0

    async def counted(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        nonlocal received
        async for chunk in stream:
            received += len(chunk)
            yield chunk

    # The boundary as Starlette reads it (without one, its parser answers `bad_request`): a preamble before the
    # first delimiter line is skipped, which python-multipart cannot do (service/multipart_preamble.py).
    boundary = parse_options_header(request.headers.get("content-type", ""))[1].get(b"boundary")
    async with aclosing(_arriving(request, ticket)) as stream:
        body = counted(stream) if boundary is None else without_preamble(counted(stream), boundary)
        parser = _MultiPartParser(request.headers, body, max_files=4, max_fields=32,
                                  max_part_size=settings.max_upload_bytes)
        try:
            form = await parser.parse()
        except MultiPartException as exc:  # Request.form() turns it into a 400 HTTPException: `bad_request`
            raise ApiError(400, "bad_request", exc.message) from None
    if not parser.complete:
        await form.close()
        if not received:  # nothing was sent: not a body cut short
            raise ApiError(400, "empty_body", "the request carried no image bytes")
        raise ApiError(400, "incomplete_multipart", "the multipart body ended before its closing boundary "
                       "(--<boundary>--): the upload was cut short")
    return form


async def _read_upload(request: Request, settings: Settings, ticket: Admission) -> bytes:
    """The image bytes: multipart field `image`, or the raw body for any other content type; the body's bytes are
    reserved in the upload budget as they arrive (`ticket.arrived`)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        _check_multipart_charset(content_type)
        form = await _read_form(request, settings, ticket)
        try:
            images = form.getlist("image")
            if not images:
                raise ApiError(422, "invalid_request", "multipart body has no field named 'image'")
            if len(images) > 1:  # answering for the first alone would drop the others without a word
                raise ApiError(422, "invalid_request", f"multipart body has {len(images)} fields named 'image'; "
                               "send one image per request (concurrent requests are batched by the server)")
            field_value = images[0]
            if isinstance(field_value, UploadFile):
                return await field_value.read()
            return field_value.encode("latin-1", errors="replace")  # a text field: let decode judge it
        finally:
            await form.close()
    # Any other type (image/*, application/octet-stream, curl --data-binary's form-urlencoded default) is the
    # image itself; decode_image sniffs the real format from the bytes.
    return await _read_body(request, ticket)


async def _read_body(request: Request, ticket: Admission) -> bytes:
    """The raw body. Not `Request.body()`: that joins the chunks even when there is one, as there is when the
    body has arrived by the time it is read (uvicorn hands it over in one message), a copy of the whole upload
    (35 µs for a 133 KB JPEG)."""
    chunks = [chunk async for chunk in _arriving(request, ticket) if chunk]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# `response_class=Response`: FastAPI would otherwise list an empty application/json first among the 200's types.
@router.post("/segment", summary="Segment an image", response_class=Response, responses=SEGMENT_RESPONSES,
             openapi_extra=SEGMENT_REQUEST)
async def segment(request: Request, query: Annotated[SegmentQuery, Query()]) -> Response:
    # The state, engine, batcher, codec and admission are taken here rather than through `Depends`: FastAPI's
    # dependency solving cost ~0.2 CPU-ms per request for those five (in-process, the app alone: 528 -> 316 µs).
    state: ServiceState = request.app.state.service
    render = RenderOptions(alpha=query.alpha, format=query.format, tolerance=query.tolerance, min_area=query.min_area)
    try:  # before admission: a parameter error costs no budget, as FastAPI's own 422s do not
        options = SegmentOptions(query.output or negotiate(request.headers.get("accept")), render, crf=query.crf,
                                 resolution=query.resolution)
    except ValueError as exc:  # a format the output kind has not
        raise ApiError(422, "invalid_request", f"format: {exc}") from None
    # A bulk key's requests are bulk whatever they ask: an offline job cannot crowd out live users by leaving the
    # parameter out.
    priority: Priority = "bulk" if bulk_key_of(request.scope) else query.priority
    bulk = priority == "bulk"
    with state.admission(request, bulk=bulk) as ticket:
        engine, batcher, codec = state.serving()
        if query.crf and not crf_available():
            raise ApiError(501, "crf_unavailable", "CRF refinement is not installed on this server "
                                                   "(pip install 'segment-service[crf]')")
        # Under the body deadline (service/connection.py), each chunk reserved in the upload budget as it arrives.
        data = await _read_upload(request, state.settings, ticket)
        if not data:
            raise ApiError(400, "empty_body", "the request carried no image bytes")
        ticket.admit(len(data))
        # Before its decode and model run: a request the CRF has no room for must not pay for them first.
        crf_place = codec.reserve_crf(options, bulk=bulk)
        try:
            return await _segment(request, state, engine, batcher, codec, data, options, ticket, crf_place,
                                  query.timeout_s, priority)
        finally:
            if crf_place is not None:
                crf_place.release()  # unless its refinement holds it: then when the worker is done


async def _segment(request: Request, state: ServiceState, engine: Engine, batcher: Batcher, codec: Codec,
                   data: bytes, options: SegmentOptions, ticket: Admission,
                   crf_place: CrfPlace | None = None, timeout_s: float | None = None,
                   priority: Priority = "interactive") -> Response:
    """Decode, infer, encode one admitted upload; the response with its timing. Each stage's time is observed as
    the stage ends, whatever comes after it: a timeout storm shows its decodes and its queueing. `timeout_s`: the
    request's own deadline from now (its upload is in) until its labels, at most the server's request timeout."""
    settings, metrics = state.settings, state.metrics
    request_id = request.state.request_id
    timing: dict[str, float] = {}
    hold = ticket.hold
    assert hold is not None
    pipeline = codec.pipeline
    bulk = priority == "bulk"

    def deadline_passed(when: str) -> ApiError:
        return ApiError(*DEADLINE_EXCEEDED, f"the request's timeout_s ({timeout_s:g}s) passed {when} its image was "
                                           "decoded; it was not queued")

    def reserve(upload: Upload) -> None:  # in the codec thread, from the header, before a pixel is decoded
        if timeout_s is not None:
            left_s = timeout_s - (time.perf_counter() - started)
            if left_s <= 0:  # waited for a codec thread
                raise deadline_passed("before")
            upload.memory_wait_s = left_s  # a wait for decode memory ends with the deadline
        height, width = upright_size(upload) if options.resolution is not None else (0, 0)
        tiles = pipeline.tile_grid(height, width, options.resolution)
        if tiles is not None:
            canvas = pipeline.canvas_size(height, width, options.resolution)
            check_tiles(len(tiles), canvas, height, width, options, pipeline.engine.input_size,
                         state.max_tiles(bulk))
            ticket.room_for_images(len(tiles))  # before the decode, which a refusal after would waste
        hold.reserve(decoded_bytes(upload, options.full_resolution, pipeline.engine.input_size, tiles))

    t0 = started = time.perf_counter()
    try:
        with batcher.expecting():  # a batch being formed now waits for this image
            prepared = await codec.decode(data, full_resolution=options.full_resolution, before_decode=reserve,
                                          bulk=bulk, resolution=options.resolution)
    except ApiError as exc:  # the decode memory was still taken when the request's own deadline passed
        if exc.code == "overloaded" and timeout_s is not None and time.perf_counter() - started >= timeout_s:
            raise deadline_passed("while") from None
        raise
    finally:
        ticket.queued()  # decoded or not, no longer on its way: infer() queues it before its first await
    timing["decode"] = _observed(metrics, "decode", t0)
    if not options.full_resolution:
        prepared = prepared.without_image()  # the answer does not show it: not kept through the queue

    def observe_wait(wait: WaitSplit | InferenceTimeout) -> None:  # queueing until it left the line; then its run
        metrics.queued(priority, wait.queue_s)
        if wait.inference_s is not None:
            metrics.stage("inference").observe(wait.inference_s)

    wait_s = None  # the server's request timeout: the model's whole wait, as always
    if timeout_s is not None and timeout_s < settings.request_timeout_s:
        wait_s = timeout_s - (time.perf_counter() - started)  # what the decode left of the request's own
        if wait_s <= 0:
            raise deadline_passed("while")
    if prepared.tiles is not None:  # the counts may have moved during the decode: again, just before they are queued
        ticket.room_for_images(len(prepared.tiles))
    try:  # a client that hangs up meanwhile cancels the wait: `observe_wait` is told where it went
        result = await while_connected(request.receive, infer_inputs(
            batcher, prepared.model_inputs, settings.request_timeout_s, request_id, on_abandoned=observe_wait,
            wait_s=wait_s, priority=priority))
    except InferenceTimeout as exc:
        observe_wait(exc)
        raise
    timing["queue"], timing["inference"] = result.queue_s, result.inference_s
    metrics.stage("queue").observe(result.queue_s)
    for wait in result.queue_waits:
        metrics.image_waited(priority, wait)
    metrics.stage("inference").observe(result.inference_s)
    if prepared.tiles is not None:
        metrics.request_tiles.observe(len(prepared.tiles))

    t0 = time.perf_counter()
    result_id, owner = new_result_id(), key_fingerprint_of(request.scope)  # only its key reads it (results.py)
    # The model file's hash, computed once at load: the name alone is the same for a retrained file put in its
    # place, and a stored result must not be re-rendered with another model's classes (results.py).
    sha256 = engine.sha256
    header = {"id": result_id, "model": engine.name, "model_sha256": sha256}
    try:
        body, media, kept = await codec.encode(
            prepared, result.labels, options, header, crf_place=crf_place,
            keep=lambda labels: state.cache.put(result_id, labels, data, owner, sha256 or None),
            bulk=bulk)
    except PolygonsTooComplex as exc:  # refused before the costly geometry work (service/core/outputs/polygons.py)
        raise ApiError(422, "output_too_complex", str(exc)) from None
    finally:
        timing["encode"] = _observed(metrics, "encode", t0)

    headers = {"X-Batch-Size": str(result.batch_size), "X-Model-SHA256": sha256,
               "Server-Timing": ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in timing.items())}
    if kept:  # only an id `GET /results` can answer
        headers["X-Result-ID"] = result_id
    if prepared.tiles is not None:
        headers["X-Tiles"] = str(len(prepared.tiles))
    if OUTPUT_KINDS[options.output].is_json:
        # The body came serialised from the codec thread (megabytes of polygons would stall the event loop);
        # `timing_ms`, known only now, goes in as the last member: the bytes `{**body, "timing_ms": ...}` gives.
        timing_ms = json_bytes({k: round(v * 1000, 3) for k, v in timing.items()})
        body = b"".join((memoryview(body)[:-1], b',"timing_ms":', timing_ms, b"}"))
    # From here on the request holds its answer alone, until it has been sent.
    hold.resize(len(body))
    return HeldResponse(ticket.hand_over(), body, media_type=media, headers=headers)


def _observed(metrics: Metrics, stage: str, started: float) -> float:
    """Observe the seconds since `started` in `stage`'s histogram; returns them."""
    seconds = time.perf_counter() - started
    metrics.stage(stage).observe(seconds)
    return seconds
