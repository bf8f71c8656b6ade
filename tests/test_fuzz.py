"""Hypothesis fuzz: random (often invalid) argument combinations for every public op.

Each example runs the public op on the default backend (the extension once built, under a
random CPU ISA) and on the reference backend: either both results are equal, or both raise a
ValueError/RuntimeError (anything else, e.g. a TypeError, fails). When the extension is built,
the raw op of the emulated CUDA kernel (and of the GPU, when visible) must agree as well.

Known disagreements have their own tests and are kept out of the fuzz (``_known_elsewhere``),
so that it keeps finding new ones:

* C=0 inputs: test_pool_parity.test_empty_tensors (F.max_pool2d, so the reference, refuses them);
* padding over ``kernel_size // 2`` (F refuses it, the geometry check accepts it):
  test_pool_parity.test_pool_padding_past_torch_limit;
* windows without any in-bounds element: test_pool_parity.test_pool_windows_without_inbounds_tap;
* a float stride (a TypeError): test_bad_input.test_pool_bad_geometry.

``unpool_deconv2d`` is compared within tolerance (float64 truth from the reference, see
``dkutil.assert_close_bounded``), not bitwise: accumulation orders differ. Its fuzz keeps
non-empty weights: with C_out = 0 the extension returns an empty tensor (without checking the
switches) where oneDNN, so the reference, refuses (not decided yet); an empty kernel:
test_unpool_deconv.test_public_empty_kernel. PyTorch's CPU transposed convolution in bfloat16
(oneDNN) turns an inf in its input into NaN at other outputs (torch 2.14.1:
``F.conv_transpose2d(torch.tensor([[[[1., inf, 1., 1.]]]]).bfloat16(), torch.ones(1, 1, 1, 1)
.bfloat16(), stride=2, output_padding=1)`` starts with NaN, not 1), so where the reference gives
NaN in bfloat16 it is not held to the float64 truth.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from dkutil import (
    CPU_ISAS,
    FLOAT_DTYPES,
    HAS_CUDA,
    HAS_EXT,
    Target,
    arrange,
    assert_close_bounded,
    assert_equal_values,
    assert_identical,
    default_unpooled_hw,
    has_empty_window,
    make_values,
    oracle_pool,
    pooled_hw,
)
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

import deconvkernels as dk

CLEAR_ERRORS = (ValueError, RuntimeError)
RAW_TARGETS = [Target("cuda-emulated")] + ([Target("cuda")] if HAS_CUDA else [])
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

GARBAGE = [2.5, "2", (1, 2, 3), True, ()]


@st.composite
def int_or_pair(draw, lo, hi):
    if draw(st.booleans()):
        return draw(st.integers(lo, hi))
    return (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))


@st.composite
def geometry_args(draw):
    """kernel_size, stride, padding, dilation, ceil_mode in public-API form, often invalid."""
    roll = draw(st.integers(0, 99))
    kernel = draw(int_or_pair(1, 4))
    if roll < 6:
        kernel = draw(st.sampled_from([0, -1, 16, (2, 0), (8, 32), *GARBAGE]))
    stride = draw(st.one_of(st.none(), int_or_pair(1, 3)))
    if 6 <= roll < 10:
        stride = draw(st.sampled_from([0, -1, (1, 0), [], *GARBAGE]))
    padding = draw(int_or_pair(0, 1)) if draw(st.integers(0, 4)) else draw(int_or_pair(0, 2))
    if 10 <= roll < 13:
        padding = draw(st.sampled_from([-1, (0, -1), *GARBAGE]))
    dilation = draw(st.one_of(st.just(1), int_or_pair(1, 3)))
    if 13 <= roll < 16:
        dilation = draw(st.sampled_from([0, (1, -1), *GARBAGE]))
    return kernel, stride, padding, dilation, draw(st.booleans())


def _int_pair(v):
    """``[a, b]`` for an int or a pair of ints (bools excluded), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return [v, v]
    if isinstance(v, tuple) and len(v) == 2 and all(
        isinstance(e, int) and not isinstance(e, bool) for e in v
    ):
        return list(v)
    return None


