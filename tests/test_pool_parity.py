"""Parity of pool, unpool, their backwards and the switch/index conversions, on every target.

Oracles: ``F.max_pool2d`` / ``F.max_unpool2d`` on the CPU (bit-exact), the independent loop
oracle in ``dkutil.oracle_pool`` (switches), and ``deconvkernels.reference`` for the unpool
where windows overlap (the contract's "last window in raster order wins").
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from dkutil import (
    FLOAT_DTYPES,
    HAS_EXT,
    LAYOUTS_4D,
    Target,
    arrange,
    assert_equal_values,
    assert_identical,
    default_unpooled_hw,
    effective,
    geo_id,
    geometry,
    has_empty_window,
    is_channels_last,
    make_values,
    oracle_pool,
    overlapping,
    pair,
    pooled_hw,
    random_valid_switches,
    torch_pool,
    torch_unpool,
)

import deconvkernels as dk
from deconvkernels._geometry import PoolParams

KINDS = ("randn", "ties", "special")
# One input size per data kind, so odd and even extents both appear in every geometry.
SIZES = {"randn": (2, 3, 9, 11), "ties": (1, 2, 10, 8), "special": (2, 2, 7, 12)}


def _geometries():
    cases = []
    for k, s, d in itertools.product(
        [1, 2, 3, 4, (2, 3), (3, 1)], [1, 2, 3, (1, 2)], [1, 2]
    ):
        kp = pair(k)
        pads = sorted({(0, 0), (min(1, kp[0] // 2), min(1, kp[1] // 2)), (kp[0] // 2, kp[1] // 2)})
        for p in pads:
            for ceil in (False, True):
                cases.append((geometry(k, s, p, d), ceil))
    # a few anisotropic dilations
    for k, s, p, d in [((2, 3), 1, (1, 1), (2, 1)), (3, (2, 1), (1, 0), (1, 2)), (2, 2, 0, (1, 3))]:
        for ceil in (False, True):
            cases.append((geometry(k, s, p, d), ceil))
    return cases


GEOMETRIES = _geometries()
# Subsets for the costlier checks (odd steps: ceil_mode alternates in GEOMETRIES).
GEOMETRIES_SMALL = GEOMETRIES[::5]


def _params(geo) -> PoolParams:
    return PoolParams(*map(tuple, geo))


def _reference_unpool(y, sw, geo, hw):
    return dk.reference.max_unpool2d_with_switches(y.cpu(), sw.cpu(), _params(geo), tuple(hw))


def check_pool(target, x, geo, ceil, what):
    """Pool ``x`` on ``target``; compare y with F bit for bit, switches with the oracle and F's
    indices (through this target's switches_to_indices and back)."""
    x_before = x.clone()
    y, sw = target.pool(x, *geo, ceil)
    ey, ei = torch_pool(x, geo, ceil)
    _, osw, oidx = oracle_pool(x, geo, ceil)
    assert torch.equal(oidx, ei), f"{what}: oracle disagrees with F.max_pool2d indices (test bug?)"
    assert y.device == target.device and sw.device == target.device, what
    assert sw.dtype == torch.uint8, f"{what}: switches dtype {sw.dtype}"
    assert sw.shape == y.shape, what
    assert_identical(y, ey, f"{what}: y")
    assert_identical(sw, osw, f"{what}: switches")
    idx = target.switches_to_indices(sw, x.shape[-2:], *geo)
    assert idx.dtype == torch.int64, what
    assert_identical(idx, ei, f"{what}: switches_to_indices")
    back = target.indices_to_switches(target.put(ei), x.shape[-2:], *geo)
    assert_identical(back, osw, f"{what}: indices_to_switches")
    assert_identical(x, x_before, f"{what}: input modified")
    return y, sw


# ----------------------------------------------------------------------------- pool forward


@pytest.mark.parametrize("case", GEOMETRIES, ids=geo_id)
def test_pool_matches_torch(target, case):
    geo, ceil = case
    for dtype, kind in itertools.product(FLOAT_DTYPES, KINDS):
        x = make_values(SIZES[kind], dtype, kind)
        check_pool(target, x, geo, ceil, f"{dtype} {kind} {tuple(x.shape)}")


@pytest.mark.parametrize("layout", (*LAYOUTS_4D, "3d", "3d_channels_last"))
@pytest.mark.parametrize(
    "case",
    [(geometry(3, 1, 1), False), (geometry(2, 2), True), (geometry((2, 3), (1, 2), 1, 2), True)],
    ids=geo_id,
)
def test_pool_layouts(target, layout, case):
    geo, ceil = case
    for dtype, kind in itertools.product(FLOAT_DTYPES, ("randn", "ties", "special")):
        base = (2, 5, 9, 11) if kind != "ties" else (3, 4, 8, 8)
        if layout.startswith("3d"):
            v = make_values(base[1:], dtype, kind)
            x = arrange(v, "channels_last" if layout == "3d_channels_last" else "contiguous")
        else:
            x = arrange(make_values(base, dtype, kind), layout)
        what = f"{layout} {dtype} {kind}"
        y, sw = check_pool(target, x, geo, ceil, what)
        if layout == "channels_last":
            assert is_channels_last(y), f"{what}: y lost channels_last, strides {y.stride()}"
            assert is_channels_last(sw), f"{what}: switches not channels_last, {sw.stride()}"
        elif layout in ("contiguous", "3d"):
            assert y.is_contiguous() and sw.is_contiguous(), what


def test_pool_unbatched_equals_batched(target):
    geo = geometry(3, 2, 1)
    for dtype in FLOAT_DTYPES:
        x = make_values((4, 9, 10), dtype, "special")
        y3, sw3 = target.pool(x, *geo, True)
        y4, sw4 = target.pool(x.unsqueeze(0), *geo, True)
        assert y3.dim() == 3 and sw3.dim() == 3
        assert_identical(y3, y4.squeeze(0), f"{dtype}: y")
        assert_identical(sw3, sw4.squeeze(0), f"{dtype}: switches")


@pytest.mark.parametrize("width", [16, 17, 18, 31, 32, 33, 34, 47, 48, 64, 65, 97, 1026, 1091])
def test_pool_2x2_fast_path(target, width):
    """The DeconvNet pool (2x2, stride 2) at widths that are and are not multiples of 16/32.

    Pooled rows of 32+ columns take the AVX-512 kernel's two-pass form, in chunks of 512
    columns (1026 and 1091 cross a chunk edge); ties, NaN and inf in every width.
    """
    geo = geometry(2)
    for dtype, layout, ceil in itertools.product(
        FLOAT_DTYPES, ("contiguous", "channels_last"), (False, True)
    ):
        for n, c, h, kind in [(1, 3, 6, "ties"), (2, 17, 5, "randn"), (1, 2, 6, "special")]:
            x = arrange(make_values((n, c, h, width), dtype, kind), layout)
            y, sw = check_pool(target, x, geo, ceil, f"{dtype} {layout} {tuple(x.shape)}")
            if layout == "channels_last":
                assert is_channels_last(y) and is_channels_last(sw)


@pytest.mark.parametrize(
    "case",
    [(geometry(3, 2, 1), False), (geometry(3, 2), True), (geometry(3, 1, 1), False),
     (geometry(2, 1), False), (geometry((3, 2), (1, 2), (1, 0), 2), True),
     (geometry(5, 2, 2), False), (geometry(3, 3), True), (geometry(4, 4, 1), False),
     (geometry((3, 5), (3, 4), (1, 2), (1, 2)), True)],
    ids=geo_id,
)
def test_pool_generic_rows(target, case):
    """Geometries other than 2x2 stride 2, NCHW rows of every width around the vector
    widths: pooled rows run in chunks of two vectors between the columns whose windows reach
    into the padding (scalar); strides of 3 and more gather their taps (16-bit ones read a
    word, one element past the tap, except at the buffer's end); the last chunk of the last
    row loads only what the buffer holds. Channels_last: channel counts around the blocks of
    four vectors and the short tail."""
    geo, ceil = case
    for dtype in FLOAT_DTYPES:
        for width in [*range(3, 21), 31, 32, 33, 34, 35, 47, 66, 67, 80, 131, 198]:
            x = make_values((1, 2, 5, width), dtype, "special" if width % 2 else "ties")
            check_pool(target, x, geo, ceil, f"{dtype} {tuple(x.shape)}")
        for channels in (3, 8, 9, 31, 32, 33, 40):
            x = arrange(make_values((2, channels, 6, 7), dtype, "special"), "channels_last")
            check_pool(target, x, geo, ceil, f"{dtype} channels_last {tuple(x.shape)}")


@pytest.mark.parametrize(
    "case",
    [(geometry(3, 2, 1), False), (geometry(3, 1, 1), False), (geometry(2, 1), True),
     (geometry((3, 2), (1, 2), (1, 0), 2), True), (geometry(5, 3, 2), False)],
    ids=geo_id,
)
def test_pool_generic_planes_abreast(target, case):
    """NCHW maps of short rows and many planes pool blocks of planes abreast (four vectors of
    planes, 32 or 64 by type and ISA, through a pixel-major scratch, pool_forward_generic.h):
    plane counts at, around and past a block (a part-filled last block), special values and
    ties; float32 and float64 bit patterns (NaN payloads, signed zeros, subnormals) kept. (16-bit
    types go through float there, as in the row form's vector columns: a NaN maximum comes out
    quiet, as F.max_pool2d's does, so their payloads are not compared.)"""
    geo, ceil = case
    for dtype in FLOAT_DTYPES:
        for planes, hw in ((32, (7, 9)), (64, (6, 6)), (65, (5, 11)), (133, (9, 8)),
                           (128, (14, 14))):
            x = make_values((1, planes, *hw), dtype, "special" if planes % 2 else "ties")
            check_pool(target, x, geo, ceil, f"{dtype} {tuple(x.shape)}")
    for dtype in (torch.float32, torch.float64):
        x = _special_values((2, 40, 7, 6), dtype)
        _check_pool_keeps_bits(target, x, geo, f"{dtype} bits {tuple(x.shape)}")


# Bit patterns no arithmetic produces: NaNs of both signs with payloads (a signalling one
# included), signed zeros, the smallest subnormals, infinities.
_SPECIAL_BITS = {
    torch.float32: [0xFFC00001, 0x7F800001, 0xFFFFFFFF, 0x80000000, 0x1, 0x80000001,
                    0x7F800000, 0xFF800000],
    torch.float64: [0xFFF8000000000001, 0x7FF0000000000001, -1, -(1 << 63), 0x1,
                    -(1 << 63) | 1, 0x7FF0000000000000, -(1 << 63) | 0x7FF0000000000000],
    torch.float16: [0xFE01, 0x7C01, 0xFFFF, 0x8000, 0x1, 0x8001, 0x7C00, 0xFC00],
    torch.bfloat16: [0xFFC1, 0x7F81, 0xFFFF, 0x8000, 0x1, 0x8001, 0x7F80, 0xFF80],
}
_INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
           torch.bfloat16: torch.int16}


