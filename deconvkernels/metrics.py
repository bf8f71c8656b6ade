"""Segmentation metrics: a confusion matrix and what PASCAL VOC reports from it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """Counts ``(ground truth, prediction)`` pairs over many images; label ``ignore_index``
    (255 in VOC) is left out. ``matrix[t, p]`` is the number of pixels of class ``t``
    predicted as ``p``.

    IoU of class ``c`` = TP / (TP + FP + FN); mIoU averages the classes that occur in the
    ground truth or the predictions (a class absent from both has no IoU), as VOC does.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(
        self, prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray
    ) -> None:
        """Add a batch: ``prediction`` and ``target`` integer class maps of the same shape."""
        p = torch.as_tensor(prediction).reshape(-1).to("cpu", torch.int64)
        t = torch.as_tensor(target).reshape(-1).to("cpu", torch.int64)
        if p.shape != t.shape:
            raise ValueError(
                f"prediction has {p.numel()} pixels, target {t.numel()}: shapes must match"
            )
        keep = t != self.ignore_index
        p, t = p[keep], t[keep]
        n = self.num_classes
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
            raise ValueError(
                f"target holds classes outside [0, {n}) other than {self.ignore_index}"
            )
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= n):
            raise ValueError(f"prediction holds classes outside [0, {n})")
        counts = torch.bincount(t * n + p, minlength=n * n)
        self.matrix += counts.reshape(n, n).numpy()

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts (e.g. from another process)."""
        self.matrix += other.matrix

    def iou(self) -> np.ndarray:
        """Per-class IoU, NaN for a class absent from ground truth and predictions."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that have one."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted right."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def mean_accuracy(self) -> float:
        """Per-class recall, averaged over the classes present in the ground truth."""
        gt = self.matrix.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(gt > 0, np.diag(self.matrix) / np.maximum(gt, 1), np.nan)
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-ready summary: ``miou``, ``pixel_accuracy``, ``mean_accuracy``, per-class IoU
        (``None`` where undefined) and the matrix itself."""
        names = list(class_names) if class_names is not None else [
            str(i) for i in range(self.num_classes)
        ]
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_accuracy": self.mean_accuracy(),
            "per_class_iou": {
                name: (None if np.isnan(v) else float(v))
                for name, v in zip(names, self.iou(), strict=True)
            },
            "confusion_matrix": self.matrix.tolist(),
        }

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """A plain-text table of per-class IoU, then mIoU and pixel accuracy."""
        names = list(class_names) if class_names is not None else [
            str(i) for i in range(self.num_classes)
        ]
        width = max(12, *(len(n) for n in names))
        lines = [f"{'class':<{width}}  {'IoU':>7}  {'pixels':>10}"]
        gt = self.matrix.sum(1)
        for name, v, count in zip(names, self.iou(), gt, strict=True):
            iou = "    n/a" if np.isnan(v) else f"{100 * v:7.2f}"
            lines.append(f"{name:<{width}}  {iou}  {count:>10d}")
        lines.append(f"{'mean IoU':<{width}}  {100 * self.miou():7.2f}")
        lines.append(f"{'pixel acc.':<{width}}  {100 * self.pixel_accuracy():7.2f}")
        return "\n".join(lines)
