"""Bad input: the right exception type, a message naming the argument, on every target.

The public API raises ValueError (or RuntimeError from a compiled kernel's own check, e.g. a
switch outside its window); the raw torch.ops raise RuntimeError. Out-of-bounds accesses cannot
be observed here; what is checked is that every such input is refused.
"""

from __future__ import annotations

import pytest
import torch
from dkutil import HAS_CUDA, HAS_EXT, NO_EXT_REASON, geometry, oracle_pool

import deconvkernels as dk

X = r"\bx\b"
Y = r"\by\b"
SWITCH = r"(?i)switch"
INDICES = r"(?i)ind(ex|ices)"
GRAD_OUT = r"grad_out(put)?\b"
#: What the raw torch.ops raise for bad input. The brief says RuntimeError; the C++ checks use
#: TORCH_CHECK_VALUE (ValueError) for argument checks, which is as clear. Both are accepted.
RAW_ERRORS = (RuntimeError, ValueError)


def _valid(shape=(2, 3, 6, 7), geo=None, ceil=False):
    """A pooled tensor, valid switches and indices for an input of ``shape``."""
    geo = geo or geometry(2)
    x = torch.randn(shape)
    y, sw, idx = oracle_pool(x, geo, ceil)
    return x, y, sw, idx, geo


def _bad_switches(kind: str, good: bool = False):
    """(switches, input hw, geometry) with exactly one bad switch, the others valid
    (``good=True``: the same switches before the one change)."""
    if kind in ("ge_window", "255"):  # value >= kh * kw
        _, _, sw, _, geo = _valid()
        hw, at, value = (6, 7), ((1, 2, 1, 1) if kind == "ge_window" else (0, 0, 0, 0)), (
            4 if kind == "ge_window" else 255)
    elif kind == "4_among_zeros":  # the only switch with a bit above the window's two
        _, _, sw, _, geo = _valid()
        sw.zero_()
        hw, at, value = (6, 7), (1, 2, 1, 1), 4
    elif kind == "4_among_zeros_wide":  # as above, in a row of 20 pooled values: vector steps
        _, _, sw, _, geo = _valid((2, 3, 4, 40), geometry(2))
        sw.zero_()
        hw, at, value = (4, 40), (1, 2, 1, 13), 4
    elif kind in ("ge_window_3x3", "255_3x3"):  # windows inside the input, another geometry
        _, _, sw, _, geo = _valid((2, 3, 7, 7), geometry(3, 2))
        hw, at, value = (7, 7), (1, 2, 1, 1), (9 if kind == "ge_window_3x3" else 255)
    elif kind == "padding":  # window (0, 0) starts at (-1, -1); offset 0 is in the padding
        _, _, sw, _, geo = _valid((2, 3, 6, 6), geometry(2, 2, 1))
        hw, at, value = (6, 6), (1, 1, 0, 0), 0
    elif kind in ("padding_top", "padding_left"):  # windows (0, 1) / (1, 0): one side out
        _, _, sw, _, geo = _valid((2, 3, 7, 7), geometry(3, 2, 1))
        hw, at, value = (7, 7), ((1, 1, 0, 1) if kind == "padding_top" else (1, 1, 1, 0)), 0
    elif kind == "past_edge":  # ceil_mode: the last row of windows starts at row 4 of 5
        _, _, sw, _, geo = _valid((2, 3, 5, 5), geometry(2), ceil=True)
        hw, at, value = (5, 5), (0, 1, 2, 0), 2  # ky=1 -> row 5
    else:
        raise AssertionError(kind)
    if not good:
        sw[at] = value
    return sw, hw, geo


BAD_SWITCH_KINDS = (
    "ge_window", "255", "4_among_zeros", "4_among_zeros_wide", "ge_window_3x3", "255_3x3",
    "padding", "padding_top", "padding_left", "past_edge",
)


