"""The priorities of `POST /segment?priority=`, first taken first: `interactive` (someone waits for the answer, the
default) and `bulk` (offline work). Shared by the server's waiting line (service/batch_line.py) and the clients;
standard library only, so a client needs nothing of the server to know them."""

from __future__ import annotations

from typing import Literal

Priority = Literal["interactive", "bulk"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "bulk")
