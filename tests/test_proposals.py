"""EdgeBoxes proposals (deconvkernels.proposals): recall on synthetic scenes, box helpers,
the per-image cache, and both edge sources.

No structured-edge model ships with the project and nothing is downloaded, so the
structured-edge path is exercised with a tiny hand-written forest (one split on gradient
magnitude) written in OpenCV's model format: good enough to run ``detectEdges``,
``computeOrientation`` and ``edgesNms`` for real and to cross-check our NumPy ``edgesNms``
port and orientation convention against OpenCV's. A real model is used when
``DECONVKERNELS_EDGE_MODEL`` names one.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

import deconvkernels.proposals as P
from deconvkernels.proposals import EdgeBoxes, box_iou, edges_nms, filter_min_side, gradient_edges

H, W = 160, 200
# Ground-truth boxes (x0, y0, x1, y1, exclusive) of the three shapes drawn by _scene().
GT = np.array([[15, 20, 75, 90], [100, 15, 180, 65], [90, 90, 170, 150]], np.float32)


def _scene(seed: int = 0, amp: float = 1.0, h: int = H, w: int = W) -> np.ndarray:
    """Textured background (blobs + pixel noise) with a red rectangle, a green ellipse and a
    blue triangle whose tight boxes are GT."""
    rng = np.random.default_rng(seed)
    blobs = rng.normal(0, 1, (h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    blobs = cv2.resize(blobs, (w, h), interpolation=cv2.INTER_LINEAR)
    fine = rng.normal(0, 1, (h, w, 3)).astype(np.float32)
    img = np.clip(120 + amp * (12 * blobs + 8 * fine), 0, 255).astype(np.uint8)
    cv2.rectangle(img, (15, 20), (74, 89), (220, 40, 40), -1)  # inclusive corners
    cv2.ellipse(img, (140, 40), (39, 24), 0, 0, 360, (40, 200, 60), -1)  # x 101..179, y 16..64
    cv2.fillPoly(img, [np.array([[130, 90], [169, 149], [90, 149]], np.int32)], (50, 60, 230))
    return img


def _toy_model(path: Path, threshold: float = 1.0) -> Path:
    """A one-tree, one-split structured-edge 'forest' in OpenCV's model format.

    The root splits on feature 904 = channel 3 (normalised gradient magnitude at full scale)
    at the patch centre; its right leaf votes for the central 2x2 pixels of the output patch
    (bins repeated so the votes add up to ~1). Enough to make a real edge map.
    """
    bins = [119, 120, 135, 136] * 32
    path.write_text(
        "%YAML:1.0\n"
        "options:\n"
        "  stride: 2\n  shrinkNumber: 2\n  patchSize: 32\n  patchInnerSize: 16\n"
        "  numberOfGradientOrientations: 4\n  gradientSmoothingRadius: 0\n"
        "  regFeatureSmoothingRadius: 2\n  ssFeatureSmoothingRadius: 8\n"
        "  gradientNormalizationRadius: 4\n  selfsimilarityGridSize: 5\n"
        "  numberOfTrees: 1\n  numberOfTreesToEvaluate: 1\n"
        "childs: [[2, 0, 0]]\n"
        "featureIds: [[904, 0, 0]]\n"
        f"thresholds: [[{threshold}, 0., 0.]]\n"
        f"edgeBoundaries: [[0, 0, 0, {len(bins)}]]\n"
        f"edgeBins: [{bins}]\n"
    )
    return path


@pytest.fixture
def toy_model(tmp_path: Path) -> Path:
    return _toy_model(tmp_path / "toy_model.yml")


def _check_output(boxes: np.ndarray, scores: np.ndarray, h: int, w: int) -> None:
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and scores.shape == (boxes.shape[0],)
    assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
    assert np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all(np.diff(scores) <= 0), "scores must be sorted descending"


def _angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance between undirected angles (mod pi)."""
    d = np.abs(a - b) % np.pi
    return np.minimum(d, np.pi - d)


# --------------------------------------------------------------------------------------------
# recall and output contract
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "amp"), [(0, 1.0), (1, 1.0), (2, 0.5), (3, 2.0), (4, 3.0)])
def test_every_object_is_covered_by_a_top50_proposal(seed: int, amp: float) -> None:
    img = _scene(seed, amp)
    boxes, scores = EdgeBoxes()(img)
    _check_output(boxes, scores, H, W)
    assert len(boxes) == 100  # default max_boxes, plenty of candidates in a textured scene
    best = box_iou(boxes[:50], GT).max(axis=0)
    assert np.all(best >= 0.7), f"best IoU per object {best.round(3)}"


