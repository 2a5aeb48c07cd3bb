"""Download, hash check and cache of published weights, against a real HTTP server on a loopback port."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from model_export.architectures import build_model
from model_export.cli import main as cli_main
from model_export.weights import PUBLISHED, WeightsError, fetch, hash_prefix, load_weights


def _thin_pth(folder: Path, stem: str = "deeplabv3_thin") -> tuple[Path, str]:
    """A small real state_dict saved under the torchvision '<stem>-<sha256[:8]>.pth' convention."""
    torch.manual_seed(0)
    model = build_model("deeplabv3_thin", 21, aux_loss=True)
    tmp = folder / "tmp.pth"
    torch.save(model.state_dict(), tmp)
    from model_export.torch_io import sha256_file

    digest = sha256_file(tmp)
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.replace(path)
    return path, digest


def test_hash_prefix_follows_torchvision_convention() -> None:
    assert hash_prefix(PUBLISHED["deeplabv3_resnet50"]) == "cd0a2569"
    assert hash_prefix(PUBLISHED["deeplabv3_resnet101"]) == "586e9e4e"
    assert hash_prefix("no_hash_here.pth") is None


def test_fetch_downloads_verifies_and_reuses_cache(served_dir, closed_port_url, tmp_path) -> None:
    root, base = served_dir
    served, digest = _thin_pth(root)
    cache = tmp_path / "cache"
    path, got = fetch(base + served.name, cache=cache, progress=False)
    assert path == cache / served.name
    assert got == digest
    assert path.read_bytes() == served.read_bytes()
    assert not list(cache.glob("*.part"))
    # Second time no network is needed: the same file name on a dead server resolves from the cache.
    again, got_again = fetch(closed_port_url + served.name, cache=cache, progress=False)
    assert again == path and got_again == digest
    model, info = load_weights(path, arch="deeplabv3_thin")
    assert info["kind"] == "torchvision" and info["sha256"] == digest
    assert model.aux_classifier is not None
    model_no_aux, _ = load_weights(path, arch="deeplabv3_thin", keep_aux=False)
    assert model_no_aux.aux_classifier is None
    assert not any(k.startswith("aux_classifier.") for k in model_no_aux.state_dict())


def test_wrong_hash_is_rejected_and_not_cached(served_dir, tmp_path) -> None:
    root, base = served_dir
    served, digest = _thin_pth(root)
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    renamed = served.with_name(f"deeplabv3_thin-{wrong}.pth")
    served.rename(renamed)
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match=rf"expected it to start with {wrong}.*removed"):
        fetch(base + renamed.name, cache=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_bad_file_in_cache_is_removed(tmp_path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    bad = cache / PUBLISHED["deeplabv3_resnet50"]
    bad.write_bytes(b"not the published file")
    with pytest.raises(WeightsError, match="cd0a2569"):
        fetch("http://127.0.0.1:9/" + bad.name, cache=cache, progress=False)
    assert not bad.exists()


def test_http_404_names_the_url(served_dir, tmp_path) -> None:
    _, base = served_dir
    with pytest.raises(WeightsError, match=r"HTTP 404.*save it as"):
        fetch(base + "missing-12345678.pth", cache=tmp_path, progress=False)


def test_unreachable_fails_fast_and_manual_copy_is_used(served_dir, closed_port_url, tmp_path) -> None:
    root, _ = served_dir
    served, digest = _thin_pth(root)
    cache = tmp_path / "cache"
    start = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        fetch(closed_port_url + served.name, cache=cache, progress=False)
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    expected_place = cache / served.name
    assert str(expected_place) in message and "no network" in message
    # Do what the message says, then re-run.
    shutil.copy(served, expected_place)
    path, got = fetch(closed_port_url + served.name, cache=cache, progress=False)
    assert path == expected_place and got == digest


def test_cli_unreachable_prints_one_line_with_manual_path(closed_port_url, tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    start = time.perf_counter()
    code = cli_main(["pretrained", "deeplabv3_resnet101", "--base-url", closed_port_url,
                     "--cache-dir", str(cache), "-o", str(tmp_path / "x.onnx")])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert elapsed < 5.0
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(cache / "deeplabv3_resnet101_coco-586e9e4e.pth") in err
    assert not (tmp_path / "x.onnx").exists()


def test_weights_already_in_torch_hub_cache_are_used_offline(served_dir, closed_port_url, tmp_path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """One cache with torch and torchvision: a file in $TORCH_HOME/hub/checkpoints needs no download."""
    root, _ = served_dir
    served, digest = _thin_pth(root)
    monkeypatch.delenv("SEGMENT_CACHE_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    assert hub == tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(served, hub / served.name)
    path, got = fetch(closed_port_url + served.name, progress=False)
    assert path == hub / served.name and got == digest


def test_downloads_go_through_torch_hub_into_its_cache(served_dir, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = served_dir
    served, digest = _thin_pth(root)
    monkeypatch.delenv("SEGMENT_CACHE_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls: list[tuple[str, str | None]] = []
    real = torch.hub.download_url_to_file

    def spy(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, hash_prefix))
        real(url, dst, hash_prefix=hash_prefix, progress=progress)

    monkeypatch.setattr(torch.hub, "download_url_to_file", spy)
    path, got = fetch(base + served.name, progress=False)
    assert calls == [(base + served.name, digest[:8])]
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / served.name and got == digest


def test_a_published_name_loads_through_its_row(tmp_path, monkeypatch) -> None:
    """The table row, not the name, says which arch the weights fill and the size they are served at."""
    from model_export import weights
    from model_export.catalog import WeightSource
    from service.core.contract import VOC_CLASSES

    cache = tmp_path / "cache"
    cache.mkdir()
    cached, digest = _thin_pth(cache, stem="thin_demo")
    row = WeightSource("thin_demo", "deeplabv3_thin", cached.name, VOC_CLASSES, "imagenet", 200)
    monkeypatch.setattr(weights, "WEIGHT_SOURCES", {row.name: row})
    model, info = load_weights("thin_demo", cache=cache, base_url="http://127.0.0.1:9/")
    assert model.arch == "deeplabv3_thin" and info["arch"] == "deeplabv3_thin"
    assert info["input_size"] == 200 and info["sha256"] == digest
    assert info["source"] == "http://127.0.0.1:9/" + cached.name
