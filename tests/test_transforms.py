"""torch.func transforms and forward-mode AD over the public ops (deconvkernels._transforms).

The oracle is the reference backend: pure PyTorch, so every transform runs through PyTorch's
own formulas there. Before _transforms, torch.func.grad / jacrev / vmap(grad) raised on the
compiled ops (torch.library's Function has no setup_context) and forward AD returned zero
tangents without a word; these tests pin both down, on every public target.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from dkutil import assert_identical

import deconvkernels as dk

# (kernel_size, stride, padding, ceil_mode, input H x W): no overlap, overlap at stride 2 and
# stride 1, a ceil-mode edge window.
GEOMETRIES = [
    (2, 2, 0, False, (6, 8)),
    (3, 2, 1, False, (7, 9)),
    (3, 1, 1, False, (5, 6)),
    (2, 2, 0, True, (5, 7)),
]
GEO_IDS = ["k2s2", "k3s2p1", "k3s1p1", "k2s2-ceil"]


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def _pool_unpool(x: torch.Tensor, geo) -> torch.Tensor:
    """A function of x through both ops: (unpool(pool(x)^2) * x), so the gradient depends on
    the values as well as on the switches."""
    k, s, p, ceil, _ = geo
    y, sw = dk.max_pool2d_with_switches(x, k, s, p, ceil_mode=ceil)
    out = dk.max_unpool2d_with_switches(y * y, sw, k, s, p, output_size=x.shape[-2:])
    return out * x


def _both_backends(fn):
    """fn() with the target's backend, and with the reference backend (the oracle)."""
    got = fn()
    with dk.use_backend("reference"):
        want = fn()
    return got, want


def _assert_close_tree(got, want, what: str) -> None:
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g is None or w is None:
            assert g is None and w is None, f"{what}[{i}]: {g} vs {w}"
            continue
        torch.testing.assert_close(g, w, msg=f"{what}[{i}]", rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=GEO_IDS)
def test_grad_and_jvp(public_target, geo, channels_last):
    dev = public_target.device
    x = _layout(torch.randn(2, 3, *geo[4], dtype=torch.float64, device=dev), channels_last)
    t = _layout(torch.randn_like(x), channels_last)
    w = torch.randn_like(x)

    def loss(x):
        return (_pool_unpool(x, geo) * w).sum()

    got, want = _both_backends(lambda: torch.func.grad(loss)(x))
    _assert_close_tree(got, want, "torch.func.grad")
    assert got.abs().sum() > 0

    got, want = _both_backends(lambda: torch.func.jvp(lambda x: _pool_unpool(x, geo), (x,), (t,)))
    _assert_close_tree(got, want, "torch.func.jvp")
    assert got[1].abs().sum() > 0

    # forward AD without functorch: dual tensors through the public functions
    def dual():
        with fwAD.dual_level():
            out = _pool_unpool(fwAD.make_dual(x, t), geo)
            primal, tangent = fwAD.unpack_dual(out)
            return primal, tangent

    got, want = _both_backends(dual)
    assert got[1] is not None, "forward AD lost the tangent"
    _assert_close_tree(got, want, "forward AD")


@pytest.mark.parametrize("geo", GEOMETRIES[:3], ids=GEO_IDS[:3])
def test_pool_tangent_is_stock_pytorch(public_target, geo):
    """The pool's tangent and gradient equal F.max_pool2d's (same windows, same maxima)."""
    k, s, p, ceil, hw = geo
    x = torch.randn(2, 3, *hw, dtype=torch.float64, device=public_target.device)
    t = torch.randn_like(x)
    ours = torch.func.jvp(lambda x: dk.max_pool2d_with_switches(x, k, s, p)[0], (x,), (t,))
    stock = torch.func.jvp(lambda x: F.max_pool2d(x, k, s, p), (x,), (t,))
    assert_identical(ours[0], stock[0], "primal")
    assert_identical(ours[1], stock[1], "tangent")
    g = torch.randn_like(stock[0])
    ours = torch.func.vjp(lambda x: dk.max_pool2d_with_switches(x, k, s, p)[0], x)[1](g)
    stock = torch.func.vjp(lambda x: F.max_pool2d(x, k, s, p), x)[1](g)
    torch.testing.assert_close(ours, stock, rtol=1e-12, atol=0)


@pytest.mark.parametrize("geo", GEOMETRIES, ids=GEO_IDS)
def test_jacobians_and_hessian(public_target, geo):
    x = torch.randn(1, 2, *geo[4], dtype=torch.float64, device=public_target.device)

    def f(x):
        return _pool_unpool(x, geo)

    for name, transform in (("jacrev", torch.func.jacrev), ("jacfwd", torch.func.jacfwd)):
        got, want = _both_backends(lambda: transform(f)(x))  # noqa: B023
        _assert_close_tree(got, want, name)

    def scalar(x):
        k, s, p, ceil, _ = geo
        y, _ = dk.max_pool2d_with_switches(x, k, s, p, ceil_mode=ceil)
        return (y**3).sum()

    got, want = _both_backends(lambda: torch.func.hessian(scalar)(x))
    _assert_close_tree(got, want, "hessian")
    assert got.abs().sum() > 0


