"""Put this folder on a server's PYTHONPATH to make its served model runs (`Engine.run_images`, what the batcher
calls) wait while the file named by TESTKIT_HOLD_FILE exists (up to 60 s a run): a test then knows a request is
still running for as long as it keeps that file, however fast the machine, rather than hoping a slow model outlasts
its next poll. Tests only."""

import os
import time

_HOLD_FILE = os.environ.get("TESTKIT_HOLD_FILE", "")

if _HOLD_FILE:
    from service.core import engine as _engine

    _run_images = _engine.Engine.run_images

    def _held_run_images(self, images):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 60
        while os.path.exists(_HOLD_FILE) and time.monotonic() < deadline:
            time.sleep(0.01)
        return _run_images(self, images)

    _engine.Engine.run_images = _held_run_images  # type: ignore[method-assign]
