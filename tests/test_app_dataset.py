"""The app's dataset view (an app with ``--data``): BAViT once per image of the dataset's first split for the whole
app (one scan, shared by sessions, started once however many ask at once), a gallery of the images sorted by what the
page's setting costs them, exactly :func:`~bavit.engine.dataset_costs.cost_rows`' rows and captions, and a click that
opens an image in the explorer with its GT. The event functions are called as Gradio calls them (fast, on the
synthetic COCO set); one browser test (slow) runs the page.
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import apphelpers
import gradio as gr
import numpy as np
import pytest
from PIL import Image
from conftest import make_synthetic_coco

from bavit.app import page
from bavit.app.dataset import THUMBNAIL_SIDE
from bavit.app.explorer import Explorer
from bavit.app.session import MODE_SPARSITY, MODE_THRESHOLD, MODE_TOPK, Controls
from bavit.app.ui import build_demo, build_handlers
from bavit.data.coco import CocoGroundTruth
from bavit.data.records import coco_records, coco_split
from bavit.engine.dataset_costs import cost_rows, scan_images
from bavit.predictor import Predictor

THRESHOLD = (MODE_THRESHOLD, 0.5, 35, 3, False, False)  # the page's controls: mode, threshold, target %, CCA, ...
TOPK = (MODE_TOPK, 0.5, 35, 1, False, False)


class Request:
    """What the dataset events read of a ``gr.Request``: the session."""

    def __init__(self, session_hash: str):
        self.session_hash = session_hash


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """An uncalibrated random BAViT-small on torch (no onnxruntime export: fast)."""
    return Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None, backend="torch")


@pytest.fixture(scope="module")
def reference(predictor, synthetic_coco):
    """The library's scan of the split the app scans (val2017: its 3 images)."""
    records = coco_records(*coco_split(synthetic_coco, "val2017"))
    return [image for batch in scan_images(predictor, records, split="val2017") for image in batch]


def explorer_for(predictor: Predictor, root: Path, batch_size: int = 2) -> Explorer:
    explorer = Explorer(predictor, coco=CocoGroundTruth(root), ladders=False)
    explorer.dataset.batch_size = batch_size
    explorer.dataset.update_s = 0.05
    return explorer


def expected_gallery(explorer: Explorer, rows) -> list[tuple[str, str]]:
    """Each row's thumbnail (the scan's folder, the image's file name) and caption, in the rows' order."""
    return [(str(explorer.dataset._thumbnails / row.file_name), page.dataset_caption(row)) for row in rows]


@pytest.mark.parametrize(("sort", "values"), [("lost", THRESHOLD), ("sparsity", THRESHOLD), ("lost", TOPK)])
def test_scan_lists_the_images_as_cost_rows_sorts_them(predictor, synthetic_coco, reference, sort, values):
    explorer = explorer_for(predictor, synthetic_coco)
    handlers = build_handlers(explorer)
    updates = list(handlers.dataset_scan(None, sort, *values))
    rows = cost_rows(reference, Controls(*values).settings, predictor, sort=sort)
    assert [len(gallery) for gallery, _ in updates] == sorted(len(gallery) for gallery, _ in updates)
    assert updates[0][0] == [] and "Scanning with BAViT: 0 of 3 images" in updates[0][1]  # progress at once
    gallery, summary = updates[-1]
    assert gallery == expected_gallery(explorer, rows)  # every image, in cost_rows' order, with its caption
    for (thumbnail, _), row in zip(gallery, rows):  # a small JPEG of the image, its shape kept
        with Image.open(thumbnail) as small, Image.open(synthetic_coco / "val2017" / row.file_name) as image:
            assert small.format == "JPEG" and max(small.size) <= THUMBNAIL_SIDE
            assert abs(small.width / small.height - image.width / image.height) < 0.02
    for (_, caption), row in zip(gallery, rows):
        assert caption == (f"lost {row.lost_fraction:.1%} ({row.object_pixels_lost:,} px) · sparsity {row.sparsity:.1%}"
                           if row.object_pixels else f"no objects · sparsity {row.sparsity:.1%}")
    assert summary.startswith("**3 images** of val2017 at ") and "Scanning" not in summary
    assert f"mean sparsity **{sum(row.sparsity for row in rows) / 3:.1%}**" in summary
    lost, total = sum(row.object_pixels_lost for row in rows), sum(row.object_pixels for row in rows)
    assert f"**{lost / total:.1%} of the object pixels lost** ({lost:,} of {total:,}" in summary
    assert explorer.dataset.complete and explorer.dataset.starts == 1


