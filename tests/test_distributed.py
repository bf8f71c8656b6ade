"""Multi-process training: 2 processes (torchrun, gloo, CPU) against 1 on the same batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
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

    # The logged loss is the mean over both processes' micro-batches, like the single run's.
    def train_losses(path):
        return [r["loss"] for r in map(json.loads, path.read_text().splitlines())
                if r["kind"] == "train"]

    assert train_losses(tmp_path / "ddp" / "metrics.jsonl") == pytest.approx(
        train_losses(tmp_path / "one" / "metrics.jsonl"), rel=1e-5)


# One DDP process of test_ddp_accumulation_syncs_once_per_step (argv: rank, folder). Its
# clock advances one second per reading, so images/s is the images per logging window.
WORKER = '''
import json, sys
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

torch.set_num_threads(1)
rank, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=2)
import deconvkernels.train.trainer as trainer_module
from deconvkernels.data import GTCropDataset, SyntheticScenes
from deconvkernels.models import DeconvNet
from deconvkernels.train import TrainConfig, Trainer


class Clock:
    t = 0.0

    def perf_counter(self):
        self.t += 1.0
        return self.t


trainer_module.time = Clock()
source = [SyntheticScenes(16, 64, 2, seed=3)[i] for i in range(16)]
crops = GTCropDataset(source, resize=64, crop=64, seed=1, progress=False)
torch.manual_seed(0)
model = DeconvNet(3, width=1 / 16, input_size=64)
config = TrainConfig(iterations=2, batch_size=4, accumulate=2, lr=0.05, lr_steps=(),
                     log_every=1, device="cpu", seed=3)
trainer = Trainer(model, crops, config, f"{out}/m.jsonl", progress=False)
forwards, synced = [0], []
trainer.model.module.register_forward_pre_hook(
    lambda *_: forwards.__setitem__(0, forwards[0] + 1))


def hook(state, bucket):  # the all-reduce of a gradient bucket: after which forward?
    synced.append(forwards[0])
    return allreduce_hook(None, bucket)


trainer.model.register_comm_hook(None, hook)
summary = trainer.fit()
if rank == 0:
    torch.save(model.state_dict(), f"{out}/weights.pt")
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"synced": sorted(set(synced)), "images_per_s": summary["images_per_s"],
               "final_loss": summary["final_loss"]}, f)
dist.destroy_process_group()
'''


def test_ddp_accumulation_syncs_once_per_step(tmp_path):
    """Two processes of batch 4 x accumulate 2 against one of batch 4 x accumulate 4:
    gradients are all-reduced only in each step's last micro-batch (``no_sync`` before), the
    weights agree with the single process, and the log and summary count both processes
    (loss over all micro-batches, images/s of both). Batches of 4, not 2: BN over fc6's 1x1
    maps of 2 images amplifies last-bit differences (a thread count alone moves weights by
    1e-3 after two steps), which would hide the comparison."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # forwards 1-4 are step 1's and step 2's two micro-batches: a sync after the 2nd and 4th
    assert [r["synced"] for r in ranks] == [[2, 4], [2, 4]]
    log = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    # 2 processes x 2 micro-batches x 4 images in each one-second step
    assert [r["images_per_s"] for r in log] == [16.0, 16.0]
    assert ranks[0]["images_per_s"] == pytest.approx(32 / 3)  # 4 clock readings: 3 s
    assert ranks[0]["final_loss"] == ranks[1]["final_loss"] == log[-1]["loss"]

    import deconvkernels.train.trainer as trainer_module
    from deconvkernels.data import GTCropDataset, SyntheticScenes
    from deconvkernels.models import DeconvNet
    from deconvkernels.train import TrainConfig, Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        source = [SyntheticScenes(16, 64, 2, seed=3)[i] for i in range(16)]
        crops = GTCropDataset(source, resize=64, crop=64, seed=1, progress=False)
        torch.manual_seed(0)
        model = DeconvNet(3, width=1 / 16, input_size=64)
        config = TrainConfig(iterations=2, batch_size=4, accumulate=4, lr=0.05, lr_steps=(),
                             log_every=1, device="cpu", seed=3)
        Trainer(model, crops, config, tmp_path / "one.jsonl", progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    assert trainer_module.rank_and_world() == (0, 1)
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    ddp, single = torch.load(tmp_path / "weights.pt", weights_only=True), model.state_dict()
    for k in (k for k in single if k.endswith(("weight", "bias"))):
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, k=k: f"{k}: {m}")
