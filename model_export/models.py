"""ResNet-ASPP (DeepLab) architectures on torchvision backbones.

Key layout follows torchvision's segmentation models (`backbone.*`, `classifier.*`, `aux_classifier.*`), so
torchvision's published deeplabv3 checkpoints load with `strict=True`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

DEEPLABV2_RATES = (6, 12, 18, 24)
# The builders with Caffe-style ResNet geometry (`_caffe_style`); they take `legacy_caffe_stride`.
CAFFE_STYLE_ARCHS = frozenset({"deeplabv2_resnet101", "deeplabv2_thin"})
# DeepLab-v3's ASPP rates at output stride 16; at 8 the features are twice as large and the rates double (12, 24,
# 36: torchvision's fixed rates, as it builds its ResNet models at 8 only). `aspp_rates` picks them.
DEEPLABV3_RATES_OS16 = (6, 12, 18)
# The builders with a DeepLab-v3 ASPP on our ResNets (`aspp_rates`); they take `legacy_aspp_rates`.
DEEPLABV3_ASPP_ARCHS = frozenset({"deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_thin"})


class ASPPSum(nn.Module):
    """DeepLab-v2 ASPP: parallel 3x3 atrous convs straight to the classes, summed (no image pooling)."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = DEEPLABV2_RATES) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.convs:
            # The seed initialises the classifier with N(0, 0.01) and zero bias.
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class ThinDeepLabHead(nn.Sequential):
    """torchvision's DeepLabHead layout with a narrower ASPP, for the demo and test models."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 64,
                 rates: Sequence[int] = DEEPLABV3_RATES_OS16) -> None:
        super().__init__(
            ASPP(in_channels, rates, out_channels=channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )


class SegmentationModel(nn.Module):
    """Backbone + ASPP head. `forward` returns logits at the feature stride (not upsampled).

    Training compares them with nearest-downsampled labels, as the seed does; the export wrapper upsamples.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None,
                 arch: str, preprocessing: str, output_stride: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.arch = arch
        # "imagenet": RGB, (x/255 - mean)/std. "caffe": BGR, x - mean. It belongs to the weights.
        self.preprocessing = preprocessing
        self.output_stride = output_stride
        # How logit cell i of n maps to the H input pixels when upsampled for serving or evaluation. False
        # (half-pixel centres): pixel (i + 0.5)·H/n - 0.5, the centre of the block the cell covers (8i + 3.5 at
        # stride 8 when H = 8n), what our trainer teaches (model_export.loss). True (corner-aligned, Caffe's
        # Interp): pixel i·(H - 1)/(n - 1), so 8i at the 8k+1 sizes DeepLab-v2's Caffe models were trained and
        # tested at. It belongs to the weights, as `preprocessing` does; only a converted trained Caffe model
        # sets it (model_export.caffe).
        self.upsample_align_corners = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x)["out"])

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Main logits and, when the model has an aux head, the aux logits (both at feature stride)."""
        feats = self.backbone(x)
        aux = self.aux_classifier(feats["aux"]) if self.aux_classifier is not None and "aux" in feats else None
        return self.classifier(feats["out"]), aux

    def head_modules(self) -> list[nn.Module]:
        """Modules trained at 10x/20x LR: the newly initialised classifier heads."""
        return [m for m in (self.classifier, self.aux_classifier) if m is not None]


def _dilation_flags(output_stride: int) -> list[bool]:
    if output_stride == 8:
        return [False, True, True]
    if output_stride == 16:
        return [False, False, True]
    raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")


def stage_rates(output_stride: int) -> tuple[int, int, int]:
    """The atrous rate of layer2, layer3 and layer4 at this output stride (each replaced stride doubles it)."""
    rates, rate = [], 1
    for dilate in _dilation_flags(output_stride):
        rate *= 2 if dilate else 1
        rates.append(rate)
    return rates[0], rates[1], rates[2]


def aspp_rates(output_stride: int, legacy_aspp_rates: bool = False) -> tuple[int, ...]:
    """DeepLab-v3's ASPP rates at this output stride: (6, 12, 18) at 16, doubled to (12, 24, 36) at 8 (the paper's
    choice; at 16 the rate-36 branch would see 1 of its 9 taps on the 33x33 features of a 513 input).

    `legacy_aspp_rates` rebuilds models trained when every output stride took (12, 24, 36): checkpoints of an older
    format load with it (model_export.checkpoint); at output stride 8 it changes nothing."""
    _dilation_flags(output_stride)  # the same error for an unsupported stride
    scale = 2 if output_stride == 8 or legacy_aspp_rates else 1
    return tuple(rate * scale for rate in DEEPLABV3_RATES_OS16)


def _set_rate(conv: nn.Conv2d, rate: int) -> None:
    conv.dilation, conv.padding = (rate, rate), (rate, rate)


def _single_block_rates(net: resnet.ResNet, output_stride: int) -> None:
    """torchvision gives a dilated stage's first block the *previous* rate and only later blocks the stage's
    own; a stage of one block would then never use its rate (layers (1,1,1,1) at stride 8 gave layer3 rate 1
    and layer4 rate 2). Such a block takes the stage's rate. Stages of several blocks (every published depth)
    keep torchvision's layout, so its weights still compute what they were trained to."""
    for stage, rate in zip((net.layer2, net.layer3, net.layer4), stage_rates(output_stride), strict=True):
        if len(stage) == 1 and rate > 1:
            _set_rate(stage[0].conv2, rate)


