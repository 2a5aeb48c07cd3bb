"""What the server says of its environment at startup: SEGMENT_* variables that no setting reads (named in a
warning, with the closest setting), and whether requests need an API key."""

from __future__ import annotations

import difflib
import ipaddress
import logging
from collections.abc import Mapping

from .settings import Settings

log = logging.getLogger(__name__)

# SEGMENT_* names read by other parts than the server's settings: the supervisor's hand-over to its workers, the
# model tools' weight cache and mirror, the webcam client, and docker-compose's own variables. Not the clients'
# SEGMENT_API_KEY: set for a server, it is a misspelt SEGMENT_API_KEYS, and the server would run without keys.
OTHER_VARIABLES = frozenset({"SEGMENT_WORKER_SLOTS_DIR", "SEGMENT_CACHE_DIR", "SEGMENT_WEIGHTS_BASE_URL", "SEGMENT_URL",
                             "SEGMENT_GPUS", "SEGMENT_MODEL_FILE", "SEGMENT_PUBLISH"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each SEGMENT_* variable in `environ` that nothing reads, naming the closest setting: pydantic
    ignores unknown names, so a misspelt one (SEGMENT_MAX_BATCHSIZE) would leave its setting at the default
    without a word. Names are matched regardless of case, as the settings read them."""
    prefix = Settings.model_config["env_prefix"].upper()
    fields = [field.upper() for field in Settings.model_fields]
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(prefix) or upper.removeprefix(prefix) in fields or upper in OTHER_VARIABLES:
            continue
        # Compared without the prefix every name shares, which would make any two names look alike.
        close = difflib.get_close_matches(upper.removeprefix(prefix), fields, n=1)
        hint = f"; did you mean {prefix}{close[0]}?" if close else ""
        warnings.append(f"environment variable {name} is not a setting and is ignored{hint}")
    return warnings


def log_authentication(settings: Settings) -> None:
    """One line on whether requests need an API key: a warning when none does and the server listens beyond this
    machine, so that a deployment that lost its keys (a Secret not mounted) says so in its first lines."""
    if settings.accepted_api_keys:
        log.info("authentication on: %d API key(s), %d of them bulk only; every route but the probes, /metrics and "
                 "the docs needs one", len(settings.accepted_api_keys), len(settings.bulk_api_keys))
    elif _loopback(settings.host):
        log.info("authentication off (SEGMENT_API_KEYS is empty); listening on this machine only (%s)", settings.host)
    else:
        log.warning("authentication off (SEGMENT_API_KEYS is empty): every route is open to whoever reaches %s:%d",
                    settings.host or "0.0.0.0", settings.port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or empty (every interface)
        return False


def stray_worker_slot(settings: Settings) -> str | None:
    """The warning for a `SEGMENT_WORKER_SLOT` set on a server started by hand, else None. The supervisor sets it
    for each worker it starts (never through `main`); copied from a worker's environment, it would silently pick
    another CUDA device (the slot modulo the devices) and another `worker` label on every metric."""
    if settings.worker_slot is None:
        return None
    return (f"SEGMENT_WORKER_SLOT={settings.worker_slot} is set: the supervisor sets it for its workers; here it "
            "picks the CUDA device (slot modulo the devices) and the 'worker' label of the metrics. Unset it; to "
            "choose the device, use SEGMENT_CUDA_OPTIONS=device_id=N")
