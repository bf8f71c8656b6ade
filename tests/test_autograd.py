"""gradcheck / gradgradcheck of the public ops, torch.library.opcheck of every raw op, and
torch.compile(fullgraph=True) of pool + unpool."""

from __future__ import annotations

import pytest
import torch
from dkutil import (
    HAS_CUDA,
    arrange,
    assert_identical,
    geo_id,
    geometry,
    random_valid_switches,
)

import deconvkernels as dk

GRAD_GEOMETRIES = [
    (geometry(2), False),
    (geometry(3, 1, 1), False),  # overlapping windows
    (geometry(3, 2, 1, 2), True),  # dilation + ceil_mode
    (geometry((2, 3), (1, 2), 1), True),  # non-square, overlapping in W
]
GRAD_LAYOUTS = ("contiguous", "channels_last", "3d")


def _distinct(shape) -> torch.Tensor:
    """float64 values 0.25 apart: no ties, so finite differences never cross a switch."""
    n = 1
    for v in shape:
        n *= v
    return (torch.randperm(n, dtype=torch.float64) / 4 - n / 8).view(shape)


def _input(layout, device):
    if layout == "3d":
        return _distinct((2, 5, 6)).to(device)
    return arrange(_distinct((2, 2, 5, 6)), layout).to(device)


@pytest.mark.parametrize("layout", GRAD_LAYOUTS)
@pytest.mark.parametrize("case", GRAD_GEOMETRIES, ids=geo_id)
def test_gradcheck_pool(public_target, case, layout):
    geo, ceil = case
    x = _input(layout, public_target.device).requires_grad_(True)

    def f(inp):
        return dk.max_pool2d_with_switches(inp, *geo, ceil)[0]

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("layout", GRAD_LAYOUTS)
@pytest.mark.parametrize("case", GRAD_GEOMETRIES, ids=geo_id)
def test_gradcheck_unpool(public_target, case, layout):
    geo, ceil = case
    hw = (5, 6)
    lead = (2,) if layout == "3d" else (2, 2)
    sw, _ = random_valid_switches(lead, hw, geo, ceil)
    y = torch.randn(sw.shape, dtype=torch.float64)
    if layout == "channels_last":
        y, sw = arrange(y, layout), arrange(sw, layout)
    y = y.to(public_target.device).requires_grad_(True)
    sw = sw.to(public_target.device)

    def f(inp):
        return dk.max_unpool2d_with_switches(inp, sw, *geo, output_size=hw)

    assert torch.autograd.gradcheck(f, (y,))
    assert torch.autograd.gradgradcheck(f, (y,))


@pytest.mark.parametrize("case", GRAD_GEOMETRIES, ids=geo_id)
def test_gradcheck_pool_then_unpool(public_target, case):
    geo, ceil = case
    x = _input("channels_last", public_target.device).requires_grad_(True)

    def f(inp):
        y, sw = dk.max_pool2d_with_switches(inp, *geo, ceil)
        return dk.max_unpool2d_with_switches(y * 3, sw, *geo, output_size=inp.shape[-2:])

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def _pool_unpool_sum(x):
    y, sw = dk.max_pool2d_with_switches(x, 2)
    return dk.max_unpool2d_with_switches(y * y, sw, 2, output_size=x.shape[-2:])


def test_grad_need_decides_the_path(public_target):
    """A graph is built exactly when a gradient is needed (the ops skip their autograd layer
    otherwise), and both paths give the same numbers."""
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64, device=public_target.device)
    plain = _pool_unpool_sum(x)
    assert not plain.requires_grad and plain.grad_fn is None
    xr = x.clone().requires_grad_(True)
    with torch.no_grad():
        assert not _pool_unpool_sum(xr).requires_grad
    with torch.inference_mode():
        assert _pool_unpool_sum(xr).is_inference()
    tracked = _pool_unpool_sum(xr)
    assert tracked.requires_grad
    assert_identical(tracked.detach(), plain, "forward")
    (gx,) = torch.autograd.grad(tracked.sum(), xr)
    y, sw = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    expected = torch.nn.functional.max_unpool2d(2 * y, sw, 2, output_size=x.shape[-2:])
    assert_identical(gx, expected, "grad")


def _raw_pool(x, geo, ceil):
    params = dk._geometry.pool_params(*geo)
    return torch.ops.deconvkernels.max_pool2d_with_switches(x, *params.as_lists(), ceil)


def _raw_unpool(y, sw, geo, hw):
    params = dk._geometry.pool_params(*geo)
    return torch.ops.deconvkernels.max_unpool2d_with_switches(y, sw, list(hw), *params.as_lists())


