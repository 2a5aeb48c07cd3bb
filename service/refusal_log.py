"""How requests answered 5xx reach the log. A fault (500, 504 `timeout`) is a line each. Shedding load (503
`overloaded`, `bulk_overloaded`, `not_ready`, `shutting_down`, `inference_unavailable`) is what the server does by
design at the moment the log matters most: a line per refused request flooded it (37 lines for 37 refusals at four
times the queue), and `segment_rejected_total{reason}` already counts each; so is a request's own deadline passing (504
`deadline_exceeded`), which its client chose. So each such code gets one line, then at most one line every
`interval_s` while it goes on, which says how many more were refused since."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .errors import ApiError

# And a request's own deadline passing (504 `deadline_exceeded`): the client's choice, frequent by design under load.
SHEDDING = frozenset({"overloaded", "bulk_overloaded", "not_ready", "shutting_down", "inference_unavailable",
                      "deadline_exceeded"})


class RefusalLog:
    """Logs requests' 5xx errors to `log`: faults each, shedding codes at most once per `interval_s` per code."""

    def __init__(self, log: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}  # code -> when its last line was written
        self._unlogged: dict[str, int] = {}  # code -> refusals since that line

    def answered(self, request_id: str, error: ApiError) -> None:
        """A request answered `error`: log it as its kind wants (nothing below 500)."""
        if error.status < 500:
            return
        code = error.code
        if code not in SHEDDING:
            self._log.warning("request %s: %s %s", request_id, code, error.message)
            return
        now = self._clock()
        last = self._last.get(code)
        if last is not None and now - last < self._interval_s:
            self._unlogged[code] = self._unlogged.get(code, 0) + 1
            return
        more = self._unlogged.pop(code, 0)
        since = f" ({more} more refused {code} in the last {now - last:.0f}s)" if last is not None and more else ""
        self._last[code] = now
        self._log.warning("request %s: %s %s%s", request_id, code, error.message, since)
