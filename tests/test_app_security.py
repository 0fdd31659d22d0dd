"""What a request can make the app read and allocate: only its own uploads and examples, within size limits.

Sent as an attacker would, to the running app (``python app.py``): raw REST calls and queue joins with hand-written
file payloads, for every event that takes an image (``analyze``, ``load_image`` and the page's upload event).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio_client")
import apphelpers  # noqa: E402
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from bavit.app import uploads  # noqa: E402
from bavit.app.explorer import Explorer  # noqa: E402
from bavit.app.panels import tiny_warning  # noqa: E402
from bavit.app.session import MODE_THRESHOLD  # noqa: E402
from bavit.errors import DataError  # noqa: E402
from bavit.imageio import load_image  # noqa: E402
from bavit.predictor import Predictor  # noqa: E402

REFUSED = "this image cannot be read: give a file uploaded to this app or one of its examples"
CONTROLS = [MODE_THRESHOLD, 0.5, 35, 3, False, False]  # mode, threshold, target %, CCA, detect, show dense


def _post(server, path: str, body: dict) -> dict:
    request = urllib.request.Request(server.url.rstrip("/") + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def rest_analyze(server, payload: dict) -> str:
    """``POST /gradio_api/call/analyze`` then read its event stream: the whole stream as text."""
    event = _post(server, "/gradio_api/call/analyze", {"data": [payload, 0.5, 3, 0, 0]})["event_id"]
    with urllib.request.urlopen(f"{server.url}gradio_api/call/analyze/{event}", timeout=120) as response:
        return response.read().decode()


def dependency(server, *, api_name: str | None = None, elem_id: str | None = None) -> int:
    """The fn_index of the event with this API name, or of the ``change`` event of the component ``elem_id``."""
    with urllib.request.urlopen(server.url + "config", timeout=30) as response:
        config = json.loads(response.read())
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    for dep in config["dependencies"]:
        if api_name is not None and dep.get("api_name") == api_name:
            return dep["id"]
        if elem_id is not None and any(ids.get(target) == elem_id and trigger == "change"
                                       for target, trigger in dep["targets"]):
            return dep["id"]
    raise LookupError(api_name or elem_id)


def queue_call(server, fn_index: int, data: list) -> dict:
    """Join the queue as the page does and wait for ``process_completed``: its message."""
    session = uuid.uuid4().hex[:10]
    _post(server, "/gradio_api/queue/join", {"data": data, "fn_index": fn_index, "session_hash": session,
                                              "event_data": None, "trigger_id": None})
    with urllib.request.urlopen(f"{server.url}gradio_api/queue/data?session_hash={session}", timeout=120) as stream:
        for line in stream:
            text = line.decode().strip()
            if text.startswith("data:"):
                message = json.loads(text[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the queue closed without a result")


def outside_payloads(tmp_path: Path) -> dict[str, dict]:
    """Payloads naming files the app must never read: a real image, a missing file, a non-image, a folder, a
    symbolic link inside the upload folder to an outside image, and a ``..`` walk out of the upload folder."""
    image = tmp_path / "private.jpg"
    shutil.copy(apphelpers.EXAMPLES / "chelsea.jpg", image)
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    upload_dir = Path(uploads_folder()) / f"test-{uuid.uuid4().hex}"
    upload_dir.mkdir(parents=True)
    link = upload_dir / "link.jpg"
    link.symlink_to(image)
    return {
        "image": {"path": str(image)},
        "missing": {"path": str(tmp_path / "missing.jpg")},
        "non-image": {"path": str(text)},
        "folder": {"path": str(tmp_path)},
        "symlink": {"path": str(link)},
        "dotdot": {"path": f"{uploads_folder()}/../{os.path.relpath(image, '/')}"},
    }


def uploads_folder() -> str:
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def test_rest_analyze_refuses_every_outside_path_alike(server, tmp_path):
    for name, payload in outside_payloads(tmp_path).items():
        stream = rest_analyze(server, payload)
        assert stream.startswith("event: error"), (name, stream[:200])
        assert "complete" not in stream and "private" not in stream, name
    ok = rest_analyze(server, {"path": str(apphelpers.EXAMPLES / "chelsea.jpg")})  # the examples stay readable
    assert "event: complete" in ok and "event: error" not in ok


@pytest.mark.parametrize("event", ["analyze", "load_image", "page upload"])
def test_queue_events_refuse_every_outside_path_with_one_message(server, tmp_path, event):
    fn_index = dependency(server, elem_id="input-image") if event == "page upload" else dependency(server, api_name=event)
    for name, payload in outside_payloads(tmp_path).items():
        data = [payload, 0.5, 3, 0, 0] if event == "analyze" else [payload, None, *CONTROLS]
        message = queue_call(server, fn_index, data)
        assert message["success"] is False, (name, message)
        assert message["output"]["error"] == REFUSED, (name, message["output"])
    assert server.alive()


def test_uploads_still_work_through_the_client(client, tmp_path):
    path = tmp_path / "mine.png"
    Image.fromarray(np.full((64, 96, 3), 200, np.uint8)).save(path)
    result = client.predict(handle_file(str(path)), 0.5, 3, 0, 0, api_name="/analyze")
    assert result["source_size"] == [96, 64] and result["kept_patches"] >= 0


def zero_png(path: Path, width: int, height: int) -> Path:
    """An all-zero RGB PNG of ``width x height`` written row by row (a few hundred KB for hundreds of MP)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row, parts = zlib.compressobj(9), bytes(1 + 3 * width), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))
    return path


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_small_png_with_many_pixels_is_refused_before_decoding(server, client, tmp_path):
    bomb = zero_png(tmp_path / "bomb.png", 15000, 15000)  # 225 MP: 675 MB decoded
    assert bomb.stat().st_size < 1_000_000
    before = peak_rss_mib(server.process.pid)
    for api_name, args in (("/analyze", (0.5, 3, 0, 0)), ("/load_image", CONTROLS)):
        with pytest.raises(AppError, match=r"'bomb\.png' is 15000x15000 px \(225 MP\); the limit here is 50 MP"):
            client.predict(handle_file(str(bomb)), *args, api_name=api_name)
    assert peak_rss_mib(server.process.pid) - before < 100  # nothing was decoded: the server's peak barely moved
    assert server.alive()


