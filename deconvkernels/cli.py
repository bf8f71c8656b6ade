"""``deconvnet``: the command line (``demo``, ``train``, ``calibrate-bn``, ``eval``,
``segment``, ``bench``, ``info``). ``deconvnet COMMAND --help`` lists each command's options."""

from __future__ import annotations

import argparse
import glob
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

    if not args.data:
        raise CliError("--data is required: a VOC folder (VOCdevkit/VOC2012 inside) or "
                       "'synthetic'")
    if args.data == "synthetic":
        if args.images < 0:
            raise CliError(f"--images must be >= 0, got {args.images}")
        for name in ("image_size", "num_classes"):
            value = getattr(args, name)
            if value < 1:
                raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        n = args.images if args.images else (1000 if split == "train" else 100)
        seed = args.seed if split == "train" else args.seed + 1_000_003
        ds = SyntheticScenes(n, args.image_size, args.num_classes, seed=seed)
        return ds, list(ds.class_names)
    args.data = os.path.expanduser(args.data)  # a config's "~/data/VOCdevkit" too
    if not os.path.exists(args.data):
        raise CliError(f"--data: no such folder {args.data!r} (or say 'synthetic')")
    try:
        ds = VOCSegmentation(args.data, split=split, sbd_root=getattr(args, "sbd", None))
    except (FileNotFoundError, ImportError) as e:
        raise CliError(f"--data: {e}") from e
    return ds, list(ds.class_names)


# Defaults of the options that commands reading a checkpoint take from the run that wrote it
# (_run_defaults), and that `train` takes as they are.
_DEFAULTS: dict[str, Any] = {"data": "synthetic", "image_size": 64, "num_classes": 5,
                             "enlarge": 1.2}


def _add_data_options(p: argparse.ArgumentParser, checkpoint_defaults: bool = False) -> None:
    """``checkpoint_defaults``: commands that read a checkpoint take ``--data`` and the
    synthetic data's ``--image-size`` and ``--num-classes`` from the run that wrote it when
    not given (:func:`_run_defaults`)."""
    def option(flag: str, what: str, **kwargs: Any) -> None:
        name = flag[2:].replace("-", "_")
        of_run = "the checkpoint's run, else " if checkpoint_defaults else ""
        p.add_argument(flag, default=None if checkpoint_defaults else _DEFAULTS[name],
                       help=f"{what} (default: {of_run}{_DEFAULTS[name]})", **kwargs)

    option("--data", "'synthetic' (built-in scenes) or a VOC folder (VOCdevkit/VOC2012 inside)")
    p.add_argument("--images", type=int, default=0,
                   help="synthetic: number of images (default 1000 train, 100 eval)")
    option("--image-size", "synthetic: image side", type=int)
    option("--num-classes", "synthetic: foreground classes, background added", type=int)
    p.add_argument("--seed", type=int, default=0)


def _run_defaults(args: argparse.Namespace, ckpt: dict[str, Any], *names: str) -> None:
    """Options the user left unset (``None``) take the value the checkpoint's training run
    used, when it recorded one (``run_config`` of ``deconvnet train``, ``demo_config`` of
    ``deconvnet demo``), else their :data:`_DEFAULTS` value if they have one."""
    run = ckpt.get("run_config") or ckpt.get("demo_config") or {}
    for name in names:
        if getattr(args, name, None) is None:
            setattr(args, name, run[name] if run.get(name) is not None else _DEFAULTS.get(name))


def _check_classes(model: Any, data_names: Sequence[str], data: str) -> None:
    if len(data_names) != model.num_classes:
        hint = (" (synthetic: --num-classes counts the foreground classes; background is "
                "added)" if data == "synthetic" else "")
        raise CliError(f"the checkpoint scores {model.num_classes} classes, the data has "
                       f"{len(data_names)}{hint}")


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
    for name in ("out", "vgg16", "init_checkpoint", "edge_model", "proposal_cache"):
        if getattr(args, name):
            setattr(args, name, os.path.expanduser(getattr(args, name)))
    if not args.enlarge > 0:
        raise CliError(f"--enlarge must be positive, got {args.enlarge}")
    device = init_distributed(args.device)  # under torchrun: join the group, pick the GPU
    if device is not None:
        args.device = str(device)
    _prepare_out(args)
    source, class_names = _source(args, "train")
    torch.manual_seed(args.seed)  # the initialisation repeats (and agrees across ranks)
    if args.init_checkpoint:
        try:
            model, _ = load_model(args.init_checkpoint)
        except (FileNotFoundError, ValueError) as e:
            raise CliError(f"--init-checkpoint: {e}") from e
        if model.num_classes != len(class_names):
            raise CliError(f"--init-checkpoint scores {model.num_classes} classes, --data has "
                           f"{len(class_names)}")
        fresh = build_parser().train_parser  # type: ignore[attr-defined]  # no config in it
        ignored = [f"--{k.replace('_', '-')}" for k in ("model", "width", "input_size", "vgg16")
                   if getattr(args, k) != fresh.get_default(k)]
        if ignored and is_main_process():
            print(f"deconvnet train: note: {', '.join(ignored)} ignored: the architecture and "
                  "weights come from --init-checkpoint", file=sys.stderr)
    else:
        try:
            model = build_model(args.model, len(class_names), args.width, args.input_size)
        except ValueError as e:
            raise CliError(str(e)) from e
        if args.vgg16:
            try:
                load_vgg16_(model, args.vgg16)
            except (FileNotFoundError, ValueError, KeyError) as e:
                raise CliError(f"--vgg16: {e}") from e
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


