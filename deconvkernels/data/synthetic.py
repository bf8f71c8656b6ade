"""Procedural segmentation scenes: a dataset that needs no download.

Each image is a textured background with a few objects of the foreground classes drawn over
it, later objects occluding earlier ones. A class is recognisable by three cues at once, none
of them decisive alone:

* a **shape family** (disc, box, triangle, star, ring, ...) with random size, aspect and
  rotation;
* a **hue band**: the classes' hues are spread evenly around the colour wheel and each object
  jitters hue, saturation and value;
* a **texture** (stripes, dots, checks or smooth noise, one per class, random scale).

Backgrounds mix colour gradients, blob noise, stripes and irregular distractor blobs whose
colours are drawn from the whole wheel, so they sometimes match an object's colour and only
shape and texture tell them apart. A small CNN learns the classes at 64x64 in minutes on a CPU.

Every image depends only on ``(seed, index)`` (``np.random.default_rng([seed, index])``), so
any item is reproducible on its own, in any order, in any worker process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from .sample import Sample

Poly = tuple[np.ndarray, int]  # a polygon in unit coordinates and the value it is filled with


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _p(*xy: float) -> np.ndarray:
    return np.asarray(xy, np.float64).reshape(-1, 2)


def _star(rng: np.random.Generator) -> list[Poly]:
    inner = rng.uniform(0.38, 0.5)
    t = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 1)]


def _heart(rng: np.random.Generator) -> list[Poly]:
    t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [(np.stack([x / 17.0, (y + 2.5) / 15.0], axis=1), 1)]


def _semicircle(rng: np.random.Generator) -> list[Poly]:
    t = np.linspace(np.pi, 2.0 * np.pi, 24)
    return [(np.stack([np.cos(t), np.sin(t) + 0.5], axis=1), 1)]


def _cross(rng: np.random.Generator) -> list[Poly]:
    a = rng.uniform(0.28, 0.4)
    pts = _p(-a, -1, a, -1, a, -a, 1, -a, 1, a, a, a, a, 1, -a, 1, -a, a, -1, a, -1, -a, -a, -a)
    return [(pts, 1)]


#: Shape families in class order: class ``c`` (1-based) is drawn as ``SHAPE_FAMILIES[c - 1]``.
#: Each maker returns polygons in roughly ``[-1, 1]^2``, filled in order (value 0 cuts holes).
_SHAPES: dict[str, Callable[[np.random.Generator], list[Poly]]] = {
    "disc": lambda rng: [(_circle(), 1)],
    "box": lambda rng: [(_p(-1, -1, 1, -1, 1, 1, -1, 1), 1)],
    "triangle": lambda rng: [(_p(0, -1, 1, 0.8, -1, 0.8), 1)],
    "star": _star,
    "ring": lambda rng: [(_circle(), 1), (_circle(rng.uniform(0.45, 0.62)), 0)],
    "cross": _cross,
    "diamond": lambda rng: [(_p(0, -1, 1, 0, 0, 1, -1, 0), 1)],
    "hexagon": lambda rng: [(_regular(6), 1)],
    "crescent": lambda rng: [(_circle(), 1), (_circle(0.85, rng.uniform(0.4, 0.55)), 0)],
    "arrow": lambda rng: [
        (_p(-1, -0.25, 0.2, -0.25, 0.2, -0.7, 1, 0, 0.2, 0.7, 0.2, 0.25, -1, 0.25), 1)
    ],
    "heart": _heart,
    "semicircle": _semicircle,
    "lshape": lambda rng: [(_p(-1, -1, -0.3, -1, -0.3, 0.4, 1, 0.4, 1, 1, -1, 1), 1)],
    "tshape": lambda rng: [
        (_p(-1, -1, 1, -1, 1, -0.4, 0.3, -0.4, 0.3, 1, -0.3, 1, -0.3, -0.4, -1, -0.4), 1)
    ],
    "trapezoid": lambda rng: [(_p(-0.45, -0.8, 0.45, -0.8, 1, 0.8, -1, 0.8), 1)],
    "bar": lambda rng: [(_p(-1, -0.22, 1, -0.22, 1, 0.22, -1, 0.22), 1)],
    "frame": lambda rng: [
        (_p(-1, -1, 1, -1, 1, 1, -1, 1), 1),
        (_p(-1, -1, 1, -1, 1, 1, -1, 1) * rng.uniform(0.5, 0.68), 0),
    ],
    "bowtie": lambda rng: [(_p(-1, -1, 0, -0.15, 1, -1, 1, 1, 0, 0.15, -1, 1), 1)],
    "chevron": lambda rng: [(_p(-1, -0.6, 0, 0.2, 1, -0.6, 1, 0.1, 0, 0.9, -1, 0.1), 1)],
    "dumbbell": lambda rng: [
        (_circle(0.45, -0.55), 1),
        (_circle(0.45, 0.55), 1),
        (_p(-0.55, -0.15, 0.55, -0.15, 0.55, 0.15, -0.55, 0.15), 1),
    ],
}
SHAPE_FAMILIES: tuple[str, ...] = tuple(_SHAPES)

#: Textures in class order (cycled): class ``c`` uses ``TEXTURES[(c - 1) % 4]``.
TEXTURES: tuple[str, ...] = ("stripes", "dots", "checks", "noise")

MAX_CLASSES = len(SHAPE_FAMILIES)


class SyntheticScenes(Dataset):
    """Procedurally generated segmentation scenes (see the module docstring).

    Args:
        num_images: dataset length.
        image_size: ``(H, W)`` or one int for square images; any size from about 16 pixels.
        num_classes: foreground classes (1..20); labels are ``0..num_classes``, 0 = background.
        seed: selects the dataset; item ``i`` depends on ``(seed, i)`` only.
        objects: inclusive ``(min, max)`` number of objects drawn per image (before objects
            hidden by occlusion are dropped).
        min_object_frac, max_object_frac: object diameter as a fraction of ``min(H, W)``.
        min_visible_frac: an instance whose visible part is below this fraction of its
            (in-image) area is dropped from the scene; so is one with fewer visible pixels than
            ``max(4, 0.002 * H * W)``. Dropped objects are not drawn at all, so every painted
            object is annotated.

    Attributes:
        class_names: ``("background", "disc", "box", ...)``, ``num_classes + 1`` names.
        class_hues: OpenCV hue (0..180) at the centre of each class's band (index 0 unused).
    """

    def __init__(
        self,
        num_images: int,
        image_size: int | tuple[int, int] = 64,
        num_classes: int = 5,
        seed: int = 0,
        objects: tuple[int, int] = (1, 4),
        min_object_frac: float = 0.2,
        max_object_frac: float = 0.55,
        min_visible_frac: float = 0.25,
    ) -> None:
        if not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        h, w = (int(v) for v in image_size)
        if h < 8 or w < 8:
            raise ValueError(f"image_size must be at least 8x8, got {(h, w)}")
        if not 0 <= objects[0] <= objects[1]:
            raise ValueError(f"objects must be an inclusive (min, max) range, got {objects}")
        if not 0 < min_object_frac <= max_object_frac:
            raise ValueError("need 0 < min_object_frac <= max_object_frac")
        self.num_images = int(num_images)
        self.image_size = (h, w)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.objects = (int(objects[0]), int(objects[1]))
        self.min_object_frac = float(min_object_frac)
        self.max_object_frac = float(max_object_frac)
        self.min_visible_frac = float(min_visible_frac)
        self.class_names: tuple[str, ...] = ("background",) + SHAPE_FAMILIES[:num_classes]
        spacing = 180.0 / num_classes
        self.class_hues = np.array([0.0] + [c * spacing for c in range(num_classes)])
        # Jitter well inside the band with few classes; shape and texture must carry many.
        self._hue_jitter = min(6.0, 0.2 * spacing)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        return self.render(index)[0]

    def render(self, index: int) -> tuple[Sample, np.ndarray]:
        """Item ``index`` and, per kept instance, the fraction of its in-image area visible.

        A fraction below 1 means a later object occludes it (test and debugging aid).
        """
        index = int(index)
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, index])
        h, w = self.image_size
        grid = np.mgrid[0:h, 0:w].astype(np.float32)  # (2, H, W): y, x
        image = _background(rng, grid)

        # Geometry first: which objects stay visible decides which ones get painted.
        n = int(rng.integers(self.objects[0], self.objects[1] + 1))
        objs = [self._object_geometry(rng) for _ in range(n)]
        masks = [_rasterize(polys, (h, w)) for _, polys, _ in objs]
        keep = _visible_enough(masks, self.min_visible_frac, max(4.0, 0.002 * h * w))

        label = np.zeros((h, w), np.uint8)
        instances = np.zeros((h, w), np.int32)
        kept: list[int] = []
        for j in keep:
            cls, _, size = objs[j]
            k = len(kept) + 1
            image = np.where(masks[j][..., None], self._paint(rng, cls, size, grid), image)
            label[masks[j]] = cls
            instances[masks[j]] = k
            kept.append(j)

        image = image + rng.normal(0.0, 3.0, image.shape)  # sensor-like noise
        image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
        boxes, classes, frac = [], [], []
        for k, j in enumerate(kept, start=1):
            ys, xs = np.nonzero(instances == k)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            classes.append(objs[j][0])
            frac.append(len(xs) / max(int(masks[j].sum()), 1))
        sample = Sample(
            image=image,
            label=label,
            instances=instances,
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            box_classes=np.asarray(classes, np.int64),
            name=f"synthetic-{index:06d}",
        )
        return sample, np.asarray(frac, np.float32)

    def _object_geometry(self, rng: np.random.Generator) -> tuple[int, list[Poly], float]:
        """A random object: its class, its polygons in pixel coordinates, its diameter."""
        h, w = self.image_size
        cls = int(rng.integers(1, self.num_classes + 1))
        polys = _SHAPES[SHAPE_FAMILIES[cls - 1]](rng)
        size = rng.uniform(self.min_object_frac, self.max_object_frac) * min(h, w)
        aspect = rng.uniform(0.65, 1.0)
        sx, sy = (
            (0.5 * size, 0.5 * size * aspect)
            if rng.random() < 0.5
            else (0.5 * size * aspect, 0.5 * size)
        )
        theta = rng.uniform(0.0, 2.0 * np.pi)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        centre = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h])
        placed = [((pts * [sx, sy]) @ rot.T + centre, val) for pts, val in polys]
        return cls, placed, size

    def _paint(self, rng: np.random.Generator, cls: int, size: float, grid: np.ndarray):
        """Full-image float RGB of class ``cls``'s colour band and texture (masked by caller)."""
        hue = (self.class_hues[cls] + rng.normal(0.0, self._hue_jitter)) % 180.0
        base = _hsv_to_rgb(hue, rng.uniform(110, 255), rng.uniform(110, 255))
        tex = _texture(rng, TEXTURES[(cls - 1) % len(TEXTURES)], size, grid)
        shade = _gradient(rng, grid)  # soft lighting so colour is not constant within an object
        gain = 1.0 + rng.uniform(0.15, 0.35) * tex + rng.uniform(0.0, 0.2) * (shade - 0.5)
        return base[None, None, :] * gain[..., None]

    def to_voc_folder(
        self, root: str | Path, splits: Mapping[str, Iterable[int]], **kwargs
    ) -> Path:
        """Write items to a PASCAL-VOC-style folder; see :func:`~.voc.write_voc_folder`."""
        from .voc import write_voc_folder  # voc imports nothing from here; avoid a cycle anyway

        return write_voc_folder(self, root, splits, class_names=self.class_names, **kwargs)


