"""Public functional API: max pooling with uint8 switches, unpooling with them, conversions.

Every function normalises and checks its arguments, then runs either the compiled
``torch.ops.deconvkernels`` op or its pure-PyTorch twin in :mod:`deconvkernels.reference`
(see :func:`deconvkernels.use_backend`). For the compiled ops this module also registers the
fake (meta) kernels that ``torch.compile`` needs and the autograd formulas, all through
``torch.library``, so ``opcheck`` and ``torch.compile(fullgraph=True)`` work.

Switches are ``torch.uint8`` tensors of the pooled shape holding the window-local offset
``ky * kernel_w + kx`` of each maximum: one byte per pooled value instead of PyTorch's eight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import _transforms, reference
from ._backend import use_extension
from ._ext import _C, extension_available
from ._geometry import (
    DeconvParams,
    IntOrPair,
    PoolParams,
    check_deconv_weight,
    check_float_tensor,
    check_switches,
    checked_pool,
    deconv_params,
    memory_format_of,
    pool_params,
    pooled_shape,
    unpooled_shape,
)

__all__ = [
    "max_pool2d_with_switches",
    "max_unpool2d_with_switches",
    "switches_to_indices",
    "indices_to_switches",
    "unpool_deconv2d",
]

_ops = torch.ops.deconvkernels if extension_available() else None


def _eager(*tensors: torch.Tensor) -> bool:
    """Whether the compiled direct entries (``_C.max_pool2d_eager``, ``_C.max_unpool2d_eager``)
    may run an op on ``tensors``: plain tensors, no ``__torch_function__`` mode, no functorch
    transform or forward-AD level (:mod:`deconvkernels._transforms`), not under
    ``torch.compile``. They make the same dispatcher call as :func:`_call`
    without ``torch.ops``' boxing: 11 -> 5 us a pool call on one thread. When an input
    requires grad they record C++ autograd nodes with the registered formulas' gradients
    instead of the Python ones (pool forward + backward of a 4x4 map 83 -> 35 us; see
    csrc/eager_calls.cpp and csrc/pool_autograd.cpp). Dispatch modes (FakeTensor,
    TorchDispatchMode) still apply there.
    """
    for t in tensors:
        if type(t) is not torch.Tensor:
            return False
    return not (
        torch._C._is_torch_function_mode_enabled()
        or _transforms.active()
        or torch.compiler.is_compiling()
    )


def _call(
    op: torch._ops.OpOverloadPacket,
    *args: object,
    grad_args: tuple[torch.Tensor, ...] | None = None,
) -> object:
    """Run the compiled ``op``; below its autograd layer when nothing needs a gradient.

    ``torch.library.register_autograd`` installs a Python autograd kernel that runs on every
    call. When grad mode is off or no argument requires grad, all it does is redispatch
    below autograd (``redispatch_no_grad`` in ``torch/_library/autograd.py``). Doing the same
    here skips that Python layer: about 6 us a call, which on DeconvNet's 14x14 maps is a
    quarter of a pool's time. Under ``torch.compile`` the op is called as it is, so the
    traced graph holds the plain op.

    Under a functorch transform or forward-AD level the op runs through the
    ``autograd.Function`` of :mod:`deconvkernels._transforms` instead, which functorch accepts
    and which carries a ``jvp``.

    ``grad_args``: the only arguments that could require grad, where the caller knows them
    (checking six arguments costs 0.9 us, one 0.15 us); default all of ``args``.
    """
    if torch.compiler.is_compiling():
        return op(*args)
    if _transforms.active():
        return _transforms.apply(op, *args)
    if (
        torch._C.is_grad_enabled()
        and torch._C._any_requires_grad(*(args if grad_args is None else grad_args))
    ):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


# --------------------------------------------------------------------------- public API


def max_pool2d_with_switches(
    x: torch.Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D max pooling that also returns where each maximum was, as uint8 switches.

    Args:
        x: ``(N, C, H, W)`` or ``(C, H, W)`` float tensor, NCHW or channels_last.
        kernel_size, stride, padding, dilation, ceil_mode: as in
            :func:`torch.nn.functional.max_pool2d` (``stride`` defaults to ``kernel_size``); the
            window may hold at most 255 elements.

    Returns:
        ``(y, switches)``: ``y`` equals ``F.max_pool2d(x, ...)`` exactly (NaN propagation and
        tie-breaking included) and keeps ``x``'s memory format; ``switches`` is ``torch.uint8`` of
        ``y``'s shape, the offset ``ky * kernel_w + kx`` of each maximum inside its window.
    """
    params = checked_pool(x, kernel_size, stride, padding, dilation, ceil_mode)
    if use_extension():
        if _eager(x):
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = params
            return _C.max_pool2d_eager(x, kh, kw, sh, sw, ph, pw, dh, dw, bool(ceil_mode))
        # (the geometry's tuples go to the op's int[] arguments as they are)
        return _call(_ops.max_pool2d_with_switches, x, *params, bool(ceil_mode), grad_args=(x,))
    return reference.max_pool2d_with_switches(x, params, bool(ceil_mode))


