"""COCO-format data read through pycocotools, images via :func:`bavit.imageio.load_image`.

- :class:`CocoDetection` -- detection data for YOLOS, shared by the mAP harness (:mod:`bavit.engine.coco_map`) and
  sparse fine-tuning (:mod:`bavit.engine.finetune`).
- :class:`CocoGroundTruth` -- a dataset root's images indexed by file name, with their objects' pixels and patch
  labels: the app's ground truth for an image it is shown.

Label ids. ``hustvl/yolos-tiny`` (like DETR) was trained with the *original 91-index* COCO ids: its
``config.id2label`` has 91 entries, index ``i`` is COCO ``category_id`` ``i`` (``1 = person`` ... ``90 = toothbrush``)
and the 11 ids COCO never used (0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83) are ``"N/A"``; logit 91 is "no object".
We do not rely on that silently: :func:`label_to_category` maps detector label ids to dataset category ids *by
name*, which gives the identity for yolos-tiny on COCO and still works for a detector or dataset numbered
otherwise. Labels whose name is not a dataset category (``"N/A"``) map to nothing and their detections are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..box_ops import box_clip_xyxy, box_normalize, box_xywh_to_xyxy, box_xyxy_to_cxcywh
from ..core.labels import labels_from_mask
from ..errors import ConfigError, DataError
from ..imageio import load_image
from .records import Record, coco_split, load_coco, records_from_coco


def resolve_paths(coco_root: str | Path | None = None, split: str | None = None,
                  ann: str | Path | None = None, images: str | Path | None = None) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` from either ``coco_root`` + ``split`` or ``ann`` + ``images``.

    ``coco_root`` must hold ``annotations/instances_{split}.json`` and ``{split}/``.
    """
    if coco_root is not None:
        if ann is not None or images is not None:
            raise ConfigError("give either --coco-root/--split or --ann/--images, not both")
        root = Path(coco_root)
        if not root.is_dir():
            raise DataError(f"COCO root not found: {root}")
        return coco_split(root, split or "val2017")
    if ann is None or images is None:
        raise ConfigError("give --coco-root DIR (with --split) or both --ann FILE and --images DIR")
    return Path(ann), Path(images)


def _name(label: str) -> str:
    return " ".join(str(label).lower().split())


def label_to_category(id2label: dict[int, str], coco) -> dict[int, int]:
    """``{detector label id: dataset category_id}`` by (case-insensitive) category name.

    For ``hustvl/yolos-tiny`` on COCO this is the identity on the 80 used ids (see module docstring).
    Raises:
        ConfigError: no detector label names a dataset category (e.g. generic ``LABEL_0`` names).
    """
    by_name = {_name(cat["name"]): cat_id for cat_id, cat in coco.cats.items()}
    mapping = {int(label_id): by_name[_name(name)] for label_id, name in id2label.items() if _name(name) in by_name}
    if not mapping:
        sample = ", ".join(repr(v) for v in list(id2label.values())[:3])
        raise ConfigError(
            f"none of the detector's {len(id2label)} label names ({sample}, ...) is a category of the dataset; "
            "the detector was not trained on these classes"
        )
    return mapping


def yolos_targets(anns: list[dict], width: int, height: int, category_to_label: dict[int, int]) -> dict[str, torch.Tensor]:
    """One image's YOLOS training target (the ``labels`` format of ``YolosForObjectDetection.forward``).

    Crowd regions, boxes without area and categories the detector has no label for are left out.
    Returns:
        ``{"class_labels": int64 [n], "boxes": float32 [n, 4]}``, boxes as normalised ``(cx, cy, w, h)`` in [0, 1].
    """
    known = [ann for ann in anns if not ann.get("iscrowd", 0) and ann["category_id"] in category_to_label]
    corners = box_clip_xyxy(box_xywh_to_xyxy([ann["bbox"] for ann in known]), (width, height))  # float64 pixels
    has_area = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
    labels = [category_to_label[ann["category_id"]] for ann, keep in zip(known, has_area.tolist()) if keep]
    return {
        "class_labels": torch.tensor(labels, dtype=torch.int64),
        "boxes": box_normalize(box_xyxy_to_cxcywh(corners[has_area]), (width, height)).float(),
    }


