"""The one record every dataset in :mod:`deconvkernels.data` returns, and its box helper."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Label value meaning "not annotated / ignore" (PASCAL VOC's object borders, crop padding).
IGNORE_INDEX = 255


@dataclass
class Sample:
    """One annotated image.

    Attributes:
        image: ``(H, W, 3)`` uint8, RGB.
        label: ``(H, W)`` uint8 class ids; 0 is background, :data:`IGNORE_INDEX` (255) is ignored.
        instances: ``(H, W)`` int32; 0 means "no instance", ``k`` the ``k``-th instance (1-based,
            so instance ``k`` is described by ``boxes[k - 1]`` and ``box_classes[k - 1]``).
        boxes: ``(K, 4)`` float32 ``x0, y0, x1, y1`` in pixels, ``x1``/``y1`` exclusive: the
            tight box of each instance's visible pixels.
        box_classes: ``(K,)`` int64 class id of each instance.
        name: an identifier (file stem, ``"synthetic-000123"``, ...).
    """

    image: np.ndarray
    label: np.ndarray
    instances: np.ndarray
    boxes: np.ndarray
    box_classes: np.ndarray
    name: str

    def __post_init__(self) -> None:
        # Catch a wrong dtype or shape where the sample is made, not deep inside a crop or a loss.
        h, w = self.image.shape[:2]
        _expect(self.image, "image", np.uint8, (h, w, 3))
        _expect(self.label, "label", np.uint8, (h, w))
        _expect(self.instances, "instances", np.int32, (h, w))
        _expect(self.boxes, "boxes", np.float32, (len(self.boxes), 4))
        _expect(self.box_classes, "box_classes", np.int64, (len(self.boxes),))

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.image.shape[1])

    @property
    def num_instances(self) -> int:
        """Number of annotated instances ``K``."""
        return int(len(self.boxes))


def _expect(a: np.ndarray, name: str, dtype: type, shape: tuple[int, ...]) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        want = f"{np.dtype(dtype)} {shape}"
        raise ValueError(f"Sample.{name}: expected {want}, got {got}")


def boxes_from_instances(
    instances: np.ndarray, label: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tight boxes and classes of the instances in an instance map.

    Instance ids may be any positive values below 255 (PASCAL VOC's object PNGs use 255 for
    borders, which counts as "no instance" here); they are renumbered ``1..K`` in increasing
    order. The class of an instance is the most frequent label under it, ignoring background
    (0) and :data:`IGNORE_INDEX`; an instance with no such label is dropped, because it cannot
    be a training target.

    Returns:
        ``(instances, boxes, box_classes)``: the renumbered int32 map, ``(K, 4)`` float32
        boxes ``x0, y0, x1, y1`` (exclusive ends) and ``(K,)`` int64 classes.
    """
    inst = np.asarray(instances)
    ids = np.unique(inst)
    ids = ids[(ids > 0) & (ids != IGNORE_INDEX)]
    out = np.zeros(inst.shape, np.int32)
    boxes: list[list[float]] = []
    classes: list[int] = []
    for old in ids:
        mask = inst == old
        votes = np.bincount(label[mask], minlength=256)
        votes[0] = votes[IGNORE_INDEX] = 0
        if votes.max() == 0:
            continue
        ys, xs = np.nonzero(mask)
        out[mask] = len(boxes) + 1
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        classes.append(int(votes.argmax()))
    return (
        out,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(classes, np.int64),
    )
