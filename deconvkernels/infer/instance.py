"""Instance-wise inference (the paper's Sec. 4.1): proposals in, one score map per image out.

The network runs on up to ``top_n`` object proposals per image, each framed and cropped as
stage-2 training does (:func:`~deconvkernels.data.samplers.context_window`, then the padded
:func:`~deconvkernels.data.samplers.crop_resize` to the network's input); each crop's class
map is put back into its window and the maps are merged by pixel-wise maximum (or mean).

**Which scores are merged: probabilities.** Each crop's logits go through a softmax first;
the merged maps are renormalised per pixel so the result is again a distribution. The
release max-merges raw scores instead (the ``seg-score`` blob, pre-softmax, into a
zero-initialised map, so clipped at 0), and the paper's text applies the softmax after the
maximum. Softmax first is chosen because probabilities are bounded and comparable between
crops, between a crop and the whole-image map (:func:`~.whole.predict_scores` gives
probabilities), and with FCN-8s's map in the ensemble and the CRF, which both take
probabilities; the pixel-wise maximum still does what the paper wants from it (the class a
confident instance found wins where that instance is). It is also what makes
``mode="mean"`` meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.samplers import ProposalFn, context_window, crop_resize
from ..data.transforms import to_tensor
from ..metrics import ConfusionMatrix
from .crf import dense_crf, require_crf
from .ensemble import EnsembleMode, ensemble_scores, normalize_scores
from .whole import (
    eval_mode,
    evaluate_images,
    model_device,
    network_input_size,
    predict_scores,
)

__all__ = [
    "aggregate_box_scores",
    "evaluate_instances",
    "predict_instances",
    "segment_instances",
    "select_proposals",
]

MergeMode = Literal["max", "mean"]

#: Crop side for models without a built-in input size (SegNet, FCN-8s): DeconvNet's.
DEFAULT_CROP = 224


def _pixel_span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Pixels ``[a, b)`` of ``[0, n)`` whose centres ``i + 0.5`` lie in ``[lo, hi)``."""
    a = max(0, int(np.ceil(lo - 0.5)))
    b = min(n, int(np.ceil(hi - 0.5)))
    return a, max(a, b)


