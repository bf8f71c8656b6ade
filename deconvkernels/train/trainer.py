"""The training loop: SGD with step decay, gradient accumulation, progress bar, JSONL log."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from .config import TrainConfig

__all__ = ["Trainer", "resolve_device", "IGNORE_INDEX"]

IGNORE_INDEX = 255  # VOC's "void" label: border and ambiguous pixels carry no loss

EvalFn = Callable[[nn.Module], dict[str, Any]]


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"``: the GPU when one is visible, else the CPU; anything else as given."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} asked for, but no CUDA device is visible")
    return device


class Trainer:
    """Trains ``model`` on ``dataset`` (items ``(image float 3xHxW, label int64 HxW)``) for
    ``config.iterations`` optimiser steps with per-pixel cross-entropy (label 255 ignored).

    Writes one JSON line per ``config.log_every`` steps to ``metrics_path`` (``kind: train``:
    loss, learning rate, images/s) and one per evaluation (``kind: eval``: what ``evaluate``
    returned, e.g. ``miou``). ``global_step_offset`` numbers a second stage's steps after the
    first's in that log. A tqdm bar shows loss, learning rate and images/s.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainConfig,
        metrics_path: str | os.PathLike,
        *,
        stage: str = "train",
        evaluate: EvalFn | None = None,
        global_step_offset: int = 0,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dataset = dataset
        self.metrics_path = os.fspath(metrics_path)
        self.stage = stage
        self.evaluate_fn = evaluate
        self.global_step_offset = global_step_offset
        self.progress = progress
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(config.lr_steps), gamma=config.lr_gamma
        )
        self.step = 0
        self.epoch = 0
        self.last_eval: dict[str, Any] | None = None

    # -- data ------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches; each epoch reshuffles from ``(seed, epoch)`` so runs repeat."""
        from ..data import collate_skip_none

        cfg = self.config
        if len(self.dataset) < cfg.batch_size:  # type: ignore[arg-type]
            raise ValueError(
                f"dataset has {len(self.dataset)} items, fewer than batch_size={cfg.batch_size}"  # type: ignore[arg-type]
            )
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            generator = torch.Generator().manual_seed(cfg.seed * 100003 + self.epoch)
            loader = DataLoader(
                self.dataset, batch_size=cfg.batch_size, drop_last=True,
                sampler=RandomSampler(self.dataset, generator=generator),
                num_workers=cfg.num_workers, collate_fn=collate_skip_none,
                pin_memory=self.device.type == "cuda",
            )
            for batch in loader:
                if batch is not None:
                    yield batch
            self.epoch += 1

    # -- loop ------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def run_evaluation(self) -> dict[str, Any] | None:
        """Run the evaluation callback (model in eval mode) and log its result."""
        if self.evaluate_fn is None:
            return None
        self.model.eval()
        with torch.no_grad():
            result = dict(self.evaluate_fn(self.model))
        self.model.train()
        self.last_eval = result
        self._log({
            "kind": "eval", "stage": self.stage, "step": self.step,
            "global_step": self.global_step_offset + self.step, **result,
        })
        return result

    def fit(self) -> dict[str, Any]:
        """Train for ``config.iterations`` steps; returns a summary (final loss, images/s,
        seconds, last evaluation)."""
        cfg = self.config
        os.makedirs(os.path.dirname(os.path.abspath(self.metrics_path)), exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.model.train()
        batches = self._batches()
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        start = window_start = time.perf_counter()
        window_loss, window_images, window_steps = 0.0, 0, 0
        last_loss = float("nan")
        bar = tqdm(total=cfg.iterations, desc=self.stage, unit="step", disable=not self.progress,
                   dynamic_ncols=True, leave=True)
        while self.step < cfg.iterations:
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(cfg.accumulate):
                images, labels = next(batches)
                images = images.to(self.device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(self.device, non_blocking=True)
                loss = F.cross_entropy(self.model(images), labels, ignore_index=IGNORE_INDEX)
                (loss / cfg.accumulate).backward()
                step_loss += loss.item() / cfg.accumulate
                window_images += images.shape[0]
            if not torch.isfinite(torch.tensor(step_loss)):
                raise FloatingPointError(
                    f"{self.stage}: loss is {step_loss} at step {self.step + 1}; "
                    "lower the learning rate (lr) or check the labels"
                )
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            window_loss += step_loss
            window_steps += 1
            last_loss = step_loss
            if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                now = time.perf_counter()
                ips = window_images / max(now - window_start, 1e-9)
                lr = self.optimizer.param_groups[0]["lr"]
                self._log({
                    "kind": "train", "stage": self.stage, "step": self.step,
                    "global_step": self.global_step_offset + self.step,
                    "loss": window_loss / window_steps, "lr": lr, "images_per_s": ips,
                    "time": now - start,
                })
                bar.set_postfix(loss=f"{window_loss / window_steps:.3f}", lr=f"{lr:.2g}",
                                img_s=f"{ips:.0f}")
                window_start, window_loss, window_images, window_steps = now, 0.0, 0, 0
            bar.update(1)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.iterations:
                self.run_evaluation()
        bar.close()
        seconds = time.perf_counter() - start
        self.run_evaluation()
        return {
            "stage": self.stage, "steps": self.step, "final_loss": last_loss,
            "seconds": seconds,
            "images_per_s": self.step * cfg.accumulate * cfg.batch_size / max(seconds, 1e-9),
            "eval": self.last_eval,
        }