def _special_values(shape, dtype) -> torch.Tensor:
    """Each element one of the special patterns, a small integer or a signed zero."""
    it = _INT_OF[dtype]
    bits = [b - (1 << (8 * it.itemsize)) if b >= 1 << (8 * it.itemsize - 1) else b
            for b in _SPECIAL_BITS[dtype]]
    special = torch.tensor(bits, dtype=it).view(dtype)
    ints = torch.randint(-2, 3, shape).to(dtype)
    pick = torch.randint(0, len(bits), shape)
    return torch.where(torch.rand(shape) < 0.5, special[pick], ints)


def _check_pool_keeps_bits(target, x, geo, what) -> None:
    """Pool ``x`` (no ceil_mode): y equal to F's, switches to the oracle's, and on the
    AVX-512 and CUDA kernels, and the AVX2 ones in float32 and bfloat16, each maximum's bits
    unchanged. The at::vec kernels (DEFAULT; AVX2 in float16) round-trip 16-bit types through
    float, which quietens NaNs, as F does."""
    y, sw = target.pool(x, *geo, False)
    ey, ei = torch_pool(x, geo, False)
    _, osw, _ = oracle_pool(x, geo, False)
    assert_identical(y, ey, f"{what}: y")
    assert_identical(sw, osw, f"{what}: switches")
    keeps_bits = (
        target.kind != "cpu"
        or str(target.isa).startswith("AVX512")
        or (target.isa == "AVX2" and x.dtype in (torch.float32, torch.bfloat16))
    )
    if keeps_bits and target.backend is None and HAS_EXT:
        # (gathered as integers: torch's gather rewrites bfloat16 NaNs)
        it = _INT_OF[x.dtype]
        picked = x.view(it).flatten(-2).gather(-1, ei.flatten(-2)).view(ey.shape)
        assert torch.equal(y.cpu().view(it), picked), f"{what}: the maxima's bits changed"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_pool_nan_signs_payloads_subnormals(target, dtype, layout):
    """NaNs of either sign (a NaN maximum must hold against every number that follows),
    payloads, signed zeros and subnormals, in channel counts that reach every kernel block.
    The AVX-512 and CUDA kernels must also return each maximum's bits unchanged."""
    torch.manual_seed(7)
    geo = geometry(2)
    for c in (5, 16, 32, 33, 64, 96, 128, 161):
        x = arrange(_special_values((2, c, 6, 8), dtype), layout)
        _check_pool_keeps_bits(target, x, geo, f"{dtype} {layout} C={c}")


_NAN_BITS = {"+nan": 0x7FC1, "-nan": -0x3F}  # bfloat16 NaNs as int16 (0xFFC1 for -0x3F)


def _bfloat16_key_input(shape, kind: str) -> torch.Tensor:
    """Input of the bfloat16 key-path tests: "zeros" holds +0 and -0 only (every window a
    tie, decided by position); every other kind is randn, with one NaN of the named sign
    ("+nan", "-nan") planted at a random place."""
    if kind == "zeros":
        return torch.where(torch.rand(shape) < 0.5, 0.0, -0.0).to(torch.bfloat16)
    x = torch.randn(shape).to(torch.bfloat16)
    if kind in _NAN_BITS:
        flat = x.view(torch.int16).view(-1)
        flat[torch.randint(0, flat.numel(), (1,))] = _NAN_BITS[kind]
    return x


def _plant_nan_pair(x: torch.Tensor, n: int, c: int, w: int) -> None:
    """Equal +NaNs at the first and last taps of the 2x2 window on rows 0-1, columns w and
    w + 1 (PyTorch takes the later one, a key compare keeps the first)."""
    x.view(torch.int16)[n, c, 0, w] = _NAN_BITS["+nan"]
    x.view(torch.int16)[n, c, 1, w + 1] = _NAN_BITS["+nan"]