class _Merger:
    """Running pixel-wise max (or sum and count) of class maps laid into image windows.

    Windows are float ``x0, y0, x1, y1`` boxes (exclusive ends) that may leave the image: a
    map is stretched over its window's full extent (bilinear, the same pixel-centre
    geometry as :func:`crop_resize`, so a crop's map lands where the crop came from) and
    only its in-image part is kept.
    """

    def __init__(
        self, num_classes: int, image_size: tuple[int, int], mode: MergeMode,
        whole: torch.Tensor | None, device: torch.device,
    ) -> None:
        if mode not in ("max", "mean"):
            raise ValueError(f"aggregation mode must be 'max' or 'mean', got {mode!r}")
        h, w = image_size
        self.mode, self.size, self.num_classes = mode, (h, w), num_classes
        if whole is not None:
            whole = torch.as_tensor(whole).to(device, torch.float32)
            if whole.shape != (num_classes, h, w):
                raise ValueError(
                    f"whole-image map has shape {tuple(whole.shape)}, expected "
                    f"{(num_classes, h, w)}"
                )
        # The whole-image map takes part everywhere, like one more window covering it all.
        if mode == "max":
            self.acc = whole.clone() if whole is not None else torch.full(
                (num_classes, h, w), -torch.inf, device=device)
        else:
            self.acc = whole.clone() if whole is not None else torch.zeros(
                (num_classes, h, w), device=device)
        self.count = torch.full((h, w), int(whole is not None), device=device, dtype=torch.int32)

    def add(self, score_map: torch.Tensor, window: Sequence[float]) -> None:
        c = score_map.shape[0]
        if score_map.dim() != 3 or c != self.num_classes:
            raise ValueError(
                f"score map has shape {tuple(score_map.shape)}, expected "
                f"({self.num_classes}, h, w)"
            )
        x0, y0, x1, y1 = (float(v) for v in window)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"empty window {tuple(window)}")
        h, w = self.size
        c0, c1 = _pixel_span(x0, x1, w)
        r0, r1 = _pixel_span(y0, y1, h)
        if c1 == c0 or r1 == r0:
            return  # the window lies outside the image
        dev = self.acc.device
        # Normalised sampling positions (align_corners=False) of the covered pixels' centres
        # in the map: F.interpolate to the window's size, evaluated where the image is.
        gx = (torch.arange(c0, c1, device=dev) + 0.5 - x0) * (2.0 / (x1 - x0)) - 1.0
        gy = (torch.arange(r0, r1, device=dev) + 0.5 - y0) * (2.0 / (y1 - y0)) - 1.0
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
        m = score_map.to(dev, torch.float32)[None]
        part = F.grid_sample(m, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[0]
        region = self.acc[:, r0:r1, c0:c1]
        if self.mode == "max":
            torch.maximum(region, part, out=region)
        else:
            region += part
        self.count[r0:r1, c0:c1] += 1

    def result(self, normalize: bool) -> torch.Tensor:
        covered = self.count > 0
        if self.mode == "max":
            out = torch.where(covered, self.acc, torch.zeros_like(self.acc))
        else:
            out = self.acc / self.count.clamp_min(1)
        # Uncovered pixels are 0 here (the release's zero-initialised map); normalising
        # makes them uniform (argmax: background).
        return normalize_scores(out) if normalize else out


def aggregate_box_scores(
    score_maps: Sequence[torch.Tensor] | torch.Tensor,
    boxes: np.ndarray | Sequence[Sequence[float]],
    image_size: tuple[int, int],
    mode: MergeMode = "max",
    whole: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Put per-window class maps back into the image and merge them.

    Args:
        score_maps: ``N`` maps ``(C, h, w)`` (a list, sizes may differ, or an ``(N, C, h, w)``
            tensor), non-negative scores such as softmax probabilities.
        boxes: ``(N, 4)`` float windows ``x0, y0, x1, y1`` (exclusive ends) the maps were
            cropped from; they may leave the image (crops are padded): each map is resized
            (bilinear) to its window's full extent and only the in-image part is kept.
        image_size: ``(H, W)``.
        mode: ``"max"``: pixel-wise maximum, per class, over the maps covering a pixel (the
            paper); ``"mean"``: their average.
        whole: optional ``(C, H, W)`` whole-image map; it takes part at every pixel, as one
            more map covering the image (in the max, or in the average).
        normalize: divide each pixel by its sum over the classes, so the result is a
            distribution (the maximum of distributions is not one).

    Pixels no map covers: with ``whole``, every pixel is covered. Without it they are 0 in
    both modes (the release's zero-initialised map), which ``normalize`` turns into the
    uniform ``1 / C``: argmax background, and a CRF fills them from their neighbours.

    Returns:
        float32 ``(C, H, W)`` on the maps' device.
    """
    maps = list(score_maps)
    windows = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(maps) != len(windows):
        raise ValueError(f"{len(maps)} score maps but {len(windows)} boxes")
    if not maps and whole is None:
        raise ValueError("aggregate_box_scores: no score maps and no whole-image map")
    ref = maps[0] if maps else torch.as_tensor(whole)
    if any(m.dim() != 3 for m in maps):
        raise ValueError("aggregate_box_scores: every score map must be (C, h, w)")
    merger = _Merger(ref.shape[0], image_size, mode, whole, ref.device)
    for m, window in zip(maps, windows, strict=True):
        merger.add(m, window)
    return merger.result(normalize)


def select_proposals(
    proposals: np.ndarray | tuple[np.ndarray, np.ndarray], top_n: int = 50,
    min_side: float = 112.0,
) -> np.ndarray:
    """The boxes instance-wise inference runs on: the best ``top_n`` whose shorter side is
    at least ``min_side``, as the release (skip small boxes, stop after 50 processed).

    ``proposals`` is ``(N, 4)`` boxes in order of preference, or ``(boxes, scores)`` (as
    :class:`~deconvkernels.proposals.EdgeBoxes` returns), then sorted by score, descending.
    """
    if isinstance(proposals, tuple):
        boxes, scores = proposals
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        boxes = boxes[np.argsort(-scores, kind="stable")]
    else:
        boxes = np.asarray(proposals, np.float32).reshape(-1, 4)
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return boxes[side >= max(min_side, np.finfo(np.float32).tiny)][: max(int(top_n), 0)]


@torch.no_grad()
def predict_instances(
    model: nn.Module,
    image: np.ndarray,
    proposals: np.ndarray | tuple[np.ndarray, np.ndarray],
    top_n: int = 50,
    min_side: float = 112.0,
    mode: MergeMode = "max",
    include_whole: bool = True,
    batch_size: int = 16,
    size: int | None = None,
    enlarge: float = 1.2,
    square: bool = True,
) -> torch.Tensor:
    """Class probabilities ``(C, H, W)`` (float32, CPU) of one RGB uint8 image, instance-wise.

    Args:
        model: a segmentation network returning logits (run in eval mode, restored after).
        image: ``(H, W, 3)`` uint8 RGB.
        proposals: boxes ``(N, 4)`` ``x0, y0, x1, y1`` or ``(boxes, scores)``
            (:func:`select_proposals`).
        top_n: at most this many proposals are run (the paper: 50).
        min_side: proposals whose shorter side is below this are skipped. 112 px is the
            release's value at PASCAL VOC scale (~500 px images); scale it with the image
            (small demo images need a much lower value, or every box is skipped).
        mode: ``"max"`` (the paper) or ``"mean"``, see :func:`aggregate_box_scores`.
        include_whole: also run the whole image (resized to the network input) and merge its
            map in, so pixels no proposal reaches get a real prediction instead of the
            uniform map (an addition: the paper and the release use proposals only). Whatever
            this says, the whole image is used alone when no proposal survives the filter.
        batch_size: crops per forward pass.
        size: the crop side fed to the network (default: the model's ``input_size``, else
            224); the whole image is scored as :func:`~.whole.predict_scores` does.
        enlarge, square: framing of each crop around its proposal
            (:func:`~deconvkernels.data.samplers.context_window`, as stage-2 training).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    h, w = image.shape[:2]
    boxes = select_proposals(proposals, top_n, min_side)
    whole = None
    if include_whole or len(boxes) == 0:
        whole = predict_scores(model, [image], size)[0]
        if len(boxes) == 0:
            return normalize_scores(whole)
    crop = size or network_input_size(model) or DEFAULT_CROP
    device = model_device(model)
    windows = [context_window(b, enlarge, square) for b in boxes]
    merger: _Merger | None = None
    with eval_mode(model):
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            x = torch.stack([to_tensor(crop_resize(image, None, win, crop)[0]) for win in chunk])
            probs = model(x.to(device)).float().softmax(1)
            if merger is None:
                merger = _Merger(probs.shape[1], (h, w), mode, whole, probs.device)
            for p, win in zip(probs, chunk, strict=True):
                merger.add(p, win)
    assert merger is not None  # len(boxes) > 0 here
    return merger.result(normalize=True).cpu()


def segment_instances(
    model: nn.Module,
    image: np.ndarray,
    proposals: np.ndarray | tuple[np.ndarray, np.ndarray],
    fcn: nn.Module | None = None,
    ensemble: EnsembleMode = "product",
    crf: bool = False,
    **kwargs: Any,
) -> np.ndarray:
    """The paper's full pipeline on one image: the ``(H, W)`` uint8 class map.

    :func:`predict_instances` (``kwargs`` go there), then, with ``fcn``, the EDeconvNet
    ensemble with FCN-8s's whole-image probabilities (:func:`~.ensemble.ensemble_scores`),
    then, with ``crf``, the dense CRF (:func:`~.crf.dense_crf`, needs the ``[crf]`` extra).
    """
    probs = predict_instances(model, image, proposals, **kwargs)
    if fcn is not None:
        probs = ensemble_scores(probs, predict_scores(fcn, [image])[0], ensemble)
    if crf:
        return dense_crf(image, probs)
    return probs.argmax(0).to(torch.uint8).numpy()


def evaluate_instances(
    model: nn.Module,
    dataset: Sequence[Any],
    num_classes: int,
    proposals: ProposalFn,
    fcn: nn.Module | None = None,
    ensemble: EnsembleMode = "product",
    crf: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> ConfusionMatrix:
    """Confusion matrix of instance-wise inference over ``dataset``.

    Items have ``.image`` and ``.label`` (e.g. :class:`~deconvkernels.data.Sample`; ``None``
    items, unreadable files, are skipped); ``proposals(item) -> (boxes, scores)``, e.g. an
    :class:`~deconvkernels.proposals.EdgeBoxes`. ``fcn``, ``ensemble`` and ``crf`` as in
    :func:`segment_instances`; other ``kwargs`` go to :func:`predict_instances`. A progress
    bar counts images.
    """
    if crf:
        require_crf()  # fail before the first image, not after it
    return evaluate_images(
        lambda sample: segment_instances(
            model, sample.image, proposals(sample), fcn=fcn, ensemble=ensemble, crf=crf,
            **kwargs,
        ),
        dataset, num_classes, progress,
    )
