"""`SEGMENT_BULK_API_KEYS`: the keys of offline jobs, whose `/segment` requests are all bulk whatever their
`priority` says, so that a job cannot crowd out live users by leaving the parameter out (or asking for
`interactive`). Real uvicorn servers whose model runs wait on a gate."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.main import main as serve_main
from service.settings import Settings
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import png_bytes

LIVE, JOB = "live-user-key", "offline-job-key"


def flat(value: int) -> bytes:
    """A PNG of one grey level: its model input says which request a run was for (its median)."""
    return png_bytes(np.full((80, 100, 3), value, np.uint8))


async def posted(client: httpx.AsyncClient, value: int, key: str, **params: str) -> httpx.Response:
    return await client.post("/segment", content=flat(value), headers={"X-API-Key": key},
                             params={"output": "labels", **params})


def test_a_bulk_keys_requests_run_after_interactive_ones_whatever_they_ask(rule_model: Path) -> None:
    order: list[int] = []
    gated = GatedServer(rule_model, on_run=lambda images: order.extend(int(np.median(i)) for i in images),
                        max_batch_size=1, concurrent_batches=1, max_queue=8, max_wait_ms=0,
                        api_keys=[LIVE], bulk_api_keys=[JOB])

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gated.live.url, timeout=60) as client:
            # A live user's request held; the job's, one without a priority and one claiming to be interactive;
            # a live user's queued last.
            return await gated.queued_in_order([partial(posted, client, 10, LIVE), partial(posted, client, 20, JOB),
                                                partial(posted, client, 30, JOB, priority="interactive"),
                                                partial(posted, client, 40, LIVE)])

    with gated.running():
        order.clear()  # warm-up's runs
        responses = asyncio.run(run())
        waits = {p: gated.metric("segment_queue_wait_seconds_count", priority=p) for p in ("interactive", "bulk")}
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert order == [10, 40, 20, 30]  # the live user's second request overtook both of the job's
    assert waits == {"interactive": 2, "bulk": 2}


def test_a_bulk_key_fills_only_the_bulk_share_and_live_keys_are_still_taken(rule_model: Path) -> None:
    # A queue of 4, half of it for bulk: the job's held run and two queued fill its share.
    gated = GatedServer(rule_model, max_batch_size=1, concurrent_batches=1, max_queue=4, max_wait_ms=0,
                        api_keys=[LIVE], bulk_api_keys=[JOB])

    async def run() -> tuple[list[httpx.Response], httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=gated.live.url, timeout=60) as client:
            gated.gate.clear()
            tasks = [asyncio.ensure_future(posted(client, 10, JOB, priority="interactive"))]
            await asyncio.to_thread(gated.wait_metric, "segment_batches_in_flight", 1)
            for depth in (1, 2):
                tasks.append(asyncio.ensure_future(posted(client, 10 + depth, JOB, priority="interactive")))
                await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", depth)
            refused = await posted(client, 13, JOB, priority="interactive")
            wrong = await client.post("/segment", content=flat(14), headers={"X-API-Key": "not-a-key"})
            live = asyncio.ensure_future(posted(client, 15, LIVE))
            await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", 3)
            gated.gate.set()
            return list(await asyncio.gather(*tasks)), refused, wrong, await live

    with gated.running():
        queued, refused, wrong, live = asyncio.run(run())
    assert [r.status_code for r in queued] == [200] * 3
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "bulk_overloaded", refused.text
    assert "Retry-After" in refused.headers
    assert wrong.status_code == 401
    assert live.status_code == 200


def test_bulk_keys_alone_turn_authentication_on(rule_model: Path) -> None:
    gated = GatedServer(rule_model, bulk_api_keys=[JOB])
    with gated.running():
        url = gated.live.url
        assert httpx.post(f"{url}/segment", content=flat(10)).status_code == 401
        assert httpx.post(f"{url}/segment", content=flat(10), headers={"Authorization": f"Bearer {JOB}"}
                          ).status_code == 200
        assert "ApiKey" in str(httpx.get(f"{url}/openapi.json").json()["components"].get("securitySchemes", {}))


def test_bulk_keys_stay_out_of_settings_errors(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    secret = "s3cret-job-key\u00e9"  # not printable ASCII: refused at startup, and never repeated
    monkeypatch.setenv("SEGMENT_BULK_API_KEYS", f"fine,{secret}")
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_:
        serve_main([])
    assert exit_.value.code != 0
    out = capsys.readouterr()
    said = out.err + out.out + caplog.text
    assert "bulk_api_keys" in said.lower() and "printable ascii" in said.lower(), said
    assert "s3cret" not in said and "fine" not in said
    assert Settings(bulk_api_keys="a, b").bulk_api_keys == ["a", "b"]


def test_each_bulk_key_counts_once_and_an_empty_list_is_explained(caplog: pytest.LogCaptureFixture) -> None:
    from pydantic import ValidationError

    from service.settings_environment import log_authentication

    settings = Settings(api_keys="live", bulk_api_keys="job, job ,other")
    assert settings.bulk_api_keys == ["job", "other"]
    with caplog.at_level(logging.INFO, logger="service.settings_environment"):
        log_authentication(settings)
    assert "authentication on: 3 API key(s), 2 of them bulk only" in caplog.text, caplog.text
    with pytest.raises(ValidationError, match="set it empty for no offline jobs' keys"):
        Settings(api_keys="live", bulk_api_keys=" , ")