def _resnet(layers: Sequence[int], output_stride: int, base_width: int = 64,
            legacy_dilation: bool = False) -> resnet.ResNet:
    """torchvision ResNet with Bottleneck blocks; `base_width` < 64 narrows every stage for thin variants.

    `legacy_dilation` rebuilds models trained before single-block stages got their rate (see
    `_single_block_rates`); checkpoints that predate the fix load with it set."""
    flags = _dilation_flags(output_stride)
    net = resnet.ResNet(resnet.Bottleneck, list(layers), replace_stride_with_dilation=flags)
    if base_width != 64:
        # Rebuild the stages through torchvision's own _make_layer with narrower planes.
        net.inplanes, net.dilation = base_width, 1
        net.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(base_width)
        net.layer1 = net._make_layer(resnet.Bottleneck, base_width, layers[0])
        net.layer2 = net._make_layer(resnet.Bottleneck, base_width * 2, layers[1], stride=2, dilate=flags[0])
        net.layer3 = net._make_layer(resnet.Bottleneck, base_width * 4, layers[2], stride=2, dilate=flags[1])
        net.layer4 = net._make_layer(resnet.Bottleneck, base_width * 8, layers[3], stride=2, dilate=flags[2])
        net.fc = nn.Linear(base_width * 8 * resnet.Bottleneck.expansion, 1000)
    if not legacy_dilation:
        _single_block_rates(net, output_stride)
    return net


def _caffe_style(net: resnet.ResNet, output_stride: int, legacy_dilation: bool = False,
                 legacy_caffe_stride: bool = False) -> None:
    """Match the MSRA/DeepLab-v2 Caffe ResNet: ceil-mode max pool, stride on the 1x1 conv, and the dilation
    of a dilated stage applied to its first block too. These change activations, not parameter shapes.

    `legacy_caffe_stride` rebuilds models saved before every downsampling stage moved its stride: only layer2's
    moved then, so at output stride 16 layer3 kept torchvision's stride on the 3x3 (model_export.checkpoint)."""
    net.maxpool.ceil_mode = True
    # torchvision strides a downsampling block's 3x3; Caffe its first 1x1. Which stages still downsample
    # depends on the output stride (layer2 always, layer3 at 16); in a dilated stage both strides are 1 and
    # the move changes nothing.
    for stage in (net.layer2,) if legacy_caffe_stride else (net.layer2, net.layer3, net.layer4):
        first = stage[0]
        first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    for stage, rate in zip((net.layer3, net.layer4), stage_rates(output_stride)[1:], strict=True):
        # The rate comes from the output stride, not from the stage's last block: with a single block that
        # block *is* the first one and held the previous stage's rate (legacy_dilation keeps that geometry).
        _set_rate(stage[0].conv2, stage[-1].conv2.dilation[0] if legacy_dilation else rate)


def _assemble(net: resnet.ResNet, head: nn.Module, aux_in: int | None, num_classes: int, arch: str,
              preprocessing: str, output_stride: int) -> SegmentationModel:
    return_layers = {"layer4": "out"}
    aux = None
    if aux_in is not None:
        return_layers["layer3"] = "aux"
        aux = FCNHead(aux_in, num_classes)
    backbone = IntermediateLayerGetter(net, return_layers=return_layers)
    return SegmentationModel(backbone, head, aux, arch, preprocessing, output_stride)