# ----------------------------------------------------------------------------- public API


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 3, 6, 6, dtype=torch.int32), X),
    (torch.zeros(2, 3, 6, 6, dtype=torch.uint8), X),
    (torch.zeros(2, 3, 6, 6, dtype=torch.bool), X),
    (torch.zeros(2, 3, 6, 6, dtype=torch.complex64), X),
    (torch.zeros(6, 6), X),
    (torch.zeros(1, 2, 3, 6, 6), X),
    ([[1.0, 2.0], [3.0, 4.0]], X),
], ids=["int32", "uint8", "bool", "complex", "2d", "5d", "list"])
def test_pool_bad_x(public_target, bad, match):
    with pytest.raises(ValueError, match=match):
        dk.max_pool2d_with_switches(public_target.put(bad), 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=0), "kernel_size"),
    (dict(kernel_size=-2), "kernel_size"),
    (dict(kernel_size=(2, 0)), "kernel_size"),
    (dict(kernel_size=(2, 2, 2)), "kernel_size"),
    (dict(kernel_size=()), "kernel_size"),
    (dict(kernel_size=2.0), "kernel_size"),
    (dict(kernel_size="2"), "kernel_size"),
    (dict(kernel_size=True), "kernel_size"),
    (dict(kernel_size=16), "kernel_size"),  # 256 > 255 window elements
    (dict(kernel_size=(8, 32)), "kernel_size"),
    (dict(kernel_size=2, stride=0), "stride"),
    (dict(kernel_size=2, stride=(1, -1)), "stride"),
    (dict(kernel_size=2, stride=2.5), "stride"),
    (dict(kernel_size=2, stride=(1, 2, 3)), "stride"),
    (dict(kernel_size=2, padding=-1), "padding"),
    (dict(kernel_size=2, padding=2), "padding"),
    (dict(kernel_size=3, padding=(0, 2)), "padding"),
    (dict(kernel_size=2, padding=1.0), "padding"),
    (dict(kernel_size=2, dilation=0), "dilation"),
    (dict(kernel_size=2, dilation=(1, -1)), "dilation"),
    (dict(kernel_size=2, dilation=1.5), "dilation"),
], ids=repr)
def test_pool_bad_geometry(public_target, kwargs, match):
    x = public_target.put(torch.randn(1, 2, 20, 40))
    with pytest.raises(ValueError, match=match):
        dk.max_pool2d_with_switches(x, **kwargs)


@pytest.mark.parametrize("valid, invalid", [
    (dict(kernel_size=1), dict(kernel_size=True)),
    (dict(kernel_size=2), dict(kernel_size=2.0)),
    (dict(kernel_size=(1, 2)), dict(kernel_size=(True, 2))),
    (dict(kernel_size=2, stride=2), dict(kernel_size=2, stride=2.0)),
    (dict(kernel_size=3, padding=1), dict(kernel_size=3, padding=True)),
], ids=repr)
def test_pool_geometry_cache_keeps_types_apart(public_target, valid, invalid):
    """Valid geometries are remembered, but True == 1 and 2.0 == 2 must not share an answer."""
    x = public_target.put(torch.randn(1, 2, 8, 8))
    dk.max_pool2d_with_switches(x, **valid)
    dk.max_pool2d_with_switches(x, **valid)
    with pytest.raises(ValueError):
        dk.max_pool2d_with_switches(x, **invalid)


@pytest.mark.parametrize("geo", [dict(kernel_size=2), dict(kernel_size=(2, 2), stride=(2, 2),
                                               padding=(0, 0), dilation=(1, 1))], ids=repr)
def test_pool_checks_cache_keeps_tensors_apart(public_target, geo):
    """A valid call is remembered by its geometry and by x's dtype, rank and (H, W): an x that
    differs in any of them is checked afresh and refused as without the memo."""
    put = public_target.put
    x = put(torch.randn(1, 2, 8, 8))
    for _ in range(2):
        dk.max_pool2d_with_switches(x, **geo)
    for bad, match in [
        (torch.zeros(1, 2, 8, 8, dtype=torch.int32), X),
        (torch.zeros(1, 1, 2, 8, 8), X),
        (torch.zeros(8, 8), X),
        (torch.zeros(1, 2, 1, 8), "too small"),
    ]:
        with pytest.raises(ValueError, match=match):
            dk.max_pool2d_with_switches(put(bad), **geo)
    # ceil_mode must be a bool, as for F.max_pool2d (a truthy "no" used to mean True)
    for bad_mode in (1, "no", None, torch.tensor(True)):
        with pytest.raises(ValueError, match="ceil_mode must be a bool"):
            dk.max_pool2d_with_switches(x, **geo, ceil_mode=bad_mode)
    with pytest.raises(ValueError, match="ceil_mode must be a bool"):
        dk.nn.MaxPool2dWithSwitches(2, ceil_mode="no")


