"""The real service whose device can be made to fail: `python -m testkit.failing_device --flag PATH` runs
`segment-serve` (settings from SEGMENT_*) on real onnxruntime sessions, except that while the file PATH exists
every model run raises the error a CUDA context raises after an illegal memory access (which, on a GPU, every
later run in that context raises too), or, when the file says `hang`, blocks as a hung device does; warm-up fails
while the file exists. Removing the file mends the device (a blocked run then finishes normally).

It stands in for the GPU that CI does not have: how the service tells a failing device from a failing input, turns
unready and then unhealthy, and recovers, is tested against a real server over HTTP.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CUDA_ERROR = ("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700: an illegal memory access was encountered "
              "(emulated)")


def serve(flag: Path) -> None:
    """Run the service with every model run failing while `flag` exists (blocks)."""
    import uvicorn

    from service.app import create_app
    from service.core.engine import load_engine
    from service.server import build_config
    from service.settings import Settings

    settings = Settings()
    engine = load_engine(settings.engine_options())
    working = engine.run_images

    def run_images(images: Sequence[np.ndarray]) -> np.ndarray:
        while flag.exists() and flag.read_text().strip() == "hang":
            time.sleep(0.02)
        if flag.exists():
            raise RuntimeError(CUDA_ERROR)
        return working(images)

    warm_up = engine.warm_up

    def failing_warm_up(*args: object, **kwargs: object) -> float:
        if flag.exists():
            raise RuntimeError(CUDA_ERROR)
        return warm_up(*args, **kwargs)  # type: ignore[arg-type]

    engine.run_images = run_images  # type: ignore[method-assign]
    engine.warm_up = failing_warm_up  # type: ignore[method-assign]
    uvicorn.Server(build_config(create_app(settings, engine=engine), settings)).run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flag", type=Path, required=True,
                        help="while this file exists, every model run fails (or hangs, if it says 'hang')")
    serve(parser.parse_args().flag)
