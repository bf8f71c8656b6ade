"""The paper's two training-set samplers and the padded crop they share.

* :class:`GTCropDataset` (stage 1): one object-centred crop per ground-truth instance.
* :class:`ProposalCropDataset` (stage 2): crops from object proposals overlapping the ground
  truth, which are harder (off-centre, several objects, partial objects).

Both wrap a *source*: anything with ``len()`` and ``source[i] -> Sample | None``
(:class:`~.synthetic.SyntheticScenes`, :class:`~.voc.VOCSegmentation`, ...). Items are
``(image, label)`` tensors: float32 ``(3, crop, crop)`` normalised with
:func:`~.transforms.to_tensor` and int64 ``(crop, crop)`` with 255 = ignore.

Randomness (crop offset, mirror) is drawn from ``np.random.default_rng([seed, epoch,
index])``: call :meth:`set_epoch` before each epoch to get new crops; a given ``(seed, epoch,
index)`` always gives the same tensors, in any worker. A source item that fails to load is
skipped by serving the next item instead (deterministically), so one bad file never ends a run.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .sample import IGNORE_INDEX, Sample
from .transforms import MEAN_PIXEL, label_to_tensor, to_tensor

#: ``proposals(sample) -> (boxes (N, 4) float32 x0, y0, x1, y1, scores (N,))``.
ProposalFn = Callable[[Sample], tuple[np.ndarray, np.ndarray]]

# Consecutive unreadable items tried before giving up (a whole broken dataset should fail).
_MAX_SKIP = 100


# --------------------------------------------------------------------------- box geometry


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` ``(N, 4)`` with every box in ``b`` ``(M, 4)``.

    Boxes are ``x0, y0, x1, y1`` with exclusive ends (area ``(x1 - x0) * (y1 - y0)``).
    Returns an ``(N, M)`` float32 matrix; pairs with an empty union have IoU 0.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    safe = np.where(union > 0, union, 1.0)
    return np.where(union > 0, inter / safe, 0.0).astype(np.float32)


def context_window(box: np.ndarray, enlarge: float = 1.2, square: bool = True) -> np.ndarray:
    """The window cropped around ``box``: same centre, sides scaled by ``enlarge``.

    With ``square`` both sides become ``enlarge * max(w, h)``: the paper's object-centred
    square crop, so the object keeps its aspect ratio after resizing, and 1.2 is the paper's
    context factor (the object fills 1/1.2 of the window along its longer side). The window
    may leave the image; :func:`crop_resize` pads it. Sides are at least one pixel.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    if square:
        w = h = max(w, h)
    hw, hh = 0.5 * enlarge * w, 0.5 * enlarge * h
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float32)