@pytest.mark.parametrize("height", [2, 6, 7, 14])
def test_pool_bfloat16_nchw_key_paths(target, height):
    """bfloat16 NCHW 2x2/2 on AVX-512 (and AVX2, 16 windows a step, rows of up to 8 windows two
    a step) compares 16-bit integer keys and redoes any step that meets a NaN with the exact
    widened code. Every path, each with a lone NaN of either sign
    planted (one step redone, its neighbours not) and with signed-zero ties: flat runs of
    rows (even H, OW < 64: steps of 32 outputs that span rows, whole periods of steps, then
    the rows left over), one row a step (odd H), two passes (OW >= 64, a negative NaN in the
    top row that loses its pair there), partial steps; NaNs at the start of pooled row 1 (a
    redone step that spans two rows); and two equal +NaNs in one window (PyTorch takes the
    later, a key compare the first)."""
    torch.manual_seed(11)
    geo = geometry(2)
    for width in (2, 4, 6, 14, 16, 22, 28, 30, 34, 56, 64, 66, 128, 130, 224):
        shape = (2, 6, height, width)
        for kind in ("randn", "zeros", "+nan", "-nan", "-nan-top", "+nan-pair", "nan-row-1"):
            x = _bfloat16_key_input(shape, kind)
            if kind == "-nan-top":  # a top-row -NaN beside a larger number
                x.view(torch.int16)[1, 2, 0, width - 2] = _NAN_BITS["-nan"]
                x[1, 2, 0, width - 1] = 5.0
            if kind == "+nan-pair":  # the last window of a row
                _plant_nan_pair(x, 0, 1, width - 2)
            if kind == "nan-row-1":  # the first window of pooled row 1 (of all planes)
                plane, oh = divmod(1, height // 2)
                x.view(torch.int16)[0, plane, 2 * oh, 0] = _NAN_BITS["+nan"]
                x.view(torch.int16)[0, plane, 2 * oh + 1, 1] = _NAN_BITS["-nan"]
            _check_pool_keeps_bits(target, x, geo, f"bfloat16 {tuple(shape)} {kind}")


@pytest.mark.parametrize("height", [2, 6, 7])
def test_pool_float32_nchw_flat_runs(target, height):
    """float32 NCHW 2x2/2 on AVX-512 runs maps of even height and fewer than 32 pooled
    columns flat: steps of 16 outputs that span rows, loaded through a plan of masked
    loads (2, 3 or 4 rows a vector), whole periods of lcm(16, OW) outputs, then the rows
    left over. Every pooled width below 32 and a few above, even and odd input widths,
    with NaNs of both signs and payloads, infinities, signed-zero ties and randn; odd
    heights take the row kernel."""
    torch.manual_seed(13)
    geo = geometry(2)
    for width in [*range(2, 66), 67, 70]:
        for n, c, kind in [(2, 5, "bits"), (1, 3, "special"), (1, 7, "ties"), (3, 3, "randn")]:
            shape = (n, c, height, width)
            if kind == "bits":
                x = _special_values(shape, torch.float32)
            else:
                x = make_values(shape, torch.float32, kind)
            _check_pool_keeps_bits(target, x, geo, f"float32 {shape} {kind}")


@pytest.mark.parametrize("channels", [32, 64, 96, 128, 160, 200])
def test_pool_bfloat16_channels_last_key_paths(target, channels):
    """bfloat16 channels_last 2x2/2 on AVX-512 (and AVX2: 16 channels a vector, a pixel redone
    exactly) compares 16-bit integer keys over blocks of 128, 64 and 32 channels (the last
    ones masked) and redoes a block that meets a NaN with exact per-lane code. Each block
    size, with a lone NaN of either sign planted (its block redone, the others not), a -NaN
    in a window's first tap beside larger numbers (a key compare would drop it), two equal
    +NaNs in one window (PyTorch takes the later one, a key compare keeps the first), and
    signed-zero ties (-0 and +0 must tie as floats)."""
    torch.manual_seed(12)
    geo = geometry(2)
    shape = (2, channels, 4, 6)
    for kind in ("randn", "zeros", "+nan", "-nan", "-nan-first", "+nan-pair"):
        x = _bfloat16_key_input(shape, kind)
        if kind == "-nan-first":
            x[1, channels - 1, 2:4, 2:4] = 5.0
            x.view(torch.int16)[1, channels - 1, 2, 2] = _NAN_BITS["-nan"]
        if kind == "+nan-pair":
            _plant_nan_pair(x, 0, channels // 2, 2)
        x = x.contiguous(memory_format=torch.channels_last)
        _check_pool_keeps_bits(target, x, geo, f"bfloat16 channels_last {tuple(shape)} {kind}")


def _nonnegative_bfloat16(shape, kind: str) -> torch.Tensor:
    """Inputs +0 or greater without NaN (what DeconvNet's pools see after a ReLU): "relu"
    (relu of randn, a quarter of it +0), "ties" (0, 1 and 2: windows of equal values) and
    "inf" (relu of randn with +inf planted)."""
    if kind == "ties":
        return torch.randint(0, 3, shape).to(torch.bfloat16)
    x = torch.randn(shape).relu().to(torch.bfloat16)
    if kind == "inf":
        x[torch.rand(shape) < 0.1] = float("inf")
    return x


# As int16: values the raw-pattern compare cannot order (their block is redone with keys),
# and a subnormal, which it does order.
_RAW_BREAKERS = {"-0": -0x8000, "-1": -0x4080, "+nan": 0x7FC1, "-nan": -0x3F, "+tiny": 0x0001}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pool_bfloat16_nonnegative_raw_paths(target, layout):
    """bfloat16 2x2/2 on AVX-512 and AVX2 compares inputs that are all +0 or greater (no NaN) as
    raw patterns (flat NCHW runs, channels_last pixels) until a block holds another
    value; that block is redone with keys and the rest of the call runs on keys. Wide NCHW
    maps (64+ pooled columns, any height) go a pooled row at a time the same way, and a key
    row that meets a NaN is redone exactly. Non-negative data alone (relu, ties of equal
    values, +inf), and with one value the raw compare cannot order (-0, a negative number, a
    NaN of either sign) planted in the first, a middle or the last window of the call; a
    subnormal is a number it does order; and a negative number in the first window with a NaN
    in that window or in pooled row 1 (raw, then keys, then the exact redo in one task).
    Enough planes for both threads to take several periods; an odd height with fewer than 64
    pooled columns (the row kernel, no raw path; test_pool_bfloat16_odd_heights) as control.
    Streamed outputs: the next test."""
    torch.manual_seed(14)
    geo = geometry(2)
    if layout == "contiguous":  # flat runs: even heights, OW < 64 (and one odd height)
        shapes = [(2, 9, 2, 14), (3, 40, 6, 14), (2, 12, 4, 28), (1, 5, 14, 56), (2, 3, 6, 10),
                  (2, 20, 2, 66), (1, 7, 4, 126), (2, 6, 7, 130), (1, 4, 3, 128),
                  (3, 4, 5, 28)]
    else:
        shapes = [(2, 64, 6, 6), (3, 96, 4, 8), (2, 200, 2, 4), (1, 32, 14, 14), (2, 512, 2, 2)]
    for shape in shapes:
        x0 = arrange(_nonnegative_bfloat16(shape, "relu"), layout)
        for kind in ("relu", "ties", "inf"):
            x = arrange(_nonnegative_bfloat16(shape, kind), layout)
            _check_pool_keeps_bits(target, x, geo, f"bfloat16 {layout} {shape} {kind}")
        n, c, h, w = shape
        spots = {"first": (0, 0, 0, 0), "middle": (n // 2, c // 2, h // 2, w // 2),
                 "last": (n - 1, c - 1, h - 1, w - 1)}
        for (where, (i, j, k, m)), (name, bits) in itertools.product(
            spots.items(), _RAW_BREAKERS.items()
        ):
            x = x0.clone()
            x.view(torch.int16)[i, j, k, m] = bits
            _check_pool_keeps_bits(target, x, geo, f"bfloat16 {layout} {shape} {name} {where}")
        if layout == "contiguous":
            for nan_at in (3, 2 * w + 1):  # the first window, pooled row 1
                x = x0.clone()
                flat = x.view(torch.int16).view(-1)
                flat[0], flat[nan_at] = _RAW_BREAKERS["-1"], _NAN_BITS["+nan"]
                _check_pool_keeps_bits(target, x, geo, f"bfloat16 {shape} -1, NaN at {nan_at}")


def test_pool_bfloat16_row_steps(target):
    """bfloat16 2x2/2 NCHW maps of up to 32 and of 48 to 63 pooled columns, of even height, run
    on AVX-512 in periods of 32 / gcd(OW, 32) pooled rows, each period in steps of whole
    pooled rows: row groups (pairs of groups of contiguous input, up to 7 pooled columns),
    packed rows (one masked load a row, 8 to 16), whole rows (17 to 32) or wide rows (two
    vectors of windows, 48 to 63) on raw patterns until a period holds a negative value, -0
    or NaN; that period and the rest on keys (those steps where they fill 24+ of 32 lanes,
    FlatRows otherwise); a period whose keys met a NaN exactly; the rows after the last whole
    period a row at a time. Every OW from 1 to 32, and 47 (flat runs), 48, 56 and 63; W = 2 OW
    and 2 OW + 1 (a column no window reads); fewer rows than a period, one period, several
    and a part (one period and a part from 17 on); relu, ties and randn data. Planted: a value
    the raw compare cannot order, and (in randn data, on keys from the start) a NaN of either
    sign, in the first window, in each of the first four pooled rows (the second row of a
    vector, the second vector of a step, the second step), at the end of the first two rows,
    in the second period, in the rows past the last period and in the last window."""
    torch.manual_seed(16)
    geo = geometry(2)
    for ow, w in itertools.product([*range(1, 33), 47, 48, 56, 63], (0, 1)):
        w += 2 * ow
        period = 32 // math.gcd(ow, 32)
        counts = (period - 1, period, 3 * period + period // 2 + 1) if ow <= 16 else (
            period + period // 2 + 1,)
        for rows in counts:
            oh = 1 + (rows - 1) % 3
            planes = -(-rows // oh)
            shape = (1, planes, 2 * oh, w)
            for kind in ("relu", "ties", "randn"):
                x = (torch.randn(shape).to(torch.bfloat16) if kind == "randn"
                     else _nonnegative_bfloat16(shape, kind))
                _check_pool_keeps_bits(target, x, geo, f"small map {shape} {kind}")
            relu = _nonnegative_bfloat16(shape, "relu").flatten()
            randn = torch.randn(shape).to(torch.bfloat16).flatten()
            n = relu.numel()
            # element offsets: pooled row r starts at 2 w r, its bottom input row at 2 w r + w
            spots = {0, 2 * w * period + 3, 2 * w * (rows - 1) + 1, n - 1}
            spots |= {2 * w * r + w + 1 for r in range(1, 4)}
            spots |= {2 * w * r + 2 * ow - 2 for r in range(2)}
            planted = [(relu, name, bits) for name, bits in _RAW_BREAKERS.items()]
            planted += [(randn, name, _NAN_BITS[name]) for name in ("+nan", "-nan")]
            for at in sorted(i for i in spots if i < n):
                for data, name, bits in planted:
                    x = data.clone()
                    x.view(torch.int16)[at] = bits
                    what = f"small map {shape} {name} at {at}"
                    _check_pool_keeps_bits(target, x.view(shape), geo, what)


def test_pool_bfloat16_odd_heights(target):
    """bfloat16 2x2/2 NCHW maps of odd height (each plane's last input row read by no window)
    and fewer than 64 pooled columns, where a plane's pooled rows are 2 W apart but planes
    H W apart: a kernel that runs rows across planes as one stream, or packs several rows a
    step, must not read the unread row nor mix planes. OW 1 to 17 and a few to 63 (the widths
    of every packed-step size); W = 2 OW and 2 OW + 1; heights that reach each step size (31
    pooled rows = 16 + 8 + 4 + 2 + 1); relu, ties and randn data; the unread last row of
    every plane +NaN (a wrong plane stride reads it). Planted: a value the raw compare cannot
    order and (in randn data) a NaN of either sign in the first window, the last row of the
    first plane, the first row of the second plane and the last window. And one map whose
    rows two threads split inside a plane, planted there."""
    torch.manual_seed(17)
    geo = geometry(2)

    def with_unread_rows_nan(x: torch.Tensor) -> torch.Tensor:
        x.view(torch.int16)[:, :, -1, :] = _NAN_BITS["+nan"]
        return x

    planted = [("relu", name, bits) for name, bits in _RAW_BREAKERS.items()]
    planted += [("randn", name, _NAN_BITS[name]) for name in ("+nan", "-nan")]
    for ow, extra in itertools.product([*range(1, 18), 20, 28, 32, 33, 40, 47, 48, 56, 63], (0, 1)):
        w = 2 * ow + extra
        for oh in (1, 2, 3, 7, 12, 31):
            planes = 3 if oh > 7 else 5
            shape = (1, planes, 2 * oh + 1, w)
            data = {"randn": with_unread_rows_nan(torch.randn(shape).to(torch.bfloat16))}
            for kind in ("relu", "ties"):
                data[kind] = with_unread_rows_nan(_nonnegative_bfloat16(shape, kind))
            for kind, x in data.items():
                _check_pool_keeps_bits(target, x, geo, f"odd height {shape} {kind}")
            if oh not in (1, 3, 12, 31):
                continue
            last = 2 * oh - 1  # the last input row a window reads
            spots = {"first window": (0, 0, 0),
                     "first plane's last row": (0, last - 1, 2 * ow - 1),
                     "second plane's first row": (1, 1, 0),
                     "last window": (planes - 1, last, 2 * ow - 1)}
            for (where, (p, row, col)), (kind, name, bits) in itertools.product(
                spots.items(), planted
            ):
                x = data[kind].clone()
                x.view(torch.int16)[0, p, row, col] = bits
                what = f"odd height {shape} {kind} {name} at {where}"
                _check_pool_keeps_bits(target, x, geo, what)
    # 1803 pooled rows: two threads split them at row 902, plane 300's last
    shape = (1, 601, 7, 14)
    for kind, name, bits in planted:
        for p, row in ((300, 3), (300, 5), (300, 2), (0, 0), (600, 5)):
            x = _nonnegative_bfloat16(shape, "ties") if kind == "relu" else (
                torch.randn(shape).to(torch.bfloat16))
            x.view(torch.int16)[0, p, row, 3] = bits
            _check_pool_keeps_bits(target, x, geo, f"{shape} {kind} {name} at plane {p} row {row}")


@pytest.mark.requires_extension
def test_pool_bfloat16_nonnegative_raw_paths_streamed(stream_every_pool):
    """As test_pool_bfloat16_nonnegative_raw_paths with every output streamed: a period or
    pixel redone with keys after raw stores streamed must leave the redo's bits."""
    geo = geometry(2)
    torch.manual_seed(15)
    cases = [((2, 16, 6, 28), "contiguous"), ((2, 8, 6, 128), "contiguous"),
             ((2, 64, 4, 6), "channels_last")]
    for shape, layout in cases:
        x0 = arrange(_nonnegative_bfloat16(shape, "relu"), layout)
        for bits in (None, *_RAW_BREAKERS.values()):
            x = x0.clone()
            if bits is not None:
                x.view(torch.int16)[1, shape[1] // 2, 2, 3] = bits
            _check_pool_keeps_bits(Target("cpu"), x, geo, f"{shape} {layout} {bits} streamed")


@pytest.fixture
def stream_every_pool():
    """The CPU pool forward streams its outputs whenever its kernel can (threshold 0)."""
    from deconvkernels import _C

    _C.set_streaming_threshold(0)
    yield
    _C.set_streaming_threshold(-1)


@pytest.mark.requires_extension
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_pool_streaming_stores(stream_every_pool, dtype, layout):
    """Streamed outputs (taken by large calls: csrc/cpu/streaming_stores.h) hold the same bits.

    Shapes where every store can stream (pooled rows / channels in 16s: one- and two-pass
    NCHW rows, whole-vector channel blocks), where rows start half way into a vector every
    other row and end in half a vector (pooled rows of 8k / 16k columns: 24, 40, 56, 112;
    odd heights keep bfloat16 on its row kernels), and where none can (the kernel must fall
    back).
    """
    from deconvkernels import _C

    geo = geometry(2)
    shapes = [(2, 32, 8, 64), (3, 16, 10, 32), (1, 48, 6, 10), (1, 17, 4, 34)]
    shapes += [(1, 3, 6, 112), (2, 5, 9, 224), (1, 3, 4, 48), (2, 3, 5, 80), (1, 2, 3, 96)]
    # randn as well as special values: a bfloat16 step that meets a NaN is redone by the
    # exact kernel, which does not stream, so NaN-dense inputs alone miss the streamed path.
    for (n, c, h, w), kind in itertools.product(shapes, ("special", "randn")):
        x = arrange(make_values((n, c, h, w), dtype, kind), layout)
        what = f"{dtype} {layout} {tuple(x.shape)} {kind}"
        y, sw = dk.max_pool2d_with_switches(x, 2)
        ey, _ = torch_pool(x, geo, False)
        _, osw, _ = oracle_pool(x, geo, False)
        assert_identical(y, ey, f"{what}: y")
        assert_identical(sw, osw, f"{what}: switches")
        _C.set_streaming_threshold(1 << 62)
        y_cached, sw_cached = dk.max_pool2d_with_switches(x, 2)
        _C.set_streaming_threshold(0)
        same_bits = torch.equal(
            y.contiguous().view(torch.uint8), y_cached.contiguous().view(torch.uint8)
        )
        assert same_bits and torch.equal(sw, sw_cached) and y.stride() == y_cached.stride(), what


@pytest.mark.parametrize(
    "channels",
    [1, 2, 7, 8, 15, 16, 17, 24, 31, 32, 33, 48, 56, 64, 65, 80, 96, 112, 128, 144, 200, 257],
)
def test_pool_channels_last_channel_counts(target, channels):
    """Channels-last kernels vectorise over C: counts around the vector widths, and around
    the forward's register blocks of four vectors (64 float32 channels on AVX-512) and what
    is left after them: two or three vectors in one pass, single vectors, a short tail."""
    for (geo, ceil), dtype in itertools.product(
        [(geometry(2), False), (geometry(3, 1, 1), False), (geometry(3, 2, 1, 2), True)],
        FLOAT_DTYPES,
    ):
        x = arrange(make_values((2, channels, 5, 6), dtype, "special"), "channels_last")
        check_pool(target, x, geo, ceil, f"{dtype} C={channels} {geo}")


def test_pool_tiny_inputs(target):
    """Inputs barely larger than one window (incl. 1x1), all valid geometries F accepts."""
    n = 0
    for h, w, k, s, p, d, ceil in itertools.product(
        [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2], [0, 1], [1, 2], [False, True]
    ):
        geo = geometry(k, s, p, d)
        if p > k // 2 or min(pooled_hw((h, w), geo, ceil)) < 1:
            continue
        if has_empty_window((h, w), geo, ceil):
            continue  # see test_pool_windows_without_inbounds_tap
        x = make_values((1, 2, h, w), torch.float32, "ties")
        check_pool(target, x, geo, ceil, f"{h}x{w} {geo} ceil={ceil}")
        n += 1
    assert n > 50


EMPTY_WINDOW_CASES = [
    ((1, 1), geometry(2, 1, 1, 2), False),  # taps at -1 and +1 around a 1x1 input
    ((2, 1), geometry(2, 1, 1, 2), False),  # rows fine, every column window empty
    ((3, 2), geometry((1, 2), 1, (0, 1), (1, 3)), True),  # column taps at -1 and 2
]


def _pool_on_each_backend(target, x, geo, ceil, clear_error):
    """``{backend: (y, switches) or None}``: the pool on both public backends (or the emulated
    kernel); None where it raised a ValueError/RuntimeError, which ``clear_error`` must accept."""
    outcomes = {}
    for backend in ("extension", "reference") if target.public else ("emulated",):
        try:
            if target.public:
                with dk.use_backend(backend):
                    outcomes[backend] = target.pool(x, *geo, ceil)
            else:
                outcomes[backend] = target.pool(x, *geo, ceil)
        except (ValueError, RuntimeError) as exc:
            assert clear_error(exc), f"{backend}: unclear error: {exc}"
            outcomes[backend] = None
    return outcomes


def test_empty_window_check_matches_brute_force():
    """pooled_shape looks only at the windows that start in the padding (it runs on every
    call); on every small geometry it must refuse exactly where some window has no input."""
    from deconvkernels._geometry import pooled_shape, pooled_size

    checked = 0
    for k, s, d, size, ceil in itertools.product(
        range(1, 6), range(1, 5), range(1, 4), range(1, 12), (False, True)
    ):
        for p in range(k // 2 + 1):
            if pooled_size(size, k, s, p, d, ceil) < 1:
                continue
            geo = ((k, 1), (s, 1), (p, 0), (d, 1))
            expect_refusal = has_empty_window((size, 1), geo, ceil)
            try:
                pooled_shape((size, 1), PoolParams(*geo), ceil)
                refused = False
            except ValueError:
                refused = True
            assert refused == expect_refusal, (size, k, s, p, d, ceil)
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    "hw, geo, ceil", EMPTY_WINDOW_CASES, ids=[f"{c[0]}-{geo_id(c[1:])}" for c in EMPTY_WINDOW_CASES]
)
def test_pool_windows_without_inbounds_tap(target, hw, geo, ceil):
    """Geometries PyTorch accepts although some window holds no input element at all (dilation
    with padding on a tiny input). F.max_pool2d gives -inf there (and an index outside that
    window). Contract: y bit-identical to F.max_pool2d, or a clear error about the geometry; the
    same on both backends."""
    assert has_empty_window(hw, geo, ceil)
    x = make_values((1, 2, *hw), torch.float32, "randn")
    ey, _ = torch_pool(x, geo, ceil)
    def clear(exc: Exception) -> bool:
        message = str(exc)  # names the geometry, not indices (the user passed none)
        return any(w in message for w in ("padding", "dilation", "window")) and (
            "indices" not in message)

    outcomes = _pool_on_each_backend(target, x, geo, ceil, clear)
    assert len({r is None for r in outcomes.values()}) == 1, f"backends disagree: {outcomes}"
    for backend, result in outcomes.items():
        if result is not None:
            y, sw = result
            assert_identical(y, ey, f"{backend}: y")
            assert int(sw.max()) < geo[0][0] * geo[0][1], f"{backend}: switch outside the window"


@pytest.mark.parametrize("kernel", [(15, 17), (1, 255), (255, 1)], ids=str)
def test_pool_largest_window(target, kernel):
    """255-element windows: the largest switch (254) must round-trip."""
    geo = geometry(kernel, 1)
    size = (1, 2, kernel[0] + 1, kernel[1] + 2)
    for dtype in (torch.float32, torch.bfloat16):
        x = make_values(size, dtype, "randn")
        x.view(-1)[-1] = 1e4  # the far corner: switch 254 in the last window
        _, sw = check_pool(target, x, geo, False, f"{dtype} {kernel}")
        assert int(sw.max()) == 254


def _empty_cases():
    # (shape, expected pooled shape) for kernel 2, stride 2
    return [((0, 3, 6, 7), (0, 3, 3, 3)), ((2, 0, 6, 7), (2, 0, 3, 3)), ((0, 6, 7), (0, 3, 3))]


@pytest.mark.parametrize("shape, pooled", _empty_cases(), ids=str)
def test_empty_tensors(target, shape, pooled):
    """N=0 or C=0: every op returns empty results of the right shapes, backwards included."""
    geo = geometry(2)
    hw = shape[-2:]
    for dtype, layout in itertools.product(FLOAT_DTYPES, ("contiguous", "channels_last")):
        x = torch.empty(shape, dtype=dtype)
        if layout == "channels_last":
            if x.dim() == 3:
                continue
            x = x.contiguous(memory_format=torch.channels_last)
        what = f"{dtype} {layout} {shape}"
        y, sw = target.pool(x, *geo)
        assert y.shape == pooled and sw.shape == pooled, what
        assert y.dtype == dtype and sw.dtype == torch.uint8, what
        idx = target.switches_to_indices(sw, hw, *geo)
        assert idx.shape == pooled and idx.dtype == torch.int64, what
        sw2 = target.indices_to_switches(idx, hw, *geo)
        assert sw2.shape == pooled and sw2.dtype == torch.uint8, what
        out = target.unpool(y, sw, *geo, output_size=hw)
        assert out.shape == shape and out.dtype == dtype, what
        _, _, gx = target.pool_grad(x, torch.empty(pooled, dtype=dtype), geo)
        assert gx.shape == shape, what
        _, gy = target.unpool_grad(y, sw, torch.empty(shape, dtype=dtype), geo, hw)
        assert gy.shape == pooled, what


# Hand-checked cases: 2x2 windows of a 1x1x2x2 input (the window's raster order = offsets 0..3).
NAN, INF = float("nan"), float("inf")
HAND_2X2 = [
    ([[1.0, 1.0], [1.0, 1.0]], 1.0, 0),  # all tied: first wins
    ([[0.0, 2.0], [2.0, 1.0]], 2.0, 1),  # tie between offsets 1 and 2: first wins
    ([[NAN, 1.0], [NAN, 2.0]], NAN, 2),  # two NaNs: the last NaN wins
    ([[1.0, NAN], [3.0, 2.0]], NAN, 1),  # NaN beats a larger number
    ([[NAN, 5.0], [INF, 4.0]], NAN, 0),  # NaN beats +inf
    ([[1.0, INF], [INF, NAN]], NAN, 3),
    ([[-INF, -INF], [-INF, -INF]], -INF, 0),  # nothing beats the initial -inf: first tap
    ([[-INF, -INF], [-INF, 5.0]], 5.0, 3),
    ([[2.0, INF], [INF, 1.0]], INF, 1),
    ([[-0.0, 0.0], [0.0, -0.0]], -0.0, 0),  # signed zeros tie: the first (and its sign) wins
    ([[0.0, -0.0], [-0.0, 0.0]], 0.0, 0),
    ([[-1.0, -0.0], [0.0, -0.0]], -0.0, 1),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("values, expected, switch", HAND_2X2, ids=lambda v: str(v))
def test_pool_hand_cases(target, dtype, values, expected, switch):
    x = torch.tensor(values, dtype=dtype).view(1, 1, 2, 2)
    for layout in ("contiguous", "channels_last"):
        # two channels, the second a copy, to exercise the vectorised channels-last path too
        xx = arrange(x.expand(1, 2, 2, 2).contiguous(), layout)
        y, sw = target.pool(xx, 2)
        assert sw.flatten().tolist() == [switch, switch], layout
        exp = torch.tensor(expected, dtype=dtype).expand(1, 2, 1, 1)
        assert_identical(y, exp, f"{layout} y")


def test_pool_hand_padding_and_dilation(target):
    # arange(9) as 3x3, kernel 3, stride 2, padding 1: windows at rows/cols -1 and 1.
    x = torch.arange(9.0).view(1, 1, 3, 3)
    y, sw = target.pool(x, 3, 2, 1)
    assert y.cpu().flatten().tolist() == [4.0, 5.0, 7.0, 8.0]
    assert sw.cpu().flatten().tolist() == [8, 7, 5, 4]
    idx = target.switches_to_indices(sw, (3, 3), 3, 2, 1)
    assert idx.cpu().flatten().tolist() == [4, 5, 7, 8]
    # dilation: a 1x3 kernel with dilation 2 over one row taps columns 0, 2, 4.
    x = torch.tensor([1.0, 9.0, 5.0, 9.0, 5.0]).view(1, 1, 1, 5)
    y, sw = target.pool(x, (1, 3), 1, 0, (1, 2))
    assert y.cpu().flatten().tolist() == [5.0]
    assert sw.cpu().flatten().tolist() == [1]  # the tie at taps 1 and 2 (columns 2, 4): first
    idx = target.switches_to_indices(sw, (1, 5), (1, 3), 1, 0, (1, 2))
    assert idx.cpu().flatten().tolist() == [2]


PAST_TORCH_PADDING = [
    (geometry(3, 1, 2, 2), False),  # effective 5: padding 2 <= 5 // 2, but > 3 // 2
    (geometry(2, 2, 2, 3), True),  # effective 4
    (geometry((3, 2), 1, (2, 1), (2, 2)), False),
]


@pytest.mark.parametrize("case", PAST_TORCH_PADDING, ids=geo_id)
def test_pool_padding_past_torch_limit(target, case):
    """Padding within half the *dilated* window but over ``kernel_size // 2``: F.max_pool2d
    refuses it, deconvkernels' geometry check accepts it. Either a correct result (the loop
    oracle) or a clear error naming padding; and both backends must behave the same."""
    geo, ceil = case
    x = make_values((2, 3, 9, 10), torch.float32, "special")
    outcomes = _pool_on_each_backend(target, x, geo, ceil, lambda exc: "padding" in str(exc))
    results = list(outcomes.values())
    assert all(r is None for r in results) or all(r is not None for r in results), (
        f"backends disagree on whether this geometry is valid: {outcomes.keys()} -> "
        f"{[r is not None for r in results]}"
    )
    if results[0] is not None:
        oy, osw, _ = oracle_pool(x, geo, ceil)
        for backend, (y, sw) in outcomes.items():
            assert_identical(sw, osw, f"{backend}: switches")
            assert_identical(y, oy, f"{backend}: y")


@pytest.mark.parametrize("shape, layout", [
    ((2, 3, 33, 35), "contiguous"),
    ((2, 40, 17, 19), "channels_last"),
    ((1, 1, 64, 66), "contiguous"),
], ids=str)
def test_larger_shapes_two_threads_deterministic(target, shape, layout):
    """Enough work for the CPU kernels to split it across threads: still exact, and the same
    bits on every run (no races between chunks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for (geo, ceil), dtype in itertools.product(
            [(geometry(2), False), (geometry(3, 1, 1), True)], (torch.float32, torch.bfloat16)
        ):
            x = arrange(make_values(shape, dtype, "ties"), layout)
            what = f"{dtype} {geo} {ceil}"
            y, sw = check_pool(target, x, geo, ceil, what)
            gy = _small_int_grad(y.shape, dtype)
            runs = [target.pool_grad(x, gy, geo, ceil) for _ in range(2)]
            for a, b in zip(runs[0], runs[1], strict=True):
                assert_identical(a, b, f"{what}: rerun")
            xr = x.clone().requires_grad_(True)
            k, s, p, d = geo
            (egx,) = torch.autograd.grad(F.max_pool2d(xr, k, s, p, d, ceil_mode=ceil), xr, gy)
            assert_equal_values(runs[0][2], egx, f"{what}: grad_x")
            g = make_values(shape, dtype, "randn")
            outs = [target.unpool_grad(y, sw, g, geo, shape[-2:]) for _ in range(2)]
            for a, b in zip(outs[0], outs[1], strict=True):
                assert_identical(a, b, f"{what}: unpool rerun")
            assert_equal_values(outs[0][0], _reference_unpool(y, sw, geo, shape[-2:]), what)
    finally:
        torch.set_num_threads(threads)


def test_outputs_are_fresh_tensors(target):
    """Even where an op is an identity (1x1 windows), the result never aliases its input."""
    x = target.put(make_values((2, 3, 5, 6), torch.float32, "randn"))
    y, sw = target.pool(x, 1)
    assert_identical(y, x, "1x1 pool")
    assert y.data_ptr() != x.data_ptr()
    out = target.unpool(y, sw, 1)
    assert_identical(out, x, "1x1 unpool")
    assert out.data_ptr() != y.data_ptr()


# ----------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("case", GEOMETRIES_SMALL, ids=geo_id)
def test_switch_index_round_trip(target, case):
    geo, ceil = case
    for hw, layout in itertools.product([(9, 11), (10, 8)], ("contiguous", "channels_last", "3d")):
        lead = (4,) if layout == "3d" else (2, 3)
        sw, idx = random_valid_switches(lead, hw, geo, ceil)
        if layout == "channels_last":
            sw = sw.contiguous(memory_format=torch.channels_last)
            idx = idx.contiguous(memory_format=torch.channels_last)
        got_idx = target.switches_to_indices(sw, hw, *geo)
        assert_identical(got_idx, idx, f"{layout} {hw}: switches_to_indices")
        got_sw = target.indices_to_switches(idx, hw, *geo)
        assert_identical(got_sw, sw, f"{layout} {hw}: indices_to_switches")
        # input_size may carry leading sizes
        lead_size = (*lead, *hw)
        assert_identical(target.switches_to_indices(sw, lead_size, *geo), idx, "leading dims")
        if layout == "channels_last":
            assert is_channels_last(got_idx) and is_channels_last(got_sw), layout


# ----------------------------------------------------------------------------- unpool


@pytest.mark.parametrize("case", GEOMETRIES[::3], ids=geo_id)
def test_unpool_matches_torch_and_reference(target, case):
    geo, ceil = case
    for dtype, kind in itertools.product(FLOAT_DTYPES, ("randn", "special")):
        lead, hw = SIZES[kind][:2], SIZES[kind][2:]
        sw, idx = random_valid_switches(lead, hw, geo, ceil)
        y = make_values(sw.shape, dtype, kind)
        what = f"{dtype} {kind}"
        out = target.unpool(y, sw, *geo, output_size=hw)
        assert out.device == target.device and out.dtype == dtype, what
        assert_equal_values(out, _reference_unpool(y, sw, geo, hw), f"{what}: vs reference")
        # F's CPU unpool on contiguous input: the last write wins, as in the contract
        assert_equal_values(out, torch_unpool(y, idx, geo, hw), f"{what}: vs F.max_unpool2d")
        # default output_size: the smallest input size that pools to y's extent
        default = default_unpooled_hw(sw.shape[-2:], geo)
        if min(default) >= 1:
            sw_d, idx_d = random_valid_switches(lead, default, geo, False)
            out_d = target.unpool(y, sw_d, *geo)
            assert out_d.shape[-2:] == default, what
            assert_equal_values(out_d, torch_unpool(y, idx_d, geo, default), f"{what}: default")


@pytest.mark.requires_extension
def test_fast_divider_matches_floor_division():
    """The CUDA kernels decode element numbers by multiply-high division (common.h):
    exact for every n < 2**31 and 1 <= d <= 2**31, edges and random pairs."""
    import random

    from deconvkernels import _C

    rng = random.Random(7)
    top = (1 << 31) - 1
    divisors = [1, 2, 3, 5, 7, 10, 14, 28, 56, 112, 224, 255, 256, 257, 511, 512, 65535,
                65536, 65537, 3 * 7 * 11 * 13, top, 1 << 31]
    divisors += [1 << k for k in range(32)] + [(1 << k) + 1 for k in range(31)]
    divisors += [rng.randint(1, 1 << 31) for _ in range(300)] + list(range(1, 300))
    for d in divisors:
        ns = {0, 1, top, top - 1, d - 1, min(d, top), min(d + 1, top), min(2 * d - 1, top)}
        ns |= {rng.randint(0, top) for _ in range(40)}
        ns |= {min(d * rng.randint(0, top // d), top) for _ in range(10)}
        for n in ns:
            assert _C.fast_divide(n, d) == n // d, (n, d)
    with pytest.raises(ValueError, match="fast_divide"):
        _C.fast_divide(1 << 31, 3)


@pytest.fixture(params=[True, False], ids=["fast-unravel", "int64-unravel"])
def emulator_unravel(request):
    """The emulated CUDA kernels with the GPU's 32-bit element decode, and without it (the
    path a GPU takes past 2**31 elements)."""
    from deconvkernels import _C

    previous = _C.set_emulator_fast_unravel(request.param)
    yield request.param
    _C.set_emulator_fast_unravel(previous)


@pytest.mark.requires_extension
@pytest.mark.parametrize("case", GEOMETRIES_SMALL, ids=geo_id)
def test_emulated_kernels_both_element_decodes(emulator_unravel, case):
    """Pool forward, its backward, unpool and its backward on the emulated CUDA kernels, in
    both element decodes: the same bits as the CPU oracle and the reference twin."""
    geo, ceil = case
    t = Target("cuda-emulated")
    for dtype, layout in itertools.product((torch.float32, torch.bfloat16),
                                           ("contiguous", "channels_last")):
        hw = (9, 11)
        x = make_values((2, 5, *hw), dtype, "special")
        if has_empty_window(hw, geo, ceil):
            continue
        what = f"{dtype} {layout} fast={emulator_unravel}"
        y, sw = t.pool(arrange(x, layout), *geo, ceil)
        ey, _ = torch_pool(x, geo, ceil)
        _, osw, _ = oracle_pool(x, geo, ceil)
        assert_identical(y, ey, f"{what}: y")
        assert_identical(sw, osw, f"{what}: switches")
        gy = _small_int_grad(tuple(sw.shape), dtype)  # sums exact in any order
        _, _, gx = t.pool_grad(arrange(x, layout), arrange(gy, layout), geo, ceil)
        xr = x.clone().requires_grad_(True)
        (egx,) = torch.autograd.grad(F.max_pool2d(xr, *geo, ceil_mode=ceil), xr, gy)
        assert_equal_values(gx, egx, f"{what}: grad_x")
        out, gyy = t.unpool_grad(arrange(y, layout), arrange(sw, layout),
                                 arrange(gx, layout), geo, hw)
        yr = y.clone().requires_grad_(True)
        eout = _reference_unpool(yr, sw, geo, hw)
        (egyy,) = torch.autograd.grad(eout, yr, gx)
        assert_equal_values(out, eout, f"{what}: unpool")
        assert_equal_values(gyy, egyy, f"{what}: unpool grad")


def test_unpool_keeps_negative_zero(target):
    """F.max_unpool2d copies each value: a -0.0 stays -0.0 (bit-exact parity)."""
    for dtype in FLOAT_DTYPES:
        geo = geometry(2)
        sw, idx = random_valid_switches((1, 2), (4, 4), geo, False)
        y = torch.tensor([-0.0, 1.0, -0.0, -2.0], dtype=dtype).repeat(2).view(sw.shape)
        out = target.unpool(y, sw, *geo, output_size=(4, 4))
        assert_identical(out, torch_unpool(y, idx, geo, (4, 4)), f"{dtype}")


@pytest.mark.parametrize("channels", [1, 15, 16, 17, 31, 32, 33, 48, 63, 65])
def test_unpool_channels_last_channel_counts(target, channels):
    """Channels-last scatters vectorise over C (16 lanes of float32, 32 of 16-bit types on
    AVX-512): counts around the vector widths, for the unpool and the pool's backward."""
    geo = geometry(2)
    for dtype, ceil in itertools.product(FLOAT_DTYPES, (False, True)):
        hw = (7, 6)
        sw, idx = random_valid_switches((2, channels), hw, geo, ceil)
        y = make_values(sw.shape, dtype, "special")
        what = f"{dtype} C={channels} ceil={ceil}"
        out = target.unpool(arrange(y, "channels_last"), arrange(sw, "channels_last"), *geo,
                            output_size=hw)
        assert channels == 1 or is_channels_last(out), what  # C=1: both formats at once
        assert_equal_values(out, torch_unpool(y, idx, geo, hw), what)
        x = arrange(make_values((2, channels, *hw), dtype, "special"), "channels_last")
        oh, ow = pooled_hw(hw, geo, ceil)
        gy = _small_int_grad((2, channels, oh, ow), dtype)
        _, _, gx = target.pool_grad(x, gy, geo, ceil)
        xr = x.clone().requires_grad_(True)
        (egx,) = torch.autograd.grad(F.max_pool2d(xr, 2, ceil_mode=ceil), xr, gy)
        assert_equal_values(gx, egx, f"{what}: grad_x")


@pytest.mark.parametrize(
    "width", [2, 4, 14, 15, 16, 17, 28, 31, 32, 33, 34, 63, 65, 66, 130]
)
def test_unpool_nchw_row_widths(target, width):
    """NCHW scatters and gathers of 2x2 pools go along rows (16 pooled values a step on
    AVX-512, each interleaved into 32 outputs; the gather 8 float32 values a step on AVX2):
    pooled widths around the steps, even and odd input widths and heights (ceil_mode: a last
    window of one column; an odd height: a last row no window covers), for the unpool, its
    backward and the pool's backward."""
    geo = geometry(2)
    for dtype, ceil, height in itertools.product(FLOAT_DTYPES, (False, True), (5, 6, 14)):
        hw = (height, width)
        sw, idx = random_valid_switches((2, 3), hw, geo, ceil)
        y = make_values(sw.shape, dtype, "special")
        what = f"{dtype} {hw} ceil={ceil}"
        g = make_values((2, 3, *hw), dtype, "special")
        out, grad_y = target.unpool_grad(y, sw, g, geo, hw)
        assert_equal_values(out, torch_unpool(y, idx, geo, hw), what)
        expected = g.flatten(-2).gather(-1, idx.flatten(-2)).view_as(y)
        assert_equal_values(grad_y, expected, f"{what}: unpool grad_y")
        x = make_values((2, 3, *hw), dtype, "special")
        oh, ow = pooled_hw(hw, geo, ceil)
        gy = _small_int_grad((2, 3, oh, ow), dtype)
        _, _, gx = target.pool_grad(x, gy, geo, ceil)
        xr = x.clone().requires_grad_(True)
        (egx,) = torch.autograd.grad(F.max_pool2d(xr, 2, ceil_mode=ceil), xr, gy)
        assert_equal_values(gx, egx, f"{what}: grad_x")


@pytest.mark.parametrize("width", [2, 6, 14, 15, 28, 29, 30, 46])
def test_short_rows_many_tasks(target, width):
    """2x2/2 NCHW rows that end in a partial vector step (every row of 7 or 14 pooled
    columns), split into many tasks by two threads: the AVX2 kernels store a row's last step
    as whole vectors, the lanes past the row spilling into rows the same task writes later,
    and exactly where the task (or the buffer) ends. A spill into another task's rows, or one
    stored before the columns it covers were written, shows here: pool forward, its backward
    (a scatter) and the unpool, against PyTorch, for heights even (planes' rows in one run)
    and odd (a last input row no window reads, a last output row of zeros)."""
    geo = geometry(2)
    ow = width // 2
    # rows a task for the pool forward and the scatter (grain_for in pool_kernels_impl.h)
    rows_a_task = max(16384 // (4 * ow), 16384 // (2 * width))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for dtype, height in itertools.product((torch.float32, torch.bfloat16), (6, 7)):
            oh = height // 2
            planes = (5 * rows_a_task + 3) // oh  # five tasks and a part
            hw = (height, width)
            what = f"{dtype} {hw}, {planes} planes"
            x = make_values((1, planes, *hw), dtype, "ties")
            y, sw = check_pool(target, x, geo, False, what)
            gy = _small_int_grad(y.shape, dtype)
            _, _, gx = target.pool_grad(x, gy, geo)
            xr = x.clone().requires_grad_(True)
            (egx,) = torch.autograd.grad(F.max_pool2d(xr, 2), xr, gy)
            assert_equal_values(gx, egx, f"{what}: grad_x")
            v = make_values(y.shape, dtype, "special")
            out = target.unpool(v, sw, *geo, output_size=hw)
            assert_equal_values(out, _reference_unpool(v, sw, geo, hw), f"{what}: unpool")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("layout", ("channels_last", "transposed", "sliced", "mixed", "3d"))
def test_unpool_layouts(target, layout):
    for (geo, ceil), dtype in itertools.product(
        [(geometry(2), True), (geometry(3, 1, 1), False), (geometry(3, 2, 1, 2), True)],
        FLOAT_DTYPES,
    ):
        hw = (9, 8)
        lead = (5,) if layout == "3d" else (2, 5)
        sw, idx = random_valid_switches(lead, hw, geo, ceil)
        y = make_values(sw.shape, dtype, "special")
        if layout in ("channels_last", "transposed", "sliced"):
            y_in, sw_in = arrange(y, layout), arrange(sw, layout)
        elif layout == "mixed":  # y channels_last, switches contiguous
            y_in, sw_in = arrange(y, "channels_last"), sw
        else:
            y_in, sw_in = y, sw
        what = f"{layout} {dtype} {geo}"
        out = target.unpool(y_in, sw_in, *geo, output_size=hw)
        assert_equal_values(out, _reference_unpool(y, sw, geo, hw), what)
        if not overlapping(geo):
            assert_equal_values(out, torch_unpool(y, idx, geo, hw), what)
        if layout in ("channels_last", "mixed"):
            assert is_channels_last(out), f"{what}: out strides {out.stride()}"


def test_unpool_hand_overlap(target):
    """1x3 input, 1x2 windows at stride 1: both windows point at column 1; the last one wins,
    and the backward gives the overwritten window a zero gradient."""
    geo = geometry((1, 2), 1)
    y = torch.tensor([5.0, 7.0]).view(1, 1, 1, 2)
    sw = torch.tensor([1, 0], dtype=torch.uint8).view(1, 1, 1, 2)
    g = torch.tensor([10.0, 20.0, 30.0]).view(1, 1, 1, 3)
    out, gy = target.unpool_grad(y, sw, g, geo, (1, 3))
    assert out.cpu().flatten().tolist() == [0.0, 7.0, 0.0]
    assert gy.cpu().flatten().tolist() == [0.0, 20.0]


# ----------------------------------------------------------------------------- backwards


def _small_int_grad(shape, dtype):
    # small integers: every sum of overlapping windows is exact in every dtype
    return torch.randint(-4, 5, shape).to(dtype)


@pytest.mark.parametrize("case", GEOMETRIES[1::3], ids=geo_id)
def test_pool_backward_matches_torch(target, case):
    geo, ceil = case
    k, s, p, d = geo
    for dtype, kind, layout in itertools.product(
        FLOAT_DTYPES, ("randn", "ties", "special"), ("contiguous", "channels_last")
    ):
        x = arrange(make_values(SIZES[kind], dtype, kind), layout)
        oh, ow = pooled_hw(x.shape[-2:], geo, ceil)
        gy = _small_int_grad((*x.shape[:2], oh, ow), dtype)
        y, sw, gx = target.pool_grad(x, gy, geo, ceil)
        xr = x.clone().requires_grad_(True)
        ey = F.max_pool2d(xr, k, s, p, d, ceil_mode=ceil)
        (egx,) = torch.autograd.grad(ey, xr, gy)
        what = f"{dtype} {kind} {layout}"
        assert gx.device == target.device and gx.dtype == dtype, what
        assert_identical(y, ey, f"{what}: y")
        assert_equal_values(gx, egx, f"{what}: grad_x")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geo", [geometry(3, 1, 1), geometry(3, 2, 1), geometry(2, 1),
                                 geometry(3, 1, 0, 2)], ids=lambda g: geo_id((g, False)))
def test_pool_backward_16bit_sums_rounded_once(target, dtype, geo):
    """Where windows overlap, a position's gradient is a sum. In float16 and bfloat16 it is
    summed in float32 and rounded once: F.max_pool2d's float32 backward rounded to the dtype.
    (F's own 16-bit CPU backward rounds after every addition, so it can differ in the last
    bits and lies further from the exact sum; randn gradients, not small integers, show it.
    PyTorch's CUDA backward also sums in float32. The reference backend is F, so it rounds
    as F does.)"""
    if target.backend == "reference":
        pytest.skip("the reference backend differentiates F.max_pool2d: F's rounding")
    torch.manual_seed(16)
    k, s, p, d = geo
    for layout in ("contiguous", "channels_last"):
        x = arrange(torch.randn(2, 5, 17, 23).to(dtype), layout)
        oh, ow = pooled_hw(x.shape[-2:], geo, False)
        gy = torch.randn(2, 5, oh, ow).to(dtype)
        _, _, gx = target.pool_grad(x, gy, geo, False)
        xr = x.float().requires_grad_(True)
        (g32,) = torch.autograd.grad(F.max_pool2d(xr, k, s, p, d), xr, gy.float())
        assert_equal_values(gx, g32.to(dtype), f"{dtype} {layout}: grad_x")


@pytest.mark.parametrize("channels", [16, 33, 64, 80])
def test_pool_backward_channels_last_channel_vectors(target, channels):
    """Channels-last pool backward with overlap and a vector of channels or more: windows
    inside the map go a vector of channels at a time, tap by tap (the rest, and the last
    channels, one by one); 16-bit sums go through a ring of float rows that are rounded out as
    the windows move down. Stride 1 and 2, windows in the padding, rows no window reaches
    (1x3 windows at row stride 2), a dilated window taller than the map (the ring holds every
    row), one image split into runs of channels over two threads and three whole images;
    randn gradients with NaN and inf planted, against F's backward (in float32 for 16-bit
    types, rounded once); a switch past its window inside the map is found."""
    if target.backend == "reference":
        pytest.skip("the reference backend differentiates F.max_pool2d: F's rounding")
    torch.manual_seed(channels)
    geos = [(geometry(3, 1, 1), (9, 11)), (geometry(3, 2, 1), (12, 13)),
            (geometry((1, 3), (2, 1)), (9, 10)), (geometry(3, 1, 0, 3), (7, 12))]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for (geo, hw), dtype, n in itertools.product(geos, FLOAT_DTYPES, (1, 3)):
            k, s, p, d = geo
            x = arrange(torch.randn(n, channels, *hw, dtype=torch.float64).to(dtype),
                        "channels_last")
            oh, ow = pooled_hw(hw, geo, False)
            gy = torch.randn(n, channels, oh, ow, dtype=torch.float64)
            gy.view(-1)[::37] = float("nan")
            gy.view(-1)[5::41] = float("inf")
            gy = arrange(gy.to(dtype), "channels_last")
            _, _, gx = target.pool_grad(x, gy, geo, False)
            wide = dtype if dtype in (torch.float32, torch.float64) else torch.float32
            xr = x.to(wide).requires_grad_(True)
            (egx,) = torch.autograd.grad(F.max_pool2d(xr, k, s, p, d), xr, gy.to(wide))
            assert is_channels_last(gx), f"{dtype} {geo} N={n}"
            assert_equal_values(gx, egx.to(dtype), f"{dtype} {geo} N={n}")
        geo, hw = geos[1]
        x = arrange(torch.randn(1, channels, *hw), "channels_last")
        _, sw = target.pool(x, *geo)
        bad = sw.clone()
        bad[0, channels - 3, 2, 2] = 9  # a window inside the map, in a vector of channels
        gy = torch.ones(bad.shape).contiguous(memory_format=torch.channels_last)
        with pytest.raises(RuntimeError, match="(?i)switch"):
            target.raw("max_pool2d_with_switches_backward", gy, target.put(bad), list(hw),
                       *geo)
    finally:
        torch.set_num_threads(threads)


def test_pool_backward_hand_overlap(target):
    # [1, 3, 2], 1x2 windows at stride 1: both maxima are column 1; its gradient is the sum.
    x = torch.tensor([1.0, 3.0, 2.0]).view(1, 1, 1, 3)
    gy = torch.tensor([10.0, 20.0]).view(1, 1, 1, 2)
    y, sw, gx = target.pool_grad(x, gy, geometry((1, 2), 1))
    assert sw.cpu().flatten().tolist() == [1, 0]
    assert gx.cpu().flatten().tolist() == [0.0, 30.0, 0.0]


@pytest.mark.parametrize("case", GEOMETRIES[2::3], ids=geo_id)
def test_unpool_backward_matches_reference(target, case):
    geo, ceil = case
    for dtype, layout in itertools.product(FLOAT_DTYPES, ("contiguous", "channels_last")):
        lead, hw = (2, 3), (9, 10)
        sw, idx = random_valid_switches(lead, hw, geo, ceil)
        y = make_values(sw.shape, dtype, "randn")
        g = make_values((*lead, *hw), dtype, "randn")
        y_in, sw_in, g_in = (arrange(t, layout) for t in (y, sw, g))
        out, gy = target.unpool_grad(y_in, sw_in, g_in, geo, hw)
        yr = y.clone().requires_grad_(True)
        eout = _reference_unpool(yr, sw, geo, hw)
        (egy,) = torch.autograd.grad(eout, yr, g)
        what = f"{dtype} {layout}"
        assert gy.device == target.device and gy.dtype == dtype, what
        assert_equal_values(out, eout, f"{what}: out")
        assert_equal_values(gy, egy, f"{what}: grad_y")
        if not overlapping(geo):  # then F's gather-everything backward agrees
            yr = y.clone().requires_grad_(True)
            fout = F.max_unpool2d(yr, idx, effective(geo), geo[1], geo[2], output_size=hw)
            (fgy,) = torch.autograd.grad(fout, yr, g)
            assert_equal_values(gy, fgy, f"{what}: grad_y vs F")


@pytest.mark.parametrize("channels", [2, 3, 7, 15, 16, 31])
def test_unpool_backward_channels_last_few_channels(target, channels):
    """Channels-last unpool backward without overlap: fewer channels than a vector (an image's
    3) go element by element, rows of pooled pixels in parallel; windows inside the map and
    windows in the padding; special values (signed zeros, infinities, NaNs); a switch past its
    window or one naming padding, inside the map or at its border, is found."""
    geos = [geometry(2), geometry(3, 3, 1), geometry((2, 3), (3, 4), (1, 1)), geometry(2, 3, 0, 2)]
    for geo, dtype in itertools.product(geos, FLOAT_DTYPES):
        hw = (13, 17)
        sw, idx = random_valid_switches((3, channels), hw, geo, False)
        y = make_values(sw.shape, dtype, "randn")
        g = make_values((3, channels, *hw), dtype, "special")
        y_in, sw_in, g_in = (arrange(t, "channels_last") for t in (y, sw, g))
        gy = target.raw("max_unpool2d_with_switches_backward", g_in, sw_in, *geo)
        assert is_channels_last(gy) or channels == 1
        expect = torch.gather(g.flatten(-2), -1, idx.flatten(-2)).view(sw.shape)
        assert_identical(gy, expect, f"{dtype} {geo}")
    geo = geometry(3, 3, 1)
    sw, _ = random_valid_switches((2, channels), (13, 17), geo, False)
    g = arrange(torch.randn(2, channels, 13, 17), "channels_last")
    for where, value in (((1, channels - 1, 2, 2), 9), ((0, 0, 2, 3), 200),  # past: inside
                         ((1, channels // 2, 0, 0), 0), ((0, channels - 1, 4, 5), 250)):  # border
        bad = sw.clone()
        bad[where] = value
        with pytest.raises(RuntimeError, match="(?i)switch"):
            target.raw("max_unpool2d_with_switches_backward", g, arrange(bad, "channels_last"),
                       *geo)


@pytest.mark.parametrize("channels", [1, 2, 3, 5, 8])
def test_unpool_backward_channels_last_few_channels_overlap(target, channels):
    """Channels-last unpool backward with overlap and few channels: AVX-512 builds take such
    maps a channel at a time, its switches copied into a plane of their own, and keep a
    window's value only where no later window names the same pixel. Maps of more than one
    chunk of 4096 windows; stride 1 and 2, dilation; special values of the gradient copied
    bit for bit; a switch past its window, or one naming the padding, in a later chunk or
    channel, is found."""
    geos = [(geometry(3, 1, 1), (70, 71)), (geometry(3, 2, 1), (23, 29)),
            (geometry((2, 3), (1, 2), (1, 1), 2), (40, 50))]
    for (geo, hw), dtype in itertools.product(geos, FLOAT_DTYPES):
        sw, _ = random_valid_switches((2, channels), hw, geo, False)
        y = make_values(sw.shape, dtype, "randn")
        g = make_values((2, channels, *hw), dtype, "special")
        y_in, sw_in, g_in = (arrange(t, "channels_last") for t in (y, sw, g))
        _, gy = target.unpool_grad(y_in, sw_in, g_in, geo, hw)
        yr = y.clone().requires_grad_(True)
        (egy,) = torch.autograd.grad(_reference_unpool(yr, sw, geo, hw), yr, g)
        if target.backend != "reference":  # (autograd of the reference's scatter: NCHW)
            assert is_channels_last(gy) or channels == 1, f"{dtype} {geo}"
        assert_identical(gy, egy, f"{dtype} {geo} C={channels}")
    geo, hw = geos[0]
    sw, _ = random_valid_switches((2, channels), hw, geo, False)
    g = arrange(torch.randn(2, channels, *hw), "channels_last")
    for where, value in (((1, channels - 1, 60, 30), 9),  # past its window, a later chunk
                         ((0, channels // 2, 0, 5), 1)):  # the padding above the map
        bad = sw.clone()
        bad[where] = value
        with pytest.raises(RuntimeError, match="(?i)switch"):
            target.raw("max_unpool2d_with_switches_backward", g, arrange(bad, "channels_last"),
                       *geo)


@pytest.mark.parametrize(
    "case, hw",
    [((geometry(3, 1, 1), False), (70, 71)), ((geometry(2, 1), False), (70, 71)),
     ((geometry(3, 2, 1), True), (140, 141)), ((geometry(2, 2, 0, 2), False), (140, 141)),
     ((geometry(5, 1, 2), False), (70, 71)), ((geometry((4, 8), 2, (2, 4)), True), (140, 141))],
    ids=lambda v: geo_id(v) if isinstance(v[0], list) else "x".join(map(str, v)),
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_unpool_and_backward_long_planes(target, case, hw, layout):
    """Maps of more than 4096 windows: the AVX-512 NCHW scatter (unpool) and gather (its
    backward) make their targets 4096 windows at a time, the channels-last gather 1024, and
    the gathers compare each window's target with those of the later windows that may share
    it, past the chunk's end too; windows of 25 and 32 taps read their offsets from 32-entry
    tables. Switches of real maxima, so that overlapping windows often share one; 17 channels
    (a partial group of 16 channels-last); the pool backward's sums (small integers: exact);
    a bad switch past the first chunk is still found."""
    geo, ceil = case
    sw, _ = random_valid_switches((1, 17), hw, geo, ceil)
    assert sw.shape[-2] * sw.shape[-1] > 4096
    for dtype in FLOAT_DTYPES:
        y = make_values(sw.shape, dtype, "randn")
        g = make_values((1, 17, *hw), dtype, "randn")
        y_in, sw_in, g_in = (arrange(t, layout) for t in (y, sw, g))
        out, gy = target.unpool_grad(y_in, sw_in, g_in, geo, hw)
        yr = y.clone().requires_grad_(True)
        eout = _reference_unpool(yr, sw, geo, hw)
        (egy,) = torch.autograd.grad(eout, yr, g)
        assert_equal_values(out, eout, f"{dtype} {layout}: out")
        assert_equal_values(gy, egy, f"{dtype} {layout}: grad_y")
        small = _small_int_grad(sw.shape, dtype)
        gx = target.raw("max_pool2d_with_switches_backward", arrange(small, layout), sw_in,
                        list(hw), *geo)
        idx = dk.switches_to_indices(sw, hw, *geo)
        egx = torch.zeros(*sw.shape[:2], hw[0] * hw[1], dtype=torch.float64).scatter_add_(
            -1, idx.flatten(-2), small.double().flatten(-2))
        assert_equal_values(gx, egx.view(*sw.shape[:2], *hw).to(dtype), f"{dtype} {layout}: gx")
    for channel in (1, 16):
        bad = sw.clone()
        bad[0, channel].view(-1)[4500] = 200
        y_in, bad_in, g_in = (arrange(t, layout) for t in (y, bad, g))
        with pytest.raises((RuntimeError, ValueError), match="(?i)switch"):
            target.unpool_grad(y_in, bad_in, g_in, geo, hw)
        for name, args in (("max_unpool2d_with_switches_backward", (g_in, bad_in, *geo)),
                           ("max_pool2d_with_switches_backward", (y_in, bad_in, list(hw), *geo))):
            with pytest.raises(RuntimeError, match="(?i)switch"):
                target.raw(name, *args)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_pool_backward_without_overlap_bits(target, dtype, layout):
    """Without overlap a position's gradient is one value stored at once (v + 0): the bits
    of F.max_pool2d's backward, which adds into +0 (so -0 comes out +0), NaNs included."""
    if target.emulated:
        pytest.skip("CPU kernels")
    x = arrange(torch.randn(2, 20, 9, 12).to(dtype), layout)
    for geo in (geometry(3), geometry(2, 2, 1), geometry((2, 3), (3, 4), (1, 1))):
        k, s, p, d = geo
        xr = x.clone().requires_grad_(True)
        ey = F.max_pool2d(xr, k, s, p, d)
        gy = torch.full_like(ey, -0.0)
        gy[..., ::2, :] = 1.5
        gy[0, 0, 0, 1] = float("nan")
        (egx,) = torch.autograd.grad(ey, xr, gy)
        _, sw = target.pool(x, k, s, p, d)
        gx = target.raw("max_pool2d_with_switches_backward", gy, sw, [9, 12], *geo)
        it = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
        assert torch.equal(gx.cpu().contiguous().view(it), egx.contiguous().view(it)), f"{geo}"


@pytest.mark.parametrize("channels", [64, 67, 128, 147])
def test_pool_backward_channels_last_many_channels(target, channels):
    """Channels-last pool backward of overlapping windows with at least a block of four
    vectors of channels runs as a gather over each input pixel's windows (AVX2, AVX-512):
    the sums of F.max_pool2d's backward (small integers: exact in every dtype), channel
    counts with a tail; a switch past its window, or one naming padding, is still found."""
    for geo, dtype in itertools.product(
        [geometry(3, 2, 1), geometry(3, 1, 1), geometry(2, 1), geometry((3, 2), (2, 1), 1, 2)],
        FLOAT_DTYPES,
    ):
        k, s, p, d = geo
        x = arrange(make_values((2, channels, 9, 10), dtype, "ties"), "channels_last")
        oh, ow = pooled_hw(x.shape[-2:], geo, False)
        gy = arrange(_small_int_grad((2, channels, oh, ow), dtype), "channels_last")
        y, sw, gx = target.pool_grad(x, gy, geo, False)
        xr = x.clone().requires_grad_(True)
        (egx,) = torch.autograd.grad(F.max_pool2d(xr, k, s, p, d), xr, gy)
        assert_equal_values(gx, egx, f"{dtype} {geo}")
    geo = geometry(3, 2, 1)
    x = arrange(torch.randn(1, channels, 9, 10), "channels_last")
    _, sw = target.pool(x, 3, 2, 1)
    gy = torch.randn(sw.shape).contiguous(memory_format=torch.channels_last)
    for where, value in (((0, channels - 1, 2, 2), 9), ((0, 5, 0, 0), 0)):  # past / padding
        bad = sw.cpu().clone()
        bad[where] = value
        with pytest.raises(RuntimeError, match="(?i)switch"):
            target.raw("max_pool2d_with_switches_backward", gy, bad, [9, 10], *geo)
