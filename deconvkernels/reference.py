"""Pure-PyTorch twins of every op: the fallback backend and the oracle of the tests.

Each function takes already-normalised arguments (see :mod:`deconvkernels._geometry`) and
is written with stock PyTorch ops only, so autograd differentiates it by itself. They are
slow and memory-hungry by design (int64 indices, dense unpooled maps): clarity first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._geometry import DeconvParams, PoolParams, in_format_of, pooled_shape


def _window_origins(
    pooled: Sequence[int], params: PoolParams, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left input coordinate of every window: ``(H_out, 1)`` rows and ``(1, W_out)`` columns."""
    (oh, ow), (sh, sw), (ph, pw) = pooled, params.stride, params.padding
    rows = torch.arange(oh, device=device).view(-1, 1) * sh - ph
    cols = torch.arange(ow, device=device).view(1, -1) * sw - pw
    return rows, cols


def _check_all(valid: torch.Tensor, message: str) -> None:
    """``ValueError(message)`` unless every element of the bool tensor ``valid`` is true.

    Under a torch.vmap the check runs on the physical tensor (all samples at once), since a
    vmapped tensor cannot be branched on. Where the values are not known yet (meta tensors,
    FakeTensor tracing, torch.compile and torch.export) it becomes an assertion in the graph
    (``torch._assert_async``: a RuntimeError when the compiled code runs), so the reference
    backend traces as the extension does.
    """
    if torch.compiler.is_compiling() or valid.device.type == "meta" or isinstance(
        valid, torch._subclasses.fake_tensor.FakeTensor
    ):
        torch._assert_async(valid.all(), message)
        return
    while torch._C._functorch.is_functorch_wrapped_tensor(valid):
        valid = torch._C._functorch.get_unwrapped(valid)
    if not bool(valid.all()):
        raise ValueError(message)


def switches_to_indices(
    switches: torch.Tensor, input_size: Sequence[int], params: PoolParams
) -> torch.Tensor:
    """Window-local offsets -> the flat ``h * W + w`` int64 indices of ``F.max_pool2d``."""
    height, width = input_size
    (kh, kw), (dh, dw) = params.kernel_size, params.dilation
    rows, cols = _window_origins(switches.shape[-2:], params, switches.device)
    s = switches.long()
    ky, kx = s // kw, s % kw
    ih, iw = rows + ky * dh, cols + kx * dw
    valid = (s < kh * kw) & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
    _check_all(valid, "switches: a switch points outside its window or outside the input")
    return ih * width + iw


