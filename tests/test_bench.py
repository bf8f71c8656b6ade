"""The pool benchmark report (``python -m deconvkernels.bench``) on a tiny grid."""

from __future__ import annotations

import pytest
import torch

from deconvkernels import bench


def test_report_rows_and_text():
    rows = bench.run_report(
        "cpu", ["float32", "bfloat16"], ["nchw", "channels_last"], batch=1,
        shapes=[(3, 8, 10)], repeats=2, warmup=1, min_sample_s=0.0, settle_s=0.01,
        progress=False,
    )
    assert len(rows) == len(bench.CASES) * 4
    for row in rows:
        assert row.ours_s > 0 and row.torch_s > 0 and row.copy_gbps > 0
        assert row.ratio == pytest.approx(row.torch_s / row.ours_s)
        assert len(row.ours_samples) == len(row.torch_samples) == 2
    text = bench.format_report(rows, bench.machine_info("cpu"), {"settle": "0.01 s"})
    assert "geo-mean" in text and "settle 0.01 s" in text


def test_settle_runs_every_case_for_its_time(monkeypatch):
    calls: dict[tuple[str, str], int] = {}
    make_fn = bench.make_fn

    def counting(case, impl, inputs):
        fn = make_fn(case, impl, inputs)

        def call():
            calls[case, impl] = calls.get((case, impl), 0) + 1
            return fn()

        return call

    monkeypatch.setattr(bench, "make_fn", counting)
    config = bench.make_configs("cpu", ["float32"], ["nchw"], 1, [(2, 4, 4)])[0]
    bench.settle(config, 0.05)
    assert set(calls) == {(case, impl) for case in bench.CASES for impl in bench.IMPLS}
    assert min(calls.values()) >= 2  # tiny calls: many rounds in 0.05 s
    calls.clear()
    bench.settle(config, 0.0)
    assert not calls


def test_relu_data_is_nonnegative_and_reported():
    config = bench.make_configs("cpu", ["bfloat16"], ["nchw"], 1, [(3, 8, 10)])[0]
    relu = bench.PoolInputs(config, data="relu")
    assert (relu.x >= 0).all() and (relu.x == 0).any() and not torch.signbit(relu.x).any()
    assert (bench.PoolInputs(config).x < 0).any()
    with pytest.raises(ValueError, match="data"):
        bench.PoolInputs(config, data="ones")
    rows = bench.run_report(
        "cpu", ["bfloat16"], ["nchw"], batch=1, shapes=[(3, 8, 10)], cases=["pool_fwd"],
        repeats=1, warmup=0, min_sample_s=0.0, settle_s=0.0, progress=False, data="relu",
    )
    assert len(rows) == 1 and rows[0].ours_s > 0


def test_a_wrong_result_is_not_timed(monkeypatch):
    """The report and the pytest suite compare ours with PyTorch's once before timing: a
    kernel that returned a wrong result would otherwise be reported as a speed-up."""
    config = bench.make_configs("cpu", ["float32"], ["nchw"], 1, [(3, 8, 10)])[0]
    inputs = bench.PoolInputs(config)
    for case in bench.CASES:
        bench.check_same_result(case, inputs)
    make_fn = bench.make_fn

    def off_by_one(case, impl, inputs):
        fn = make_fn(case, impl, inputs)
        if impl != "ours":
            return fn

        def wrong():
            out = fn()
            if isinstance(out, (tuple, list)):
                return (out[0] + 1, *out[1:])
            return out + 1

        return wrong

    monkeypatch.setattr(bench, "make_fn", off_by_one)
    with pytest.raises(AssertionError, match="differs from PyTorch"):
        bench.run_report("cpu", ["float32"], ["nchw"], batch=1, shapes=[(3, 8, 10)],
                         repeats=1, warmup=0, min_sample_s=0.0, settle_s=0.0, progress=False)


@pytest.mark.parametrize("argv", [["--case", "copy"], ["--layout", "NCHW"], ["--repeats", "0"],
                                  ["--dtype", "float8"]])
def test_report_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*argv, "--quick", "--no-progress"])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_suite_refuses_cuda_it_cannot_have():
    """`--bench-device cuda` without a GPU is a usage error, not a run that skips every
    benchmark and passes."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-q", "--benchmark-disable",
         "--bench-device", "cuda", "-p", "no:cacheprovider"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "CUDA is not available" in proc.stdout + proc.stderr
