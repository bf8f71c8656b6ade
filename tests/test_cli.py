"""The command line and the training loop, on tiny settings (seconds)."""

from __future__ import annotations

import contextlib
import json

import cv2
import numpy as np
import pytest
import torch

import deconvkernels as dk
from deconvkernels.cli import main
from deconvkernels.data import GTCropDataset, SyntheticScenes
from deconvkernels.models import DeconvNet
from deconvkernels.train import TrainConfig, Trainer, read_metrics

TINY = ["--data", "synthetic", "--images", "12", "--image-size", "64", "--num-classes", "3"]


@contextlib.contextmanager
def recorded_gt_crops():
    """The keyword arguments of every GTCropDataset the CLI builds inside the block."""
    import deconvkernels.data as data

    made = []

    class RecordingCrops(data.GTCropDataset):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "GTCropDataset", RecordingCrops)
        yield made


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0
    assert len(metrics["per_class_iou"]) == 5 and len(metrics["stages"]) == 2
    assert metrics["held_out_images"] == 16
    assert len(list((out / "predictions").glob("*.png"))) == 16
    for name in ("overlays.png", "loss.png", "deconvnet.pt", "metrics.jsonl"):
        assert (out / name).is_file(), name
    grid = cv2.imread(str(out / "overlays.png"))
    assert grid is not None and grid.shape[1] == 3 * 64 * 3  # image | truth | prediction
    assert "held-out mIoU" in capsys.readouterr().out
    # eval reads the demo's data settings from its checkpoint (demo_config)
    assert main(["eval", "--checkpoint", str(out / "deconvnet.pt"), "--images", "2",
                 "--no-progress", "--device", "cpu"]) == 0


def test_train_eval_segment(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "--out", str(out), "--width", "0.0625", "--input-size", "64",
            "--iterations", "3", "--batch-size", "4", "--accumulate", "2", "--lr-steps", "2",
            "--device", "cpu"]
    assert main(args) == 0
    ckpt = out / "stage1.pt"
    assert ckpt.is_file()
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train][-1] == 3
    assert train[-1]["lr"] == pytest.approx(0.001)  # stepped x0.1 at step 2
    # stage 2 from stage 1's checkpoint, on jittered ground-truth proposals, in its own --out
    # (stage 1's holds its checkpoints and log: refused without --resume / --overwrite)
    stage2 = ["train", *TINY, "--stage", "2", "--init-checkpoint", str(ckpt), "--proposals",
              "jittered-gt", "--iterations", "2", "--batch-size", "4", "--accumulate", "1",
              "--device", "cpu", "--checkpoint-every", "1"]
    assert main([*stage2, "--out", str(out)]) == 2
    assert "holds an earlier run" in capsys.readouterr().err
    out2 = tmp_path / "run2"
    assert main([*stage2, "--out", str(out2)]) == 0
    assert (out2 / "stage2.pt").is_file()
    result = tmp_path / "eval.json"
    assert main(["eval", *TINY, "--checkpoint", str(out2 / "stage2.pt"), "--json", str(result),
                 "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads(result.read_text())
    names = SyntheticScenes(1, 8, 3).class_names
    assert set(summary["per_class_iou"]) == set(names) and names[0] == "background"
    assert "mean IoU" in capsys.readouterr().out
    image = SyntheticScenes(1, (70, 90), 3, seed=5)[0].image
    cv2.imwrite(str(tmp_path / "in.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert main(["segment", "--checkpoint", str(out2 / "stage2.pt"), str(tmp_path / "in.png"),
                 "--out", str(tmp_path / "seg"), "--device", "cpu"]) == 0
    label = cv2.imread(str(tmp_path / "seg" / "in.png"), cv2.IMREAD_UNCHANGED)
    assert label is not None and label.shape[:2] == (70, 90)
    assert (tmp_path / "seg" / "in_overlay.jpg").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--checkpoint", "/nonexistent/x.pt"], "checkpoint not found"),
        (["train", "--data", "/nonexistent/voc", "--out", "o"], "no such folder"),
        (["segment", "--checkpoint", "/nonexistent/x.pt", "a.jpg"], "checkpoint not found"),
        (["train", "--out", "o", "--stage", "2", "--init-checkpoint", "/nonexistent/s1.pt"],
         "--init-checkpoint: checkpoint not found"),
    ],
)
def test_clear_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_option_values(tmp_path, capsys):
    assert main(["train", *TINY, "--out", str(tmp_path), "--iterations", "0"]) == 2
    assert "iterations" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", str(tmp_path), "--input-size", "50"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "unet", "--out", str(tmp_path)])


