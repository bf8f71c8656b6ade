"""Tests of deconvkernels.data: synthetic scenes, palettes, VOC I/O, transforms, crop samplers."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from deconvkernels.data import (
    IMAGENET_MEAN,
    MEAN_PIXEL,
    VOC_CLASSES,
    BadSampleWarning,
    GTCropDataset,
    ProposalCropDataset,
    Sample,
    SyntheticScenes,
    VOCSegmentation,
    box_iou,
    boxes_from_instances,
    collate_skip_none,
    colorize,
    context_window,
    crop_resize,
    denormalize,
    jittered_gt_proposals,
    label_to_tensor,
    overlay,
    read_label_png,
    rgb_to_label,
    save_palette_png,
    to_tensor,
    voc_palette,
    write_voc_folder,
)
from deconvkernels.data.palette import HAS_PIL

# --------------------------------------------------------------------------- helpers


def _same(a: Sample, b: Sample) -> bool:
    return (
        a.name == b.name
        and np.array_equal(a.image, b.image)
        and np.array_equal(a.label, b.label)
        and np.array_equal(a.instances, b.instances)
        and np.array_equal(a.boxes, b.boxes)
        and np.array_equal(a.box_classes, b.box_classes)
    )


def _tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


class _Flaky:
    """A source whose items listed in ``bad`` load as ``None`` (editable after construction)."""

    def __init__(self, samples: list[Sample], bad: set[int]) -> None:
        self.samples, self.bad = samples, bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample | None:
        return None if i in self.bad else self.samples[i]


@pytest.fixture(scope="module")
def scenes() -> SyntheticScenes:
    return SyntheticScenes(40, (48, 64), num_classes=5, seed=7)


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory, scenes) -> Path:
    root = tmp_path_factory.mktemp("voc")
    scenes.to_voc_folder(root, {"train": range(30), "val": range(30, 40)})
    return root


# --------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_in_any_order():
    a = SyntheticScenes(12, 40, seed=3)
    forward = [a[i] for i in range(12)]
    b = SyntheticScenes(12, 40, seed=3)
    backward = [b[i] for i in reversed(range(12))][::-1]
    assert all(_same(x, y) for x, y in zip(forward, backward, strict=True))
    assert _same(a[-1], forward[11])
    other = SyntheticScenes(12, 40, seed=4)
    assert not any(np.array_equal(other[i].image, forward[i].image) for i in range(12))
    # Items differ from each other too (the index feeds the generator).
    assert not np.array_equal(forward[0].image, forward[1].image)
    with pytest.raises(IndexError):
        a[12]


@pytest.mark.parametrize("size", [(37, 53), 64, 224, (16, 200)])
def test_synthetic_any_size(size):
    ds = SyntheticScenes(4, size, num_classes=20, seed=1)
    h, w = (size, size) if isinstance(size, int) else size
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
        assert s.label.shape == (h, w) and s.instances.shape == (h, w)
        assert s.label.max() <= 20 and s.instances.max() == s.num_instances
        assert s.name == f"synthetic-{i:06d}"
    # The image is not flat: there is texture and noise to learn from.
    assert ds[0].image.std() > 10


def test_synthetic_boxes_tight_and_labels_consistent(scenes):
    total = 0
    for i in range(len(scenes)):
        s = scenes[i]
        assert np.array_equal(s.label > 0, s.instances > 0)
        assert 1 <= s.num_instances <= 4 and len(s.box_classes) == s.num_instances
        for k in range(1, s.num_instances + 1):
            mask = s.instances == k
            assert mask.sum() >= 8
            assert s.boxes[k - 1].tolist() == _tight_box(mask)
            assert set(np.unique(s.label[mask])) == {s.box_classes[k - 1]}
            total += 1
        # The generic helper (used by the VOC reader) agrees with the generator.
        inst, boxes, classes = boxes_from_instances(s.instances, s.label)
        assert np.array_equal(inst, s.instances)
        assert np.array_equal(boxes, s.boxes) and np.array_equal(classes, s.box_classes)
    assert total > len(scenes)


def test_synthetic_occlusion_happens(scenes):
    fractions = np.concatenate([scenes.render(i)[1] for i in range(len(scenes))])
    assert (fractions < 0.95).sum() >= 3, "no image has an object partly hidden by another"
    assert fractions.min() >= scenes.min_visible_frac - 1e-6
    assert (fractions == 1).sum() > len(fractions) // 2


def test_synthetic_class_coverage_and_names():
    ds = SyntheticScenes(80, 48, num_classes=20, seed=0)
    seen = set()
    for i in range(len(ds)):
        seen.update(ds[i].box_classes.tolist())
    assert seen == set(range(1, 21))
    assert len(ds.class_names) == 21 and ds.class_names[0] == "background"
    assert len(set(ds.class_names)) == 21
    assert SyntheticScenes(1, num_classes=3).class_names == (
        "background",
        "disc",
        "box",
        "triangle",
    )
    with pytest.raises(ValueError):
        SyntheticScenes(1, num_classes=21)


def test_synthetic_classes_have_their_hue(scenes):
    """Each instance's median hue lies in its class's band (a learnable colour cue)."""
    hits = n = 0
    for i in range(len(scenes)):
        s = scenes[i]
        hue = cv2.cvtColor(s.image, cv2.COLOR_RGB2HSV)[..., 0].astype(float)
        for k, c in enumerate(s.box_classes, start=1):
            d = abs(np.median(hue[s.instances == k]) - scenes.class_hues[c])
            hits += min(d, 180 - d) < 12
            n += 1
    assert hits >= 0.85 * n


# --------------------------------------------------------------------------- palette


def test_voc_palette_standard_colours():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # border / ignore
    assert len({tuple(c) for c in pal}) == 256
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert VOC_CLASSES[15] == "person"


def test_palette_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 21, (31, 45)).astype(np.uint8)
    label[:3] = 255
    path = tmp_path / "x.png"
    save_palette_png(path, label)
    assert np.array_equal(read_label_png(path), label)
    if HAS_PIL:
        from PIL import Image

        with Image.open(path) as img:
            assert img.mode == "P"
            assert np.array_equal(np.array(img), label)
    # An RGB rendering maps back through the palette; unknown colours become 255.
    rgb = colorize(label)
    assert rgb[0, 0].tolist() == [224, 224, 192]
    assert np.array_equal(rgb_to_label(rgb), label)
    rgb[5, 5] = (1, 2, 3)
    assert rgb_to_label(rgb)[5, 5] == 255
    cv2.imwrite(str(tmp_path / "rgb.png"), cv2.cvtColor(colorize(label), cv2.COLOR_RGB2BGR))
    assert np.array_equal(read_label_png(tmp_path / "rgb.png"), label)


def test_overlay():
    image = np.full((4, 4, 3), 100, np.uint8)
    label = np.zeros((4, 4), np.uint8)
    label[0, 0] = 1
    out = overlay(image, label, alpha=0.5)
    assert np.array_equal(out[1:], image[1:])
    assert out[0, 0].tolist() == [114, 50, 50]  # halfway between 100 and (128, 0, 0)


# --------------------------------------------------------------------------- transforms


def test_transforms_round_trip():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    t = to_tensor(image)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    expect = (image[..., 0] / 255.0 - IMAGENET_MEAN[0]) / 0.229
    assert np.allclose(t[0].numpy(), expect, atol=1e-5)
    assert np.array_equal(denormalize(t), image)
    assert np.array_equal(denormalize(t[None])[0], image)
    assert to_tensor(np.full((2, 2, 3), MEAN_PIXEL, np.uint8)).abs().max() < 0.01
    lab = label_to_tensor(np.array([[0, 255]], np.uint8))
    assert lab.dtype == torch.int64 and lab.tolist() == [[0, 255]]


# --------------------------------------------------------------------------- VOC


def test_voc_round_trip(voc_dir, scenes):
    for split, idx in (("train", range(30)), ("val", range(30, 40))):
        ds = VOCSegmentation(voc_dir, split)
        assert len(ds) == len(idx) and ds.class_names == scenes.class_names
        for j, i in enumerate(idx):
            got, want = ds[j], scenes[i]
            assert got.name == want.name
            assert np.array_equal(got.label, want.label)
            assert np.array_equal(got.instances, want.instances)
            assert np.array_equal(got.boxes, want.boxes)
            assert np.array_equal(got.box_classes, want.box_classes)
            assert np.abs(got.image.astype(int) - want.image).mean() < 8  # JPEG
        assert ds.num_skipped == 0


def test_voc_root_layouts(tmp_path, scenes):
    write_voc_folder(scenes, tmp_path / "VOCdevkit", {"val": [0, 1]})
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        ds = VOCSegmentation(root, "val")
        assert ds.root == tmp_path / "VOCdevkit" / "VOC2012" and len(ds) == 2
    # Without class_names.txt (the real devkit) the names are VOC's.
    assert not (tmp_path / "VOCdevkit" / "VOC2012" / "class_names.txt").exists()
    assert VOCSegmentation(tmp_path, "val").class_names == VOC_CLASSES
    write_voc_folder(scenes, tmp_path / "VOCdevkit", {"val": [0, 1]}, class_names=["bg", "x"])
    assert VOCSegmentation(tmp_path, "val").class_names == ("bg", "x")
    # One name a line: a name may hold spaces (the class count sets the model's outputs).
    names = ["background", "potted plant", "dining table"]
    write_voc_folder(scenes, tmp_path / "VOCdevkit", {"val": [0, 1]}, class_names=names)
    assert VOCSegmentation(tmp_path, "val").class_names == tuple(names)
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        VOCSegmentation(tmp_path, "nothere")


def test_voc_missing_root_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        VOCSegmentation(tmp_path / "nope")
    msg = str(e.value)
    assert str(tmp_path / "nope" / "VOCdevkit" / "VOC2012") in msg
    assert str(tmp_path / "nope" / "VOC2012") in msg


def test_voc_instance_helper_handles_borders_and_gaps():
    label = np.zeros((6, 6), np.uint8)
    inst = np.zeros((6, 6), np.int32)
    label[1:3, 1:3], inst[1:3, 1:3] = 7, 3  # id 3 -> instance 1
    label[4:6, 2:5], inst[4:6, 2:5] = 9, 5  # id 5 -> instance 2
    label[4, 2] = inst[4, 2] = 255  # a VOC border pixel: neither instance nor vote
    inst[0, 5] = 8  # an instance over background only: dropped
    out, boxes, classes = boxes_from_instances(inst, label)
    assert boxes.tolist() == [[1, 1, 3, 3], [2, 4, 5, 6]]
    assert classes.tolist() == [7, 9]
    assert set(np.unique(out)) == {0, 1, 2} and out[4, 2] == 0 and out[0, 5] == 0


@pytest.fixture()
def broken_voc(tmp_path, scenes) -> tuple[Path, dict[str, int]]:
    voc = write_voc_folder(scenes, tmp_path, {"train": range(8)})
    names = [scenes[i].name for i in range(8)]
    (voc / "JPEGImages" / f"{names[1]}.jpg").write_bytes(b"this is not a jpeg" * 20)
    png = voc / "SegmentationClass" / f"{names[3]}.png"
    png.write_bytes(png.read_bytes()[:60])
    (voc / "SegmentationObject" / f"{names[4]}.png").unlink()
    jpg = voc / "JPEGImages" / f"{names[6]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    bad = {
        str(voc / "JPEGImages" / f"{names[1]}.jpg"): 1,
        str(png): 3,
        str(voc / "SegmentationObject" / f"{names[4]}.png"): 4,
        str(jpg): 6,
    }
    return tmp_path, bad


def test_voc_bad_files_are_skipped_and_counted(broken_voc):
    root, bad = broken_voc
    ds = VOCSegmentation(root, "train")
    for path, i in bad.items():
        with pytest.warns(BadSampleWarning, match=Path(path).name):
            assert ds[i] is None
    assert ds.num_skipped == 4 and sorted(ds.skipped_paths) == sorted(bad)
    with pytest.warns(BadSampleWarning):
        assert ds[1] is None
    assert ds.num_skipped == 5 and len(ds.skipped_paths) == 4  # events vs. distinct paths
    good = [i for i in range(8) if i not in bad.values()]
    assert all(isinstance(ds[i], Sample) for i in good)


def test_dataloader_with_bad_files_runs_to_the_end(broken_voc):
    root, bad = broken_voc
    ds = VOCSegmentation(root, "train")
    names = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSampleWarning)
        for batch in DataLoader(ds, batch_size=2, collate_fn=collate_skip_none):
            if batch is not None:
                assert all(isinstance(s, Sample) for s in batch)
                names += [s.name for s in batch]
    assert len(names) == 8 - len(bad) and ds.num_skipped == len(bad)


def test_samplers_survive_bad_voc_files(broken_voc):
    root, bad = broken_voc
    voc = VOCSegmentation(root, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSampleWarning)
        ds = GTCropDataset(voc, resize=32, crop=32)
        # Label files are checked while indexing (items 3 and 4), images only when served.
        assert ds.num_skipped == 2 and {it.image_index for it in ds.items} == {0, 1, 2, 5, 6, 7}
        n = 0
        for img, lab in DataLoader(ds, batch_size=4, collate_fn=collate_skip_none):
            assert img.shape[1:] == (3, 32, 32) and lab.shape[1:] == (32, 32)
            n += len(img)
    assert n == len(ds) and ds.num_skipped > 2


def test_collate_skip_none():
    assert collate_skip_none([None, None]) is None
    out = collate_skip_none([(torch.ones(2), 1), None, (torch.zeros(2), 2)])
    assert out[0].shape == (2, 2) and out[1].tolist() == [1, 2]


def test_sbd_needs_scipy(voc_dir, tmp_path):
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="scipy"):
            VOCSegmentation(voc_dir, "train", sbd_root=tmp_path)
        return
    pytest.skip("scipy is installed: test_sbd_mat_files reads SBD's .mat files")


def test_sbd_mat_files(voc_dir, tmp_path):
    """SBD-only ids join the training split and are read from .mat files laid out as SBD's
    (MATLAB structs GTcls / GTinst with their other fields, uint8 maps); a corrupt .mat is
    skipped, counted and named, and VOC's own PNGs win where both exist."""
    sio = pytest.importorskip("scipy.io")
    label = np.zeros((48, 64), np.uint8)
    label[10:20, 5:25] = 4
    label[30:40, 40:60] = 15
    label[29, 40:60] = 255  # SBD has no ignore border, but a reader must keep one
    inst = np.zeros_like(label)
    inst[10:20, 5:25] = 1
    inst[30:40, 40:60] = 2
    for sub in ("cls", "inst", "img"):
        (tmp_path / sub).mkdir()
    boundaries = np.empty((2, 1), dtype=object)  # a cell of per-class boundary maps
    boundaries[0, 0] = boundaries[1, 0] = np.zeros((48, 64), np.uint8)
    sio.savemat(tmp_path / "cls" / "sbd1.mat", {"GTcls": {
        "Segmentation": label, "Boundaries": boundaries,
        "CategoriesPresent": np.array([[4], [15]], np.uint8)}})
    sio.savemat(tmp_path / "inst" / "sbd1.mat", {"GTinst": {
        "Segmentation": inst, "Boundaries": boundaries,
        "Categories": np.array([[4], [15]], np.uint8)}})
    cv2.imwrite(str(tmp_path / "img" / "sbd1.jpg"), np.zeros((48, 64, 3), np.uint8))
    # sbd2: its class .mat is truncated
    sio.savemat(tmp_path / "cls" / "sbd2.mat", {"GTcls": {"Segmentation": label}})
    data = (tmp_path / "cls" / "sbd2.mat").read_bytes()
    (tmp_path / "cls" / "sbd2.mat").write_bytes(data[: len(data) // 2])
    sio.savemat(tmp_path / "inst" / "sbd2.mat", {"GTinst": {"Segmentation": inst}})
    cv2.imwrite(str(tmp_path / "img" / "sbd2.jpg"), np.zeros((48, 64, 3), np.uint8))
    # train.txt / val.txt of SBD: synthetic-000031 is VOC val (left out), synthetic-000000 is
    # VOC train (its PNGs are read, not the .mat that would contradict them)
    sio.savemat(tmp_path / "cls" / "synthetic-000000.mat", {"GTcls": {"Segmentation": label}})
    (tmp_path / "train.txt").write_text("sbd1\nsynthetic-000031\n")
    (tmp_path / "val.txt").write_text("sbd2\nsynthetic-000000\n")
    ds = VOCSegmentation(voc_dir, "train", sbd_root=tmp_path)
    assert len(ds) == 32 and ds.ids[-2:] == ["sbd1", "sbd2"]
    assert ds.paths(0)["label"].suffix == ".png"
    s = ds[30]
    assert s.label.dtype == np.uint8 and np.array_equal(s.label, label)
    assert s.boxes.tolist() == [[5, 10, 25, 20], [40, 30, 60, 40]]
    assert s.box_classes.tolist() == [4, 15]
    assert ds.load_annotation(30)[1].tolist() == [4, 15]
    with pytest.warns(BadSampleWarning, match="sbd2.mat"):
        assert ds[31] is None
    assert ds.num_skipped == 1 and ds.skipped_paths == [str(tmp_path / "cls" / "sbd2.mat")]


# --------------------------------------------------------------------------- crop_resize


def test_crop_resize_identity_and_nearest():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    label = rng.integers(0, 21, (20, 30)).astype(np.uint8)
    img, lab = crop_resize(image, label, (0, 0, 30, 20), (20, 30))
    assert np.array_equal(img, image) and np.array_equal(lab, label)
    img, lab = crop_resize(image, label, (10, 4, 20, 14), 10)
    assert np.array_equal(img, image[4:14, 10:20]) and np.array_equal(lab, label[4:14, 10:20])
    # Halving picks the pixel under each cell centre: source index 2u + 1.
    _, lab = crop_resize(None, label, (0, 0, 30, 20), (10, 15))
    assert np.array_equal(lab, label[1::2, 1::2])
    # Shrinking the image area-averages (no aliasing): matches OpenCV's INTER_AREA.
    img, _ = crop_resize(image, None, (0, 0, 30, 20), (5, 6))
    ref = cv2.resize(image, (6, 5), interpolation=cv2.INTER_AREA)
    assert np.abs(img.astype(int) - ref).max() <= 1
    # Any dtype for the nearest-neighbour map (instance ids).
    inst = np.arange(600, dtype=np.int32).reshape(20, 30)
    _, out = crop_resize(None, inst, (-5, 0, 5, 10), 10, ignore_index=-1)
    assert out.dtype == np.int32 and (out[:, :5] == -1).all()
    assert np.array_equal(out[:, 5:], inst[:10, :5])


def test_crop_resize_pads_outside_the_image():
    image = np.full((10, 10, 3), 200, np.uint8)
    label = np.ones((10, 10), np.uint8)
    img, lab = crop_resize(image, label, (-10, 5, 10, 25), 20)
    assert (lab[:, :10] == 255).all() and (lab[5:, :] == 255).all()
    assert (lab[:5, 10:] == 1).all()
    assert (img[:, :9] == MEAN_PIXEL).all() and (img[6:] == MEAN_PIXEL).all()
    assert (img[:4, 11:] == 200).all()
    with pytest.raises(ValueError):
        crop_resize(image, label, (3, 3, 3, 8), 4)


def test_box_geometry():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10]], np.float32)
    iou = box_iou(a, b)
    assert np.allclose(iou, [[1 / 3, 1], [0, 0]])
    w = context_window(np.array([10, 20, 30, 30]), 1.2)
    assert np.allclose(w, [8, 13, 32, 37])  # square, side 1.2 * 20, same centre
    assert np.allclose(
        context_window(np.array([10, 20, 30, 30]), 1.0, square=False), [10, 20, 30, 30]
    )


