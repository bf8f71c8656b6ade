"""``torch.nn`` modules over the ops, following ``nn.MaxPool2d`` / ``nn.MaxUnpool2d`` ways."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import ops
from ._geometry import IntOrPair, pool_params

__all__ = ["MaxPool2dWithSwitches", "MaxUnpool2dWithSwitches"]


class MaxPool2dWithSwitches(nn.Module):
    """Max pooling that returns ``(y, switches)``: the pooled values and uint8 switches.

    Arguments as :class:`torch.nn.MaxPool2d` (``stride`` defaults to ``kernel_size``). Feed the
    switches to :class:`MaxUnpool2dWithSwitches` with the same geometry.
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        params = pool_params(kernel_size, stride, padding, dilation)
        self.kernel_size, self.stride, self.padding, self.dilation = params
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.max_pool2d_with_switches(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class MaxUnpool2dWithSwitches(nn.Module):
    """Inverse of :class:`MaxPool2dWithSwitches`: values back at their switches, zeros elsewhere.

    ``forward(y, switches, output_size=None)``; ``output_size`` as in
    :class:`torch.nn.MaxUnpool2d` (pass the pooled input's size when it was odd).
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
    ) -> None:
        super().__init__()
        params = pool_params(kernel_size, stride, padding, dilation)
        self.kernel_size, self.stride, self.padding, self.dilation = params

    def forward(
        self,
        y: torch.Tensor,
        switches: torch.Tensor,
        output_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        return ops.max_unpool2d_with_switches(
            y, switches, self.kernel_size, self.stride, self.padding, self.dilation, output_size
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}"
        )
