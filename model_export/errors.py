"""The error type of `model_export`'s domain code: a failure the user can fix (a bad file, no network, a layout
that does not fit, missing calibration images), with one readable message.

Domain code never speaks of command-line flags: `option` names the parameter at fault, and the CLI
(`model_export.cli`) shows it as its flag (`calibration_dir` -> `... (see --calibration-dir)`), one line, exit code 2.
"""

from __future__ import annotations


class ModelExportError(ValueError):
    """A user-fixable failure; `option` is the name of the parameter at fault, if one is."""

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option

    def for_command_line(self) -> str:
        """The message as the CLI prints it: followed by the flag of `option`, if any."""
        return f"{self} (see --{self.option.replace('_', '-')})" if self.option else str(self)
