"""Warm-up covers the outputs: every output kind is rendered once before the server reports ready, so the first
request of each kind does not pay what libraries load or build on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from service.core.engine import load_engine
from service.core.options import EngineOptions
from service.core.output_kinds import OUTPUT_KINDS, RenderOptions
from service.core.outputs.labelmap import LabelMap
from service.core.pipeline import Pipeline, Prepared

REPO = Path(__file__).resolve().parents[2]


def test_warm_outputs_renders_every_kind_in_every_format(rule_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = Pipeline(load_engine(EngineOptions(model_path=rule_model, intra_op_threads=1)))
    rendered: list[tuple[str, str | None]] = []
    real_render = Pipeline.render

    def recording(self: Pipeline, output: str, prepared: Prepared, label_map: LabelMap, options: RenderOptions,
                  header: dict[str, Any] | None = None) -> tuple[Any, str]:
        body, media = real_render(self, output, prepared, label_map, options, header)
        assert body  # a real answer, not an empty one
        rendered.append((output, options.format))
        return body, media

    monkeypatch.setattr(Pipeline, "render", recording)
    seconds = pipeline.warm_outputs()
    assert seconds > 0
    assert sorted(rendered) == sorted((name, encoding.format) for name, kind in OUTPUT_KINDS.items()
                                      for encoding in kind.encodings)


def test_the_server_warms_the_outputs_before_it_is_ready(serve, rule_model: Path) -> None:
    server = serve(rule_model)
    ready = httpx.get(f"{server.url}/readyz", timeout=30).json()
    assert ready["ready"] is True
    assert ready["outputs_warmup_ms"] > 0
