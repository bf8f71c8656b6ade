"""Trainer state: exact resume, checkpoint rotation, mixed precision, the log, settings."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from deconvkernels.data import GTCropDataset, SyntheticScenes
from deconvkernels.models import DeconvNet
from deconvkernels.train import TrainConfig, Trainer, read_metrics


@pytest.fixture(scope="module")
def source():
    scenes = SyntheticScenes(10, 64, 2, seed=11)
    return [scenes[i] for i in range(len(scenes))]


class Killed(Exception):
    pass


def _run(source, tmp, ckdir, *, stop_at=None, resume=None, init_seed=0, amp="none",
         log_every=10):
    torch.manual_seed(init_seed)
    model = DeconvNet(3, width=1 / 16, input_size=64)
    crops = GTCropDataset(source, resize=72, crop=64, seed=1, progress=False)
    config = TrainConfig(iterations=7, batch_size=4, accumulate=2, lr=0.02, lr_steps=(4,),
                         checkpoint_every=2, keep_last=2, device="cpu", amp=amp,
                         log_every=log_every)

    def stop(trainer: Trainer) -> None:
        if trainer.step == stop_at:
            raise Killed

    metrics = tmp / f"m-{ckdir.name if ckdir is not None else 'none'}.jsonl"
    trainer = Trainer(model, crops, config, metrics, checkpoint_dir=ckdir,
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
    _, killed = _run(source, tmp_path, tmp_path / "b", stop_at=5, log_every=1)
    assert killed.step == 5
    log = tmp_path / "m-b.jsonl"
    # Another stage's record (e.g. stage 1's before this stage 2's) stays as it is.
    other = {"kind": "train", "stage": "other", "step": 6, "global_step": 6, "loss": 1.0}
    log.write_text(json.dumps(other) + "\n" + log.read_text())
    resumed, trainer = _run(source, tmp_path, tmp_path / "b", resume=tmp_path / "b",
                            init_seed=123,  # different init: everything must come from disk
                            log_every=1)
    # The steps the killed run logged after its last checkpoint (step 4) appear once.
    records = read_metrics(log)
    assert records[0] == other
    assert [r["step"] for r in records[1:]] == [1, 2, 3, 4, 5, 6, 7]
    # A line torn by a kill goes too (else the next record would be appended to it).
    log.write_text(log.read_text() + '{"kind": "tra')
    trainer._truncate_metrics()
    assert log.read_text().splitlines() == [json.dumps(r) for r in records]
    assert trainer.step == 7 and trainer.epoch == full_trainer.epoch > 0
    assert torch.equal(_weights(resumed), _weights(full))
    m1 = full_trainer.optimizer.state_dict()["state"]
    m2 = trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(m1[k]["momentum_buffer"], m2[k]["momentum_buffer"]) for k in m1)
    # Checkpoint rotation: the last two remain (steps 6 and 7).
    assert sorted(p.name for p in (tmp_path / "a").glob("step-*.pt")) == [
        "step-0000006.pt", "step-0000007.pt"]


def _tiny_trainer(source, tmp, **overrides):
    crops = GTCropDataset(source, resize=64, crop=64, seed=1, progress=False)
    settings = dict(iterations=3, batch_size=4, accumulate=1, lr=0.02, lr_steps=(2,),
                    log_every=1, device="cpu")
    stage = overrides.pop("stage", "train")
    torch.manual_seed(0)
    model = DeconvNet(3, width=1 / 16, input_size=64)
    return Trainer(model, crops, TrainConfig(**{**settings, **overrides}), tmp / "m.jsonl",
                   stage=stage, checkpoint_dir=tmp / "ck", progress=False)


def test_logged_lr_is_the_rate_the_step_used(source, tmp_path):
    """lr 0.02, decayed x0.1 at milestone 2: steps 1 and 2 use 0.02, step 3 uses 0.002."""
    _tiny_trainer(source, tmp_path).fit()
    rates = [r["lr"] for r in map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert rates == pytest.approx([0.02, 0.02, 0.002])


def test_resume_refuses_settings_that_change_the_batches(source, tmp_path):
    """World size, batch size, accumulation, seed and stage fix which batches each step sees:
    a difference is an error naming the setting. lr / lr_steps only warn: the checkpoint's
    optimiser and scheduler state wins. Checkpoints without the saved settings still load."""
    trainer = _tiny_trainer(source, tmp_path, iterations=1)
    trainer.fit()
    ckpt_path = tmp_path / "ck" / "step-0000001.pt"
    for change, message in [
        ({"batch_size": 2}, "batch_size 2 differs from the checkpoint's 4"),
        ({"accumulate": 2}, "accumulate 2 differs from the checkpoint's 1"),
        ({"seed": 5}, "seed 5 differs from the checkpoint's 0"),
        ({"stage": "stage 2"}, "stage 'stage 2' differs from the checkpoint's 'train'"),
    ]:
        with pytest.raises(ValueError, match=message):
            _tiny_trainer(source, tmp_path, **change).resume(ckpt_path)
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["trainer"]["world_size"] = 2  # as if written by two torchrun processes
    torch.save(ckpt, tmp_path / "ddp.pt")
    with pytest.raises(ValueError, match=r"number of processes \(world size\) 1 differs .* 2"):
        _tiny_trainer(source, tmp_path).resume(tmp_path / "ddp.pt")

    for change, message in [({"lr": 0.5}, "lr 0.5 differs"),
                            ({"lr_steps": (5,)}, r"lr_steps \[5\] differs")]:
        resumed = _tiny_trainer(source, tmp_path, **change)
        with pytest.warns(UserWarning, match=message + ".*optimizer/scheduler state wins"):
            resumed.resume(ckpt_path)
        assert resumed.step == 1
        assert resumed.optimizer.param_groups[0]["initial_lr"] == 0.02  # the checkpoint's
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same settings: no warning
        _tiny_trainer(source, tmp_path).resume(ckpt_path)

    # A checkpoint from before the settings were saved: nothing to compare, it loads.
    for key in ("world_size", "batch_size", "accumulate", "seed", "lr", "lr_steps"):
        del ckpt["trainer"][key]
    torch.save(ckpt, tmp_path / "old.pt")
    old = _tiny_trainer(source, tmp_path, batch_size=2, lr=0.5)
    old.resume(tmp_path / "old.pt")
    assert old.step == 1


def test_dataset_smaller_than_a_batch_is_reported_by_the_constructor(tmp_path, capsys):
    from deconvkernels.cli import main

    torch.manual_seed(0)
    model = DeconvNet(3, width=1 / 16, input_size=64)
    three = [(torch.zeros(3, 64, 64), torch.zeros(64, 64, dtype=torch.long))] * 3
    with pytest.raises(ValueError, match=r"yields 3 crops, fewer than one batch of "
                                         r"batch_size x processes = 4 x 1 = 4"):
        Trainer(model, three, TrainConfig(batch_size=4, device="cpu"), tmp_path / "m.jsonl")
    # The command line reports it as an error message, not a traceback out of fit().
    args = ["train", "--data", "synthetic", "--images", "1", "--image-size", "64",
            "--num-classes", "2", "--width", "0.0625", "--input-size", "64", "--iterations",
            "1", "--batch-size", "64", "--accumulate", "1", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert "fewer than one batch" in capsys.readouterr().err


def test_train_config_rejects_bad_rates_and_milestones():
    for bad in (float("nan"), float("inf"), 0.0, -0.1):
        with pytest.raises(ValueError, match="lr must be finite and > 0"):
            TrainConfig(lr=bad)
    with pytest.raises(ValueError, match=">= 1"):
        TrainConfig(lr_steps=(0, 10))
    for steps in ((10, 10), (10, 5)):
        with pytest.raises(ValueError, match="strictly increasing"):
            TrainConfig(lr_steps=steps)
    assert TrainConfig(lr_steps=(1, 5)).lr_steps == (1, 5)
    assert TrainConfig(lr_steps=()).lr_steps == ()


def test_calibrate_bn_says_why_it_got_no_batches():
    from torch import nn

    from deconvkernels.train.bn import calibrate_bn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="num_batches is 0, or the data gave fewer crops"):
        calibrate_bn(model, iter([]), progress=False)
    with pytest.raises(ValueError, match="num_batches is 0"):
        calibrate_bn(model, iter([torch.randn(2, 3, 8, 8)]), num_batches=0, progress=False)


def test_nonfinite_streak():
    """The decision behind the loop's non-finite loss check: without a scaler the first NaN is
    an error; with one (fp16) single inf/NaN steps are skipped and the count restarts at
    every finite loss, until MAX_NONFINITE_STEPS in a row."""
    from deconvkernels.train.trainer import MAX_NONFINITE_STEPS, nonfinite_streak

    kw = {"stage": "s", "step": 7}
    with pytest.raises(FloatingPointError, match="s: loss is nan at step 7; lower"):
        nonfinite_streak(float("nan"), 0, scaled=False, **kw)
    assert nonfinite_streak(1.0, 0, scaled=False, **kw) == 0
    streak = 0
    for _ in range(MAX_NONFINITE_STEPS - 1):
        streak = nonfinite_streak(float("inf"), streak, scaled=True, **kw)
    assert streak == MAX_NONFINITE_STEPS - 1
    assert nonfinite_streak(0.5, streak, scaled=True, **kw) == 0
    with pytest.raises(FloatingPointError, match=f"{MAX_NONFINITE_STEPS} steps in a row"):
        nonfinite_streak(float("nan"), streak, scaled=True, **kw)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")  # skipped steps
def test_scaled_training_stops_on_a_loss_that_stays_nan(source, tmp_path, monkeypatch):
    """The fp16 path on the CPU: a gradient scaler (fp16 itself needs CUDA) and a model
    whose loss is always NaN. The scaler skips the steps; the run ends after the limit."""
    import deconvkernels.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "MAX_NONFINITE_STEPS", 3)
    trainer = _tiny_trainer(source, tmp_path, iterations=10, batch_size=2)
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True)
    with torch.no_grad():
        trainer.model.score.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="at step 3 \\(3 steps in a row\\)"):
        trainer.fit()


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
