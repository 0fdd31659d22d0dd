"""Datasets with per-token FG/BG labels: COCO-format (pycocotools) and Pascal VOC (SegmentationObject PNGs).

A *record* is one image plus what is needed to rasterise its labels (:meth:`Record.labels`); BAViT's input for it
is :func:`bavit.core.model.bavit_pixels` of :meth:`Record.load_image` (the Predictor's preprocessing), and training's
views are :mod:`bavit.data.augment`'s.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..box_ops import box_xywh_to_xyxy
from ..core.labels import (
    BOX_TAU,
    FG_FRAC,
    VOID_VALUE,
    area_fractions,
    fg_from_fractions,
    labels_from_boxes,
    labels_from_mask,
)
from ..errors import DataError
from ..imageio import load_image

# COCO's object size bins (area in original pixels).
SIZE_BINS = (("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, float("inf")))


@dataclass
class Instance:
    """One annotated object."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in original pixels
    area: float  # mask area in original pixels (COCO's ``area``)
    iscrowd: bool
    mask: Callable[[], np.ndarray] | None = None  # lazily rasterised [H, W] bool

    @property
    def size(self) -> str:
        return next(name for name, low, high in SIZE_BINS if low <= self.area < high)


@dataclass
class Record:
    image_path: Path
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    void_mask: Callable[[], np.ndarray] | None = None  # VOC only
    image_id: int | str | None = None

    def fg_mask(self) -> np.ndarray:
        """``[H, W]`` bool union of every instance mask (crowds included: they are objects too)."""
        union = np.zeros((self.height, self.width), dtype=bool)
        for instance in self.instances:
            if instance.mask is None:
                raise DataError(f"{self.image_path.name}: annotations have no masks; use --labels boxes")
            union |= instance.mask()
        return union

    def load_image(self) -> Image.Image:
        image = load_image(self.image_path, max_side=None, exif=False)
        if image.size != (self.width, self.height):
            raise DataError(
                f"{self.image_path} is {image.width}x{image.height} but its annotation says {self.width}x{self.height}"
            )
        return image

    def labels(self, grid: tuple[int, int], source: str = "mask", fg_frac: float = FG_FRAC,
               box_rule: str = "coverage", box_tau: float = BOX_TAU) -> torch.Tensor:
        """``[gh, gw]`` int64 token labels (1 FG, 0 BG, -100 ignore)."""
        if source == "mask":
            void = self.void_mask() if self.void_mask is not None else None
            return labels_from_mask(self.fg_mask(), grid, fg_frac=fg_frac, void_mask=void)
        if source == "boxes":
            return labels_from_boxes([i.box for i in self.instances], (self.width, self.height), grid, box_rule, box_tau)
        raise ValueError(f"unknown label source {source!r}; use 'mask' or 'boxes'")

    def instance_patches(self, grid: tuple[int, int], fg_frac: float = FG_FRAC) -> list[tuple[Instance, np.ndarray]]:
        """Per non-crowd instance, its own FG patches ``[gh, gw]`` bool (for the object keep rate).

        An instance too small to cover ``fg_frac`` of any patch is represented by the patch it covers most.
        """
        out = []
        for instance in self.instances:
            if instance.iscrowd or instance.mask is None:
                continue
            fractions = area_fractions(instance.mask(), grid)
            patches = fg_from_fractions(fractions, fg_frac)
            if not patches.any():
                if fractions.max() <= 0:
                    continue
                patches = np.zeros_like(patches)
                patches[np.unravel_index(np.argmax(fractions), fractions.shape)] = True
            out.append((instance, patches))
        return out


def _check_files(records: Sequence[Record], source: str) -> None:
    missing = [r.image_path for r in records if not r.image_path.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(records)} images referenced by {source} are missing, e.g. {missing[0]}"
        )


