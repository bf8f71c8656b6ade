"""Backend switch, environment variable, build info, CPU ISA selection, nn modules."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from dkutil import HAS_EXT, assert_identical, env_allows_no_extension, geometry

import deconvkernels as dk
from deconvkernels import nn as dknn


def test_extension_is_built():
    """CI always builds the extension: its absence is a failure, not a reason to skip."""
    if env_allows_no_extension():
        pytest.skip("DECONVKERNELS_ALLOW_NO_EXTENSION=1")
    assert dk.extension_available(), (
        f"the compiled extension deconvkernels._C is not loaded: {dk._ext.import_error()!r} "
        "(set DECONVKERNELS_ALLOW_NO_EXTENSION=1 to run the suite on the reference backend)"
    )


# ----------------------------------------------------------------------------- use_backend


class _Spy:
    """Counts calls of the wrapped callables by name."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def wrap(self, name, fn):
        def wrapper(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapper


class _OpsSpy:
    """Stands in for ``torch.ops.deconvkernels`` in deconvkernels.ops, counting op lookups."""

    def __init__(self, real, spy):
        self._real, self._spy = real, spy

    def __getattr__(self, name):
        return self._spy.wrap(name, getattr(self._real, name))


class _EagerSpy:
    """Stands in for ``deconvkernels._C`` in deconvkernels.ops: its direct eager entries
    (csrc/eager_calls.cpp) counted under the names of the ops they run."""

    OPS = {"max_pool2d_eager": "max_pool2d_with_switches",
           "max_unpool2d_eager": "max_unpool2d_with_switches"}

    def __init__(self, real, spy):
        self._real, self._spy = real, spy

    def __getattr__(self, name):
        fn = getattr(self._real, name)
        return self._spy.wrap(self.OPS[name], fn) if name in self.OPS else fn


PUBLIC = (
    "max_pool2d_with_switches",
    "max_unpool2d_with_switches",
    "switches_to_indices",
    "indices_to_switches",
)


@pytest.fixture
def spies(monkeypatch):
    """(reference spy, extension spy): calls of each public op's implementation."""
    ref, ext = _Spy(), _Spy()
    for name in PUBLIC:
        monkeypatch.setattr(dk.reference, name, ref.wrap(name, getattr(dk.reference, name)))
    if HAS_EXT:
        monkeypatch.setattr(dk.ops, "_ops", _OpsSpy(dk.ops._ops, ext))
        monkeypatch.setattr(dk.ops, "_C", _EagerSpy(dk.ops._C, ext))
    return ref, ext


def _call_every_op():
    x = torch.randn(2, 3, 6, 6)
    y, sw = dk.max_pool2d_with_switches(x, 2)
    dk.max_unpool2d_with_switches(y, sw, 2)
    idx = dk.switches_to_indices(sw, (6, 6), 2)
    dk.indices_to_switches(idx, (6, 6), 2)
    pool, unpool = dknn.MaxPool2dWithSwitches(2), dknn.MaxUnpool2dWithSwitches(2)
    unpool(*pool(x))


def test_use_backend_reference_takes_the_reference_path(spies):
    ref, ext = spies
    with dk.use_backend("reference"):
        assert dk.get_backend() == "reference"
        _call_every_op()
    # (the reference ops also call each other, so only the entry points are counted exactly)
    assert set(ref.calls) == set(PUBLIC)
    assert ref.calls["max_pool2d_with_switches"] == 2
    assert ref.calls["max_unpool2d_with_switches"] == 2
    assert ext.calls == {}


def test_use_backend_extension_takes_the_extension_path(spies):
    ref, ext = spies
    with dk.use_backend("extension"):
        _call_every_op()
        backend = dk.get_backend()
    if HAS_EXT:
        assert backend == "extension"
        assert ref.calls == {}
        assert ext.calls == {
            "max_pool2d_with_switches": 2,
            "max_unpool2d_with_switches": 2,
            "switches_to_indices": 1,
            "indices_to_switches": 1,
        }
    else:  # falls back to the reference
        assert backend == "reference"
        assert ref.calls["max_pool2d_with_switches"] == 2


def test_use_backend_restores_and_nests():
    before = dk.get_backend()
    with dk.use_backend("reference"):
        with dk.use_backend("extension"):
            assert dk.get_backend() == ("extension" if HAS_EXT else "reference")
        assert dk.get_backend() == "reference"
    assert dk.get_backend() == before
    with pytest.raises(KeyError):
        with dk.use_backend("reference"):
            raise KeyError("boom")
    assert dk.get_backend() == before


def test_use_backend_is_per_thread():
    """A use_backend block holds for its own thread only, and overlapping blocks in two
    threads that exit out of order leave nothing behind (the process-wide choice stays)."""
    import threading

    before = dk.get_backend()
    entered, a_exit, b_entered, b_exit = (threading.Event() for _ in range(4))
    seen = {}

    def thread_a():
        with dk.use_backend("reference"):
            seen["a inside"] = dk.get_backend()
            entered.set()
            a_exit.wait(10)
        seen["a after"] = dk.get_backend()

    def thread_b():
        entered.wait(10)
        seen["b before"] = dk.get_backend()
        with dk.use_backend("extension"):
            b_entered.set()
            b_exit.wait(10)

    a, b = threading.Thread(target=thread_a), threading.Thread(target=thread_b)
    a.start()
    b.start()
    b_entered.wait(10)
    seen["main"] = dk.get_backend()
    a_exit.set()  # A leaves first, then B: the order a module-level variable got wrong
    a.join(10)
    b_exit.set()
    b.join(10)
    assert seen == {"a inside": "reference", "b before": before, "main": before,
                    "a after": before}
    assert dk.get_backend() == before
    # set_backend is process-wide, and a use_backend block still wins inside it
    dk.set_backend("reference")
    try:
        with dk.use_backend("extension"):
            assert dk.get_backend() == ("extension" if HAS_EXT else "reference")
        other = []
        t = threading.Thread(target=lambda: other.append(dk.get_backend()))
        t.start()
        t.join(10)
        assert other == ["reference"]
    finally:
        dk.set_backend(before)


@pytest.mark.parametrize("name", ["cuda", "Reference", "", None, "extension "])
def test_invalid_backend_name(name):
    before = dk.get_backend()
    with pytest.raises(ValueError, match="backend"):
        with dk.use_backend(name):
            pass
    with pytest.raises(ValueError, match="backend"):
        dk.set_backend(name)
    assert dk.get_backend() == before


def _run_python(code: str, backend_env: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("DECONVKERNELS_BACKEND", None)
    if backend_env is not None:
        env["DECONVKERNELS_BACKEND"] = backend_env
    root = str(Path(dk.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=120,
    )


_PROBE = """
    import json, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import torch
        import deconvkernels as dk
        calls = []
        real = dk.reference.max_pool2d_with_switches
        dk.reference.max_pool2d_with_switches = lambda *a: calls.append(1) or real(*a)
        x = torch.randn(1, 2, 4, 4)
        dk.max_pool2d_with_switches(x, 2)
        dk.max_pool2d_with_switches(x, 2)
    print(json.dumps({
        "backend": dk.get_backend(),
        "reference_calls": len(calls),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
    }))
"""


@pytest.mark.parametrize("value", ["reference", " Reference\\n"])
def test_env_var_selects_reference(value):
    proc = _run_python(_PROBE, value.replace("\\n", "\n"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"backend": "reference", "reference_calls": 2, "warnings": []}


@pytest.mark.parametrize("value", [None, "extension"])
def test_env_var_default_is_extension(value):
    proc = _run_python(_PROBE, value)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if HAS_EXT:
        assert out == {"backend": "extension", "reference_calls": 0, "warnings": []}
    else:  # the reference, with exactly one warning that says why
        assert out["backend"] == "reference" and out["reference_calls"] == 2
        assert len(out["warnings"]) == 1 and "extension" in out["warnings"][0]


def test_env_var_invalid_is_a_clear_error():
    proc = _run_python("import deconvkernels", "cuda")
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "DECONVKERNELS_BACKEND" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- build info


def test_build_info():
    info = dk.build_info()
    assert info["extension"] is dk.extension_available()
    assert info["cuda_available"] is torch.cuda.is_available()
    json.dumps(info)  # plain data, printable in CI logs
    if not dk.extension_available():
        assert info["torch_version"] == torch.__version__
        assert "error" in info
        return
    assert info["cpu_isa_selected"] == dk.cpu_isa()
    assert info["torch_version_runtime"] == torch.__version__
    # what was compiled: CUDA or not, its archs, the CPU ISA variants, the torch built against
    for key in ("cuda_compiled", "cuda_archs", "cpu_isas_compiled", "torch_version"):
        assert key in info, f"build_info() lacks {key!r}: {info}"
    assert info["torch_version"] == torch.__version__, "built against another torch"
    compiled = info["cpu_isas_compiled"]
    compiled = compiled.split(";") if isinstance(compiled, str) else list(compiled)
    assert set(dk.available_cpu_isas()) <= set(compiled)
    info["extension"] = "mutated"
    assert dk.build_info()["extension"] is True  # a fresh dict every call


# ----------------------------------------------------------------------------- CPU ISA

_ISA_ORDER = ["DEFAULT", "AVX2", "AVX512", "AVX512_BF16"]


@pytest.mark.requires_extension
def test_cpu_isas_cover_this_cpu():
    """Every variant up to what this CPU runs is compiled in, so the ISA-parametrised tests
    really run the DEFAULT, AVX2 and AVX-512 kernels here."""
    isas = dk.available_cpu_isas()
    assert isas and isas[0] == "DEFAULT"
    assert set(isas) <= set(_ISA_ORDER)
    capability = torch.backends.cpu.get_cpu_capability()  # ATen's view of this CPU
    if capability in _ISA_ORDER:
        expected = _ISA_ORDER[: _ISA_ORDER.index(capability) + 1]
        assert set(expected) <= set(isas), f"CPU supports {capability}, extension offers {isas}"
    # ATen has no name for AVX512 + the bfloat16 dot product: ask the kernel (Linux)
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read().split()
    except OSError:
        flags = []
    if capability == "AVX512" and "avx512_bf16" in flags:
        assert "AVX512_BF16" in isas, f"CPU has avx512_bf16, extension offers {isas}"


@pytest.mark.requires_extension
def test_set_cpu_isa():
    best = dk.cpu_isa()
    isas = dk.available_cpu_isas()
    assert best == max(isas, key=_ISA_ORDER.index)
    try:
        for name in isas:
            assert dk.set_cpu_isa(name) == name
            assert dk.cpu_isa() == name
            assert dk.build_info()["cpu_isa_selected"] == name
        with pytest.raises(ValueError, match="DEFAULT") as info:
            dk.set_cpu_isa("NEON")
        assert "Exception raised from" not in str(info.value), "C++ backtrace in the message"
        assert dk.cpu_isa() == isas[-1]  # a failed call changes nothing
    finally:
        assert dk.set_cpu_isa(None) == best
    assert dk.cpu_isa() == best


def test_cpu_isa_functions_without_extension():
    if HAS_EXT:
        assert dk.available_cpu_isas()
        return
    assert dk.available_cpu_isas() == []
    with pytest.raises(RuntimeError, match="extension"):
        dk.cpu_isa()
    with pytest.raises(RuntimeError, match="extension"):
        dk.set_cpu_isa("DEFAULT")


# ----------------------------------------------------------------------------- nn modules


def test_pool_module_conventions():
    m = dknn.MaxPool2dWithSwitches(3, padding=1)
    assert isinstance(m, torch.nn.Module)
    assert (m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode) == (
        (3, 3), (3, 3), (1, 1), (1, 1), False,
    )
    assert m.extra_repr() == (
        "kernel_size=(3, 3), stride=(3, 3), padding=(1, 1), dilation=(1, 1), ceil_mode=False"
    )
    assert repr(m) == f"MaxPool2dWithSwitches({m.extra_repr()})"
    m2 = dknn.MaxPool2dWithSwitches((2, 3), stride=(1, 2), padding=(1, 0), dilation=2,
                                    ceil_mode=True)
    assert m2.ceil_mode is True
    assert "kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 2)" in repr(m2)
    assert list(m.parameters()) == [] and list(m.buffers()) == [] and m.state_dict() == {}


def test_unpool_module_conventions():
    m = dknn.MaxUnpool2dWithSwitches(2)
    assert (m.kernel_size, m.stride, m.padding, m.dilation) == ((2, 2), (2, 2), (0, 0), (1, 1))
    assert repr(m) == (
        "MaxUnpool2dWithSwitches(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), "
        "dilation=(1, 1))"
    )
    assert list(m.parameters()) == [] and m.state_dict() == {}


@pytest.mark.parametrize("args, name", [
    (dict(kernel_size=0), "kernel_size"),
    (dict(kernel_size=16), "kernel_size"),
    (dict(kernel_size=2, stride=0), "stride"),
    (dict(kernel_size=2, padding=2), "padding"),
    (dict(kernel_size=2, padding=-1), "padding"),
    (dict(kernel_size=2, dilation=0), "dilation"),
    (dict(kernel_size=(2, 2, 2)), "kernel_size"),
])
def test_modules_validate_at_construction(args, name):
    with pytest.raises(ValueError, match=name):
        dknn.MaxPool2dWithSwitches(**args)
    with pytest.raises(ValueError, match=name):
        dknn.MaxUnpool2dWithSwitches(**args)


def test_modules_match_functional():
    geo = geometry(3, 2, 1)
    pool = dknn.MaxPool2dWithSwitches(3, 2, 1, ceil_mode=True)
    unpool = dknn.MaxUnpool2dWithSwitches(3, 2, 1)
    x = torch.randn(2, 3, 9, 8).contiguous(memory_format=torch.channels_last)
    y, sw = pool(x)
    ey, esw = dk.max_pool2d_with_switches(x, *geo, True)
    assert_identical(y, ey, "y")
    assert_identical(sw, esw, "switches")
    out = unpool(y, sw, output_size=x.shape)
    assert_identical(out, dk.max_unpool2d_with_switches(y, sw, *geo, output_size=(9, 8)), "out")
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    pool.eval()
    assert_identical(pool(x)[0], y, "eval mode")


def test_modules_copy_and_pickle():
    for m in (dknn.MaxPool2dWithSwitches((2, 3), 1, (1, 0), 2, True),
              dknn.MaxUnpool2dWithSwitches((2, 3), 1, (1, 0), 2)):
        for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
            assert type(clone) is type(m) and repr(clone) == repr(m)
    x = torch.randn(1, 2, 5, 6)
    m = dknn.MaxPool2dWithSwitches(2)
    assert_identical(pickle.loads(pickle.dumps(m))(x)[1], m(x)[1], "pickled module")


@pytest.mark.requires_extension
@pytest.mark.parametrize("channels_last", [False, True])
def test_eager_entries_and_when_they_step_aside(monkeypatch, channels_last):
    """Plain eager calls of the pool and the unpool go through the direct entries of
    csrc/eager_calls.cpp (ops._eager) with the results of torch.ops, a gradient to record
    included (C++ nodes, csrc/pool_autograd.cpp); a TorchFunctionMode (it must see the op), a
    tensor subclass (its type must come back) or a functorch transform (C++ autograd nodes are
    not allowed under one) take the torch.ops path instead."""
    from torch.overrides import TorchFunctionMode

    from deconvkernels import ops

    eager = _Spy()
    monkeypatch.setattr(ops, "_C", _EagerSpy(ops._C, eager))
    x = torch.randn(2, 3, 6, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    geo = geometry(2)
    with dk.use_backend("extension"):
        y, sw = dk.max_pool2d_with_switches(x, 2)
        out = dk.max_unpool2d_with_switches(y, sw, 2, output_size=(6, 10))
        assert eager.calls == {"max_pool2d_with_switches": 1, "max_unpool2d_with_switches": 1}
        ey, esw = torch.ops.deconvkernels.max_pool2d_with_switches(x, *geo, False)
        assert_identical(y, ey, "pool")
        assert_identical(sw, esw, "switches")
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
        eout = torch.ops.deconvkernels.max_unpool2d_with_switches(y, sw, [6, 10], *geo)
        assert_identical(out, eout, "unpool")

        eager.calls.clear()
        xr = x.clone().requires_grad_(True)
        yr, _ = dk.max_pool2d_with_switches(xr, 2)
        assert "MaxPool2dWithSwitchesFunction" in yr.grad_fn.name()
        yr.sum().backward()
        assert xr.grad is not None and xr.grad.sum().item() == y.numel()
        assert eager.calls == {"max_pool2d_with_switches": 1}

        eager.calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the op's vmap rule: no per-sample loop warning
            vy = torch.vmap(lambda t: dk.max_pool2d_with_switches(t, 2)[0])(x.unsqueeze(0))
        assert_identical(vy[0], y, "vmap")
        assert eager.calls == {}

        class Seen(TorchFunctionMode):
            def __init__(self) -> None:
                super().__init__()
                self.ops: list[str] = []

            def __torch_function__(self, func, types, args=(), kwargs=None):
                self.ops.append(str(func))
                return func(*args, **(kwargs or {}))

        with Seen() as seen:
            dk.max_pool2d_with_switches(x, 2)
            dk.max_unpool2d_with_switches(y, sw, 2)
        assert "deconvkernels.max_pool2d_with_switches" in seen.ops
        assert "deconvkernels.max_unpool2d_with_switches" in seen.ops

        class Marked(torch.Tensor):
            pass

        ym, _ = dk.max_pool2d_with_switches(x.as_subclass(Marked), 2)
        assert type(ym) is Marked
        assert eager.calls == {}


@pytest.mark.requires_extension
@pytest.mark.parametrize("shape, channels_last", [
    ((2, 3, 8, 8), False), ((2, 3, 8, 8), True), ((2, 3, 2, 2), True), ((2, 1, 8, 8), True),
    ((3, 6, 6), False),
])
def test_reference_outputs_are_dense_in_the_extensions_format(shape, channels_last):
    """The reference unpool (the fallback backend) returns a dense tensor with the
    extension's strides: y's memory format, a 1x1 pooled map of a channels_last input
    included; it was a strided view of a scratch row before."""
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    outs = {}
    w = torch.randn(shape[-3], 2, 3, 3)
    for backend in ("extension", "reference"):
        with dk.use_backend(backend):
            y, s = dk.max_pool2d_with_switches(x, 2)
            u = dk.max_unpool2d_with_switches(y, s, 2)
            z = dk.unpool_deconv2d(y, s, w, None, output_size=None, pool_kernel_size=2)
        outs[backend] = (y, s, u, z)
    def layout(t):  # strides of the dims that have more than one element
        return [st for st, n in zip(t.stride(), t.shape, strict=True) if n > 1]

    for a, b in zip(outs["extension"], outs["reference"], strict=True):
        assert layout(b) == layout(a)
        torch.testing.assert_close(b, a)
    u = outs["reference"][2]
    assert u.is_contiguous() or u.is_contiguous(memory_format=torch.channels_last)


def test_reference_backend_traces_like_the_extension():
    """meta tensors, FakeTensor, torch.compile(fullgraph=True) and torch.export run the
    reference ops too: their switch checks become graph assertions there."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def pool_unpool(x):
        y, s = dk.max_pool2d_with_switches(x, 2)
        return dk.max_unpool2d_with_switches(y, s, 2), dk.switches_to_indices(s, (8, 8), 2)

    class PoolUnpool(torch.nn.Module):
        def forward(self, x):
            return pool_unpool(x)

    x = torch.randn(2, 3, 8, 8)
    with dk.use_backend("reference"):
        expected = pool_unpool(x)
        u, i = pool_unpool(x.to("meta"))
        assert u.shape == (2, 3, 8, 8) and u.device.type == "meta" and i.dtype == torch.int64
        with FakeTensorMode() as mode:
            u, _ = pool_unpool(mode.from_tensor(x))
            assert u.shape == (2, 3, 8, 8)
        torch._dynamo.reset()
        for a, b in zip(torch.compile(pool_unpool, fullgraph=True)(x), expected, strict=True):
            torch.testing.assert_close(a, b)
        exported = torch.export.export(PoolUnpool(), (x,)).module()
        for a, b in zip(exported(x), expected, strict=True):
            torch.testing.assert_close(a, b)
        # eager checks still raise the ValueError
        y, s = dk.max_pool2d_with_switches(x, 2)
        with pytest.raises(ValueError, match="switch"):
            dk.max_unpool2d_with_switches(y, torch.full_like(s, 7), 2)
