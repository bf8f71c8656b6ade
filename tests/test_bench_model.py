"""The model-level benchmark runs end to end on a tiny DeconvNet, in both layouts."""

from __future__ import annotations

import pytest

from deconvkernels import bench_model


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bench_model_tiny(capsys, layout):
    argv = ["--width", "0.0625", "--size", "32", "--repeats", "1", "--dtype", "float32",
            "--no-progress"]
    if layout == "channels_last":
        argv.append("--channels-last")
    assert bench_model.main(argv) == 0
    out = capsys.readouterr().out
    assert ("channels_last" if layout == "channels_last" else "NCHW") in out
    row = next(line for line in out.splitlines() if line.startswith("| float32 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    ext, ref = float(cells[1]), float(cells[2])
    assert ext > 0 and ref > 0
    # both backends keep activations for the backward; ours keeps uint8 switches, not int64
    assert 0 < float(cells[4]) < float(cells[5])

