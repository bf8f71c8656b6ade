"""SegNet (Badrinarayanan et al., 2017) on the same pooling and fused unpool ops."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import check_model_args, scaled
from .deconvnet import DECONVNET_DECODER, DecoderStage, Encoder
from .init import init_decoder_

__all__ = ["SegNet"]

# SegNet's decoder mirrors VGG16; its last stage ends in the classifier (added separately).
SEGNET_DECODER: tuple[tuple[int, ...], ...] = DECONVNET_DECODER[:-1] + ((64,),)


class SegNet(nn.Module):
    """SegNet: VGG16-BN encoder, a mirrored decoder of unpooling + 3x3 convolutions.

    Each decoder stage opens with an :class:`~deconvkernels.nn.UnpoolConv2d` (the fused
    unpool + deconvolution kernel run on the convolution's flipped, transposed weight) fed by
    its pool's switches, then 3x3 convolutions with BN + ReLU; a 3x3 convolution scores the
    classes. No fully connected layers, so any input whose sides are multiples of 32 works
    (other sizes too: unpooling restores each pool's input size).

    ``forward(x)`` returns logits ``(N, num_classes, H, W)``.
    """

    def __init__(self, num_classes: int = 21, width: float = 1.0) -> None:
        super().__init__()
        check_model_args("SegNet", num_classes, width)
        self.num_classes = num_classes
        self.width = width
        self.encoder = Encoder(width)
        stages = []
        c_in = self.encoder.out_channels
        for widths in SEGNET_DECODER:
            widths = tuple(scaled(c, width) for c in widths)
            stages.append(DecoderStage(c_in, widths, transposed=False))
            c_in = widths[-1]
        self.decoder = nn.ModuleList(stages)
        self.score = nn.Conv2d(c_in, num_classes, 3, padding=1)
        init_decoder_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2] < 32 or x.shape[-1] < 32:
            raise ValueError(
                f"SegNet: expected input (N, C, H, W), H, W >= 32, got {tuple(x.shape)}"
            )
        x, skips = self.encoder(x)
        for stage, (switches, size) in zip(self.decoder, reversed(skips), strict=True):
            x = stage(x, switches, size)
        return self.score(x)
