"""Whole-image inference: resize to the network's input, score, resize the scores back."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.transforms import to_tensor
from ..metrics import ConfusionMatrix

__all__ = [
    "eval_mode",
    "evaluate",
    "evaluate_images",
    "network_input_size",
    "predict_scores",
    "segment",
]


def network_input_size(model: nn.Module) -> int | None:
    """The square side a model was built for (DeconvNet's ``input_size``), or ``None`` when
    it takes any size (SegNet)."""
    module = model.module if hasattr(model, "module") else model
    return getattr(module, "input_size", None)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (BN population statistics) for the block, whatever mode the
    caller left it in; that mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_scores(
    model: nn.Module, images: Sequence[np.ndarray], size: int | None = None
) -> torch.Tensor:
    """Class probabilities ``(N, C, H, W)`` (float32, CPU) for same-sized RGB uint8 images.

    Each image is resized to ``size x size`` (default: the model's input size; models without
    one get the image padded to a multiple of 32 instead), scored, and the softmax resized
    back to the image (bilinear), as the paper's whole-image baseline does.
    """
    if len(images) == 0:
        raise ValueError("predict_scores: no images")
    h, w = images[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in images):
        raise ValueError("predict_scores: images of one call must share their size")
    size = size or network_input_size(model)
    x = torch.stack([to_tensor(im) for im in images]).to(model_device(model))
    if size is not None:
        # Antialiased when shrinking, as the training crops are (crop_resize area-averages):
        # plain bilinear sampling of a 500 px image down to 224 aliases fine texture.
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    else:  # fully convolutional: pad to what five 2x2 pools divide, crop the scores back
        ph, pw = -h % 32, -w % 32
        x = F.pad(x, (0, pw, 0, ph))
    with eval_mode(model):
        scores = model(x).float().softmax(1)
    if size is not None:
        scores = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False)
    else:
        scores = scores[..., :h, :w]
    return scores.cpu()


def segment(model: nn.Module, image: np.ndarray, size: int | None = None) -> np.ndarray:
    """The class map ``(H, W)`` uint8 of one RGB uint8 image."""
    return predict_scores(model, [image], size)[0].argmax(0).to(torch.uint8).numpy()


def _same_size_batches(dataset: Iterable[Any], batch_size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for sample in dataset:
        if sample is None:  # a bad file, already reported and counted by the dataset
            continue
        if batch and (len(batch) == batch_size or sample.image.shape != batch[0].image.shape):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


def evaluate(
    model: nn.Module,
    dataset: Sequence[Any],
    num_classes: int,
    size: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> ConfusionMatrix:
    """Whole-image confusion matrix of ``model`` over ``dataset`` (items with ``.image`` and
    ``.label``, e.g. :class:`~deconvkernels.data.Sample`; ``None`` items are skipped)."""
    matrix = ConfusionMatrix(num_classes)
    bar = tqdm(total=len(dataset), desc="eval", unit="img", disable=not progress, leave=False)
    try:
        for batch in _same_size_batches((dataset[i] for i in range(len(dataset))), batch_size):
            scores = predict_scores(model, [s.image for s in batch], size)
            matrix.update(scores.argmax(1), np.stack([s.label for s in batch]))
            bar.update(len(batch))
    finally:
        bar.close()
    return matrix


def evaluate_images(
    segment_fn: Callable[[Any], np.ndarray],
    dataset: Sequence[Any],
    num_classes: int,
    progress: bool = True,
    desc: str = "eval",
) -> ConfusionMatrix:
    """Confusion matrix of ``segment_fn(item) -> (H, W) labels`` over ``dataset``, one image
    at a time (items with ``.image`` and ``.label``; ``None`` items, unreadable files already
    reported by the dataset, are skipped), with a progress bar over images."""
    matrix = ConfusionMatrix(num_classes)
    bar = tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        for i in range(len(dataset)):
            sample = dataset[i]
            if sample is not None:
                matrix.update(segment_fn(sample), sample.label)
            bar.update(1)
    finally:
        bar.close()
    return matrix