def test_pool_input_too_small(public_target):
    x = public_target.put(torch.randn(1, 2, 2, 9))
    with pytest.raises(ValueError, match="too small"):
        dk.max_pool2d_with_switches(x, 3)
    with pytest.raises(ValueError, match="too small"):
        dk.max_pool2d_with_switches(public_target.put(torch.randn(1, 2, 0, 9)), 1)


def test_unpool_bad_tensors(public_target):
    t = public_target
    x, y, sw, _, geo = _valid()
    y, sw = t.put(y), t.put(sw)
    with pytest.raises(ValueError, match=Y):
        dk.max_unpool2d_with_switches(y.int(), sw, 2)
    with pytest.raises(ValueError, match=Y):
        dk.max_unpool2d_with_switches(y[0, 0], sw[0, 0], 2)
    with pytest.raises(ValueError, match="switches"):
        dk.max_unpool2d_with_switches(y, sw.long(), 2)
    with pytest.raises(ValueError, match="switches"):
        dk.max_unpool2d_with_switches(y, sw.float(), 2)
    with pytest.raises(ValueError, match="switches"):
        dk.max_unpool2d_with_switches(y, sw[:1], 2)
    with pytest.raises(ValueError, match="switches"):
        dk.max_unpool2d_with_switches(y, sw[..., :2], 2)
    with pytest.raises(ValueError, match="switches"):
        dk.max_unpool2d_with_switches(y, sw.tolist(), 2)


@pytest.mark.parametrize("output_size", [
    (4, 7), (8, 7), (6, 9), (10, 10), (0, 7), (6,), (6.0, 7), [2, 3, 6, -7],
    (1, 2, 7, 7), (3, 7, 7), (5, 2, 3, 7, 7),
], ids=repr)
def test_unpool_impossible_output_size(public_target, output_size):
    """Pooled 3x3 with kernel 2 stride 2 comes from 6..7 rows (floor) or 5 (ceil): not 4 or 8.
    A whole shape must have y's leading sizes (F.max_unpool2d ignores the first two of four)."""
    y = public_target.put(torch.randn(2, 3, 3, 3))
    sw = public_target.put(torch.zeros(2, 3, 3, 3, dtype=torch.uint8))  # valid for any size
    for possible in [(5, 5), (6, 7), (7, 6), (2, 3, 7, 7), torch.Size([2, 3, 6, 6])]:
        assert dk.max_unpool2d_with_switches(y, sw, 2, output_size=possible).shape[-2:] == (
            possible[-2:]
        )
    with pytest.raises(ValueError, match="output_size"):
        dk.max_unpool2d_with_switches(y, sw, 2, output_size=output_size)


def test_unpool_default_output_size_must_be_possible(public_target):
    """A 1x1 input pooled with kernel 2, padding 1 gives 1x1; the default unpooled size
    ((1 - 1) * 2 - 2 + 2 = 0) is no size at all: a clear error about output_size."""
    x = public_target.put(torch.randn(1, 2, 1, 1))
    y, sw = dk.max_pool2d_with_switches(x, 2, padding=1)
    out = dk.max_unpool2d_with_switches(y, sw, 2, padding=1, output_size=(1, 1))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="output_size"):
        dk.max_unpool2d_with_switches(y, sw, 2, padding=1)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("kind", BAD_SWITCH_KINDS)
