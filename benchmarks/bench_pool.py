"""pytest-benchmark suites: deconvkernels' pooling ops against PyTorch's, DeconvNet's pool shapes.

Every (device, shape, dtype, layout) configuration gets one benchmark group per case, holding
``ours`` and ``torch`` side by side; the ``copy`` group (``dst.copy_(x)``) is the bandwidth
yardstick. Each benchmark records the bytes its op must move and, for ours, the achieved GB/s
in ``extra_info`` (see ``--benchmark-json``). On a GPU every timed call ends with
``torch.cuda.synchronize()``. Run with ``pytest benchmarks/`` (``--quick`` for a short run);
the options are described in ``benchmarks/conftest.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

import deconvkernels as dk
from deconvkernels import bench


def _run(benchmark: Any, inputs: bench.PoolInputs, case: str, impl: str) -> None:
    """Time ``case`` for ``impl`` in the group ``"<case> <config id>"``."""
    benchmark.group = f"{case} {inputs.config.id}"
    nbytes = bench.bytes_moved(case, inputs)
    benchmark.extra_info.update(case=case, impl=impl, config=inputs.config.id,
                                backend=dk.get_backend())
    if impl == "ours" or case == "copy":  # our op's bytes (PyTorch's indices are int64)
        benchmark.extra_info["bytes_moved"] = nbytes
    if impl == "ours":  # a timing of a wrong result would be no benchmark
        bench.check_same_result(case, inputs)
    fn = bench.synchronized(bench.make_fn(case, impl, inputs), inputs.device)
    benchmark(fn)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and (impl == "ours" or case == "copy"):
        benchmark.extra_info["GB/s"] = round(nbytes / stats.stats.min / 1e9, 2)


@pytest.mark.parametrize("impl", bench.IMPLS)
def test_pool_fwd(benchmark: Any, pool_inputs: bench.PoolInputs, impl: str) -> None:
    """max_pool2d_with_switches vs F.max_pool2d(x, 2, 2, return_indices=True)."""
    _run(benchmark, pool_inputs, "pool_fwd", impl)


@pytest.mark.parametrize("impl", bench.IMPLS)
def test_pool_fwd_bwd(benchmark: Any, pool_inputs: bench.PoolInputs, impl: str) -> None:
    """Pool forward, then autograd.grad(y, x, g) with a fixed upstream gradient g."""
    _run(benchmark, pool_inputs, "pool_fwd_bwd", impl)


@pytest.mark.parametrize("impl", bench.IMPLS)
def test_unpool_fwd(benchmark: Any, pool_inputs: bench.PoolInputs, impl: str) -> None:
    """max_unpool2d_with_switches vs F.max_unpool2d(y, indices, 2, 2, output_size=...)."""
    _run(benchmark, pool_inputs, "unpool_fwd", impl)


@pytest.mark.parametrize("impl", bench.IMPLS)
def test_unpool_fwd_bwd(benchmark: Any, pool_inputs: bench.PoolInputs, impl: str) -> None:
    """Unpool forward, then autograd.grad(out, y, g) with a fixed upstream gradient g."""
    _run(benchmark, pool_inputs, "unpool_fwd_bwd", impl)


def test_copy(benchmark: Any, pool_inputs: bench.PoolInputs) -> None:
    """dst.copy_(x): the bandwidth yardstick (2 x x.nbytes moved)."""
    _run(benchmark, pool_inputs, "copy", "torch")