# --------------------------------------------------------------------------- GT crops


def test_gt_crops_shapes_and_index(scenes):
    ds = GTCropDataset(scenes, resize=40, crop=32, seed=1)
    assert len(ds) == sum(scenes[i].num_instances for i in range(len(scenes)))
    first = ds.items[0]
    assert first.image_index == 0 and np.array_equal(first.box, scenes[0].boxes[0])
    img, lab = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert lab.shape == (32, 32) and lab.dtype == torch.int64
    assert set(lab.unique().tolist()) <= set(range(6)) | {255}
    assert ds[-1][0].shape == (3, 32, 32)
    with pytest.raises(ValueError):
        GTCropDataset(scenes, resize=32, crop=40)


def test_gt_crops_centre_the_object():
    # One object per image, so the foreground of the crop is that instance.
    src = SyntheticScenes(24, 64, num_classes=2, seed=5, objects=(1, 1))
    ds = GTCropDataset(src, resize=48, crop=48, mirror=False)
    assert len(ds) == 24
    for k in range(len(ds)):
        item = ds.items[k]
        cls = int(src[item.image_index].box_classes[0])
        img, lab = ds[k]
        lab = lab.numpy()
        x0, y0, x1, y1 = _tight_box(lab == cls)
        assert abs((x0 + x1) / 2 - 24) <= 1 and abs((y0 + y1) / 2 - 24) <= 1
        assert abs(max(x1 - x0, y1 - y0) - 48 / 1.2) <= 2
        assert lab[24, 24] == cls  # discs and boxes cover their centre
        # The image crop is the same window as the label crop.
        ref, _ = crop_resize(src[item.image_index].image, None, item.window, 48)
        assert torch.equal(img, to_tensor(ref))


