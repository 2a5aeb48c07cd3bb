"""Put this folder on a server's PYTHONPATH to make the server process die (exit status 1, no answer) at its first
model run after its TESTKIT_DIE_AFTER_SCRAPES-th `/metrics` scrape, as a process whose GPU failed hard does. A
benchmark scrapes /metrics before and after each load point, so the scrape count picks the point it dies in.
Tests only."""

import os

_SCRAPES = int(os.environ.get("TESTKIT_DIE_AFTER_SCRAPES", "0"))

if _SCRAPES > 0:
    from service import metrics as _metrics
    from service.core import engine as _engine

    _render = _metrics.Metrics.render
    _run_images = _engine.Engine.run_images
    _scraped = [0]

    def _counted_render(self):  # type: ignore[no-untyped-def]
        _scraped[0] += 1
        return _render(self)

    def _dying_run_images(self, images):  # type: ignore[no-untyped-def]
        if _scraped[0] >= _SCRAPES:
            os._exit(1)
        return _run_images(self, images)

    _metrics.Metrics.render = _counted_render  # type: ignore[method-assign]
    _engine.Engine.run_images = _dying_run_images  # type: ignore[method-assign]
