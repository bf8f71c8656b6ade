"""PASCAL VOC segmentation: a tolerant reader (optionally with SBD labels) and a writer.

Folder layout (the devkit's)::

    VOC2012/
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png     palette PNG, pixel value = class id, 255 = border/ignore
        SegmentationObject/<id>.png    palette PNG, pixel value = instance id, 255 = border
        ImageSets/Segmentation/<split>.txt

Bad files never stop a run: :meth:`VOCSegmentation.__getitem__` warns (a
:class:`BadSampleWarning` naming the path), counts the failure and returns ``None``;
:func:`collate_skip_none` drops those items from a batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from .palette import VOC_CLASSES, read_label_png, save_palette_png
from .sample import IGNORE_INDEX, Sample, boxes_from_instances

#: Optional file next to ``JPEGImages`` with one class name per line (background first). The
#: devkit has none; :func:`write_voc_folder` writes it so non-VOC classes keep their names.
CLASS_NAMES_FILE = "class_names.txt"


class BadSampleWarning(RuntimeWarning):
    """An image or label file could not be read and its item was skipped."""


def find_voc_root(root: str | Path, year: str = "2012") -> Path:
    """The ``VOC<year>`` folder under ``root``.

    ``root`` may contain ``VOCdevkit/VOC<year>``, contain ``VOC<year>``, or be that folder.

    Raises:
        FileNotFoundError: naming every path tried.
    """
    root = Path(root).expanduser()
    tried = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root]
    for cand in tried:
        if (cand / "ImageSets" / "Segmentation").is_dir() or (cand / "JPEGImages").is_dir():
            return cand
    listing = ", ".join(str(p) for p in tried)
    raise FileNotFoundError(
        f"no PASCAL VOC {year} folder found (looked for ImageSets/Segmentation or JPEGImages "
        f"in: {listing})"
    )


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file as ``(H, W, 3)`` uint8 RGB.

    Raises ``FileNotFoundError`` / ``OSError`` for a missing, undecodable or truncated file.
    Some OpenCV builds (and ``cv2.imread``) decode a truncated JPEG silently, filling the
    missing rows with grey, so a JPEG without its end-of-image marker in its last kilobyte
    counts as truncated whatever the decoder says.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    data = np.fromfile(path, np.uint8)
    raw = data.tobytes()
    if raw[:2] == b"\xff\xd8" and b"\xff\xd9" not in raw[-1024:]:
        raise OSError(f"truncated JPEG (no end-of-image marker): {path}")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"could not decode image: {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _load_mat(path: Path, key: str) -> Any:
    from scipy.io import loadmat  # checked at construction; imported lazily for workers

    return loadmat(str(path), squeeze_me=True, struct_as_record=False)[key]


class VOCSegmentation(Dataset):
    """PASCAL VOC semantic + instance segmentation, returning :class:`Sample` or ``None``.

    Args:
        root: a folder containing ``VOCdevkit/VOC<year>`` or ``VOC<year>``, or that folder.
        split: name of a list in ``ImageSets/Segmentation`` (``train``, ``val``, ...).
        sbd_root: optional Semantic Boundaries Dataset folder (``cls/*.mat``, ``inst/*.mat``,
            ``img/*.jpg``, ``train.txt``, ``val.txt``) for the usual augmented training set:
            with ``split="train"`` the ids are VOC's ``train`` plus every SBD id (its train and
            val lists) that is not in VOC's ``val`` (10,582 images for VOC 2012); other splits
            are unchanged. VOC's own PNGs are preferred where both exist. Needs scipy.
        year: devkit year, selecting ``VOC<year>``.
        class_names: defaults to the folder's ``class_names.txt`` if present, else
            :data:`VOC_CLASSES`.

    Bad items: ``num_skipped`` counts every failed ``__getitem__`` (a file failing in two
    epochs counts twice), ``skipped_paths`` lists each failing path once. Both live in the
    process that called ``__getitem__``: with ``DataLoader(num_workers > 0)`` the workers'
    counts stay in the workers, only their warnings reach the main process.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        sbd_root: str | Path | None = None,
        year: str = "2012",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = find_voc_root(root, year)
        self.split = split
        self.sbd_root = None if sbd_root is None else Path(sbd_root).expanduser()
        sets = self.root / "ImageSets" / "Segmentation"
        ids = _read_ids(sets / f"{split}.txt")
        if self.sbd_root is not None:
            try:
                import scipy.io  # noqa: F401
            except ImportError as e:
                raise ImportError(
                    "reading SBD labels (sbd_root=...) needs scipy to load its .mat files: "
                    "pip install 'deconvkernels[sbd]' (or pip install scipy)"
                ) from e
            if split == "train":
                val = set(_read_ids(sets / "val.txt")) if (sets / "val.txt").is_file() else set()
                sbd = [
                    i
                    for n in ("train.txt", "val.txt")
                    if (self.sbd_root / n).is_file()
                    for i in _read_ids(self.sbd_root / n)
                ]
                seen = set(ids)
                for i in sbd:
                    if i not in seen and i not in val:
                        seen.add(i)
                        ids.append(i)
        self.ids: list[str] = ids
        if class_names is None:
            names_file = self.root / CLASS_NAMES_FILE
            # One name a line (as write_voc_folder writes them): names may hold spaces.
            class_names = (
                [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
                if names_file.is_file() else VOC_CLASSES
            )
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.num_skipped = 0
        self.skipped_paths: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self, index: int) -> dict[str, Path]:
        """Where item ``index``'s image and labels come from (VOC first, then SBD)."""
        i = self.ids[index]
        voc = {
            "image": self.root / "JPEGImages" / f"{i}.jpg",
            "label": self.root / "SegmentationClass" / f"{i}.png",
            "instances": self.root / "SegmentationObject" / f"{i}.png",
        }
        if self.sbd_root is None:
            return voc
        sbd = {
            "image": self.sbd_root / "img" / f"{i}.jpg",
            "label": self.sbd_root / "cls" / f"{i}.mat",
            "instances": self.sbd_root / "inst" / f"{i}.mat",
        }
        return {k: voc[k] if voc[k].is_file() or not sbd[k].is_file() else sbd[k] for k in voc}

    def _read_label(self, path: Path) -> np.ndarray:
        if path.suffix == ".mat":
            return np.asarray(_load_mat(path, "GTcls").Segmentation, np.uint8)
        return read_label_png(path)

    def _read_instances(self, path: Path) -> np.ndarray:
        if path.suffix == ".mat":
            return np.asarray(_load_mat(path, "GTinst").Segmentation, np.int32)
        return read_label_png(path).astype(np.int32)

    def _skip(self, path: Path, err: BaseException) -> None:
        self.num_skipped += 1
        if str(path) not in self.skipped_paths:
            self.skipped_paths.append(str(path))
        warnings.warn(
            f"skipping {path}: {type(err).__name__}: {err}", BadSampleWarning, stacklevel=3
        )

    def load_annotation(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(boxes, box_classes)`` of item ``index`` without decoding its image.

        Samplers use this to index instances cheaply; ``None`` (after a warning) if a label
        file is bad, exactly like ``__getitem__``.
        """
        p = self.paths(index)
        current = p["label"]
        try:
            label = self._read_label(current)
            current = p["instances"]
            inst = self._read_instances(current)
            if inst.shape != label.shape:
                raise ValueError(f"instance map {inst.shape} != label map {label.shape}")
        except Exception as err:  # any unreadable file: skip the item, never the run
            self._skip(current, err)
            return None
        _, boxes, classes = boxes_from_instances(inst, label)
        return boxes, classes

    def __getitem__(self, index: int) -> Sample | None:
        p = self.paths(index)
        current = p["image"]
        try:
            image = read_rgb(current)
            current = p["label"]
            label = self._read_label(current)
            current = p["instances"]
            inst = self._read_instances(current)
            if label.shape != image.shape[:2] or inst.shape != label.shape:
                raise ValueError(
                    f"sizes disagree: image {image.shape[:2]}, label {label.shape}, "
                    f"instances {inst.shape}"
                )
        except Exception as err:  # any unreadable file: skip the item, never the run
            self._skip(current, err)
            return None
        inst, boxes, classes = boxes_from_instances(inst, label)
        return Sample(image, label, inst, boxes, classes, self.ids[index])


def collate_skip_none(batch: list[Any]) -> Any:
    """``DataLoader`` collate function that drops ``None`` items (unreadable files).

    Returns ``None`` when every item was dropped (the training loop should skip that
    step), a plain ``list`` when the items are :class:`Sample` (their sizes differ, so they
    cannot be stacked), and ``default_collate`` of the remaining items otherwise.
    """
    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    if isinstance(kept[0], Sample):
        return kept
    return default_collate(kept)


def write_voc_folder(
    dataset: Sequence[Sample | None],
    root: str | Path,
    splits: Mapping[str, Iterable[int]],
    year: str = "2012",
    class_names: Sequence[str] | None = None,
    jpeg_quality: int = 95,
    progress: bool | None = None,
) -> Path:
    """Write items of ``dataset`` in the devkit layout under ``root/VOC<year>``.

    ``splits`` maps a split name to dataset indices, e.g. ``{"train": range(80), "val":
    range(80, 100)}``; an index in several splits is written once. Writes JPEG images, class
    and object palette PNGs (:func:`save_palette_png`; object ids ``1..K``), the split lists
    and, if given, ``class_names.txt``. Returns the ``VOC<year>`` folder.
    """
    voc = Path(root) / f"VOC{year}"
    dirs = {n: voc / n for n in ("JPEGImages", "SegmentationClass", "SegmentationObject")}
    sets = voc / "ImageSets" / "Segmentation"
    for d in [*dirs.values(), sets]:
        d.mkdir(parents=True, exist_ok=True)
    if class_names is not None:
        (voc / CLASS_NAMES_FILE).write_text("\n".join(class_names) + "\n")
    written: dict[int, str] = {}
    todo = {name: [int(i) for i in idx] for name, idx in splits.items()}
    every = sorted({i for idx in todo.values() for i in idx})
    show = progress if progress is not None else len(every) >= 500
    for i in tqdm(every, desc="writing VOC folder", disable=not show):
        s = dataset[i]
        if s is None:
            continue
        if s.num_instances >= IGNORE_INDEX:
            raise ValueError(f"{s.name}: {s.num_instances} instances do not fit a uint8 PNG")
        bgr = cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(
            str(dirs["JPEGImages"] / f"{s.name}.jpg"),
            bgr,
            [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)],
        ):
            raise OSError(f"could not write {dirs['JPEGImages'] / s.name}.jpg")
        save_palette_png(dirs["SegmentationClass"] / f"{s.name}.png", s.label)
        save_palette_png(dirs["SegmentationObject"] / f"{s.name}.png", s.instances.astype(np.uint8))
        written[i] = s.name
    for name, idx in todo.items():
        lines = [written[i] for i in idx if i in written]
        (sets / f"{name}.txt").write_text("".join(f"{n}\n" for n in lines))
    return voc
