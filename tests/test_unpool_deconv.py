"""The fused unpool + transposed convolution ``unpool_deconv2d``.

Parity with an independent float64 oracle on every target (the CPU kernels under each ISA, the
reference backend, the emulated CUDA kernels, the GPU when visible), the three backward ops
against autograd of the oracle, gradcheck, opcheck, torch.compile, the memory kept for the
backward, the module, and bad input.

The oracle (:func:`oracle_unpool_deconv`) unpools with ``dkutil.unpool_last_wins``, a sequential
scatter of one pooled position at a time in raster order ("the last window wins", written from the
contract, not taken from ``deconvkernels.reference``), then runs ``F.conv_transpose2d`` in float64.
Results are compared within ``UD_RTOL[dtype]`` of the sum of the absolute values of the terms of
each output element (``dkutil.assert_close_bounded``): accumulation orders differ from oneDNN's,
so nothing is bitwise, but an element with no term at all must be exactly zero.
"""

from __future__ import annotations

import functools
import random
import zlib
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from dkutil import (
    HAS_CUDA,
    arrange,
    assert_close_bounded,
    assert_identical,
    geometry,
    has_empty_window,
    is_channels_last,
    oracle_pool,
    overlapping,
    pooled_hw,
    torch_unpool,
    unpool_last_wins,
)
from torch import nn

import deconvkernels as dk
from deconvkernels import nn as dknn
from deconvkernels import reference
from deconvkernels._geometry import PoolParams

# ----------------------------------------------------------------------------- cases

POOLS = {
    "2x2": (geometry(2), False),
    "2x2-ceil": (geometry(2), True),
    "3x3s2p1": (geometry(3, 2, 1), False),  # overlapping, padded
    "3x3s2p1-ceil": (geometry(3, 2, 1), True),
    "2x2s1": (geometry(2, 1), False),  # overlapping
    "2x3s1x2p1": (geometry((2, 3), (1, 2), 1), False),  # non-square, overlapping both ways
    "2x2d2": (geometry(2, 2, 0, 2), False),  # dilated
    "3x2s3x2": (geometry((3, 2)), False),
}


@dataclass(frozen=True)
class Case:
    pool: str = "2x2"
    hw: tuple[int, int] = (6, 8)  # the unpooled size (the pool's input)
    batch: int | None = 2  # None: unbatched 3-D y
    cin: int = 3
    cout: int = 4
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    output_padding: tuple[int, int] = (0, 0)
    groups: int = 1
    dilation: tuple[int, int] = (1, 1)
    bias: bool = True
    dtype: torch.dtype = torch.float32
    layout: str = "contiguous"  # y's (and switches') layout, see dkutil.arrange; "mixed": y
    #  channels_last, switches contiguous
    weight_layout: str = "contiguous"  # contiguous, transposed, sliced, permuted

    @property
    def geo(self):
        return POOLS[self.pool][0]

    @property
    def ceil(self) -> bool:
        return POOLS[self.pool][1]

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(
            (self.hw[i] - 1) * self.stride[i] - 2 * self.padding[i]
            + self.dilation[i] * (self.kernel[i] - 1) + self.output_padding[i] + 1
            for i in range(2)
        )

    def kwargs(self) -> dict:
        k, s, p, d = self.geo
        return dict(
            output_size=self.hw, pool_kernel_size=k, pool_stride=s, pool_padding=p,
            pool_dilation=d, stride=self.stride, padding=self.padding,
            output_padding=self.output_padding, groups=self.groups, dilation=self.dilation,
        )

    def tail(self) -> list:
        """The raw ops' trailing arguments, from output_size on."""
        return [list(self.hw), *self.geo, list(self.stride), list(self.padding),
                list(self.output_padding), self.groups, list(self.dilation)]

    def __str__(self) -> str:
        f = "x".join
        parts = [
            self.pool, f(map(str, self.hw)),
            "3d" if self.batch is None else f"n{self.batch}", f"c{self.cin}-{self.cout}",
            "k" + f(map(str, self.kernel)), "s" + f(map(str, self.stride)),
            "p" + f(map(str, self.padding)),
        ]
        if any(self.output_padding):
            parts.append("op" + f(map(str, self.output_padding)))
        if self.groups > 1:
            parts.append(f"g{self.groups}")
        if any(d > 1 for d in self.dilation):
            parts.append("d" + f(map(str, self.dilation)))
        parts.append("bias" if self.bias else "nobias")
        parts.append(str(self.dtype).removeprefix("torch."))
        if self.layout != "contiguous":
            parts.append(self.layout)
        if self.weight_layout != "contiguous":
            parts.append("w-" + self.weight_layout)
        return "-".join(parts)


def plant_specials(y: torch.Tensor, fraction: float) -> None:
    """Make about ``fraction`` of ``y`` NaN, as many +inf and as many -inf, in place."""
    r = torch.rand(y.shape)
    y[r < fraction] = float("nan")
    y[(r >= fraction) & (r < 2 * fraction)] = float("inf")
    y[(r >= 2 * fraction) & (r < 3 * fraction)] = float("-inf")


