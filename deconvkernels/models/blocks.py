"""Layer blocks shared by the models: conv/deconv + BatchNorm + ReLU, and channel scaling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..nn import UnpoolConv2d, UnpoolConvTranspose2d

__all__ = ["ConvBNReLU", "DeconvBNReLU", "UnpoolBNReLU", "check_model_args", "scaled"]


def check_model_args(model: str, num_classes: int, width: float) -> None:
    """The checks every model's constructor makes, with the model's name in the message."""
    if num_classes < 1:
        raise ValueError(f"{model}: num_classes must be >= 1, got {num_classes}")
    if width <= 0:
        raise ValueError(f"{model}: width must be > 0, got {width}")


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1: the channel count of a width-scaled layer."""
    return max(1, int(round(channels * width)))


class ConvBNReLU(nn.Sequential):
    """``Conv2d`` (bias kept, as VGG16 has one) followed by ``BatchNorm2d`` and ``ReLU``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, padding=padding),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class DeconvBNReLU(nn.Sequential):
    """``ConvTranspose2d`` followed by ``BatchNorm2d`` and ``ReLU`` (DeconvNet's decoder)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__(
            nn.ConvTranspose2d(c_in, c_out, kernel_size, padding=padding),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class UnpoolBNReLU(nn.Module):
    """A decoder stage's first layer: unpool + (de)convolution in one fused op, BN, ReLU.

    ``transposed=True`` holds an :class:`~deconvkernels.nn.UnpoolConvTranspose2d`
    (DeconvNet), ``False`` an :class:`~deconvkernels.nn.UnpoolConv2d` (SegNet). The layer is
    attribute ``conv`` so its parameters are named like a plain ``ConvBNReLU``'s ``0``.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int = 3, padding: int = 1,
        transposed: bool = True,
    ) -> None:
        super().__init__()
        layer = UnpoolConvTranspose2d if transposed else UnpoolConv2d
        self.conv = layer(c_in, c_out, kernel_size, padding=padding, pool_kernel_size=2)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(
        self, y: torch.Tensor, switches: torch.Tensor, output_size: Sequence[int]
    ) -> torch.Tensor:
        return self.relu(self.bn(self.conv(y, switches, output_size=output_size)))
