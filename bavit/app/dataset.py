"""The dataset view's one scan (no Gradio here): BAViT once per image of the app's COCO dataset, shared by every
session (:class:`DatasetScan`); :meth:`bavit.app.explorer.Explorer.dataset_view` lays the images out at a setting."""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from ..data.coco import CocoGroundTruth
from ..engine.dataset_costs import DEFAULT_BATCH_SIZE, ScannedImage, scan_images
from ..errors import BAViTError, DataError
from ..predictor import Predictor
from .latency import LatencyMonitor

# s: how often a dataset scan's follower gets the images scanned since its last update (the first batch and the end
# at once). Each update sends the whole gallery (Gradio hashes every file it sends: about 0.15 s for 206 COCO images).
DATASET_UPDATE_S = 1.0
THUMBNAIL_SIDE = 240  # px: the longer side of a gallery thumbnail (the gallery shows 4 per row in about 1,000 px)

log = logging.getLogger(__name__)


class DatasetScan:
    """The dataset view's one scan, shared by every session: BAViT once per image of ``coco``'s first split
    (:func:`~bavit.engine.dataset_costs.scan_images`, in batches), run in one background thread that the first
    :meth:`start` starts; what it computed stays in memory for the app's life. Thread-safe: two visitors asking at
    once start one scan, and each :meth:`follow` sees the images scanned so far at once, then the new ones batch by
    batch.

    The gallery shows each image as a small JPEG made as it is scanned (:meth:`thumbnail`; a COCO photo's is about
    a tenth of its bytes), in a temporary folder removed with the scan (:meth:`close`, or when it is collected, or at exit).

    Each batch is bracketed as a request's run (``monitor.measuring()``): a visitor asked for it, so the background
    latency timing and the detection ladders wait for the scan (overlapping timings are dropped), as they wait for
    any request.

    Args:
        predictor: the app's Predictor (its backend computes the images' FG probabilities, as the page's).
        coco: the dataset; its first split (:attr:`CocoGroundTruth.splits`, ``val2017`` when there) is scanned.
        monitor: the app's latency windows.
        batch_size: images per BAViT batch: the first rows come after this many.
        update_s: a follower's updates come at most this often, but for the first batch and the end (seconds).
    """

    def __init__(self, predictor: Predictor, coco: CocoGroundTruth, monitor: LatencyMonitor,
                 batch_size: int = DEFAULT_BATCH_SIZE, update_s: float = DATASET_UPDATE_S):
        self.predictor, self.coco, self.monitor, self.batch_size = predictor, coco, monitor, batch_size
        self.update_s = update_s
        self.split = coco.splits[0]
        self.total: int | None = None  # the split's images, once a scan started
        self.error: str | None = None  # why the last scan stopped, if it failed
        self.seconds: dict[str, float] = {}  # first_batch and scan: seconds from the scan's start
        self.starts = 0  # scans started (one, unless a scan failed and was started again)
        self._cond = threading.Condition(threading.Lock())
        self._scanned: tuple[ScannedImage, ...] = ()
        self._running = False
        self._thumbnails = Path(tempfile.mkdtemp(prefix="bavit-dataset-thumbnails-"))
        self._made: set[str] = set()  # the file names whose thumbnail is in the folder
        self._remove_thumbnails = weakref.finalize(self, shutil.rmtree, self._thumbnails, True)  # at exit too

    @property
    def scanned(self) -> tuple[ScannedImage, ...]:
        """The images scanned so far, in the split's order (by image id)."""
        with self._cond:
            return self._scanned

    @property
    def started(self) -> bool:
        """A scan runs or has run (a failed one included)."""
        with self._cond:
            return self._running or self.total is not None

    @property
    def running(self) -> bool:
        """A scan runs now."""
        with self._cond:
            return self._running

    @property
    def complete(self) -> bool:
        """Every image of the split is scanned."""
        with self._cond:
            return not self._running and self.error is None and self.total is not None

    def thumbnail(self, file_name: str, path: str | Path) -> Path:
        """The gallery's picture of the scanned image ``file_name`` read from ``path``: its thumbnail (the same file
        name, so a click on it names the image), or the image itself where none could be made."""
        name = Path(file_name).name
        with self._cond:
            made = name in self._made
        return self._thumbnails / name if made else Path(path)

    def close(self) -> None:
        """Remove the thumbnails' folder (also done when the scan is collected, or at exit)."""
        with self._cond:
            self._made.clear()
        self._remove_thumbnails()

    def _make_thumbnails(self, batch: list[ScannedImage]) -> None:
        for image in batch:
            name = Path(image.file_name).name
            try:
                with Image.open(image.path) as opened:
                    opened.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # a JPEG decodes at a smaller scale
                    small = opened.convert("RGB")
                    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                    small.save(self._thumbnails / name, "JPEG", quality=85)
            except OSError as exc:  # the gallery shows the image itself
                log.warning("no thumbnail for %s: %s", image.file_name, exc)
                continue
            with self._cond:
                self._made.add(name)

    def start(self) -> bool:
        """Start the scan in a background thread unless it runs or has completed (a failed scan starts again); True
        when this call started it.

        Raises:
            DataError: the split's annotations cannot be read as instance masks, or it has no image files.
        """
        with self._cond:
            if self._running or (self.total is not None and self.error is None):
                return False
            records = self.coco.records(self.split)
            if not records:
                raise DataError(f"the dataset's {self.split} split has no image files to scan")
            self.total, self.error, self._scanned, self.seconds = len(records), None, (), {}
            self._running = True
            self.starts += 1
            threading.Thread(target=self._scan, args=(records,), name="bavit-dataset-scan", daemon=True).start()
            return True

    def _scan(self, records: list) -> None:
        started = time.perf_counter()
        error = None
        try:
            batches = scan_images(self.predictor, records, split=self.split, batch_size=self.batch_size)
            while True:
                with self.monitor.measuring():  # a request's run: the background timing waits for it
                    batch = next(batches, None)
                if batch is None:
                    break
                self._make_thumbnails(batch)
                with self._cond:
                    self._scanned = (*self._scanned, *batch)
                    self.seconds.setdefault("first_batch", time.perf_counter() - started)
                    self._cond.notify_all()
        except BAViTError as exc:
            error = str(exc).replace(str(self.coco.root), "DATA")  # the message names no server path
        except Exception as exc:  # the app stays up; the followers say what happened
            log.exception("the dataset scan failed")
            error = f"internal error ({exc.__class__.__name__}: {exc})"
        with self._cond:
            self.error = error
            self.seconds["scan"] = time.perf_counter() - started
            self._running = False
            self._cond.notify_all()

    def follow(self, start: bool = True) -> Iterator[tuple[ScannedImage, ...]]:
        """The images scanned so far: at once, then the first batch as soon as it is there, then at most every
        :attr:`update_s` seconds while the scan runs, and once more when it ends (each a snapshot: the images up to then,
        in the split's order); ``start``: start the scan if it is not running or done (else only follow one that
        runs). Ends once no scan runs.

        Raises:
            DataError: the scan failed (its reason), or could not start.
        """
        if start:
            self.start()
        shown = -1
        while True:
            with self._cond:
                if self._running and len(self._scanned) == shown:
                    self._cond.wait_for(lambda: not self._running or len(self._scanned) != shown)
                scanned, running, error = self._scanned, self._running, self.error
            if error is not None:
                raise DataError(f"the dataset scan failed: {error}")
            if len(scanned) != shown or not running:
                shown = len(scanned)
                yield scanned
            if not running:
                return
            if shown:
                time.sleep(self.update_s)  # the batches meanwhile come in one update


__all__ = ["DATASET_UPDATE_S", "THUMBNAIL_SIDE", "DatasetScan"]
