"""The error type of `model_export`'s domain code: a failure the user can fix (a bad file, no network, a layout
that does not fit, missing calibration images), with one readable message.

Domain code never speaks of command-line flags. `option` names the keyword parameter at fault; a message that
mentions it writes `{option}` where its name goes. Python callers read the parameter's name
(`calibration_count must be positive`); the CLI (`model_export.cli`) shows the flag that sets it
(`--calibration-count must be positive`), as one line with exit code 2.
"""

from __future__ import annotations

OPTION = "{option}"  # where a message names the parameter at fault


class ModelExportError(ValueError):
    """A user-fixable failure; `option` is the name of the parameter at fault, if one is."""

    def __init__(self, message: str, *, option: str | None = None) -> None:
        self.template = message
        self.option = option
        super().__init__(self.naming_option_as(option) if option else message)

    def naming_option_as(self, spelling: str) -> str:
        """The message with the parameter at fault spelled `spelling` (its name, or a flag)."""
        return self.template.replace(OPTION, spelling)


class WeightsError(ModelExportError):
    """A weights file cannot be fetched, read or loaded; the message says what to do (the CLI prints it as one
    clean line)."""
