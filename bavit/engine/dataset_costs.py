"""What pruning costs each image of a dataset: the object pixels a setting takes away from the detector, image by
image, so that the images where it costs most come first; the command line is ``python -m bavit costs``
(:mod:`bavit.cli.costs`).

Two steps, as the Predictor's (:mod:`bavit.predictor`):

- :func:`scan_images` is the expensive one, once per dataset: it runs BAViT over the images in batches through the
  Predictor (:meth:`~bavit.predictor.Predictor.set_images`, the app's preprocessing and backend) and lays each
  image's object masks over the detector's patch grid (:func:`object_pixels_per_patch`). It yields a
  :class:`ScannedImage` per image, batch by batch, so a caller can show the first rows while the rest runs.
- :func:`cost_rows` is the cheap one, per setting (what a slider calls): the one keep-mask rule on every scanned
  image at once (:meth:`Predictor.select <bavit.predictor.Predictor.select>`, a calibrated sparsity resolved to its
  threshold as the app resolves it) and, per image, the object pixels in the patches it prunes
  (:class:`CostRow`), most costly first.

Object pixels are counted on the detector's input: the union of the image's instance masks (crowd regions
included: they are objects too; :meth:`bavit.data.records.Record.fg_mask`) resized square to the detector's side
(512 px) by nearest neighbour, then summed per patch (16x16 pixels each). So a patch holds 0-256 object pixels,
every image counts at 512x512 whatever its size, and ``lost_fraction`` is the share of an image's object pixels in
patches the setting prunes. This is close to, not the same as, ``evaluate``'s object pixel recall (exact area
fractions, crowds left out, pooled over the set; :mod:`bavit.engine.budget`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.records import Record
from ..errors import ConfigError, DataError
from ..files import write_text
from ..predictor import Predictor
from ..pruning.settings import PruningSettings

SORTS = ("lost", "sparsity")  # cost_rows' orders: by lost fraction, or by sparsity (both most first)
DEFAULT_BATCH_SIZE = 8  # images per BAViT batch: the first rows come after this many


def object_pixels_per_patch(mask: np.ndarray, image_size: int, grid: int) -> np.ndarray:
    """How many object pixels each detector patch holds: ``mask`` resized square to ``image_size`` (nearest
    neighbour, aspect not kept, as the detector's input is) and summed per patch.

    Args:
        mask: ``[H, W]`` bool object pixels of the image as stored.
        image_size: the detector's square input side in pixels (512).
        grid: its patch grid side (32); ``image_size`` is a multiple of it.
    Returns:
        ``int64 [grid, grid]``, each in ``0 .. (image_size // grid) ** 2``.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {mask.shape}")
    if image_size % grid:
        raise ValueError(f"image_size {image_size} is not a multiple of the grid {grid}")
    patch = image_size // grid
    resized = Image.fromarray(mask.astype(np.uint8)).resize((image_size, image_size), Image.NEAREST)
    pixels = np.asarray(resized, dtype=np.int64)
    return pixels.reshape(grid, patch, grid, patch).sum(axis=(1, 3))


@dataclass(frozen=True)
class ScannedImage:
    """What :func:`scan_images` computed once for one dataset image (read-only arrays; any setting's cost follows
    from them by :func:`cost_rows`)."""

    file_name: str  # the image's file name (what the app's GT index looks it up by)
    path: Path  # where it was read
    image_id: int | str | None  # the dataset's id (COCO: an int)
    split: str  # e.g. "val2017" ("" when the folder was given directly)
    fg_prob: np.ndarray  # float32 [G, G] BAViT FG probabilities (G = 16 for the shipped model)
    object_pixels: np.ndarray  # int64 [Y, Y] object pixels per detector patch at its input (Y = 32 at 512 px)


def scan_images(predictor: Predictor, records: Sequence[Record], *, split: str = "",
                batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> Iterator[list[ScannedImage]]:
    """Run BAViT once per image of ``records``, in batches, and yield each batch's :class:`ScannedImage` as soon as
    it is done (in ``records``' order).

    BAViT runs through :meth:`Predictor.set_images <bavit.predictor.Predictor.set_images>`: the preprocessing, the
    backend and, with onnxruntime, the int8 graph run image by image that the app's
    :meth:`~bavit.predictor.Predictor.set_image` runs, so each image's ``fg_prob`` is the one the app computes for it
    (for images within the app's 1024 px analysis side; larger ones it fits into that side first). The images are
    decoded as the annotations lay them out (no EXIF rotation), as the app opens a dataset image with its GT.

    Args:
        predictor: its BAViT and backend compute the probabilities; its detector grid (:attr:`Predictor.yolos_grid`
            at :attr:`Predictor.image_size`) is where object pixels are counted. It needs no detector.
        records: images with instance masks (:func:`bavit.data.records.coco_records`).
        split: the split name every record gets (e.g. ``"val2017"``).
        batch_size: images per BAViT batch (and per yield).
        progress: show a tqdm bar on stderr, in images.
    Raises:
        ConfigError: a batch size below 1.
        DataError: an image that cannot be read or differs from its annotation's size, or an annotation without a
            mask (object pixels need instance masks, not only boxes).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    for record in records:
        if any(instance.mask is None for instance in record.instances):
            raise DataError(f"{record.image_path.name}: an annotation has no segmentation; object pixels are counted "
                            "from instance masks")
    size, grid = predictor.image_size, predictor.yolos_grid
    with tqdm(total=len(records), desc="costs", unit="image", disable=not progress) as bar:
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            fg_prob = predictor.set_images([record.load_image() for record in chunk], detect=False).fg_prob.numpy()
            scanned = []
            for record, probs in zip(chunk, fg_prob):
                objects = object_pixels_per_patch(record.fg_mask(), size, grid)
                probs = np.array(probs, dtype=np.float32)
                probs.setflags(write=False)
                objects.setflags(write=False)
                scanned.append(ScannedImage(record.image_path.name, record.image_path, record.image_id, split,
                                            probs, objects))
            bar.update(len(chunk))
            yield scanned


@dataclass(frozen=True)
class CostRow:
    """What one setting costs one image (a row of :func:`cost_rows`; the CSV's columns, in this order)."""

    file_name: str
    image_id: int | str | None
    split: str
    kept_patches: int  # detector patches the keep mask computes (of Y * Y)
    sparsity: float  # fraction of the detector patches pruned: 1 - kept_patches / Y**2
    object_pixels: int  # the image's object pixels at the detector's input (512x512)
    object_pixels_lost: int  # of those, the ones in pruned patches
    lost_fraction: float  # object_pixels_lost / object_pixels (0.0 for an image without objects)
    threshold: float | None  # the threshold applied (a calibrated sparsity resolved to it); None for top-k
    path: str  # where the image was read


def _sort_key(by: str):
    if by == "lost":
        return lambda row: (-row.lost_fraction, -row.object_pixels_lost, -row.sparsity, row.file_name)
    if by == "sparsity":
        return lambda row: (-row.sparsity, -row.lost_fraction, -row.object_pixels_lost, row.file_name)
    raise ConfigError(f"unknown sort {by!r}; use one of {', '.join(SORTS)}")


def sort_rows(rows: Sequence[CostRow], by: str = "lost") -> list[CostRow]:
    """``rows`` most costly first: by ``"lost"`` (lost fraction, then object pixels lost, then sparsity, each
    descending, then file name) or by ``"sparsity"`` (sparsity, then lost fraction, then object pixels lost, then
    file name).

    Raises:
        ConfigError: another ``by``.
    """
    return sorted(rows, key=_sort_key(by))


def cost_rows(scanned: Sequence[ScannedImage], settings: PruningSettings, predictor: Predictor,
              sort: str = "lost") -> list[CostRow]:
    """Every scanned image's cost at ``settings``, sorted by :func:`sort_rows`.

    The keep masks come from :meth:`Predictor.select <bavit.predictor.Predictor.select>` on all the images' ``fg_prob``
    at once (``[N, G, G]``): the one rule, its resampling and a calibrated ``sparsity`` resolved to its threshold
    by the Predictor's calibration, as the app selects. BAViT does not run; only the rule and a sum per image.

    Args:
        scanned: from :func:`scan_images` with a Predictor of the same detector grid.
        settings: the setting (threshold, keep ratio, this image's sparsity or a calibrated mean sparsity; CCA).
        predictor: whose rule, resampling, calibration and detector grid apply.
        sort: ``"lost"`` or ``"sparsity"`` (:data:`SORTS`).
    Raises:
        ConfigError: an unknown sort; images scanned on another detector grid; ``sparsity`` without a calibration,
            or outside its calibrated range.
    """
    key = _sort_key(sort)
    if not scanned:
        return []
    grid = predictor.yolos_grid
    objects = np.stack([image.object_pixels for image in scanned])  # [N, Y, Y]
    if objects.shape[1:] != (grid, grid):
        raise ConfigError(f"these images were scanned on a {objects.shape[1]}x{objects.shape[2]} detector grid, "
                          f"the Predictor's is {grid}x{grid}")
    selection, threshold = predictor.select(torch.from_numpy(np.stack([image.fg_prob for image in scanned])),
                                            settings)
    keep = selection.keep_mask.numpy().reshape(objects.shape)
    kept = keep.sum(axis=(1, 2))
    total = objects.sum(axis=(1, 2))
    lost = np.where(keep, 0, objects).sum(axis=(1, 2))
    rows = [CostRow(file_name=image.file_name, image_id=image.image_id, split=image.split,
                    kept_patches=int(kept[i]), sparsity=1.0 - int(kept[i]) / (grid * grid),
                    object_pixels=int(total[i]), object_pixels_lost=int(lost[i]),
                    lost_fraction=int(lost[i]) / int(total[i]) if total[i] else 0.0,
                    threshold=threshold, path=str(image.path))
            for i, image in enumerate(scanned)]
    return sorted(rows, key=key)


def cost_totals(rows: Sequence[CostRow]) -> dict:
    """The rows together: ``images``, ``mean_sparsity`` (fraction), ``object_pixels`` and ``object_pixels_lost``
    (summed), ``lost_fraction`` (pooled: lost over all object pixels; None without any), ``images_with_objects``
    and ``images_losing_pixels`` (an image that loses at least one object pixel)."""
    total = sum(row.object_pixels for row in rows)
    lost = sum(row.object_pixels_lost for row in rows)
    return {
        "images": len(rows),
        "mean_sparsity": float(np.mean([row.sparsity for row in rows])) if rows else None,
        "object_pixels": total,
        "object_pixels_lost": lost,
        "lost_fraction": lost / total if total else None,
        "images_with_objects": sum(1 for row in rows if row.object_pixels),
        "images_losing_pixels": sum(1 for row in rows if row.object_pixels_lost),
    }


def setting_words(settings: PruningSettings, threshold: float | None = None) -> str:
    """A setting in words, e.g. ``"calibrated mean sparsity 35% (threshold 0.372), 3 CCA steps"``."""
    if settings.sparsity is not None:
        resolved = "" if threshold is None else f" (threshold {threshold:.3g})"
        selection = f"calibrated mean sparsity {settings.sparsity:.0%}{resolved}"
    elif settings.image_sparsity is not None:
        selection = f"this image's sparsity {settings.image_sparsity:.0%} (top-k)"
    elif settings.keep_ratio is not None:
        selection = f"keep ratio {settings.keep_ratio:g} (top-k)"
    else:
        selection = f"threshold {settings.threshold:g}"
    return f"{selection}, {settings.cca_steps} CCA steps"


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def format_costs(rows: Sequence[CostRow], top: int = 10) -> str:
    """Markdown: the first ``top`` rows (rank, image, object pixels, lost, lost %, sparsity %, kept patches) and a
    line of :func:`cost_totals`."""
    lines = ["| rank | image | object px | lost px | lost | sparsity | kept patches |", "|---|---|---|---|---|---|---|"]
    for rank, row in enumerate(rows[:top], start=1):
        lines.append(f"| {rank} | {row.file_name} | {row.object_pixels} | {row.object_pixels_lost} | "
                     f"{_percent(row.lost_fraction)} | {_percent(row.sparsity)} | {row.kept_patches} |")
    totals = cost_totals(rows)
    lines.append(f"{totals['images']} images: mean sparsity {_percent(totals['mean_sparsity'])}, "
                 f"{_percent(totals['lost_fraction'])} of the object pixels lost "
                 f"({totals['object_pixels_lost']} of {totals['object_pixels']} at the detector's input); "
                 f"{totals['images_losing_pixels']} of the {totals['images_with_objects']} images with objects "
                 "lose some")
    return "\n".join(lines) + "\n"


def costs_csv(rows: Sequence[CostRow]) -> str:
    """The rows as CSV text: a header of :class:`CostRow`'s fields, one line per row (``None`` as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = [field.name for field in fields(CostRow)]
    writer.writerow(names)
    for row in rows:
        writer.writerow(["" if getattr(row, name) is None else getattr(row, name) for name in names])
    return buffer.getvalue()


def costs_report(rows: Sequence[CostRow], settings: PruningSettings, **about) -> dict:
    """JSON data: ``about`` (what was scanned, how) first, then ``setting`` (its selection and CCA steps),
    ``threshold`` (the one applied; None for top-k), ``totals`` (:func:`cost_totals`) and ``rows``."""
    return {**about, "setting": {**settings.selection, "cca_steps": settings.cca_steps},
            "setting_words": setting_words(settings, rows[0].threshold if rows else None),
            "threshold": rows[0].threshold if rows else None, "totals": cost_totals(rows),
            "rows": [asdict(row) for row in rows]}


def write_costs(rows: Sequence[CostRow], settings: PruningSettings, csv_path: str | os.PathLike | None = None,
                json_path: str | os.PathLike | None = None, **about) -> None:
    """Write the rows as CSV (:func:`costs_csv`) and as JSON (:func:`costs_report`) where a path is given, each
    atomically (:func:`bavit.files.write_text`)."""
    if csv_path:
        write_text(csv_path, costs_csv(rows))
    if json_path:
        write_text(json_path, json.dumps(costs_report(rows, settings, **about), indent=2) + "\n")


__all__ = ["DEFAULT_BATCH_SIZE", "SORTS", "CostRow", "ScannedImage", "cost_rows", "cost_totals", "costs_csv",
           "costs_report", "format_costs", "object_pixels_per_patch", "scan_images", "setting_words", "sort_rows",
           "write_costs"]
