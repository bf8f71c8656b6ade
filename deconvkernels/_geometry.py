"""Argument normalisation and shape arithmetic shared by every backend.

The C++ ops check their arguments again (they can be called through
``torch.ops`` directly); the checks here exist so that both backends raise the
same clear ``ValueError`` naming the argument before any work is done.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch._prims_common import suggest_memory_format

IntOrPair = int | Sequence[int]

#: Largest window (``kernel_h * kernel_w``) whose offsets fit a uint8 switch.
MAX_WINDOW = 255

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class PoolParams(NamedTuple):
    """A 2-D pooling geometry, every field an ``(h, w)`` pair."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def window(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def overlapping(self) -> bool:
        """True when two windows can contain the same input position."""
        return any(
            s < (k - 1) * d + 1
            for k, s, d in zip(self.kernel_size, self.stride, self.dilation, strict=True)
        )

    def as_lists(self) -> tuple[list[int], list[int], list[int], list[int]]:
        return (list(self.kernel_size), list(self.stride), list(self.padding), list(self.dilation))


def as_int(value: object) -> int | torch.SymInt | None:
    """``value`` as an int if it is one: an int, a SymInt, or what ``operator.index`` takes
    (NumPy integers, 0-d integer tensors), as PyTorch's ops accept; ``None`` for anything
    else, bools included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, torch.SymInt)):
        return value
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def pair(value: IntOrPair, name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(2, 3) -> (2, 3)``; anything else is a ``ValueError`` naming ``name``."""
    single = as_int(value)
    if single is not None:
        return (single, single)  # type: ignore[return-value]
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    try:
        items = tuple(as_int(v) for v in value)  # type: ignore[union-attr]
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(items) == 1:
        items = items * 2
    if len(items) != 2 or any(v is None for v in items):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (items[0], items[1])  # type: ignore[return-value]


#: Largest stride, padding and dilation (the compiled ops' bound, ``kMaxExtent``: their 64-bit
#: geometry arithmetic must not wrap around).
MAX_EXTENT = 2**31 - 1


def _check_signs(stride: tuple[int, int], dilation: tuple[int, int],
                 padding: tuple[int, int], prefix: str = "") -> None:
    # Shared by pools and deconvolutions: PyTorch's messages for the same mistakes.
    if min(stride) <= 0:
        raise ValueError(f"{prefix}stride must be positive, got {stride}")
    if min(dilation) <= 0:
        raise ValueError(f"{prefix}dilation must be positive, got {dilation}")
    if min(padding) < 0:
        raise ValueError(f"{prefix}padding must be non-negative, got {padding}")
    for name, value in (("stride", stride), ("dilation", dilation), ("padding", padding)):
        if max(value) > MAX_EXTENT:
            raise ValueError(f"{prefix}{name} must be at most {MAX_EXTENT}, got {value}")


def _exact_ints(value: object) -> object:
    """``value`` as a cache key part if it is None, an int or a sequence of ints, else raise.

    Exact types only: ``True == 1`` and ``2.0 == 2`` hash alike, but ``True`` and ``2.0`` must
    still be rejected, so a bool or float never meets a cached answer for an int.
    """
    if value is None or type(value) is int:
        return value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value  # the pairs modules pass, without all()'s generator (0.3 us)
    if type(value) in (tuple, list) and all(type(v) is int for v in value):
        return tuple(value)
    raise TypeError("not a plain int geometry")


def pool_params(
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    prefix: str = "",
) -> PoolParams:
    """Normalise and validate a pooling geometry (PyTorch's rules, plus the uint8 window bound).

    ``prefix`` goes before the argument names in errors (``"pool_"``: the fused op's
    ``pool_kernel_size`` ..., beside its deconvolution's own ``stride`` and ``padding``).
    Valid plain-int geometries are remembered: every op call starts here.
    """
    if torch.compiler.is_compiling():
        return _pool_params(kernel_size, stride, padding, dilation, prefix)
    try:
        key = tuple(map(_exact_ints, (kernel_size, stride, padding, dilation)))
    except TypeError:  # SymInts, bools, floats...: checked afresh (and maybe rejected)
        return _pool_params(kernel_size, stride, padding, dilation, prefix)
    return _pool_params_cached(*key, prefix)


