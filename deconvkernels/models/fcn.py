"""FCN-8s (Long, Shelhamer, Darrell, CVPR 2015) on the library's VGG16 encoder.

DeconvNet's best result (EDeconvNet) ensembles it with FCN-8s, so FCN-8s is built here from
the same pieces as DeconvNet and SegNet: the :class:`~.deconvnet.Encoder` (VGG16's 13
convolutions with BN + ReLU), fc6/fc7 as :class:`~.blocks.ConvBNReLU` so that
:func:`~.init.load_vgg16_` fills them from a torchvision VGG16 file unchanged, and the same
trainer and configs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNReLU, check_model_args, scaled
from .deconvnet import Encoder
from .init import init_decoder_

__all__ = ["FCN8s", "bilinear_kernel"]

# Total stride of the encoder (five 2x2 pools): inputs are padded to a multiple of it.
_STRIDE = 32


def bilinear_kernel(size: int) -> torch.Tensor:
    """The ``(size, size)`` bilinear interpolation kernel FCN initialises upsamplers with.

    A transposed convolution with this kernel, stride ``f = (size + 1) // 2`` and padding
    ``f // 2`` (``size = 2f``) upsamples by ``f`` exactly as bilinear interpolation with
    ``align_corners=False`` does, away from the border.
    """
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - centre).abs() / factor
    return torch.outer(filt, filt).float()


def _bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable ``factor``x upsampler initialised to per-class bilinear interpolation."""
    size = 2 * factor
    layer = nn.ConvTranspose2d(
        channels, channels, size, stride=factor, padding=factor // 2, bias=False
    )
    with torch.no_grad():
        layer.weight.zero_()
        # Class i upsamples class i only: the FCN "interp" surgery, off-diagonal zeros.
        idx = torch.arange(channels)
        layer.weight[idx, idx] = bilinear_kernel(size).to(layer.weight.device)
    return layer


class FCN8s(nn.Module):
    """FCN-8s on a VGG16 encoder with BatchNorm, for any input size.

    Layers: the 13 VGG16 convolutions (BN + ReLU) and five 2x2 pools; fc6 as a 7x7
    convolution (padding 3) to 4096 channels and fc7 as 1x1, both BN + ReLU; ``score_fr``
    (1x1 to the classes); 2x learnable upsampling (``upscore2``) added to ``score_pool4``
    (1x1 on pool4), 2x again (``upscore_pool4``) added to ``score_pool3`` (1x1 on pool3),
    then a fixed 8x bilinear upsampling to the input.

    Choices, against the original Caffe FCN-8s:

    * fc6 is "same"-padded (pad 3) instead of the original's unpadded fc6 behind 100 px of
      input padding and per-layer crop offsets (5, 9, 31): the simpler variant modern
      reimplementations use. Inputs are padded at the bottom/right to a multiple of 32 with
      zeros (the mean colour after :func:`~deconvkernels.data.transforms.to_tensor`) and
      the scores cropped back, so every skip map aligns exactly and any size (odd ones too)
      works.
    * BN + ReLU after every convolution and no dropout, like the rest of this library (and
      DeconvNet's release), so VGG16-BN weights load and the same training recipe applies.
    * The 2x upsamplers are initialised to bilinear interpolation and learned; the final 8x
      is fixed bilinear interpolation (``F.interpolate``, which is what the fixed 16x16
      deconvolution computes, with correct borders), as in the FCN paper.
    * ``score_pool4``/``score_pool3`` start at zero (the FCN paper's skip initialisation: the
      net starts as FCN-32s); ``score_fr`` is Gaussian (std 0.01) as DeconvNet's scorer.

    At ``width=1``, 21 classes: 134,401,695 parameters: VGG16's convolutions and fc6/fc7
    (134.26M), the three scorers and two 2x upsamplers (0.12M), and 24.8K BatchNorm
    parameters. (Caffe's FCN-8s also counts its fixed 8x deconvolution, 0.11M.)

    Args:
        num_classes: classes scored (21 for PASCAL VOC).
        width: scales every channel count (fc6/fc7 included), for small runs.

    ``forward(x)`` returns class scores (logits) of shape ``(N, num_classes, H, W)``.
    """

    def __init__(self, num_classes: int = 21, width: float = 1.0) -> None:
        super().__init__()
        check_model_args("FCN8s", num_classes, width)
        self.num_classes = num_classes
        self.width = width
        self.encoder = Encoder(width)
        c3 = self.encoder.stages[2][-1][0].out_channels
        c4 = self.encoder.stages[3][-1][0].out_channels
        c5 = self.encoder.out_channels
        fc = scaled(4096, width)
        self.fc6 = ConvBNReLU(c5, fc, kernel_size=7, padding=3)
        self.fc7 = ConvBNReLU(fc, fc, kernel_size=1, padding=0)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
        self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
        init_decoder_(self)
        # After init_decoder_, which would draw these Gaussian like any decoder layer.
        self.upscore2 = _bilinear_upsampler(num_classes, 2)
        self.upscore_pool4 = _bilinear_upsampler(num_classes, 2)
        for skip in (self.score_pool4, self.score_pool3):
            nn.init.zeros_(skip.weight)
            nn.init.zeros_(skip.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2] < 1 or x.shape[-1] < 1:
            raise ValueError(f"FCN8s: expected input (N, C, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % _STRIDE, 0, -h % _STRIDE))
        pooled = []
        for stage in self.encoder.stages:
            x, _ = self.encoder.pool(stage(x))  # switches are DeconvNet's; FCN needs none
            pooled.append(x)
        pool3, pool4, pool5 = pooled[2], pooled[3], pooled[4]
        s = self.score_fr(self.fc7(self.fc6(pool5)))
        s = self.upscore2(s) + self.score_pool4(pool4)
        s = self.upscore_pool4(s) + self.score_pool3(pool3)
        s = F.interpolate(s, scale_factor=8, mode="bilinear", align_corners=False)
        return s[..., :h, :w]