def max_unpool2d_with_switches(
    y: torch.Tensor,
    switches: torch.Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Put each pooled value back where its switch says the maximum was; zeros elsewhere.

    Equals ``F.max_unpool2d(y, indices, ...)`` with the indices matching ``switches``. Where
    windows overlap and several point at one position, the last window in raster order wins,
    deterministically on every device, and the backward agrees with that forward.

    Args:
        y: pooled ``(N, C, H_out, W_out)`` or ``(C, H_out, W_out)`` float tensor.
        switches: uint8 tensor of ``y``'s shape, from :func:`max_pool2d_with_switches`.
        kernel_size, stride, padding, dilation: the geometry of the pool that made ``switches``.
        output_size: the unpooled ``(H, W)`` (leading sizes allowed); default the smallest input
            size the pool maps to ``(H_out, W_out)``, as ``F.max_unpool2d``.
    """
    params = pool_params(kernel_size, stride, padding, dilation)
    check_float_tensor(y, "y")
    check_switches(switches, y)
    size = unpooled_shape(y.shape[-2:], params, output_size, leading=y.shape[:-2])
    if use_extension():
        if _eager(y, switches):
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = params
            return _C.max_unpool2d_eager(y, switches, *size, kh, kw, sh, sw, ph, pw, dh, dw)
        return _call(_ops.max_unpool2d_with_switches, y, switches, size, *params, grad_args=(y,))
    return reference.max_unpool2d_with_switches(y, switches, params, size)


def switches_to_indices(
    switches: torch.Tensor,
    input_size: Sequence[int],
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> torch.Tensor:
    """uint8 switches -> the int64 indices ``F.max_pool2d(..., return_indices=True)`` gives.

    ``input_size`` is the pooled input's ``(H, W)`` (leading sizes allowed). A switch outside its
    window, or pointing outside the input, is a ValueError (RuntimeError from the compiled op).
    """
    params = pool_params(kernel_size, stride, padding, dilation)
    if not isinstance(switches, torch.Tensor) or switches.dtype != torch.uint8:
        raise ValueError("switches must be a torch.uint8 tensor")
    if switches.dim() not in (3, 4):
        raise ValueError(f"switches must be 3-D or 4-D, got shape {tuple(switches.shape)}")
    size = _input_size_of(switches, input_size, params)
    if use_extension():
        return _call(_ops.switches_to_indices, switches, list(size), *params.as_lists())
    return reference.switches_to_indices(switches, size, params)


def indices_to_switches(
    indices: torch.Tensor,
    input_size: Sequence[int],
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> torch.Tensor:
    """Inverse of :func:`switches_to_indices`; an index outside its window is an error."""
    params = pool_params(kernel_size, stride, padding, dilation)
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64:
        raise ValueError("indices must be a torch.int64 tensor")
    if indices.dim() not in (3, 4):
        raise ValueError(f"indices must be 3-D or 4-D, got shape {tuple(indices.shape)}")
    size = _input_size_of(indices, input_size, params)
    if use_extension():
        return _call(_ops.indices_to_switches, indices, list(size), *params.as_lists())
    return reference.indices_to_switches(indices, size, params)


def _autocast_inputs(
    y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Autocast's lower-precision rule for convolutions, applied to the fused op's inputs.

    The custom op has no Autocast kernel of its own (torch.library's ``register_autocast``
    fixes one dtype per device; autocast's dtype is the user's choice), so the public
    function casts, as ``F.conv_transpose2d`` would inside an autocast region.
    """
    device_type = y.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return y, weight, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        # autocast's eligibility rule: float16/bfloat16/float32 only; float64 stays as it is
        eligible = t is not None and t.is_floating_point() and t.dtype != torch.float64
        return t.to(dtype) if eligible else t  # type: ignore[union-attr]

    return cast(y), cast(weight), cast(bias)  # type: ignore[return-value]


def unpool_deconv2d(
    y: torch.Tensor,
    switches: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    output_size: Sequence[int] | None,
    pool_kernel_size: IntOrPair = 2,
    pool_stride: IntOrPair | None = None,
    pool_padding: IntOrPair = 0,
    pool_dilation: IntOrPair = 1,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    groups: int = 1,
    dilation: IntOrPair = 1,
) -> torch.Tensor:
    """Unpooling followed by a transposed convolution, without ever building the unpooled map.

    Equals ``F.conv_transpose2d(F.max_unpool2d(y, indices, pool_kernel_size, pool_stride,
    pool_padding, output_size=output_size), weight, bias, stride, padding, output_padding,
    groups, dilation)`` with the indices matching ``switches`` (overlapping pool windows: the
    last window in raster order wins, as in :func:`max_unpool2d_with_switches`). Only ``y``,
    ``switches`` and ``weight`` are kept for the backward.

    Args:
        y: pooled ``(N, C_in, H_out, W_out)`` or ``(C_in, H_out, W_out)`` float tensor.
        switches: uint8 switches of ``y``'s shape from :func:`max_pool2d_with_switches`.
        weight: ``(C_in, C_out / groups, kh, kw)``, the ``nn.ConvTranspose2d`` layout.
        bias: ``(C_out,)`` or None.
        output_size: the unpooled ``(H, W)`` (None: the smallest the pool allows).
        pool_*: the geometry of the pool that made ``switches``.
        stride, padding, output_padding, groups, dilation: the transposed convolution's.

    Under ``torch.autocast`` the op follows ``conv_transpose2d``: ``y``, ``weight`` and
    ``bias`` are cast to the autocast dtype (float16/bfloat16) and the kernels run in it.
    """
    y, weight, bias = _autocast_inputs(y, weight, bias)
    params = pool_params(pool_kernel_size, pool_stride, pool_padding, pool_dilation, "pool_")
    dc = deconv_params(stride, padding, output_padding, groups, dilation)
    check_float_tensor(y, "y")
    check_switches(switches, y)
    check_deconv_weight(weight, bias, y, dc.groups)
    size = unpooled_shape(y.shape[-2:], params, output_size, leading=y.shape[:-2])
    if min(dc.output_shape(size, weight.shape[-2:])) < 1:
        raise ValueError(
            f"padding {dc.padding} is too large: the deconvolution of a {size} map would be "
            f"{dc.output_shape(size, weight.shape[-2:])}"
        )
    if use_extension():
        return _call(
            _ops.unpool_deconv2d, y, switches, weight, bias, list(size), *params.as_lists(),
            list(dc.stride), list(dc.padding), list(dc.output_padding), dc.groups,
            list(dc.dilation),
        )
    return reference.unpool_deconv2d(
        y, switches, weight, bias, size, params, dc.stride, dc.padding, dc.output_padding,
        dc.groups, dc.dilation,
    )


def _input_size_of(
    pooled: torch.Tensor, input_size: Sequence[int], params: PoolParams
) -> tuple[int, int]:
    """``(H, W)`` of ``input_size`` (``(H, W)`` or the whole input shape, whose leading sizes
    must be the pooled tensor's, as ``output_size`` of the unpool); a ValueError naming it if
    no pool (floor or ceil mode) maps it to the pooled tensor's extent."""
    if input_size is None:
        raise ValueError("input_size must be given: the pooled input's (H, W)")
    return unpooled_shape(pooled.shape[-2:], params, input_size, "input_size",
                          leading=pooled.shape[:-2])


# ------------------------------------------------------------ fake kernels and autograd


def _empty_in_format_of(
    ref: torch.Tensor,
    spatial: Sequence[int],
    dtype: torch.dtype,
    channels: int | None = None,
) -> torch.Tensor:
    """Allocate ``ref``'s batch (and channel) dims with new spatial dims, in ``ref``'s format.

    Mirrors ``empty_like_format`` in csrc/pool_args.cpp exactly (opcheck compares strides): a
    3-D tensor is treated as a batch of one.
    """
    batched = ref if ref.dim() == 4 else ref.unsqueeze(0)
    c = batched.shape[1] if channels is None else channels
    out = torch.empty(
        (batched.shape[0], c, *spatial), dtype=dtype, device=ref.device,
        memory_format=memory_format_of(ref),
    )
    return out if ref.dim() == 4 else out.squeeze(0)


def _same_device(name: str, t: torch.Tensor, **others: torch.Tensor | None) -> None:
    """The C++ ops' device check, in the fake kernels: a call that mixes a meta tensor with
    real ones is routed to them, not to the C++ kernels, and would otherwise hand back an
    uninitialised tensor on the real one's device."""
    for other_name, other in others.items():
        if other is not None and other.device != t.device:
            raise RuntimeError(f"{other_name} is on {other.device} but {name} is on {t.device}")


def _register() -> None:
    lib = "deconvkernels::"

    @torch.library.register_fake(lib + "max_pool2d_with_switches")
    def _(x, kernel_size, stride, padding, dilation, ceil_mode):
        params = PoolParams(*map(tuple, (kernel_size, stride, padding, dilation)))
        out = pooled_shape(x.shape[-2:], params, ceil_mode)
        return _empty_in_format_of(x, out, x.dtype), _empty_in_format_of(x, out, torch.uint8)

    @torch.library.register_fake(lib + "max_pool2d_with_switches_backward")
    def _(grad_y, switches, input_size, kernel_size, stride, padding, dilation):
        _same_device("grad_y", grad_y, switches=switches)
        return _empty_in_format_of(grad_y, input_size, grad_y.dtype)

    @torch.library.register_fake(lib + "max_unpool2d_with_switches")
    def _(y, switches, output_size, kernel_size, stride, padding, dilation):
        _same_device("y", y, switches=switches)
        return _empty_in_format_of(y, output_size, y.dtype)

    @torch.library.register_fake(lib + "max_unpool2d_with_switches_backward")
    def _(grad_out, switches, kernel_size, stride, padding, dilation):
        _same_device("grad_output", grad_out, switches=switches)
        return _empty_in_format_of(grad_out, switches.shape[-2:], grad_out.dtype)

    @torch.library.register_fake(lib + "switches_to_indices")
    def _(switches, input_size, kernel_size, stride, padding, dilation):
        return _empty_in_format_of(switches, switches.shape[-2:], torch.int64)

    @torch.library.register_fake(lib + "indices_to_switches")
    def _(indices, input_size, kernel_size, stride, padding, dilation):
        return _empty_in_format_of(indices, indices.shape[-2:], torch.uint8)

    # max pool: dx = scatter-add of dy through the switches (its own op).
    def pool_setup(ctx, inputs, output):
        x, kernel_size, stride, padding, dilation, _ = inputs
        ctx.geometry = (kernel_size, stride, padding, dilation)
        ctx.input_size = list(x.shape[-2:])
        _transforms.save(ctx, output[1])
        # The switches (uint8) never have a gradient; materialising one as zeros cost ~10 us
        # a backward at 4x512x14x14. grad_y is then None when y was not used.
        ctx.set_materialize_grads(False)

    def pool_backward(ctx, grad_y, _grad_switches):
        if grad_y is None:
            return None, None, None, None, None, None
        (switches,) = ctx.saved_tensors
        grad_x = _call(
            _ops.max_pool2d_with_switches_backward, grad_y, switches, ctx.input_size,
            *ctx.geometry,
        )
        return grad_x, None, None, None, None, None

    # y = x at the switches, so y's tangent is x's tangent gathered there (every window,
    # overlapping or not).
    def pool_jvp(ctx, x_t, *_):
        (switches,) = ctx.saved_tensors
        return _gather_at_switches(x_t, switches, ctx.input_size, ctx.geometry), None

    _formulas("max_pool2d_with_switches", pool_setup, pool_backward, pool_jvp)

    # The pool backward is linear in grad_y; its adjoint gathers at the switches.
    def pool_bwd_setup(ctx, inputs, output):
        _, switches, input_size, *geometry = inputs
        ctx.geometry = geometry
        ctx.input_size = input_size
        _transforms.save(ctx, switches)

    def pool_bwd_backward(ctx, grad_grad_x):
        (switches,) = ctx.saved_tensors
        gg = _gather_at_switches(grad_grad_x, switches, ctx.input_size, ctx.geometry)
        return gg, None, None, None, None, None, None

    def pool_bwd_jvp(ctx, grad_y_t, *_):
        (switches,) = ctx.saved_tensors
        return _call(
            _ops.max_pool2d_with_switches_backward, grad_y_t, switches, ctx.input_size,
            *ctx.geometry,
        )

    _formulas("max_pool2d_with_switches_backward", pool_bwd_setup, pool_bwd_backward, pool_bwd_jvp)

    # unpool and its backward are exact adjoints of each other, for every geometry; both are
    # linear, so each one's tangent is the op itself applied to the tangent.
    def unpool_setup(ctx, inputs, output):
        _, switches, output_size, *geometry = inputs
        ctx.geometry = geometry
        ctx.output_size = output_size
        _transforms.save(ctx, switches)

    def unpool_backward(ctx, grad_out):
        (switches,) = ctx.saved_tensors
        grad_y = _call(_ops.max_unpool2d_with_switches_backward, grad_out, switches, *ctx.geometry)
        return grad_y, None, None, None, None, None, None

    def unpool_jvp(ctx, y_t, *_):
        (switches,) = ctx.saved_tensors
        return _call(
            _ops.max_unpool2d_with_switches, y_t, switches, ctx.output_size, *ctx.geometry
        )

    _formulas("max_unpool2d_with_switches", unpool_setup, unpool_backward, unpool_jvp)

    def unpool_bwd_setup(ctx, inputs, output):
        grad_out, switches, *geometry = inputs
        ctx.geometry = geometry
        ctx.output_size = list(grad_out.shape[-2:])
        _transforms.save(ctx, switches)

    def unpool_bwd_backward(ctx, grad_grad_y):
        (switches,) = ctx.saved_tensors
        gg = _call(
            _ops.max_unpool2d_with_switches, grad_grad_y, switches, ctx.output_size,
            *ctx.geometry,
        )
        return gg, None, None, None, None, None

    def unpool_bwd_jvp(ctx, grad_out_t, *_):
        (switches,) = ctx.saved_tensors
        return _call(
            _ops.max_unpool2d_with_switches_backward, grad_out_t, switches, *ctx.geometry
        )

    _formulas(
        "max_unpool2d_with_switches_backward", unpool_bwd_setup, unpool_bwd_backward,
        unpool_bwd_jvp,
    )


def _formulas(name: str, setup: Callable, backward: Callable, jvp: Callable) -> None:
    """Register ``name``'s autograd formulas with torch.library, and hand them (with the
    ``jvp``) to :mod:`deconvkernels._transforms` for functorch transforms and forward AD."""
    torch.library.register_autograd("deconvkernels::" + name, backward, setup_context=setup)
    _transforms.add_formulas(getattr(_ops, name), setup, backward, jvp)


def _gather_at_switches(
    g: torch.Tensor, switches: torch.Tensor, input_size: Sequence[int], geometry: Sequence
) -> torch.Tensor:
    """Each window's value of the unpooled-shape ``g`` at its switch: the adjoint of the pool
    backward and the tangent of the pool. Without overlap that is the unpool backward; with
    overlap every window gathers (the unpool backward keeps only the last window's)."""
    params = PoolParams(*map(tuple, geometry))
    if not params.overlapping():
        return _call(_ops.max_unpool2d_with_switches_backward, g, switches, *geometry)
    idx = _call(_ops.switches_to_indices, switches, list(input_size), *geometry)
    return g.flatten(-2).gather(-1, idx.flatten(-2)).view(switches.shape)


def _register_unpool_deconv() -> None:
    lib = "deconvkernels::"

    def out_hw(size, weight_hw, stride, padding, output_padding, dilation):
        return DeconvParams(stride, padding, output_padding, 1, dilation).output_shape(
            size, weight_hw
        )

    @torch.library.register_fake(lib + "unpool_deconv2d")
    def _(y, switches, weight, bias, output_size, pool_kernel_size, pool_stride, pool_padding,
          pool_dilation, stride, padding, output_padding, groups, dilation):
        _same_device("y", y, switches=switches, weight=weight, bias=bias)
        hw = out_hw(output_size, weight.shape[-2:], stride, padding, output_padding, dilation)
        return _empty_in_format_of(y, hw, y.dtype, channels=weight.shape[1] * groups)

    @torch.library.register_fake(lib + "unpool_deconv2d_backward_y")
    def _(grad_output, switches, weight, *args):
        _same_device("grad_output", grad_output, switches=switches, weight=weight)
        return _empty_in_format_of(switches, switches.shape[-2:], grad_output.dtype)

    @torch.library.register_fake(lib + "unpool_deconv2d_backward_weight")
    def _(grad_output, y, switches, kernel_size, output_size, pool_kernel_size, pool_stride,
          pool_padding, pool_dilation, stride, padding, output_padding, groups, dilation):
        _same_device("grad_output", grad_output, y=y, switches=switches)
        cout = grad_output.shape[-3]
        return y.new_empty((y.shape[-3], cout // groups, *kernel_size))

    @torch.library.register_fake(lib + "unpool_deconv2d_backward_bias")
    def _(grad_output):
        return grad_output.new_empty((grad_output.shape[-3],))

    def setup(ctx, inputs, output):
        y, switches, weight, bias, *geometry = inputs
        ctx.geometry = geometry
        ctx.has_bias = bias is not None
        ctx.out_shape = output.shape
        _transforms.save(ctx, y, switches, weight)  # never the unpooled map

    def backward(ctx, grad):
        y, switches, weight = ctx.saved_tensors
        grad_y = grad_w = grad_b = None
        if (
            grad.device.type == "cpu" and grad.dim() == 4 and all(ctx.needs_input_grad[0:3:2])
            and not _transforms.active()  # vmap cannot convert memory formats
        ):
            # The CPU kernels of both gradients read grad channels-last: convert it once.
            grad = grad.contiguous(memory_format=torch.channels_last)
        if ctx.needs_input_grad[0]:
            grad_y = _call(_ops.unpool_deconv2d_backward_y, grad, switches, weight, *ctx.geometry)
        if ctx.needs_input_grad[2]:
            grad_w = _call(
                _ops.unpool_deconv2d_backward_weight, grad, y, switches,
                list(weight.shape[-2:]), *ctx.geometry,
            )
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = _call(_ops.unpool_deconv2d_backward_bias, grad)
        return (grad_y, None, grad_w, grad_b) + (None,) * len(ctx.geometry)

    # Bilinear in (y, weight) plus the bias: the tangent is T(y_t, w) + T(y, w_t) + b_t.
    def jvp(ctx, y_t, _switches_t, w_t, b_t, *_):
        y, switches, weight = ctx.saved_tensors
        op = _ops.unpool_deconv2d
        return _transforms.add_tangents(
            None if y_t is None else _call(op, y_t, switches, weight, None, *ctx.geometry),
            None if w_t is None else _call(op, y, switches, w_t, None, *ctx.geometry),
            None if b_t is None else _bias_map(b_t, ctx.out_shape),
        )

    _formulas("unpool_deconv2d", setup, backward, jvp)

    # Double backward. With T(y, w) the bias-free forward (bilinear), backward_y(g, w) and
    # backward_weight(g, y) are its adjoints in y and in w, so each is linear in its
    # arguments and their derivatives are the other two ops again.
    def grad_y_setup(ctx, inputs, output):
        grad_output, switches, weight, *geometry = inputs
        ctx.geometry = geometry
        _transforms.save(ctx, grad_output, switches, weight)

    def grad_y_backward(ctx, gg_y):
        grad_output, switches, weight = ctx.saved_tensors
        d_grad = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad = _call(_ops.unpool_deconv2d, gg_y, switches, weight, None, *ctx.geometry)
        if ctx.needs_input_grad[2]:
            d_weight = _call(
                _ops.unpool_deconv2d_backward_weight, grad_output, gg_y, switches,
                list(weight.shape[-2:]), *ctx.geometry,
            )
        return (d_grad, None, d_weight) + (None,) * len(ctx.geometry)

    def grad_y_jvp(ctx, grad_output_t, _switches_t, w_t, *_):
        grad_output, switches, weight = ctx.saved_tensors
        op = _ops.unpool_deconv2d_backward_y
        return _transforms.add_tangents(
            None if grad_output_t is None
            else _call(op, grad_output_t, switches, weight, *ctx.geometry),
            None if w_t is None else _call(op, grad_output, switches, w_t, *ctx.geometry),
        )

    _formulas("unpool_deconv2d_backward_y", grad_y_setup, grad_y_backward, grad_y_jvp)

    def grad_w_setup(ctx, inputs, output):
        grad_output, y, switches, kernel_size, *geometry = inputs
        ctx.geometry = geometry
        ctx.kernel_size = kernel_size
        _transforms.save(ctx, grad_output, y, switches)

    def grad_w_backward(ctx, gg_w):
        grad_output, y, switches = ctx.saved_tensors
        d_grad = d_y = None
        if ctx.needs_input_grad[0]:
            d_grad = _call(_ops.unpool_deconv2d, y, switches, gg_w, None, *ctx.geometry)
        if ctx.needs_input_grad[1]:
            d_y = _call(_ops.unpool_deconv2d_backward_y, grad_output, switches, gg_w, *ctx.geometry)
        return (d_grad, d_y, None, None) + (None,) * len(ctx.geometry)

    def grad_w_jvp(ctx, grad_output_t, y_t, *_):
        grad_output, y, switches = ctx.saved_tensors
        op = _ops.unpool_deconv2d_backward_weight
        size = ctx.kernel_size
        return _transforms.add_tangents(
            None if grad_output_t is None
            else _call(op, grad_output_t, y, switches, size, *ctx.geometry),
            None if y_t is None else _call(op, grad_output, y_t, switches, size, *ctx.geometry),
        )

    _formulas("unpool_deconv2d_backward_weight", grad_w_setup, grad_w_backward, grad_w_jvp)

    def grad_b_setup(ctx, inputs, output):
        ctx.shape = inputs[0].shape

    def grad_b_backward(ctx, gg_b):
        return _bias_map(gg_b, ctx.shape)

    def grad_b_jvp(ctx, grad_output_t):
        return _call(_ops.unpool_deconv2d_backward_bias, grad_output_t)

    _formulas("unpool_deconv2d_backward_bias", grad_b_setup, grad_b_backward, grad_b_jvp)


def _bias_map(b: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The per-channel ``b`` broadcast over a ``(C, H, W)`` or ``(N, C, H, W)`` map."""
    view = (-1, 1, 1) if len(shape) == 3 else (1, -1, 1, 1)
    return b.view(view).expand(shape)


if _ops is not None:
    _register()
    _register_unpool_deconv()
    _transforms.register_vmap_rules(_ops)
