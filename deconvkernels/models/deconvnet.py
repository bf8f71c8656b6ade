"""DeconvNet (Noh, Hong, Han, ICCV 2015) on the library's pooling and fused unpool ops."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import MaxPool2dWithSwitches
from .blocks import ConvBNReLU, DeconvBNReLU, UnpoolBNReLU, check_model_args, scaled
from .init import init_decoder_

__all__ = ["DeconvNet", "VGG16_STAGES", "DECONVNET_DECODER"]

# VGG16's convolutions per encoder stage.
VGG16_STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512),
)
# The original release's decoder, deepest stage first: the output channels of each deconvolution.
DECONVNET_DECODER: tuple[tuple[int, ...], ...] = (
    (512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64),
)


class Encoder(nn.Module):
    """VGG16's 13 convolutions (each with BN + ReLU) and five 2x2 pools that keep switches.

    ``forward(x)`` returns the deepest pooled map and, per stage, ``(switches, size)``: the
    pool's uint8 switches and its input's spatial size (the unpooling's ``output_size``).
    """

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        stages = []
        c_in = in_channels
        for widths in VGG16_STAGES:
            layers = []
            for c in widths:
                layers.append(ConvBNReLU(c_in, scaled(c, width)))
                c_in = scaled(c, width)
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.pool = MaxPool2dWithSwitches(2, 2)
        self.out_channels = c_in

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, tuple[int, int]]]]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            size = (x.shape[-2], x.shape[-1])
            x, switches = self.pool(x)
            skips.append((switches, size))
        return x, skips


class DecoderStage(nn.Module):
    """Unpool + first (de)convolution fused, then the stage's remaining layers."""

    def __init__(self, c_in: int, widths: tuple[int, ...], transposed: bool = True) -> None:
        super().__init__()
        self.unpool_conv = UnpoolBNReLU(c_in, widths[0], transposed=transposed)
        block = DeconvBNReLU if transposed else ConvBNReLU
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.layers = nn.Sequential(*(block(a, b) for a, b in pairs))

    def forward(
        self, x: torch.Tensor, switches: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        return self.layers(self.unpool_conv(x, switches, size))


class DeconvNet(nn.Module):
    """The DeconvNet of the original release, on fused unpool + deconvolution kernels.

    VGG16's 13 convolutions (3x3, pad 1) with BN + ReLU and five 2x2 max pools that keep
    uint8 switches; fc6 (a ``k x k`` convolution without padding, ``k = input_size // 32``, to
    4096 channels) and fc7 (1x1, 4096), both with BN + ReLU; fc6-deconv (``k x k``
    deconvolution back to 512 channels); a mirrored decoder of five stages, each opening with
    an :class:`~deconvkernels.nn.UnpoolConvTranspose2d` fed by its pool's switches, then 3x3
    deconvolutions with BN + ReLU (512,512,512 | 512,512,256 | 256,256,128 | 128,64 | 64,64);
    a 1x1 convolution scores the classes. At ``width=1``, ``input_size=224``: 251.8M parameters.

    Args:
        num_classes: classes scored (21 for PASCAL VOC: background + 20).
        width: scales every channel count (fc6/fc7 included), for small runs.
        input_size: the training crop's side, a multiple of 32; sets fc6's kernel. Other
            input sizes run too, as long as each side is at least ``32 * (input_size // 32)``
            (fc6 then slides, as a fully convolutional net).

    ``forward(x)`` returns class scores (logits) of shape ``(N, num_classes, H, W)``.
    """

    def __init__(self, num_classes: int = 21, width: float = 1.0, input_size: int = 224) -> None:
        super().__init__()
        check_model_args("DeconvNet", num_classes, width)
        if input_size < 32 or input_size % 32:
            raise ValueError(
                f"DeconvNet: input_size must be a positive multiple of 32 (five 2x2 pools), "
                f"got {input_size}"
            )
        self.num_classes = num_classes
        self.width = width
        self.input_size = input_size
        k = input_size // 32
        fc = scaled(4096, width)
        self.encoder = Encoder(width)
        c5 = self.encoder.out_channels
        self.fc6 = ConvBNReLU(c5, fc, kernel_size=k, padding=0)
        self.fc7 = ConvBNReLU(fc, fc, kernel_size=1, padding=0)
        self.fc6_deconv = DeconvBNReLU(fc, c5, kernel_size=k, padding=0)
        stages = []
        c_in = c5
        for widths in DECONVNET_DECODER:
            widths = tuple(scaled(c, width) for c in widths)
            stages.append(DecoderStage(c_in, widths, transposed=True))
            c_in = widths[-1]
        self.decoder = nn.ModuleList(stages)
        self.score = nn.Conv2d(c_in, num_classes, 1)
        init_decoder_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        min_side = 32 * (self.input_size // 32)
        if x.dim() != 4 or x.shape[-2] < min_side or x.shape[-1] < min_side:
            raise ValueError(
                f"DeconvNet: expected input (N, C, H, W) with H, W >= {min_side}, "
                f"got {tuple(x.shape)}"
            )
        x, skips = self.encoder(x)
        x = self.fc6_deconv(self.fc7(self.fc6(x)))
        for stage, (switches, size) in zip(self.decoder, reversed(skips), strict=True):
            x = stage(x, switches, size)
        return self.score(x)

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the VGG16 encoder (those trained from scratch)."""
        encoder = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder]
