"""EdgeBoxes object proposals (Zitnick & Dollár, ECCV 2014) for DeconvNet inference.

DeconvNet (Noh et al., ICCV 2015) segments an image by running the network on up to 50
EdgeBoxes proposals per image and aggregating the per-box maps; boxes whose shorter side is
below a minimum (112 px in the original, at PASCAL VOC scale) are skipped. This module wraps
OpenCV-contrib's ``cv2.ximgproc`` EdgeBoxes implementation, which scores boxes from an *edge
map* and an *edge orientation map*. Those come from one of two sources:

* **Structured edges** (``edge_model=...``): the structured-forest edge detector of
  Dollár & Zitnick, ``cv2.ximgproc.createStructuredEdgeDetection(model)``, with its own
  ``computeOrientation`` and ``edgesNms``. This is what the paper used. The model file (e.g.
  ``model.yml.gz`` from opencv_extra's ``testdata/cv/ximgproc``) is *not* shipped; the user
  names it.
* **Image-gradient edges** (the default, no model file): :func:`gradient_edges` below --
  Gaussian smoothing, Sobel gradients per channel (the strongest channel wins), a noise
  floor derived from the median magnitude subtracted and the rest normalised to [0, 1],
  orientation in the convention ``computeOrientation`` uses, thinned by a NumPy port of
  ``edgesNms``. Weaker than structured edges on cluttered natural images
  (it also fires on texture) but dependency-free and good on clean object boundaries.

Boxes are returned as float32 ``(N, 4)`` ``x0, y0, x1, y1`` pixel coordinates with exclusive
``x1``/``y1`` (so width = ``x1 - x0``), clipped to the image and sorted by score, descending.

**Cache.** The original release shipped precomputed boxes; here ``EdgeBoxes(cache_dir=...)``
stores each image's result as ``<cache_dir>/<name>.npz`` (boxes, scores, and a record of
everything that determined them: the parameters, the edge source, the image's shape and a
digest of its pixels). A cache entry that does not match the current call is recomputed and
overwritten rather than silently reused; an unreadable entry is recomputed with a warning.
Entries are written atomically (temporary file + ``os.replace``), so concurrent workers and
interrupted runs never leave a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "EdgeBoxes",
    "box_iou",
    "filter_min_side",
    "gradient_edges",
    "edges_nms",
]

# Bumped whenever the computation changes in a way that changes boxes, so that caches written
# by an older version are recomputed instead of reused.
_CACHE_VERSION = 1

# Gradient edge map parameters, tuned on synthetic shapes-on-texture images (as in
# tests/test_proposals.py) over a 6x range of texture contrast. sigma 2 removes pixel-level
# texture and noise while keeping object boundaries a few pixels wide (NMS then thins them).
# The noise floor (a multiple of the median gradient magnitude, i.e. of the typical
# non-edge response, subtracted before normalising) matters most: without it weak texture
# edges survive, chain onto object contours and EdgeBoxes' boxes grow past the objects
# (worst-object IoU ~0.5 instead of ~0.8 on textured backgrounds), and the many small edge
# segments make EdgeBoxes 3-5x slower.
_GRAD_SIGMA = 2.0
_GRAD_NOISE_FLOOR = 2.0
# NMS parameters: OpenCV's edgesNms defaults (radius 2, no boundary suppression, m = 1).
_NMS_RADIUS = 2
_NMS_MULTIPLIER = 1.0
# OpenCV's EdgeBoxes default minimum box area; raised to min_side**2 when that is larger
# (see EdgeBoxes._compute).
_DEFAULT_MIN_BOX_AREA = 1000.0
# Images smaller than this on either side yield no boxes: EdgeBoxes ignores a one-pixel
# border and its smallest box is ~sqrt(min box area) = 31 px, so nothing useful fits.
_MIN_IMAGE_SIDE = 8
# Smaller images are padded before structured edge detection (see EdgeBoxes.edges); twice the
# published models' 32 px patch, so models with larger patches are covered too.
_SED_MIN_SIDE = 64


# --------------------------------------------------------------------------------------------
# Box helpers
# --------------------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection-over-union of two sets of boxes.

    Args:
        a: ``(N, 4)`` boxes ``x0, y0, x1, y1`` with exclusive ``x1``/``y1``
            (area = ``(x1 - x0) * (y1 - y0)``).
        b: ``(M, 4)`` boxes, same convention.

    Returns:
        ``(N, M)`` float64 IoU matrix. Empty (zero-area) boxes have IoU 0 with everything.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    # Division only where the union is positive: two empty boxes would otherwise give 0/0.
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def filter_min_side(
    boxes: np.ndarray, scores: np.ndarray, min_side: float
) -> tuple[np.ndarray, np.ndarray]:
    """Drop boxes whose shorter side (``min(x1 - x0, y1 - y0)``) is below ``min_side``.

    Order is preserved. ``min_side <= 0`` keeps everything.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    scores = np.asarray(scores).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if min_side <= 0:
        return boxes, scores
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    keep = side >= min_side
    return boxes[keep], scores[keep]


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