def test_public_bad_switch_values(public_target, kind, layout):
    """One bad switch among valid ones is found in every layout (the CPU check reduces a
    dense tensor, channels_last or permuted, as its flat bytes; the scatter of geometries
    other than 2x2 stride 2 checks each switch as it goes, NCHW and NHWC)."""
    t = public_target
    sw, hw, geo = _bad_switches(kind)
    if layout == "channels_last":
        sw = sw.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":  # dense, neither NCHW nor channels_last
        sw = sw.transpose(0, 1).contiguous().transpose(0, 1)
    y = torch.randn(sw.shape)
    if layout == "channels_last":  # the values decide the kernels' layout
        y = y.contiguous(memory_format=torch.channels_last)
    sw, y = t.put(sw), t.put(y)
    with pytest.raises((ValueError, RuntimeError), match=SWITCH):
        dk.max_unpool2d_with_switches(y, sw, *geo, output_size=hw)
    with pytest.raises((ValueError, RuntimeError), match=SWITCH):
        dk.switches_to_indices(sw, hw, *geo)
    # and through autograd: the pool backward is only reachable with valid switches, but the
    # unpool backward runs the same checks on its own
    yr = y.clone().requires_grad_(True)
    with pytest.raises((ValueError, RuntimeError), match=SWITCH):
        dk.max_unpool2d_with_switches(yr, sw, *geo, output_size=hw).sum().backward()


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bad_switch_found_in_a_large_tensor(public_target, layout, where):
    """The CPU check scans a dense tensor's bytes in parallel chunks of 256 KiB: one bad
    switch at either end of a 512 KiB tensor is found."""
    t = public_target
    sw = torch.randint(0, 4, (2, 64, 64, 64), dtype=torch.uint8)
    if layout == "channels_last":
        sw = sw.contiguous(memory_format=torch.channels_last)
    flat = sw.permute(0, 2, 3, 1) if layout == "channels_last" else sw
    flat.reshape(-1)[0 if where == "first" else -1] = 4  # a view: sw changes
    assert int(sw.max()) == 4
    sw = t.put(sw)
    y = t.put(torch.randn(sw.shape))
    with pytest.raises((ValueError, RuntimeError), match=SWITCH):
        dk.max_unpool2d_with_switches(y, sw, 2)


def test_switches_to_indices_bad_arguments(public_target):
    t = public_target
    _, _, sw, _, geo = _valid()
    sw = t.put(sw)
    with pytest.raises(ValueError, match="switches"):
        dk.switches_to_indices(sw.long(), (6, 7), 2)
    with pytest.raises(ValueError, match="switches"):
        dk.switches_to_indices(sw[0, 0], (6, 7), 2)
    with pytest.raises(ValueError, match="input_size"):
        dk.switches_to_indices(sw, (9, 7), 2)
    with pytest.raises(ValueError, match="input_size"):
        dk.switches_to_indices(sw, (0, 7), 2)
    with pytest.raises(ValueError, match="input_size"):
        dk.switches_to_indices(sw, (7,), 2)
    with pytest.raises(ValueError, match="kernel_size"):
        dk.switches_to_indices(sw, (6, 7), 16)


def _bad_indices(kind: str):
    """(indices, input hw, geometry) with exactly one index outside its window."""
    if kind == "dilation_gap":  # kernel 2, dilation 2: taps 0 and 2 of each window, not 1
        x, _, _, idx, geo = _valid((1, 2, 7, 7), geometry(2, 2, 0, 2))
        idx[0, 1, 0, 0] = 1
        return idx, (7, 7), geo
    _, _, _, idx, geo = _valid()
    if kind == "neighbour":  # the position of another window
        idx[1, 1, 1, 1] = idx[1, 1, 0, 0]
    elif kind == "negative":
        idx[0, 0, 2, 2] = -1
    elif kind == "too_large":
        idx[0, 0, 2, 2] = 6 * 7
    elif kind == "wrapped":  # column -1 of the next row: flat index inside, column outside
        idx[0, 0, 1, 0] = 2 * 7 - 1
    else:
        raise AssertionError(kind)
    return idx, (6, 7), geo


BAD_INDEX_KINDS = ("neighbour", "negative", "too_large", "wrapped", "dilation_gap")