@dataclass(frozen=True)
class CocoImage:
    """One image of a COCO-format dataset as its annotation file lists it; the items of :class:`CocoDetection`
    also carry its decoded pixels and annotations (:class:`CocoGroundTruth`, the app's GT index, needs neither)."""

    image_id: int
    file_name: str
    width: int  # from the annotation file: boxes and masks are in these pixels
    height: int
    path: Path  # images folder / file_name
    split: str = ""  # the split folder, e.g. "val2017" ("" when the folder was given directly)
    image: Image.Image | None = None  # RGB, stored pixel layout (no EXIF rotation: annotations refer to it)
    anns: list[dict] = field(default_factory=list)

    @classmethod
    def listed(cls, coco, image_id: int, images_dir: Path, split: str = "") -> CocoImage:
        """The entry of ``image_id`` in a loaded annotation file (``coco``, a pycocotools ``COCO``)."""
        info = coco.imgs[image_id]
        return cls(int(image_id), info["file_name"], int(info["width"]), int(info["height"]),
                   images_dir / info["file_name"], split)


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection set: ``dataset[i] -> CocoImage``.

    Args:
        ann_file: ``instances_*.json``.
        images_dir: folder holding the images named by ``file_name``.
        limit: keep only the first ``limit`` images (sorted by id).
    Raises:
        DataError: missing / invalid annotation file or folder, or images it lists that are not on disk.
    """

    def __init__(self, ann_file: str | Path, images_dir: str | Path, limit: int | None = None):
        self.ann_file, self.images_dir = Path(ann_file), Path(images_dir)
        self.coco = load_coco(self.ann_file)
        if not self.images_dir.is_dir():
            raise DataError(f"image folder not found: {self.images_dir}")
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}")
        self.image_ids = sorted(self.coco.getImgIds())[:limit]
        missing = [i for i in self.image_ids if not (self.images_dir / self.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            example = self.images_dir / self.coco.imgs[missing[0]]["file_name"]
            raise DataError(f"{len(missing)} of {len(self.image_ids)} images listed in {self.ann_file.name} are missing, e.g. {example}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> CocoImage:
        entry = CocoImage.listed(self.coco, self.image_ids[index], self.images_dir)
        return replace(entry, image=load_image(entry.path, max_side=None, exif=False),
                       anns=self.coco.loadAnns(self.coco.getAnnIds(imgIds=[entry.image_id])))


class CocoGroundTruth:
    """A COCO-format dataset root (``annotations/instances_SPLIT.json`` + ``SPLIT/``), indexed by file name.

    Only reads from the dataset; nothing is copied. Raises :class:`DataError` when no split is found.
    """

    def __init__(self, root: str | Path, splits: tuple[str, ...] = ("val2017", "train2017")):
        self.root = Path(root).expanduser()
        self._coco: dict[str, Any] = {}
        self._dirs: dict[str, Path] = {}
        self._by_name: dict[str, CocoImage] = {}
        for split in splits:
            ann_file, images_dir = resolve_paths(self.root, split)
            if not ann_file.is_file() or not images_dir.is_dir():
                continue
            coco = self._coco[split] = load_coco(ann_file)
            self._dirs[split] = images_dir
            for image_id in coco.imgs:
                entry = CocoImage.listed(coco, image_id, images_dir, split)
                if entry.path.is_file():
                    self._by_name.setdefault(entry.file_name, entry)
        if not self._coco:
            raise DataError(f"no COCO annotations found under {self.root} (expected annotations/instances_SPLIT.json and SPLIT/)")

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def splits(self) -> tuple[str, ...]:
        """The loaded splits, in the order asked for (``val2017`` first by default)."""
        return tuple(self._coco)

    def records(self, split: str) -> list[Record]:
        """The split's images whose files exist (those :meth:`lookup` can find), as records with their instance masks
        (:func:`~bavit.data.records.records_from_coco`), by image id; for the app's dataset view."""
        return [record for record in records_from_coco(self._coco[split], self._dirs[split])
                if record.image_path.is_file()]

    def image_dirs(self) -> tuple[Path, ...]:
        """The image folders of the loaded splits (``ROOT/SPLIT``): the app may read its images from them."""
        return tuple(self._dirs.values())

    def lookup(self, file_name: str) -> CocoImage | None:
        """The dataset image with this file name (any directory part is ignored), or ``None``."""
        return self._by_name.get(Path(file_name).name)

    def match(self, file_name: str, image: Image.Image) -> CocoImage | None:
        """The dataset image that ``image`` (decoded without EXIF rotation) is, or ``None``.

        A match needs the same file name, the same size and nearly the same pixels (a 16x16 grey thumbnail within
        8 grey levels on average), so an unrelated upload that happens to share a COCO file name gets no GT.
        """
        entry = self.lookup(file_name)
        if entry is None or image.size != (entry.width, entry.height):
            return None
        theirs = Image.open(entry.path).convert("L").resize((16, 16), Image.BILINEAR)
        ours = image.convert("L").resize((16, 16), Image.BILINEAR)
        diff = np.abs(np.asarray(theirs, dtype=np.float32) - np.asarray(ours, dtype=np.float32)).mean()
        return entry if diff <= 8.0 else None

    def fg_mask(self, entry: CocoImage) -> np.ndarray:
        """``[H, W]`` bool union of the image's instance masks (polygons and crowd RLE)."""
        coco = self._coco[entry.split]
        mask = np.zeros((entry.height, entry.width), dtype=bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[entry.image_id], iscrowd=None)):
            if ann.get("segmentation"):
                mask |= coco.annToMask(ann).astype(bool)
        return mask

    def labels(self, entry: CocoImage, grid: tuple[int, int]) -> np.ndarray:
        """``[gh, gw]`` int64 GT grid (1 = FG, 0 = BG) from the instance masks."""
        return labels_from_mask(self.fg_mask(entry), grid=grid).numpy()

    def examples(self, count: int = 4, split: str = "val2017") -> list[Path]:
        """``count`` dataset images with objects covering 10-60% of the image, spread over the split by id."""
        coco = self._coco.get(split) or next(iter(self._coco.values()))
        chosen = []
        for image_id in sorted(coco.imgs):
            info = coco.imgs[image_id]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
            fraction = sum(a.get("area", 0.0) for a in anns) / float(info["width"] * info["height"])
            entry = self.lookup(info["file_name"])
            if entry is not None and 2 <= len(anns) <= 12 and 0.10 <= fraction <= 0.60:
                chosen.append(entry.path)
        if len(chosen) <= count:
            return chosen
        step = len(chosen) / count
        return [chosen[int(i * step)] for i in range(count)]