def test_segment_unreadable_image(tmp_path, capsys):
    from deconvkernels.train import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.pt", DeconvNet(3, width=1 / 16, input_size=64))
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    assert main(["segment", "--checkpoint", ckpt, str(tmp_path / "bad.jpg"),
                 "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "bad.jpg" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["build"] == dk.build_info()


def test_trainer_learns(tmp_path):
    """A few dozen steps on a tiny problem lower the loss: the loop really optimises."""
    source = [SyntheticScenes(24, 64, 2, seed=3)[i] for i in range(24)]
    crops = GTCropDataset(source, resize=64, crop=64, enlarge=3.0, seed=0, progress=False)
    model = DeconvNet(3, width=1 / 16, input_size=64)
    config = TrainConfig(iterations=40, batch_size=8, accumulate=1, lr=0.05, lr_steps=(),
                         log_every=5, device="cpu")
    summary = Trainer(model, crops, config, tmp_path / "m.jsonl", progress=False).fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "m.jsonl") if r["kind"] == "train"]
    assert len(losses) == 8
    assert losses[-1] < 0.7 * losses[0], losses
    assert summary["steps"] == 40 and np.isfinite(summary["final_loss"])


def test_trainer_is_deterministic(tmp_path):
    source = [SyntheticScenes(16, 64, 2, seed=4)[i] for i in range(16)]
    weights = []
    for run in range(2):
        crops = GTCropDataset(source, resize=72, crop=64, seed=1, progress=False)
        torch.manual_seed(0)
        model = DeconvNet(3, width=1 / 16, input_size=64)
        config = TrainConfig(iterations=4, batch_size=4, accumulate=2, device="cpu")
        Trainer(model, crops, config, tmp_path / f"{run}.jsonl", progress=False).fit()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_nonfinite_loss_is_an_error(tmp_path):
    source = [SyntheticScenes(8, 64, 2, seed=4)[i] for i in range(8)]
    crops = GTCropDataset(source, resize=64, crop=64, seed=1, progress=False)
    model = DeconvNet(3, width=1 / 16, input_size=64)
    with torch.no_grad():
        model.score.bias.fill_(float("nan"))
    config = TrainConfig(iterations=2, batch_size=4, accumulate=1, device="cpu")
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        Trainer(model, crops, config, tmp_path / "m.jsonl", progress=False).fit()