@pytest.mark.parametrize("per_sample_rank", [3, 4])
@pytest.mark.parametrize("in_dim", [0, 1])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=GEO_IDS)
def test_vmap_equals_a_loop(public_target, geo, in_dim, per_sample_rank):
    """vmap folds the vmapped dim into N (or makes it N for (C, H, W) samples): same values
    as a loop over the samples, for the pool, the unpool with shared or per-sample switches,
    and both backward ops."""
    k, s, p, ceil, hw = geo
    lead = (2, 3) if per_sample_rank == 4 else (3,)
    xs = torch.randn(4, *lead, *hw, dtype=torch.float64, device=public_target.device)
    xs_moved = xs.movedim(0, in_dim)

    def pool(x):
        return dk.max_pool2d_with_switches(x, k, s, p, ceil_mode=ceil)

    ys, sws = torch.vmap(pool, in_dims=in_dim)(xs_moved)
    for i in range(xs.shape[0]):
        y, sw = pool(xs[i])
        assert_identical(ys[i], y, f"vmap pool y[{i}]")
        assert_identical(sws[i], sw, f"vmap pool switches[{i}]")

    def unpool(y, sw):
        return dk.max_unpool2d_with_switches(y, sw, k, s, p, output_size=hw)

    outs = torch.vmap(unpool)(ys, sws)
    shared = torch.vmap(unpool, in_dims=(0, None))(ys, sws[0])
    for i in range(xs.shape[0]):
        assert_identical(outs[i], unpool(ys[i], sws[i]), f"vmap unpool[{i}]")
        assert_identical(shared[i], unpool(ys[i], sws[0]), f"vmap unpool, shared switches[{i}]")

    # per-sample gradients of the pool, through the backward ops under vmap
    def loss(x):
        y, sw = pool(x)
        return (unpool(y * y, sw) * x).sum()

    grads = torch.vmap(torch.func.grad(loss))(xs)
    for i in range(xs.shape[0]):
        assert_identical(grads[i], torch.func.grad(loss)(xs[i]), f"vmap(grad)[{i}]")