def test_max_boxes_and_min_side() -> None:
    img = _scene(0)
    boxes, scores = EdgeBoxes(max_boxes=7)(img)
    assert len(boxes) == 7
    boxes, scores = EdgeBoxes(max_boxes=50, min_side=40)(img)
    _check_output(boxes, scores, H, W)
    # Small boxes are filtered *before* truncation, so the budget is still filled.
    assert len(boxes) == 50
    assert np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).min() >= 40
    assert np.all(box_iou(boxes, GT).max(axis=0) >= 0.7)
    # A minimum side larger than the image leaves nothing, without error.
    boxes, scores = EdgeBoxes(min_side=max(H, W) + 1)(img)
    assert boxes.shape == (0, 4) and scores.shape == (0,)


@pytest.mark.parametrize(
    "image",
    [
        np.full((H, W, 3), 77, np.uint8),  # constant: no edges, no boxes
        np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8),  # pure noise
        np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8),  # tiny
        np.random.default_rng(2).integers(0, 256, (1, 1, 3), dtype=np.uint8),
        np.zeros((40, 300, 3), np.uint8),
    ],
    ids=["constant", "noise", "tiny", "1x1", "black-strip"],
)
def test_degenerate_images_do_not_crash(image: np.ndarray) -> None:
    boxes, scores = EdgeBoxes()(image)
    _check_output(boxes, scores, *image.shape[:2])
    if image.min() == image.max():
        assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_non_contiguous_image_is_accepted() -> None:
    img = _scene(0)
    flipped = img[:, ::-1]  # a negative-stride view, as a flip augmentation produces
    boxes, scores = EdgeBoxes()(flipped)
    expected, _ = EdgeBoxes()(np.ascontiguousarray(flipped))
    np.testing.assert_array_equal(boxes, expected)


@pytest.mark.parametrize(
    ("image", "exc"),
    [
        (np.zeros((10, 10), np.uint8), ValueError),
        (np.zeros((10, 10, 4), np.uint8), ValueError),
        (np.zeros((10, 10, 3), np.float32), TypeError),
    ],
)
def test_bad_images_are_rejected(image: np.ndarray, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        EdgeBoxes()(image)


def test_bad_parameters_are_rejected() -> None:
    for kwargs in ({"max_boxes": 0}, {"min_side": -1}, {"alpha": 1.5}, {"beta": 0}):
        with pytest.raises(ValueError):
            EdgeBoxes(**kwargs)


@dataclass
class _FakeSample:
    image: np.ndarray
    name: str


def test_duck_typed_sample_and_propose_agree(tmp_path: Path) -> None:
    img = _scene(0)
    direct = EdgeBoxes().propose(img)
    via_sample = EdgeBoxes()(_FakeSample(img, "2007_000033"))
    for a, b in zip(direct, via_sample, strict=True):
        np.testing.assert_array_equal(a, b)
    cached = EdgeBoxes(cache_dir=tmp_path)(_FakeSample(img, "2007_000033"))
    np.testing.assert_array_equal(cached[0], direct[0])
    assert (tmp_path / "2007_000033.npz").is_file()
    with pytest.raises(TypeError, match=r"\.image"):
        EdgeBoxes()("not an image")


# --------------------------------------------------------------------------------------------
# box helpers
# --------------------------------------------------------------------------------------------


def test_box_iou_hand_computed() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5]], np.float32)  # second one is empty
    b = np.array(
        [
            [0, 0, 10, 10],  # identical: 1
            [5, 5, 15, 15],  # 25 / (100 + 100 - 25)
            [10, 0, 20, 10],  # shares an edge only: exclusive x1, so 0
            [2, 2, 4, 8],  # inside: 12 / 100
            [0, 0, 20, 5],  # 50 / (100 + 100 - 50)
        ],
        np.float32,
    )
    iou = box_iou(a, b)
    assert iou.shape == (2, 5)
    np.testing.assert_allclose(iou[0], [1.0, 25 / 175, 0.0, 12 / 100, 50 / 150])
    np.testing.assert_array_equal(iou[1], 0.0)  # empty boxes overlap nothing (no NaN)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 5)
    assert box_iou(a, np.zeros((0, 4))).shape == (2, 0)
    np.testing.assert_allclose(box_iou(b, a), iou.T)


