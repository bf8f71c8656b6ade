"""The training loop: SGD with step decay, gradient accumulation, mixed precision, progress
bar, JSONL log, and checkpoints that resume exactly."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
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

# With fp16 the gradient scaler skips a step whose loss or gradients are inf/NaN and lowers its
# scale: a few such steps are normal while it finds its range, but a loss that stays NaN (bad
# labels, diverged weights) would otherwise skip every step to the end without a word. This
# many consecutive non-finite losses end the run with the same error as without a scaler.
MAX_NONFINITE_STEPS = 20

# Settings a resumed run must share with its checkpoint: they fix which batches each step
# sees (the data position counts batches of batch_size per process, the epoch order comes
# from the seed) and the stage's identity; any difference breaks the exact resume.
_RESUME_MUST_MATCH = ("world_size", "batch_size", "accumulate", "seed", "stage")
# Settings the checkpoint's optimiser/scheduler state overrides on resume (its learning rate
# and milestones continue): a difference is worth a warning, not an error.
_RESUME_OVERRIDDEN = ("lr", "lr_steps")


def nonfinite_streak(loss: float, streak: int, *, scaled: bool, stage: str, step: int) -> int:
    """The count of consecutive non-finite step losses after one with ``loss`` (``streak``
    before it). Without a gradient scaler a non-finite loss is an error at once; with one
    (fp16) the scaler skips such a step, and only ``MAX_NONFINITE_STEPS`` in a row are an
    error. Both errors name ``stage`` and ``step`` and suggest a fix."""
    if math.isfinite(loss):
        return 0
    streak += 1
    if not scaled or streak >= MAX_NONFINITE_STEPS:
        in_a_row = f" ({streak} steps in a row)" if scaled else ""
        raise FloatingPointError(
            f"{stage}: loss is {loss} at step {step}{in_a_row}; "
            "lower the learning rate (lr) or check the labels"
        )
    return streak


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
    the mean loss of those steps, the learning rate the last of them used, images/s) and one
    per evaluation (``kind: eval``: what ``evaluate`` returned, e.g. ``miou``).
    ``global_step_offset`` numbers a second stage's steps after the first's in that log. A
    tqdm bar shows loss, learning rate and images/s.

    With ``checkpoint_dir``, resumable checkpoints (``step-XXXXXXX.pt``: model, optimiser,
    scheduler, gradient scaler, the torch/numpy/python RNG states, the data position and the
    step) are written every ``config.checkpoint_every`` steps and at the end, keeping the last
    ``config.keep_last``; :meth:`resume` continues one exactly (same batches, same updates:
    bit-identical weights on the CPU), refuses settings that would change the batches, and
    drops the log records the killed run wrote after its checkpoint.

    Inside a process group (``torchrun``; see :mod:`.distributed`) the model is wrapped in
    ``DistributedDataParallel`` (``config.sync_bn``: BatchNorm over all processes, CUDA
    only) and each process takes every ``world``-th batch of the same epoch order, so N
    processes of batch ``b`` and accumulation ``a`` see exactly the micro-batches one process
    with ``accumulate = a * N`` would; gradients are all-reduced once per step (``no_sync``
    for the other micro-batches). Only rank 0 logs, evaluates and writes checkpoints; the
    logged loss and images/s are over all processes.

    The dataset must hold at least one batch per process (``ValueError`` here otherwise).
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
        # Checked here rather than when the first batch is drawn, so the caller (the CLI)
        # gets a ValueError from the constructor instead of a traceback out of fit().
        n, global_batch = len(dataset), config.batch_size * self.world  # type: ignore[arg-type]
        if n < global_batch:
            raise ValueError(
                f"the dataset yields {n} crops, fewer than one batch of batch_size x "
                f"processes = {config.batch_size} x {self.world} = {global_batch}"
            )
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
        n = len(self.dataset)  # type: ignore[arg-type]  # >= one global batch: __init__
        b = cfg.batch_size
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
            **self._resume_settings(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": json.dumps(_numpy_state()),
                "python": json.dumps(_python_state()),
            },
        }

    def _resume_settings(self) -> dict[str, Any]:
        """The settings :meth:`load_state_dict` compares with the checkpoint's (see
        ``_RESUME_MUST_MATCH`` and ``_RESUME_OVERRIDDEN``)."""
        cfg = self.config
        return {
            "world_size": self.world, "batch_size": cfg.batch_size,
            "accumulate": cfg.accumulate, "seed": cfg.seed, "stage": self.stage,
            "lr": cfg.lr, "lr_steps": list(cfg.lr_steps),
        }

    def _check_resume_settings(self, state: dict[str, Any]) -> None:
        """A ``ValueError`` naming the first setting that would break an exact resume, a
        ``UserWarning`` for each one the checkpoint's optimiser state overrides. Keys an
        older checkpoint lacks are not compared."""
        ours = self._resume_settings()
        ours["lr_steps"] = [int(s) for s in ours["lr_steps"]]
        for name in _RESUME_MUST_MATCH:
            if name in state and state[name] != ours[name]:
                what = "number of processes (world size)" if name == "world_size" else name
                raise ValueError(
                    f"resume: {what} {ours[name]!r} differs from the checkpoint's "
                    f"{state[name]!r}; it fixes which batches each step sees, so the run "
                    "cannot continue exactly: resume with the checkpoint's setting or start "
                    "a new run"
                )
        for name in _RESUME_OVERRIDDEN:
            theirs = state.get(name)
            if name == "lr_steps" and theirs is not None:
                theirs = [int(s) for s in theirs]
            if theirs is not None and theirs != ours[name] and self.rank == 0:  # once
                warnings.warn(
                    f"resume: {name} {ours[name]!r} differs from the checkpoint's {theirs!r}; "
                    "the checkpoint's optimizer/scheduler state wins (its learning rate and "
                    "schedule continue)",
                    UserWarning, stacklevel=3,
                )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the model is loaded separately). A
        setting that breaks an exact resume (world size, batch size, accumulation, seed,
        stage) is a ``ValueError``; a different lr or lr_steps a warning."""
        self._check_resume_settings(state)
        self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
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
        latest). A missing, truncated or foreign file is an error naming it; so is a
        different world size, batch size, accumulation, seed or stage (see
        :meth:`load_state_dict`). This stage's records after the resumed step are removed from
        ``metrics_path``: the resumed run logs those steps again."""
        path = os.fspath(path)
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "step-*.pt")))
            if not found:
                raise FileNotFoundError(f"no checkpoint (step-*.pt) to resume in {path!r}")
            path = found[-1]
        ckpt = load_checkpoint(path)
        if "trainer" not in ckpt:
            raise ValueError(f"{path!r} holds weights only, not a resumable training state")
        self._check_resume_settings(ckpt["trainer"])  # before anything changes
        load_weights(self.model, ckpt, path)
        self._restore(ckpt["trainer"])
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop this stage's log records after the resumed step: the killed run logged them
        after its last checkpoint, and the resumed run logs those steps again. Other stages'
        records stay; unreadable lines (a torn last line) go. Rank 0 only, and atomically (a
        temporary file renamed over the log), so a kill now cannot lose the log."""
        if self.rank != 0 or not os.path.isfile(self.metrics_path):
            return
        kept = []
        with open(self.metrics_path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not (isinstance(record, dict) and record.get("stage") == self.stage
                        and record.get("step", 0) > self.step):
                    kept.append(line if line.endswith("\n") else line + "\n")
        folder = os.path.dirname(os.path.abspath(self.metrics_path))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.writelines(kept)
                f.flush()
                os.fsync(f.fileno())
            shutil.copymode(self.metrics_path, tmp)  # mkstemp's file is private (0600)
            os.replace(tmp, self.metrics_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

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
        window_loss, window_images, window_steps = 0.0, 0, 0
        images_logged = 0  # over all processes: every step ends in a logged window
        last_loss = float("nan")
        nonfinite = 0  # consecutive non-finite step losses (fp16: steps the scaler skipped)
        checkpoint = None
        bar = tqdm(total=cfg.iterations, initial=self.step, desc=self.stage, unit="step",
                   disable=not self.progress, dynamic_ncols=True, leave=True)
        while self.step < cfg.iterations:
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(cfg.accumulate):
                images, labels = next(batches)
                images = images.to(self.device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(self.device, non_blocking=True)
                # DDP: gradients are averaged over the processes once per step, in the last
                # micro-batch's backward; the others only accumulate locally.
                with self._no_sync(last=micro == cfg.accumulate - 1):
                    with self._autocast():
                        scores = self.model(images)
                    loss = F.cross_entropy(scores.float(), labels, ignore_index=IGNORE_INDEX)
                    self.scaler.scale(loss / cfg.accumulate).backward()
                step_loss += loss.item() / cfg.accumulate
                window_images += images.shape[0]
            nonfinite = nonfinite_streak(step_loss, nonfinite, scaled=self.scaler.is_enabled(),
                                         stage=self.stage, step=self.step + 1)
            self.scaler.step(self.optimizer)  # skips the step on inf/NaN gradients in fp16
            self.scaler.update()
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
            self.scheduler.step()
            self.step += 1
            window_loss += step_loss
            window_steps += 1
            last_loss = step_loss
            if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                # Every process reaches this line at the same steps (the condition depends on
                # the step alone), so the collective in _global_window cannot deadlock.
                window_loss, window_images, last_loss = self._global_window(
                    window_loss, window_images, last_loss)
                images_logged += window_images
                now = time.perf_counter()
                ips = window_images / max(now - window_start, 1e-9)
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
        return {
            "stage": self.stage, "steps": self.step, "final_loss": last_loss,
            "seconds": seconds, "images_per_s": images_logged / max(seconds, 1e-9),
            "eval": self.last_eval, "checkpoint": checkpoint,
        }

    def _no_sync(self, *, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's ``no_sync()`` (no gradient all-reduce in this backward) unless ``last``."""
        if last or not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _global_window(
        self, loss_sum: float, images: int, last_loss: float
    ) -> tuple[float, int, float]:
        """A logging window's summed step losses, image count and last step loss over all
        processes: loss sums averaged over them (each process's step loss is its own
        micro-batches' mean), images added. One small all-reduce per log line; the values
        as they are outside a process group."""
        if self.world <= 1 or not (dist.is_available() and dist.is_initialized()):
            return loss_sum, images, last_loss
        t = torch.tensor([loss_sum, float(images), last_loss], dtype=torch.float64,
                         device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        total_loss, total_images, total_last = t.tolist()
        return total_loss / self.world, round(total_images), total_last / self.world


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
