"""Benchmark report: deconvkernels' pooling ops against the PyTorch ops they replace.

Run ``python -m deconvkernels.bench`` (``--help`` for the options). Everything is measured in
one process: for every shape, dtype and memory layout each case times our op and PyTorch's
alternately (ABBA order: ours, torch, torch, ours, ...) after a warm-up, and keeps the minimum
(or the median) of the repeats. The report prints, per case, both times, their ratio
(PyTorch / ours: above 1 means we are faster), the bandwidth our op achieves (bytes it must move
/ time) and that bandwidth as a share of a plain tensor copy of the largest input, measured in
the same run (at its start and at its end). On a shared machine the ratios, not the absolute
times, are what count. The output is Markdown, ready for ``benchmarks/RESULTS.md``.

Cases (2x2 / stride-2 pooling, DeconvNet's five pooling shapes):

- ``pool_fwd``: :func:`deconvkernels.max_pool2d_with_switches` against
  ``F.max_pool2d(x, 2, 2, return_indices=True)``. Bytes: read ``x``, write ``y`` and the uint8
  switches.
- ``pool_fwd_bwd``: the same forward plus the backward for a fixed upstream gradient
  (``torch.autograd.grad(y, x, g)``). Bytes: the forward's, plus read ``g`` and the switches,
  write ``grad_x``.
- ``unpool_fwd``: :func:`deconvkernels.max_unpool2d_with_switches` against
  ``F.max_unpool2d(y, indices, 2, 2, output_size=...)``. Bytes: read ``y`` and the switches,
  write the unpooled output.
- ``unpool_fwd_bwd``: the same unpool plus its backward for a fixed upstream gradient of the
  unpooled shape (``torch.autograd.grad(out, y, g)``: a gather at the switches). Bytes: the
  forward's, plus read the gradient and the switches, write ``grad_y``.

The building blocks (shapes, inputs, the timed callables, bytes moved) are shared with the
pytest-benchmark suites in ``benchmarks/``. :func:`run_report` returns the rows, so other
front ends (a CLI) can reuse the measurement.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

import deconvkernels as dk

__all__ = [
    "CASES",
    "DECONVNET_POOL_SHAPES",
    "QUICK_SHAPES",
    "BenchConfig",
    "BenchRow",
    "PoolInputs",
    "bytes_moved",
    "format_report",
    "machine_info",
    "main",
    "make_fn",
    "run_report",
    "synchronized",
]

#: ``(C, H, W)`` of the inputs of DeconvNet's five 2x2/2 max pools (VGG16's pool1..pool5).
DECONVNET_POOL_SHAPES: tuple[tuple[int, int, int], ...] = (
    (64, 224, 224),
    (128, 112, 112),
    (256, 56, 56),
    (512, 28, 28),
    (512, 14, 14),
)
#: The ``--quick`` subset: one shape that lives in DRAM, one that fits the caches.
QUICK_SHAPES: tuple[tuple[int, int, int], ...] = ((128, 112, 112), (512, 14, 14))

#: The timed cases; ``copy`` (``dst.copy_(x)``) is the bandwidth yardstick.
CASES: tuple[str, ...] = ("pool_fwd", "pool_fwd_bwd", "unpool_fwd", "unpool_fwd_bwd")
CASE_TITLES: dict[str, str] = {
    "pool_fwd": "pool forward: max_pool2d_with_switches vs F.max_pool2d(return_indices=True)",
    "pool_fwd_bwd": "pool forward + backward: max_pool2d_with_switches vs F.max_pool2d"
    "(return_indices=True), autograd.grad(y, x, g)",
    "unpool_fwd": "unpool forward: max_unpool2d_with_switches vs F.max_unpool2d",
    "unpool_fwd_bwd": "unpool forward + backward: max_unpool2d_with_switches vs F.max_unpool2d,"
    " autograd.grad(out, y, g)",
    "copy": "copy: dst.copy_(x)",
}
IMPLS: tuple[str, ...] = ("ours", "torch")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
LAYOUTS: dict[str, torch.memory_format] = {
    "nchw": torch.contiguous_format,
    "channels_last": torch.channels_last,
}

KERNEL_SIZE = 2
STRIDE = 2

# Measurement defaults: (full run, --quick).
DEFAULT_REPEATS = (5, 3)
DEFAULT_WARMUP = (2, 1)
DEFAULT_MIN_SAMPLE_S = (0.02, 0.01)
DEFAULT_SETTLE_S = (1.5, 0.3)
_MAX_INNER = 10_000


# ------------------------------------------------------------------ configurations and inputs


@dataclass(frozen=True)
class BenchConfig:
    """One benchmarked input: device, ``(N, C, H, W)``, dtype name and layout name."""

    device: str
    batch: int
    channels: int
    height: int
    width: int
    dtype: str
    layout: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def shape_label(self) -> str:
        """``"4x64x224x224"``."""
        return "x".join(map(str, self.shape))

    @property
    def id(self) -> str:
        """``"cpu-float32-nchw-4x64x224x224"`` (pytest ids, benchmark groups)."""
        return f"{self.device}-{self.dtype}-{self.layout}-{self.shape_label}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def memory_format(self) -> torch.memory_format:
        return LAYOUTS[self.layout]

    @property
    def input_nbytes(self) -> int:
        return math.prod(self.shape) * self.torch_dtype.itemsize


def make_configs(
    device: str,
    dtypes: Sequence[str],
    layouts: Sequence[str],
    batch: int,
    shapes: Sequence[tuple[int, int, int]],
) -> list[BenchConfig]:
    """Every (shape, dtype, layout) combination on ``device``, shapes outermost."""
    for name in dtypes:
        if name not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    for name in layouts:
        if name not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {name!r}")
    return [
        BenchConfig(device, batch, c, h, w, dtype, layout)
        for (c, h, w) in shapes
        for dtype in dtypes
        for layout in layouts
    ]


#: The pooled data: ``randn``, or ``relu``: randn after a ReLU, half of it +0, which is what
#: DeconvNet's pools see (bfloat16 compares such inputs on their raw bits, a faster path).
DATA_KINDS = ("randn", "relu")


class PoolInputs:
    """The tensors every case of one :class:`BenchConfig` needs, made once (``data``: one of
    :data:`DATA_KINDS`).

    ``x`` (no grad) and ``x_grad`` (the same storage, requiring grad) in the config's dtype and
    layout; ``g`` a fixed upstream gradient of the pooled shape; ``y_ours``/``switches`` from our
    pool and ``y_torch``/``indices`` from PyTorch's (the unpool inputs; ``y_ours_grad`` /
    ``y_torch_grad`` the same requiring grad); ``g_unpooled`` a fixed upstream gradient of
    ``x``'s shape; ``copy_dst`` for the copy yardstick.
    """

    def __init__(self, config: BenchConfig, seed: int = 0, data: str = "randn") -> None:
        if data not in DATA_KINDS:
            raise ValueError(f"data must be one of {DATA_KINDS}, got {data!r}")
        self.config = config
        device = torch.device(config.device)
        gen = torch.Generator(device=device).manual_seed(seed)
        x = torch.randn(config.shape, generator=gen, device=device, dtype=torch.float32)
        if data == "relu":
            x.relu_()
        self.x = x.to(config.torch_dtype).contiguous(memory_format=config.memory_format)
        del x
        self.x_grad = self.x.detach().requires_grad_(True)
        self.output_size = tuple(self.x.shape[-2:])
        with torch.no_grad():
            self.y_ours, self.switches = dk.max_pool2d_with_switches(self.x, KERNEL_SIZE, STRIDE)
            self.y_torch, self.indices = F.max_pool2d(
                self.x, KERNEL_SIZE, STRIDE, return_indices=True
            )
        self.g = (
            torch.randn(self.y_torch.shape, generator=gen, device=device, dtype=torch.float32)
            .to(config.torch_dtype)
            .contiguous(memory_format=config.memory_format)
        )
        self.y_ours_grad = self.y_ours.detach().requires_grad_(True)
        self.y_torch_grad = self.y_torch.detach().requires_grad_(True)
        self.g_unpooled = (
            torch.randn(self.x.shape, generator=gen, device=device, dtype=torch.float32)
            .to(config.torch_dtype)
            .contiguous(memory_format=config.memory_format)
        )
        self.copy_dst = torch.empty_like(self.x)

    @property
    def device(self) -> torch.device:
        return self.x.device


def make_fn(case: str, impl: str, inputs: PoolInputs) -> Callable[[], object]:
    """The callable to time for ``case`` (a :data:`CASES` entry or ``"copy"``) and ``impl``.

    ``impl`` is ``"ours"`` or ``"torch"`` (ignored for ``"copy"``). The callable does not
    synchronise a GPU; wrap it with :func:`synchronized` for per-call timing.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    k, s = KERNEL_SIZE, STRIDE
    x, xg, g = inputs.x, inputs.x_grad, inputs.g
    size = inputs.output_size

    if case == "copy":
        src, dst = inputs.x, inputs.copy_dst
        return lambda: dst.copy_(src)
    if case == "pool_fwd":
        if impl == "ours":
            return lambda: dk.max_pool2d_with_switches(x, k, s)
        return lambda: F.max_pool2d(x, k, s, return_indices=True)
    if case == "pool_fwd_bwd":
        if impl == "ours":

            def ours_fwd_bwd() -> object:
                y, _ = dk.max_pool2d_with_switches(xg, k, s)
                return torch.autograd.grad(y, xg, g)

            return ours_fwd_bwd

        def torch_fwd_bwd() -> object:
            y, _ = F.max_pool2d(xg, k, s, return_indices=True)
            return torch.autograd.grad(y, xg, g)

        return torch_fwd_bwd
    if case == "unpool_fwd":
        if impl == "ours":
            y, sw = inputs.y_ours, inputs.switches
            return lambda: dk.max_unpool2d_with_switches(y, sw, k, s, output_size=size)
        y, idx = inputs.y_torch, inputs.indices
        return lambda: F.max_unpool2d(y, idx, k, s, output_size=size)
    if case == "unpool_fwd_bwd":
        gu = inputs.g_unpooled
        if impl == "ours":
            yg, sw = inputs.y_ours_grad, inputs.switches

            def ours_unpool_fwd_bwd() -> object:
                out = dk.max_unpool2d_with_switches(yg, sw, k, s, output_size=size)
                return torch.autograd.grad(out, yg, gu)

            return ours_unpool_fwd_bwd
        yt, idx = inputs.y_torch_grad, inputs.indices

        def torch_unpool_fwd_bwd() -> object:
            out = F.max_unpool2d(yt, idx, k, s, output_size=size)
            return torch.autograd.grad(out, yt, gu)

        return torch_unpool_fwd_bwd
    raise ValueError(f"case must be one of {(*CASES, 'copy')}, got {case!r}")