def indices_to_switches(
    indices: torch.Tensor, input_size: Sequence[int], params: PoolParams, check: bool = True
) -> torch.Tensor:
    """Flat int64 indices of ``F.max_pool2d`` -> uint8 window-local offsets ``ky * kw + kx``.

    ``check=False`` skips the validation, for indices ``F.max_pool2d`` has just produced.
    """
    height, width = input_size
    (kh, kw), (dh, dw) = params.kernel_size, params.dilation
    rows, cols = _window_origins(indices.shape[-2:], params, indices.device)
    idx = indices.long()
    ry, rx = idx.div(width, rounding_mode="floor") - rows, idx.remainder(width) - cols
    if not check:
        return ((ry // dh) * kw + rx // dw).to(torch.uint8)
    valid = (
        (idx >= 0) & (idx < height * width)
        & (ry >= 0) & (ry % dh == 0) & (ry // dh < kh)
        & (rx >= 0) & (rx % dw == 0) & (rx // dw < kw)
    )
    _check_all(valid, "indices: an index lies outside its pooling window")
    return ((ry // dh) * kw + rx // dw).to(torch.uint8)


def max_pool2d_with_switches(
    x: torch.Tensor, params: PoolParams, ceil_mode: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.max_pool2d`` plus its indices re-encoded as switches."""
    if x.numel() == 0:  # F.max_pool2d refuses C == 0; the contract allows any empty tensor
        out = (*x.shape[:-2], *pooled_shape(x.shape[-2:], params, ceil_mode))
        y = x.flatten()[:0].reshape(out)  # stays connected to x for autograd
        return y, x.new_empty(out, dtype=torch.uint8)
    y, indices = F.max_pool2d(
        x, params.kernel_size, params.stride, params.padding, params.dilation,
        ceil_mode=ceil_mode, return_indices=True,
    )
    return y, indices_to_switches(indices, x.shape[-2:], params, check=False)


def max_unpool2d_with_switches(
    y: torch.Tensor, switches: torch.Tensor, params: PoolParams, output_size: Sequence[int]
) -> torch.Tensor:
    """Unpool with "the last window in raster order wins" on every device, deterministically.

    ``F.max_unpool2d`` gives the same forward on the CPU but scatters in an undefined order on
    CUDA, and its backward gathers for every window, also those whose value was overwritten.
    Here the last window pointing at each position is found with an ``amax`` over window
    numbers; only those winners are scattered (the others are sent to a spare slot past the
    end, then dropped), so values are copied bit for bit (-0.0 included) and autograd of the
    scatter gives the matching backward: zero for the windows that lost.
    """
    height, width = output_size
    lead = y.shape[:-2]
    if y.numel() == 0:
        return y.flatten()[:0].reshape(*lead, height, width)
    indices = switches_to_indices(switches, output_size, params)
    flat_idx = indices.flatten(-2)
    n_windows = flat_idx.shape[-1]
    window_id = torch.arange(n_windows, device=y.device).expand_as(flat_idx)
    last = torch.full((*lead, height * width), -1, dtype=torch.long, device=y.device)
    last = last.scatter_reduce(-1, flat_idx, window_id, reduce="amax")
    wins = last.gather(-1, flat_idx) == window_id
    spare = height * width
    target = torch.where(wins, flat_idx, torch.full_like(flat_idx, spare))
    out = torch.zeros((*lead, spare + 1), dtype=y.dtype, device=y.device)
    out = out.scatter(-1, target, y.flatten(-2))
    out = out[..., :spare].reshape(*lead, height, width)
    # A dense result in y's memory format, by the rule the extension follows: the slice
    # above is a strided view.
    return in_format_of(out, y)


def unpool_deconv2d(
    y: torch.Tensor,
    switches: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    output_size: Sequence[int],
    params: PoolParams,
    stride: tuple[int, int],
    padding: tuple[int, int],
    output_padding: tuple[int, int],
    groups: int,
    dilation: tuple[int, int],
) -> torch.Tensor:
    """The chain the fused op replaces: unpool (materialised), then ``F.conv_transpose2d``."""
    if weight.shape[0] == 0:
        return _deconv_of_no_channels(y, weight, bias, output_size, stride, padding,
                                      output_padding, groups, dilation)
    unpooled = max_unpool2d_with_switches(y, switches, params, output_size)
    return F.conv_transpose2d(
        unpooled, weight, bias, stride, padding, output_padding, groups, dilation
    )


def _deconv_of_no_channels(
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    output_size: Sequence[int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    output_padding: tuple[int, int],
    groups: int,
    dilation: tuple[int, int],
) -> torch.Tensor:
    """A transposed convolution of zero input channels: a sum over nothing, so the bias alone
    (F.conv_transpose2d refuses such a weight; the compiled op gives this). The result stays
    connected to ``y`` and ``weight`` so that autograd gives them their (empty) gradients."""
    hw = DeconvParams(stride, padding, output_padding, groups, dilation).output_shape(
        output_size, weight.shape[-2:]
    )
    out = y.new_zeros((*y.shape[:-3], weight.shape[1] * groups, *hw))
    out = out + (y.sum() + weight.sum()) * 0
    if bias is not None:
        out = out + bias.view(-1, 1, 1)
    return in_format_of(out, y)
