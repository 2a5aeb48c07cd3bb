"""The GPU benchmark's mask check (`bench.gpu_bench`): a configuration that answers wrong labels (a CUDA-graph
replay returning a stale batch's labels, padded rows leaking between the images of a batch) must not pass for a
faster row. Right after a configuration's service is ready, the first bodies are segmented one at a time (that
configuration's own answers), then concurrently, so that batches mix images; the first configuration checked in a
run is the reference every later one is compared with."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from testkit.images import decode_labels

BODIES = 3  # distinct images checked
CONCURRENT = 8  # requests at once, cycling the bodies: batches of more than one image mix them
MIN_AGREEMENT = 0.99  # fp16 and fp32 agree on more than 99.9 % of the pixels


@dataclass
class MaskReference:
    """The run's reference labels, one array per checked body: set by the first configuration checked."""

    labels: list[np.ndarray] = field(default_factory=list)


def agreement(answer: np.ndarray, reference: np.ndarray) -> float:
    """The fraction of pixels where `answer` equals `reference`; 0 when their shapes differ."""
    if answer.shape != reference.shape:
        return 0.0
    return float(np.mean(answer == reference))


async def _fetch(url: str, bodies: list[bytes]) -> list[np.ndarray]:
    """The `labels` answers for `bodies`, all requests in flight at once; RuntimeError naming a non-200 answer."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        responses = await asyncio.gather(*(client.post("/segment", content=body, params={"output": "labels"},
                                                       headers={"Content-Type": "image/jpeg"}) for body in bodies))
    for response in responses:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    return [decode_labels(response.content) for response in responses]


def check_masks(url: str, bodies: list[bytes], reference: MaskReference) -> dict[str, Any]:
    """`{"agreement": min over every answer of its pixel agreement with the reference labels of its body,
    "consistent": whether the concurrent answers equal this configuration's one-at-a-time answers}`; the first
    configuration checked becomes `reference` (`"reference": True`). A failed request gives `{"error": ...}`
    rather than raising: the configuration's load points still run."""
    checked = bodies[:BODIES]
    try:
        alone = [asyncio.run(_fetch(url, [body]))[0] for body in checked]
        together = asyncio.run(_fetch(url, [checked[i % len(checked)] for i in range(CONCURRENT)]))
    except (httpx.HTTPError, RuntimeError, OSError) as exc:  # OSError: an answer PIL cannot decode
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    out: dict[str, Any] = {}
    if not reference.labels:
        reference.labels = alone
        out["reference"] = True
    answers = [*enumerate(alone), *((i % len(checked), a) for i, a in enumerate(together))]
    out["agreement"] = min(agreement(a, reference.labels[i]) for i, a in answers)
    out["consistent"] = all(np.array_equal(a, alone[i % len(checked)]) for i, a in enumerate(together))
    return out


def mask_failures(results: dict[str, Any]) -> str | None:
    """One line naming every configuration in `results` whose masks disagree with the reference or are not
    consistent between one-at-a-time and concurrent requests; None when there is none."""
    bad = []
    for name, config in results.items():
        masks = config.get("masks") if isinstance(config, dict) else None
        if not masks or "error" in masks:
            continue
        why = [f"agreement {masks['agreement']:.4f}"] if masks["agreement"] < MIN_AGREEMENT else []
        why += [] if masks["consistent"] else ["concurrent answers differ from one-at-a-time ones"]
        if why:
            bad.append(f"{name} ({', '.join(why)})")
    if not bad:
        return None
    return f"masks differ from the reference (agreement below {MIN_AGREEMENT}) or between requests: " + "; ".join(bad)
