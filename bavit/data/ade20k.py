"""ADE20K scenes as BAViT training data: semantic masks turned into object pixels for the paper's patch rule.

The folder (``../shared/data/ade20k``: ``images/ADE_val_*.jpg``, ``masks/ADE_val_*.png`` with one class value per
pixel, ``categories.json``) has no instances, so each image becomes a :class:`~bavit.data.records.Record` with one
object: the union of its pixels whose class counts as an object. The patch rule then labels a patch FG when more
than 10% of its pixels are object pixels, exactly as for COCO.

Two modelling choices, both arguments (measure them on COCO; see the module's users):

* ``classes`` -- which ADE classes are objects. ``"coco"`` (default): :data:`COCO_LIKE`, the thing classes that a
  COCO detector has a category for (person, car, chair, bottle, ...); windows, doors, curtains, cabinets, lamps and
  the like are background, as they are in COCO images. ``"things"``: all 100 thing classes of ADE20K's panoptic
  split.
* ``other`` -- what the unlabelled value 0 is. ``"background"`` (default) or ``"ignore"``: void, as VOC's border
  (a token more than half void gets the ignore label and no loss).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..core.labels import IGNORE_INDEX
from ..errors import DataError
from .records import Instance, Record, _check_files, _read_index_png

# ADE20K thing classes (value: name) that have a COCO category, and the category: what counts as an object with
# classes="coco". Chosen by name, before any measurement.
COCO_LIKE = {
    8: "bed", 13: "person", 16: "table -> dining table", 20: "chair", 21: "car", 24: "sofa -> couch",
    31: "armchair -> chair", 34: "desk -> dining table", 48: "sink", 51: "refrigerator", 65: "coffee table -> dining table",
    66: "toilet", 67: "flower -> potted plant", 68: "book", 70: "bench", 72: "stove -> oven", 75: "computer -> laptop",
    76: "swivel chair -> chair", 77: "boat", 81: "bus", 84: "truck", 90: "tv", 91: "plane -> airplane",
    99: "bottle", 103: "van -> car", 104: "ship -> boat", 109: "plaything -> teddy bear", 116: "bag -> handbag",
    117: "minibike -> motorcycle", 119: "oven", 120: "ball -> sports ball", 121: "food -> pizza, cake, ...",
    125: "microwave", 126: "pot -> potted plant", 127: "animal -> cat, dog, horse, ...", 128: "bicycle",
    136: "vase", 137: "traffic light", 144: "monitor -> tv", 148: "glass -> cup, wine glass", 149: "clock",
}
CLASS_SETS = ("coco", "things")
OTHER = ("background", "ignore")


def object_values(categories: dict, classes: str = "coco") -> np.ndarray:
    """The class values that count as object pixels (``int [K]``), from ``categories.json``'s content.

    Raises:
        DataError: an unknown class set, or a COCO-like value that is not a thing class of the file.
    """
    things = {int(c["value"]) for c in categories["categories"] if c.get("isthing")}
    if classes == "things":
        return np.array(sorted(things))
    if classes == "coco":
        strangers = sorted(set(COCO_LIKE) - things)
        if strangers:
            raise DataError(f"categories.json does not list {strangers} as thing classes: not the ADE20K 150 classes")
        return np.array(sorted(COCO_LIKE))
    raise DataError(f"ADE20K classes are one of {CLASS_SETS}, got {classes!r}")


def object_mask(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: the pixels of ``mask`` (class values) whose class is in ``values``."""
    return np.isin(mask, values)


def ade20k_records(root: str | Path, classes: str = "coco", other: str = "background") -> list[Record]:
    """One record per image of an ADE20K folder (``images/``, ``masks/``, ``categories.json``), sorted by name.

    Args:
        root: the folder.
        classes: ``"coco"`` or ``"things"`` (module docstring).
        other: ``"background"`` or ``"ignore"`` for the unlabelled value 0.
    Raises:
        DataError: a missing folder, file or mask, or an unknown choice.
    """
    root = Path(root)
    if other not in OTHER:
        raise DataError(f"ADE20K 'other' pixels are one of {OTHER}, got {other!r}")
    categories_file = root / "categories.json"
    if not categories_file.is_file():
        raise DataError(f"not an ADE20K folder (no categories.json): {root}")
    values = object_values(json.loads(categories_file.read_text()), classes)
    images = sorted((root / "images").glob("*.jpg"))
    if not images:
        raise DataError(f"no images in {root / 'images'}")
    records = []
    for image_path in images:
        mask_path = root / "masks" / f"{image_path.stem}.png"
        if not mask_path.is_file():
            raise DataError(f"{image_path.name} has no mask at {mask_path}")
        with Image.open(mask_path) as header:  # the header alone: the size, for the record
            width, height = header.size

        def load(path: Path = mask_path) -> np.ndarray:
            return _read_index_png(path)

        # Semantic masks: all object pixels form one region without instances, which is what COCO calls a crowd
        # (part of the FG union, left out of per-instance metrics); box and area are the image's.
        instance = Instance(box=(0.0, 0.0, float(width), float(height)), area=float(width * height), iscrowd=True,
                            mask=lambda load=load: object_mask(load(), values))
        void = (lambda load=load: load() == 0) if other == "ignore" else None
        records.append(Record(image_path, width, height, [instance], void_mask=void, image_id=image_path.stem))
    _check_files(records, str(root))
    return records


def label_statistics(records: Sequence[Record], grid: tuple[int, int] = (24, 24)) -> dict[str, float]:
    """What a labelling choice gives the paper's patch rule (:meth:`Record.labels`): the share of FG tokens, of
    ignored tokens and of images without an FG token, over ``records`` on a ``grid``."""
    if not records:
        raise DataError("no images to count")
    fg = ignored = tokens = empty = 0
    for record in records:
        labels = record.labels(grid)
        fg += int((labels == 1).sum())
        ignored += int((labels == IGNORE_INDEX).sum())
        tokens += labels.numel()
        empty += int(not (labels == 1).any())
    return {"fg_tokens": fg / tokens, "ignored_tokens": ignored / tokens, "images_without_fg": empty / len(records),
            "images": len(records)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bavit.data.ade20k --ade-root DIR [--coco-root DIR]``: :func:`label_statistics` for every
    (classes, other) choice, next to COCO train2017's, as a markdown table."""
    import argparse

    from .records import coco_records, coco_split

    parser = argparse.ArgumentParser(prog="python -m bavit.data.ade20k", description=main.__doc__)
    parser.add_argument("--ade-root", required=True)
    parser.add_argument("--coco-root", help="also COCO train2017, for comparison")
    args = parser.parse_args(argv)
    rows = [(f"ADE20K, classes={classes}, other={other}", ade20k_records(args.ade_root, classes, other))
            for classes in CLASS_SETS for other in OTHER]
    if args.coco_root:
        rows.append(("COCO train2017", coco_records(*coco_split(args.coco_root, "train2017"))))
    print("| labels | images | FG tokens | ignored tokens | images without an FG token |\n|---|---|---|---|---|")
    for name, records in rows:
        stats = label_statistics(records)
        print(f"| {name} | {stats['images']} | {stats['fg_tokens']:.1%} | {stats['ignored_tokens']:.1%} "
              f"| {stats['images_without_fg']:.1%} |")
    return 0


__all__ = ["CLASS_SETS", "COCO_LIKE", "OTHER", "ade20k_records", "label_statistics", "object_mask", "object_values"]

if __name__ == "__main__":
    raise SystemExit(main())