def test_gt_crops_pad_when_the_window_leaves_the_image(scenes):
    ds = GTCropDataset(scenes, resize=36, crop=36, mirror=False)
    hits = wide = 0
    for k, item in enumerate(ds.items):
        w, h = 64, 48
        x0, y0, x1, y1 = item.window
        s = (x1 - x0) / 36
        cols = np.floor(x0 + (np.arange(36) + 0.5) * s)
        rows = np.floor(y0 + (np.arange(36) + 0.5) * s)
        outside = ((cols < 0) | (cols >= w))[None, :] | ((rows < 0) | (rows >= h))[:, None]
        if not outside.any():
            continue
        hits += 1
        img, lab = ds[k]
        assert np.array_equal(lab.numpy() == 255, outside)  # synthetic labels have no 255
        inner = cv2.erode(outside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if inner.any():  # away from the blended edge the padding normalises to ~0
            wide += 1
            assert img.permute(1, 2, 0)[torch.from_numpy(inner)].abs().max() < 0.02
    assert hits >= 3 and wide >= 1


def test_gt_crops_deterministic_per_seed_epoch_index(scenes):
    a = GTCropDataset(scenes, resize=40, crop=32, seed=3)
    b = GTCropDataset(scenes, resize=40, crop=32, seed=3)
    idx = [5, 0, 17, 5]
    for k in idx:
        assert all(torch.equal(x, y) for x, y in zip(a[k], b[k], strict=True))
    a.set_epoch(1)
    changed = sum(not torch.equal(a[k][0], b[k][0]) for k in range(10))
    assert changed >= 7
    b.set_epoch(1)
    assert all(torch.equal(a[k][1], b[k][1]) for k in range(10))
    c = GTCropDataset(scenes, resize=40, crop=32, seed=4)
    assert sum(not torch.equal(c[k][0], b[k][0]) for k in range(10)) >= 7


def test_gt_crops_mirror_and_jitter():
    src = SyntheticScenes(4, 48, seed=2)
    plain = GTCropDataset(src, resize=40, crop=40, mirror=False)
    ds = GTCropDataset(src, resize=40, crop=40, mirror=True)
    flips = 0
    for epoch in range(12):
        ds.set_epoch(epoch)
        img, lab = ds[0]
        ref_img, ref_lab = plain[0]
        if torch.equal(lab, ref_lab):
            assert torch.equal(img, ref_img)
        else:
            assert torch.equal(lab, ref_lab.flip(-1)) and torch.equal(img, ref_img.flip(-1))
            flips += 1
    assert 2 <= flips <= 10


def test_gt_crops_skip_bad_source_items(scenes):
    samples = [scenes[i] for i in range(6)]
    src = _Flaky(samples, bad={2})
    ds = GTCropDataset(src, resize=32, crop=32, mirror=False)
    assert ds.num_skipped == 1 and all(it.image_index != 2 for it in ds.items)
    # An item whose image breaks later serves the next crop, deterministically.
    k = next(k for k, it in enumerate(ds.items) if it.image_index == 3)
    ok = ds[k + samples[3].num_instances]
    src.bad.add(3)
    got = ds[k]
    assert all(torch.equal(x, y) for x, y in zip(got, ok, strict=True))
    assert ds.num_skipped == 1 + samples[3].num_instances  # each of image 3's crops tried
    src.bad.update(range(6))
    with pytest.raises(RuntimeError, match="failed"):
        ds[0]


def test_gt_crops_from_voc_index_without_images(voc_dir, scenes):
    voc = VOCSegmentation(voc_dir, "val")
    ds = GTCropDataset(voc, resize=40, crop=32)
    ref = GTCropDataset([scenes[i] for i in range(30, 40)], resize=40, crop=32)
    assert len(ds) == len(ref)
    assert all(np.array_equal(a.window, b.window) for a, b in zip(ds.items, ref.items, strict=True))
    assert all(torch.equal(ds[k][1], ref[k][1]) for k in range(len(ds)))


# --------------------------------------------------------------------------- proposal crops


def test_jittered_proposals_deterministic(scenes):
    prop = jittered_gt_proposals(num=30, seed=1)
    s = scenes[0]
    b1, s1 = prop(s)
    b2, _ = prop(s)
    assert b1.shape == (30, 4) and b1.dtype == np.float32 and s1.shape == (30,)
    assert np.array_equal(b1, b2) and (np.diff(s1) <= 0).all()
    assert (b1[:, :2] >= 0).all() and (b1[:, 2] <= s.width).all() and (b1[:, 3] <= s.height).all()
    assert (b1[:, 2:] > b1[:, :2]).all()
    assert not np.array_equal(jittered_gt_proposals(num=30, seed=2)(s)[0], b1)


def test_proposal_crops_overlap_ground_truth(scenes):
    prop = jittered_gt_proposals(num=24, jitter=0.3, seed=0)
    ds = ProposalCropDataset(scenes, prop, resize=40, crop=32, min_iou=0.5, max_per_image=6)
    assert len(ds) > len(scenes)
    per_image: dict[int, int] = {}
    rejected = 0
    for item in ds.items:
        gt = scenes[item.image_index].boxes
        iou = box_iou(item.box[None], gt)[0]
        assert iou.max() >= 0.5 and np.isclose(iou.max(), item.iou)
        assert item.gt_index == iou.argmax()
        per_image[item.image_index] = per_image.get(item.image_index, 0) + 1
    for i in range(len(scenes)):
        best = box_iou(prop(scenes[i])[0], scenes[i].boxes).max(axis=1)
        rejected += (best < 0.5).sum()
    assert max(per_image.values()) <= 6 and rejected > 0
    img, lab = ds[0]
    assert img.shape == (3, 32, 32) and lab.shape == (32, 32) and lab.dtype == torch.int64
    # Windows frame the proposal like stage 1 frames a ground-truth box.
    it = ds.items[0]
    assert np.allclose(it.window, context_window(it.box, 1.2))


def test_proposal_crops_fall_back_to_ground_truth(scenes):
    src = [scenes[i] for i in range(5)]

    def useless(sample):  # a proposal nowhere near any object
        return np.array([[0, 0, 1, 1]], np.float32), np.ones(1, np.float32)

    ds = ProposalCropDataset(src, useless, resize=32, crop=32)
    assert ds.num_fallback == 5
    assert [it.box.tolist() for it in ds.items] == [b.tolist() for s in src for b in s.boxes]


def test_proposal_crops_pad_and_are_deterministic(scenes):
    prop = jittered_gt_proposals(num=16, seed=3)
    a = ProposalCropDataset(scenes, prop, resize=40, crop=40, mirror=False)
    padded = 0
    for k, item in enumerate(a.items):
        x0, y0, x1, y1 = item.window
        if x0 < -2 or y0 < -2 or x1 > 66 or y1 > 50:
            padded += (a[k][1] == 255).any().item()
    assert padded >= 3
    b = ProposalCropDataset(scenes, prop, resize=40, crop=32, seed=9)
    c = ProposalCropDataset(scenes, prop, resize=40, crop=32, seed=9)
    assert all(torch.equal(b[k][0], c[k][0]) for k in range(0, len(b), 7))


def test_write_voc_folder_skips_none_and_dedups(tmp_path, scenes):
    src = _Flaky([scenes[i] for i in range(4)], bad={1})
    voc = write_voc_folder(src, tmp_path, {"a": [0, 1, 2], "b": [2, 3]})
    sets = voc / "ImageSets" / "Segmentation"
    assert (sets / "a.txt").read_text().split() == ["synthetic-000000", "synthetic-000002"]
    assert (sets / "b.txt").read_text().split() == ["synthetic-000002", "synthetic-000003"]
    assert len(list((voc / "JPEGImages").iterdir())) == 3
    shutil.rmtree(voc)