def _arrange_weight(w: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        return w.contiguous()
    if layout == "transposed":  # kh and kw swapped in memory
        return w.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":  # every other output channel of a larger tensor
        big = torch.zeros((w.shape[0], 2 * w.shape[1], *w.shape[2:]), dtype=w.dtype)
        big[:, ::2] = w
        return big[:, ::2]
    if layout == "permuted":  # C_in and C_out / groups swapped in memory
        return w.transpose(0, 1).contiguous().transpose(0, 1)
    raise ValueError(layout)


def _arrange_pooled(y, sw, layout):
    if layout == "mixed":
        return arrange(y, "channels_last"), sw.contiguous()
    if y.dim() == 3 and layout not in ("contiguous", "transposed", "sliced"):
        return y, sw
    return arrange(y, layout), arrange(sw, layout)


def make_inputs(c: Case, kind: str = "randn"):
    """(y, switches, weight, bias, indices), CPU, in the case's dtype and layouts. The switches
    come from a real pool of random data (so overlapping windows share maxima)."""
    lead = (c.cin,) if c.batch is None else (max(c.batch, 1), c.cin)
    _, sw, idx = oracle_pool(torch.randn((*lead, *c.hw), dtype=torch.float64), c.geo, c.ceil)
    if c.batch == 0:
        sw, idx = sw[:0], idx[:0]
    y = torch.randn(sw.shape, dtype=torch.float64)
    if kind == "special":  # NaN and +-inf among the pooled values
        plant_specials(y, 0.1)
    w = torch.randn(c.cin, c.cout // c.groups, *c.kernel, dtype=torch.float64)
    b = torch.randn(c.cout, dtype=torch.float64) if c.bias else None
    y, sw = _arrange_pooled(y.to(c.dtype), sw, c.layout)
    w = _arrange_weight(w.to(c.dtype), c.weight_layout)
    b = None if b is None else b.to(c.dtype)
    return y, sw, w, b, idx


@functools.cache
def prepared(c: Case, kind: str = "randn"):
    """``make_inputs`` and the oracle's ``(expected, bound)``, computed once per case (the same
    data for every target; fixed by the case's name). Callers must not modify them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{c} {kind}".encode()))
        y, sw, w, b, idx = make_inputs(c, kind)
    return (y, sw, w, b, idx), oracle_unpool_deconv(c, y, idx, w, b)


def oracle_unpool_deconv(c: Case, y, idx, w, b):
    """(expected, bound) in float64: the chain, and the same chain over absolute values."""
    def chain(yv, wv, bv):
        u = unpool_last_wins(yv.double(), idx, c.hw)
        return F.conv_transpose2d(
            u, wv.double(), None if bv is None else bv.double(), c.stride, c.padding,
            c.output_padding, c.groups, c.dilation,
        )

    yd, wd = y.detach().cpu().double(), w.detach().cpu().double()
    bd = None if b is None else b.detach().cpu().double()
    with torch.no_grad():
        return chain(yd, wd, bd), chain(yd.abs(), wd.abs(), None if bd is None else bd.abs())


def run_forward(target, c: Case, y, sw, w, b):
    """The fused op on ``target``: the public API, or the emulated raw op."""
    y, sw, w, b = (target.put(t) for t in (y, sw, w, b))
    if target.emulated:
        return target.raw("unpool_deconv2d", y, sw, w, b, *c.tail())
    return dk.unpool_deconv2d(y, sw, w, b, **c.kwargs())


def _valid(c: Case) -> bool:
    if has_empty_window(c.hw, c.geo, c.ceil) or min(pooled_hw(c.hw, c.geo, c.ceil)) < 1:
        return False
    if min(c.out_hw) < 1 or c.cin % c.groups or c.cout % c.groups:
        return False
    return all(
        c.output_padding[i] < max(c.stride[i], c.dilation[i]) for i in range(2)
    )


# DeconvNet's case (2x2/2 pool, stride-1 undilated ungrouped deconvolution) has a vectorised
# CPU forward, register-blocked when C_out is a multiple of four vectors (64 covers every ISA)
# and the kernel width 1 or 3; everything else takes the general gather kernels.
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
FAST = Case(pool="2x2", hw=(6, 8), batch=2, cin=3, cout=64)
GENERAL = Case(pool="3x3s2p1", hw=(7, 6), batch=2, cin=4, cout=6, kernel=(3, 5), stride=(2, 1),
               padding=(1, 2), output_padding=(1, 0), groups=2)
CASES = [
    # the fast path: blocked (C_out 64, kw 1 or 3) and not (C_out 5, kw 5), odd sizes
    FAST,
    replace(FAST, layout="channels_last"),
    replace(FAST, layout="mixed"),
    replace(FAST, dtype=F64, cout=32, layout="channels_last"),
    replace(FAST, dtype=F16),
    replace(FAST, dtype=BF16, layout="channels_last", bias=False),
    replace(FAST, kernel=(1, 1), padding=(0, 0)),
    replace(FAST, kernel=(1, 3), padding=(0, 1), bias=False),
    replace(FAST, hw=(7, 9), cout=5),  # odd size: the last unpooled row and column stay zero
    replace(FAST, hw=(7, 9), cout=5, kernel=(5, 3), padding=(2, 0)),
    replace(FAST, cout=5, kernel=(3, 5), padding=(0, 2), layout="channels_last"),
    replace(FAST, batch=None),
    replace(FAST, batch=None, cout=5, dtype=BF16),
    replace(FAST, layout="sliced", weight_layout="sliced"),
    replace(FAST, layout="transposed", weight_layout="transposed", cout=5),
    replace(FAST, weight_layout="permuted"),
    replace(FAST, batch=0),
    replace(FAST, batch=0, layout="channels_last", cout=5),
    replace(FAST, cin=70, hw=(4, 6), batch=1),  # input channels in more than one chunk of 64
    replace(FAST, cin=70, hw=(4, 6), batch=1, dtype=BF16, layout="channels_last", kernel=(1, 1),
            padding=(0, 0)),
    # the general kernels
    GENERAL,
    replace(GENERAL, layout="channels_last", bias=False),
    replace(GENERAL, dtype=F64, weight_layout="permuted"),
    replace(GENERAL, dtype=F16, layout="channels_last"),
    replace(GENERAL, dtype=BF16),
    replace(GENERAL, batch=None, layout="sliced"),
    replace(GENERAL, batch=0),
    Case(pool="3x3s2p1-ceil", hw=(6, 7), cin=2, cout=3, stride=(2, 2), padding=(0, 0),
         output_padding=(1, 1), layout="mixed"),
    Case(pool="2x2s1", hw=(5, 6), cin=2, cout=4, kernel=(3, 2), dilation=(2, 2), padding=(1, 0),
         output_padding=(1, 0), groups=2, weight_layout="transposed"),
    Case(pool="2x3s1x2p1", hw=(6, 7), cin=3, cout=2, kernel=(1, 3), stride=(1, 2),
         padding=(0, 1), output_padding=(0, 1), bias=False),
    Case(pool="2x2d2", hw=(7, 7), cin=2, cout=2, kernel=(5, 5), padding=(2, 2),
         layout="channels_last"),
    Case(pool="3x2s3x2", hw=(8, 7), cin=2, cout=3, kernel=(2, 3), stride=(2, 2)),
    Case(pool="2x2-ceil", hw=(7, 9), cin=3, cout=5),  # 2x2 windows past the edge: general
    Case(pool="2x2", hw=(6, 8), cin=4, cout=4, groups=2),  # grouped: general
    Case(pool="2x2", hw=(6, 8), cin=2, cout=3, dilation=(2, 1), padding=(2, 1)),
    Case(pool="2x2", hw=(6, 8), cin=2, cout=3, stride=(2, 2), output_padding=(1, 1)),
]


def _random_cases(n: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    out: list[Case] = []
    while len(out) < n:
        groups = rng.choice([1, 1, 2])
        stride = (rng.choice([1, 2]), rng.choice([1, 2]))
        dilation = (rng.choice([1, 1, 2]), rng.choice([1, 1, 2]))
        c = Case(
            pool=rng.choice(list(POOLS)),
            hw=(rng.randint(3, 9), rng.randint(3, 9)),
            batch=rng.choice([None, None, 0, 1, 1, 2, 2, 2, 2, 2]),
            cin=groups * rng.randint(1, 2),
            cout=groups * rng.randint(1, 3),
            kernel=(rng.choice([1, 3, 5]), rng.choice([1, 2, 3])),
            stride=stride,
            padding=(rng.randint(0, 2), rng.randint(0, 2)),
            output_padding=tuple(rng.randint(0, max(stride[i], dilation[i]) - 1)
                                 for i in range(2)),
            groups=groups,
            dilation=dilation,
            bias=rng.random() < 0.5,
            dtype=rng.choice([F32, F32, F64, F16, BF16]),
            layout=rng.choice(["contiguous", "channels_last", "sliced"]),
            weight_layout=rng.choice(["contiguous", "permuted"]),
        )
        if _valid(c):
            out.append(c)
    return out


RANDOM_CASES = _random_cases(16, seed=20151207)
assert all(_valid(c) for c in CASES)


def check_forward(target, c: Case, kind: str = "randn"):
    (y, sw, w, b, _), (expected, bound) = prepared(c, kind)
    out = run_forward(target, c, y, sw, w, b)
    if target.backend == "reference" and c.dtype == BF16 and kind == "special":
        # PyTorch's CPU transposed convolution in bfloat16 (oneDNN) turns an inf in its input
        # into NaN at other outputs (see test_fuzz's docstring); the dense reference inherits it
        out = torch.where(out.isnan() & ~expected.isnan(), expected.to(out.dtype), out)
    assert_close_bounded(out, expected, bound, c.dtype, f"{target.id} {c}")
    assert out.device == target.device
    # the output keeps y's memory format (where the format is unambiguous)
    if y.dim() == 4 and c.cin > 1 and c.cout > 1 and out.numel() > 0:
        if is_channels_last(y) and not y.is_contiguous():
            assert is_channels_last(out), f"{c}: out lost channels_last, strides {out.stride()}"
        elif y.is_contiguous():
            assert out.is_contiguous(), f"{c}: out not contiguous, strides {out.stride()}"
    elif y.dim() == 3 and y.is_contiguous():
        assert out.is_contiguous(), f"{c}: out not contiguous, strides {out.stride()}"


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_parity(target, case):
    check_forward(target, case)


@pytest.mark.parametrize("case", RANDOM_CASES, ids=str)
def test_forward_parity_random(target, case):
    check_forward(target, case)


@pytest.mark.parametrize("case", [FAST, replace(FAST, layout="channels_last", dtype=F16),
                                  GENERAL, replace(GENERAL, dtype=BF16)], ids=str)
def test_forward_nan_inf_in_y(target, case):
    """NaN and +-inf pooled values spread like any other value (a NaN or inf that lost its
    position to a later window vanishes)."""
    check_forward(target, case, kind="special")


def test_forward_last_window_wins(target):
    """Overlapping 2x2/1 windows all pointing at the centre of a 3x3 map: the output is the last
    window's value times the weight."""
    c = Case(pool="2x2s1", hw=(3, 3), batch=1, cin=1, cout=1, kernel=(1, 1), padding=(0, 0),
             bias=False, dtype=F64)
    sw = torch.tensor([[[[3, 2], [1, 0]]]], dtype=torch.uint8)  # all at (1, 1)
    y = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=F64)
    w = torch.full((1, 1, 1, 1), 0.5, dtype=F64)
    out = run_forward(target, c, y, sw, w, None)
    expected = torch.zeros(1, 1, 3, 3, dtype=F64)
    expected[0, 0, 1, 1] = 2.0
    assert_identical(out.cpu(), expected, "last window wins")


def test_forward_unbatched_equals_batched(target):
    for c in (FAST, GENERAL):
        y, sw, w, b, _ = make_inputs(c)
        c3 = replace(c, batch=None)
        out4 = run_forward(target, c, y[1:2], sw[1:2], w, b)
        out3 = run_forward(target, c3, y[1], sw[1], w, b)
        assert out3.dim() == 3
        torch.testing.assert_close(out3, out4[0], rtol=0, atol=0)


def test_oracle_and_reference_agree_with_torch():
    """The oracle and ``deconvkernels.reference`` against PyTorch's own chain: without overlap,
    ``F.max_unpool2d`` with the matching indices; with overlap the two "last window wins"
    implementations against each other."""
    for c in (*CASES, *RANDOM_CASES):
        c = replace(c, dtype=F64, layout="contiguous", weight_layout="contiguous")
        y, sw, w, b, idx = make_inputs(c)
        expected, _ = oracle_unpool_deconv(c, y, idx, w, b)
        params = PoolParams(*(tuple(v) for v in c.geo))
        ref = reference.unpool_deconv2d(y, sw, w, b, c.hw, params, c.stride, c.padding,
                                        c.output_padding, c.groups, c.dilation)
        torch.testing.assert_close(ref, expected, rtol=1e-12, atol=1e-12, msg=str(c))
        if c.batch != 0 and not overlapping(c.geo):
            indices = dk.switches_to_indices(sw, c.hw, *c.geo)
            assert torch.equal(indices, idx), str(c)
            chain = F.conv_transpose2d(torch_unpool(y, indices, c.geo, c.hw), w, b, c.stride,
                                       c.padding, c.output_padding, c.groups, c.dilation)
            torch.testing.assert_close(chain, expected, rtol=1e-12, atol=1e-12, msg=str(c))


# ----------------------------------------------------------------------------- backward ops

BACKWARD_CASES = [
    # DeconvNet's geometry: the CPU's vectorised grad_y, and grad_weight for 1x1 and 3x3 kernels
    replace(FAST, dtype=F64),
    replace(FAST, layout="channels_last", bias=False),
    replace(FAST, hw=(7, 9), cout=5, kernel=(3, 5), padding=(1, 2), dtype=F64),
    replace(FAST, hw=(7, 9), padding=(2, 0), weight_layout="permuted", dtype=F64),
    replace(FAST, dtype=F16, kernel=(1, 1), padding=(0, 0)),
    replace(FAST, dtype=BF16, layout="sliced", hw=(7, 9)),
    replace(FAST, cin=70, hw=(4, 6), batch=1),
    replace(FAST, batch=None, dtype=F64),
    replace(FAST, batch=0, dtype=F64),
    # the general kernels
    replace(GENERAL, dtype=F64),
    replace(GENERAL, layout="channels_last", weight_layout="permuted"),
    replace(GENERAL, dtype=F16),
    replace(GENERAL, dtype=BF16, layout="channels_last"),
    Case(pool="2x2s1", hw=(5, 6), cin=2, cout=4, kernel=(3, 2), dilation=(2, 2), padding=(1, 0),
         output_padding=(1, 0), groups=2, dtype=F64, layout="sliced"),
    Case(pool="3x3s2p1-ceil", hw=(6, 7), cin=2, cout=3, stride=(2, 2), padding=(0, 0),
         output_padding=(1, 1), dtype=F64, layout="mixed"),
    Case(pool="2x3s1x2p1", hw=(6, 7), cin=3, cout=2, kernel=(1, 3), stride=(1, 2),
         padding=(0, 1), output_padding=(0, 1), dtype=F64),
    Case(pool="2x2d2", hw=(7, 7), cin=2, cout=2, kernel=(5, 5), padding=(2, 2), batch=None),
]


def oracle_grads(c: Case, y, idx, w, b, grad_out):
    """(grads, bounds) of y, weight and bias: autograd of the float64 oracle chain, and of the
    chain over absolute values with |grad_output| (a bound on each gradient's terms)."""
    def grads(yv, wv, bv, g):
        yv, wv = yv.detach().cpu().double(), wv.detach().cpu().double()
        yv.requires_grad_(True)
        wv.requires_grad_(True)
        bv = bv.detach().cpu().double().requires_grad_(True)
        out = F.conv_transpose2d(unpool_last_wins(yv, idx, c.hw), wv, bv, c.stride, c.padding,
                                 c.output_padding, c.groups, c.dilation)
        return torch.autograd.grad(out, (yv, wv, bv), g.detach().cpu().double())

    bias = torch.zeros(c.cout) if b is None else b
    exact = grads(y, w, bias, grad_out)
    bounds = grads(y.abs(), w.abs(), bias.abs(), grad_out.abs())
    return exact, bounds


def _grad_output(c: Case) -> torch.Tensor:
    lead = () if c.batch is None else (c.batch,)
    g = torch.randn((*lead, c.cout, *c.out_hw), dtype=torch.float64).to(c.dtype)
    return arrange(g, "channels_last") if c.layout in ("channels_last", "mixed") and lead else g


@functools.cache
def prepared_grads(c: Case):
    """``(y, switches, weight, bias, grad_output)`` and the oracle's gradients and bounds, once per
    case (callers must not modify them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{c} grads".encode()))
        y, sw, w, b, idx = make_inputs(c)
        g = _grad_output(c)
    return (y, sw, w, b, g), oracle_grads(c, y, idx, w, b, g)


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=str)
def test_backward_ops(raw_target, case):
    c = case
    (y, sw, w, b, g), ((gy, gw, gb), (by, bw, bb)) = prepared_grads(c)
    t = raw_target
    grad_y = t.raw("unpool_deconv2d_backward_y", g, sw, w, *c.tail())
    grad_w = t.raw("unpool_deconv2d_backward_weight", g, y, sw, list(c.kernel), *c.tail())
    grad_b = t.raw("unpool_deconv2d_backward_bias", g)
    assert_close_bounded(grad_y, gy, by, c.dtype, f"{t.id} grad_y {c}")
    assert_close_bounded(grad_w, gw, bw, c.dtype, f"{t.id} grad_weight {c}")
    assert_close_bounded(grad_b, gb, bb, c.dtype, f"{t.id} grad_bias {c}")
    if y.dim() == 4 and c.cin > 1 and grad_y.numel() > 0:
        if is_channels_last(sw) and not sw.is_contiguous():
            assert is_channels_last(grad_y), f"grad_y strides {grad_y.stride()}"
        elif sw.is_contiguous():
            assert grad_y.is_contiguous(), f"grad_y strides {grad_y.stride()}"


@pytest.mark.parametrize("case", [replace(c, dtype=F64) for c in BACKWARD_CASES[::3]], ids=str)
def test_autograd_matches_oracle(public_target, case):
    """Autograd through the public op (the extension's backward ops, or the reference)."""
    c = replace(case, bias=True)
    (y, sw, w, b, g), ((gy, gw, gb), (by, bw, bb)) = prepared_grads(c)
    t = public_target
    yr, wr, br = (t.put(v).detach().requires_grad_(True) for v in (y, w, b))
    out = dk.unpool_deconv2d(yr, t.put(sw), wr, br, **c.kwargs())
    grads = torch.autograd.grad(out, (yr, wr, br), t.put(g))
    for name, got, exp, bound in zip(("y", "weight", "bias"), grads, (gy, gw, gb), (by, bw, bb),
                                     strict=True):
        assert_close_bounded(got, exp, bound, c.dtype, f"{t.id} grad {name} {c}")


# ----------------------------------------------------------------------------- gradcheck

GRADCHECK_CASES = [
    # N=2, C_in=3, C_out=4, 5x6 unpooled
    Case(pool="2x2", hw=(5, 6), dtype=F64),
    Case(pool="3x3s2p1", hw=(5, 6), kernel=(3, 2), stride=(2, 1), padding=(1, 0),
         output_padding=(1, 0), dtype=F64, layout="channels_last"),
    Case(pool="2x2s1", hw=(5, 6), kernel=(2, 3), dilation=(2, 1), padding=(0, 1), dtype=F64,
         bias=False),
    Case(pool="3x3s2p1-ceil", hw=(5, 6), batch=None, cin=2, cout=4, groups=2, dtype=F64),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck(public_target, case):
    c = case
    y, sw, w, b, _ = make_inputs(c)
    t = public_target
    sw = t.put(sw)
    inputs = [y, w] + ([b] if c.bias else [])
    inputs = tuple(t.put(v).detach().requires_grad_(True) for v in inputs)

    def f(yv, wv, bv=None):
        return dk.unpool_deconv2d(yv, sw, wv, bv, **c.kwargs())

    assert torch.autograd.gradcheck(f, inputs)


def test_double_backward(public_target):
    """Gradients of gradients (e.g. a gradient penalty): the backward ops have autograd
    formulas of their own (each other, as adjoints of the bilinear forward)."""
    c = GRADCHECK_CASES[0]
    y, sw, w, b, _ = make_inputs(c)
    t = public_target
    inputs = tuple(t.put(v).detach().requires_grad_(True) for v in (y, w, b))

    def f(yv, wv, bv):
        return dk.unpool_deconv2d(yv, t.put(sw), wv, bv, **c.kwargs())

    assert torch.autograd.gradgradcheck(f, inputs)


# ----------------------------------------------------------------------------- opcheck

OPCHECK_CASES = [
    replace(FAST, cout=4),
    replace(FAST, cout=4, bias=False, dtype=F64),
    replace(FAST, cout=4, layout="channels_last"),
    replace(FAST, cout=4, batch=None, dtype=F64),
    replace(GENERAL, layout="channels_last"),
    replace(GENERAL, batch=None, bias=False),
    replace(GENERAL, batch=0),
]
OPCHECK_DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.mark.requires_extension
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck_forward(case, device):
    c = case
    y, sw, w, b, _ = make_inputs(c)
    y, w = (v.to(device).requires_grad_(True) for v in (y, w))
    b = None if b is None else b.to(device).requires_grad_(True)
    torch.library.opcheck(
        torch.ops.deconvkernels.unpool_deconv2d.default, (y, sw.to(device), w, b, *c.tail())
    )


@pytest.mark.requires_extension
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
@pytest.mark.parametrize("case", [OPCHECK_CASES[2], OPCHECK_CASES[3], OPCHECK_CASES[4]], ids=str)
def test_opcheck_backward_ops(case, device):
    c = case
    y, sw, w, _, _ = make_inputs(c)
    g = _grad_output(c)
    y, sw, w, g = (v.to(device) for v in (y, sw, w, g))
    ops = torch.ops.deconvkernels
    torch.library.opcheck(ops.unpool_deconv2d_backward_y.default, (g, sw, w, *c.tail()))
    torch.library.opcheck(ops.unpool_deconv2d_backward_weight.default,
                          (g, y, sw, list(c.kernel), *c.tail()))
    torch.library.opcheck(ops.unpool_deconv2d_backward_bias.default, (g,))


# ----------------------------------------------------------------------------- torch.compile


def _pool_unpool_deconv(x, w, b):
    y, sw = dk.max_pool2d_with_switches(x, 2)
    out = dk.unpool_deconv2d(torch.relu(y) * 2, sw, w, b, output_size=x.shape[-2:], padding=1)
    return out * x.mean(dim=1, keepdim=True)


@pytest.mark.requires_extension
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
def test_compile_fullgraph(device):
    """pool -> unpool_deconv2d, forward and backward, compiled without graph breaks by Inductor:
    the same numbers as eager."""
    torch._dynamo.reset()
    x = arrange(torch.randn(2, 4, 9, 8), "channels_last").to(device)
    w, b = torch.randn(4, 6, 3, 3, device=device), torch.randn(6, device=device)
    compiled = torch.compile(_pool_unpool_deconv, backend="inductor", fullgraph=True,
                             dynamic=False)
    results = []
    for fn in (_pool_unpool_deconv, compiled):
        args = [v.detach().clone().requires_grad_(True) for v in (x, w, b)]
        out = fn(*args)
        grads = torch.autograd.grad(out, args, torch.ones_like(out))
        results.append((out.detach(), *grads))
    for name, eager, comp in zip(("out", "x", "weight", "bias"), *results, strict=True):
        torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------- saved memory


def _saved_bytes(fn):
    """(bytes, data_ptrs) of the tensors autograd saves while ``fn`` runs, each storage once."""
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.data_ptr()] = max(saved.get(t.data_ptr(), 0), t.nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values()), set(saved)


def test_saved_tensors_for_backward():
    """The fused op keeps y, switches and weight only: at a DeconvNet-like stage (64 channels,
    28x28 -> 56x56, 3x3 deconvolution) at most a quarter of what the reference chain keeps (int64
    indices, the 4x larger unpooled map and the weight).

    In float32 that is 5 bytes per pooled value against 24, plus the weight on both sides, so the
    ratio stays under 1/4 while the weight is at most 4/3 byte per pooled value: at batch 2 this
    layer's weight (144 KiB against 98 Ki pooled values) would make it 0.254; hence batch 4."""
    x = torch.randn(4, 64, 56, 56)
    y, sw = dk.max_pool2d_with_switches(x, 2)
    y = y.requires_grad_(True)
    w = (torch.randn(64, 64, 3, 3) / 24).requires_grad_(True)

    def forward():
        dk.unpool_deconv2d(y, sw, w, None, output_size=(56, 56), padding=1)

    fused_bytes, fused_ptrs = _saved_bytes(forward)
    assert fused_ptrs == {y.data_ptr(), sw.data_ptr(), w.data_ptr()}
    assert fused_bytes == y.nbytes + sw.nbytes + w.nbytes
    with dk.use_backend("reference"):
        ref_bytes, _ = _saved_bytes(forward)
    assert ref_bytes >= 4 * y.nbytes + w.nbytes  # at least the unpooled map and the weight
    assert fused_bytes <= 0.25 * ref_bytes, (fused_bytes, ref_bytes, fused_bytes / ref_bytes)
    # the activations alone (the weight is a parameter, alive anyway): 5/24 of the reference's
    assert fused_bytes - w.nbytes <= 0.25 * (ref_bytes - w.nbytes)


# ----------------------------------------------------------------------------- module


def _module_pair():
    kw = dict(stride=(2, 1), padding=1, output_padding=(1, 0), groups=2, dilation=1)
    m = dknn.UnpoolConvTranspose2d(4, 6, (3, 2), **kw, pool_kernel_size=3, pool_stride=2,
                                   pool_padding=1)
    ct = nn.ConvTranspose2d(4, 6, (3, 2), **kw)
    return m, ct


def test_module_state_dict_round_trip():
    m, ct = _module_pair()
    assert isinstance(m, nn.ConvTranspose2d)
    assert m.state_dict().keys() == ct.state_dict().keys()
    ct.load_state_dict(m.state_dict())
    assert torch.equal(ct.weight, m.weight) and torch.equal(ct.bias, m.bias)
    m2, _ = _module_pair()
    m2.load_state_dict(ct.state_dict())
    assert torch.equal(m2.weight, m.weight) and torch.equal(m2.bias, m.bias)
    nb = dknn.UnpoolConvTranspose2d(4, 6, 3, bias=False)
    nb.load_state_dict(nn.ConvTranspose2d(4, 6, 3, bias=False).state_dict())
    assert nb.bias is None


def test_module_forward(public_target):
    t = public_target
    m, ct = _module_pair()
    m.fused = True  # the default is fused except on CUDA; fused_on has its own test
    m, ct = m.to(t.device), ct.to(t.device)
    ct.load_state_dict(m.state_dict())
    x = torch.randn(2, 4, 7, 5, device=t.device)  # 7x5 is the default size of its 4x3 pool
    y, sw = dk.max_pool2d_with_switches(x, 3, 2, 1)
    functional = dk.unpool_deconv2d(
        y, sw, m.weight, m.bias, output_size=x.shape[-2:], pool_kernel_size=3, pool_stride=2,
        pool_padding=1, stride=(2, 1), padding=1, output_padding=(1, 0), groups=2,
    )
    # output_size as (H, W), as the pool input's whole shape, or the default
    for out in (m(y, sw, output_size=x.shape[-2:]), m(y, sw, x.shape), m(y, sw)):
        assert_identical(out, functional, "module vs functional")
    unpooled = dk.max_unpool2d_with_switches(y, sw, 3, 2, 1, output_size=x.shape[-2:])
    torch.testing.assert_close(functional, ct(unpooled), rtol=1e-4, atol=1e-4)
    # autograd reaches the module's parameters
    m(y, sw).sum().backward()
    assert m.weight.grad is not None and m.bias.grad is not None


@pytest.mark.parametrize("cls", ["UnpoolConvTranspose2d", "UnpoolConv2d"])
def test_module_fused_choice(public_target, cls):
    """fused=None fuses except on CUDA; True / False force either; both give the same
    values and gradients, and set_fused reaches every such layer of a model."""
    layer = getattr(dknn, cls)
    m = layer(4, 6, 3, padding=1).double().to(public_target.device)
    assert m.fused is None
    assert m.fused_on(torch.device("cpu")) and not m.fused_on(torch.device("cuda"))
    x = torch.randn(2, 4, 8, 6, dtype=torch.float64, device=public_target.device)
    y, sw = dk.max_pool2d_with_switches(x, 2)
    outs, grads = [], []
    for fused in (True, False):
        m.fused = fused
        assert m.fused_on(torch.device("cuda")) is fused and m.fused_on(x.device) is fused
        assert f"fused={fused}" in repr(m)
        yy = y.detach().requires_grad_(True)
        out = m(yy, sw, output_size=x.shape[-2:])
        out.backward(torch.ones_like(out))
        outs.append(out.detach())
        grads.append((yy.grad, m.weight.grad.clone(), m.bias.grad.clone()))
        m.zero_grad()
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b)
    from deconvkernels.models import DeconvNet

    model = DeconvNet(num_classes=3, width=0.125)
    assert dknn.set_fused(model, True) == 5
    assert all(m.fused for m in model.modules() if isinstance(m, dknn.UnpoolConvTranspose2d))
    assert dknn.set_fused(model, None) == 5


def test_module_repr():
    m, _ = _module_pair()
    r = repr(m)
    assert "pool_kernel_size=(3, 3)" in r and "pool_stride=(2, 2)" in r, r
    assert "pool_padding=(1, 1)" in r and "groups=2" in r, r


def test_module_validates_pool_geometry():
    with pytest.raises(ValueError, match="kernel_size"):
        dknn.UnpoolConvTranspose2d(2, 2, 3, pool_kernel_size=0)
    with pytest.raises(ValueError, match="padding"):
        dknn.UnpoolConvTranspose2d(2, 2, 3, pool_kernel_size=2, pool_padding=2)


# ----------------------------------------------------------------------------- bad input

SWITCH = r"(?i)switch"
RAW_ERRORS = (RuntimeError, ValueError)
BAD = Case(pool="2x2", hw=(6, 7), batch=2, cin=4, cout=6, groups=2)


def _bad_switches(kind: str):
    """(case, switches) with one switch outside its window."""
    if kind == "ge_window":  # value >= kh * kw (the fast path's geometry)
        c = BAD
        sw = make_inputs(c)[1].clone()
        sw[1, 2, 1, 1] = 4
    elif kind == "255":
        c = replace(BAD, groups=1, cout=3)
        sw = make_inputs(c)[1].clone()
        sw[0, 0, 0, 0] = 255
    elif kind == "padding":  # window (0, 0) starts at (-1, -1); offset 0 is in the padding
        c = replace(BAD, pool="3x3s2p1", hw=(6, 6))
        sw = make_inputs(c)[1].clone()
        sw[1, 1, 0, 0] = 0
    elif kind == "past_edge":  # ceil mode: the last row of windows starts at row 6 of 7
        c = replace(BAD, pool="2x2-ceil", hw=(7, 7))
        sw = make_inputs(c)[1].clone()
        sw[0, 1, 3, 0] = 2  # ky = 1 -> row 7
    else:
        raise AssertionError(kind)
    return c, sw


BAD_SWITCH_KINDS = ("ge_window", "255", "padding", "past_edge")


def _public_bad_cases():
    """(id, builder of (y, switches, weight, bias, kwargs), error types, pattern)."""
    cases = []

    def add(cid, change, match, errors=ValueError):
        cases.append(pytest.param(change, errors, match, id=cid))

    add("switches_shape", lambda a: a.update(sw=a["sw"][:, :, :2]), "switches")
    add("switches_batch", lambda a: a.update(sw=a["sw"][:1]), "switches")
    add("switches_int64", lambda a: a.update(sw=a["sw"].long()), "switches")
    add("switches_list", lambda a: a.update(sw=a["sw"].tolist()), "switches")
    add("weight_cin", lambda a: a.update(w=torch.randn(3, 3, 3, 3)), "weight")
    add("weight_3d", lambda a: a.update(w=a["w"][0]), "weight")
    add("weight_float64", lambda a: a.update(w=a["w"].double()), "weight")
    add("weight_float16", lambda a: a.update(w=a["w"].half()), "weight")
    add("groups_divide", lambda a: a["kw"].update(groups=3), "groups")
    add("groups_zero", lambda a: a["kw"].update(groups=0), "groups")
    add("groups_float", lambda a: a["kw"].update(groups=2.0), "groups")
    add("bias_shape", lambda a: a.update(b=torch.randn(4)), "bias")
    add("bias_2d", lambda a: a.update(b=a["b"][None]), "bias")
    add("bias_float64", lambda a: a.update(b=a["b"].double()), "bias")
    add("y_int", lambda a: a.update(y=a["y"].int(), w=a["w"].int(), b=None), r"\by\b")
    add("y_int_float_weight", lambda a: a.update(y=a["y"].int()), r"\by\b")
    add("y_2d", lambda a: a.update(y=a["y"][0, 0], sw=a["sw"][0, 0]), r"\by\b")
    add("y_5d", lambda a: a.update(y=a["y"][None], sw=a["sw"][None]), r"\by\b")
    for size in [(9, 7), (4, 7), (6, 10), (0, 7), (6,), (6.0, 7), 7]:
        add(f"output_size_{size!r}", lambda a, size=size: a["kw"].update(output_size=size),
            "output_size")
    add("output_padding_ge_stride", lambda a: a["kw"].update(output_padding=(1, 0)),
        "output_padding")
    add("output_padding_ge_stride_and_dilation",
        lambda a: a["kw"].update(output_padding=2, stride=2, dilation=2), "output_padding")
    add("output_padding_negative", lambda a: a["kw"].update(output_padding=-1), "output_padding")
    add("padding_too_large", lambda a: a["kw"].update(padding=5), "padding")
    add("padding_negative", lambda a: a["kw"].update(padding=-1), "padding")
    add("stride_zero", lambda a: a["kw"].update(stride=(1, 0)), "stride")
    add("stride_float", lambda a: a["kw"].update(stride=1.5), "stride")
    add("dilation_zero", lambda a: a["kw"].update(dilation=0), "dilation")
    add("pool_kernel_zero", lambda a: a["kw"].update(pool_kernel_size=0), "kernel_size")
    add("pool_kernel_256", lambda a: a["kw"].update(pool_kernel_size=16), "kernel_size")
    add("pool_padding_too_large", lambda a: a["kw"].update(pool_padding=2), "padding")
    add("pool_stride_zero", lambda a: a["kw"].update(pool_stride=0), "stride")
    add("pool_other_geometry", lambda a: a["kw"].update(pool_kernel_size=3, pool_stride=3),
        "output_size")
    return cases


def _valid_public_args():
    y, sw, w, b, _ = make_inputs(BAD)
    return dict(y=y, sw=sw, w=w, b=b, kw=BAD.kwargs())


@pytest.mark.parametrize("change, errors, match", _public_bad_cases())
def test_public_bad_input(public_target, change, errors, match):
    t = public_target
    a = _valid_public_args()
    change(a)
    args = [t.put(a[k]) for k in ("y", "sw", "w", "b")]
    with pytest.raises(errors, match=match):
        dk.unpool_deconv2d(*args, **a["kw"])


def test_public_valid_twin_runs(public_target):
    """The inputs the bad cases are made from are accepted, as is output_padding below the
    dilation though not below the stride."""
    t = public_target
    a = _valid_public_args()
    args = [t.put(a[k]) for k in ("y", "sw", "w", "b")]
    assert dk.unpool_deconv2d(*args, **a["kw"]).shape == (2, 6, 6, 7)
    kw = dict(a["kw"], output_padding=(1, 0), dilation=(2, 1))
    assert dk.unpool_deconv2d(*args, **kw).shape == (2, 6, 9, 7)


@pytest.mark.parametrize("kind", BAD_SWITCH_KINDS)
def test_public_bad_switch(public_target, kind):
    t = public_target
    c, sw = _bad_switches(kind)
    y, _, w, b, _ = make_inputs(c)
    yr = t.put(y).requires_grad_(True)
    with pytest.raises((ValueError, RuntimeError), match=SWITCH):
        dk.unpool_deconv2d(yr, t.put(sw), t.put(w), t.put(b), **c.kwargs())


@pytest.mark.parametrize("batch", [2, 0])
def test_public_empty_kernel(public_target, batch):
    """A weight with an empty kernel is refused with a clear error naming it."""
    t = public_target
    c = replace(BAD, batch=batch)
    y, sw, _, b, _ = make_inputs(c)
    w = t.put(torch.randn(4, 3, 0, 3))
    with pytest.raises(ValueError, match="weight|kernel"):
        dk.unpool_deconv2d(t.put(y), t.put(sw), w, t.put(b), **c.kwargs())


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_public_device_mismatch():
    a = _valid_public_args()
    y, sw, w, b = (a[k] for k in ("y", "sw", "w", "b"))
    for args, name in [((y.cuda(), sw, w, b), "switches"), ((y, sw, w.cuda(), b), "weight"),
                       ((y, sw, w, b.cuda()), "bias")]:
        with pytest.raises((ValueError, RuntimeError), match=name):
            dk.unpool_deconv2d(*args, **a["kw"])


FWD, BWD_Y, BWD_W, BWD_B = (
    "unpool_deconv2d", "unpool_deconv2d_backward_y", "unpool_deconv2d_backward_weight",
    "unpool_deconv2d_backward_bias",
)
RAW_TAIL = ("output_size", "pool_kernel_size", "pool_stride", "pool_padding", "pool_dilation",
            "stride", "padding", "output_padding", "groups", "dilation")
RAW_LEAD = {
    FWD: ("y", "switches", "weight", "bias"),
    BWD_Y: ("grad_output", "switches", "weight"),
    BWD_W: ("grad_output", "y", "switches", "kernel_size"),
    BWD_B: ("grad_output",),
}


def raw_args(op: str, c: Case = BAD, **changes) -> list:
    """Valid CPU arguments of raw ``op`` for case ``c``, then ``changes``: argument name -> new
    value, or a function of the valid value."""
    y, sw, w, b, _ = make_inputs(c)
    named = dict(y=y, switches=sw, weight=w, bias=b, kernel_size=list(c.kernel),
                 grad_output=torch.randn(*y.shape[:-3], c.cout, *c.out_hw),
                 **dict(zip(RAW_TAIL, c.tail(), strict=True)))
    for name, change in changes.items():
        named[name] = change(named[name]) if callable(change) else change
    return [named[k] for k in RAW_LEAD[op] + (() if op == BWD_B else RAW_TAIL)]


def _raw_bad_cases():
    """(op, builder of the raw arguments, message pattern)."""
    cases = []

    def add(op, cid, match, c=BAD, **changes):
        short = op.removeprefix("unpool_deconv2d").lstrip("_") or "forward"
        cases.append(pytest.param(op, lambda: raw_args(op, c, **changes), match,
                                  id=f"{short}-{cid}"))

    cut_h = lambda v: v[..., :2, :]  # noqa: E731
    for op in (FWD, BWD_Y, BWD_W):
        # backward_y has no y: the switches give the pooled size, which output_size contradicts
        add(op, "switches_shape", "switches|output_size" if op == BWD_Y else "switches",
            switches=cut_h)
        add(op, "switches_int64", "switches", switches=lambda v: v.long())
        add(op, "output_size_impossible", "output_size", output_size=[9, 7])
        add(op, "output_size_zero", "output_size", output_size=[0, 7])
        add(op, "output_padding_ge_stride", "output_padding", output_padding=[1, 0])
        add(op, "output_padding_ge_stride_and_dilation", "output_padding",
            output_padding=[2, 2], stride=[2, 2], dilation=[2, 2])
        add(op, "padding_too_large", "padding", padding=[5, 5])
        add(op, "stride_zero", "stride", stride=[1, 0])
        add(op, "dilation_zero", "dilation", dilation=[0, 1])
        add(op, "groups_zero", "groups", groups=0)
        add(op, "pool_kernel_256", "kernel_size", pool_kernel_size=[16, 16], pool_stride=[2, 2])
        add(op, "pool_padding_too_large", "padding", pool_padding=[2, 0])
        for kind in BAD_SWITCH_KINDS:
            c, sw = _bad_switches(kind)
            add(op, f"switch_{kind}", SWITCH, c=c, switches=sw)
    for op in (FWD, BWD_Y):
        add(op, "weight_cin", "weight", weight=lambda v: v[:3])
        add(op, "weight_3d", "weight", weight=lambda v: v[0])
        add(op, "weight_dtype", "weight", weight=lambda v: v.double())
        add(op, "groups_divide", "groups", groups=3)
    add(FWD, "bias_shape", "bias", bias=lambda v: v[:4])
    add(FWD, "bias_dtype", "bias", bias=lambda v: v.double())
    add(FWD, "y_int", r"\by\b", y=lambda v: v.int(), weight=lambda v: v.int(), bias=None)
    add(FWD, "y_switches_2d", r"\by\b|switches", y=lambda v: v[0, 0], switches=lambda v: v[0, 0])
    add(FWD, "output_size_len1", "output_size", output_size=[6])
    # (backward_weight takes C_out from grad_output: any multiple of groups is consistent)
    add(BWD_Y, "grad_output_channels", "grad_output", grad_output=lambda v: v[:, :4])
    add(BWD_W, "grad_output_channels_groups", "groups|grad_output",
        grad_output=lambda v: v[:, :5])
    for op in (BWD_Y, BWD_W):
        add(op, "grad_output_size", "grad_output", grad_output=lambda v: v[..., :5])
        add(op, "grad_output_batch", "grad_output", grad_output=lambda v: v[:1])
    add(BWD_W, "grad_output_int", "grad_output", grad_output=lambda v: v.int())
    add(BWD_W, "y_dtype", r"\by\b", y=lambda v: v.double())
    add(BWD_W, "y_int", r"\by\b", y=lambda v: v.int())
    add(BWD_W, "y_shape", r"\by\b|switches", y=cut_h)
    add(BWD_W, "kernel_size_len1", "kernel_size", kernel_size=[3])
    add(BWD_W, "kernel_size_zero", "kernel_size", kernel_size=[0, 3])
    add(BWD_W, "kernel_size_mismatch", "grad_output|kernel_size", kernel_size=[5, 5])
    add(BWD_W, "groups_divide", "groups", groups=4)
    add(BWD_B, "grad_output_2d", "grad_output", grad_output=lambda v: v[0, 0])
    add(BWD_B, "grad_output_5d", "grad_output", grad_output=lambda v: v[None])
    return cases


@pytest.mark.parametrize("op, build, match", _raw_bad_cases())
def test_raw_bad_input(raw_target, op, build, match):
    args = build()
    with pytest.raises(RAW_ERRORS, match=match):
        raw_target.raw(op, *args)


def test_raw_valid_twins_run(raw_target):
    """The inputs the raw bad cases are made from are accepted."""
    t = raw_target
    y, sw, w, _, _ = make_inputs(BAD)
    assert t.raw(FWD, *raw_args(FWD)).shape == (2, 6, 6, 7)
    assert t.raw(BWD_Y, *raw_args(BWD_Y)).shape == y.shape
    assert t.raw(BWD_W, *raw_args(BWD_W)).shape == w.shape
    assert t.raw(BWD_B, *raw_args(BWD_B)).shape == (6,)
    for kind in BAD_SWITCH_KINDS:
        c = _bad_switches(kind)[0]
        for op in (FWD, BWD_Y, BWD_W):
            t.raw(op, *raw_args(op, c))


def _fixed_bug(op, cid, reason, match, **changes):
    """A bad argument that once escaped with an unclear error (``reason``)."""
    return pytest.param(op, lambda: raw_args(op, **changes), match, id=cid)


@pytest.mark.parametrize("op, build, match", [
    _fixed_bug(BWD_W, "backward_weight-y_1d", "IndexError (dimension out of range): the "
               "channel count is read before the rank is checked", r"\by\b|switches",
               y=torch.randn(9), switches=torch.zeros(9, dtype=torch.uint8)),
    _fixed_bug(BWD_W, "backward_weight-grad_output_1d", "IndexError (dimension out of range): "
               "the channel count is read before the rank is checked", "grad_output",
               grad_output=torch.randn(9)),
    _fixed_bug(BWD_B, "backward_bias-grad_output_int", "NotImplementedError from the dtype "
               "dispatch, naming no argument", "grad_output",
               grad_output=lambda v: v.int()),
    _fixed_bug(BWD_Y, "backward_y-grad_output_int", "the message blames the weight ('weight "
               "must have the dtype Int')", "grad_output", grad_output=lambda v: v.int()),
])
def test_raw_backward_argument_checks(raw_target, op, build, match):
    """Bad arguments of the raw backward ops are refused with a clear ValueError naming them
    (each case once escaped as an IndexError, NotImplementedError or a wrong name)."""
    args = build()
    with pytest.raises(ValueError, match=match):
        raw_target.raw(op, *args)


@pytest.mark.requires_extension
@pytest.mark.parametrize("kernel, padding", [(3, 1), (1, 0)])
def test_fast_weight_gradient_in_passes(kernel, padding):
    """The CPU weight gradient of DeconvNet's case goes through a zeroed buffer in passes over
    the pooled rows once the batch's gradient slice outgrows L2 (here 2 x 70 x 66); small maps
    store straight into the result. Both against autograd of the reference chain (float64)."""
    torch.manual_seed(0)
    for h, w in ((70, 66), (10, 12)):
        x = torch.randn(2, 8, h, w, dtype=torch.float64)
        y, sw = dk.max_pool2d_with_switches(x, 2)
        weight = torch.randn(8, 40, kernel, kernel, dtype=torch.float64, requires_grad=True)
        grad = torch.randn(2, 40, h - 2 * padding + kernel - 1, w - 2 * padding + kernel - 1,
                           dtype=torch.float64)
        geo = [[h, w], [2, 2], [2, 2], [0, 0], [1, 1], [1, 1], [padding] * 2, [0, 0], 1, [1, 1]]
        got = torch.ops.deconvkernels.unpool_deconv2d_backward_weight(
            grad, y, sw, [kernel, kernel], *geo
        )
        with dk.use_backend("reference"):
            out = dk.unpool_deconv2d(y, sw, weight, None, output_size=(h, w), padding=padding)
        (expected,) = torch.autograd.grad(out, weight, grad)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def assert_matches_specials(got, expected, rel: float, abs_: float, what: str):
    """``got`` (any dtype) against float64 ``expected``: NaN exactly where it has NaN, the same
    infs, and finite values within ``rel * |expected| + abs_``."""
    got = got.double()
    assert torch.equal(got.isnan(), expected.isnan()), f"{what}: NaN positions differ"
    inf = expected.isinf()
    assert torch.equal(got[inf], expected[inf]), f"{what}: inf differs"
    finite = expected.isfinite()
    err = (got[finite] - expected[finite]).abs()
    assert bool((err <= rel * expected[finite].abs() + abs_).all()), (
        f"{what}: max error {err.max():.3g}"
    )


BF16_DOT_SHAPES = [
    # (batch, C_in, C_out, unpooled h, w, kernel, padding): tiles of 64 and 32 channels with
    # and without tails, odd pooled widths (a term without a partner), several chunks of 64
    # input channels, kernels 1 / 3 / 5 (5: the unblocked forward on bfloat16 weights), and a
    # map large enough for the weight gradient's passes through the float buffer
    (2, 3, 64, 10, 14, 3, 1),
    (1, 70, 96, 13, 11, 3, 1),
    (2, 130, 130, 6, 10, 3, 0),
    (1, 16, 512, 8, 6, 1, 0),
    (2, 5, 33, 9, 7, 3, 2),
    (1, 6, 20, 8, 10, 5, 2),
    (2, 8, 40, 48, 50, 3, 1),
]


@pytest.mark.requires_extension
@pytest.mark.skipif("AVX512_BF16" not in dk.available_cpu_isas(),
                    reason="no AVX512_BF16 kernels here (CPU or build)")
@pytest.mark.parametrize("shape", BF16_DOT_SHAPES, ids=str)
@pytest.mark.parametrize("special", [False, True], ids=["randn", "nan-inf"])
def test_bf16_dot_kernels(shape, special):
    """The AVX512_BF16 kernels (bfloat16 pairs on vdpbf16ps) against the reference chain in
    float64 on the same bfloat16 values, for the forward, grad-y and grad-weight. With NaN and
    +-inf among the pooled values: NaN and inf exactly where the reference has them, except in
    the weight gradient, whose non-finite pattern is the AVX512 float kernels' (the dense
    reference multiplies an inf by the zero padding of grad_output where a tap leaves the
    output, a term the sparse kernels rightly do not have)."""
    n, cin, cout, h, w, k, p = shape
    x = torch.randn(n, cin, h, w)
    y, sw = dk.max_pool2d_with_switches(x, 2)
    if special:
        plant_specials(y, 0.05)
    y = y.bfloat16()
    weight = (torch.randn(cin, cout, k, k) * 0.1).bfloat16()
    bias = torch.randn(cout).bfloat16()
    ho, wo = h - 2 * p + k - 1, w - 2 * p + k - 1
    grad = torch.randn(n, cout, ho, wo).bfloat16()
    geo = [[h, w], [2, 2], [2, 2], [0, 0], [1, 1], [1, 1], [p, p], [0, 0], 1, [1, 1]]
    y64, w64, b64 = (t.double().requires_grad_() for t in (y, weight, bias))
    with dk.use_backend("reference"):
        ref = dk.unpool_deconv2d(y64, sw, w64, b64, output_size=(h, w), padding=p)
    ref_gy, ref_gw = torch.autograd.grad(ref, (y64, w64), grad.double())
    ops = torch.ops.deconvkernels
    try:
        assert dk.set_cpu_isa("AVX512") == "AVX512"
        float_gw = ops.unpool_deconv2d_backward_weight(grad, y, sw, [k, k], *geo).double()
        assert dk.set_cpu_isa("AVX512_BF16") == "AVX512_BF16"
        got = ops.unpool_deconv2d(y, sw, weight, bias, *geo)
        got_gy = ops.unpool_deconv2d_backward_y(grad, sw, weight, *geo)
        got_gw = ops.unpool_deconv2d_backward_weight(grad, y, sw, [k, k], *geo)
    finally:
        dk.set_cpu_isa(None)
    if special:
        ref_gw = torch.where(float_gw.isfinite() & ref_gw.isfinite(), ref_gw, float_gw)
    for name, out, expected, terms in (
        ("forward", got, ref, cin * k * k),
        ("grad_y", got_gy, ref_gy, cout * k * k),
        ("grad_weight", got_gw, ref_gw, n * (h // 2) * (w // 2)),
    ):
        assert out.dtype == torch.bfloat16, name
        # bfloat16 rounding of the result plus float sums of `terms` products
        assert_matches_specials(out, expected, 2.0**-7, 1e-5 * terms, f"{shape} {name}")


TILED_SHAPES = [
    # (batch, C_in, C_out, unpooled h, w, kernel h, w, padding h, w): outputs over several
    # 8x16 tiles with partial ones at the edges, input channels over several chunks (8 float,
    # 4 double), output channels over a partial second tile of 32, kernels 1 to 5, and an
    # odd-sized map whose last unpooled row and column no window covers
    (2, 19, 40, 20, 34, 3, 3, 1, 1),
    (1, 5, 33, 17, 19, 5, 5, 2, 2),
    (1, 9, 7, 9, 16, 1, 3, 0, 1),
    (2, 3, 64, 12, 12, 3, 5, 0, 2),
    # grad-weight: 36 chunks of 4x8 windows over 6 splits of the reduction
    (3, 4, 8, 26, 40, 3, 3, 1, 1),
]


@pytest.mark.requires_extension
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
@pytest.mark.parametrize("special", [False, True], ids=["randn", "nan-inf"])
def test_tiled_cuda_forward_emulated(shape, dtype, special):
    """The GPU's tiled forward for DeconvNet's case (shared-memory tiles, phases at barriers)
    through the CPU emulator, against the reference chain in float64 on the same values: tile,
    chunk and channel-tile edges, NaN and inf among the pooled values."""
    n, cin, cout, h, w, kh, kw, ph, pw = shape
    x = torch.randn(n, cin, h, w, dtype=F64)
    y, sw = dk.max_pool2d_with_switches(x, 2)
    if special:
        plant_specials(y, 0.05)
    y = y.to(dtype)
    weight, bias = torch.randn(cin, cout, kh, kw).to(dtype), torch.randn(cout).to(dtype)
    geo = [[h, w], [2, 2], [2, 2], [0, 0], [1, 1], [1, 1], [ph, pw], [0, 0], 1, [1, 1]]
    got = torch.ops.deconvkernels._emulated_unpool_deconv2d(y, sw, weight, bias, *geo)
    with dk.use_backend("reference"):
        expected = dk.unpool_deconv2d(y.double(), sw, weight.double(), bias.double(),
                                      output_size=(h, w), padding=(ph, pw))
    assert got.dtype == dtype and got.shape == expected.shape
    scale = 2.0**-7 if dtype == BF16 else 1e-5
    assert_matches_specials(got, expected, scale, scale * cin * kh * kw, str(shape))


@pytest.mark.requires_extension
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
def test_tiled_cuda_grad_y_emulated(shape, dtype):
    """The GPU's tiled grad-y for DeconvNet's case through the CPU emulator, against autograd
    of the reference chain in float64 on the same values: window-tile, channel-tile and
    output-chunk edges; NaN and inf in grad_output."""
    n, cin, cout, h, w, kh, kw, ph, pw = shape
    x = torch.randn(n, cin, h, w, dtype=F64)
    y, sw = dk.max_pool2d_with_switches(x, 2)
    weight = torch.randn(cin, cout, kh, kw).to(dtype)
    ho, wo = h - 2 * ph + kh - 1, w - 2 * pw + kw - 1
    grad = torch.randn(n, cout, ho, wo).to(dtype)
    grad[0, 0, 0, 0] = float("nan")
    grad[-1, -1, -1, -1] = float("inf")
    geo = [[h, w], [2, 2], [2, 2], [0, 0], [1, 1], [1, 1], [ph, pw], [0, 0], 1, [1, 1]]
    got = torch.ops.deconvkernels._emulated_unpool_deconv2d_backward_y(grad, sw, weight, *geo)
    expected = torch.ops.deconvkernels.unpool_deconv2d_backward_y(
        grad.double(), sw, weight.double(), *geo)  # the CPU's float64 kernels: same taps
    with dk.use_backend("reference"):
        y64 = y.double().requires_grad_()
        out = dk.unpool_deconv2d(y64, sw, weight.double(), None, output_size=(h, w),
                                 padding=(ph, pw))
    (ref,) = torch.autograd.grad(out, y64, torch.nan_to_num(grad.double(), nan=0.0, posinf=0.0))
    assert got.dtype == dtype and got.shape == expected.shape
    scale = 2.0**-7 if dtype == BF16 else 1e-5
    assert_matches_specials(got, expected, scale, scale * cout * kh * kw, str(shape))
    finite = expected.isfinite()
    # where no NaN or inf is reached, the float64 CPU kernels agree with the reference
    torch.testing.assert_close(expected[finite], ref[finite], rtol=1e-9, atol=1e-9)


@pytest.mark.requires_extension
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
@pytest.mark.parametrize("special", [False, True], ids=["randn", "nan-inf"])
def test_tiled_cuda_grad_weight_emulated(shape, dtype, special):
    """The GPU's tiled grad-weight for DeconvNet's case through the CPU emulator: channel
    tiles of 8 x 32, chunks of 4x8 (float) or 4x4 (double) windows, the reduction split over
    blocks for few-channel shapes (the emulator asks for 6 blocks) and summed in order;
    against the CPU's float64 kernels (same taps, NaN and inf included) and, where those are
    finite, autograd of the reference chain."""
    n, cin, cout, h, w, kh, kw, ph, pw = shape
    x = torch.randn(n, cin, h, w, dtype=F64)
    y, sw = dk.max_pool2d_with_switches(x, 2)
    ho, wo = h - 2 * ph + kh - 1, w - 2 * pw + kw - 1
    grad = torch.randn(n, cout, ho, wo, dtype=F64)
    if special:
        # infinite pooled values at the map's corners meet taps that leave the output
        # (they must add nothing there, not inf * 0), NaN and inf in grad_output
        plant_specials(y, 0.03)
        y[0, :, 0, 0] = float("inf")
        y[-1, :, -1, -1] = float("-inf")
        grad[0, 0, 1, 1] = float("nan")
        grad[-1, -1, -1, 0] = float("inf")
    y, grad = y.to(dtype), grad.to(dtype)
    geo = [[h, w], [2, 2], [2, 2], [0, 0], [1, 1], [1, 1], [ph, pw], [0, 0], 1, [1, 1]]
    got = torch.ops.deconvkernels._emulated_unpool_deconv2d_backward_weight(
        grad, y, sw, [kh, kw], *geo)
    expected = torch.ops.deconvkernels.unpool_deconv2d_backward_weight(
        grad.double(), y.double(), sw, [kh, kw], *geo)  # the CPU's float64 kernels
    assert got.dtype == dtype and got.shape == expected.shape == (cin, cout, kh, kw)
    scale = 2.0**-7 if dtype == BF16 else 1e-5
    terms = n * (h // 2) * (w // 2)
    assert_matches_specials(got, expected, scale, scale * terms, str(shape))
    if special:
        assert not expected.isfinite().all(), "the specials reached no weight"
        return
    with dk.use_backend("reference"):
        y64 = y.double().requires_grad_()
        w64 = torch.randn(cin, cout, kh, kw, dtype=F64, requires_grad=True)
        out = dk.unpool_deconv2d(y64, sw, w64, None, output_size=(h, w), padding=(ph, pw))
    (ref,) = torch.autograd.grad(out, w64, grad.double())
    torch.testing.assert_close(expected, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.requires_extension
@pytest.mark.parametrize("channels_last", [False, True])
def test_no_input_channels_give_the_bias_on_both_backends(channels_last):
    """A weight of zero input channels sums over nothing: the output is the bias (and the
    gradients of y and weight are empty), on the extension and on the reference alike;
    F.conv_transpose2d refuses such a weight."""
    x = torch.randn(2, 0, 4, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y, s = dk.max_pool2d_with_switches(x, 2)
    w, b = torch.randn(0, 3, 3, 3), torch.randn(3)
    results = []
    for backend in ("extension", "reference"):
        with dk.use_backend(backend):
            yy, ww, bb = (t.clone().requires_grad_() for t in (y, w, b))
            z = dk.unpool_deconv2d(yy, s, ww, bb, output_size=None, pool_kernel_size=2,
                                   padding=1)
            z.backward(torch.ones_like(z))
            results.append((z, yy.grad, ww.grad, bb.grad))
    for a, r in zip(*results, strict=True):
        assert a.shape == r.shape
        torch.testing.assert_close(a, r)
    z = results[0][0]
    assert z.shape == (2, 3, 4, 4)
    torch.testing.assert_close(z, b.view(1, 3, 1, 1).expand(2, 3, 4, 4))


@pytest.mark.requires_extension
@pytest.mark.parametrize("path", ["public", "cpu-op", "emulated-general", "emulated-tiled"])
@pytest.mark.parametrize("bias_kind", ["strided", "expanded"])
def test_strided_and_expanded_bias(path, bias_kind):
    """A bias that is a strided view (every other element) or one element expanded: the
    kernels read bias[co] from a dense copy. Before, the general and tiled paths read the
    wrong elements, or past a one-element storage."""
    torch.manual_seed(0)
    cout = 4
    x = torch.randn(2, 3, 8, 8)
    y, sw = dk.max_pool2d_with_switches(x, 2)
    weight = torch.randn(3, cout, 3, 3)
    bias = torch.arange(2.0 * cout)[::2] if bias_kind == "strided" else \
        torch.tensor([5.0]).expand(cout)
    geo = [[8, 8], [2, 2], [2, 2], [0, 0], [1, 1], [1, 1], [1, 1], [0, 0], 1, [1, 1]]
    with dk.use_backend("reference"):
        expected = dk.unpool_deconv2d(y, sw, weight, bias.contiguous(), output_size=(8, 8),
                                      padding=1)
    if path == "public":
        got = dk.unpool_deconv2d(y, sw, weight, bias, output_size=(8, 8), padding=1)
    elif path == "cpu-op":
        got = torch.ops.deconvkernels.unpool_deconv2d(y, sw, weight, bias, *geo)
    else:
        if path == "emulated-general":  # a 3x3 pool: not the tiled kernels' case
            y, sw = dk.max_pool2d_with_switches(x, 3, stride=2, padding=1)
            geo[1:4] = [[3, 3], [2, 2], [1, 1]]
            with dk.use_backend("reference"):
                expected = dk.unpool_deconv2d(
                    y, sw, weight, bias.contiguous(), output_size=(8, 8), padding=1,
                    pool_kernel_size=3, pool_stride=2, pool_padding=1)
        got = torch.ops.deconvkernels._emulated_unpool_deconv2d(y, sw, weight, bias, *geo)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.requires_extension
def test_direct_calls_with_geometry_that_would_wrap_around():
    """Geometry values near 2^62-2^63 reach the C++ ops only through torch.ops (the public
    functions stop them too): a ValueError naming the argument, where their products used to
    wrap around int64, pass the checks and send the kernels past their buffers (heap
    corruption), or loop for 2^63 taps."""
    ops = torch.ops.deconvkernels
    g = torch.randn(1, 1, 4, 3)
    sw = torch.full((1, 1, 1, 3), 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="kernel_size"):
        ops.max_unpool2d_with_switches_backward(g, sw, [4, 2**62 + 1], [1, 1], [0, 0], [1, 4])
    with pytest.raises(ValueError, match="dilation must be at most"):
        ops.max_unpool2d_with_switches_backward(g, sw, [4, 2], [1, 1], [0, 0], [1, 4 << 30])
    with pytest.raises(ValueError, match="kernel_size"):
        ops.max_pool2d_with_switches(torch.randn(1, 1, 8, 2), [4, 2**63 - 1], [4, 1], [1, 0],
                                     [1, 2], False)
    with pytest.raises(ValueError, match="stride must be at most"):
        ops.max_pool2d_with_switches(torch.randn(1, 1, 8, 8), [2, 2], [2, 2**40], [0, 0],
                                     [1, 1], False)
    y, s = dk.max_pool2d_with_switches(torch.randn(1, 2, 4, 4), 2)
    w = torch.randn(2, 4, 3, 3)
    big = 2**63 - 1
    for name, args in [
        ("padding", [[4, 4], [2, 2], [2, 2], [0, 0], [1, 1], [1, 1], [big, big], [0, 0], 1,
                     [1, 1]]),
        ("stride", [[4, 4], [2, 2], [2, 2], [0, 0], [1, 1], [2**62, 1], [0, 0], [0, 0], 1,
                    [1, 1]]),
    ]:
        for op in (ops.unpool_deconv2d, ops._emulated_unpool_deconv2d):
            with pytest.raises(ValueError, match=f"{name} must be at most"):
                op(y, s, w, None, *args)
    with pytest.raises(ValueError, match="stride must be at most"):
        dk.unpool_deconv2d(y, s, w, output_size=None, pool_kernel_size=2, stride=2**62)


@pytest.mark.requires_extension
def test_a_meta_tensor_among_real_ones_is_refused():
    """A call mixing a meta tensor with CPU ones is routed to the fake kernels (the Meta
    key); they check devices as the C++ ops do, instead of returning an uninitialised CPU
    tensor."""
    y, s = dk.max_pool2d_with_switches(torch.randn(1, 2, 4, 4), 2)
    w, b = torch.randn(2, 4, 3, 3), torch.randn(4)
    ops = torch.ops.deconvkernels
    geo = [[4, 4], [2, 2], [2, 2], [0, 0], [1, 1], [1, 1], [0, 0], [0, 0], 1, [1, 1]]
    for call in (
        lambda: dk._C.max_unpool2d_eager(y, s.to("meta"), 4, 4, 2, 2, 2, 2, 0, 0, 1, 1),
        lambda: ops.max_unpool2d_with_switches(y, s.to("meta"), [4, 4], [2, 2], [2, 2],
                                               [0, 0], [1, 1]),
        lambda: ops.max_unpool2d_with_switches_backward(torch.randn(1, 2, 4, 4),
                                                        s.to("meta"), [2, 2], [2, 2], [0, 0],
                                                        [1, 1]),
        lambda: ops.unpool_deconv2d(y, s, w, b.to("meta"), *geo),
        lambda: ops.unpool_deconv2d(y, s, w.to("meta"), b, *geo),
    ):
        with pytest.raises(RuntimeError, match="is on meta but|but .* is on meta"):
            call()
    # all on meta: shapes only, as before
    u = ops.max_unpool2d_with_switches(y.to("meta"), s.to("meta"), [4, 4], [2, 2], [2, 2],
                                       [0, 0], [1, 1])
    assert u.device.type == "meta" and u.shape == (1, 2, 4, 4)