def _normalised(kernel, stride, padding, dilation):
    """The raw ops' int lists, or None when the arguments are not ints/pairs of ints."""
    k = _int_pair(kernel)
    s = k if stride is None else _int_pair(stride)
    geo = [k, s, _int_pair(padding), _int_pair(dilation)]
    return None if any(g is None for g in geo) else geo


def _known_elsewhere(geo_args, hw) -> bool:
    kernel, stride, padding, dilation, ceil = geo_args
    if isinstance(stride, float):
        return True
    geo = _normalised(kernel, stride, padding, dilation)
    if geo is None:
        return False
    k, s, p, d = geo
    if min(min(k), min(s), min(d)) < 1 or min(p) < 0:
        return False
    if any(p[i] > k[i] // 2 for i in range(2)):
        return True
    return min(pooled_hw(hw, geo, ceil)) >= 1 and has_empty_window(hw, geo, ceil)


def _valid_geo(geo, hw, ceil):
    """Whether this geometry pools ``hw`` to a non-empty output without empty windows
    (a loose test, only used to pick meaningful switches/indices)."""
    if geo is None:
        return False
    k, s, p, d = geo
    if min(min(k), min(s), min(d)) < 1 or min(p) < 0 or k[0] * k[1] > 255:
        return False
    if any(p[i] > ((k[i] - 1) * d[i] + 1) // 2 for i in range(2)):
        return False
    if min(pooled_hw(hw, geo, ceil)) < 1:
        return False
    return not has_empty_window(hw, geo, ceil)


@st.composite
def tensor_spec(draw):
    batched = draw(st.integers(0, 4)) > 0
    lead = ((draw(st.integers(0, 2)),) if batched else ()) + (draw(st.integers(1, 3)),)
    hw = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    if draw(st.integers(0, 19)) == 0:
        dtype = draw(st.sampled_from([torch.int32, torch.bool, torch.uint8]))
    layouts = ["contiguous", "transposed", "sliced"] + (["channels_last"] if batched else [])
    layout = draw(st.sampled_from(layouts))
    kind = draw(st.sampled_from(["randn", "ties", "special"]))
    return lead, hw, dtype, layout, kind


def _values(shape, dtype, layout, kind):
    if dtype.is_floating_point:
        v = make_values(shape, dtype, kind)
    else:
        v = torch.randint(0, 3, shape).to(dtype)
    return arrange(v, layout)


def _run(fn):
    try:
        return ("ok", fn())
    except CLEAR_ERRORS as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return ("err", exc)


@contextmanager
def _isa(name):
    if name is not None:
        dk.set_cpu_isa(name)
    try:
        yield
    finally:
        if name is not None:
            dk.set_cpu_isa(None)


def _compare(actual, expected, exact: bool):
    note(f"default backend: {actual[0]} {actual[1] if actual[0] == 'err' else ''}")
    note(f"reference:       {expected[0]} {expected[1] if expected[0] == 'err' else ''}")
    assert actual[0] == expected[0], (
        f"default backend gives {actual[0]!r} but the reference gives {expected[0]!r}: "
        f"{actual[1] if actual[0] == 'err' else expected[1]!r}"
    )
    if actual[0] == "ok":
        a = actual[1] if isinstance(actual[1], tuple) else (actual[1],)
        e = expected[1] if isinstance(expected[1], tuple) else (expected[1],)
        assert len(a) == len(e)
        for i, (ai, ei) in enumerate(zip(a, e, strict=True)):
            (assert_identical if exact or not ai.is_floating_point() else assert_equal_values)(
                ai, ei, f"output {i}"
            )


def _both_backends(fn, exact: bool):
    with dk.use_backend("extension"):
        actual = _run(fn)
    with dk.use_backend("reference"):
        expected = _run(fn)
    _compare(actual, expected, exact)
    return actual


def _raw_agrees(public, raw_call, exact: bool):
    """The emulated CUDA kernel (and the GPU's) agree with the public op: same result, or an
    error as well."""
    if not HAS_EXT or raw_call is None:
        return
    for target in RAW_TARGETS:
        got = _run(lambda target=target: raw_call(target))
        note(f"{target.id}: {got[0]} {got[1] if got[0] == 'err' else ''}")
        assert got[0] == public[0], f"{target.id} gives {got[0]!r}, the public op {public[0]!r}"
        if got[0] == "ok":
            _compare(got, public, exact)


SEEDS = st.integers(0, 2**31 - 1)  # torch's RNG, seeded per example so that replays reproduce


@FUZZ
@given(spec=tensor_spec(), geo_args=geometry_args(), isa=st.sampled_from(CPU_ISAS), seed=SEEDS)
def test_fuzz_max_pool2d_with_switches(spec, geo_args, isa, seed):
    torch.manual_seed(seed)
    lead, hw, dtype, layout, kind = spec
    assume(not _known_elsewhere(geo_args, hw))
    kernel, stride, padding, dilation, ceil = geo_args
    x = _values((*lead, *hw), dtype, layout, kind)
    note(f"x: {tuple(x.shape)} {dtype} {layout} strides={x.stride()}")
    with _isa(isa):
        public = _both_backends(
            lambda: dk.max_pool2d_with_switches(x, kernel, stride, padding, dilation, ceil),
            exact=True,
        )
    geo = _normalised(kernel, stride, padding, dilation)
    _raw_agrees(public, geo and (
        lambda t: t.raw("max_pool2d_with_switches", x, *geo, ceil)), exact=True)


def _switches_for(draw, lead, hw, geo, ceil):
    """Switches of the pooled shape: valid ones from a real pool, sometimes one corrupted."""
    if _valid_geo(geo, hw, ceil):
        _, sw, idx = oracle_pool(torch.randn((*lead, *hw)), geo, ceil)
        if sw.numel() and draw(st.integers(0, 3)) == 0:
            at = draw(st.integers(0, sw.numel() - 1))
            sw.view(-1)[at] = draw(st.integers(0, 255))
            idx.view(-1)[at] = draw(st.integers(-2, hw[0] * hw[1] + 2))
        return sw, idx
    shape = (*lead, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return (torch.randint(0, 9, shape, dtype=torch.uint8),
            torch.randint(0, hw[0] * hw[1], shape))


@FUZZ
@given(data=st.data(), spec=tensor_spec(), geo_args=geometry_args(),
       isa=st.sampled_from(CPU_ISAS), seed=SEEDS)
def test_fuzz_max_unpool2d_with_switches(data, spec, geo_args, isa, seed):
    torch.manual_seed(seed)
    lead, hw, dtype, layout, kind = spec
    assume(not _known_elsewhere(geo_args, hw))
    kernel, stride, padding, dilation, ceil = geo_args
    geo = _normalised(kernel, stride, padding, dilation)
    sw, _ = _switches_for(data.draw, lead, hw, geo, ceil)
    y = _values(sw.shape, dtype, layout, kind)
    sw = arrange(sw, layout)
    choice = data.draw(
        st.sampled_from(["true", "true", "default", "random", "leading", "bad-leading"])
    )
    output_size = {
        "true": hw,
        "default": None,
        "random": (data.draw(st.integers(-1, 14)), data.draw(st.integers(1, 14))),
        "leading": (*y.shape[:-2], *hw),  # the whole unpooled shape
        "bad-leading": (5, 7, *hw),  # leading sizes not y's (unless y leads with 5, 7)
    }[choice]
    note(f"y: {tuple(y.shape)} {dtype} {layout}; output_size={output_size}")
    with _isa(isa):
        public = _both_backends(
            lambda: dk.max_unpool2d_with_switches(
                y, sw, kernel, stride, padding, dilation, output_size
            ),
            exact=False,
        )
    raw_call = None
    if geo is not None and choice != "bad-leading":  # (the raw ops take (H, W) only)
        size = list(default_unpooled_hw(y.shape[-2:], geo) if output_size is None
                    else output_size[-2:])

        def raw_call(t):
            return t.raw("max_unpool2d_with_switches", y, sw, size, *geo)
    _raw_agrees(public, raw_call, exact=False)


@FUZZ
@given(data=st.data(), spec=tensor_spec(), geo_args=geometry_args(),
       isa=st.sampled_from(CPU_ISAS), to_indices=st.booleans(), seed=SEEDS)
def test_fuzz_switch_index_conversions(data, spec, geo_args, isa, to_indices, seed):
    torch.manual_seed(seed)
    lead, hw, _, layout, _ = spec
    assume(not _known_elsewhere(geo_args, hw))
    kernel, stride, padding, dilation, ceil = geo_args
    geo = _normalised(kernel, stride, padding, dilation)
    sw, idx = _switches_for(data.draw, lead, hw, geo, ceil)
    sw, idx = arrange(sw, layout), arrange(idx, layout)
    input_size = hw if data.draw(st.integers(0, 3)) else (
        data.draw(st.integers(0, 14)), data.draw(st.integers(1, 14)))
    note(f"switches {tuple(sw.shape)} {layout}; input_size={input_size}")
    name = "switches_to_indices" if to_indices else "indices_to_switches"
    src = sw if to_indices else idx
    fn = getattr(dk, name)
    with _isa(isa):
        public = _both_backends(
            lambda: fn(src, input_size, kernel, stride, padding, dilation), exact=True
        )
    _raw_agrees(public, geo and (
        lambda t: t.raw(name, src, list(input_size), *geo)), exact=True)


# ----------------------------------------------------------------------------- unpool_deconv2d


@st.composite
def deconv_args(draw, cin: int, dtype: torch.dtype):
    """weight, bias and the transposed convolution's keyword arguments; one in four examples has
    one argument that is invalid by itself (others come out invalid in combination)."""
    bad = draw(st.integers(0, 3)) == 0
    which = draw(st.integers(0, 7)) if bad else -1
    groups = draw(st.sampled_from([g for g in (1, 1, 2, 3) if cin % g == 0]))
    if which == 0:
        groups = draw(st.sampled_from([0, -1, True, 2.0, cin + 1]))
    stride, dilation = draw(int_or_pair(1, 2)), draw(st.one_of(st.just(1), int_or_pair(1, 2)))
    s2 = stride if isinstance(stride, tuple) else (stride, stride)
    d2 = dilation if isinstance(dilation, tuple) else (dilation, dilation)
    output_padding = tuple(draw(st.integers(0, max(s2[i], d2[i]) - 1)) for i in range(2))
    padding = draw(int_or_pair(0, 2))
    if which == 1:
        stride = draw(st.sampled_from([0, (1, 0), 1.5, (1, 2, 3)]))
    elif which == 2:
        padding = draw(st.sampled_from([-1, 6, (0, 9)]))
    elif which == 3:
        dilation = draw(st.sampled_from([0, (1, -1)]))
    elif which == 4:
        output_padding = draw(int_or_pair(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    groups_n = groups if isinstance(groups, int) and not isinstance(groups, bool) else 1
    cin_w = cin + 1 if which == 5 else cin
    cout_g = draw(st.integers(1, 3))
    wdtype = dtype if dtype.is_floating_point else torch.float32
    if which == 6:
        wdtype = draw(st.sampled_from([d for d in FLOAT_DTYPES if d != dtype]))
    w = torch.randn(cin_w, cout_g, *kernel, dtype=torch.float64).to(wdtype)
    if draw(st.booleans()):
        w = w.transpose(0, 1).contiguous().transpose(0, 1)
    cout = cout_g * max(groups_n, 1)
    bias_kind = draw(st.sampled_from(["none", "ok"])) if which != 7 else draw(
        st.sampled_from(["shape", "dtype"]))
    b = {
        "none": None,
        "ok": torch.randn(cout, dtype=torch.float64).to(wdtype),
        "shape": torch.randn(cout + 1, dtype=torch.float64).to(wdtype),
        "dtype": torch.randn(cout, dtype=torch.float64).to(
            torch.float32 if wdtype == torch.float64 else torch.float64),
    }[bias_kind]
    kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                  dilation=dilation)
    return w, b, kwargs


@st.composite
def pool_geometry_args(draw):
    """Like geometry_args, but four in five are valid by themselves (a window may still cover no
    input element, or have no switch for its size)."""
    if draw(st.integers(0, 4)) == 0:
        return draw(geometry_args())
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = draw(st.one_of(st.none(), int_or_pair(1, 3)))
    padding = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    dilation = draw(st.one_of(st.just(1), int_or_pair(1, 2)))
    return k, stride, padding, dilation, draw(st.booleans())


@settings(FUZZ, max_examples=60)
@given(data=st.data(), spec=tensor_spec(), geo_args=pool_geometry_args(),
       isa=st.sampled_from(CPU_ISAS), seed=SEEDS)
def test_fuzz_unpool_deconv2d(data, spec, geo_args, isa, seed):
    torch.manual_seed(seed)
    lead, hw, dtype, layout, kind = spec
    kernel, stride, padding, dilation, ceil = geo_args
    hw = (min(hw[0], 9), min(hw[1], 9))
    geo = _normalised(kernel, stride, padding, dilation)
    sw, _ = _switches_for(data.draw, lead, hw, geo, ceil)
    y = _values(sw.shape, dtype, layout, kind)
    sw = arrange(sw, layout)
    w, b, dkw = data.draw(deconv_args(sw.shape[-3], dtype))
    choice = data.draw(st.sampled_from(
        ["true", "true", "true", "default", "random", "leading", "bad-leading"]
    ))
    output_size = {
        "true": hw,
        "default": None,
        "random": (data.draw(st.integers(-1, 10)), data.draw(st.integers(1, 10))),
        "leading": (*y.shape[:-2], *hw),  # the whole unpooled shape
        "bad-leading": (5, 7, *hw),  # leading sizes not y's (unless y leads with 5, 7)
    }[choice]
    pool_kw = dict(pool_kernel_size=kernel, pool_stride=stride, pool_padding=padding,
                   pool_dilation=dilation)
    note(f"y: {tuple(y.shape)} {dtype} {layout} {kind}; w {tuple(w.shape)} {w.dtype}; "
         f"b {None if b is None else (tuple(b.shape), b.dtype)}; output_size={output_size}; "
         f"pool {pool_kw}; deconv {dkw}")

    def call(yv=y, wv=w, bv=b):
        return dk.unpool_deconv2d(yv, sw, wv, bv, output_size=output_size, **pool_kw, **dkw)

    with _isa(isa), dk.use_backend("extension"):
        actual = _run(call)
    with dk.use_backend("reference"):
        expected = _run(call)
    note(f"extension: {actual[0]} {actual[1] if actual[0] == 'err' else ''}")
    note(f"reference: {expected[0]} {expected[1] if expected[0] == 'err' else ''}")
    assert actual[0] == expected[0], (
        f"extension gives {actual[0]!r} but the reference gives {expected[0]!r}: "
        f"{actual[1] if actual[0] == 'err' else expected[1]!r}"
    )
    event(f"unpool_deconv2d: {actual[0]}")
    truth = bound = None
    if actual[0] == "ok":
        with dk.use_backend("reference"):  # float64 truth and the sum of |terms|
            truth = call(y.double(), w.double(), None if b is None else b.double())
            bound = call(y.double().abs(), w.double().abs(),
                         None if b is None else b.double().abs())
        assert_close_bounded(actual[1], truth, bound, dtype, "extension")
        ref = expected[1]
        if dtype == torch.bfloat16:  # PyTorch bug, inherited by the dense reference: see below
            ref = torch.where(ref.isnan() & ~truth.isnan(), truth.to(dtype), ref)
        assert_close_bounded(ref, truth, bound, dtype, "reference")
    # the raw emulated CUDA kernel (and the GPU's): an error as well, or the same result
    deconv = [_int_pair(dkw[k]) for k in ("stride", "padding", "output_padding", "dilation")]
    groups = dkw["groups"]
    if not HAS_EXT or geo is None or None in deconv or not isinstance(groups, int) or (
            isinstance(groups, bool)) or choice == "bad-leading":  # (raw ops: (H, W) only)
        return
    size = list(default_unpooled_hw(y.shape[-2:], geo) if output_size is None
                else output_size[-2:])
    st_, pd, op, dl = deconv
    for target in RAW_TARGETS:
        got = _run(lambda target=target: target.raw(
            "unpool_deconv2d", y, sw, w, b, size, *geo, st_, pd, op, groups, dl))
        note(f"{target.id}: {got[0]} {got[1] if got[0] == 'err' else ''}")
        assert got[0] == actual[0], f"{target.id} gives {got[0]!r}, the public op {actual[0]!r}"
        if got[0] == "ok":
            assert_close_bounded(got[1], truth, bound, dtype, target.id)