@pytest.mark.parametrize("kind", BAD_INDEX_KINDS)
def test_indices_to_switches_outside_window(public_target, kind):
    idx, hw, geo = _bad_indices(kind)
    with pytest.raises((ValueError, RuntimeError), match=INDICES):
        dk.indices_to_switches(public_target.put(idx), hw, *geo)


def test_indices_to_switches_bad_arguments(public_target):
    _, _, _, idx, _ = _valid()
    idx = public_target.put(idx)
    with pytest.raises(ValueError, match="indices"):
        dk.indices_to_switches(idx.int(), (6, 7), 2)
    with pytest.raises(ValueError, match="indices"):
        dk.indices_to_switches(idx.float(), (6, 7), 2)
    with pytest.raises(ValueError, match="indices"):
        dk.indices_to_switches(idx[0, 0], (6, 7), 2)
    with pytest.raises(ValueError, match="input_size"):
        dk.indices_to_switches(idx, (10, 7), 2)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_public_device_mismatch():
    _, y, sw, _, _ = _valid()
    with pytest.raises(ValueError, match="switches"):
        dk.max_unpool2d_with_switches(y.cuda(), sw, 2)
    with pytest.raises(ValueError, match="switches"):
        dk.max_unpool2d_with_switches(y, sw.cuda(), 2)


# ----------------------------------------------------------------------------- raw ops

G2 = geometry(2)