def test_filter_min_side() -> None:
    boxes = np.array([[0, 0, 10, 50], [0, 0, 20, 20], [0, 0, 19, 100], [5, 5, 40, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    kept_b, kept_s = filter_min_side(boxes, scores, 20)
    np.testing.assert_array_equal(kept_b, boxes[[1, 3]])  # the boundary (20) is kept
    np.testing.assert_array_equal(kept_s, scores[[1, 3]])
    same_b, same_s = filter_min_side(boxes, scores, 0)
    np.testing.assert_array_equal(same_b, boxes)
    empty_b, empty_s = filter_min_side(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 5)
    assert empty_b.shape == (0, 4) and empty_s.shape == (0,)
    with pytest.raises(ValueError):
        filter_min_side(boxes, scores[:2], 1)


# --------------------------------------------------------------------------------------------
# gradient edges
# --------------------------------------------------------------------------------------------


def test_gradient_edges_maps() -> None:
    img = _scene(0)
    edges, orientation = gradient_edges(img)
    for m in (edges, orientation):
        assert m.dtype == np.float32 and m.shape == (H, W)
    assert edges.min() >= 0 and edges.max() == pytest.approx(1.0)
    assert orientation.min() >= 0 and orientation.max() < np.pi
    # NMS thins: the rectangle's left side (x = 15) is a 1-2 pixel ridge on each row.
    row = edges[55, 5:25]
    assert 1 <= np.count_nonzero(row > 0.3) <= 2
    assert abs(5 + int(np.argmax(row)) - 14.5) <= 1
    const_e, const_o = gradient_edges(np.full((30, 40, 3), 200, np.uint8))
    assert not const_e.any() and const_e.shape == const_o.shape == (30, 40)


def test_orientation_convention_is_the_edge_normal() -> None:
    # Anti-aliased disc: the normal at each boundary point is the radius direction.
    img = np.full((200, 200, 3), 60, np.uint8)
    cv2.circle(img, (100, 100), 60, (200, 200, 200), -1, lineType=cv2.LINE_AA)
    _, orientation = gradient_edges(img, nms=False)
    yy, xx = np.mgrid[0:200, 0:200]
    ring = np.abs(np.hypot(xx - 100, yy - 100) - 60) < 1.5
    normal = np.mod(np.arctan2(yy - 100, xx - 100), np.pi)
    err = np.degrees(_angle_diff(orientation[ring], normal[ring]))
    assert err.mean() < 1.0 and err.max() < 3.0
    # Axis-aligned edges: vertical boundary -> 0, horizontal boundary -> pi/2.
    img = np.zeros((60, 60, 3), np.uint8)
    img[:, 30:] = 255
    vertical = gradient_edges(img, nms=False)[1][30, 30]
    horizontal = gradient_edges(np.ascontiguousarray(img.transpose(1, 0, 2)), nms=False)[1][30, 30]
    assert np.degrees(_angle_diff(vertical, 0.0)) < 1
    assert np.degrees(_angle_diff(horizontal, np.pi / 2)) < 1


def test_orientation_and_nms_match_opencv(toy_model: Path) -> None:
    """Cross-check against OpenCV's own StructuredEdgeDetection.computeOrientation and
    edgesNms, reachable through the toy model."""
    sed = cv2.ximgproc.createStructuredEdgeDetection(str(toy_model))
    img = np.full((200, 200, 3), 60, np.uint8)
    cv2.circle(img, (100, 100), 60, (200, 200, 200), -1, lineType=cv2.LINE_AA)
    edges, orientation = gradient_edges(img, nms=False)
    # computeOrientation's estimate is biased between the axes (it returns
    # atan(tan^2 theta)), but both agree at the multiples of pi/4.
    cv_orientation = sed.computeOrientation(edges)
    yy, xx = np.mgrid[0:200, 0:200]
    normal = np.mod(np.arctan2(yy - 100, xx - 100), np.pi)
    ring = np.abs(np.hypot(xx - 100, yy - 100) - 60) < 1.5
    for theta in (np.pi / 4, np.pi / 2, 3 * np.pi / 4, 0.0):
        sel = ring & (_angle_diff(normal, theta) < 0.03)
        assert sel.any()
        assert np.degrees(_angle_diff(orientation[sel], theta)).max() < 3
        assert np.degrees(_angle_diff(cv_orientation[sel], theta)).max() < 5
    # The NumPy edgesNms port reproduces OpenCV's exactly, on a clean and a textured image.
    for image in (img, _scene(3)):
        e, o = gradient_edges(image, nms=False)
        np.testing.assert_array_equal(edges_nms(e, o), sed.edgesNms(e, o))


# --------------------------------------------------------------------------------------------
# structured-edge model path
# --------------------------------------------------------------------------------------------


def test_missing_model_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model.yml.gz"
    with pytest.raises(FileNotFoundError, match="no_such_model.yml.gz"):
        EdgeBoxes(edge_model=missing)
    with pytest.raises(FileNotFoundError, match=str(tmp_path.name)):
        EdgeBoxes(edge_model=tmp_path)  # a directory is not a model file


def test_unreadable_model_file_names_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "garbage_model.yml"
    bad.write_bytes(b"garbage\x00\x01 not yaml")
    with pytest.raises(ValueError, match="garbage_model.yml"):
        EdgeBoxes(edge_model=bad)


@pytest.mark.parametrize(
    "text",
    [
        "%YAML:1.0\nfoo: 1\n",  # parses, but OpenCV's loader would die of SIGFPE on it
        "%YAML:1.0\noptions:\n  stride: 2\n",  # options incomplete, no forest
    ],
)
def test_yaml_that_is_not_a_model_names_the_path(tmp_path: Path, text: str) -> None:
    bad = tmp_path / "other_config.yml"
    bad.write_text(text)
    with pytest.raises(ValueError, match="other_config.yml"):
        EdgeBoxes(edge_model=bad)


def test_structured_edges_path_with_toy_model(toy_model: Path, tmp_path: Path) -> None:
    eb = EdgeBoxes(edge_model=toy_model)
    img = _scene(0)
    edges, orientation = eb.edges(img)
    assert edges.dtype == orientation.dtype == np.float32
    assert edges.shape == orientation.shape == (H, W)
    assert edges.max() > 0.5  # the toy forest fires on the shapes' boundaries
    boxes, scores = eb(img)
    _check_output(boxes, scores, H, W)
    assert len(boxes) > 0
    assert np.all(box_iou(boxes[:50], GT).max(axis=0) >= 0.5)
    # Picklable (for spawn-based DataLoader workers): the model is reloaded on demand.
    clone = pickle.loads(pickle.dumps(eb))
    np.testing.assert_array_equal(clone(img)[0], boxes)
    # A cache written with the gradient edges is not reused for the model's edges.
    EdgeBoxes(cache_dir=tmp_path / "c")(_FakeSample(img, "x"))
    from_model = EdgeBoxes(edge_model=toy_model, cache_dir=tmp_path / "c")(_FakeSample(img, "x"))
    np.testing.assert_array_equal(from_model[0], boxes)


@pytest.mark.parametrize("shape", [(8, 100, 3), (100, 12, 3), (3, 3, 3), (24, 24, 3)])
def test_structured_edges_on_small_images(toy_model: Path, shape: tuple[int, int, int]) -> None:
    # Unpadded, detectEdges fails on images narrower than the model's 32 px patch.
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    eb = EdgeBoxes(edge_model=toy_model)
    edges, orientation = eb.edges(image)
    assert edges.shape == orientation.shape == shape[:2]
    _check_output(*eb(image), *shape[:2])


@pytest.mark.skipif(
    not os.path.isfile(os.environ.get("DECONVKERNELS_EDGE_MODEL", "")),
    reason="set DECONVKERNELS_EDGE_MODEL to a structured-edge model.yml.gz to run",
)
def test_structured_edges_with_real_model() -> None:
    eb = EdgeBoxes(edge_model=os.environ["DECONVKERNELS_EDGE_MODEL"])
    boxes, scores = eb(_scene(0))
    _check_output(boxes, scores, H, W)
    assert np.all(box_iou(boxes[:50], GT).max(axis=0) >= 0.7)


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


class _Counter:
    """Counts (or forbids) calls of EdgeBoxes._compute once installed with ``patch``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, forbid: bool = False) -> None:
        self.calls = 0
        orig = EdgeBoxes._compute

        def compute(eb: EdgeBoxes, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if forbid:
                raise AssertionError("recomputed although a valid cache entry exists")
            self.calls += 1
            return orig(eb, image)

        monkeypatch.setattr(EdgeBoxes, "_compute", compute)


def test_cache_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = _scene(0)
    counter = _Counter(monkeypatch)
    first = EdgeBoxes(max_boxes=50, cache_dir=tmp_path).propose(img, "img0")
    assert counter.calls == 1
    path = tmp_path / "img0.npz"
    assert path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img0.npz"]  # no temp files left

    _Counter(monkeypatch, forbid=True)
    second = EdgeBoxes(max_boxes=50, cache_dir=tmp_path).propose(img, "img0")
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype == np.float32
    with np.load(path) as data:  # the file records how it was made
        assert '"max_boxes": 50' in str(data["key"])


@pytest.mark.parametrize(
    "change",
    [{"max_boxes": 20}, {"min_side": 30}, {"alpha": 0.7}, {"beta": 0.6}, {"min_score": 0.05}],
)
def test_cache_with_other_parameters_is_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict
) -> None:
    img = _scene(0)
    EdgeBoxes(cache_dir=tmp_path).propose(img, "img0")
    counter = _Counter(monkeypatch)
    got = EdgeBoxes(cache_dir=tmp_path, **change).propose(img, "img0")
    assert counter.calls == 1
    monkeypatch.undo()
    np.testing.assert_array_equal(got[0], EdgeBoxes(**change).propose(img)[0])


def test_cache_with_other_pixels_is_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = _scene(0)
    EdgeBoxes(cache_dir=tmp_path).propose(img, "img0")
    counter = _Counter(monkeypatch)
    flipped = np.ascontiguousarray(img[:, ::-1])  # same name, same shape, other content
    EdgeBoxes(cache_dir=tmp_path).propose(flipped, "img0")
    assert counter.calls == 1


@pytest.mark.parametrize("content", [b"", b"not a zip file", b"PK\x03\x04truncated"])
def test_corrupt_cache_is_recomputed_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    img = _scene(0)
    expected = EdgeBoxes().propose(img)
    path = tmp_path / "img0.npz"
    path.write_bytes(content)
    counter = _Counter(monkeypatch)
    with pytest.warns(RuntimeWarning, match="img0.npz"):
        got = EdgeBoxes(cache_dir=tmp_path).propose(img, "img0")
    assert counter.calls == 1
    np.testing.assert_array_equal(got[0], expected[0])
    # The bad file was replaced by a good one: the next call reads it silently.
    _Counter(monkeypatch, forbid=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = EdgeBoxes(cache_dir=tmp_path).propose(img, "img0")
    np.testing.assert_array_equal(again[0], expected[0])


def test_cache_needs_a_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name"):
        EdgeBoxes(cache_dir=tmp_path)(_scene(0))
    with pytest.raises(ValueError, match="name"):
        EdgeBoxes(cache_dir=tmp_path).propose(_scene(0), "")


def test_cache_names_are_sanitised(tmp_path: Path) -> None:
    img = _scene(0)
    cache = tmp_path / "cache"
    names = ["VOC2012/JPEGImages/2007_000033", "..", "../escape", "a\\b", "a_b", "x" * 400]
    for name in names:
        EdgeBoxes(max_boxes=5, cache_dir=cache).propose(img, name)
    files = sorted(p.name for p in cache.iterdir())
    # Every name got its own file, flat inside the cache directory, none hidden.
    assert len(files) == len(names)
    assert all(p.is_file() and p.parent == cache for p in cache.iterdir())
    assert not any(f.startswith(".") for f in files)
    assert "VOC2012%2FJPEGImages%2F2007_000033.npz" in files
    assert not (tmp_path / "escape.npz").exists()
    assert all(len(f) < 255 for f in files)


def test_cache_dir_is_created(tmp_path: Path) -> None:
    cache = tmp_path / "a" / "b"
    EdgeBoxes(cache_dir=str(cache)).propose(_scene(0), "img0")
    assert (cache / "img0.npz").is_file()


def test_module_exports() -> None:
    for name in ("EdgeBoxes", "box_iou", "filter_min_side", "gradient_edges"):
        assert name in P.__all__
