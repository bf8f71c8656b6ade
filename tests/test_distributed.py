"""Multi-process training: 2 processes (torchrun, gloo, CPU) against 1 on the same batches."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from deconvkernels.cli import main
from deconvkernels.train import load_checkpoint

COMMON = ["--data", "synthetic", "--images", "16", "--image-size", "64", "--num-classes", "2",
          "--width", "0.0625", "--input-size", "64", "--iterations", "3", "--batch-size", "2",
          "--lr", "0.05", "--lr-steps", "--device", "cpu", "--checkpoint-every", "0", "--seed", "3"]


def test_two_processes_match_one_with_accumulation(tmp_path):
    """torchrun --nproc_per_node=2 with batch 2 and one process with batch 2 x accumulate 2
    see the same micro-batches (rank r takes global batches r, r + 2, ...); DDP averages
    the two ranks' gradients as accumulation does, so the weights agree to float rounding.
    (BN running statistics differ by design: each rank keeps its own, rank 0's are saved.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    # --tee 3: each rank's lines come prefixed with its rank, so a failure says whose it was
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--tee", "3", "-m", "deconvkernels.train", *COMMON, "--accumulate", "1",
           "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # One thread, like each torchrun process: with 2-image batches, BN over fc6's 1x1 maps
    # amplifies the last-bit differences of another summation order into visible ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *COMMON, "--accumulate", "2", "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    ddp = load_checkpoint(tmp_path / "ddp" / "stage1.pt")["model"]
    one = load_checkpoint(tmp_path / "one" / "stage1.pt")["model"]
    assert ddp.keys() == one.keys()
    weights = [k for k in one if k.endswith(("weight", "bias"))]
    assert len(weights) > 50
    for k in weights:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, k=k: f"{k}: {m}")
    # The runs really trained: the weights moved from the (seeded) initialisation.
    torch.manual_seed(3)
    from deconvkernels.models import DeconvNet

    init = DeconvNet(3, width=0.0625, input_size=64).state_dict()
    assert sum(not torch.equal(init[k], one[k]) for k in weights) > len(weights) // 2
    # only rank 0 wrote: one log, one final checkpoint
    assert (tmp_path / "ddp" / "metrics.jsonl").read_text().count('"kind": "train"') == 1
