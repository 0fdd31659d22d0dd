"""Ground-truth patch grids for the app: from a COCO-format dataset's instance masks, or from a painted mask.

The grid uses the label rule of :mod:`bavit.core.labels` (a token is FG when > 10% of its pixels are object pixels), laid
over the image the way BAViT sees it (the square resize to its input size, e.g. 256 -> 16x16).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.labels import labels_from_mask
from ..data.coco import CocoImage, load_coco, resolve_paths
from ..engine.metrics import confusion_counts, rates
from ..errors import DataError


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


def painted_mask(editor_value: Mapping[str, Any] | None) -> np.ndarray | None:
    """``[H, W]`` bool mask of what the user painted in a ``gr.ImageEditor(type="numpy")``, or ``None`` if nothing.

    A pixel is painted when any layer has alpha > 0 there. ``H, W`` is the editor's canvas (its background image).
    """
    if not editor_value:
        return None
    painted = None
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        alpha = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else np.any(layer > 0, axis=-1) if layer.ndim == 3 else layer > 0
        painted = alpha if painted is None else (painted | alpha if painted.shape == alpha.shape else painted)
    if painted is None or not painted.any():
        return None
    return painted


def grid_stats(gt: np.ndarray, pred: np.ndarray) -> dict[str, float | int | None]:
    """Confusion counts and rates of a predicted grid against a GT grid of one image.

    Args:
        gt: ``[gh, gw]`` int in {0, 1, IGNORE_INDEX} (or bool).
        pred: ``[gh, gw]`` bool.
    Returns:
        counts ``tp, fp, fn, tn`` and :func:`bavit.engine.metrics.rates` (fractions; ``None`` when undefined).
    """
    counts = confusion_counts(pred, gt)
    return {**counts, **rates(**counts)}