def _prepare_out(args: argparse.Namespace) -> None:
    """Refuse to start a new run over an earlier run's checkpoints or log in ``--out``: its
    checkpoints would be pruned against the new ones (sorted by step), ``--resume`` would pick
    the older run's latest, and the log would mix both. ``--resume`` continues the earlier run;
    ``--overwrite`` deletes them first. Rank 0 decides for every process (under torchrun, other
    nodes may not see rank 0's files)."""
    import torch.distributed as dist

    from .train.distributed import is_main_process

    distributed = dist.is_available() and dist.is_initialized()
    checkpoints = sorted(glob.glob(os.path.join(args.out, "checkpoints", "step-*.pt")))
    metrics = os.path.join(args.out, "metrics.jsonl")
    found = checkpoints + ([metrics] if os.path.isfile(metrics) else [])
    if distributed:
        shared = [found]
        dist.broadcast_object_list(shared, src=0)
        found = shared[0]
    if found and not args.resume:
        if not args.overwrite:
            raise CliError(
                f"--out {args.out!r} holds an earlier run ({len(found)} files: "
                f"{', '.join(os.path.basename(f) for f in found[:3])}"
                f"{', ...' if len(found) > 3 else ''}): --resume continues it, --overwrite "
                "deletes its checkpoints and log first, or name another --out")
        if is_main_process():
            for path in found:
                os.remove(path)
    if distributed:
        dist.barrier()


def _run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options of this run (config and flags merged), as saved with its checkpoints."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")}


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from .train import load_model, resolve_device

    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as e:
        raise CliError(f"--device: {e}") from e
    try:
        return load_model(os.path.expanduser(args.checkpoint), device)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(f"--checkpoint: {e}") from e


