"""Downloads cut short: a real HTTP server on a loopback port announces the whole file and closes the connection
after part of it. Nothing partial may reach the cache, whatever the file is called."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model_export.cli import main as cli_main
from model_export.torch_io import sha256_file
from model_export.weights import WeightsError, fetch
from testkit.http_stub import QuietHandler, serving


@pytest.fixture()
def cut_short(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """(base URL, the full file) of a server that sends a third of the file under its full Content-Length."""
    torch.save({"w": torch.arange(20000, dtype=torch.float32)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # http.server calls it by this name
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    with serving(Handler) as url:
        yield f"{url}/", data


def _cached(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*")) if cache.exists() else []


def test_a_name_without_sha256_prefix_is_refused_before_anything_is_cached(cut_short, tmp_path: Path) -> None:
    base, _ = cut_short
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match="no sha256 prefix"):
        fetch(base + "weights.pth", cache=cache, progress=False)
    assert _cached(cache) == []


def test_a_download_cut_short_is_not_cached_under_a_hashed_name(cut_short, tmp_path: Path) -> None:
    base, data = cut_short
    cache = tmp_path / "cache"
    (tmp_path / "whole.pth").write_bytes(data)
    name = f"weights-{sha256_file(tmp_path / 'whole.pth')[:8]}.pth"
    with pytest.raises(WeightsError, match="removed and nothing was cached"):
        fetch(base + name, cache=cache, progress=False)
    assert _cached(cache) == []


def test_cli_url_without_prefix_is_one_line_and_caches_nothing(cut_short, tmp_path: Path, capsys) -> None:
    base, _ = cut_short
    cache = tmp_path / "cache"
    code = cli_main(["pretrained", "deeplabv3_resnet50", "--url", base + "deeplabv3_resnet50.pth",
                     "--cache-dir", str(cache), "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "no sha256 prefix" in err, err
    assert _cached(cache) == [] and not (tmp_path / "m.onnx").exists()


def test_cli_cache_that_cannot_be_created_is_one_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code = cli_main(["pretrained", "deeplabv3_resnet50", "--base-url", "http://127.0.0.1:9/",
                     "--cache-dir", str(blocker / "cache"), "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "cannot create the weights cache" in err, err
