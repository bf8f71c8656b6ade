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