def _raw_cases():
    """(id, op name, args builder, message pattern). Builders return CPU tensors."""
    cases = []

    def add(cid, op, build, match):
        cases.append(pytest.param(op, build, match, id=f"{op}-{cid}"))

    pool = "max_pool2d_with_switches"
    add("x_int", pool, lambda: (torch.zeros(2, 3, 6, 6, dtype=torch.int32), *G2, False), X)
    add("x_2d", pool, lambda: (torch.zeros(6, 6), *G2, False), X)
    add("x_5d", pool, lambda: (torch.zeros(1, 2, 3, 6, 6), *G2, False), X)
    x = lambda: torch.randn(1, 2, 20, 20)
    add("kernel_zero", pool, lambda: (x(), [0, 2], [1, 1], [0, 0], [1, 1], False), "kernel_size")
    add("kernel_len1", pool, lambda: (x(), [2], [2, 2], [0, 0], [1, 1], False), "kernel_size")
    add("kernel_256", pool, lambda: (x(), [16, 16], [1, 1], [0, 0], [1, 1], False), "kernel_size")
    add("stride_zero", pool, lambda: (x(), [2, 2], [0, 2], [0, 0], [1, 1], False), "stride")
    add("stride_len3", pool, lambda: (x(), [2, 2], [2, 2, 2], [0, 0], [1, 1], False), "stride")
    add("padding_neg", pool, lambda: (x(), [2, 2], [2, 2], [-1, 0], [1, 1], False), "padding")
    add("padding_big", pool, lambda: (x(), [2, 2], [2, 2], [0, 2], [1, 1], False), "padding")
    add("dilation_zero", pool, lambda: (x(), [2, 2], [2, 2], [0, 0], [0, 1], False), "dilation")
    add("too_small", pool, lambda: (torch.randn(1, 2, 2, 9), [3, 3], [1, 1], [0, 0], [1, 1],
                                    False), r"\bx\b|too small|kernel_size")

    pbwd = "max_pool2d_with_switches_backward"

    def pool_bwd(grad_dtype=torch.float32, sw_dtype=torch.uint8, sw_slice=False, size=(6, 7)):
        def build():
            _, y, sw, _, geo = _valid()
            sw = sw[..., :2] if sw_slice else sw
            return (y.to(grad_dtype), sw.to(sw_dtype), list(size), *geo)
        return build

    add("grad_y_int", pbwd, pool_bwd(grad_dtype=torch.int32), "grad_y")
    add("switches_int64", pbwd, pool_bwd(sw_dtype=torch.int64), "switches")
    add("switches_shape", pbwd, pool_bwd(sw_slice=True), "switches|grad_y")
    add("input_size_impossible", pbwd, pool_bwd(size=(20, 20)), "input_size")
    add("input_size_len1", pbwd, pool_bwd(size=(6,)), "input_size")

    unpool = "max_unpool2d_with_switches"

    def unpool_args(y_dtype=torch.float32, sw_dtype=torch.uint8, sw_slice=False, size=(6, 7)):
        def build():
            _, y, sw, _, geo = _valid()
            sw = sw[:1] if sw_slice else sw
            return (y.to(y_dtype), sw.to(sw_dtype), list(size), *geo)
        return build

    add("y_int", unpool, unpool_args(y_dtype=torch.int64), Y)
    add("switches_int64", unpool, unpool_args(sw_dtype=torch.int64), "switches")
    add("switches_shape", unpool, unpool_args(sw_slice=True), "switches")
    add("output_size_impossible", unpool, unpool_args(size=(20, 20)), "output_size")
    add("output_size_zero", unpool, unpool_args(size=(0, 0)), "output_size")
    add("output_size_negative", unpool, unpool_args(size=(-6, 7)), "output_size")
    add("output_size_len1", unpool, unpool_args(size=(6,)), "output_size")
    add("kernel_256", unpool, lambda: (*unpool_args()()[:3], [16, 16], [2, 2], [0, 0], [1, 1]),
        "kernel_size")

    ubwd = "max_unpool2d_with_switches_backward"

    def unpool_bwd(g_dtype=torch.float32, sw_dtype=torch.uint8, g_shape=(2, 3, 6, 7)):
        def build():
            _, _, sw, _, geo = _valid()
            return (torch.randn(g_shape).to(g_dtype), sw.to(sw_dtype), *geo)
        return build

    add("grad_out_int", ubwd, unpool_bwd(g_dtype=torch.int32), GRAD_OUT)
    add("switches_int64", ubwd, unpool_bwd(sw_dtype=torch.int64), "switches")
    add("grad_out_size_impossible", ubwd, unpool_bwd(g_shape=(2, 3, 20, 20)),
        GRAD_OUT + "|output_size")
    add("grad_out_batch_mismatch", ubwd, unpool_bwd(g_shape=(1, 3, 6, 7)), GRAD_OUT + "|switches")
    add("grad_out_channel_mismatch", ubwd, unpool_bwd(g_shape=(2, 4, 6, 7)), GRAD_OUT + "|switches")

    s2i = "switches_to_indices"
    add("switches_int64", s2i, lambda: (_valid()[2].long(), [6, 7], *G2), "switches")
    add("switches_2d", s2i, lambda: (_valid()[2][0, 0], [6, 7], *G2), "switches")
    add("input_size_impossible", s2i, lambda: (_valid()[2], [20, 7], *G2), "input_size")
    add("kernel_256", s2i, lambda: (_valid()[2], [6, 7], [16, 16], [2, 2], [0, 0], [1, 1]),
        "kernel_size")

    i2s = "indices_to_switches"
    add("indices_int32", i2s, lambda: (_valid()[3].int(), [6, 7], *G2), "indices")
    add("indices_float", i2s, lambda: (_valid()[3].float(), [6, 7], *G2), "indices")
    add("input_size_impossible", i2s, lambda: (_valid()[3], [6, 20], *G2), "input_size")
    def with_bad_index(kind):
        def build():
            idx, hw, geo = _bad_indices(kind)
            return (idx, list(hw), *geo)
        return build

    for kind in BAD_INDEX_KINDS:
        add(kind, i2s, with_bad_index(kind), INDICES)

    def with_bad_switch(kind, make):
        return lambda: make(*_bad_switches(kind))

    for kind in BAD_SWITCH_KINDS:
        add(f"switch_{kind}", pbwd, with_bad_switch(
            kind, lambda s, hw, g: (torch.randn(s.shape), s, list(hw), *g)), SWITCH)
        add(f"switch_{kind}", unpool, with_bad_switch(
            kind, lambda s, hw, g: (torch.randn(s.shape), s, list(hw), *g)), SWITCH)
        add(f"switch_{kind}", ubwd, with_bad_switch(
            kind, lambda s, hw, g: (torch.randn(*s.shape[:2], *hw), s, *g)), SWITCH)
        add(f"switch_{kind}", s2i, with_bad_switch(
            kind, lambda s, hw, g: (s, list(hw), *g)), SWITCH)
    return cases


