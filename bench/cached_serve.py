"""`segment-serve` with decode, model, resize back and render memoised: what a request then costs is HTTP, the app
and the thread hand-offs alone. A script, run with the checkout under test first on PYTHONPATH (as
`bench.overhead_cached` does for each tree), so the same memoisation wraps two versions of `service`.

    PYTHONPATH=<checkout> SEGMENT_PORT=... python bench/cached_serve.py
"""

from __future__ import annotations

from typing import Any

from service.core import engine, pipeline
from service.main import main

_memo: dict[Any, Any] = {}
_preprocess, _postprocess = pipeline.Pipeline.preprocess, pipeline.Pipeline.postprocess
_render, _run_images = pipeline.Pipeline.render, engine.Engine.run_images


def _once(key: Any, make: Any) -> Any:
    if key not in _memo:
        _memo[key] = make()
    return _memo[key]


def preprocess(self: Any, data: bytes, *, full_resolution: bool = False) -> Any:
    return _once(("decode", len(data), full_resolution),
                 lambda: _preprocess(self, data, full_resolution=full_resolution))


def run_images(self: Any, images: Any) -> Any:
    return _once(("model", len(images)), lambda: _run_images(self, images))


def postprocess(self: Any, labels: Any, prepared: Any, *, refine: bool = False) -> Any:
    return _once(("resize", id(prepared), refine), lambda: _postprocess(self, labels, prepared, refine=refine))


def render(self: Any, output: str, prepared: Any, label_map: Any, options: Any, header: Any = None) -> Any:
    body, media = _once(("render", output), lambda: _render(self, output, prepared, label_map, options, {}))
    return ({**body, **(header or {})} if isinstance(body, dict) else body), media  # a fresh dict, as rendered


pipeline.Pipeline.preprocess, pipeline.Pipeline.postprocess = preprocess, postprocess  # type: ignore[method-assign]
pipeline.Pipeline.render, engine.Engine.run_images = render, run_images  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
