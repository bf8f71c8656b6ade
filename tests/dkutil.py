"""Helpers shared by the test modules: targets (devices), data, an independent oracle, asserts.

The oracle here (:func:`oracle_pool`) is written from the contract alone (PyTorch's CPU max pool
loop: ``if (val > maxval || isnan(val))`` over the in-bounds taps of each window in raster
order, ``maxindex`` starting at the first in-bounds tap), independently of
``deconvkernels.reference``, so the two check each other and ``F.max_pool2d``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import deconvkernels as dk

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}

HAS_EXT = dk.extension_available()
HAS_CUDA = torch.cuda.is_available()
#: CPU kernel variants to run the CPU tests under; [None] = whatever the CPU path is (reference
#: when the extension is missing).
CPU_ISAS: list[str | None] = list(dk.available_cpu_isas()) or [None]

NO_EXT_REASON = (
    "needs the compiled extension deconvkernels._C (not built: "
    f"{dk._ext.import_error()!r}); test_extension_is_built fails in CI instead"
)


# ----------------------------------------------------------------------------- geometry


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def geometry(kernel_size, stride=None, padding=0, dilation=1) -> list[list[int]]:
    """The normalised ``[kernel_size, stride, padding, dilation]`` lists the raw ops take."""
    k = pair(kernel_size)
    s = k if stride is None else pair(stride)
    return [list(k), list(s), list(pair(padding)), list(pair(dilation))]


def geo_id(case) -> str:
    """Test id of a ``(geometry, ceil_mode)`` case, e.g. ``k2x3-s1x2-p1x1-d1x1-ceil``."""
    (k, s, p, d), ceil = case
    f = "x".join
    return (
        f"k{f(map(str, k))}-s{f(map(str, s))}-p{f(map(str, p))}-d{f(map(str, d))}"
        + ("-ceil" if ceil else "")
    )


def pooled_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """ATen's ``pooling_output_shape`` (floor division rounds towards -inf, as in ATen)."""
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def pooled_hw(hw: Sequence[int], geo: list[list[int]], ceil_mode: bool) -> tuple[int, int]:
    k, s, p, d = geo
    return tuple(pooled_size(hw[i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(2))


def default_unpooled_hw(pooled: Sequence[int], geo: list[list[int]]) -> tuple[int, int]:
    k, s, p, d = geo
    return tuple((pooled[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1 for i in range(2))


def overlapping(geo: list[list[int]]) -> bool:
    k, s, _, d = geo
    return any(s[i] < (k[i] - 1) * d[i] + 1 for i in range(2))


def effective(geo: list[list[int]]) -> list[int]:
    k, _, _, d = geo
    return [(k[i] - 1) * d[i] + 1 for i in range(2)]


def has_empty_window(hw: Sequence[int], geo, ceil_mode: bool) -> bool:
    """True when some window has no in-bounds tap at all (dilation > 1 with padding or a tiny
    input: every tap falls in the padding or past the edge). F.max_pool2d then gives -inf and
    an index outside the window (or the input); tests keep such geometries apart."""
    k, s, p, d = geo
    for i in range(2):
        out = pooled_size(hw[i], k[i], s[i], p[i], d[i], ceil_mode)
        for o in range(out):
            if not any(0 <= o * s[i] - p[i] + j * d[i] < hw[i] for j in range(k[i])):
                return True
    return False


# ----------------------------------------------------------------------------- oracle


def oracle_pool(x: torch.Tensor, geo: list[list[int]], ceil_mode: bool):
    """Independent oracle: ``(y, switches uint8, indices int64)`` on the CPU.

    Loops over the window offsets in raster order with PyTorch's CPU update rule, so ties keep
    the first maximum and NaN takes the last NaN. ``y`` is gathered from ``x`` itself (same bits).
    """
    (kh, kw), (sh, sw_), (ph, pw), (dh, dw) = geo
    x = x.detach().cpu()
    height, width = x.shape[-2:]
    oh, ow = pooled_hw((height, width), geo, ceil_mode)
    xd = x.double()
    lead = x.shape[:-2]
    best = torch.full((*lead, oh, ow), float("-inf"), dtype=torch.float64)
    sw = torch.full((*lead, oh, ow), -1, dtype=torch.long)
    for ky in range(kh):
        rows = torch.arange(oh) * sh - ph + ky * dh
        for kx in range(kw):
            cols = torch.arange(ow) * sw_ - pw + kx * dw
            valid = ((rows >= 0) & (rows < height)).view(-1, 1) & (
                (cols >= 0) & (cols < width)
            ).view(1, -1)
            r, c = rows.clamp(0, height - 1).view(-1, 1), cols.clamp(0, width - 1).view(1, -1)
            vals = xd[..., r, c]
            off = ky * kw + kx
            sw = torch.where((sw < 0) & valid, off, sw)
            take = valid & ((vals > best) | vals.isnan())
            best = torch.where(take, vals, best)
            sw = torch.where(take, off, sw)
    if not bool((sw >= 0).all()):
        raise AssertionError(f"oracle: a window without any in-bounds tap ({geo}, {ceil_mode})")
    ky, kx = sw // kw, sw % kw
    ih = (torch.arange(oh) * sh - ph).view(-1, 1) + ky * dh
    iw = (torch.arange(ow) * sw_ - pw).view(1, -1) + kx * dw
    idx = ih * width + iw
    y = x.flatten(-2).gather(-1, idx.flatten(-2)).view(idx.shape)
    return y, sw.to(torch.uint8), idx


def torch_pool(x: torch.Tensor, geo, ceil_mode: bool):
    """``F.max_pool2d`` on the CPU with indices."""
    k, s, p, d = geo
    return F.max_pool2d(
        x.detach().cpu(), k, s, p, d, ceil_mode=ceil_mode, return_indices=True
    )


def torch_unpool(y: torch.Tensor, indices: torch.Tensor, geo, output_hw) -> torch.Tensor:
    """``F.max_unpool2d`` on the CPU, on one thread. F ignores dilation, so pass the dilated
    (effective) kernel: then F's default size and size check agree with the dilated pool's
    geometry.

    One thread, because ATen's CPU unpool splits the input elements over threads (a plane
    can span several): where overlapping windows send two values to one place, which one
    lands is then a race. On one thread the last window in raster order wins, which is the
    contract. (Seen on a 16-core machine: 46 overlapping cases differed; 2 cores hid it.)
    """
    _, s, p, _ = geo
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return F.max_unpool2d(
            y.detach().cpu(), indices.cpu(), effective(geo), s, p, output_size=list(output_hw)
        )
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- data


def make_values(shape, dtype, kind: str) -> torch.Tensor:
    """Contiguous CPU values. kinds: randn, ties (small ints, signed zeros), special (nan/inf)."""
    if kind == "randn":
        return torch.randn(shape, dtype=torch.float64).to(dtype)
    if kind == "ties":
        v = torch.randint(-2, 3, shape).to(dtype)
        neg_zero = (v == 0) & (torch.rand(shape) < 0.5)
        return torch.where(neg_zero, torch.tensor(-0.0, dtype=dtype), v)
    if kind == "special":
        v = torch.randn(shape, dtype=torch.float64).to(dtype)
        r = torch.rand(shape)
        v = torch.where(r < 0.08, torch.tensor(float("nan"), dtype=dtype), v)
        v = torch.where((r >= 0.08) & (r < 0.14), torch.tensor(float("inf"), dtype=dtype), v)
        v = torch.where((r >= 0.14) & (r < 0.30), torch.tensor(float("-inf"), dtype=dtype), v)
        if shape[-2] >= 5 and shape[-1] >= 5:
            v[..., :3, :3] = float("-inf")  # windows of nothing but -inf (first tap must win)
            v[..., -2:, -2:] = float("nan")  # windows of nothing but NaN (last NaN must win)
        return v
    raise ValueError(kind)


LAYOUTS_4D = ("contiguous", "channels_last", "transposed", "sliced", "channel_sliced", "expanded")


def arrange(v: torch.Tensor, layout: str) -> torch.Tensor:
    """The same logical values in another memory layout (``expanded`` repeats the batch)."""
    if layout == "contiguous":
        return v.contiguous()
    if layout == "channels_last":
        if v.dim() == 3:  # an unbatched (C, H, W) view of HWC memory
            return v.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        return v.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return v.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":
        big = torch.zeros((*v.shape[:-2], v.shape[-2] + 1, 2 * v.shape[-1]), dtype=v.dtype)
        big[..., 1:, ::2] = v
        return big[..., 1:, ::2]
    if layout == "channel_sliced":
        big = torch.zeros((v.shape[0], 2 * v.shape[1], *v.shape[2:]), dtype=v.dtype)
        big[:, ::2] = v
        return big[:, ::2]
    if layout == "expanded":
        return v[:1].expand(v.shape[0], *v.shape[1:])
    raise ValueError(layout)


def random_valid_switches(
    lead: Sequence[int], input_hw: Sequence[int], geo, ceil_mode: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniformly random in-bounds switches (and their F-style indices) for an input size."""
    x = torch.randn((*lead, *input_hw), dtype=torch.float64)
    _, sw, idx = oracle_pool(x, geo, ceil_mode)
    return sw, idx


# ----------------------------------------------------------------------------- asserts


def _first_mismatch(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def assert_identical(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Same dtype, shape and bits (signed zeros included); NaN only where NaN is expected
    (NaN payloads are not compared: F.max_pool2d canonicalises bf16/fp16 NaNs)."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    if not actual.is_floating_point():
        if not torch.equal(actual, expected):
            at = _first_mismatch(actual != expected)
            raise AssertionError(
                f"{what}: first mismatch at {at}: {actual[at].item()} != {expected[at].item()}"
            )
        return
    nan_a, nan_e = actual.isnan(), expected.isnan()
    if not torch.equal(nan_a, nan_e):
        at = _first_mismatch(nan_a != nan_e)
        raise AssertionError(
            f"{what}: NaN mismatch at {at}: {actual[at].item()} vs {expected[at].item()}"
        )
    bits = _BITS[actual.dtype]
    ba = torch.where(nan_a, 0, actual.contiguous().view(bits))
    be = torch.where(nan_e, 0, expected.contiguous().view(bits))
    if not torch.equal(ba, be):
        at = _first_mismatch(ba != be)
        raise AssertionError(
            f"{what}: first mismatch at {at}: {actual[at].item()!r} != {expected[at].item()!r}"
        )


def assert_equal_values(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Like :func:`assert_identical` but +0.0 == -0.0 (for comparisons with the reference)."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    if actual.is_floating_point() and actual.dtype == expected.dtype:
        zero = torch.zeros((), dtype=actual.dtype)
        actual = torch.where(actual == 0, zero, actual)
        expected = torch.where(expected == 0, zero, expected)
    assert_identical(actual, expected, what)


def is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """Where an op runs: "cpu" (under one CPU ISA), "cuda-emulated" (the CUDA kernels run on
    CPU tensors through the extension's grid emulator, raw ops only) or "cuda".

    "cpu" and "cuda" go through the public API (so through the Python checks and, once built, the
    extension; without it the reference backend); "cpu-reference" is the public API on the
    reference backend; "cuda-emulated" calls the ``_emulated_`` raw twins with normalised
    arguments.
    """

    kind: str
    isa: str | None = None
    #: "reference": the public API under ``use_backend("reference")`` (the fallback backend
    #: must meet the same contract); None: the default backend (the extension when built).
    backend: str | None = None

    @property
    def id(self) -> str:
        if self.backend == "reference":
            return "cpu-reference"
        return f"cpu-{self.isa}" if self.kind == "cpu" and self.isa else self.kind

    @property
    def emulated(self) -> bool:
        return self.kind == "cuda-emulated"

    @property
    def device(self) -> torch.device:
        # With its index: a CUDA tensor's .device is cuda:0, never a bare "cuda".
        if self.kind == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    @property
    def public(self) -> bool:
        return not self.emulated

    def put(self, t):
        return t.to(self.device) if isinstance(t, torch.Tensor) else t

    def raw_op(self, name: str):
        """``torch.ops.deconvkernels.<name>``, or its ``_emulated_`` twin on cuda-emulated."""
        if not HAS_EXT:
            pytest.skip(NO_EXT_REASON)
        return getattr(torch.ops.deconvkernels, ("_emulated_" if self.emulated else "") + name)

    def raw(self, name: str, *args):
        """Run a raw op here: tensors are moved to this target's device first."""
        return self.raw_op(name)(*[self.put(a) for a in args])

    # -- ops with public-API-style arguments

    def pool(self, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        x = self.put(x)
        if self.emulated:
            geo = geometry(kernel_size, stride, padding, dilation)
            return self.raw("max_pool2d_with_switches", x, *geo, bool(ceil_mode))
        return dk.max_pool2d_with_switches(x, kernel_size, stride, padding, dilation, ceil_mode)

    def unpool(self, y, switches, kernel_size, stride=None, padding=0, dilation=1,
               output_size=None):
        y, switches = self.put(y), self.put(switches)
        if self.emulated:
            geo = geometry(kernel_size, stride, padding, dilation)
            size = default_unpooled_hw(y.shape[-2:], geo) if output_size is None else output_size
            if len(size) != 2 and tuple(size)[:-2] != tuple(y.shape[:-2]):
                # (the public op's rule, in Python there: a whole shape has y's leading sizes)
                raise ValueError(f"output_size {tuple(size)} does not lead with {y.shape[:-2]}")
            return self.raw("max_unpool2d_with_switches", y, switches, list(size)[-2:], *geo)
        return dk.max_unpool2d_with_switches(
            y, switches, kernel_size, stride, padding, dilation, output_size
        )

    def switches_to_indices(self, switches, input_size, kernel_size, stride=None, padding=0,
                            dilation=1):
        switches = self.put(switches)
        if self.emulated:
            geo = geometry(kernel_size, stride, padding, dilation)
            return self.raw("switches_to_indices", switches, list(input_size)[-2:], *geo)
        return dk.switches_to_indices(switches, input_size, kernel_size, stride, padding, dilation)

    def indices_to_switches(self, indices, input_size, kernel_size, stride=None, padding=0,
                            dilation=1):
        indices = self.put(indices)
        if self.emulated:
            geo = geometry(kernel_size, stride, padding, dilation)
            return self.raw("indices_to_switches", indices, list(input_size)[-2:], *geo)
        return dk.indices_to_switches(indices, input_size, kernel_size, stride, padding, dilation)

    def pool_grad(self, x, grad_y, geo, ceil_mode=False):
        """``(y, switches, grad_x)``: autograd of the public op, or the raw emulated backward."""
        x, grad_y = self.put(x), self.put(grad_y)
        if self.emulated:
            y, sw = self.raw("max_pool2d_with_switches", x, *geo, bool(ceil_mode))
            gx = self.raw(
                "max_pool2d_with_switches_backward", grad_y, sw, list(x.shape[-2:]), *geo
            )
            return y, sw, gx
        xr = x.detach().requires_grad_(True)
        y, sw = dk.max_pool2d_with_switches(xr, *geo, ceil_mode)
        (gx,) = torch.autograd.grad(y, xr, grad_y)
        return y.detach(), sw, gx

    def unpool_grad(self, y, switches, grad_out, geo, output_hw):
        """``(out, grad_y)``: autograd of the public op, or the raw emulated backward."""
        y, switches, grad_out = self.put(y), self.put(switches), self.put(grad_out)
        if self.emulated:
            out = self.raw("max_unpool2d_with_switches", y, switches, list(output_hw), *geo)
            gy = self.raw("max_unpool2d_with_switches_backward", grad_out, switches, *geo)
            return out, gy
        yr = y.detach().requires_grad_(True)
        out = dk.max_unpool2d_with_switches(yr, switches, *geo, output_size=output_hw)
        (gy,) = torch.autograd.grad(out, yr, grad_out)
        return out.detach(), gy


def all_targets() -> list[Target]:
    targets = [Target("cpu", isa) for isa in CPU_ISAS]
    if HAS_EXT:  # without the extension the plain "cpu" target already runs the reference
        targets.append(Target("cpu", backend="reference"))
    targets.append(Target("cuda-emulated"))
    if HAS_CUDA:
        targets.append(Target("cuda"))
    return targets


def public_targets() -> list[Target]:
    """Targets that run the public API and autograd (no emulator)."""
    return [t for t in all_targets() if t.public]


def env_allows_no_extension() -> bool:
    return os.environ.get("DECONVKERNELS_ALLOW_NO_EXTENSION", "") == "1"


# ----------------------------------------------------------------------------- unpool + deconv

#: Tolerance of the fused unpool + transposed convolution, relative to the sum of the absolute
#: values of the terms of each output element (accumulation orders differ from oneDNN's).
UD_RTOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 4e-3,
    torch.bfloat16: 1.6e-2,
}
#: Plus one step of the subnormal range, where float16's relative precision runs out (products of
#: two small float16 values land there); the other types' subnormals are far below the data.
UD_ATOL = {torch.float16: 2.0**-24}


def unpool_last_wins(y: torch.Tensor, indices: torch.Tensor, output_hw) -> torch.Tensor:
    """Unpool on the CPU by scattering the pooled positions one at a time, in raster order:
    where windows overlap, the last one pointing at a position wins (written from the contract;
    F.max_unpool2d does not promise it). Differentiable: an overwritten value gets no gradient."""
    lead = y.shape[:-2]
    out = torch.zeros((*lead, output_hw[0] * output_hw[1]), dtype=y.dtype)
    yf, idx = y.cpu().flatten(-2), indices.cpu().flatten(-2)
    for p in range(yf.shape[-1]):
        out = out.scatter(-1, idx[..., p : p + 1], yf[..., p : p + 1])
    return out.view(*lead, *output_hw)


def assert_close_bounded(actual, expected, bound, dtype, what: str = "") -> None:
    """``actual`` has ``dtype`` and ``expected``'s shape; where ``expected`` is NaN or +-inf,
    ``actual`` is the same; elsewhere ``|actual - expected| <= UD_RTOL[dtype] * bound`` (plus
    ``UD_ATOL``), where ``bound`` is the sum of |terms| (so an element without any term must be
    exactly 0, or in float16 within a subnormal step of it)."""
    actual = actual.detach().cpu()
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    a, e = actual.double(), expected.detach().cpu().double()
    b = bound.detach().cpu().double()
    nan_e, inf_e = e.isnan(), e.isinf()
    bad = (nan_e != a.isnan()) | (inf_e & (a != e))
    bad |= ~(nan_e | inf_e) & ~((a - e).abs() <= UD_RTOL[dtype] * b + UD_ATOL.get(dtype, 0.0))
    if bool(bad.any()):
        at = _first_mismatch(bad)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements off, first at {at}: "
            f"{a[at].item()!r} vs {e[at].item()!r} (bound {b[at].item():.3g}, "
            f"rtol {UD_RTOL[dtype]})"
        )