def load_coco(ann_file: str | Path):
    """pycocotools ``COCO`` for an ``instances_*.json`` (its progress prints silenced); :class:`DataError` if bad."""
    from pycocotools.coco import COCO

    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DataError(f"annotation file not found: {ann_file}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DataError(f"{ann_file} is not a valid COCO annotation file ({exc.__class__.__name__}: {exc})") from None
    if "annotations" not in coco.dataset or "categories" not in coco.dataset:
        raise DataError(f"{ann_file} has no 'annotations' or 'categories': not a COCO instances file")
    if not coco.imgs:
        raise DataError(f"{ann_file} lists no images")
    return coco


def coco_records(ann_file: str | Path, images_dir: str | Path) -> list[Record]:
    """Records for every image of a COCO ``instances_*.json`` (images without objects are valid: all BG)."""
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    coco = load_coco(ann_file)
    if not images_dir.is_dir():
        raise DataError(f"image folder not found: {images_dir}")
    records = records_from_coco(coco, images_dir)
    _check_files(records, str(ann_file))
    return records


def records_from_coco(coco, images_dir: str | Path) -> list[Record]:
    """Records for every image of a loaded annotation file (``coco``, a pycocotools ``COCO``), by image id, their
    files in ``images_dir`` (not checked here; :func:`coco_records` checks them)."""
    images_dir = Path(images_dir)
    records = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        instances = []
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
        for ann, box in zip(anns, box_xywh_to_xyxy([ann["bbox"] for ann in anns]).tolist()):
            has_mask = bool(ann.get("segmentation"))
            instances.append(
                Instance(
                    box=tuple(box),
                    area=float(ann.get("area", ann["bbox"][2] * ann["bbox"][3])),
                    iscrowd=bool(ann.get("iscrowd", 0)),
                    mask=(lambda a=ann: coco.annToMask(a).astype(bool)) if has_mask else None,
                )
            )
        records.append(Record(images_dir / info["file_name"], int(info["width"]), int(info["height"]), instances, image_id=image_id))
    return records


def coco_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(annotations/instances_{split}.json, {split}/)`` under a COCO root."""
    root = Path(root)
    return root / "annotations" / f"instances_{split}.json", root / split


def _read_index_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image if image.mode in ("P", "L") else image.convert("L"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable mask PNG ({exc})") from None


def voc_records(voc_root: str | Path, image_set: str = "val", year: str = "VOC2012") -> list[Record]:
    """Records from ``VOCdevkit/VOC2012/ImageSets/Segmentation/{image_set}.txt``.

    Instances come from SegmentationObject (one index per object); void (255) pixels are kept apart.
    ``voc_root`` may be the VOCdevkit folder or the VOC2012 folder inside it.
    """
    root = Path(voc_root)
    if (root / year).is_dir():
        root = root / year
    list_file = root / "ImageSets" / "Segmentation" / f"{image_set}.txt"
    if not list_file.is_file():
        raise DataError(f"VOC image set not found: {list_file}")
    names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{list_file} lists no images")
    records = []
    for name in names:
        object_path = root / "SegmentationObject" / f"{name}.png"
        class_path = root / "SegmentationClass" / f"{name}.png"
        found = [p for p in (object_path, class_path) if p.is_file()]
        if not found:
            raise DataError(f"no SegmentationObject/SegmentationClass PNG for VOC image {name}")
        maps = [_read_index_png(p) for p in found]
        if len({m.shape for m in maps}) != 1:
            raise DataError(f"VOC masks of {name} differ in size")
        seg = maps[0]  # instances: SegmentationObject when present
        void = np.zeros(seg.shape, dtype=bool)
        for index_map in maps:  # void (255) may be marked in either file
            void |= index_map == VOID_VALUE
        height, width = seg.shape
        instances = []
        for index in sorted(set(np.unique(seg).tolist()) - {0, VOID_VALUE}):
            ys, xs = np.nonzero(seg == index)
            instances.append(
                Instance(
                    box=(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)),
                    area=float(len(xs)),
                    iscrowd=False,
                    mask=lambda s=seg, v=void, i=index: (s == i) & ~v,
                )
            )
        records.append(
            Record(root / "JPEGImages" / f"{name}.jpg", width, height, instances,
                   void_mask=lambda v=void: v, image_id=name)
        )
    _check_files(records, str(list_file))
    return records


SUBSETS = ("all", "fit", "holdout")
