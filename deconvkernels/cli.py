"""``deconvnet``: the command line (``demo``, ``train``, ``calibrate-bn``, ``eval``,
``segment``, ``bench``, ``info``). ``deconvnet COMMAND --help`` lists each command's options."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


class CliError(Exception):
    """A user mistake (bad path, option): printed as one line, exit status 2."""


# -- data sources ------------------------------------------------------------------------
def _source(args: argparse.Namespace, split: str) -> tuple[Any, list[str]]:
    """The dataset named by ``--data``: ``synthetic`` or a VOC folder."""
    from .data import SyntheticScenes, VOCSegmentation

    if args.data == "synthetic":
        n = args.images if args.images else (1000 if split == "train" else 100)
        seed = args.seed if split == "train" else args.seed + 1_000_003
        ds = SyntheticScenes(n, args.image_size, args.num_classes, seed=seed)
        return ds, list(ds.class_names)
    if not os.path.exists(args.data):
        raise CliError(f"--data: no such folder {args.data!r} (or say 'synthetic')")
    try:
        ds = VOCSegmentation(args.data, split=split, sbd_root=getattr(args, "sbd", None))
    except (FileNotFoundError, ImportError) as e:
        raise CliError(f"--data: {e}") from e
    return ds, list(ds.class_names)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (built-in scenes) or a VOC folder (VOCdevkit/VOC2012 inside)")
    p.add_argument("--images", type=int, default=0,
                   help="synthetic: number of images (default 1000 train, 100 eval)")
    p.add_argument("--image-size", type=int, default=64, help="synthetic: image side")
    p.add_argument("--num-classes", type=int, default=5,
                   help="synthetic: foreground classes (background is added)")
    p.add_argument("--seed", type=int, default=0)


# -- commands ----------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(quick=args.quick, seed=args.seed)
    result = run_demo(args.out, cfg, progress=not args.no_progress)
    print(f"held-out mIoU {result['miou']:.3f}, pixel accuracy {result['pixel_accuracy']:.3f} "
          f"({result['seconds']:.0f} s); outputs in {args.out}")
    return 0


def _stage_dataset(args: argparse.Namespace, source: Any, resize: int, crop: int) -> Any:
    """Stage 1: ground-truth-centred crops; stage 2: crops of proposals overlapping them."""
    from .data import GTCropDataset, ProposalCropDataset, jittered_gt_proposals

    if args.stage == 1:
        return GTCropDataset(source, resize=resize, crop=crop, enlarge=args.enlarge,
                             seed=args.seed)
    if args.proposals == "edgeboxes":
        from .proposals import EdgeBoxes

        proposer = EdgeBoxes(edge_model=args.edge_model, cache_dir=args.proposal_cache)
    else:
        proposer = jittered_gt_proposals(seed=args.seed)
    return ProposalCropDataset(source, proposer, resize=resize, crop=crop,
                               enlarge=args.enlarge, seed=args.seed)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .models import build_model, load_vgg16_
    from .train import TrainConfig, Trainer, load_model, plot_metrics, save_checkpoint
    from .train.distributed import init_distributed, is_main_process

    if not args.out:
        raise CliError("--out (or `out` in the config) is required")
    device = init_distributed(args.device)  # under torchrun: join the group, pick the GPU
    if device is not None:
        args.device = str(device)
    source, class_names = _source(args, "train")
    torch.manual_seed(args.seed)  # the initialisation repeats (and agrees across ranks)
    if args.init_checkpoint:
        try:
            model, _ = load_model(args.init_checkpoint)
        except (FileNotFoundError, ValueError) as e:
            raise CliError(f"--init-checkpoint: {e}") from e
    else:
        try:
            model = build_model(args.model, len(class_names), args.width, args.input_size)
        except ValueError as e:
            raise CliError(str(e)) from e
        if args.vgg16:
            load_vgg16_(model, args.vgg16)
    crop = getattr(model, "input_size", None) or args.input_size
    resize = args.resize or round(crop * 250 / 224)
    try:
        dataset = _stage_dataset(args, source, resize, crop)
    except ValueError as e:
        raise CliError(str(e)) from e
    try:
        config = TrainConfig(
            iterations=args.iterations, batch_size=args.batch_size, accumulate=args.accumulate,
            lr=args.lr, lr_steps=tuple(args.lr_steps), seed=args.seed, device=args.device,
            num_workers=args.workers, channels_last=args.channels_last, amp=args.amp,
            sync_bn=args.sync_bn,
            checkpoint_every=args.checkpoint_every, keep_last=args.keep_last,
        )
    except ValueError as e:
        raise CliError(str(e)) from e
    os.makedirs(args.out, exist_ok=True)
    metrics = os.path.join(args.out, "metrics.jsonl")
    try:
        trainer = Trainer(model, dataset, config, metrics, stage=f"stage {args.stage}",
                          progress=not args.no_progress,
                          checkpoint_dir=os.path.join(args.out, "checkpoints"),
                          checkpoint_extra={"class_names": class_names,
                                            "run_config": _run_config(args)})
        if args.resume:
            trainer.resume(os.path.join(args.out, "checkpoints") if args.resume == "auto"
                           else args.resume)
            if is_main_process():
                print(f"resumed at step {trainer.step} of {config.iterations}")
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from e
    summary = trainer.fit()
    if not is_main_process():
        return 0
    path = save_checkpoint(os.path.join(args.out, f"stage{args.stage}.pt"), model,
                           class_names=class_names, train_config=config.to_dict(),
                           run_config=_run_config(args), step=summary["steps"])
    plot_metrics(metrics, args.out)
    print(f"final loss {summary['final_loss']:.4f}, {summary['images_per_s']:.1f} images/s; "
          f"checkpoint {path}")
    return 0


def _run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options of this run (config and flags merged), as saved with its checkpoints."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")}


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from .train import load_model, resolve_device

    try:
        return load_model(args.checkpoint, resolve_device(args.device))
    except (FileNotFoundError, ValueError) as e:
        raise CliError(f"--checkpoint: {e}") from e


def cmd_calibrate_bn(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from .data import GTCropDataset, collate_skip_none
    from .train import save_checkpoint
    from .train.bn import calibrate_bn

    model, ckpt = _load(args)
    source, _ = _source(args, "train")
    crop = getattr(model, "input_size", None) or 224
    crops = GTCropDataset(source, resize=round(crop * 250 / 224), crop=crop, seed=args.seed)
    loader = DataLoader(crops, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_skip_none)
    images = (batch[0] for batch in loader if batch is not None)
    used = calibrate_bn(model, images, num_batches=args.batches,
                        progress=not args.no_progress)
    extra = {k: v for k, v in ckpt.items() if k not in ("model", "model_config", "trainer")}
    save_checkpoint(args.out, model, **extra, bn_calibration={"batches": used,
                                                               "batch_size": args.batch_size})
    print(f"BN statistics from {used} batches of {args.batch_size}; written to {args.out}")
    return 0


def _mode_name(args: argparse.Namespace) -> str:
    parts = [f"instance-wise ({args.proposals} proposals)" if args.proposals else "whole-image"]
    if args.ensemble:
        parts.append("FCN-8s ensemble")
    if args.crf:
        parts.append("CRF")
    return " + ".join(parts)


def _pipeline(args: argparse.Namespace, model: Any) -> Any:
    """``fn(image, name) -> labels`` for the inference mode the options name: whole image or
    ``--proposals N`` EdgeBoxes proposals (max-merged), ``--ensemble FCN_CHECKPOINT``,
    ``--crf``."""
    import torch

    from .infer import ensemble_scores, normalize_scores, predict_instances, predict_scores
    from .train import load_model, resolve_device

    fcn = None
    if args.ensemble:
        try:
            fcn, _ = load_model(args.ensemble, resolve_device(args.device))
        except (FileNotFoundError, ValueError) as e:
            raise CliError(f"--ensemble: {e}") from e
        if fcn.num_classes != model.num_classes:
            raise CliError(f"--ensemble: FCN scores {fcn.num_classes} classes, the model "
                           f"{model.num_classes}")
    if args.crf:
        from .infer.crf import require_crf

        try:
            require_crf()
        except ImportError as e:
            raise CliError(f"--crf: {e}") from e
    proposer = None
    if args.proposals:
        from .proposals import EdgeBoxes

        try:
            proposer = EdgeBoxes(max_boxes=max(args.proposals * 4, 100),
                                 edge_model=args.edge_model, cache_dir=args.proposal_cache)
        except (FileNotFoundError, ValueError) as e:
            raise CliError(str(e)) from e

    def run(image: Any, name: str) -> Any:
        if proposer is not None:
            boxes = proposer.propose(image, name if args.proposal_cache else None)
            probs = predict_instances(model, image, boxes, top_n=args.proposals,
                                      min_side=args.min_side)
        else:
            probs = normalize_scores(predict_scores(model, [image])[0])
        if fcn is not None:
            probs = ensemble_scores(probs, predict_scores(fcn, [image])[0], args.ensemble_mode)
        if args.crf:
            from .infer.crf import dense_crf

            return dense_crf(image, probs)
        return probs.argmax(0).to(torch.uint8).numpy()

    return run


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proposals", type=int, default=0,
                   help="instance-wise inference on the top N EdgeBoxes proposals (paper: 50); "
                        "0: the whole image")
    p.add_argument("--min-side", type=float, default=112.0,
                   help="skip proposals with a shorter side (px; 112 at VOC scale)")
    p.add_argument("--edge-model", default=None, help="structured edge model for EdgeBoxes")
    p.add_argument("--proposal-cache", default=None, help="folder caching proposals per image")
    p.add_argument("--ensemble", default=None, metavar="FCN_CHECKPOINT",
                   help="multiply with an FCN-8s checkpoint's scores (EDeconvNet)")
    p.add_argument("--ensemble-mode", choices=("product", "mean"), default="product")
    p.add_argument("--crf", action="store_true",
                   help="dense CRF post-processing (needs the [crf] extra: pydensecrf2)")


def cmd_eval(args: argparse.Namespace) -> int:
    from .infer import evaluate, evaluate_images

    model, ckpt = _load(args)
    source, class_names = _source(args, args.split)
    class_names = ckpt.get("class_names", class_names)
    if len(class_names) != model.num_classes:
        raise CliError(f"the checkpoint scores {model.num_classes} classes, the data has "
                       f"{len(class_names)}")
    mode = _mode_name(args)
    if mode == "whole-image":
        cm = evaluate(model, source, model.num_classes, batch_size=args.batch_size,
                      progress=not args.no_progress)
    else:
        segment_fn = _pipeline(args, model)
        cm = evaluate_images(lambda s: segment_fn(s.image, s.name), source, model.num_classes,
                             progress=not args.no_progress, desc=f"eval ({mode})")
    result = {**cm.to_dict(class_names), "checkpoint": args.checkpoint, "data": args.data,
              "split": args.split, "mode": mode}
    print(cm.table(class_names))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    import cv2

    from .data import overlay, save_palette_png

    model, _ = _load(args)
    segment_fn = _pipeline(args, model)
    os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise CliError(f"cannot read image {path!r}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        stem = os.path.splitext(os.path.basename(path))[0]
        label = segment_fn(image, stem)
        save_palette_png(os.path.join(args.out, f"{stem}.png"), label)
        over = overlay(image, label)
        cv2.imwrite(os.path.join(args.out, f"{stem}_overlay.jpg"),
                    cv2.cvtColor(over, cv2.COLOR_RGB2BGR))
        print(f"{path} -> {os.path.join(args.out, stem + '.png')}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench, bench_fused

    rest = list(args.rest)
    if args.op in ("pool", "all"):
        rc = bench.main(rest)
        if rc:
            return rc
    if args.op in ("fused", "all"):
        return bench_fused.main(rest)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    import deconvkernels as dk

    info = {
        "build": dk.build_info(),
        "backend": dk.get_backend(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
    }
    print(json.dumps(info, indent=1))
    return 0


# -- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deconvnet", description="DeconvNet on deconvkernels' fused ops.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="train and evaluate a small DeconvNet on synthetic scenes")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train one stage of the recipe")
    p.add_argument("--config", default=None,
                   help="TOML file (or built-in name: deconvnet_stage1, deconvnet_stage2, "
                        "small_stage1, small_stage2) of option values; flags override it")
    _add_data_options(p)
    p.add_argument("--sbd", default=None, help="SBD folder with augmented VOC labels")
    p.add_argument("--out", default=None, help="output folder (checkpoint, log, plots)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=1,
                   help="1: ground-truth-centred crops; 2: proposal crops")
    p.add_argument("--model", default="deconvnet", choices=("deconvnet", "segnet", "fcn8s"))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--vgg16", default=None, help="torchvision VGG16(-BN) state-dict file")
    p.add_argument("--init-checkpoint", default=None, help="start from this checkpoint")
    p.add_argument("--proposals", choices=("edgeboxes", "jittered-gt"), default="edgeboxes")
    p.add_argument("--edge-model", default=None, help="structured edge model (.yml.gz)")
    p.add_argument("--proposal-cache", default=None, help="folder caching proposals per image")
    p.add_argument("--resize", type=int, default=0, help="crop resize (default 250/224 x crop)")
    p.add_argument("--enlarge", type=float, default=1.2,
                   help="crop window side / the box's longer side (context around objects)")
    p.add_argument("--iterations", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--accumulate", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-steps", type=int, nargs="*", default=[9000])
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--channels-last", action="store_true",
                   help="model and batches in channels_last (on the CPU a paper-size step was "
                        "slower than NCHW: see README)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="mixed precision: bf16 (CPU or CUDA), fp16 with a gradient scaler (CUDA)")
    p.add_argument("--checkpoint-every", type=int, default=1000,
                   help="resumable checkpoint every N steps into OUT/checkpoints (0: at the end)")
    p.add_argument("--keep-last", type=int, default=3, help="resumable checkpoints kept")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: BatchNorm statistics over all processes")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue exactly from a checkpoint (default: the latest in OUT)")
    p.set_defaults(func=cmd_train)
    parser.train_parser = p  # type: ignore[attr-defined]  (configs set its defaults)

    p = sub.add_parser("calibrate-bn",
                       help="recompute BN statistics over training batches (the paper's step 3)")
    _add_data_options(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the new checkpoint")
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_calibrate_bn)

    p = sub.add_parser("eval", help="mIoU of a checkpoint: whole image, proposals, ensemble, CRF")
    _add_data_options(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--no-progress", action="store_true")
    _add_inference_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("segment", help="images -> palette PNGs and overlays")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="segment-out")
    p.add_argument("--device", default="auto")
    _add_inference_options(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("bench", help="the op benchmark report (options go to it after --)")
    p.add_argument("op", nargs="?", choices=("pool", "fused", "all"), default="all")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="what was built, which devices are visible")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deconvnet`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):
            from .train.config_file import check_config, find_config, load_config

            try:
                path = str(find_config(args.config))
                values = check_config(load_config(path), parser.train_parser, path)
            except (FileNotFoundError, ValueError) as e:
                raise CliError(f"--config: {e}") from e
            parser.train_parser.set_defaults(**values)
            args = parser.parse_args(argv)  # flags given on the command line win
            args.config = path
        code = int(args.func(args) or 0)
    except CliError as e:
        print(f"deconvnet {args.command}: error: {e}", file=sys.stderr)
        code = 2
    # Only ``train`` joins a torchrun process group (and then torch is loaded). An exception
    # skips this on purpose: see shutdown_distributed.
    if "torch.distributed" in sys.modules:
        from .train.distributed import shutdown_distributed

        shutdown_distributed(succeeded=code == 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