def _rasterize(polys: list[Poly], shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of polygons filled in order (value 0 cuts holes)."""
    canvas = np.zeros(shape, np.uint8)
    for pts, val in polys:
        # 4 fractional bits: sub-pixel vertex positions, so small shapes keep their form.
        fixed = np.round(pts * 16).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], int(val), lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def _visible_enough(masks: list[np.ndarray], min_frac: float, min_pixels: float) -> list[int]:
    """Indices of the objects (drawn in list order) that stay visible enough to annotate.

    Dropping an object only uncovers the ones below it, so one pass is conservative.
    """
    keep = []
    for j, m in enumerate(masks):
        area = int(m.sum())
        covered = np.zeros_like(m)
        for later in masks[j + 1 :]:
            covered |= later
        visible = int((m & ~covered).sum())
        if area > 0 and visible >= min_pixels and visible >= min_frac * area:
            keep.append(j)
    return keep


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    hsv = np.array([[[h, s, v]]], np.float32)
    hsv[..., 0] *= 2.0  # float HSV in OpenCV takes hue in degrees
    hsv[..., 1:] /= 255.0
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] * 255.0


def _random_colour(rng: np.random.Generator, sat: tuple[float, float] = (0, 200)) -> np.ndarray:
    return _hsv_to_rgb(rng.uniform(0, 180), rng.uniform(*sat), rng.uniform(40, 240))


def _gradient(rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
    """A linear ramp 0..1 across the image in a random direction."""
    a = rng.uniform(0.0, 2.0 * np.pi)
    p = np.cos(a) * grid[1] + np.sin(a) * grid[0]
    lo, hi = float(p.min()), float(p.max())
    return (p - lo) / max(hi - lo, 1e-6)


def _smooth_noise(rng: np.random.Generator, cell: float, grid: np.ndarray) -> np.ndarray:
    """Blobby noise in -1..1 with features about ``cell`` pixels across."""
    h, w = grid.shape[1:]
    gh, gw = max(2, int(np.ceil(h / cell)) + 1), max(2, int(np.ceil(w / cell)) + 1)
    coarse = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), -1.0, 1.0)


def _texture(rng: np.random.Generator, kind: str, size: float, grid: np.ndarray) -> np.ndarray:
    """A texture field in -1..1; its scale follows the object's size."""
    period = max(2.5, size * rng.uniform(0.18, 0.35))
    a = rng.uniform(0.0, np.pi)
    u = np.cos(a) * grid[1] + np.sin(a) * grid[0]
    v = -np.sin(a) * grid[1] + np.cos(a) * grid[0]
    ph = rng.uniform(0.0, 2.0 * np.pi, 2)
    su = np.sin(2.0 * np.pi * u / period + ph[0])
    sv = np.sin(2.0 * np.pi * v / period + ph[1])
    if kind == "stripes":
        return su
    if kind == "dots":
        return np.where(su * sv > 0.5, 1.0, -0.6)
    if kind == "checks":
        return np.sign(su * sv)
    return _smooth_noise(rng, period, grid)


def _background(rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
    """Float RGB background: gradient + blobs + optional stripes + distractor blobs."""
    h, w = grid.shape[1:]
    g = _gradient(rng, grid)[..., None]
    img = (1.0 - g) * _random_colour(rng) + g * _random_colour(rng)
    blobs = _smooth_noise(rng, min(h, w) * rng.uniform(0.15, 0.5), grid)
    mix = np.clip(blobs * rng.uniform(0.5, 2.0), 0.0, 1.0)[..., None]
    img = (1.0 - mix) * img + mix * _random_colour(rng, (0, 255))
    if rng.random() < 0.4:
        a, period = rng.uniform(0.0, np.pi), rng.uniform(3.0, 0.25 * min(h, w) + 3.0)
        stripes = np.sin(2.0 * np.pi * (np.cos(a) * grid[1] + np.sin(a) * grid[0]) / period)
        img = img * (1.0 + rng.uniform(0.05, 0.25) * stripes)[..., None]
    # Irregular blobs in any colour (object colours included): colour alone is not enough.
    for _ in range(int(rng.integers(0, 4))):
        n = int(rng.integers(5, 10))
        t = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
        r = rng.uniform(0.4, 1.0, n) * rng.uniform(0.05, 0.2) * min(h, w)
        c = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        pts = np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], axis=1)
        m = _rasterize([(pts, 1)], (h, w))
        img = np.where(m[..., None], _random_colour(rng, (0, 255)), img)
    return img
