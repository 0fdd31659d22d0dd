import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BAVIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
COCO_ROOT = SHARED_DATA / "coco"
VOC_ROOT = SHARED_DATA / "voc" / "VOCdevkit"


@pytest.fixture(scope="session")
def coco_root() -> Path:
    if not (COCO_ROOT / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"shared COCO subset not found at {COCO_ROOT}")
    return COCO_ROOT


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