def _pool_params(
    kernel_size: IntOrPair,
    stride: IntOrPair | None,
    padding: IntOrPair,
    dilation: IntOrPair,
    prefix: str = "",
) -> PoolParams:
    k = pair(kernel_size, f"{prefix}kernel_size")
    empty_stride = isinstance(stride, (list, tuple)) and len(stride) == 0
    s = k if stride is None or empty_stride else pair(stride, f"{prefix}stride")
    p = pair(padding, f"{prefix}padding")
    d = pair(dilation, f"{prefix}dilation")
    if min(k) <= 0:
        raise ValueError(f"{prefix}kernel_size must be positive, got {k}")
    _check_signs(s, d, p, prefix)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(
            f"{prefix}padding must be at most half of {prefix}kernel_size, got "
            f"{prefix}padding={p} for {prefix}kernel_size={k}"
        )
    if k[0] * k[1] > MAX_WINDOW:
        raise ValueError(
            f"{prefix}kernel_size {k} has a window of {k[0] * k[1]} elements; uint8 switches "
            f"hold at most {MAX_WINDOW}"
        )
    return PoolParams(k, s, p, d)


# Only valid geometries are stored: lru_cache does not keep calls that raised.
_pool_params_cached = functools.lru_cache(maxsize=256)(_pool_params)