def cmd_calibrate_bn(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .data import GTCropDataset, collate_skip_none
    from .train import save_checkpoint
    from .train.bn import calibrate_bn

    model, ckpt = _load(args)
    _run_defaults(args, ckpt, "data", "image_size", "num_classes", "resize", "enlarge",
                  "input_size")
    source, data_names = _source(args, "train")
    _check_classes(model, data_names, args.data)
    # Stage-1 (ground-truth-centred) crops at the run's sizes: DeconvNet's input_size, the
    # run's --input-size for SegNet / FCN-8s (which take any size).
    crop = getattr(model, "input_size", None) or args.input_size or 224
    # The crops the model was trained on: the run's --resize and --enlarge.
    resize = args.resize or round(crop * 250 / 224)
    if args.batches < 1 or args.batch_size < 1:
        raise CliError(f"--batches and --batch-size must be >= 1, got {args.batches} and "
                       f"{args.batch_size}")
    crops = GTCropDataset(source, resize=resize, crop=crop, enlarge=args.enlarge,
                          seed=args.seed)
    if len(crops) < args.batch_size:
        raise CliError(f"--data yields {len(crops)} crops, fewer than one --batch-size "
                       f"{args.batch_size}")
    # Shuffled by --seed's generator: the same command gives the same statistics.
    loader = DataLoader(crops, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_skip_none,
                        generator=torch.Generator().manual_seed(args.seed))
    images = (batch[0] for batch in loader if batch is not None)
    try:
        used = calibrate_bn(model, images, num_batches=args.batches,
                            progress=not args.no_progress)
    except ValueError as e:
        raise CliError(str(e)) from e
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


def _pipeline(args: argparse.Namespace, model: Any, ckpt: dict[str, Any]) -> Any:
    """``fn(image, name) -> labels`` for the inference mode the options name: whole image or
    ``--proposals N`` EdgeBoxes proposals (max-merged), ``--ensemble FCN_CHECKPOINT``,
    ``--crf``. Proposal crops are framed with ``--enlarge``, by default the training run's."""
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
    if args.proposals < 0:
        raise CliError(f"--proposals must be >= 0, got {args.proposals}")
    _run_defaults(args, ckpt, "enlarge")
    if args.proposals:
        from .proposals import EdgeBoxes

        try:
            # The N best boxes whose shorter side reaches --min-side (EdgeBoxes searches on
            # past the small ones), which predict_instances' own filter then keeps whole.
            proposer = EdgeBoxes(max_boxes=args.proposals, min_side=args.min_side,
                                 edge_model=args.edge_model, cache_dir=args.proposal_cache)
        except (FileNotFoundError, ValueError) as e:
            raise CliError(f"--proposals: {e}") from e

    def run(image: Any, name: str) -> Any:
        if proposer is not None:
            boxes = proposer.propose(image, name if args.proposal_cache else None)
            probs = predict_instances(model, image, boxes, top_n=args.proposals,
                                      min_side=args.min_side, enlarge=args.enlarge)
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
    p.add_argument("--enlarge", type=float, default=None,
                   help="proposal crop side / the box's longer side (default: the "
                        f"checkpoint's training run, else {_DEFAULTS['enlarge']})")
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
    _run_defaults(args, ckpt, "data", "image_size", "num_classes")
    source, data_names = _source(args, args.split)
    _check_classes(model, data_names, args.data)
    class_names = ckpt.get("class_names") or data_names
    if len(class_names) != model.num_classes:
        class_names = data_names
    elif list(class_names) != list(data_names):
        print(f"deconvnet eval: note: the data names its classes {list(data_names)}, the "
              f"checkpoint {list(class_names)}; the table uses the checkpoint's",
              file=sys.stderr)
    mode = _mode_name(args)
    if mode == "whole-image":
        cm = evaluate(model, source, model.num_classes, batch_size=args.batch_size,
                      progress=not args.no_progress)
    else:
        segment_fn = _pipeline(args, model, ckpt)
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

    model, ckpt = _load(args)
    segment_fn = _pipeline(args, model, ckpt)
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


_BENCH_OPS = ("pool", "fused", "all")


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench, bench_fused

    op, rest = args.op, list(args.rest)
    if op not in _BENCH_OPS:
        # `deconvnet bench -- --quick`: argparse drops the `--` and hands the report's first
        # option over as the op
        if not op.startswith("-"):
            raise CliError(f"bench: the report is one of {', '.join(_BENCH_OPS)}, got {op!r}")
        op, rest = "all", [op, *rest]
    if rest[:1] == ["--"]:  # `deconvnet bench pool -- --quick`: the separator is not an option
        rest = rest[1:]
    if op == "all":  # the options go to both reports: refuse, before an hour of timing, what
        # only one of them takes
        pool_only = bench._parser().parse_known_args(rest)[1]
        fused_only = bench_fused._parser().parse_known_args(rest)[1]
        if pool_only or fused_only:
            raise CliError(
                "bench: with both reports (`all`) the options after -- must suit both; "
                f"{' '.join(fused_only) or ' '.join(pool_only)}: name the report, e.g. "
                f"`deconvnet bench {'pool' if fused_only else 'fused'} -- ...`")
    if op in ("pool", "all"):
        rc = bench.main(rest)
        if rc:
            return rc
    if op in ("fused", "all"):
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
    p.add_argument("--enlarge", type=float, default=_DEFAULTS["enlarge"],
                   help="crop window side / the box's longer side (context around objects)")
    p.add_argument("--iterations", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--accumulate", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-steps", type=int, nargs="*", default=[9000])
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="model and batches in channels_last (on the CPU a paper-size step was "
                        "slower than NCHW: see README)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="mixed precision: bf16 (CPU or CUDA), fp16 with a gradient scaler (CUDA)")
    p.add_argument("--checkpoint-every", type=int, default=1000,
                   help="resumable checkpoint every N steps into OUT/checkpoints (0: at the end)")
    p.add_argument("--keep-last", type=int, default=3, help="resumable checkpoints kept")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="under torchrun on GPUs: BatchNorm statistics over all processes")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds an earlier run's checkpoints and "
                        "log (deletes them)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue exactly from a checkpoint (default: the latest in OUT)")
    p.set_defaults(func=cmd_train)
    parser.train_parser = p  # type: ignore[attr-defined]  (configs set its defaults)

    p = sub.add_parser("calibrate-bn",
                       help="recompute BN statistics over training batches (the paper's step 3)")
    _add_data_options(p, checkpoint_defaults=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the new checkpoint")
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--resize", type=int, default=None,
                   help="crop resize (default: the checkpoint's training run, else 250/224 x "
                        "crop)")
    p.add_argument("--enlarge", type=float, default=None,
                   help="crop window side / the box's longer side (default: the checkpoint's "
                        f"training run, else {_DEFAULTS['enlarge']})")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_calibrate_bn)

    p = sub.add_parser("eval", help="mIoU of a checkpoint: whole image, proposals, ensemble, CRF")
    _add_data_options(p, checkpoint_defaults=True)
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
    p.add_argument("op", nargs="?", default="all", metavar="{pool,fused,all}",
                   help="which report (default all); its own options follow after --")
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
