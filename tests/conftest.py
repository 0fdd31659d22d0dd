import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BAVIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
COCO_ROOT = SHARED_DATA / "coco"
VOC_ROOT = SHARED_DATA / "voc" / "VOCdevkit"


def coco91_id2label(coco) -> dict[int, str]:
    """The 91-slot ``id2label`` that DETR / YOLOS COCO checkpoints (hustvl/yolos-tiny) use: slot = category_id,
    gaps ``"N/A"``; for building tiny detectors with that label layout."""
    id2label = {i: "N/A" for i in range(max(91, max(coco.cats) + 1))}
    for cat_id, cat in coco.cats.items():
        id2label[int(cat_id)] = cat["name"]
    return id2label


@pytest.fixture(scope="session")
def coco_root() -> Path:
    if not (COCO_ROOT / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"shared COCO subset not found at {COCO_ROOT}")
    return COCO_ROOT


SYNTHETIC_CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
                        {"id": 17, "name": "cat", "supercategory": "animal"}]
SYNTHETIC_SIZE = (96, 80)  # width, height in pixels


def make_synthetic_coco(root: Path, splits: dict[str, int], seed: int = 0) -> Path:
    """Write a tiny COCO-format detection set under ``root``: per split ``annotations/instances_{split}.json`` and
    ``{split}/{image_id:012d}.jpg``. Each image is 96x80 RGB noise with 1-3 filled polygons (triangles and
    quadrilaterals, 16-40 px across, a flat colour per category) annotated with polygon segmentation, bbox
    ``[x, y, w, h]`` and area in pixels. Deterministic for a given ``seed``. Returns ``root``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = SYNTHETIC_SIZE
    colours = {1: (230, 40, 40), 17: (40, 60, 230)}
    image_id, ann_id = 0, 0
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for _ in range(count):
            image_id += 1
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            draw = ImageDraw.Draw(image)
            for _ in range(int(rng.integers(1, 4))):
                ann_id += 1
                category = int(rng.choice([c["id"] for c in SYNTHETIC_CATEGORIES]))
                w, h = (float(v) for v in rng.integers(16, 41, 2))
                x0, y0 = float(rng.integers(0, width - w)), float(rng.integers(0, height - h))
                if rng.random() < 0.5:  # triangle
                    points = [(x0, y0 + h), (x0 + w / 2, y0), (x0 + w, y0 + h)]
                else:  # quadrilateral with one corner pulled in
                    points = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0 + w / 4, y0 + h * 3 / 4)]
                draw.polygon(points, fill=colours[category])
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(points))))
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": 0, "area": area,
                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                    "segmentation": [[c for point in points for c in point]],
                })
            file_name = f"{image_id:012d}.jpg"
            image.save(root / split / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        dataset = {"info": {"description": "synthetic BAViT test set"}, "images": images,
                   "annotations": annotations, "categories": SYNTHETIC_CATEGORIES}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset))
    return root


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory) -> Path:
    """A tiny synthetic COCO root (6 train2017 + 3 val2017 images of 96x80, categories "person" and "cat"), built
    once per session, so training and fine-tuning tests never depend on ``../shared/data``. Treat as read-only."""
    return make_synthetic_coco(tmp_path_factory.mktemp("synthetic-coco"), {"train2017": 6, "val2017": 3})


def blob_probs(count: int, seed: int = 0) -> torch.Tensor:
    """``[count, 24, 24]`` probabilities shaped like a detector's: a few soft blobs per image plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:24, 0:24]
    probs = []
    for _ in range(count):
        field = np.zeros((24, 24))
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(0, 24), rng.uniform(0, 24), rng.uniform(2, 8)
            field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        probs.append(0.7 * field / field.max() + 0.25 * rng.random((24, 24)))  # distinct values in (0, 0.95)
    return torch.tensor(np.array(probs), dtype=torch.float32)


@pytest.fixture(scope="session")
def voc_root() -> Path:
    if not (VOC_ROOT / "VOC2012" / "JPEGImages").is_dir():
        pytest.skip(f"shared VOC images not found at {VOC_ROOT}")
    return VOC_ROOT


@pytest.fixture(scope="module")
def server():
    """The running app shared by the gradio_client test modules (see tests/apphelpers.py)."""
    import apphelpers

    return apphelpers.shared_server()


@pytest.fixture(scope="module")
def client(server):
    """A gradio_client ``Client`` on the shared app."""
    from gradio_client import Client

    return Client(server.url, download_files=False, verbose=False)


APP_FIXTURES = {"server", "client", "browser"}  # a real `python app.py` process (and chromium): seconds each


def pytest_collection_modifyitems(items):
    """Every test that talks to a real app server is ``slow``; the other slow tests carry the mark themselves."""
    for item in items:
        if APP_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def write_tiny_coco(tmp_path, with_images: bool = False):
    """Two 64x48 images: image 1 has two cats (category 17), image 2 a dog (18) and a crowd region."""
    dataset = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.png", "width": 64, "height": 48}],
        "categories": [{"id": 17, "name": "cat", "supercategory": "animal"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 17, "bbox": [2, 3, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 17, "bbox": [30, 20, 30, 25], "area": 750, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 18, "bbox": [10, 10, 40, 30], "area": 1200, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 18, "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 1},
        ],
    }
    ann = tmp_path / "instances_tiny.json"
    ann.write_text(json.dumps(dataset))
    if with_images:
        rng = np.random.default_rng(0)
        for image in dataset["images"]:
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / image["file_name"])
    return ann


def gt_as_detections(coco, image_ids):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in coco.loadAnns(coco.getAnnIds(imgIds=list(image_ids), iscrowd=False))]
