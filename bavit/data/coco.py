"""COCO detection data for YOLOS: annotations via pycocotools, images via :func:`bavit.imageio.load_image`.

Shared by the mAP harness (:mod:`bavit.engine.coco_map`) and sparse fine-tuning (:mod:`bavit.engine.finetune`).

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

import torch
from PIL import Image

from ..box_ops import box_clip_xyxy, box_normalize, box_xywh_to_xyxy, box_xyxy_to_cxcywh
from ..errors import ConfigError, DataError
from ..imageio import load_image
from .records import coco_split, load_coco


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
    also carry its decoded pixels and annotations (the app's GT index, :mod:`bavit.app.session`, needs neither)."""

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