def deeplabv2_resnet101(num_classes: int = 21, aux_loss: bool = False, output_stride: int = 8,
                        caffe_style: bool = True, base_width: int = 64, legacy_dilation: bool = False,
                        legacy_caffe_stride: bool = False) -> SegmentationModel:
    """The seed model: ResNet-101 at output stride 8, summed ASPP at rates 6/12/18/24.

    `base_width` < 64 keeps the depth and structure with fewer channels (for fast tests).
    """
    net = _resnet([3, 4, 23, 3], output_stride, base_width, legacy_dilation)
    if caffe_style:
        _caffe_style(net, output_stride, legacy_dilation, legacy_caffe_stride)
    head = ASPPSum(base_width * 32, num_classes)
    return _assemble(net, head, base_width * 16 if aux_loss else None, num_classes, "deeplabv2_resnet101",
                     "imagenet", output_stride)


def _deeplabv3(layers: Sequence[int], arch: str, num_classes: int, aux_loss: bool, output_stride: int,
               base_width: int, legacy_dilation: bool = False, legacy_aspp_rates: bool = False) -> SegmentationModel:
    net = _resnet(layers, output_stride, base_width, legacy_dilation)
    in_ch, rates = base_width * 32, aspp_rates(output_stride, legacy_aspp_rates)
    head = (DeepLabHead(in_ch, num_classes, rates) if base_width == 64
            else ThinDeepLabHead(in_ch, num_classes, rates=rates))
    return _assemble(net, head, base_width * 16 if aux_loss else None, num_classes, arch, "imagenet",
                     output_stride)


def deeplabv3_resnet50(num_classes: int = 21, aux_loss: bool = False, output_stride: int = 8,
                       base_width: int = 64, legacy_dilation: bool = False,
                       legacy_aspp_rates: bool = False) -> SegmentationModel:
    """torchvision's deeplabv3_resnet50 layout (ASPP with image pooling, rates 12/24/36 at output stride 8 as
    torchvision's, 6/12/18 at 16: `aspp_rates`)."""
    return _deeplabv3([3, 4, 6, 3], "deeplabv3_resnet50", num_classes, aux_loss, output_stride, base_width,
                      legacy_dilation, legacy_aspp_rates)


def deeplabv3_resnet101(num_classes: int = 21, aux_loss: bool = False, output_stride: int = 8,
                        base_width: int = 64, legacy_dilation: bool = False,
                        legacy_aspp_rates: bool = False) -> SegmentationModel:
    """torchvision's deeplabv3_resnet101 layout (ASPP rates as deeplabv3_resnet50's)."""
    return _deeplabv3([3, 4, 23, 3], "deeplabv3_resnet101", num_classes, aux_loss, output_stride, base_width,
                      legacy_dilation, legacy_aspp_rates)


def deeplabv2_thin(num_classes: int = 21, aux_loss: bool = False, output_stride: int = 8,
                   base_width: int = 16, layers: Sequence[int] = (1, 1, 1, 1), caffe_style: bool = True,
                   legacy_dilation: bool = False, legacy_caffe_stride: bool = False) -> SegmentationModel:
    """A narrow, shallow DeepLab-v2 (same structure, fewer channels) for tests."""
    net = _resnet(layers, output_stride, base_width, legacy_dilation)
    if caffe_style:
        _caffe_style(net, output_stride, legacy_dilation, legacy_caffe_stride)
    head = ASPPSum(base_width * 32, num_classes)
    return _assemble(net, head, base_width * 16 if aux_loss else None, num_classes, "deeplabv2_thin",
                     "imagenet", output_stride)


def deeplabv3_thin(num_classes: int = 21, aux_loss: bool = False, output_stride: int = 16,
                   base_width: int = 16, layers: Sequence[int] = (1, 1, 1, 1),
                   head_channels: int = 64, legacy_dilation: bool = False,
                   legacy_aspp_rates: bool = False) -> SegmentationModel:
    """A narrow DeepLab-v3 for the embedded demo model and tests (ASPP rates as deeplabv3_resnet50's)."""
    net = _resnet(layers, output_stride, base_width, legacy_dilation)
    head = ThinDeepLabHead(base_width * 32, num_classes, head_channels, aspp_rates(output_stride, legacy_aspp_rates))
    return _assemble(net, head, base_width * 16 if aux_loss else None, num_classes, "deeplabv3_thin",
                     "imagenet", output_stride)


def output_classes(model: SegmentationModel) -> int:
    """Number of classes the main head predicts (its last conv's outputs), for every architecture."""
    return [m for m in model.classifier.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
