"""Put this folder on the GPU benchmark's PYTHONPATH, with TESTKIT_BROKEN_CUDA_CACHE=1, to give its process the
CUDA context an earlier stage broke: torch sees a device, and freeing its cached memory raises what CUDA raises
after an illegal memory access (sticky: every later CUDA call in the process raises it). Only the process started
with the variable: it is taken out of the environment its children inherit. Tests only."""

import os

if os.environ.pop("TESTKIT_BROKEN_CUDA_CACHE", ""):
    import torch

    def _broken_empty_cache() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered (emulated)")

    torch.cuda.is_available = lambda: True  # type: ignore[assignment]
    torch.backends.cudnn.version = lambda: None  # type: ignore[assignment]  # this build's would look for a device
    torch.cuda.empty_cache = _broken_empty_cache  # type: ignore[assignment]
