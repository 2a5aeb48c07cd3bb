"""`segment-webcam`'s view of the server going away (a restart, a redeploy, a saturated server): which failures
mean it (`server_away`), the outage until `/readyz` is 200 again (`Outage`), and the threads requests run in
(`in_thread`), which Ctrl-C does not wait for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from service.client import SegmentApiError, SegmentClientError, SegmentConnectionError, SegmentTlsError

T = TypeVar("T")


def in_thread(fn: Callable[..., T], *args: Any, daemon: bool) -> Future[T]:
    """`fn(*args)` in a thread of its own, its result or error in the future returned. Not a ThreadPoolExecutor,
    whose threads the interpreter joins at exit: after Ctrl-C the process waited for every request in flight (up to
    the client's timeout) for answers it throws away. Requests to a server run in daemon threads, which the exit
    leaves behind; --local runs (milliseconds) do not: onnxruntime must not be torn down under one."""
    future: Future[T] = Future()

    def work() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever reads the future
                future.set_exception(exc)

    threading.Thread(target=work, name="segment-webcam", daemon=daemon).start()
    return future


def server_away(exc: Exception) -> bool:
    """Whether a frame failed because of the server rather than itself: no connection, or 503 (restarting,
    warming up, overloaded, its device failing), which `/readyz` tells the end of."""
    return isinstance(exc, SegmentConnectionError) or (isinstance(exc, SegmentApiError) and exc.status == 503)


class Outage:
    """The server away: from the first frame that failed so until `/readyz` is 200 again, which a thread waits for
    (`wait_ready`). No frame is sent meanwhile: each would fail too, after the retries. It gives up `wait` seconds
    after the last frame segmented, however often the server said it was ready in between."""

    def __init__(self, wait_ready: Callable[[float], None], wait: float) -> None:
        self._wait_ready, self.wait = wait_ready, wait
        self._waiting: Future[None] | None = None
        self.since, self.passed = 0.0, 0  # when it began; frames passed through unsent since
        self.segmented = True  # a frame got through since the last outage: the next one is a new one

    @property
    def active(self) -> bool:
        return self._waiting is not None

    def begin(self) -> None:
        if self.segmented:
            self.since, self.passed, self.segmented = time.monotonic(), 0, False
        self._waiting = in_thread(self._wait, self.wait - (time.monotonic() - self.since), daemon=True)

    def _wait(self, left: float) -> None:
        if left <= 0:
            raise SegmentClientError(f"no frame segmented for {self.wait:g}s (--wait), although the server said "
                                     "it was ready")
        try:
            self._wait_ready(left)
        except SegmentTlsError:  # raised at once (a certificate not accepted, no TLS), told as it is: no wait mends it
            raise
        except SegmentClientError:
            raise SegmentClientError(f"the server was not ready again within {self.wait:g}s (--wait)") from None

    def ended(self, block: bool) -> bool:
        """Whether the server is ready again (waiting for it if `block`; Ctrl-C interrupts that); raises
        `SegmentClientError` when it was not within `wait` seconds."""
        if self._waiting is None:
            return True
        if not block and not self._waiting.done():
            return False
        self._waiting.result()
        self._waiting = None
        return True