def check_same_result(case: str, inputs: PoolInputs) -> None:
    """``AssertionError`` unless ours and PyTorch's ``case`` agree on ``inputs``: a timing of a
    wrong result is no benchmark. Pooled values, gradients and unpooled maps must be equal bit
    for bit; the pool's switches must name PyTorch's indices. Called once per configuration,
    outside the timing."""
    if case == "copy":
        return
    ours, theirs = (make_fn(case, impl, inputs)() for impl in IMPLS)
    first = ours[0] if isinstance(ours, (tuple, list)) else ours
    expected = theirs[0] if isinstance(theirs, (tuple, list)) else theirs
    if not torch.equal(first, expected):
        raise AssertionError(f"{case} {inputs.config.id}: ours differs from PyTorch's")
    if case == "pool_fwd":
        indices = dk.switches_to_indices(ours[1], inputs.x.shape[-2:], KERNEL_SIZE, STRIDE)
        if not torch.equal(indices, theirs[1]):
            raise AssertionError(f"{case} {inputs.config.id}: switches name other positions "
                                 "than PyTorch's indices")


def bytes_moved(case: str, inputs: PoolInputs) -> int:
    """Bytes our op must read and write at least (the bandwidth numerator).

    The switches are one byte per pooled value. ``copy`` moves ``2 * x.nbytes``.
    """
    x_b = inputs.x.numel() * inputs.x.element_size()
    y_n = inputs.y_ours.numel()
    y_b = y_n * inputs.y_ours.element_size()
    s_b = y_n  # uint8 switches
    if case == "copy":
        return 2 * x_b
    if case == "pool_fwd":
        return x_b + y_b + s_b
    if case == "pool_fwd_bwd":
        return (x_b + y_b + s_b) + (y_b + s_b + x_b)
    if case == "unpool_fwd":
        return y_b + s_b + x_b
    if case == "unpool_fwd_bwd":
        return (y_b + s_b + x_b) + (x_b + s_b + y_b)
    raise ValueError(f"case must be one of {(*CASES, 'copy')}, got {case!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synchronized(fn: Callable[[], object], device: torch.device | str) -> Callable[[], object]:
    """``fn`` followed by ``torch.cuda.synchronize()`` when ``device`` is a GPU (else ``fn``)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return fn

    def call() -> object:
        out = fn()
        torch.cuda.synchronize(dev)
        return out

    return call


# ----------------------------------------------------------------------------- measurement


def _time_block(fn: Callable[[], object], inner: int, device: torch.device) -> float:
    """Seconds per call of ``inner`` back-to-back calls (GPU synchronised around the block)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / inner


def _calibrate(
    fn: Callable[[], object], device: torch.device, warmup: int, min_sample_s: float
) -> int:
    """Run the warm-up calls; return how many calls make a sample of at least ``min_sample_s``."""
    best = math.inf
    for _ in range(max(1, warmup)):
        best = min(best, _time_block(fn, 1, device))
    return int(min(_MAX_INNER, max(1, math.ceil(min_sample_s / max(best, 1e-9)))))


def measure_abba(
    fns: Sequence[Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int,
    min_sample_s: float,
) -> list[list[float]]:
    """Time several callables alternately: A B, B A, A B, ... (``repeats`` samples each).

    Each sample is the mean time per call over enough calls to last ``min_sample_s``; the
    alternation spreads drifts (clock boost, a neighbour's load) evenly over the callables.
    """
    inners = [_calibrate(fn, device, warmup, min_sample_s) for fn in fns]
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(repeats):
        for i in order if r % 2 == 0 else order[::-1]:
            samples[i].append(_time_block(fns[i], inners[i], device))
    return samples


def _reduce(samples: Sequence[float], stat: str) -> float:
    if stat == "min":
        return min(samples)
    if stat == "median":
        return statistics.median(samples)
    raise ValueError(f"stat must be 'min' or 'median', got {stat!r}")


def bench_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device; RuntimeError if it names CUDA and none is available."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch.cuda.is_available() is False")
    return dev


def geomean(values: Sequence[float]) -> float:
    """Geometric mean (NaN for an empty sequence)."""
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    if not vals:
        return math.nan
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


@dataclass
class BenchRow:
    """One measured case on one input: our time, PyTorch's, and our bandwidth."""

    case: str
    device: str
    shape: tuple[int, int, int, int]
    dtype: str
    layout: str
    stat: str
    ours_s: float
    torch_s: float
    #: PyTorch time / our time: above 1 means we are faster.
    ratio: float
    bytes_moved: int
    #: Our achieved bandwidth, ``bytes_moved / ours_s``, in GB/s (1e9 bytes).
    gbps: float
    #: ``gbps`` as a percentage of the copy yardstick's bandwidth.
    pct_copy: float = math.nan
    #: The copy yardstick: its time, bandwidth, and what was copied.
    copy_s: float = math.nan
    copy_gbps: float = math.nan
    copy_of: str = ""
    ours_samples: list[float] = field(default_factory=list)
    torch_samples: list[float] = field(default_factory=list)

    @property
    def shape_label(self) -> str:
        return "x".join(map(str, self.shape))


class _Progress:
    """tqdm on stderr when installed, else one plain line per step on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.t0 = time.perf_counter()
        self.bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, file=sys.stderr, unit="case", leave=False)

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        if self.bar is not None:
            self.bar.set_description(label)
        elif self.enabled:
            elapsed = time.perf_counter() - self.t0
            print(
                f"[{self.done + 1}/{self.total} {elapsed:6.1f}s] {label}",
                file=sys.stderr,
                flush=True,
            )
        yield
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            elapsed = time.perf_counter() - self.t0
            print(f"done: {self.done} steps in {elapsed:.1f}s", file=sys.stderr, flush=True)


def settle(config: BenchConfig, seconds: float, cases: Sequence[str] = CASES) -> None:
    """Run ``config``'s cases, ours and PyTorch's in turn, for ``seconds`` before any timing.

    A fresh process's first large allocations are slow for a while: on the 2-core Xeon VM
    here the first 5-12 calls of a 4x64x224x224 float32 pool forward + backward took 65-80 ms,
    then 7-9 ms (about a second in all; the pages behind a new 50 MB gradient are slow to
    fault in at first). Without this, the first cases of a report were timed in that phase
    (a float32 NCHW forward + backward reported at 38.8 ms for 7.8 steady).
    """
    if seconds <= 0:
        return
    device = torch.device(config.device)
    inputs = PoolInputs(config)
    fns = [make_fn(case, impl, inputs) for case in cases for impl in IMPLS]
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for fn in fns:
            fn()
        _sync(device)
    del inputs, fns
    gc.collect()


def _measure_copy(
    config: BenchConfig, repeats: int, warmup: int, min_sample_s: float
) -> list[float]:
    """Samples of ``dst.copy_(x)`` for the input of ``config``."""
    device = torch.device(config.device)
    gen = torch.Generator(device=device).manual_seed(1)
    src = torch.randn(config.shape, generator=gen, device=device, dtype=torch.float32)
    src = src.to(config.torch_dtype).contiguous(memory_format=config.memory_format)
    dst = torch.empty_like(src)
    (samples,) = measure_abba([lambda: dst.copy_(src)], device, repeats, warmup, min_sample_s)
    return samples


def run_report(
    device: str = "cpu",
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    layouts: Sequence[str] = ("nchw", "channels_last"),
    batch: int = 4,
    *,
    shapes: Sequence[tuple[int, int, int]] | None = None,
    cases: Sequence[str] = CASES,
    quick: bool = False,
    repeats: int | None = None,
    warmup: int | None = None,
    min_sample_s: float | None = None,
    settle_s: float | None = None,
    stat: str = "min",
    progress: bool = True,
    data: str = "randn",
) -> list[BenchRow]:
    """Measure every case on every (shape, dtype, layout) and return one row per measurement.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` etc. also work).
        dtypes, layouts: names from :data:`DTYPES` and :data:`LAYOUTS`.
        batch: the batch size N of every shape.
        shapes: ``(C, H, W)`` list; default :data:`DECONVNET_POOL_SHAPES`, or
            :data:`QUICK_SHAPES` with ``quick``.
        cases: a subset of :data:`CASES`.
        quick: fewer shapes, repeats and warm-up calls, shorter samples.
        repeats: timed samples per implementation and case (ABBA order).
        warmup: untimed calls per implementation and case before the samples.
        min_sample_s: each sample runs the op back to back for at least this long.
        settle_s: seconds of untimed calls on the largest configuration first (:func:`settle`).
        stat: ``"min"`` or ``"median"`` of the samples, for times, ratios and bandwidths.
        progress: show progress on stderr (tqdm if installed).
        data: the pooled values, one of :data:`DATA_KINDS`.

    Before timing a case on a configuration, ours and PyTorch's results are compared
    (:func:`check_same_result`). The copy yardstick (``dst.copy_(x)`` of the largest input of
    the run, ``2 * x.nbytes`` bytes: the DRAM-bound reference of the goals, so cache-resident
    small shapes can exceed 100% of it) is measured before and after the cases, and the
    statistic is taken over both sets of samples.
    """
    qi = 1 if quick else 0
    repeats = DEFAULT_REPEATS[qi] if repeats is None else repeats
    warmup = DEFAULT_WARMUP[qi] if warmup is None else warmup
    min_sample_s = DEFAULT_MIN_SAMPLE_S[qi] if min_sample_s is None else min_sample_s
    settle_s = DEFAULT_SETTLE_S[qi] if settle_s is None else settle_s
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    _reduce([1.0], stat)  # validates stat
    for case in cases:
        if case not in CASES:
            raise ValueError(f"cases must be drawn from {CASES}, got {case!r}")
    dev = bench_device(device)
    if shapes is None:
        shapes = QUICK_SHAPES if quick else DECONVNET_POOL_SHAPES
    configs = make_configs(str(dev), dtypes, layouts, batch, shapes)
    if not configs:
        return []
    largest = max(configs, key=lambda c: c.input_nbytes)

    bar = _Progress(len(configs) * len(cases) + 3, progress)
    rows: list[BenchRow] = []
    copy_samples: list[float] = []
    try:
        with bar.step(f"settle {largest.id} ({settle_s:g} s)"):
            settle(largest, settle_s, cases)
        with bar.step(f"copy {largest.id} (start)"):
            copy_samples += _measure_copy(largest, repeats, warmup, min_sample_s)
        for config in configs:
            inputs = PoolInputs(config, data=data)
            fns: list[Callable[[], object]] = []
            for case in cases:
                with bar.step(f"{case} {config.id}"):
                    check_same_result(case, inputs)
                    fns = [make_fn(case, impl, inputs) for impl in IMPLS]
                    ours, theirs = measure_abba(fns, dev, repeats, warmup, min_sample_s)
                    ours_s, torch_s = _reduce(ours, stat), _reduce(theirs, stat)
                    nbytes = bytes_moved(case, inputs)
                    rows.append(
                        BenchRow(
                            case=case,
                            device=config.device,
                            shape=config.shape,
                            dtype=config.dtype,
                            layout=config.layout,
                            stat=stat,
                            ours_s=ours_s,
                            torch_s=torch_s,
                            ratio=torch_s / ours_s,
                            bytes_moved=nbytes,
                            gbps=nbytes / ours_s / 1e9,
                            ours_samples=ours,
                            torch_samples=theirs,
                        )
                    )
            del inputs, fns  # the callables hold the tensors too
            gc.collect()
        with bar.step(f"copy {largest.id} (end)"):
            copy_samples += _measure_copy(largest, repeats, warmup, min_sample_s)
    finally:
        bar.close()

    copy_s = _reduce(copy_samples, stat)
    copy_gbps = 2 * largest.input_nbytes / copy_s / 1e9
    copy_of = f"{largest.shape_label} {largest.dtype} {largest.layout}"
    for row in rows:
        row.copy_s = copy_s
        row.copy_gbps = copy_gbps
        row.copy_of = copy_of
        row.pct_copy = 100.0 * row.gbps / copy_gbps
    return rows


# ---------------------------------------------------------------------------------- report


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _build_summary(info: dict[str, Any]) -> str:
    if not info.get("extension"):
        return f"extension not built ({info.get('error', 'unknown error')})"
    parts = []
    for key, value in info.items():
        if key in ("extension", "error"):
            continue
        if isinstance(value, (list, tuple)):
            value = "/".join(map(str, value)) or "-"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def machine_info(device: str = "cpu") -> dict[str, str]:
    """What the numbers were measured on: date, CPU, cores, torch, GPU, deconvkernels build."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    info: dict[str, str] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, {affinity} usable, "
        f"torch threads {torch.get_num_threads()}",
        "platform": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})",
    }
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    build = dk.build_info()
    info["deconvkernels"] = f"{dk.__version__}, backend {dk.get_backend()}"
    info["build"] = _build_summary(build)
    if dk.extension_available():
        isas = "/".join(dk.available_cpu_isas()) or "-"
        info["cpu_isa"] = f"{dk.cpu_isa()} (available: {isas})"
    else:
        info["cpu_isa"] = "n/a (reference backend)"
    # PyTorch's own kernels dispatch on their own level (ATEN_CPU_CAPABILITY forces it): a
    # comparison at --cpu-isa AVX2 is fair only with PyTorch at AVX2 too.
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def _fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _fmt_pct(pct: float) -> str:
    return f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"


def format_report(
    rows: Sequence[BenchRow],
    meta: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
) -> str:
    """The report as Markdown: header, one table per case, a geo-mean summary."""
    out: list[str] = ["# deconvkernels benchmark report", ""]
    for key, value in (meta or {}).items():
        out.append(f"- {key}: {value}")
    if settings:
        out.append("- settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    if rows:
        r0 = rows[0]
        out.append(
            f"- copy yardstick: dst.copy_(x) of {r0.copy_of} ({r0.device}): "
            f"{_fmt_ms(r0.copy_s)} ms, {r0.copy_gbps:.1f} GB/s (bytes = 2 x nbytes)"
        )
    if meta and "backend reference" in meta.get("deconvkernels", ""):
        out.append("- NOTE: the reference backend is in use: 'ours' is the pure-PyTorch twin")
    out.append("")

    cases = list(dict.fromkeys(r.case for r in rows))
    for case in cases:
        case_rows = [r for r in rows if r.case == case]
        out.append(f"## {CASE_TITLES.get(case, case)} ({case_rows[0].device})")
        out.append("")
        out.append(
            "| shape | dtype | layout | ours (ms) | torch (ms) | torch/ours "
            "| GB/s (ours) | % of copy |"
        )
        out.append("|---|---|---|---:|---:|---:|---:|---:|")
        for r in case_rows:
            out.append(
                f"| {r.shape_label} | {r.dtype} | {r.layout} | {_fmt_ms(r.ours_s)} "
                f"| {_fmt_ms(r.torch_s)} | {r.ratio:.2f} | {r.gbps:.1f} | {_fmt_pct(r.pct_copy)} |"
            )
        out.append("")
        out.append(f"geo-mean torch/ours: **{geomean([r.ratio for r in case_rows]):.2f}**")
        out.append("")

    if rows:
        combos = list(dict.fromkeys((r.dtype, r.layout) for r in rows))
        out.append("## Summary: geo-mean of torch/ours (above 1: deconvkernels is faster)")
        out.append("")
        out.append("| case | all | " + " | ".join(f"{d} {lay}" for d, lay in combos) + " |")
        out.append("|---|---:|" + "---:|" * len(combos))
        for case in cases:
            case_rows = [r for r in rows if r.case == case]
            cells = [f"{geomean([r.ratio for r in case_rows]):.2f}"]
            for d, lay in combos:
                sel = [r.ratio for r in case_rows if (r.dtype, r.layout) == (d, lay)]
                cells.append(f"{geomean(sel):.2f}")
            out.append(f"| {case} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deconvkernels.bench",
        description="Time deconvkernels' pooling ops against PyTorch's on DeconvNet's pool shapes "
        "and print a Markdown report (ratios, bandwidth, % of a copy).",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    # (dtypes, layouts and cases are checked against DTYPES, LAYOUTS and CASES in main)
    p.add_argument(
        "--dtype",
        default="float32,bfloat16",
        type=_csv,
        help="comma-separated dtypes (default: float32,bfloat16)",
    )
    p.add_argument(
        "--layout",
        default="nchw,channels_last",
        type=_csv,
        help="comma-separated layouts: nchw, channels_last (default: both)",
    )
    p.add_argument("--batch", type=int, default=4, help="batch size N (default: 4)")
    p.add_argument(
        "--case",
        default=",".join(CASES),
        type=_csv,
        help=f"comma-separated cases (default: {','.join(CASES)})",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed samples per op (default: {DEFAULT_REPEATS[0]}, --quick {DEFAULT_REPEATS[1]})",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help=f"warm-up calls per op (default: {DEFAULT_WARMUP[0]}, --quick {DEFAULT_WARMUP[1]})",
    )
    p.add_argument(
        "--min-sample-ms",
        type=float,
        default=None,
        help="each sample repeats the op for at least this long (default: "
        f"{DEFAULT_MIN_SAMPLE_S[0] * 1e3:g}, --quick {DEFAULT_MIN_SAMPLE_S[1] * 1e3:g})",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=None,
        help="seconds of untimed calls on the largest shape before timing (default: "
        f"{DEFAULT_SETTLE_S[0]:g}, --quick {DEFAULT_SETTLE_S[1]:g})",
    )
    p.add_argument(
        "--stat",
        choices=("min", "median"),
        default="min",
        help="statistic of the samples (default: min)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"shapes {', '.join('x'.join(map(str, s)) for s in QUICK_SHAPES)} only, fewer repeats",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument(
        "--cpu-isa",
        default=None,
        help="force a CPU kernel variant (deconvkernels.set_cpu_isa), e.g. AVX2; set "
        "ATEN_CPU_CAPABILITY to the same level for PyTorch's side",
    )
    p.add_argument(
        "--data",
        choices=DATA_KINDS,
        default="randn",
        help="pooled values: randn, or relu (randn after a ReLU, as DeconvNet's pools see) "
        "(default: randn)",
    )
    p.add_argument("--json", metavar="PATH", default=None, help="also write the rows as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: measure, print the report, optionally write JSON."""
    parser = _parser()
    args = parser.parse_args(argv)
    for name, values, known in (("--dtype", args.dtype, DTYPES), ("--layout", args.layout,
                                LAYOUTS), ("--case", args.case, CASES)):
        bad = [v for v in values if v not in known]
        if bad:
            parser.error(f"{name}: {', '.join(bad)} not among {', '.join(known)}")
    for name, value in (("--repeats", args.repeats), ("--batch", args.batch),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    try:
        bench_device(args.device)
    except (RuntimeError, ValueError) as e:
        parser.error(f"--device: {e}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # The report's header says which backend ran; one note on stderr replaces the warning.
    warnings.filterwarnings("ignore", message="deconvkernels: the compiled extension")
    if dk.get_backend() != "extension":
        print(
            "note: deconvkernels' compiled extension is not in use; 'ours' below is the "
            "pure-PyTorch reference.",
            file=sys.stderr,
        )
    if args.cpu_isa is not None:
        dk.set_cpu_isa(args.cpu_isa)
        torch_level = torch.backends.cpu.get_cpu_capability()
        if not dk.cpu_isa().upper().startswith(torch_level.upper()):
            print(
                f"note: our kernels run at {dk.cpu_isa()}, PyTorch's at {torch_level}; "
                f"ATEN_CPU_CAPABILITY={dk.cpu_isa().lower()} puts PyTorch at the same level.",
                file=sys.stderr,
            )
    min_sample_s = None if args.min_sample_ms is None else args.min_sample_ms / 1e3

    t0 = time.perf_counter()
    rows = run_report(
        args.device,
        args.dtype,
        args.layout,
        args.batch,
        cases=args.case,
        quick=args.quick,
        repeats=args.repeats,
        warmup=args.warmup,
        min_sample_s=min_sample_s,
        settle_s=args.settle_s,
        stat=args.stat,
        progress=not args.no_progress,
        data=args.data,
    )
    elapsed = time.perf_counter() - t0
    qi = 1 if args.quick else 0
    settings = {
        "device": args.device,
        "batch": args.batch,
        "repeats": args.repeats if args.repeats is not None else DEFAULT_REPEATS[qi],
        "warm-up": args.warmup if args.warmup is not None else DEFAULT_WARMUP[qi],
        "min sample": f"{DEFAULT_MIN_SAMPLE_S[qi] if min_sample_s is None else min_sample_s:g} s",
        "settle": f"{args.settle_s if args.settle_s is not None else DEFAULT_SETTLE_S[qi]:g} s",
        "order": "ABBA",
        "statistic": args.stat,
        "data": args.data,
        "quick": args.quick,
        "run time": f"{elapsed:.0f} s",
    }
    meta = machine_info(args.device)
    print(format_report(rows, meta, settings))
    if args.json:
        payload = {
            "meta": meta,
            "settings": settings,
            "rows": [asdict(r) for r in rows],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {len(rows)} rows to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
