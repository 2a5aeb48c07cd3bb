"""`--train-bn` modes and the seed's `--is-training` alias."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import read_training_checkpoint
from model_export.cli import build_parser
from model_export.synthetic import CLASSES
from tests.training.conftest import TINY_MODEL, tiny_config


def _train_args(*flags: str):
    return build_parser("train").parse_args(["train", "--data", "d", "--out", "o", *flags])


@pytest.mark.parametrize(("flags", "mode"), [
    ((), None), (("--train-bn",), "all"), (("--is-training",), "all"), (("--train-bn", "stats"), "stats"),
    (("--is-training", "stats"), "stats"), (("--train-bn", "--seed", "3"), "all"),
])
def test_flag_spellings(flags: tuple[str, ...], mode: str | None) -> None:
    assert _train_args(*flags).train_bn == mode


def test_bad_mode_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        _train_args("--train-bn", "gamma")
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("affine", [True, False])
def test_statistics_only_keeps_gamma_and_beta(tiny_voc: Path, tmp_path: Path, affine: bool) -> None:
    torch.manual_seed(5)
    init = build_model("deeplabv3_thin", len(CLASSES), **TINY_MODEL).state_dict()
    run = tiny_config(tiny_voc, tmp_path, max_iter=2, train_bn=True, bn_affine=affine)
    from model_export.train import train

    after = read_training_checkpoint(train(run)["checkpoint"])["state_dict"]
    stats = [k for k in after if k.endswith("running_mean")]
    affine_keys = [k.replace("running_mean", n) for k in stats for n in ("weight", "bias")]
    assert stats and all(not torch.equal(after[k], init[k]) for k in stats)  # statistics moved
    changed = [k for k in affine_keys if not torch.equal(after[k], init[k])]
    assert (len(changed) > 0) if affine else (changed == [])


@pytest.mark.parametrize("affine", [True, False])
def test_trained_bn_at_batch_size_one_holds_only_the_image_pooling_statistics(tiny_voc: Path, tmp_path: Path,
                                                                             affine: bool) -> None:
    """At one image per batch the image-pooling branch's BN sees one value per channel: training mode cannot take
    statistics of it (torch raises). That BN keeps its running statistics; every other BN still trains them."""
    torch.manual_seed(5)
    init = build_model("deeplabv3_thin", len(CLASSES), **TINY_MODEL).state_dict()
    run = tiny_config(tiny_voc, tmp_path, max_iter=2, batch_size=1, accumulate=2, train_bn=True, bn_affine=affine)
    from model_export.train import train

    after = read_training_checkpoint(train(run)["checkpoint"])["state_dict"]
    stats = [k for k in after if k.endswith("running_mean")]
    held = [k for k in stats if torch.equal(after[k], init[k])]
    assert len(held) == 1 and ".convs.4." in held[0], held  # ASPP's fifth branch: image pooling