@pytest.mark.parametrize("op, build, match", _raw_cases())
def test_raw_op_bad_input(raw_target, op, build, match):
    args = build()
    with pytest.raises(RAW_ERRORS, match=match):
        raw_target.raw(op, *args)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kind", BAD_SWITCH_KINDS)
def test_raw_backwards_bad_switch_layouts(raw_target, kind, layout):
    """The CPU pool backward and unpool backward check each switch as they go, in the NCHW and
    the NHWC walks (the gradient's layout picks the walk)."""
    sw, hw, geo = _bad_switches(kind)
    g_unpooled = torch.randn(*sw.shape[:2], *hw)
    g_pooled = torch.randn(sw.shape)
    if layout == "channels_last":
        sw, g_unpooled, g_pooled = (
            t.contiguous(memory_format=torch.channels_last) for t in (sw, g_unpooled, g_pooled)
        )
    with pytest.raises(RAW_ERRORS, match=SWITCH):
        raw_target.raw("max_unpool2d_with_switches_backward", g_unpooled, sw, *geo)
    with pytest.raises(RAW_ERRORS, match=SWITCH):
        raw_target.raw("max_pool2d_with_switches_backward", g_pooled, sw, list(hw), *geo)


def test_raw_op_valid_twins_run(raw_target):
    """The inputs the bad cases are made from are accepted: the errors above come from the one
    bad argument."""
    x, y, sw, idx, geo = _valid()
    raw_target.raw("max_pool2d_with_switches", x, *geo, False)
    raw_target.raw("max_pool2d_with_switches_backward", y, sw, [6, 7], *geo)
    raw_target.raw("max_unpool2d_with_switches", y, sw, [6, 7], *geo)
    raw_target.raw("max_unpool2d_with_switches_backward", torch.randn(2, 3, 6, 7), sw, *geo)
    raw_target.raw("indices_to_switches", idx, [6, 7], *geo)
    for kind in BAD_SWITCH_KINDS:
        sw, hw, geo = _bad_switches(kind, good=True)
        raw_target.raw("switches_to_indices", sw, list(hw), *geo)
        raw_target.raw("max_unpool2d_with_switches", torch.randn(sw.shape), sw, list(hw), *geo)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
@pytest.mark.requires_extension
def test_raw_device_mismatch():
    _, y, sw, _, geo = _valid()
    ops = torch.ops.deconvkernels
    with pytest.raises(RAW_ERRORS, match="device|switches"):
        ops.max_unpool2d_with_switches(y.cuda(), sw, [6, 7], *geo)
    with pytest.raises(RAW_ERRORS, match="device|switches"):
        ops.max_pool2d_with_switches_backward(y.cuda(), sw, [6, 7], *geo)
    with pytest.raises(RAW_ERRORS, match="device|switches"):
        ops.max_unpool2d_with_switches_backward(torch.randn(2, 3, 6, 7).cuda(), sw, *geo)


@pytest.mark.parametrize("backend", ["extension", "reference"])
def test_geometry_takes_what_operator_index_takes(backend):
    """NumPy integers and 0-d integer tensors are ints to the geometry arguments, as to
    F.max_pool2d / nn.ConvTranspose2d; bools (NumPy's too) still are not."""
    import numpy as np

    if backend == "extension" and not HAS_EXT:
        pytest.skip(NO_EXT_REASON)
    x = torch.randn(2, 4, 8, 8)
    with dk.use_backend(backend):
        y, s = dk.max_pool2d_with_switches(x, 2)
        for k in (np.int64(2), torch.tensor(2), (np.int32(2), 2), [torch.tensor(2)] * 2):
            y2, s2 = dk.max_pool2d_with_switches(x, k, stride=np.int64(2))
            assert torch.equal(y2, y) and torch.equal(s2, s)
        u = dk.max_unpool2d_with_switches(y, s, np.int64(2), output_size=(np.int64(8), 8))
        assert u.shape == x.shape
        i = dk.switches_to_indices(s, (np.int16(8), torch.tensor(8)), 2)
        assert torch.equal(dk.indices_to_switches(i, (8, 8), 2), s)
        w = torch.randn(4, 3, 3, 3)
        z = dk.unpool_deconv2d(y, s, w, None, output_size=None, pool_kernel_size=2,
                               groups=np.int64(1))
        assert z.shape == (2, 3, 10, 10)
        for bad in (np.bool_(True), torch.tensor(True), (2, np.bool_(True)), 2.0, "2"):
            with pytest.raises(ValueError, match="kernel_size"):
                dk.max_pool2d_with_switches(x, bad)


