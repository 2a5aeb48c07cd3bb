"""`resolution` in the clients: the sync and async clients send it (the client's default, or a call's own), report
the tiles the image ran in, refuse a value the API does not take before sending anything, and surface a
`too_many_tiles` refusal; the folder tool's `--resolution` reaches the server and the in-process pipeline alike.

The image is 400x300 with 1-px lines, on the rule model at input size 96: shrunk to 96 for one model run the lines
blend into the dark background and vanish; at the image's own resolution every line pixel keeps its class."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.batch import main as segment_folder
from service.client import AsyncSegmentClient, SegmentApiError, SegmentClient
from service.client_wire import segment_params
from service.settings import Settings
from tests.service.svc_helpers import LiveServer, make_rule_model, png_bytes

MAX_TILES = 32  # 400x300 at its own size runs in 30 tiles of 96 (the default bound, 16, would refuse it)


def thin_lines() -> np.ndarray:
    """Dark 400x300 RGB with 1-px red columns and blue rows, each too faint once averaged with its dark neighbours
    (150 of 255, a quarter of it after a 4x downscale) for the rule model's brightness threshold (64)."""
    image = np.zeros((300, 400, 3), np.uint8)
    image[:, 50::40, 0] = 150
    image[30::40, :, 2] = 150
    return image


def rule_labels(image: np.ndarray) -> np.ndarray:
    """The rule model's answer pixel by pixel: the brightest channel's class (R 1, G 2, B 3; the first on a tie),
    background where it is below 64."""
    return np.where(image.max(axis=2) < 64, 0, image.argmax(axis=2) + 1).astype(np.uint8)


EXPECTED = rule_labels(thin_lines())


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rule_model(tmp_path_factory.mktemp("resolution") / "rule.onnx", input_size=96)


@pytest.fixture(scope="module")
def url(model: Path) -> Iterator[str]:
    """A real server on the rule model that runs up to `MAX_TILES` tiles a request."""
    live = LiveServer(Settings(model_path=model, host="127.0.0.1", port=0, max_wait_ms=2, intra_op_threads=1,
                               worker_threads=2, max_tiles=MAX_TILES)).start()
    try:
        yield live.url
    finally:
        live.stop()


@pytest.fixture(scope="module")
def image_png() -> bytes:
    return png_bytes(thin_lines())


def test_the_model_input_size_loses_the_lines_and_the_image_own_keeps_them(url: str, image_png: bytes) -> None:
    """The premise of the tests below, through the client: no lines without `resolution`, all of them with it."""
    assert EXPECTED.any() and set(np.unique(EXPECTED)) == {0, 1, 3}
    with SegmentClient(url) as client:
        plain = client.segment(image_png, "labels")
        assert not plain.array().any() and plain.tiles is None
        for resolution in (400, "native", np.int64(400)):
            tiled = client.segment(image_png, "labels", resolution=resolution)
            np.testing.assert_array_equal(tiled.array(), EXPECTED)
            assert tiled.tiles == 30


def test_the_client_default_applies_to_every_call_unless_a_call_names_its_own(url: str, image_png: bytes) -> None:
    with SegmentClient(url, resolution="native") as client:
        by_default = client.segment(image_png, "labels")
        np.testing.assert_array_equal(by_default.array(), EXPECTED)
        assert by_default.tiles == 30
        overridden = client.segment(image_png, "labels", resolution=96)  # the input size: one run, no lines
        assert not overridden.array().any() and overridden.tiles is None
        assert client.segment(image_png, "labels", resolution=200).tiles == 6  # a call's own number is sent


def test_the_async_client_sends_its_default_and_a_calls_own(url: str, image_png: bytes) -> None:
    async def calls() -> tuple[list, list]:
        async with AsyncSegmentClient(url, resolution=400) as client:
            tiled = await client.segment(image_png, "labels")
            whole = await client.segment(image_png, "labels", resolution=96)
        async with AsyncSegmentClient(url) as client:
            native = await client.segment(image_png, "labels", resolution="native")
        return [tiled, native], [whole]

    tiled, whole = asyncio.run(calls())
    for answer in tiled:
        np.testing.assert_array_equal(answer.array(), EXPECTED)
        assert answer.tiles == 30
    assert not whole[0].array().any() and whole[0].tiles is None


