"""Loading the engine for the service: the core's options from the settings, errors named by variable."""

from __future__ import annotations

from .core.engine import Engine, EngineError, load_engine
from .settings import Settings


def open_engine(settings: Settings) -> Engine:
    """`load_engine` with these settings; an `EngineError` names the `SEGMENT_*` variable at fault."""
    try:
        return load_engine(settings.engine_options())
    except EngineError as exc:
        if exc.setting is None:
            raise
        raise EngineError(f"SEGMENT_{exc.setting.upper()}: {exc}", exc.setting) from None
