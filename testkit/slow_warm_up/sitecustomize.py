"""Put this folder on a server's PYTHONPATH to make every warm-up of its processes (the supervisor's workers
included: each starts a fresh interpreter, which imports this module) take TESTKIT_WARM_UP_S seconds longer, as
a GPU's warm-up of many buckets does. Tests only."""

import os
import time

_EXTRA_S = float(os.environ.get("TESTKIT_WARM_UP_S", "0"))

if _EXTRA_S > 0:
    from service.core import engine as _engine

    _warm_up = _engine.Engine.warm_up

    def _slow_warm_up(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(_EXTRA_S)
        return _warm_up(self, *args, **kwargs)

    _engine.Engine.warm_up = _slow_warm_up  # type: ignore[method-assign]