@pytest.mark.parametrize("bad", [0, -3, 32769, "max", "400", "Native", True, False, 1.5, 400.0])
def test_a_resolution_the_api_refuses_is_a_value_error_before_any_request(bad: object) -> None:
    """Nothing listens at the URL: a request would fail as a connection error, not as a ValueError."""
    with pytest.raises(ValueError, match="resolution"):
        segment_params("labels", None, None, None, None, resolution=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resolution"):
        SegmentClient("http://127.0.0.1:9", resolution=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resolution"):
        AsyncSegmentClient("http://127.0.0.1:9", resolution=bad)  # type: ignore[arg-type]
    with SegmentClient("http://127.0.0.1:9", retries=0) as client, pytest.raises(ValueError, match="resolution"):
        client.segment(b"not sent", "labels", resolution=bad)  # type: ignore[arg-type]

    async def call() -> None:
        async with AsyncSegmentClient("http://127.0.0.1:9", retries=0) as client:
            await client.segment(b"not sent", "labels", resolution=bad)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="resolution"):
        asyncio.run(call())


def test_the_query_spells_the_resolution_as_the_api_does() -> None:
    assert segment_params("labels", None, None, None, None, resolution=np.int32(512))["resolution"] == "512"
    assert segment_params("labels", None, None, None, None, resolution="native")["resolution"] == "native"
    assert "resolution" not in segment_params("labels", None, None, None, None)


def test_too_many_tiles_is_the_clients_422(url: str, image_png: bytes) -> None:
    with SegmentClient(url) as client, pytest.raises(SegmentApiError) as info:
        client.segment(image_png, "labels", resolution=1000)  # 192 tiles
    assert (info.value.status, info.value.code) == (422, "too_many_tiles")
    assert "at most" in info.value.message
    most = info.value.max_resolution  # the most the server gives this image: asked for, it is answered
    assert isinstance(most, int) and 96 < most < 1000
    with SegmentClient(url) as client:
        assert client.segment(image_png, "labels", resolution=most).tiles is not None

    async def call() -> None:
        async with AsyncSegmentClient(url, resolution=1000) as client:
            await client.segment(image_png, "labels")

    with pytest.raises(SegmentApiError) as info:
        asyncio.run(call())
    assert (info.value.status, info.value.code) == (422, "too_many_tiles")


def written_labels(out: Path) -> np.ndarray:
    (mask,) = out.rglob("*.png")
    return np.asarray(Image.open(mask))


@pytest.fixture
def folder(tmp_path: Path, image_png: bytes) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "lines.png").write_bytes(image_png)
    return tmp_path / "in"


def test_the_folder_tool_sends_resolution_to_the_server(url: str, folder: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    common = [str(folder), "--output", "labels", "--server", url, "--no-progress"]
    assert segment_folder([*common, "--out", str(tmp_path / "plain")]) == 0
    assert not written_labels(tmp_path / "plain").any()
    assert segment_folder([*common, "--out", str(tmp_path / "tiled"), "--resolution", "native"]) == 0
    np.testing.assert_array_equal(written_labels(tmp_path / "tiled"), EXPECTED)
    # The resolution decides what the masks hold: recorded, a rerun asking for another stops rather than skip them.
    record = json.loads((tmp_path / "tiled" / ".segment-run.json").read_text())
    assert "native" in json.dumps(record)
    assert segment_folder([*common, "--out", str(tmp_path / "tiled"), "--resolution", "400"]) == 2
    assert segment_folder([*common, "--out", str(tmp_path / "tiled"), "--resolution", "native"]) == 0  # resumed
    # Past the server's bound the file is segmented at the most the server gives it (as the page does), and the
    # run says so: the masks are those of the resolution the server names.
    capsys.readouterr()
    assert segment_folder([*common, "--out", str(tmp_path / "many"), "--resolution", "1000"]) == 0
    err = capsys.readouterr().err
    assert "1 written" in err and "segment: 1 of the files written needed more tiles" in err, err
    with SegmentClient(url) as client, pytest.raises(SegmentApiError) as refused:
        client.segment(png_bytes(thin_lines()), "labels", resolution=1000)
    most = refused.value.max_resolution
    assert most is not None
    with SegmentClient(url) as client:
        at_most = client.segment(png_bytes(thin_lines()), "labels", resolution=most)
    np.testing.assert_array_equal(written_labels(tmp_path / "many"),
                                  np.asarray(Image.open(io.BytesIO(at_most.content))))


def test_the_folder_tool_passes_resolution_to_the_local_pipeline(model: Path, folder: Path, tmp_path: Path) -> None:
    common = [str(folder), "--output", "labels", "--local", str(model), "--no-progress", "--threads", "1"]
    assert segment_folder([*common, "--out", str(tmp_path / "plain")]) == 0
    assert not written_labels(tmp_path / "plain").any()
    assert segment_folder([*common, "--out", str(tmp_path / "tiled"), "--resolution", "400"]) == 0
    np.testing.assert_array_equal(written_labels(tmp_path / "tiled"), EXPECTED)


@pytest.mark.parametrize("extra", [["--resolution", "0"], ["--resolution", "max"], ["--resolution", "40000"],
                                   ["--resolution", "400", "--crf"]])
def test_the_folder_tool_refuses_a_bad_resolution_before_any_file(extra: list[str], folder: Path,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        segment_folder([str(folder), "--out", str(tmp_path / "out"), "--server", "http://127.0.0.1:9", *extra])
    assert info.value.code == 2
    assert not (tmp_path / "out").exists()


def test_the_in_process_segmenter_keeps_its_resolution_and_refuses_it_with_crf(model: Path, image_png: bytes) -> None:
    from service.local import LocalSegmenter

    tiled = LocalSegmenter(model, providers="cpu", threads=1, resolution="native")
    np.testing.assert_array_equal(tiled.labels([thin_lines()])[0], EXPECTED)  # its `labels` too, not only `segment`
    whole = LocalSegmenter(model, providers="cpu", threads=1)
    assert not np.array_equal(whole.labels([thin_lines()])[0], EXPECTED)
    # As the service answers it 422: the CRF refines one image at the model's input size.
    with pytest.raises(ValueError, match="crf"):
        tiled.segment(image_png, crf=True)
    with pytest.raises(ValueError, match="crf"):
        whole.segment(image_png, crf=True, resolution=400)