def test_the_pixel_limit_holds_for_every_format_and_counts_what_is_decoded(tmp_path):
    for fmt in ("PNG", "GIF", "BMP", "TIFF", "WEBP"):
        path = tmp_path / f"wide.{fmt.lower()}"
        Image.new("L" if fmt == "GIF" else "RGB", (1000, 60)).save(path, fmt)
        with pytest.raises(DataError, match=r"is 1000x60 px .* the limit here is 0 MP decoded"):
            load_image(path, max_pixels=50_000)
        assert load_image(path, max_pixels=60_000).info["source_size"] == (1000, 60)
    jpeg = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (90, 120, 30)).save(jpeg)  # 12 MP stored, decoded at 1/2 for max_side 1024
    assert load_image(jpeg, max_side=1024, max_pixels=3_000_000).info["source_size"] == (4000, 3000)
    with pytest.raises(DataError, match="limit"):
        load_image(jpeg, max_side=None, max_pixels=3_000_000)  # at full size it would decode 12 MP


def test_reading_a_file_holds_no_second_whole_copy(tmp_path):
    import tracemalloc

    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(path)
    size = path.stat().st_size
    assert size > 5_000_000  # incompressible: the file is as large as its pixels
    tracemalloc.start()
    try:
        load_image(path, max_side=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 4  # Python never held the file's bytes (PIL decodes from the open file)


def test_uploads_above_the_size_limit_are_refused_and_not_kept(server):
    assert uploads.MAX_UPLOAD == "25mb"
    name = f"big-{uuid.uuid4().hex}.bin"
    boundary = "bavit-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + bytes(26 * 2**20) + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(server.url + "gradio_api/upload", data=body,
                                     headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=60)
    assert error.value.code == 413
    assert not list(Path(uploads_folder()).rglob(name))
    assert server.alive()


def test_the_demo_deletes_its_cache():
    from bavit.app.ui import build_demo

    explorer = Explorer(Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None))
    demo = build_demo(explorer, examples=[])
    assert demo.delete_cache == (uploads.CACHE_LIFETIME, uploads.CACHE_LIFETIME)
    assert Path(uploads_folder()) in explorer.image_roots


def test_page_and_api_read_a_large_photo_alike(tmp_path):
    """An 8000x6000 JPEG: one decode and one downscale for the page and the API, so the same grids and counts."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    path = tmp_path / "camera.jpg"
    Image.fromarray(small).resize((8000, 6000), Image.BILINEAR).save(path, quality=90)
    explorer = Explorer(Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None), image_roots=(tmp_path,))
    session = explorer.open_image({"path": str(path), "orig_name": "camera.jpg"})
    page = explorer.predictor.predict(session.prepared, threshold=0.5, cca_steps=3, detect=False)
    api = explorer.api_result({"path": str(path)}, threshold=0.5, cca_steps=3, detect=False)
    assert session.source_size == (8000, 6000) and api["source_size"] == [8000, 6000]
    assert api["image_size"] == list(session.prepared.image.size) == [1024, 768]
    assert api["kept_patches"] == int(page.accounting.kept_patches)
    assert api["grid_cca"] == ["".join("1" if v else "0" for v in row) for row in np.asarray(page.grid_cca)]


def test_tiny_warning_gives_the_size_as_uploaded(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (20000, 30), (10, 200, 30)).save(path)
    explorer = Explorer(Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None), image_roots=(tmp_path,))
    session = explorer.open_image({"path": str(path)})
    warning = tiny_warning(session)
    assert warning.startswith("This image is tiny (20000x30 px, 1024x2 px once fitted into 1024 px)")
    explorer.image_roots = (apphelpers.EXAMPLES,)
    assert tiny_warning(explorer.open_image({"path": str(apphelpers.EXAMPLES / "chelsea.jpg")})) is None


def test_at_most_two_images_decode_at_once(monkeypatch, tmp_path):
    import threading
    import time

    active, most, lock = [0], [0], threading.Lock()
    real = uploads.load_image

    def counting_load(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.2)  # hold the slot long enough for the other threads to queue up behind it
        with lock:
            active[0] -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(uploads, "load_image", counting_load)
    payload, roots = {"path": str(apphelpers.EXAMPLES / "rocket.jpg")}, (apphelpers.EXAMPLES,)
    threads = [threading.Thread(target=uploads.read_image, args=(payload, roots)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == uploads.DECODE_SLOTS == 2


@pytest.mark.parametrize("kind", ["rgb", "rgba", "gray16"])
def test_the_memory_bench_images_are_the_largest_accepted(kind, tmp_path):
    from bavit.bench.upload_memory import largest_image

    path = largest_image(kind, tmp_path)
    width, height = Image.open(path).size
    assert uploads.MAX_IMAGE_PIXELS - width * height < width  # the limit, to within one row
    assert path.stat().st_size < 25 * 2**20  # uploadable
    image = load_image(path, max_side=1024, max_pixels=uploads.MAX_IMAGE_PIXELS)
    assert image.mode == "RGB" and max(image.size) == 1024 and image.info["source_size"] == (width, height)
    with pytest.raises(DataError, match="limit"):
        load_image(path, max_side=1024, max_pixels=width * height - 1)
