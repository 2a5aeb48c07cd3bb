"""Training scalars: `<out>/metrics.csv`, and TensorBoard when it is installed."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class ScalarLog:
    """Scalars to `<out>/metrics.csv`, and to TensorBoard under `<out>/tb` when tensorboard is installed."""

    def __init__(self, out: Path, append: bool) -> None:
        self.path = out / "metrics.csv"
        new = not (append and self.path.exists())
        self._fh = open(self.path, "w" if new else "a", newline="")  # noqa: SIM115 (closed in close())
        self._csv = csv.writer(self._fh)
        if new:
            self._csv.writerow(["iteration", "loss", "lr", "seconds"])
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb: Any = SummaryWriter(str(out / "tb"))
        except ImportError:  # tensorboard is optional
            self._tb = None

    def write(self, iteration: int, loss: float, lr: float, seconds: float) -> None:
        self._csv.writerow([iteration, f"{loss:.6f}", f"{lr:.6g}", f"{seconds:.2f}"])
        self._fh.flush()
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, iteration)
            self._tb.add_scalar("train/lr", lr, iteration)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