@pytest.mark.parametrize("case", GRAD_GEOMETRIES, ids=geo_id)
def test_cpp_autograd_nodes_match_registered_formulas(public_target, case):
    """Eager calls with grad record the C++ nodes of csrc/pool_autograd.cpp; torch.ops calls
    record torch.library's Python ones. First and second derivatives agree bit for bit, for
    pool, unpool, and the two chained."""
    if dk.get_backend() != "extension":
        pytest.skip("the C++ nodes belong to the extension")
    geo, ceil = case
    x = _input("channels_last", public_target.device)
    hw = x.shape[-2:]

    def run(pool, unpool):
        xr = x.clone().requires_grad_(True)
        y, sw = pool(xr, geo, ceil)
        out = unpool(y * y, sw, geo, hw)
        g = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device)
        (gx,) = torch.autograd.grad(out, xr, g.view_as(out), create_graph=True)
        (ggx,) = torch.autograd.grad(gx, xr, torch.ones_like(gx))
        return y.grad_fn.name(), out.grad_fn.name(), out.detach(), gx.detach(), ggx

    def public_pool(xr, geo, ceil):
        return dk.max_pool2d_with_switches(xr, *geo, ceil)

    def public_unpool(y, sw, geo, hw):
        return dk.max_unpool2d_with_switches(y, sw, *geo, output_size=hw)

    eager = run(public_pool, public_unpool)
    raw = run(_raw_pool, _raw_unpool)
    assert "deconvkernels::autograd::MaxPool2dWithSwitchesFunction" in eager[0]
    assert "deconvkernels::autograd::MaxUnpool2dWithSwitchesFunction" in eager[1]
    assert raw[0].startswith("GeneratedBackwardFor_deconvkernels_max_pool2d")
    assert raw[1].startswith("GeneratedBackwardFor_deconvkernels_max_unpool2d")
    for name, a, b in zip(("out", "grad", "grad of grad"), eager[2:], raw[2:], strict=True):
        assert_identical(a, b, name)
    # the second derivative is not trivially zero here: out = unpool(y*y) is quadratic in x
    assert eager[4].abs().sum() > 0


def test_cpp_autograd_nodes_keep_the_saved_switches_honest(public_target):
    """The nodes save the switches as autograd saves tensors: modifying them in place before
    the backward is an error, not a wrong gradient; a retained graph runs twice."""
    if dk.get_backend() != "extension":
        pytest.skip("the reference ops differentiate PyTorch's pool, not the switches")
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64, device=public_target.device)
    xr = x.clone().requires_grad_(True)
    y, sw = dk.max_pool2d_with_switches(xr, 2)
    assert not sw.requires_grad
    sw.zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()

    y, sw = dk.max_pool2d_with_switches(x, 2)
    yr = y.clone().requires_grad_(True)
    sw_saved = sw.clone()
    out = dk.max_unpool2d_with_switches(yr, sw_saved, 2)
    sw_saved.fill_(3)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()

    out = dk.max_unpool2d_with_switches(yr, sw, 2)
    g = torch.randn_like(out)
    first = torch.autograd.grad(out, yr, g, retain_graph=True)[0]
    second = torch.autograd.grad(out, yr, g)[0]
    assert_identical(first, second, "retained graph")
    expected = g.flatten(-2).gather(
        -1, dk.switches_to_indices(sw, x.shape[-2:], 2).flatten(-2)
    ).view_as(y)
    assert_identical(first, expected, "unpool grad")


def test_saved_switches_go_through_saved_tensor_hooks(public_target):
    """Activation checkpointing, save_on_cpu and user saved-tensor hooks see (and may move or
    recompute) the switches the nodes save, and the gradients do not change."""
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=public_target.device)
    xr = x.clone().requires_grad_(True)

    def f(t):
        y, sw = dk.max_pool2d_with_switches(t, 2)
        return dk.max_unpool2d_with_switches(y * y, sw, 2).sum()

    (plain,) = torch.autograd.grad(f(xr), xr)
    (checkpointed,) = torch.autograd.grad(checkpoint(f, xr, use_reentrant=False), xr)
    assert_identical(checkpointed, plain, "checkpoint")
    with torch.autograd.graph.save_on_cpu():
        (on_cpu,) = torch.autograd.grad(f(xr), xr)
    assert_identical(on_cpu, plain, "save_on_cpu")
    packed: list[torch.dtype] = []

    def pack(t):
        packed.append(t.dtype)
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        (hooked,) = torch.autograd.grad(f(xr), xr)
    assert_identical(hooked, plain, "hooks")
    if dk.get_backend() == "extension":  # the reference saves PyTorch's indices instead
        assert packed.count(torch.uint8) == 2, packed


# ----------------------------------------------------------------------------- opcheck

# (op, sample id): built lazily (the ops exist only with the extension).
OPCHECK_SAMPLES = [
    ("max_pool2d_with_switches", "f32-2x2"),
    ("max_pool2d_with_switches", "f64-channels_last-overlap"),
    ("max_pool2d_with_switches", "f16-3d-dilated-ceil"),
    ("max_pool2d_with_switches", "bf16-empty-batch"),
    ("max_pool2d_with_switches_backward", "f32-2x2"),
    ("max_pool2d_with_switches_backward", "f64-channels_last-overlap"),
    ("max_pool2d_with_switches_backward", "bf16-3d-dilated-ceil"),
    ("max_unpool2d_with_switches", "f32-2x2"),
    ("max_unpool2d_with_switches", "f64-channels_last-overlap"),
    ("max_unpool2d_with_switches", "f16-3d-dilated-ceil"),
    ("max_unpool2d_with_switches_backward", "f32-2x2"),
    ("max_unpool2d_with_switches_backward", "f64-channels_last-overlap"),
    ("max_unpool2d_with_switches_backward", "bf16-3d-dilated-ceil"),
    ("switches_to_indices", "2x2"),
    ("switches_to_indices", "channels_last-overlap"),
    ("switches_to_indices", "3d-dilated-ceil"),
    ("indices_to_switches", "2x2"),
    ("indices_to_switches", "channels_last-overlap"),
    ("indices_to_switches", "3d-dilated-ceil"),
]