def pooled_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's ``pooling_output_shape``: the pooled extent of one spatial dimension."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _window_without_input(size: int, out: int, k: int, s: int, p: int, d: int) -> bool:
    """True when a window along this dimension covers padding only (dilation skips the input).

    A window whose first tap ``o * s - p`` lies inside the input is never empty, and no
    window starts past the input (``pooled_size`` stops before that), so only the windows
    that start in the padding, ``o * s < p``, need a look: at most ``p`` of them, whatever
    the input size (this runs on every call).
    """
    for o in range(min(out, -(-p // s))):
        start = o * s - p
        if not any(0 <= start + j * d < size for j in range(k)):
            return True
    return False


def pooled_shape(
    input_size: Sequence[int], params: PoolParams, ceil_mode: bool
) -> tuple[int, int]:
    """Pooled ``(H_out, W_out)`` for an input of spatial size ``input_size``.

    ValueError if the output would be empty, or if a window would hold no input element (with
    dilation and padding on tiny inputs): that window has no maximum and no switch. Answers
    for plain-int sizes are remembered (3-4 us of Python a call otherwise).
    """
    # Under torch.compile the shape is worked out in the graph (and Dynamo in torch 2.11
    # cannot trace hash() of a tuple), so the cache is skipped before anything is hashed.
    if torch.compiler.is_compiling():
        return _pooled_shape(input_size, params, ceil_mode)
    key = (input_size, params, bool(ceil_mode))  # input_size: a torch.Size, ints
    try:
        hash(key)  # SymInts (dynamic shapes) and lists are not hashable
    except TypeError:
        return _pooled_shape(input_size, params, ceil_mode)
    return _pooled_shape_cached(*key)


def _pooled_shape(
    input_size: Sequence[int], params: PoolParams, ceil_mode: bool
) -> tuple[int, int]:
    out = tuple(
        pooled_size(n, k, s, p, d, ceil_mode)
        for n, k, s, p, d in zip(input_size, *params, strict=True)
    )
    if min(out) < 1:
        raise ValueError(
            f"input of spatial size {tuple(input_size)} is too small for kernel_size="
            f"{params.kernel_size}, padding={params.padding}, dilation={params.dilation}: "
            f"the output would be {out}"
        )
    if any(
        _window_without_input(n, o, k, s, p, d)
        for n, o, k, s, p, d in zip(input_size, out, *params, strict=True)
    ):
        raise ValueError(
            f"input of spatial size {tuple(input_size)}: with kernel_size={params.kernel_size}, "
            f"stride={params.stride}, padding={params.padding}, dilation={params.dilation} a "
            "pooling window covers no input element"
        )
    return out  # type: ignore[return-value]


_pooled_shape_cached = functools.lru_cache(maxsize=1024)(_pooled_shape)


def default_unpooled_shape(pooled: Sequence[int], params: PoolParams) -> tuple[int, int]:
    """The smallest input size a pool with ``params`` maps to ``pooled`` (F.max_unpool2d's)."""
    return tuple(  # type: ignore[return-value]
        (o - 1) * s - 2 * p + d * (k - 1) + 1
        for o, k, s, p, d in zip(pooled, *params, strict=True)
    )


def unpooled_shape(
    pooled: Sequence[int],
    params: PoolParams,
    output_size: Sequence[int] | None,
    name: str = "output_size",
    leading: Sequence[int] | None = None,
) -> tuple[int, int]:
    """Resolve and check the unpooled spatial size.

    ``output_size`` is ``(H, W)`` or, given ``leading`` (the pooled tensor's sizes before its
    last two), the whole unpooled shape, e.g. ``x.shape`` of the pooled input: its leading
    sizes must then equal ``leading`` (``F.max_unpool2d`` takes 4 elements and ignores the
    first two). ``(H, W)`` must be a size that a pool with ``params`` (floor or ceil mode) maps
    to ``pooled``: anything else could not have produced these switches.
    """
    if output_size is None:
        size = default_unpooled_shape(pooled, params)
        if min(size) < 1:
            raise ValueError(
                f"{name} must be given: the default for a pooled size {tuple(pooled)} with "
                f"kernel_size={params.kernel_size}, padding={params.padding} would be {size}"
            )
        return size
    if as_int(output_size) is not None or isinstance(output_size, (str, bytes)):
        raise ValueError(f"{name} must be a sequence (H, W), got {output_size!r}")
    try:
        size = tuple(as_int(n) for n in output_size)  # type: ignore[union-attr]
    except TypeError:
        raise ValueError(f"{name} must be a sequence (H, W), got {output_size!r}") from None
    if any(n is None for n in size):
        raise ValueError(f"{name} must hold ints, got {tuple(output_size)}")
    if len(size) != 2 and (leading is None or size[:-2] != tuple(leading)):
        whole = "" if leading is None else f" or the whole unpooled shape {(*leading, 'H', 'W')}"
        raise ValueError(f"{name} must be (H, W){whole}, got {size}")
    size = size[-2:]
    for n, o, k, s, p, d in zip(size, pooled, *params, strict=True):
        if n < 1 or (
            pooled_size(n, k, s, p, d, False) != o and pooled_size(n, k, s, p, d, True) != o
        ):
            raise ValueError(
                f"{name} {tuple(size)} cannot have been pooled to {tuple(pooled)} with "
                f"kernel_size={params.kernel_size}, stride={params.stride}, "
                f"padding={params.padding}, dilation={params.dilation}"
            )
    return size  # type: ignore[return-value]


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The memory format the ops give their outputs for an input ``t``: PyTorch's suggestion
    for it, a 3-D tensor counting as a batch of one (``empty_like_format`` in
    csrc/pool_args.cpp decides the same)."""
    return suggest_memory_format(t if t.dim() == 4 else t.unsqueeze(0))


def in_format_of(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``out`` as a dense tensor in :func:`memory_format_of` ``ref`` (3-D or 4-D alike)."""
    fmt = memory_format_of(ref)
    if out.dim() == 4:
        return out.contiguous(memory_format=fmt)
    return out.unsqueeze(0).contiguous(memory_format=fmt).squeeze(0)


def check_float_tensor(t: object, name: str) -> None:
    """A 3-D (C, H, W) or 4-D (N, C, H, W) floating tensor, else ValueError naming ``name``."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}"
        )
    if t.dim() not in (3, 4):
        raise ValueError(
            f"{name} must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(t.shape)}"
        )


# Pool calls that passed every check, keyed by all that the checks read, so that a repeated
# call (every forward of a model) skips them: about 1.5 us of the ~9 us a call costs on a tiny
# map (session 13, benchmarks/RESULTS.md). Geometries as pool_params caches them (_exact_ints:
# True == 1 and 2.0 == 2 hash alike but must still be refused), ceil_mode a bool.
_CHECKED_POOLS: dict[tuple, PoolParams] = {}
_CHECKED_POOLS_MAX = 4096


def checked_pool(
    x: object,
    kernel_size: IntOrPair,
    stride: IntOrPair | None,
    padding: IntOrPair,
    dilation: IntOrPair,
    ceil_mode: bool,
) -> PoolParams:
    """The geometry of a valid pool of ``x``: :func:`pool_params`, then
    :func:`check_float_tensor` and :func:`pooled_shape` on ``x`` (their ValueErrors)."""
    key = None
    if (
        isinstance(x, torch.Tensor)
        and type(ceil_mode) is bool
        and not torch.compiler.is_compiling()
    ):
        try:
            key = (_exact_ints(kernel_size), _exact_ints(stride), _exact_ints(padding),
                   _exact_ints(dilation), ceil_mode, x.dtype, x.dim(), x.shape[-2:])
            params = _CHECKED_POOLS.get(key)
        except TypeError:  # not plain ints, or symbolic sizes
            params = key = None
        if params is not None:
            return params
    params = pool_params(kernel_size, stride, padding, dilation)
    if not isinstance(ceil_mode, bool):  # F.max_pool2d's rule (a TypeError there)
        raise ValueError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    check_float_tensor(x, "x")
    pooled_shape(x.shape[-2:], params, bool(ceil_mode))  # type: ignore[union-attr]
    if key is not None and len(_CHECKED_POOLS) < _CHECKED_POOLS_MAX:
        _CHECKED_POOLS[key] = params
    return params


def check_switches(switches: object, like: torch.Tensor, name: str = "switches") -> None:
    """uint8, same shape and device as the pooled tensor ``like``."""
    if not isinstance(switches, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(switches).__name__}")
    if switches.dtype != torch.uint8:
        raise ValueError(f"{name} must be torch.uint8, got {switches.dtype}")
    if switches.shape != like.shape:
        raise ValueError(
            f"{name} must have the pooled tensor's shape {tuple(like.shape)}, got "
            f"{tuple(switches.shape)}"
        )
    if switches.device != like.device:
        raise ValueError(
            f"{name} is on {switches.device} but the pooled tensor is on {like.device}"
        )


class DeconvParams(NamedTuple):
    """A transposed convolution's geometry (``nn.ConvTranspose2d`` conventions)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int]
    groups: int
    dilation: tuple[int, int]

    def output_shape(self, size: Sequence[int], kernel: Sequence[int]) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (n - 1) * s - 2 * p + d * (k - 1) + op + 1
            for n, k, s, p, op, d in zip(
                size, kernel, self.stride, self.padding, self.output_padding, self.dilation,
                strict=True,
            )
        )


def deconv_params(
    stride: IntOrPair,
    padding: IntOrPair,
    output_padding: IntOrPair,
    groups: int,
    dilation: IntOrPair,
) -> DeconvParams:
    """Normalise and validate a transposed convolution's geometry (PyTorch's rules)."""
    s, p = pair(stride, "stride"), pair(padding, "padding")
    op, d = pair(output_padding, "output_padding"), pair(dilation, "dilation")
    _check_signs(s, d, p)
    if min(op) < 0 or any(o >= max(si, di) for o, si, di in zip(op, s, d, strict=True)):
        raise ValueError(
            "output_padding must be non-negative and smaller than either stride or dilation, "
            f"got output_padding={op}, stride={s}, dilation={d}"
        )
    g = as_int(groups)
    if g is None or g <= 0:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return DeconvParams(s, p, op, g, d)


def check_deconv_weight(
    weight: object, bias: object, y: torch.Tensor, groups: int
) -> None:
    """weight (C_in, C_out / groups, kh, kw) of y's dtype and device; bias (C_out,) or None."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError("weight must be a 4-D tensor (C_in, C_out / groups, kh, kw)")
    if weight.dtype != y.dtype:
        raise ValueError(f"weight must have y's dtype {y.dtype}, got {weight.dtype}")
    if weight.device != y.device:
        raise ValueError(f"weight is on {weight.device} but y is on {y.device}")
    if min(weight.shape[1:]) < 1:
        raise ValueError(
            "weight must have at least one output channel and a non-empty kernel, got shape "
            f"{tuple(weight.shape)}"
        )
    cin = y.shape[-3]
    if weight.shape[0] != cin:
        raise ValueError(
            f"weight must have C_in = {cin} (y's channels) in dimension 0, got shape "
            f"{tuple(weight.shape)}"
        )
    if cin % groups != 0:
        raise ValueError(f"groups ({groups}) must divide y's channels ({cin})")
    if bias is not None:
        cout = weight.shape[1] * groups
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (cout,):
            raise ValueError(f"bias must be a tensor of shape ({cout},)")
        if bias.dtype != y.dtype or bias.device != y.device:
            raise ValueError(f"bias must have y's dtype {y.dtype} and device {y.device}")