def _deconv_case(device, groups: int = 1):
    y = torch.randn(2, 4, 3, 4, dtype=torch.float64, device=device)
    x = torch.randn(2, 4, 6, 8, dtype=torch.float64, device=device)
    _, sw = dk.max_pool2d_with_switches(x, 2)
    weight = torch.randn(4, 6 // groups, 3, 3, dtype=torch.float64, device=device)
    bias = torch.randn(6, dtype=torch.float64, device=device)
    return y, sw, weight, bias


def _ud(y, sw, weight, bias, groups=1):
    return dk.unpool_deconv2d(
        y, sw, weight, bias, output_size=(6, 8), stride=1, padding=1, groups=groups
    )


@pytest.mark.parametrize("groups", [1, 2])
def test_unpool_deconv2d_grad_jvp_hessian(public_target, groups):
    y, sw, weight, bias = _deconv_case(public_target.device, groups)
    g = torch.randn(2, 6, 6, 8, dtype=torch.float64, device=public_target.device)

    def loss(y, weight, bias):
        return (_ud(y, sw, weight, bias, groups) * g).sum()

    got, want = _both_backends(lambda: torch.func.grad(loss, argnums=(0, 1, 2))(y, weight, bias))
    _assert_close_tree(got, want, "grad (y, weight, bias)")

    tangents = tuple(torch.randn_like(t) for t in (y, weight, bias))

    def jvp():
        return torch.func.jvp(lambda *a: _ud(a[0], sw, a[1], a[2], groups), (y, weight, bias),
                              tangents)

    got, want = _both_backends(jvp)
    _assert_close_tree(got, want, "jvp (y, weight, bias)")

    def dual():  # one input dual at a time: the terms of the tangent one by one
        out = []
        for i in range(3):
            with fwAD.dual_level():
                args = [y, weight, bias]
                args[i] = fwAD.make_dual(args[i], tangents[i])
                out.append(fwAD.unpack_dual(_ud(args[0], sw, args[1], args[2], groups)).tangent)
        return tuple(out)

    got, want = _both_backends(dual)
    _assert_close_tree(got, want, "forward AD per input")

    # second order: the cross terms between y and weight (the double backward's ops)
    def sq(y, weight):
        return (_ud(y, sw, weight, None, groups) ** 2).sum()

    got, want = _both_backends(lambda: torch.func.hessian(sq, argnums=(0, 1))(y, weight))
    for i in range(2):
        _assert_close_tree(got[i], want[i], f"hessian row {i}")


def test_unpool_deconv2d_vmap(public_target):
    """A shared weight folds into the batch; a vmapped weight (and the weight gradient, which
    sums over N) loops over the samples."""
    y, sw, weight, bias = _deconv_case(public_target.device)
    ys = torch.stack([y, y.flip(0) * 2, -y])
    sws = torch.stack([sw, sw.flip(0), sw])
    weights = torch.stack([weight, weight * 0.5, weight.flip(-1)])

    out = torch.vmap(lambda y, s: _ud(y, s, weight, bias))(ys, sws)
    out_w = torch.vmap(lambda y, w: _ud(y, sw, w, bias), in_dims=(0, 0))(ys, weights)
    for i in range(3):
        torch.testing.assert_close(out[i], _ud(ys[i], sws[i], weight, bias), rtol=0, atol=0)
        torch.testing.assert_close(out_w[i], _ud(ys[i], sw, weights[i], bias), rtol=0, atol=0)

    def loss(weight, bias, y, s):
        return (_ud(y, s, weight, bias) ** 2).sum()

    per_sample = torch.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(
        weight, bias, ys, sws
    )
    for i in range(3):
        gw, gb = torch.func.grad(loss, argnums=(0, 1))(weight, bias, ys[i], sws[i])
        torch.testing.assert_close(per_sample[0][i], gw, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(per_sample[1][i], gb, rtol=1e-12, atol=1e-12)


class _EncoderDecoder(torch.nn.Module):
    """conv -> pool with switches -> ReLU -> fused unpool + deconvolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.pool = dk.nn.MaxPool2dWithSwitches(2)
        self.deconv = dk.nn.UnpoolConvTranspose2d(4, 3, 3, padding=1, fused=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, sw = self.pool(self.conv(x))
        return self.deconv(torch.relu(y), sw, output_size=x.shape[-2:])


def test_per_sample_gradients_of_a_module(public_target):
    """The use case: per-sample gradients of a small encoder-decoder built from the modules,
    with torch.func.functional_call + vmap(grad), against one autograd pass per sample."""
    dev = public_target.device
    net = _EncoderDecoder().double().to(dev)
    params = {k: v.detach() for k, v in net.named_parameters()}
    xs = torch.randn(5, 2, 6, 6, dtype=torch.float64, device=dev)

    def loss(params, x):
        return (torch.func.functional_call(net, params, (x.unsqueeze(0),)) ** 2).mean()

    per_sample = torch.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)
    for i in range(xs.shape[0]):
        net.zero_grad()
        (net(xs[i : i + 1]) ** 2).mean().backward()
        for k, v in net.named_parameters():
            torch.testing.assert_close(per_sample[k][i], v.grad, rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.requires_extension
def test_transform_functions_carry_the_registered_formulas():
    """Each differentiable op has a Function with setup_context, jvp and a generated vmap
    rule; outside transforms the public functions never build one (the eager entries and
    torch.library's kernels run, as before)."""
    from deconvkernels import _transforms, ops

    for name in (
        "max_pool2d_with_switches", "max_pool2d_with_switches_backward",
        "max_unpool2d_with_switches", "max_unpool2d_with_switches_backward", "unpool_deconv2d",
        "unpool_deconv2d_backward_y", "unpool_deconv2d_backward_weight",
        "unpool_deconv2d_backward_bias",
    ):
        fn = _transforms.function_for(getattr(torch.ops.deconvkernels, name))
        assert fn.generate_vmap_rule
        assert fn.setup_context is not torch.autograd.Function.setup_context
        assert fn.jvp is not torch.autograd.Function.jvp
    assert not _transforms.active()
    with fwAD.dual_level():
        assert _transforms.active()
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    with dk.use_backend("extension"):
        y, _ = dk.max_pool2d_with_switches(x, 2)
    assert "MaxPool2dWithSwitchesFunction" in y.grad_fn.name()  # the C++ node of the eager entry
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no per-sample loop fallback warning from vmap
        torch.vmap(lambda t: ops.max_pool2d_with_switches(t, 2)[0])(torch.randn(3, 1, 2, 4, 4))


@pytest.mark.requires_extension
def test_compiled_transform_falls_back_to_eager():
    """torch.compile over torch.func.grad of the ops: dynamo cannot trace torch.library's
    Function under a functorch transform (fullgraph=True raises there), so the transform's
    frame runs eagerly, through _transforms, with the same gradient."""
    x = torch.randn(2, 3, 8, 8)

    def f(x):
        y, s = dk.max_pool2d_with_switches(x, 2)
        return (dk.max_unpool2d_with_switches(y * y, s, 2) * x).sum()

    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.compile(torch.func.grad(f))(x)
    torch.testing.assert_close(got, torch.func.grad(f)(x), rtol=0, atol=0)