_SAMPLE_SETUP = {
    # sample id suffix -> (lead dims, input hw, geometry, ceil_mode, layout)
    "2x2": ((2, 3), (8, 9), geometry(2), False, "contiguous"),
    "channels_last-overlap": ((2, 4), (7, 6), geometry(3, 1, 1), False, "channels_last"),
    "3d-dilated-ceil": ((3,), (9, 8), geometry((2, 3), (2, 1), 1, (2, 1)), True, "contiguous"),
    "empty-batch": ((0, 3), (6, 6), geometry(2), False, "contiguous"),
}
_DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}


def _opcheck_args(op: str, sample: str, device: torch.device):
    prefix, _, rest = sample.partition("-")
    dtype = _DTYPES.get(prefix)
    setup = _SAMPLE_SETUP[rest if dtype is not None else sample]
    lead, hw, geo, ceil, layout = setup
    sw, idx = random_valid_switches(lead, hw, geo, ceil)
    pooled = sw.shape

    def t(v):
        v = arrange(v, layout) if len(v.shape) == 4 else v
        return v.to(device)

    def ft(shape):
        v = t(torch.randn(shape, dtype=torch.float64).to(dtype))
        return v.requires_grad_(True)

    if op == "max_pool2d_with_switches":
        return (ft((*lead, *hw)), *geo, ceil)
    if op == "max_pool2d_with_switches_backward":
        return (ft(pooled), t(sw), list(hw), *geo)
    if op == "max_unpool2d_with_switches":
        return (ft(pooled), t(sw), list(hw), *geo)
    if op == "max_unpool2d_with_switches_backward":
        return (ft((*lead, *hw)), t(sw), *geo)
    if op == "switches_to_indices":
        return (t(sw), list(hw), *geo)
    if op == "indices_to_switches":
        return (t(idx), list(hw), *geo)
    raise AssertionError(op)


OPCHECK_DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.mark.requires_extension
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
@pytest.mark.parametrize("op, sample", OPCHECK_SAMPLES, ids=lambda v: v)
def test_opcheck(op, sample, device):
    args = _opcheck_args(op, sample, torch.device(device))
    torch.library.opcheck(getattr(torch.ops.deconvkernels, op).default, args)


# ----------------------------------------------------------------------------- torch.compile


def _pool_unpool(x, geo, ceil):
    y, sw = dk.max_pool2d_with_switches(x, *geo, ceil)
    z = dk.max_unpool2d_with_switches(torch.relu(y) * 2 + 1, sw, *geo, output_size=x.shape[-2:])
    return z * x.sum(dim=1, keepdim=True)


def _eager_and_compiled(backend, x, geo, ceil):
    torch._dynamo.reset()
    compiled = torch.compile(_pool_unpool, backend=backend, fullgraph=True, dynamic=False)
    results = []
    for fn in (_pool_unpool, compiled):
        xr = x.detach().clone().requires_grad_(True)
        out = fn(xr, geo, ceil)
        (gx,) = torch.autograd.grad(out, xr, torch.ones_like(out))
        results.append((out.detach(), gx))
    return results


@pytest.mark.requires_extension
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
def test_compile_fullgraph_aot_eager(device):
    """Fake kernels and autograd formulas trace without graph breaks; same numbers as eager."""
    x = arrange(torch.randn(2, 4, 9, 8), "channels_last").to(device)
    (eo, eg), (co, cg) = _eager_and_compiled("aot_eager", x, geometry(3, 1, 1), False)
    assert_identical(co, eo, "forward")
    assert_identical(cg, eg, "grad")


@pytest.mark.requires_extension
def test_compile_fullgraph_without_grad():
    """The no-grad call path traces too (the graph holds the plain ops)."""
    x = arrange(torch.randn(2, 4, 9, 8), "channels_last")
    torch._dynamo.reset()
    compiled = torch.compile(_pool_unpool, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        assert_identical(
            compiled(x, geometry(2), False), _pool_unpool(x, geometry(2), False), "forward"
        )


@pytest.mark.requires_extension
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
def test_compile_fullgraph_inductor(device):
    x = torch.randn(2, 3, 11, 10, device=device)
    (eo, eg), (co, cg) = _eager_and_compiled("inductor", x, geometry(2), True)
    torch.testing.assert_close(co, eo, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cg, eg, rtol=1e-6, atol=1e-6)
