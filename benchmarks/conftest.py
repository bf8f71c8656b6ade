"""pytest configuration of the benchmark suites: ``pytest benchmarks/``.

The suites live in ``bench_*.py`` files, which pytest's default ``python_files`` (``test_*.py``)
does not match, so ``pytest tests/`` and a bare ``pytest`` never run them. This conftest
collects them only when ``benchmarks/`` (or a path inside it) is named on the command line, or
pytest is started from inside it; ``pytest benchmarks/bench_pool.py`` works as well.

Options (besides pytest-benchmark's own ``--benchmark-*`` ones):

- ``--quick``: two shapes only (see :data:`deconvkernels.bench.QUICK_SHAPES`) and shorter
  timing; the full grid (five shapes x two dtypes x two layouts) is the default.
- ``--bench-device``: ``auto`` (default: CPU, plus CUDA when a GPU is visible), or a
  comma-separated list of ``cpu``/``cuda``.
- ``--bench-dtype`` (default ``float32,bfloat16``), ``--bench-layout`` (default
  ``nchw,channels_last``), ``--bench-batch`` (default 4).
- ``--cpu-isa``: force a CPU kernel variant (:func:`deconvkernels.set_cpu_isa`).

The machine has few cores, so unless given on the command line (or in ``addopts``), the
pytest-benchmark settings are shortened: ``--benchmark-min-rounds=3``,
``--benchmark-max-time=0.2`` (``--quick``: 2 rounds, 0.05 s), no warm-up rounds beyond
pytest-benchmark's untimed calibration call.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).resolve().parent

try:
    from deconvkernels import bench
except ImportError:  # not installed: run against the source tree next to this folder
    sys.path.insert(0, str(HERE.parent))
    from deconvkernels import bench

# (option dest, flag, full-run value, --quick value)
_BENCHMARK_DEFAULTS: tuple[tuple[str, str, Any, Any], ...] = (
    ("benchmark_min_rounds", "--benchmark-min-rounds", 3, 2),
    ("benchmark_max_time", "--benchmark-max-time", 0.2, 0.05),
    # The calibration call is already an untimed warm-up; more cost minutes on slow ops.
    ("benchmark_warmup", "--benchmark-warmup", False, False),
    (
        "benchmark_columns",
        "--benchmark-columns",
        ["min", "median", "mean", "stddev", "rounds"],
        ["min", "median", "mean", "stddev", "rounds"],
    ),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("deconvkernels benchmarks")
    group.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="benchmarks: two shapes only and shorter timing",
    )
    group.addoption(
        "--bench-device",
        default="auto",
        help="benchmarks: 'auto' (cpu, plus cuda when available) or a list such as cpu,cuda",
    )
    group.addoption(
        "--bench-dtype", default="float32,bfloat16", help="benchmarks: comma-separated dtypes"
    )
    group.addoption(
        "--bench-layout",
        default="nchw,channels_last",
        help="benchmarks: comma-separated layouts (nchw, channels_last)",
    )
    group.addoption("--bench-batch", type=int, default=4, help="benchmarks: batch size")
    group.addoption(
        "--cpu-isa", default=None, help="benchmarks: force a CPU kernel variant, e.g. AVX2"
    )


def _benchmarks_requested(config: pytest.Config) -> bool:
    """True when a command-line path (or the start directory) lies in benchmarks/."""
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = Path(arg.split("::", 1)[0])
        path = (path if path.is_absolute() else base / path).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def _given_flags(config: pytest.Config) -> set[str]:
    """``--long-flag`` names given on the command line, in PYTEST_ADDOPTS or in ``addopts``."""
    args = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))]
    with contextlib.suppress(ValueError):
        args += list(config.getini("addopts"))
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def pytest_configure(config: pytest.Config) -> None:
    # Runs before pytest-benchmark's own pytest_configure (trylast), which reads these options.
    if not _benchmarks_requested(config) or not config.pluginmanager.hasplugin("benchmark"):
        return
    _devices(config)  # a cuda named without a GPU is a usage error before anything runs
    quick = bool(config.getoption("quick", default=False))
    given = _given_flags(config)
    for dest, flag, full, short in _BENCHMARK_DEFAULTS:
        if flag not in given and hasattr(config.option, dest):
            setattr(config.option, dest, short if quick else full)
    isa = config.getoption("cpu_isa", default=None)
    if isa:
        bench.dk.set_cpu_isa(isa)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if not (file_path.name.startswith("bench_") and file_path.suffix == ".py"):
        return None
    if parent.session.isinitpath(file_path):
        return None  # named explicitly: pytest's python plugin collects it already
    if not _benchmarks_requested(parent.config):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if not _benchmarks_requested(config):
        return None
    devices = ",".join(_devices(config))
    info = bench.machine_info("cuda" if "cuda" in devices else "cpu")
    return [f"deconvkernels bench {key}: {value}" for key, value in info.items()]


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _devices(config: pytest.Config) -> list[str]:
    spec = str(config.getoption("bench_device", default="auto"))
    if spec == "auto":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    devices = _csv(spec)
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        # asked for by name: an error, not a run that skips everything and passes
        raise pytest.UsageError("--bench-device names cuda, but CUDA is not available")
    return devices


def bench_configs(config: pytest.Config) -> list[bench.BenchConfig]:
    """The (device, shape, dtype, layout) grid the options ask for."""
    quick = bool(config.getoption("quick", default=False))
    shapes = bench.QUICK_SHAPES if quick else bench.DECONVNET_POOL_SHAPES
    dtypes = _csv(str(config.getoption("bench_dtype", default="float32,bfloat16")))
    layouts = _csv(str(config.getoption("bench_layout", default="nchw,channels_last")))
    batch = int(config.getoption("bench_batch", default=4))
    configs: list[bench.BenchConfig] = []
    for device in _devices(config):
        configs += bench.make_configs(device, dtypes, layouts, batch, shapes)
    return configs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pool_inputs" in metafunc.fixturenames:
        configs = bench_configs(metafunc.config)
        metafunc.parametrize(
            "pool_inputs", configs, ids=[c.id for c in configs], indirect=True, scope="module"
        )


@pytest.fixture(scope="session")
def _settled(request: pytest.FixtureRequest) -> None:
    """Untimed calls on the largest configuration, once per device, before the first
    benchmark (see :func:`deconvkernels.bench.settle`)."""
    quick = bool(request.config.getoption("quick", default=False))
    configs = [
        c
        for c in bench_configs(request.config)
        if not c.device.startswith("cuda") or torch.cuda.is_available()
    ]
    for device in {c.device for c in configs}:
        largest = max((c for c in configs if c.device == device), key=lambda c: c.input_nbytes)
        bench.settle(largest, bench.DEFAULT_SETTLE_S[1 if quick else 0])


@pytest.fixture(scope="module")
def pool_inputs(request: pytest.FixtureRequest, _settled: None) -> bench.PoolInputs:
    """The inputs of one benchmark configuration (one at a time: pytest groups the tests)."""
    config: bench.BenchConfig = request.param
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return bench.PoolInputs(config)