# --------------------------------------------------------------------------- padded crop


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def crop_resize(
    image: np.ndarray | None,
    label: np.ndarray | None,
    box: Sequence[float] | np.ndarray,
    out_size: int | tuple[int, int],
    pad_value: Sequence[int] = MEAN_PIXEL,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Crop the window ``box`` (``x0, y0, x1, y1``, pixels, may leave the image) and resize it.

    Output pixel ``(v, u)`` shows the source point at the centre of cell ``(v, u)`` of an
    ``out_size`` grid laid over ``box`` (sub-pixel exact; the window need not be square).

    * ``image`` ``(H, W, 3)`` uint8: bilinear, area-averaged first when shrinking by more than
      1.5x (plain bilinear sampling would alias). Outside the image: ``pad_value`` (default
      the ImageNet mean colour, which :func:`~.transforms.to_tensor` maps to about 0).
    * ``label`` ``(H, W)`` any dtype (class ids, instance ids): nearest neighbour, so every
      value stays a valid id. Outside the image: ``ignore_index``.

    Either array may be ``None`` (its result is then ``None``).

    Returns:
        ``(image_crop (out_h, out_w, 3), label_crop (out_h, out_w))``.
    """
    out_h, out_w = _pair(out_size)
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"empty crop window {box}")
    sx, sy = (x1 - x0) / out_w, (y1 - y0) / out_h
    img_out = None if image is None else _warp_image(image, x0, y0, sx, sy, out_h, out_w, pad_value)
    lab_out = None
    if label is not None:
        h, w = label.shape[:2]
        # The source pixel whose area contains each output cell's centre.
        cols = np.floor(x0 + (np.arange(out_w) + 0.5) * sx).astype(np.int64)
        rows = np.floor(y0 + (np.arange(out_h) + 0.5) * sy).astype(np.int64)
        vc, vr = (cols >= 0) & (cols < w), (rows >= 0) & (rows < h)
        lab_out = np.full((out_h, out_w), ignore_index, label.dtype)
        lab_out[np.ix_(vr, vc)] = label[np.ix_(rows[vr], cols[vc])]
    return img_out, lab_out


def _warp_image(image, x0, y0, sx, sy, out_h, out_w, pad_value) -> np.ndarray:
    h, w = image.shape[:2]
    src, ox, oy, kx, ky = image, 0.0, 0.0, 1.0, 1.0
    if max(sx, sy) > 1.5:
        # Area-average the in-image part of the window down to about the output scale, then
        # do the exact sub-pixel warp on the small copy.
        ix0, iy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        ix1 = min(w, math.ceil(x0 + sx * out_w))
        iy1 = min(h, math.ceil(y0 + sy * out_h))
        if ix1 > ix0 and iy1 > iy0:
            nw = max(1, round((ix1 - ix0) / max(sx, 1.0)))
            nh = max(1, round((iy1 - iy0) / max(sy, 1.0)))
            src = cv2.resize(image[iy0:iy1, ix0:ix1], (nw, nh), interpolation=cv2.INTER_AREA)
            ox, oy, kx, ky = ix0, iy0, nw / (ix1 - ix0), nh / (iy1 - iy0)
    # Output index u has centre u + 0.5 -> source edge coordinate x0 + (u + 0.5) sx ->
    # index coordinate of ``src`` ((X - ox) kx - 0.5), the convention warpAffine samples in.
    m = np.array(
        [
            [sx * kx, 0.0, (x0 + 0.5 * sx - ox) * kx - 0.5],
            [0.0, sy * ky, (y0 + 0.5 * sy - oy) * ky - 0.5],
        ]
    )
    return cv2.warpAffine(
        np.ascontiguousarray(src),
        m,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tuple(float(v) for v in pad_value),
    )


# --------------------------------------------------------------------------- proposals


def jittered_gt_proposals(
    num: int = 20, jitter: float = 0.3, seed: int = 0, random_frac: float = 0.25
) -> ProposalFn:
    """A cheap stand-in for EdgeBoxes: boxes scattered around the ground-truth boxes.

    Each of ``num`` boxes is, with probability ``1 - random_frac``, a ground-truth box whose
    centre moves by ``N(0, jitter)`` times its size and whose sides scale by
    ``exp(N(0, jitter))``; otherwise a random box anywhere (so filtering by overlap has
    something to reject). Boxes are clipped to the image and sorted by a random score.
    Deterministic per ``(seed, sample.name)``.
    """

    def propose(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, zlib.crc32(sample.name.encode())])
        h, w = sample.height, sample.width
        gt = sample.boxes
        n_gt = 0 if len(gt) == 0 else num - int(round(num * random_frac))
        g = gt[rng.integers(0, max(len(gt), 1), n_gt)] if n_gt else np.zeros((0, 4), np.float32)
        gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        cx = 0.5 * (g[:, 0] + g[:, 2]) + rng.normal(0, jitter, n_gt) * gw
        cy = 0.5 * (g[:, 1] + g[:, 3]) + rng.normal(0, jitter, n_gt) * gh
        bw = gw * np.exp(rng.normal(0, jitter, n_gt))
        bh = gh * np.exp(rng.normal(0, jitter, n_gt))
        n_rand = num - n_gt
        rw = rng.uniform(0.1, 0.8, n_rand) * w
        rh = rng.uniform(0.1, 0.8, n_rand) * h
        rx = rng.uniform(0, 1, n_rand) * (w - rw) + 0.5 * rw
        ry = rng.uniform(0, 1, n_rand) * (h - rh) + 0.5 * rh
        cx, cy = np.concatenate([cx, rx]), np.concatenate([cy, ry])
        bw, bh = np.concatenate([bw, rw]), np.concatenate([bh, rh])
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        boxes = np.clip(boxes, 0, [w, h, w, h])
        # Keep boxes at least a pixel wide after clipping.
        boxes[:, 2:] = np.maximum(boxes[:, 2:], np.minimum(boxes[:, :2] + 1, [w, h]))
        boxes[:, :2] = np.minimum(boxes[:, :2], boxes[:, 2:] - 1)
        scores = rng.random(num).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        return boxes[order].astype(np.float32), scores[order]

    return propose


# --------------------------------------------------------------------------- datasets


class CropItem(NamedTuple):
    """One training crop: which source image, the box that chose it, the window cropped."""

    image_index: int
    box: np.ndarray  # the ground-truth or proposal box, x0, y0, x1, y1
    window: np.ndarray  # the (possibly image-leaving) window resized to ``resize``
    gt_index: int  # the ground-truth instance (0-based) the box belongs to / overlaps most
    iou: float  # IoU of ``box`` with that instance's box (1 for ground-truth crops)


def _show(progress: bool | None, n: int) -> bool:
    return progress if progress is not None else n >= 200


class _CropDataset(Dataset):
    """Shared machinery: item list, epoch, skipping, the crop + jitter + mirror."""

    items: list[CropItem]
    #: Whether the item list needs only boxes (then a source's cheap ``load_annotation`` is
    #: used instead of decoding every image).
    _boxes_only = True

    def __init__(self, source, resize: int, crop: int, mirror: bool, seed: int) -> None:
        if not 0 < crop <= resize:
            raise ValueError(f"need 0 < crop <= resize, got crop={crop}, resize={resize}")
        self.source = source
        self.resize, self.crop = int(resize), int(crop)
        self.mirror, self.seed = bool(mirror), int(seed)
        self.epoch = 0
        #: Source items that returned ``None`` (at construction or later); every event counts.
        self.num_skipped = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the crop offsets and mirrors of ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _annotations(self, desc: str, progress: bool | None):
        """Yield ``(index, sample_or_None, boxes, classes)`` for every loadable source item.

        A source offering ``load_annotation(i)`` (VOCSegmentation) is indexed from its label
        files alone when no image is needed (``sample`` is then ``None``).
        """
        n = len(self.source)
        cheap = getattr(self.source, "load_annotation", None) if self._boxes_only else None
        for i in tqdm(range(n), desc=desc, disable=not _show(progress, n)):
            if cheap is not None:
                ann = cheap(i)
                if ann is None:
                    self.num_skipped += 1
                    continue
                yield i, None, ann[0], ann[1]
                continue
            s = self.source[i]
            if s is None:
                self.num_skipped += 1
                continue
            yield i, s, s.boxes, s.box_classes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} crops")
        index %= n
        for attempt in range(min(n, _MAX_SKIP)):
            k = (index + attempt) % n
            item = self.items[k]
            sample = self.source[item.image_index]
            if sample is None:  # unreadable now: serve the next crop instead
                self.num_skipped += 1
                continue
            return self._make(sample, item, k)
        raise RuntimeError(
            f"{min(n, _MAX_SKIP)} consecutive crops from index {index} failed "
            "to load their source images"
        )

    def _make(self, sample: Sample, item: CropItem, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, k])
        x0, y0, x1, y1 = (float(v) for v in item.window)
        # Resizing the window to ``resize`` and cutting a ``crop`` square at (ox, oy) is the
        # same as cropping the matching sub-window straight to ``crop``: one warp, no copy.
        sx, sy = (x1 - x0) / self.resize, (y1 - y0) / self.resize
        ox, oy = (int(v) for v in rng.integers(0, self.resize - self.crop + 1, 2))
        sub = (x0 + ox * sx, y0 + oy * sy, x0 + (ox + self.crop) * sx, y0 + (oy + self.crop) * sy)
        img, lab = crop_resize(sample.image, sample.label, sub, self.crop)
        if self.mirror and rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        return to_tensor(img), label_to_tensor(lab)


class GTCropDataset(_CropDataset):
    """Stage 1: one object-centred crop per ground-truth instance.

    The window is a square centred on the instance's box, side ``enlarge * max(w, h)``
    (:func:`context_window`; 1.2 as in the paper, a little context around the object),
    resized to ``resize`` x ``resize``, then a random ``crop`` x ``crop`` part, then a random
    horizontal mirror. Window parts outside the image are padded with the mean colour (image,
    ~0 after normalisation) and 255 (label). The label crop keeps every class in view, not
    just the centred instance's.

    The instance list is built at construction (one pass over the source, with a progress bar
    for large sources; :class:`~.voc.VOCSegmentation` is indexed from its PNGs only).

    Attributes:
        items: one :class:`CropItem` per instance, in source order.
    """

    def __init__(
        self,
        source: Sequence[Sample | None],
        resize: int = 250,
        crop: int = 224,
        enlarge: float = 1.2,
        mirror: bool = True,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        super().__init__(source, resize, crop, mirror, seed)
        self.enlarge = float(enlarge)
        self.items = [
            CropItem(i, box.copy(), context_window(box, self.enlarge), j, 1.0)
            for i, _, boxes, _ in self._annotations("indexing instances", progress)
            for j, box in enumerate(boxes)
        ]


class ProposalCropDataset(_CropDataset):
    """Stage 2: crops from object proposals that overlap the ground truth.

    "Overlap" means the proposal's *box* has IoU >= ``min_iou`` with at least one ground-truth
    instance box (box IoU, not mask IoU: it needs no masks and matches what detection-style
    proposals are scored against). Of an image's qualifying proposals, ``max_per_image`` are
    kept, chosen at random (deterministic per ``(seed, image)``) rather than by score, so the
    crops span the whole range of overlaps. An image without any qualifying proposal falls
    back to its ground-truth boxes. Each kept box becomes a window with
    :func:`context_window` (``enlarge``, ``square``; by default the same framing as stage 1
    and as test-time crops) that is resized, cropped, mirrored and padded like
    :class:`GTCropDataset`.

    ``proposals(sample)`` runs once per image at construction (progress bar for large
    sources), so slow proposal methods cost time only there.

    Attributes:
        items: one :class:`CropItem` per kept proposal (``box`` = the proposal, ``gt_index``
            and ``iou`` = its best-matching instance).
        num_fallback: images that used their ground-truth boxes.
    """

    _boxes_only = False  # the proposal function needs the image

    def __init__(
        self,
        source: Sequence[Sample | None],
        proposals: ProposalFn,
        resize: int = 250,
        crop: int = 224,
        min_iou: float = 0.5,
        max_per_image: int = 16,
        enlarge: float = 1.2,
        square: bool = True,
        mirror: bool = True,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        super().__init__(source, resize, crop, mirror, seed)
        self.min_iou, self.max_per_image = float(min_iou), int(max_per_image)
        self.enlarge, self.square = float(enlarge), bool(square)
        self.num_fallback = 0
        self.items = []
        for i, sample, gt, _ in self._annotations("cropping proposals", progress):
            if len(gt) == 0:
                continue
            boxes, _scores = proposals(sample)
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            iou = box_iou(boxes, gt)
            best = iou.max(axis=1) if len(boxes) else np.zeros(0, np.float32)
            ok = np.flatnonzero(best >= self.min_iou)
            if len(ok) == 0:
                self.num_fallback += 1
                picked = [(g.copy(), j, 1.0) for j, g in enumerate(gt)]
            else:
                rng = np.random.default_rng([self.seed, i])
                if len(ok) > self.max_per_image:
                    ok = np.sort(rng.choice(ok, self.max_per_image, replace=False))
                picked = [(boxes[p].copy(), int(iou[p].argmax()), float(best[p])) for p in ok]
            self.items.extend(
                CropItem(i, b, context_window(b, self.enlarge, self.square), j, v)
                for b, j, v in picked
            )
