"""The demo: DeconvNet's two-stage recipe, scaled down to minutes on a laptop CPU.

Generates synthetic scenes (:class:`~deconvkernels.data.SyntheticScenes`), trains a
width-scaled DeconvNet on ground-truth-centred crops (stage 1), then on crops of EdgeBoxes
proposals that overlap the ground truth (stage 2, from stage 1's weights), evaluates the
whole held-out images, and writes into ``out_dir``:

- ``metrics.json``: held-out ``miou``, pixel accuracy, per-class IoU, confusion matrix, the
  settings and each stage's time and images/s;
- ``metrics.jsonl``, ``loss.png``, ``miou.png``: the training log and its plots;
- ``predictions/*.png``: palette PNGs of the held-out predictions; ``overlays.png``: a grid of
  image / ground truth / prediction;
- ``deconvnet.pt``: the trained model (``deconvnet eval`` / ``segment`` read it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .data import GTCropDataset, ProposalCropDataset, SyntheticScenes, colorize, save_palette_png
from .infer import evaluate, segment
from .models import DeconvNet
from .proposals import EdgeBoxes
from .train import TrainConfig, Trainer, plot_metrics, save_checkpoint

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """Settings of the demo run (defaults: about 5 minutes on 2 CPU cores)."""

    num_classes: int = 4
    image_size: int = 64
    train_images: int = 1000
    val_images: int = 100
    width: float = 0.1875
    batch_size: int = 16
    stage1_iterations: int = 1100
    stage2_iterations: int = 700
    lr: float = 0.05
    resize: int = 72
    enlarge: float = 2.0
    channels_last: bool = True
    proposals_per_image: int = 30
    seed: int = 0
    eval_every: int = 550
    min_object_frac: float = 0.2
    max_object_frac: float = 0.55
    quick: bool = False

    def __post_init__(self) -> None:
        if self.quick:  # seconds, for smoke tests: the numbers mean nothing
            self.train_images, self.val_images = 48, 16
            self.stage1_iterations, self.stage2_iterations = 6, 4
            self.eval_every = 0


def _materialise(dataset: SyntheticScenes) -> list:
    """Render every scene once: the samplers read each many times."""
    return [dataset[i] for i in range(len(dataset))]


def _overlay_grid(samples: list, predictions: list[np.ndarray], path: str, rows: int = 6) -> None:
    """A PNG grid: image | ground truth | prediction, one row per held-out image."""
    import cv2

    tiles = []
    for sample, pred in zip(samples[:rows], predictions[:rows], strict=False):
        tiles.append(np.concatenate([sample.image, colorize(sample.label), colorize(pred)], 1))
    grid = np.concatenate(tiles, 0)
    grid = cv2.resize(grid, (grid.shape[1] * 3, grid.shape[0] * 3), interpolation=cv2.INTER_NEAREST)
    if not cv2.imwrite(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path!r}")


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns what ``metrics.json`` holds."""
    cfg = config or DemoConfig()
    out = os.fspath(out_dir)
    os.makedirs(os.path.join(out, "predictions"), exist_ok=True)
    metrics_path = os.path.join(out, "metrics.jsonl")
    if os.path.exists(metrics_path):
        os.unlink(metrics_path)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)

    scene = dict(min_object_frac=cfg.min_object_frac, max_object_frac=cfg.max_object_frac)
    train_set = SyntheticScenes(cfg.train_images, cfg.image_size, cfg.num_classes, seed=cfg.seed,
                                **scene)
    val_set = SyntheticScenes(cfg.val_images, cfg.image_size, cfg.num_classes,
                              seed=cfg.seed + 1_000_003, **scene)
    class_names = list(train_set.class_names)
    train_samples, val_samples = _materialise(train_set), _materialise(val_set)
    n_labels = cfg.num_classes + 1

    model = DeconvNet(n_labels, width=cfg.width, input_size=cfg.image_size)

    def held_out(m: torch.nn.Module) -> dict[str, Any]:
        cm = evaluate(m, val_samples, n_labels, progress=False)
        return {"miou": cm.miou(), "pixel_accuracy": cm.pixel_accuracy()}

    common = dict(batch_size=cfg.batch_size, accumulate=1, seed=cfg.seed, device="cpu",
                  eval_every=cfg.eval_every, channels_last=cfg.channels_last)
    stage1 = TrainConfig(iterations=cfg.stage1_iterations, lr=cfg.lr,
                         lr_steps=(int(cfg.stage1_iterations * 0.75),), **common)
    crops1 = GTCropDataset(train_samples, resize=cfg.resize, crop=cfg.image_size,
                           enlarge=cfg.enlarge, seed=cfg.seed, progress=progress)
    summary1 = Trainer(model, crops1, stage1, metrics_path, stage="stage 1 (GT crops)",
                       evaluate=held_out, progress=progress).fit()

    proposer = EdgeBoxes(max_boxes=cfg.proposals_per_image)
    crops2 = ProposalCropDataset(train_samples, proposer, resize=cfg.resize,
                                 crop=cfg.image_size, enlarge=cfg.enlarge, seed=cfg.seed,
                                 progress=progress)
    stage2 = TrainConfig(iterations=cfg.stage2_iterations, lr=cfg.lr * 0.2,
                         lr_steps=(int(cfg.stage2_iterations * 0.67),), **common)
    summary2 = Trainer(model, crops2, stage2, metrics_path, stage="stage 2 (proposal crops)",
                       evaluate=held_out, global_step_offset=cfg.stage1_iterations,
                       progress=progress).fit()

    cm = evaluate(model, val_samples, n_labels, progress=progress)
    predictions = [segment(model, s.image) for s in val_samples]
    for sample, pred in zip(val_samples, predictions, strict=True):
        save_palette_png(os.path.join(out, "predictions", f"{sample.name}.png"), pred)
    _overlay_grid(val_samples, predictions, os.path.join(out, "overlays.png"))
    plot_metrics(metrics_path, out)
    save_checkpoint(os.path.join(out, "deconvnet.pt"), model, class_names=class_names,
                    demo_config=asdict(cfg))
    result = {
        **cm.to_dict(class_names),
        "held_out_images": len(val_samples),
        "stages": [summary1, summary2],
        "seconds": time.perf_counter() - t0,
        "config": asdict(cfg),
        "class_names": class_names,
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result