def test_train_and_eval_on_a_voc_folder(tmp_path, capsys):
    """The VOC path of the command line: a VOC-format folder with one corrupt image."""
    scenes = SyntheticScenes(12, 64, 3, seed=9)
    voc = scenes.to_voc_folder(tmp_path / "voc", {"train": range(8), "val": range(8, 12)})
    bad = next(iter(sorted((voc / "JPEGImages").glob("*.jpg"))))
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "voc"), "--out", str(out), "--width",
                 "0.0625", "--input-size", "64", "--iterations", "2", "--batch-size", "2",
                 "--accumulate", "1", "--device", "cpu"]) == 0
    assert main(["eval", "--data", str(tmp_path / "voc"), "--checkpoint", str(out / "stage1.pt"),
                 "--no-progress", "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    summary = json.loads((tmp_path / "e.json").read_text())
    assert list(summary["per_class_iou"]) == list(scenes.class_names)
    assert summary["split"] == "val"


def test_calibrate_bn_is_the_average_over_batches():
    from torch import nn

    from deconvkernels.train.bn import calibrate_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    batches = [torch.randn(4, 3, 8, 8) * (i + 1) for i in range(5)]
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    assert calibrate_bn(model, iter(batches), progress=False) == 5
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    expected_var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    torch.testing.assert_close(model[1].running_var, expected_var)
    assert not model.training and model[1].momentum == 0.1
    assert calibrate_bn(model, iter(batches), num_batches=2, progress=False) == 2


def test_train_resume_and_calibrate_bn(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", *TINY, "--out", str(out), "--width", "0.0625", "--input-size", "64",
            "--batch-size", "4", "--accumulate", "1", "--device", "cpu",
            "--checkpoint-every", "2", "--lr-steps", "3", "--resize", "70", "--enlarge", "1.4"]
    assert main([*base, "--iterations", "3"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == [
        "step-0000002.pt", "step-0000003.pt"]
    capsys.readouterr()
    assert main([*base, "--iterations", "5", "--resume"]) == 0
    assert "resumed at step 3 of 5" in capsys.readouterr().out
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [3, 5]
    with recorded_gt_crops() as crops:
        assert main(["calibrate-bn", *TINY, "--checkpoint", str(out / "stage1.pt"), "--out",
                     str(tmp_path / "cal.pt"), "--batches", "2", "--batch-size", "2",
                     "--device", "cpu", "--no-progress"]) == 0
    # the crops the run trained on (its --resize / --enlarge), not the defaults
    assert [(c["resize"], c["enlarge"]) for c in crops] == [(70, 1.4)]
    from deconvkernels.train import load_model

    before, _ = load_model(out / "stage1.pt")
    after, ckpt = load_model(tmp_path / "cal.pt")
    assert ckpt["bn_calibration"] == {"batches": 2, "batch_size": 2}
    assert not torch.equal(before.fc6[1].running_var, after.fc6[1].running_var)
    assert torch.equal(before.fc6[0].weight, after.fc6[0].weight)  # only BN buffers change
    assert main([*base, "--iterations", "5", "--resume", str(tmp_path / "nowhere.pt")]) == 2
    assert "nowhere.pt" in capsys.readouterr().err


def test_configs(tmp_path, capsys):
    from deconvkernels.train.config_file import builtin_configs, load_config

    assert {"deconvnet_stage1", "deconvnet_stage2", "small_stage1", "small_stage2"} <= set(
        builtin_configs())
    paper = load_config("deconvnet_stage1")
    assert (paper["iterations"], paper["lr_steps"], paper["batch_size"] * paper["accumulate"]) \
        == (20000, [9000], 64)
    stage2 = load_config("deconvnet_stage2")
    assert (stage2["iterations"], stage2["lr_steps"], stage2["stage"]) == (40000, [10000], 2)
    cfg = tmp_path / "c.toml"
    cfg.write_text('data = "synthetic"\nimages = 12\nimage_size = 64\nnum_classes = 3\n'
                   'width = 0.0625\ninput_size = 64\niterations = 50\nbatch_size = 4\n'
                   'accumulate = 1\nlr_steps = [1]\ndevice = "cpu"\n'
                   f'out = "{tmp_path / "run"}"\n')
    # flags override the file (iterations 50 -> 2)
    assert main(["train", "--config", str(cfg), "--iterations", "2"]) == 0
    from deconvkernels.train import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run" / "stage1.pt")
    assert ckpt["run_config"]["iterations"] == 2 and ckpt["run_config"]["lr_steps"] == [1]
    assert ckpt["run_config"]["config"] == str(cfg)
    assert ckpt["step"] == 2
    for text, message in [
        ("batchsize = 4\n", "unknown key 'batchsize'"),
        ('iterations = "many"\n', "iterations must be int"),
        ("lr_steps = 5\n", "lr_steps must be a list of int"),
        ('model = "unet"\n', "model must be one of"),
        ("channels_last = 1\n", "channels_last must be bool"),
        ("iterations = [\n", "c.toml"),
    ]:
        cfg.write_text(text)
        assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err, text
    assert main(["train", "--config", "no_such_config"]) == 2
    assert "deconvnet_stage1" in capsys.readouterr().err  # lists the built-ins


def test_eval_and_segment_inference_modes(tmp_path, capsys, monkeypatch):
    """--proposals N (instance-wise), --ensemble FCN_CHECKPOINT, --crf through the CLI."""
    out = tmp_path / "run"
    common = ["--width", "0.0625", "--iterations", "2", "--batch-size", "4", "--accumulate",
              "1", "--device", "cpu"]
    assert main(["train", *TINY, "--out", str(out / "d"), "--input-size", "64", "--enlarge",
                 "1.5", *common]) == 0
    assert main(["train", *TINY, "--out", str(out / "f"), "--model", "fcn8s", *common]) == 0
    ckpt, fcn = str(out / "d" / "stage1.pt"), str(out / "f" / "stage1.pt")
    modes = [
        (["--proposals", "5", "--min-side", "8"], "instance-wise (5 proposals)"),
        (["--ensemble", fcn], "whole-image + FCN-8s ensemble"),
    ]
    from deconvkernels.infer import crf_available

    if crf_available():
        modes.append((["--proposals", "5", "--min-side", "8", "--ensemble", fcn, "--crf"],
                      "instance-wise (5 proposals) + FCN-8s ensemble + CRF"))
    for flags, mode in modes:
        result = tmp_path / "e.json"
        assert main(["eval", *TINY, "--images", "3", "--checkpoint", ckpt, "--json",
                     str(result), "--no-progress", "--device", "cpu", *flags]) == 0, flags
        summary = json.loads(result.read_text())
        assert summary["mode"] == mode
        assert sum(map(sum, summary["confusion_matrix"])) == 3 * 64 * 64
    image = SyntheticScenes(1, (70, 90), 3, seed=5)[0].image
    cv2.imwrite(str(tmp_path / "in.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert main(["segment", "--checkpoint", ckpt, str(tmp_path / "in.png"), "--out",
                 str(tmp_path / "seg"), "--device", "cpu", "--proposals", "5", "--min-side",
                 "8", "--ensemble", fcn]) == 0
    assert cv2.imread(str(tmp_path / "seg" / "in.png")).shape[:2] == (70, 90)
    assert main(["eval", *TINY, "--checkpoint", ckpt, "--ensemble", str(tmp_path / "no.pt"),
                 "--device", "cpu"]) == 2
    assert "--ensemble" in capsys.readouterr().err

    # The data's classes are checked against the checkpoint's (not the checkpoint's names
    # against themselves); synthetic sizes and class counts default to the training run's.
    assert main(["eval", "--images", "2", "--num-classes", "4", "--checkpoint", ckpt,
                 "--no-progress", "--device", "cpu"]) == 2
    assert "the checkpoint scores 4 classes, the data has 5" in capsys.readouterr().err
    assert main(["eval", "--images", "2", "--checkpoint", ckpt, "--json", str(result),
                 "--no-progress", "--device", "cpu"]) == 0
    assert sum(map(sum, json.loads(result.read_text())["confusion_matrix"])) == 2 * 64 * 64

    # --proposals N: EdgeBoxes gives the N best boxes that pass --min-side, and the crops are
    # framed as the run trained them (--enlarge 1.5), unless --enlarge says otherwise.
    import deconvkernels.infer as infer
    import deconvkernels.proposals as proposals

    made, framed = [], []

    class RecordingEdgeBoxes(proposals.EdgeBoxes):
        def __init__(self, **kwargs):
            made.append(kwargs)
            super().__init__(**kwargs)

    real_predict = infer.predict_instances

    def recording_predict(*args, **kwargs):
        framed.append(kwargs["enlarge"])
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(proposals, "EdgeBoxes", RecordingEdgeBoxes)
    monkeypatch.setattr(infer, "predict_instances", recording_predict)
    for flags, enlarge in [([], 1.5), (["--enlarge", "1.1"], 1.1)]:
        made.clear()
        framed.clear()
        assert main(["eval", *TINY, "--images", "1", "--checkpoint", ckpt, "--no-progress",
                     "--device", "cpu", "--proposals", "7", "--min-side", "9", *flags]) == 0
        assert [(m["max_boxes"], m["min_side"]) for m in made] == [(7, 9.0)]
        assert framed == [enlarge]


def test_out_folder_of_an_earlier_run(tmp_path, capsys):
    """A new run in an --out that holds another run's checkpoints (or log) is refused: their
    pruning would delete the new run's checkpoints and --resume would pick the old run's.
    --overwrite deletes them first; --resume continues them."""
    out = tmp_path / "run"
    base = ["train", *TINY, "--out", str(out), "--width", "0.0625", "--input-size", "64",
            "--batch-size", "4", "--accumulate", "1", "--device", "cpu", "--no-progress"]
    assert main([*base, "--iterations", "4", "--checkpoint-every", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--iterations", "2", "--checkpoint-every", "1", "--lr", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and "--overwrite" in err
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == [
        "step-0000002.pt", "step-0000004.pt"]  # untouched
    assert main([*base, "--iterations", "2", "--checkpoint-every", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == [
        "step-0000001.pt", "step-0000002.pt"]
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [2]  # only the new run's log
    assert main([*base, "--iterations", "3", "--checkpoint-every", "1", "--resume"]) == 0
    assert "resumed at step 2 of 3" in capsys.readouterr().out


def test_train_argument_errors_are_clean(tmp_path, capsys):
    """Mistakes in train's options end as `deconvnet train: error: ...` (exit 2) naming the
    option, before any training."""
    out = tmp_path / "run"
    common = ["train", *TINY, "--width", "0.0625", "--input-size", "64", "--batch-size", "4",
              "--accumulate", "1", "--device", "cpu", "--iterations", "1"]
    assert main([*common, "--out", str(out / "a")]) == 0
    ckpt = str(out / "a" / "stage1.pt")  # 4 classes
    cases = [
        (["--stage", "2", "--proposals", "jittered-gt", "--init-checkpoint", ckpt,
          "--num-classes", "5"], "--init-checkpoint scores 4 classes, --data has 6"),
        (["--vgg16", str(tmp_path / "no-vgg.pth")], "--vgg16"),
        (["--enlarge", "0"], "--enlarge must be positive"),
        (["--images", "-5"], "--images must be >= 0"),
        (["--num-classes", "0"], "--num-classes must be >= 1"),
    ]
    for i, (flags, message) in enumerate(cases):
        assert main([*common, "--out", str(out / f"bad{i}"), *flags]) == 2, flags
        assert message in capsys.readouterr().err, flags
    # the paper's configs name no data
    assert main(["train", "--config", "deconvnet_stage1", "--out", str(out / "p")]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_flags_turn_off_what_a_config_turns_on(tmp_path):
    from deconvkernels.cli import build_parser
    from deconvkernels.train.config_file import check_config

    parser = build_parser()
    values = check_config({"channels_last": True, "sync_bn": True}, parser.train_parser, "c")
    parser.train_parser.set_defaults(**values)
    args = parser.parse_args(["train", "--no-channels-last"])
    assert args.channels_last is False and args.sync_bn is True


def test_calibrate_bn_repeats_with_its_seed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--width", "0.0625", "--input-size", "64",
                 "--batch-size", "4", "--accumulate", "1", "--device", "cpu",
                 "--iterations", "1"]) == 0
    cal = ["calibrate-bn", "--images", "12", "--checkpoint", str(out / "stage1.pt"),
           "--batches", "2", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    assert main([*cal, "--out", str(tmp_path / "a.pt")]) == 0
    assert main([*cal, "--out", str(tmp_path / "b.pt")]) == 0
    a = torch.load(tmp_path / "a.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main([*cal, "--out", str(tmp_path / "c.pt"), "--batch-size", "999"]) == 2
    assert "fewer than one --batch-size 999" in capsys.readouterr().err
    assert main([*cal, "--out", str(tmp_path / "c.pt"), "--num-classes", "5"]) == 2
    assert "the checkpoint scores 4 classes, the data has 6" in capsys.readouterr().err

    # SegNet takes any size: the crops are the run's --input-size (it has no input_size)
    seg = tmp_path / "seg"
    assert main(["train", *TINY, "--out", str(seg), "--model", "segnet", "--width", "0.0625",
                 "--input-size", "32", "--batch-size", "4", "--accumulate", "1", "--device",
                 "cpu", "--iterations", "1"]) == 0
    with recorded_gt_crops() as crops:
        assert main(["calibrate-bn", "--checkpoint", str(seg / "stage1.pt"), "--out",
                     str(tmp_path / "s.pt"), "--batches", "1", "--batch-size", "2",
                     "--device", "cpu", "--no-progress"]) == 0
    assert [(c["crop"], c["resize"]) for c in crops] == [(32, round(32 * 250 / 224))]


def test_bench_takes_its_options_after_the_separator(capsys, monkeypatch):
    import deconvkernels.bench as bench
    import deconvkernels.bench_fused as bench_fused

    seen = []
    monkeypatch.setattr(bench, "main", lambda rest: seen.append(("pool", rest)) or 0)
    monkeypatch.setattr(bench_fused, "main", lambda rest: seen.append(("fused", rest)) or 0)
    assert main(["bench", "--", "--quick"]) == 0
    assert main(["bench", "pool", "--", "--quick", "--case", "pool_fwd"]) == 0
    assert seen == [("pool", ["--quick"]), ("fused", ["--quick"]),
                    ("pool", ["--quick", "--case", "pool_fwd"])]
    assert main(["bench", "nope"]) == 2
    assert "the report is one of pool, fused, all" in capsys.readouterr().err
    # `all` hands the options to both reports: one only the pool report takes is refused
    # before either runs
    seen.clear()
    assert main(["bench", "--", "--quick", "--data", "relu"]) == 2
    assert "--data relu: name the report" in capsys.readouterr().err and seen == []
    assert main(["bench", "pool", "--", "--data", "relu"]) == 0
    assert seen == [("pool", ["--data", "relu"])]
