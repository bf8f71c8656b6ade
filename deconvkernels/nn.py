"""``torch.nn`` modules over the ops, following ``nn.MaxPool2d`` / ``nn.MaxUnpool2d`` ways."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from ._geometry import IntOrPair, pool_params

__all__ = [
    "MaxPool2dWithSwitches",
    "MaxUnpool2dWithSwitches",
    "UnpoolConv2d",
    "UnpoolConvTranspose2d",
    "set_fused",
]


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
        if not isinstance(ceil_mode, bool):
            raise ValueError(f"ceil_mode must be a bool, got {ceil_mode!r}")
        self.ceil_mode = ceil_mode

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


class _UnpoolGeometry:
    """The pool geometry a fused unpool + (de)convolution layer unpools with, and whether it
    runs fused (see :func:`set_fused`)."""

    pool_kernel_size: tuple[int, int]
    pool_stride: tuple[int, int]
    pool_padding: tuple[int, int]
    pool_dilation: tuple[int, int]
    fused: bool | None = None

    def fused_on(self, device: torch.device) -> bool:
        """Whether ``forward`` runs the fused op for inputs on ``device``.

        ``fused=None`` (the default) fuses everywhere but on CUDA. There cuDNN runs the dense
        (de)convolution on tensor cores, and this library's fused kernels use plain FMAs:
        measured on an H100 (``benchmarks/RESULTS.md``), they were 10-50x slower than
        our unpool followed by cuDNN (geo-means over DeconvNet's decoder layers; forward +
        backward 25x in float32, 33x in bfloat16). The unfused path keeps
        the unpooled map for the backward, about 4.8x the fused op's saved bytes at those
        layers. ``fused=True`` trades that speed for the memory.
        """
        return self.fused if self.fused is not None else device.type != "cuda"

    def _unpool(
        self, y: torch.Tensor, switches: torch.Tensor, output_size: Sequence[int] | None
    ) -> torch.Tensor:
        return ops.max_unpool2d_with_switches(
            y, switches, self.pool_kernel_size, self.pool_stride, self.pool_padding,
            self.pool_dilation, output_size,
        )

    def _set_pool(
        self, kernel_size: IntOrPair, stride: IntOrPair | None, padding: IntOrPair,
        dilation: IntOrPair,
    ) -> None:
        (self.pool_kernel_size, self.pool_stride, self.pool_padding,
         self.pool_dilation) = pool_params(kernel_size, stride, padding, dilation, "pool_")

    def _pool_repr(self) -> str:
        return (
            f", pool_kernel_size={self.pool_kernel_size}, pool_stride={self.pool_stride}"
            f", pool_padding={self.pool_padding}, pool_dilation={self.pool_dilation}"
            + ("" if self.fused is None else f", fused={self.fused}")
        )


class UnpoolConvTranspose2d(_UnpoolGeometry, nn.ConvTranspose2d):
    """Unpooling fused with the transposed convolution that follows it (DeconvNet's decoder).

    An :class:`torch.nn.ConvTranspose2d` (same arguments but ``padding_mode``, which is zeros
    only; same parameters and ``state_dict``, so
    weights load from and into one of the same shape) whose forward first unpools its input
    with the switches of a :class:`MaxPool2dWithSwitches` of geometry ``pool_kernel_size``,
    ``pool_stride``, ``pool_padding``, ``pool_dilation``. Fused, the unpooled map is never
    built; ``fused`` (default ``None``: fused except on CUDA) chooses, see
    :meth:`fused_on`.

    ``forward(y, switches, output_size=None)``: ``output_size`` is the unpooled ``(H, W)``
    (the size of the pool's input; needed when it was odd).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        output_padding: IntOrPair = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntOrPair = 1,
        *,
        pool_kernel_size: IntOrPair = 2,
        pool_stride: IntOrPair | None = None,
        pool_padding: IntOrPair = 0,
        pool_dilation: IntOrPair = 1,
        fused: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, output_padding, groups,
            bias, dilation, device=device, dtype=dtype,
        )
        self._set_pool(pool_kernel_size, pool_stride, pool_padding, pool_dilation)
        self.fused = fused

    def forward(  # type: ignore[override]
        self,
        y: torch.Tensor,
        switches: torch.Tensor,
        output_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        if not self.fused_on(y.device):
            return F.conv_transpose2d(
                self._unpool(y, switches, output_size), self.weight, self.bias, self.stride,
                self.padding, self.output_padding, self.groups, self.dilation,
            )
        return ops.unpool_deconv2d(
            y, switches, self.weight, self.bias, output_size=output_size,
            pool_kernel_size=self.pool_kernel_size, pool_stride=self.pool_stride,
            pool_padding=self.pool_padding, pool_dilation=self.pool_dilation,
            stride=self.stride, padding=self.padding, output_padding=self.output_padding,
            groups=self.groups, dilation=self.dilation,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._pool_repr()


class UnpoolConv2d(_UnpoolGeometry, nn.Conv2d):
    """Unpooling fused with the stride-1 convolution that follows it (SegNet's decoder).

    An :class:`torch.nn.Conv2d` (same parameters and ``state_dict``) whose forward unpools its
    input with a pool's switches and convolves, without building the unpooled map. A stride-1
    convolution is the transposed convolution with the weight's channel axes swapped (per
    group) and its taps flipped, and padding ``dilation * (k - 1) - padding``; so this runs
    :func:`deconvkernels.unpool_deconv2d` on that view of the weight (a differentiable copy of
    the weight per call: 9.4 MB in float32 at SegNet's 512 -> 512 3x3 layers), reusing the
    fused kernels instead of a second set.

    Only ``stride=1`` and ``padding <= dilation * (kernel_size - 1)`` have that equivalence;
    other arguments are a ``ValueError``. There is no ``padding_mode`` argument (zero padding
    only). ``fused``
    (default ``None``: fused except on CUDA) as in :class:`UnpoolConvTranspose2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        pool_kernel_size: IntOrPair = 2,
        pool_stride: IntOrPair | None = None,
        pool_padding: IntOrPair = 0,
        pool_dilation: IntOrPair = 1,
        fused: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            device=device, dtype=dtype,
        )
        self.fused = fused
        if self.stride != (1, 1):
            raise ValueError(f"UnpoolConv2d: stride must be 1, got {self.stride}")
        if isinstance(self.padding, str):
            raise ValueError("UnpoolConv2d: padding must be integers, not a string mode")
        reach = tuple(
            d * (k - 1) for k, d in zip(self.kernel_size, self.dilation, strict=True)
        )
        if any(p > r for p, r in zip(self.padding, reach, strict=True)):
            raise ValueError(
                f"UnpoolConv2d: padding {self.padding} larger than dilation * (kernel_size - 1)"
                f" = {reach}"
            )
        self._set_pool(pool_kernel_size, pool_stride, pool_padding, pool_dilation)

    def transposed_weight(self) -> torch.Tensor:
        """The weight as an ``nn.ConvTranspose2d`` weight computing the same convolution."""
        g = self.groups
        w = self.weight
        c_out, c_in_g, kh, kw = w.shape
        w = w.view(g, c_out // g, c_in_g, kh, kw).transpose(1, 2)
        return w.reshape(g * c_in_g, c_out // g, kh, kw).flip(-2, -1)

    def forward(  # type: ignore[override]
        self,
        y: torch.Tensor,
        switches: torch.Tensor,
        output_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        if not self.fused_on(y.device):
            return F.conv2d(
                self._unpool(y, switches, output_size), self.weight, self.bias, 1,
                self.padding, self.dilation, self.groups,
            )
        padding = tuple(
            d * (k - 1) - p
            for p, k, d in zip(self.padding, self.kernel_size, self.dilation, strict=True)
        )
        return ops.unpool_deconv2d(
            y, switches, self.transposed_weight(), self.bias, output_size=output_size,
            pool_kernel_size=self.pool_kernel_size, pool_stride=self.pool_stride,
            pool_padding=self.pool_padding, pool_dilation=self.pool_dilation,
            stride=1, padding=padding, groups=self.groups, dilation=self.dilation,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._pool_repr()


def set_fused(module: nn.Module, fused: bool | None) -> int:
    """Set ``fused`` on every unpool + (de)convolution layer in ``module``; returns how many.

    ``True``: always the fused op (least memory); ``False``: always unpool, then PyTorch's
    (de)convolution; ``None``: the default, fused except on CUDA
    (:meth:`UnpoolConvTranspose2d.fused_on` says why).
    """
    layers = [m for m in module.modules() if isinstance(m, _UnpoolGeometry)]
    for m in layers:
        m.fused = fused
    return len(layers)
