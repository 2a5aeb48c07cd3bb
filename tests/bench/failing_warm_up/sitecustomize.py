"""Put this folder on a server's PYTHONPATH to make every warm-up of its engine fail, with the error a GPU raises
once its context is lost (`testkit.failing_device`'s): the service then answers /readyz 503 naming it, and retries
the warm-up until it is unhealthy. Tests only."""

from service.core import engine as _engine
from testkit.failing_device import CUDA_ERROR


def _failing_warm_up(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    raise RuntimeError(CUDA_ERROR)


_engine.Engine.warm_up = _failing_warm_up  # type: ignore[method-assign]
