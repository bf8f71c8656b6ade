"""Trainer state: exact resume, checkpoint rotation, mixed precision."""

from __future__ import annotations

import pytest
import torch

from deconvkernels.data import GTCropDataset, SyntheticScenes
from deconvkernels.models import DeconvNet
from deconvkernels.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def source():
    scenes = SyntheticScenes(10, 64, 2, seed=11)
    return [scenes[i] for i in range(len(scenes))]


class Killed(Exception):
    pass


def _run(source, tmp, ckdir, *, stop_at=None, resume=None, init_seed=0, amp="none"):
    torch.manual_seed(init_seed)
    model = DeconvNet(3, width=1 / 16, input_size=64)
    crops = GTCropDataset(source, resize=72, crop=64, seed=1, progress=False)
    config = TrainConfig(iterations=7, batch_size=4, accumulate=2, lr=0.02, lr_steps=(4,),
                         checkpoint_every=2, keep_last=2, device="cpu", amp=amp)

    def stop(trainer: Trainer) -> None:
        if trainer.step == stop_at:
            raise Killed

    trainer = Trainer(model, crops, config, tmp / "m.jsonl", checkpoint_dir=ckdir,
                      on_step=stop, progress=False)
    if resume is not None:
        trainer.resume(resume)
    try:
        trainer.fit()
    except Killed:
        pass
    return model, trainer


def _weights(model):
    return torch.cat([t.detach().flatten().float() for t in model.state_dict().values()])


def test_resume_is_bit_identical(source, tmp_path):
    """Killed after step 5 (last checkpoint: step 4), resumed from the folder: the same
    weights, buffers and optimiser state as an uninterrupted run, bit for bit. The data
    crosses epoch boundaries (crops per epoch < steps x batches) and the learning rate steps
    at 4, so the data position, sampler epoch and scheduler are all restored."""
    full, full_trainer = _run(source, tmp_path, tmp_path / "a")
    _, killed = _run(source, tmp_path, tmp_path / "b", stop_at=5)
    assert killed.step == 5
    resumed, trainer = _run(source, tmp_path, tmp_path / "b", resume=tmp_path / "b",
                            init_seed=123)  # different init: everything must come from disk
    assert trainer.step == 7 and trainer.epoch == full_trainer.epoch > 0
    assert torch.equal(_weights(resumed), _weights(full))
    m1 = full_trainer.optimizer.state_dict()["state"]
    m2 = trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(m1[k]["momentum_buffer"], m2[k]["momentum_buffer"]) for k in m1)
    # Checkpoint rotation: the last two remain (steps 6 and 7).
    assert sorted(p.name for p in (tmp_path / "a").glob("step-*.pt")) == [
        "step-0000006.pt", "step-0000007.pt"]


def test_resume_errors_name_the_file(source, tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _run(source, tmp_path, tmp_path / "c", resume=tmp_path / "c")
    bad = tmp_path / "c" / "step-0000001.pt"
    bad.write_bytes(b"\x80\x02 truncated")
    with pytest.raises(ValueError, match="step-0000001.pt"):
        _run(source, tmp_path, tmp_path / "c", resume=tmp_path / "c")


def test_bf16_autocast_training(source, tmp_path):
    model, trainer = _run(source, tmp_path, None, amp="bf16")
    assert trainer.step == 7
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match="fp16"):
        Trainer(model, [], TrainConfig(amp="fp16", device="cpu"), tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="int8")


def test_sigkilled_run_resumes_exactly(tmp_path):
    """A real kill: `deconvnet train` in a subprocess gets SIGKILL once a checkpoint exists;
    `--resume` then finishes it, and the weights equal an uninterrupted run's bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from deconvkernels.train import load_checkpoint

    args = ["-m", "deconvkernels", "train", "--data", "synthetic", "--images", "12",
            "--image-size", "64", "--num-classes", "2", "--width", "0.0625", "--input-size",
            "64", "--iterations", "40", "--batch-size", "4", "--accumulate", "1",
            "--lr-steps", "20", "--device", "cpu", "--checkpoint-every", "4", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}

    def run(out, *extra):
        return subprocess.run([sys.executable, *args, "--out", str(out), *extra], env=env,
                              capture_output=True, text=True, timeout=300)

    killed = subprocess.Popen([sys.executable, *args, "--out", str(tmp_path / "k")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "k" / "checkpoints").glob("step-*.pt")):
        assert killed.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "k" / "stage1.pt").exists()  # it really died mid-run
    resumed = run(tmp_path / "k", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step" in resumed.stdout
    full = run(tmp_path / "f")
    assert full.returncode == 0, full.stderr[-3000:]
    a = load_checkpoint(tmp_path / "k" / "stage1.pt")["model"]
    b = load_checkpoint(tmp_path / "f" / "stage1.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b), [k for k in b if not torch.equal(a[k], b[k])]
