"""Fixtures: targets (devices x CPU ISAs), extension gating, seeding.

* ``target``: every place an op can run: ``cpu-<ISA>`` for each CPU kernel variant the
  extension offers on this machine (``set_cpu_isa`` before, ``set_cpu_isa(None)`` after),
  ``cpu-reference`` (the public API on the reference backend), ``cuda-emulated`` (the CUDA
  kernels through the extension's CPU grid emulator; raw ops) and ``cuda`` when a GPU is
  visible. Without the extension there is one plain ``cpu`` target (the
  public API then runs the reference backend) and ``cuda-emulated`` is skipped.
* ``public_target``: the same without ``cuda-emulated`` (autograd, public API).
* ``raw_target``: the same without ``cpu-reference`` (raw torch.ops; needs the extension).
* marker ``requires_extension``: skipped, with the reason, when the extension is not built;
  ``test_backend.py::test_extension_is_built`` is the one test that fails instead.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from dkutil import HAS_EXT, NO_EXT_REASON, Target, all_targets, public_targets

import deconvkernels as dk


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "requires_extension: needs the compiled extension deconvkernels._C"
    )


def pytest_runtest_setup(item):
    if item.get_closest_marker("requires_extension") and not HAS_EXT:
        pytest.skip(NO_EXT_REASON)


def pytest_report_header(config):
    return (
        f"deconvkernels: extension={HAS_EXT} backend={dk.get_backend()} "
        f"cpu_isas={dk.available_cpu_isas()} cuda={torch.cuda.is_available()}"
    )


@pytest.fixture(autouse=True)
def _seed(request):
    """A fixed seed per test (derived from its id), so every failure reproduces."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


_saved_backend: list[str] = []


def _enter(t: Target):
    if t.emulated and not HAS_EXT:
        pytest.skip("cuda-emulated: " + NO_EXT_REASON)
    if t.kind == "cpu" and t.isa is not None:
        assert dk.set_cpu_isa(t.isa) == t.isa
        assert dk.cpu_isa() == t.isa
    if t.backend is not None:
        _saved_backend.append(dk._backend._process_backend)
        dk.set_backend(t.backend)


def _leave(t: Target):
    if t.kind == "cpu" and t.isa is not None:
        dk.set_cpu_isa(None)
    if t.backend is not None:
        dk.set_backend(_saved_backend.pop())


@pytest.fixture(params=all_targets(), ids=lambda t: t.id)
def target(request) -> Target:
    t = request.param
    _enter(t)
    yield t
    _leave(t)


@pytest.fixture(params=public_targets(), ids=lambda t: t.id)
def public_target(request) -> Target:
    t = request.param
    _enter(t)
    yield t
    _leave(t)


@pytest.fixture(params=[t for t in all_targets() if t.backend is None], ids=lambda t: t.id)
def raw_target(request) -> Target:
    """Targets of the raw torch.ops (no reference twin); skipped without the extension."""
    t = request.param
    if not HAS_EXT:
        pytest.skip(NO_EXT_REASON)
    _enter(t)
    yield t
    _leave(t)