@pytest.mark.parametrize("backend", ["extension", "reference"])
def test_fused_op_names_its_pool_arguments(backend):
    """unpool_deconv2d has a pool geometry and a deconvolution geometry: errors in the first
    name pool_kernel_size / pool_stride / pool_padding / pool_dilation, as do its modules."""
    if backend == "extension" and not HAS_EXT:
        pytest.skip(NO_EXT_REASON)
    y, s = dk.max_pool2d_with_switches(torch.randn(1, 2, 8, 8), 2)
    w = torch.randn(2, 2, 3, 3)
    cases = [
        (dict(pool_kernel_size=2, pool_stride=0), "pool_stride must be positive"),
        (dict(pool_kernel_size=2, pool_padding=-1), "pool_padding must be non-negative"),
        (dict(pool_kernel_size=2, pool_dilation=0), "pool_dilation must be positive"),
        (dict(pool_kernel_size=16), "pool_kernel_size \\(16, 16\\) has a window of 256"),
        (dict(pool_kernel_size=0), "pool_kernel_size must be positive"),
        (dict(pool_kernel_size="2"), "pool_kernel_size must be an int or a pair"),
        (dict(pool_kernel_size=2, stride=0), "^stride must be positive"),
    ]
    with dk.use_backend(backend):
        for kwargs, match in cases:
            with pytest.raises(ValueError, match=match):
                dk.unpool_deconv2d(y, s, w, None, output_size=None, **kwargs)
    with pytest.raises(ValueError, match="pool_stride must be positive"):
        dk.nn.UnpoolConvTranspose2d(2, 2, 3, pool_kernel_size=2, pool_stride=0)
    with pytest.raises(ValueError, match="pool_padding must be at most half of pool_kernel"):
        dk.nn.UnpoolConv2d(2, 2, 3, padding=1, pool_kernel_size=2, pool_padding=2)


@pytest.mark.parametrize("backend", ["extension", "reference"])
def test_conversions_check_input_size_as_unpool_checks_output_size(backend):
    """input_size of the conversions: (H, W) or the whole input shape, whose leading sizes
    must be the pooled tensor's (as the unpool's output_size); never a bare int."""
    if backend == "extension" and not HAS_EXT:
        pytest.skip(NO_EXT_REASON)
    x = torch.randn(2, 3, 6, 6)
    y, s = dk.max_pool2d_with_switches(x, 2)
    with dk.use_backend(backend):
        i = dk.switches_to_indices(s, x.shape, 2)
        assert torch.equal(i, dk.switches_to_indices(s, (6, 6), 2))
        assert torch.equal(dk.indices_to_switches(i, x.shape, 2), s)
        for fn, t in ((dk.switches_to_indices, s), (dk.indices_to_switches, i)):
            for bad, match in [
                (8, "input_size must be a sequence"),
                ((99, 3, 6, 6), "input_size must be \\(H, W\\) or the whole"),
                ((6,), "input_size must be \\(H, W\\)"),
                ((6, 6.0), "input_size must hold ints"),
                (None, "input_size must be given"),
            ]:
                with pytest.raises(ValueError, match=match):
                    fn(t, bad, 2)
            with pytest.raises(ValueError, match="output_size must be a sequence"):
                dk.max_unpool2d_with_switches(y, s, 2, output_size=6)