def test_the_view_follows_the_controls_without_running_bavit_again(predictor, synthetic_coco, reference,
                                                                   monkeypatch):
    explorer = explorer_for(predictor, synthetic_coco)
    handlers = build_handlers(explorer)
    before = list(handlers.dataset_show(None, "lost", *THRESHOLD))  # nothing scanned yet: the prompt, no scan
    assert before == [[[], page.dataset_prompt("val2017")]] and not explorer.dataset.started
    list(handlers.dataset_scan(None, "lost", *THRESHOLD))
    monkeypatch.setattr(predictor, "set_images", lambda *a, **k: pytest.fail("BAViT ran again"))
    for sort, values in (("sparsity", TOPK), ("lost", (MODE_THRESHOLD, 0.2, 35, 0, True, False))):
        (gallery, summary), = list(handlers.dataset_show(None, sort, *values))  # complete: one update, at once
        rows = cost_rows(reference, Controls(*values).settings, predictor, sort=sort)
        assert gallery == expected_gallery(explorer, rows)
    assert "threshold 0.2, 0 CCA steps" in summary
    assert explorer.dataset.starts == 1


def test_one_scan_for_every_session_even_when_they_ask_at_once(predictor, synthetic_coco, reference, monkeypatch):
    explorer = explorer_for(predictor, synthetic_coco, batch_size=1)
    handlers = build_handlers(explorer)
    scanned, set_images, start = [], predictor.set_images, explorer.dataset.start
    asked, all_asked = [], threading.Event()

    def counted_start():
        asked.append(1)
        if len(asked) == 3:
            all_asked.set()
        return start()

    def held_set_images(images, **kwargs):
        scanned.extend(images)
        assert all_asked.wait(timeout=60)  # the first batch runs until every visitor has asked
        return set_images(images, **kwargs)

    monkeypatch.setattr(explorer.dataset, "start", counted_start)
    monkeypatch.setattr(predictor, "set_images", held_set_images)
    barrier, results = threading.Barrier(3), {}

    def visitor(name: str) -> None:
        barrier.wait()
        results[name] = list(handlers.dataset_scan(Request(name), "lost", *THRESHOLD))

    threads = [threading.Thread(target=visitor, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert explorer.dataset.starts == 1 and len(scanned) == 3  # BAViT ran once per image, not once per visitor
    final = expected_gallery(explorer, cost_rows(reference, Controls(*THRESHOLD).settings, predictor))
    assert all(updates[-1][0] == final for updates in results.values())
    later = list(handlers.dataset_scan(Request("d"), "lost", *THRESHOLD))  # a later visitor: at once, no new run
    assert later == [[final, results["a"][-1][1]]] and len(scanned) == 3


def test_a_newer_dataset_event_of_the_session_stops_the_older_ones_updates(predictor, synthetic_coco):
    explorer = explorer_for(predictor, synthetic_coco, batch_size=1)
    handlers = build_handlers(explorer)
    older = handlers.dataset_scan(Request("s"), "lost", *THRESHOLD)
    assert next(older)[0] == []
    other = handlers.dataset_show(Request("t"), "lost", *THRESHOLD)  # another session's: not stopped
    newer = handlers.dataset_show(Request("s"), "sparsity", *TOPK)
    assert next(newer) is not None
    assert list(older) == []  # superseded: no more updates
    assert len(list(newer)[-1][0]) == 3 and len(list(other)[-1][0]) == 3


def test_a_click_opens_the_dataset_image_with_its_gt(predictor, synthetic_coco):
    explorer = explorer_for(predictor, synthetic_coco)
    handlers = build_handlers(explorer)
    # as the page sends a gallery item: Gradio's cached copy of the file, with its name
    value = {"image": {"path": "/tmp/gradio/0123abcd/000000000007.jpg", "orig_name": "000000000007.jpg",
                       "url": "http://127.0.0.1/gradio_api/file=/tmp/gradio/0123abcd/000000000007.jpg"},
             "caption": "lost 1.0% (10 px) · sparsity 2.0%"}
    path, gallery = handlers.dataset_pick(gr.SelectData(None, {"index": 1, "value": value}))
    assert Path(path) == (synthetic_coco / "val2017" / "000000000007.jpg").resolve()
    assert isinstance(gallery, gr.Gallery) and gallery.selected_index is None
    session = explorer.open_image({"path": path})  # what the input image's change event then does
    assert session.gt_source == "COCO val2017 image 7 (instance masks)"
    assert session.gt is not None
    for bad in ({"image": {"path": "/etc/passwd"}}, {"image": {"path": "../../val2017/nothing.jpg"}}, None, "x"):
        with pytest.raises(gr.Error, match="not an image of the app's dataset"):
            handlers.dataset_pick(gr.SelectData(None, {"index": 0, "value": bad}))


def test_bad_input_is_refused_before_any_scan(predictor, synthetic_coco):
    explorer = explorer_for(predictor, synthetic_coco)
    handlers = build_handlers(explorer)
    with pytest.raises(gr.Error, match="unknown sort 'size'"):
        list(handlers.dataset_scan(None, "size", *THRESHOLD))
    with pytest.raises(gr.Error, match="needs a calibrated BAViT checkpoint"):  # this checkpoint has none
        list(handlers.dataset_scan(None, "lost", MODE_SPARSITY, 0.5, 35, 3, False, False))
    with pytest.raises(gr.Error, match="cca_steps"):
        list(handlers.dataset_scan(None, "lost", MODE_THRESHOLD, 0.5, 35, "abc", False, False))
    assert explorer.dataset.starts == 0


def test_a_failed_scan_says_why_and_can_start_again(predictor, tmp_path):
    root = make_synthetic_coco(tmp_path, {"val2017": 2})
    annotations = root / "annotations" / "instances_val2017.json"
    dataset = json.loads(annotations.read_text())
    for annotation in dataset["annotations"]:
        del annotation["segmentation"]  # boxes only: no object pixels to count
    annotations.write_text(json.dumps(dataset))
    explorer = explorer_for(predictor, root)
    handlers = build_handlers(explorer)
    for attempt in (1, 2):
        with pytest.raises(gr.Error, match="the dataset scan failed: .*no segmentation"):
            list(handlers.dataset_scan(None, "lost", *THRESHOLD))
        assert explorer.dataset.starts == attempt and not explorer.dataset.running
    assert str(tmp_path) not in explorer.dataset.error  # the message names no server path


def test_no_dataset_no_dataset_view(predictor):
    explorer = Explorer(predictor, ladders=False)
    assert explorer.dataset is None
    demo = build_demo(explorer, examples=[])
    assert not [block for block in demo.blocks.values() if str(getattr(block, "elem_id", "")).startswith("dataset")]
    handlers = build_handlers(explorer)
    with pytest.raises(gr.Error, match="this app has no dataset"):
        list(handlers.dataset_scan(None, "lost", *THRESHOLD))
    with pytest.raises(gr.Error, match="this app has no dataset"):
        handlers.dataset_pick(gr.SelectData(None, {"index": 0, "value": {"image": {"path": "a.jpg"}}}))


def test_the_page_has_the_dataset_view_with_a_dataset(predictor, synthetic_coco):
    demo = build_demo(explorer_for(predictor, synthetic_coco), examples=[])
    ids = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"dataset", "dataset-scan", "dataset-sort", "dataset-resort", "dataset-summary",
            "dataset-gallery"} <= set(ids)
    assert ids["dataset"].label == "Dataset: where pruning costs most (val2017)"
    assert ids["dataset-sort"].choices == [(label, value) for label, value in page.DATASET_SORTS]
    assert ids["dataset-summary"].value == page.dataset_prompt("val2017")
    # every event a client may call has a name (no fn_index, which shifts with --data), none on the API page
    events = [dep for dep in demo.get_config_file()["dependencies"] if dep["backend_fn"]]
    named = {dep["api_name"]: dep for dep in events}
    assert all(dep["api_name"] for dep in events)
    assert {"dataset_scan", "dataset_scanned", "dataset_show", "dataset_sort", "dataset_resort",
            "dataset_pick"} <= set(named)
    assert not any(named[name]["show_api"] for name in named if name.startswith("dataset"))
    # the sliders are answered in the page: no dataset event is triggered by them
    sliders = {ids[name]._id for name in ("threshold", "target-sparsity", "cca-steps")}
    assert not any(target[0] in sliders for name in named if name.startswith("dataset")
                   for target in named[name]["targets"])


# --- the page in a real browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset_server(tmp_path_factory):
    root = make_synthetic_coco(tmp_path_factory.mktemp("app-dataset"), {"val2017": 3})
    return apphelpers.shared_server(bavit=apphelpers.random_bavit_checkpoint(), data=root)


@pytest.mark.slow
def test_browser_scan_gallery_and_click_opens_the_image_with_its_gt(dataset_server):
    if not Path(apphelpers.CHROMIUM).exists():
        pytest.skip(f"{apphelpers.CHROMIUM} not found (install Debian's chromium: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=apphelpers.CHROMIUM, args=apphelpers.CHROMIUM_ARGS)
        try:
            page_ = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page_.set_default_timeout(90_000)
            page_.goto(dataset_server.url)
            page_.wait_for_function("() => window.bavitGrid !== undefined")
            page_.click("#dataset .label-wrap")  # open the accordion: no scan yet, the prompt
            page_.wait_for_selector("#dataset-scan", state="visible")
            assert "Press" in page_.inner_text("#dataset-summary")
            page_.click("#dataset-scan")
            page_.wait_for_function("() => document.querySelector('#dataset-summary').innerText"
                                    ".startsWith('3 images of val2017')")
            items = page_.locator("#dataset-gallery .thumbnail-item")
            assert items.count() == 3
            captions = page_.locator("#dataset-gallery .caption-label").all_inner_texts()
            pattern = re.compile(r"(lost \d+\.\d% \([\d,]+ px\)|no objects) · sparsity \d+\.\d%")
            assert all(pattern.fullmatch(caption.strip()) for caption in captions), captions
            sources = [items.nth(i).locator("img").get_attribute("src") for i in range(3)]
            ids = [str(int(re.search(r"(\d{12})\.jpg$", src).group(1))) for src in sources]  # the file names' ids
            assert sorted(ids) == ["1", "2", "3"]

            def open_item(index: int) -> None:
                items.nth(index).click()
                page_.wait_for_function("id => document.querySelector('#gt-stats').innerText"
                                        ".includes(`GT: COCO val2017 image ${id} (instance masks)`)", arg=ids[index])
                assert page_.locator("#input-image img").count() == 1

            open_item(0)
            open_item(1)
            # another image, then the same gallery item again: it opens again (the selection was cleared)
            page_.locator("#input-image input[type=file]").set_input_files(str(apphelpers.EXAMPLES / "chelsea.jpg"))
            page_.wait_for_function("() => document.querySelector('#gt-stats').innerText.includes('No ground truth')")
            open_item(1)
            # sorting by sparsity at the current setting: the same images, in sparsity order
            page_.locator("#dataset-sort label", has_text="Sparsity").click()
            page_.wait_for_function("() => document.querySelector('#dataset-summary').innerText"
                                    ".includes('Sorted by sparsity')")
            sparsities = [float(re.search(r"sparsity (\d+\.\d)%", text).group(1)) for text in
                          page_.locator("#dataset-gallery .caption-label").all_inner_texts()]
            assert sparsities == sorted(sparsities, reverse=True)
        finally:
            browser.close()
    assert dataset_server.alive()


def test_thumbnails_are_small_jpegs_named_as_their_images_and_go_with_the_scan(predictor, synthetic_coco, tmp_path):
    """The gallery's pictures: a 640x480 photo becomes a 240x180 JPEG of the same name; an unreadable file, or one
    without a thumbnail, shows as itself; the folder is removed when the scan is closed, and the images show as
    themselves then."""
    from bavit.app.dataset import DatasetScan
    from bavit.app.latency import LatencyMonitor
    from bavit.engine.dataset_costs import ScannedImage

    big, broken = tmp_path / "big.jpg", tmp_path / "broken.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(big)
    broken.write_bytes(b"not an image")
    scan = DatasetScan(predictor, CocoGroundTruth(synthetic_coco), LatencyMonitor(predictor))
    grids = np.zeros((16, 16), np.float32), np.zeros((32, 32), np.int64)
    scan._make_thumbnails([ScannedImage("big.jpg", big, 1, "val2017", *grids),
                           ScannedImage("broken.jpg", broken, 2, "val2017", *grids)])
    thumbnail = scan.thumbnail("big.jpg", big)
    assert thumbnail.parent == scan._thumbnails and thumbnail.name == "big.jpg"
    with Image.open(thumbnail) as small:
        assert small.format == "JPEG" and small.size == (240, 180)
    assert scan.thumbnail("broken.jpg", broken) == broken
    assert scan.thumbnail("other.jpg", big) == big  # no thumbnail made for it
    folder = scan._thumbnails
    scan.close()
    assert not folder.exists() and scan.thumbnail("big.jpg", big) == big
    scan.close()  # once is enough
