"""The training loop: SGD with step decay, gradient accumulation, mixed precision, progress
bar, JSONL log, and checkpoints that resume exactly."""

from __future__ import annotations

import glob
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data import collate_skip_none
from ..data.sample import IGNORE_INDEX  # VOC's "void": borders and padding carry no loss
from .checkpoint import load_checkpoint, load_weights, save_checkpoint
from .config import TrainConfig
from .distributed import rank_and_world

__all__ = ["Trainer", "resolve_device", "IGNORE_INDEX"]


EvalFn = Callable[[nn.Module], dict[str, Any]]
StepHook = Callable[["Trainer"], None]


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

    With ``checkpoint_dir``, resumable checkpoints (``step-XXXXXXX.pt``: model, optimiser,
    scheduler, gradient scaler, the torch/numpy/python RNG states, the data position and the
    step) are written every ``config.checkpoint_every`` steps and at the end, keeping the last
    ``config.keep_last``; :meth:`resume` continues one exactly (same batches, same updates:
    bit-identical weights on the CPU).

    Inside a process group (``torchrun``; see :mod:`.distributed`) the model is wrapped in
    ``DistributedDataParallel`` (``config.sync_bn``: BatchNorm over all processes, CUDA
    only) and each process takes every ``world``-th batch of the same epoch order, so N
    processes of batch ``b`` and accumulation ``a`` see exactly the micro-batches one process
    with ``accumulate = a * N`` would. Only rank 0 logs, evaluates and writes checkpoints.
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
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_extra: dict[str, Any] | None = None,
        on_step: StepHook | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' on the CPU")
        self.rank, self.world = rank_and_world()
        model = model.to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.world > 1:
            if config.sync_bn:
                if self.device.type != "cuda":
                    raise ValueError("sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel)")
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.model = model
        self.dataset = dataset
        self.metrics_path = os.fspath(metrics_path)
        self.stage = stage
        self.evaluate_fn = evaluate
        self.global_step_offset = global_step_offset
        self.progress = progress and self.rank == 0
        self.checkpoint_dir = os.fspath(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.on_step = on_step
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(config.lr_steps), gamma=config.lr_gamma
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch already consumed
        self.last_eval: dict[str, Any] | None = None

    # -- data ------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches. Each epoch's order is a permutation drawn from ``(seed, epoch)``
        alone, so a resumed run skips exactly the batches it already consumed."""
        cfg = self.config
        n = len(self.dataset)  # type: ignore[arg-type]
        b = cfg.batch_size
        if n < b * self.world:
            raise ValueError(
                f"dataset has {n} items, fewer than batch_size={b} x {self.world} processes"
            )
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            generator = torch.Generator().manual_seed(cfg.seed * 100003 + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
            if self.world > 1:  # this rank's batches: global batches rank, rank + world, ...
                usable = (n // b) // self.world * self.world
                order = [i for k in range(self.rank, usable, self.world)
                         for i in order[k * b:(k + 1) * b]]
            loader = DataLoader(
                self.dataset, batch_size=b, drop_last=True,
                sampler=order[self.batch_in_epoch * b:],
                num_workers=cfg.num_workers, collate_fn=collate_skip_none,
                pin_memory=self.device.type == "cuda",
            )
            for batch in loader:
                self.batch_in_epoch += 1
                if batch is not None:
                    yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs besides the model: optimiser, scheduler, scaler,
        RNG states, data position, step."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "stage": self.stage,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": json.dumps(_numpy_state()),
                "python": json.dumps(_python_state()),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the model is loaded separately)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        _set_numpy_state(json.loads(rng["numpy"]))
        _set_python_state(json.loads(rng["python"]))

    def save(self) -> str | None:
        """Write a resumable checkpoint into ``checkpoint_dir`` (atomically), keeping the last
        ``keep_last``; returns its path (``None`` without a checkpoint folder)."""
        if self.checkpoint_dir is None or self.rank != 0:
            return None
        path = os.path.join(self.checkpoint_dir, f"step-{self.step:07d}.pt")
        save_checkpoint(path, self.model, trainer=self.state_dict(),
                        train_config=self.config.to_dict(), step=self.step,
                        **self.checkpoint_extra)
        for old in sorted(glob.glob(os.path.join(self.checkpoint_dir, "step-*.pt")))[
            : -self.config.keep_last
        ]:
            os.unlink(old)
        return path

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint written by :meth:`save` (``path``, or a folder: its
        latest). A missing, truncated or foreign file is an error naming it."""
        path = os.fspath(path)
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "step-*.pt")))
            if not found:
                raise FileNotFoundError(f"no checkpoint (step-*.pt) to resume in {path!r}")
            path = found[-1]
        ckpt = load_checkpoint(path)
        if "trainer" not in ckpt:
            raise ValueError(f"{path!r} holds weights only, not a resumable training state")
        load_weights(self.model, ckpt, path)
        self.load_state_dict(ckpt["trainer"])

    # -- loop ------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def run_evaluation(self) -> dict[str, Any] | None:
        """Run the evaluation callback (model in eval mode) and log its result."""
        if self.evaluate_fn is None or self.rank != 0:
            return None
        # The bare module: a DDP forward would wait for the other ranks (buffer broadcast).
        module = self.model.module if self.world > 1 else self.model
        module.eval()
        with torch.no_grad():
            result = dict(self.evaluate_fn(module))
        module.train()
        self.last_eval = result
        self._log({
            "kind": "eval", "stage": self.stage, "step": self.step,
            "global_step": self.global_step_offset + self.step, **result,
        })
        return result

    def _autocast(self) -> torch.autocast:
        amp = self.config.amp
        dtype = torch.float16 if amp == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=amp != "none")

    def fit(self) -> dict[str, Any]:
        """Train up to ``config.iterations`` steps (from the resumed step, if any); returns a
        summary (final loss, images/s, seconds, last evaluation, last checkpoint)."""
        cfg = self.config
        os.makedirs(os.path.dirname(os.path.abspath(self.metrics_path)), exist_ok=True)
        if self.step == 0:
            torch.manual_seed(cfg.seed)
        self.model.train()
        batches = self._batches()
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        start = window_start = time.perf_counter()
        first_step = self.step
        window_loss, window_images, window_steps = 0.0, 0, 0
        last_loss = float("nan")
        checkpoint = None
        bar = tqdm(total=cfg.iterations, initial=self.step, desc=self.stage, unit="step",
                   disable=not self.progress, dynamic_ncols=True, leave=True)
        while self.step < cfg.iterations:
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(cfg.accumulate):
                images, labels = next(batches)
                images = images.to(self.device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(self.device, non_blocking=True)
                with self._autocast():
                    scores = self.model(images)
                loss = F.cross_entropy(scores.float(), labels, ignore_index=IGNORE_INDEX)
                self.scaler.scale(loss / cfg.accumulate).backward()
                step_loss += loss.item() / cfg.accumulate
                window_images += images.shape[0]
            if not np.isfinite(step_loss) and not self.scaler.is_enabled():
                raise FloatingPointError(
                    f"{self.stage}: loss is {step_loss} at step {self.step + 1}; "
                    "lower the learning rate (lr) or check the labels"
                )
            self.scaler.step(self.optimizer)  # skips the step on inf/NaN gradients in fp16
            self.scaler.update()
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
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                checkpoint = self.save()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.iterations:
                self.run_evaluation()
            if self.on_step is not None:
                self.on_step(self)
        bar.close()
        seconds = time.perf_counter() - start
        if self.checkpoint_dir is not None and (
            not cfg.checkpoint_every or self.step % cfg.checkpoint_every
        ):
            checkpoint = self.save()
        self.run_evaluation()
        steps = self.step - first_step
        return {
            "stage": self.stage, "steps": self.step, "final_loss": last_loss,
            "seconds": seconds,
            "images_per_s": steps * cfg.accumulate * cfg.batch_size / max(seconds, 1e-9),
            "eval": self.last_eval, "checkpoint": checkpoint,
        }


def _numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_numpy_state(state: list) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_state(state: list) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))