# --------------------------------------------------------------------------------------------
# Gradient edges (the model-free edge source)
# --------------------------------------------------------------------------------------------


def _check_image(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 RGB image, got dtype {image.dtype}")
    return np.ascontiguousarray(image)


def edges_nms(
    edges: np.ndarray,
    orientation: np.ndarray,
    radius: int = _NMS_RADIUS,
    multiplier: float = _NMS_MULTIPLIER,
) -> np.ndarray:
    """Non-maximum suppression of an edge map along the edge normal (NumPy ``edgesNms``).

    A port of ``cv2.ximgproc.StructuredEdgeDetection.edgesNms`` (without its optional
    boundary suppression), which is only reachable through a loaded structured-edge model:
    a pixel survives if ``multiplier * E`` is at least the bilinearly interpolated edge value
    at every distance ``d in [-radius, radius]`` along the normal ``(cos O, sin O)``.

    Args:
        edges: ``(H, W)`` float32 edge strengths.
        orientation: ``(H, W)`` float32 normal angles in radians, ``computeOrientation``
            convention (0 = normal along +x, pi/2 = normal along +y, image y pointing down).
        radius: suppression radius in pixels.
        multiplier: ``> 1`` makes suppression more conservative.

    Returns:
        ``(H, W)`` float32 thinned edge map.
    """
    e = np.ascontiguousarray(edges, dtype=np.float32)
    h, w = e.shape
    # Only nonzero pixels can survive, and after the noise floor they are a small minority:
    # work on their flat indices instead of whole images.
    ys, xs = np.nonzero(e)
    if ys.size == 0:
        return e.copy()
    o = np.asarray(orientation, dtype=np.float32)[ys, xs]
    cos_o, sin_o = np.cos(o), np.sin(o)
    ys_f, xs_f = ys.astype(np.float32), xs.astype(np.float32)
    em = e[ys, xs] * np.float32(multiplier)
    keep = np.ones(ys.shape, dtype=bool)
    for d in range(-radius, radius + 1):
        if d == 0:
            continue
        # Same clamping as the C++: stay 0.001 inside the last row/column so that the
        # "+1" neighbour of the bilinear stencil always exists.
        sx = np.clip(xs_f + d * cos_o, 0, w - 1.001)
        sy = np.clip(ys_f + d * sin_o, 0, h - 1.001)
        x0 = sx.astype(np.intp)
        y0 = sy.astype(np.intp)
        x1 = np.minimum(x0 + 1, w - 1)
        y1 = np.minimum(y0 + 1, h - 1)
        dx = sx - x0
        dy = sy - y0
        e0 = (
            e[y0, x0] * (1 - dx) * (1 - dy)
            + e[y0, x1] * dx * (1 - dy)
            + e[y1, x0] * (1 - dx) * dy
            + e[y1, x1] * dx * dy
        )
        keep &= em >= e0
    out = np.zeros_like(e)
    out[ys[keep], xs[keep]] = e[ys[keep], xs[keep]]
    return out


def gradient_edges(
    image: np.ndarray,
    sigma: float = _GRAD_SIGMA,
    noise_floor: float = _GRAD_NOISE_FLOOR,
    nms: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Edge and orientation maps from image gradients, for EdgeBoxes without a model file.

    Steps: Gaussian smoothing (``sigma``) of the RGB image; Sobel gradients per channel, the
    channel with the largest magnitude chosen per pixel (a red/green boundary of equal
    luminance still counts); a noise floor of ``noise_floor`` times the median magnitude
    subtracted and the rest divided by its maximum, so edges lie in [0, 1];
    orientation = direction of the (structure-tensor-smoothed) gradient, i.e. the edge
    normal, as an angle in ``[0, pi)``; optional thinning by :func:`edges_nms`.

    Orientation convention: the one ``StructuredEdgeDetection.computeOrientation`` uses and
    ``EdgeBoxes`` expects -- the angle of the edge *normal* measured from +x towards +y
    (image rows grow downwards), modulo pi: a vertical boundary has orientation 0, a
    horizontal one pi/2, a boundary running from bottom-left to top-right pi/4.
    ``computeOrientation`` estimates it from second derivatives of the smoothed edge map as
    ``mod(atan(Oyy * sign(-Oxy) / Oxx), pi)``, which is exact only at multiples of pi/4 and
    returns 0 for perfectly horizontal edges (where ``Oxy`` is exactly 0); the image
    gradient gives the normal directly, so it is used here instead.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        sigma: Gaussian smoothing in pixels before differentiation (0 disables it).
        noise_floor: magnitudes below this multiple of the median magnitude (the typical
            response of texture and noise, since most pixels are not on boundaries) become
            0; capped at half the maximum so an image's strongest edges always survive.
        nms: thin edges to ridges along the normal (what EdgeBoxes' edge grouping assumes).

    Returns:
        ``(edges, orientation)``, both ``(H, W)`` float32; edges in [0, 1] (all zero for a
        constant image), orientation in ``[0, pi)``.
    """
    img = _check_image(image).astype(np.float32) * np.float32(1.0 / 255.0)
    if sigma > 0:
        img = cv2.GaussianBlur(
            img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT
        )
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    mag2 = gx * gx + gy * gy
    best = np.argmax(mag2, axis=2)[..., None]
    gx = np.take_along_axis(gx, best, axis=2)[..., 0]
    gy = np.take_along_axis(gy, best, axis=2)[..., 0]
    mag = np.sqrt(np.take_along_axis(mag2, best, axis=2)[..., 0])

    peak = float(mag.max())
    # A (near-)constant image has no edges; dividing by ~0 would turn rounding noise into
    # full-strength edges everywhere.
    if peak < 1e-4:
        zeros = np.zeros(mag.shape, np.float32)
        return zeros, zeros.copy()
    # Most pixels are not on object boundaries, so the median magnitude measures texture and
    # noise; subtracting a multiple of it keeps EdgeBoxes from chaining texture onto contours.
    floor = min(noise_floor * float(np.median(mag)), 0.5 * peak)
    edges = np.clip((mag - floor) / np.float32(peak - floor), 0, 1).astype(np.float32)

    # The gradient's sign flips across a boundary (dark->light vs light->dark) but the normal
    # is the same line, so average doubled angles (the structure tensor) rather than the
    # vectors themselves; a small blur stabilises the angle at corners and in noise.
    jxx = cv2.GaussianBlur(gx * gx, (0, 0), 1.0)
    jyy = cv2.GaussianBlur(gy * gy, (0, 0), 1.0)
    jxy = cv2.GaussianBlur(gx * gy, (0, 0), 1.0)
    orientation = 0.5 * np.arctan2(2 * jxy, jxx - jyy)
    orientation = np.mod(orientation, np.pi).astype(np.float32)
    # mod() of a value a hair below 0 can round to exactly pi in float32.
    orientation[orientation >= np.float32(np.pi)] = 0

    if nms:
        edges = edges_nms(edges, orientation)
    return edges, orientation


# --------------------------------------------------------------------------------------------
# EdgeBoxes
# --------------------------------------------------------------------------------------------


def _cache_filename(name: str) -> str:
    """Injective, path-safe file name for an image name (``a/b`` -> ``a%2Fb.npz``)."""
    if not name:
        raise ValueError("an empty image name cannot be used as a cache key")
    # Percent-encoding (rather than replacing separators with "_") keeps distinct names
    # distinct: "a/b" and "a_b" must not share a cache file.
    safe = urllib.parse.quote(name, safe="-_.+=@,")
    if safe.startswith("."):
        safe = "%2E" + safe[1:]  # no hidden files, no "." / ".." components
    if len(safe) > 200:  # stay under the usual 255-byte file-name limit
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()
        safe = f"{safe[:150]}-{digest}"
    return safe + ".npz"


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_MODEL_POSITIVE_OPTIONS = (
    "stride",
    "shrinkNumber",
    "patchSize",
    "patchInnerSize",
    "numberOfGradientOrientations",
    "numberOfTrees",
    "numberOfTreesToEvaluate",
)
_MODEL_ARRAYS = ("childs", "featureIds", "thresholds", "edgeBoundaries", "edgeBins")


def _validate_model_file(path: str) -> None:
    """Reject files that are not structured-edge models before OpenCV loads them.

    The loader checks nothing beyond "the file parses": any other YAML/XML file (a config, a
    different OpenCV model) is read as zeros and the process dies of a division by zero
    (SIGFPE) inside the constructor, which no ``try`` can catch.
    """
    # open() rather than the constructor: the constructor reports a parse error as a
    # SystemError, open() as the cv2.error our caller turns into ValueError.
    fs = cv2.FileStorage()
    try:
        if not fs.open(path, cv2.FILE_STORAGE_READ):
            raise ValueError(f"cannot open structured edge model {path!r}")
        options = fs.getNode("options")
        bad = [
            key
            for key in _MODEL_POSITIVE_OPTIONS
            if options.empty() or options.getNode(key).empty() or options.getNode(key).real() < 1
        ]
        bad += [key for key in _MODEL_ARRAYS if fs.getNode(key).empty()]
        if bad:
            raise ValueError(
                f"{path!r} is not a structured edge model (missing or invalid: {', '.join(bad)})"
            )
    finally:
        fs.release()


class EdgeBoxes:
    """EdgeBoxes proposal generator (OpenCV-contrib) with optional per-image disk cache.

    Args:
        max_boxes: at most this many boxes per image (after the ``min_side`` filter).
            DeconvNet uses 50.
        min_side: boxes whose shorter side is below this many pixels are dropped (0 keeps
            all). DeconvNet skips boxes under 112 px at VOC scale (~500 px images).
        alpha: step size of the sliding-window search (EdgeBoxes' alpha; larger = denser).
        beta: NMS threshold on box IoU (EdgeBoxes' beta).
        min_score: boxes scoring below this are discarded.
        edge_model: path of a structured-edge model (``model.yml.gz``); edges then come from
            ``cv2.ximgproc.createStructuredEdgeDetection``. ``None`` uses
            :func:`gradient_edges`.
        cache_dir: directory for per-image ``<name>.npz`` results (created on demand);
            ``None`` disables caching.

    Raises:
        FileNotFoundError: ``edge_model`` does not name an existing file.
        ValueError: ``edge_model`` cannot be loaded as a structured-edge model, or a
            parameter is out of range.

    Calling the object with an RGB uint8 image, or with any object that has ``.image`` and
    ``.name`` attributes, returns ``(boxes, scores)``: float32 ``(N, 4)`` ``x0, y0, x1, y1``
    with exclusive ``x1``/``y1`` clipped to the image, and float32 ``(N,)`` scores sorted
    descending.
    """

    def __init__(
        self,
        max_boxes: int = 100,
        min_side: float = 0,
        alpha: float = 0.65,
        beta: float = 0.75,
        min_score: float = 0.01,
        edge_model: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if int(max_boxes) < 1:
            raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
        if min_side < 0:
            raise ValueError(f"min_side must be >= 0, got {min_side}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not 0 < beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        self.max_boxes = int(max_boxes)
        self.min_side = float(min_side)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.min_score = float(min_score)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.edge_model = os.fspath(edge_model) if edge_model is not None else None
        self._sed: Any = None
        self._model_digest: str | None = None
        if self.edge_model is not None:
            if not os.path.isfile(self.edge_model):
                raise FileNotFoundError(
                    f"structured edge model file not found: {self.edge_model!r}"
                )
            # Load now so a bad file fails at construction, not at the first image.
            self._sed = self._load_model()
            # The cache must not reuse boxes computed with a different model file, wherever
            # it lives; its content hash identifies it.
            self._model_digest = _file_digest(self.edge_model)

    # cv2 objects cannot be pickled; drop the model and reload it lazily, so the generator
    # can be handed to spawn-based DataLoader workers.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sed"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"EdgeBoxes(max_boxes={self.max_boxes}, min_side={self.min_side:g}, "
            f"alpha={self.alpha:g}, beta={self.beta:g}, min_score={self.min_score:g}, "
            f"edge_model={self.edge_model!r}, cache_dir={self.cache_dir!r})"
        )

    def _load_model(self) -> Any:
        assert self.edge_model is not None
        try:
            _validate_model_file(self.edge_model)
            return cv2.ximgproc.createStructuredEdgeDetection(self.edge_model)
        except cv2.error as exc:
            raise ValueError(
                f"cannot load structured edge model {self.edge_model!r}: {exc}"
            ) from exc

    # ---------------------------------------------------------------- public API

    def __call__(self, sample: Any) -> tuple[np.ndarray, np.ndarray]:
        """Proposals for an RGB uint8 image or a sample with ``.image`` and ``.name``."""
        if isinstance(sample, np.ndarray):
            return self.propose(sample)
        try:
            image = sample.image
        except AttributeError:
            raise TypeError(
                "expected an RGB uint8 numpy image or an object with .image and .name, "
                f"got {type(sample).__name__}"
            ) from None
        return self.propose(image, getattr(sample, "name", None))

    def propose(self, image: np.ndarray, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Proposals for one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            name: the image's identifier; required when the generator caches, where it
                names the cache file.

        Returns:
            ``(boxes, scores)`` as described in the class docstring.
        """
        image = _check_image(image)
        if self.cache_dir is None:
            return self._compute(image)
        if name is None:
            raise ValueError("EdgeBoxes(cache_dir=...) needs an image name to cache under")
        path = self.cache_dir / _cache_filename(str(name))
        key = self._cache_key(image)
        cached = self._read_cache(path, key)
        if cached is not None:
            return cached
        boxes, scores = self._compute(image)
        self._write_cache(path, key, boxes, scores)
        return boxes, scores

    def edges(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``(edges, orientation)`` maps EdgeBoxes scores, from the configured source."""
        image = _check_image(image)
        if self.edge_model is None:
            return gradient_edges(image)
        if self._sed is None:
            self._sed = self._load_model()
        # The detector wants RGB float in [0, 1] (OpenCV's sample converts imread's BGR to
        # RGB first); our images are RGB already.
        rgb = image.astype(np.float32) * np.float32(1.0 / 255.0)
        h, w = rgb.shape[:2]
        # detectEdges computes a negative patch-grid size for images smaller than the model's
        # patch (32 px for the published models) and fails with a bogus huge allocation;
        # replicate-pad small images to a safe size and crop the maps back.
        pad_h, pad_w = max(0, _SED_MIN_SIDE - h), max(0, _SED_MIN_SIDE - w)
        if pad_h or pad_w:
            rgb = cv2.copyMakeBorder(rgb, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
        edges = self._sed.detectEdges(rgb)
        orientation = self._sed.computeOrientation(edges)
        edges = self._sed.edgesNms(edges, orientation)
        return (
            np.ascontiguousarray(edges[:h, :w], dtype=np.float32),
            np.ascontiguousarray(orientation[:h, :w], dtype=np.float32),
        )

    # ---------------------------------------------------------------- computation

    def _compute(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        if min(h, w) < _MIN_IMAGE_SIDE:
            return _empty()
        edges, orientation = self.edges(image)
        if not np.any(edges > 0):
            return _empty()

        eb = cv2.ximgproc.createEdgeBoxes()  # per call: the object is stateful, not shareable
        eb.setAlpha(self.alpha)
        eb.setBeta(self.beta)
        eb.setMinScore(self.min_score)
        # Boxes under min_side**2 pixels can never pass the filter, so do not search them
        # (the grid search is most of the run time); the aspect-ratio test still needs the
        # explicit filter below.
        eb.setMinBoxArea(max(_DEFAULT_MIN_BOX_AREA, self.min_side**2))
        # Ask for more than max_boxes when filtering: boxes removed by min_side would
        # otherwise leave fewer than max_boxes. EdgeBoxes' NMS keeps boxes greedily by
        # score (eta = 1), so the first k of a longer list are the k it would return anyway.
        n_req = self.max_boxes if self.min_side <= 0 else 4 * self.max_boxes
        while True:
            eb.setMaxBoxes(n_req)
            rects, scores = self._run_edge_boxes(eb, edges, orientation)
            boxes = self._rects_to_boxes(rects, w, h)
            n_raw = len(boxes)
            boxes, scores = filter_min_side(boxes, scores, self.min_side)
            if len(boxes) >= self.max_boxes or n_raw < n_req:
                break
            n_req *= 4  # the list was cut short by max_boxes, not exhausted: look further
        order = np.argsort(-scores, kind="stable")[: self.max_boxes]
        return (
            np.ascontiguousarray(boxes[order], dtype=np.float32),
            np.ascontiguousarray(scores[order], dtype=np.float32),
        )

    @staticmethod
    def _run_edge_boxes(
        eb: Any, edges: np.ndarray, orientation: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``getBoundingBoxes`` across OpenCV versions: ``boxes`` or ``(boxes, scores)``."""
        out = eb.getBoundingBoxes(
            np.ascontiguousarray(edges, np.float32), np.ascontiguousarray(orientation, np.float32)
        )
        # Tell (boxes, scores) from an old-style result that happens to hold two boxes:
        # scores are floats, box coordinates integers.
        if isinstance(out, tuple) and len(out) == 2 and np.asarray(out[1]).dtype.kind == "f":
            rects, scores = out
        else:  # older OpenCV: boxes only, already in descending score order
            rects, scores = out, None
        # An empty result comes back as () rather than a (0, 4) array.
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        if scores is None or np.size(scores) != len(rects):
            # Without scores keep OpenCV's order and give decreasing pseudo-scores.
            scores = np.linspace(1.0, 0.0, num=len(rects), endpoint=False)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)  # (N,) or (N, 1)
        return rects, scores

    @staticmethod
    def _rects_to_boxes(rects: np.ndarray, w: int, h: int) -> np.ndarray:
        """OpenCV's ``(x, y, w, h)`` to clipped, exclusive ``x0, y0, x1, y1``.

        The port returns ``Rect(x + 1, y + 1, w, h)`` (the +1 is left over from MATLAB's
        1-based indices) for an internal box that covers columns ``x .. x + w`` inclusive,
        i.e. ``w + 1`` pixels; so 0-based exclusive coordinates are ``(rx - 1, rx + w)``.
        """
        x0 = rects[:, 0] - 1
        y0 = rects[:, 1] - 1
        x1 = rects[:, 0] + rects[:, 2]
        y1 = rects[:, 1] + rects[:, 3]
        boxes = np.stack(
            [np.clip(x0, 0, w), np.clip(y0, 0, h), np.clip(x1, 0, w), np.clip(y1, 0, h)],
            axis=1,
        ).astype(np.float32)
        return boxes.reshape(-1, 4)

    # ---------------------------------------------------------------- cache

    def _cache_key(self, image: np.ndarray) -> str:
        """Everything the result depends on, as canonical JSON stored beside the boxes."""
        key = {
            "version": _CACHE_VERSION,
            "max_boxes": self.max_boxes,
            "min_side": self.min_side,
            "alpha": self.alpha,
            "beta": self.beta,
            "min_score": self.min_score,
            "edges": (
                f"structured:{self._model_digest}"
                if self.edge_model is not None
                else f"gradient:sigma={_GRAD_SIGMA},floor={_GRAD_NOISE_FLOOR},"
                f"nms={_NMS_RADIUS}/{_NMS_MULTIPLIER}"
            ),
            "opencv": cv2.__version__,
            "shape": list(image.shape),
            # The same name with different pixels (a flipped or rescaled copy) must not get
            # the other copy's boxes; hashing the pixels costs ~1 ms per VOC image.
            "image": hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest(),
        }
        return json.dumps(key, sort_keys=True)

    def _read_cache(self, path: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_key = str(data["key"])
                boxes = np.asarray(data["boxes"], dtype=np.float32).reshape(-1, 4)
                scores = np.asarray(data["scores"], dtype=np.float32).reshape(-1)
            if len(boxes) != len(scores):
                raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        except Exception as exc:  # any unreadable file is simply recomputed
            warnings.warn(
                f"ignoring unreadable EdgeBoxes cache file {str(path)!r} ({exc!r}); recomputing",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        if stored_key != key:
            return None  # other parameters / image: recompute and overwrite
        return boxes, scores

    @staticmethod
    def _write_cache(path: Path, key: str, boxes: np.ndarray, scores: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, boxes=boxes, scores=scores, key=np.array(key))
            # Same directory, so the rename is atomic: readers see the old file or the new
            # one, never a partial write.
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
