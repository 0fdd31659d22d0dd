"""What a request can make the app read and allocate: only its own uploads and examples, within size limits.

Sent as an attacker would, to the running app (``python app.py``): raw REST calls and queue joins with hand-written
file payloads, for every event that takes an image (``analyze`` and the page's upload event, ``page_image``).
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio_client")
import apphelpers  # noqa: E402
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from bavit.pruning.settings import PruningSettings
from bavit.app import uploads  # noqa: E402
from benchmarks import crafted_images as crafted  # noqa: E402
from bavit.app.explorer import Explorer  # noqa: E402
from bavit.app.page import tiny_warning  # noqa: E402
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


def queue_call(server, fn_index: int, data: list, session: str | None = None) -> dict:
    """Join the queue as the page does (in ``session``, a new one by default) and wait for ``process_completed``:
    its message."""
    session = session or uuid.uuid4().hex[:10]
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


@pytest.mark.parametrize("event", ["analyze", "page upload"])
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


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_small_png_with_many_pixels_is_refused_before_decoding(server, client, tmp_path):
    bomb = crafted.zero_png(tmp_path / "bomb.png", 15000, 15000)  # 225 MP: 675 MB decoded
    assert bomb.stat().st_size < 1_000_000
    before = peak_rss_mib(server.process.pid)
    for api_name, args in (("/analyze", (0.5, 3, 0, 0)), ("/page_image", CONTROLS)):
        with pytest.raises(AppError, match=r"'bomb\.png' is 15000x15000 px \(225 MP\); the limit here is 50 MP"):
            client.predict(handle_file(str(bomb)), *args, api_name=api_name)
    assert peak_rss_mib(server.process.pid) - before < 100  # nothing was decoded: the server's peak barely moved
    assert server.alive()


def test_the_pixel_limit_holds_for_every_format_and_counts_what_is_decoded(tmp_path):
    for fmt in ("PNG", "GIF", "BMP", "TIFF", "WEBP"):
        path = tmp_path / f"wide.{fmt.lower()}"
        Image.new("L" if fmt == "GIF" else "RGB", (1000, 60)).save(path, fmt)
        with pytest.raises(DataError, match=r"is 1000x60 px \(0.06 MP\); the limit here is 0.05 MP decoded"):
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
    page = explorer.predictor.predict(session.prepared, PruningSettings(threshold=0.5, cca_steps=3), detect=False)
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
    warning = tiny_warning(session, 256)
    assert warning.startswith("This image is tiny (20000x30 px, 1024x2 px once fitted into 1024 px)")
    assert warning.endswith("it is stretched to 256x256, so the grid says little.")
    explorer.image_roots = (apphelpers.EXAMPLES,)
    assert tiny_warning(explorer.open_image({"path": str(apphelpers.EXAMPLES / "chelsea.jpg")}), 384) is None


def test_at_most_two_images_decode_at_once(monkeypatch, tmp_path):
    """Five reads at once: two hold the decode slots (held here until released) and three wait at the slots, seen
    by counting who reached them and who got in; no clock involved."""
    import threading

    real_slots, real_load = uploads._DECODING, uploads.load_image
    state = {"arrived": 0, "inside": 0, "most": 0}
    changed, release = threading.Condition(), threading.Event()

    class CountedSlots:  # the real semaphore, counting the threads that reach it
        def __enter__(self):
            with changed:
                state["arrived"] += 1
                changed.notify_all()
            return real_slots.__enter__()

        def __exit__(self, *exc):
            return real_slots.__exit__(*exc)

    def held_load(*args, **kwargs):
        with changed:
            state["inside"] += 1
            state["most"] = max(state["most"], state["inside"])
            changed.notify_all()
        release.wait(60)
        with changed:
            state["inside"] -= 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(uploads, "_DECODING", CountedSlots())
    monkeypatch.setattr(uploads, "load_image", held_load)
    payload, roots = {"path": str(apphelpers.EXAMPLES / "rocket.jpg")}, (apphelpers.EXAMPLES,)
    threads = [threading.Thread(target=uploads.read_image, args=(payload, roots)) for _ in range(5)]
    for thread in threads:
        thread.start()
    try:
        with changed:  # every thread at the slots, two of them inside: the other three are blocked there
            assert changed.wait_for(lambda: state["arrived"] == 5 and state["inside"] == 2, timeout=60), state
            assert state["inside"] == 2
    finally:
        release.set()
    for thread in threads:
        thread.join(60)
    assert state["most"] == uploads.DECODE_SLOTS == 2 and state["inside"] == 0


@pytest.mark.parametrize("kind", ["rgb", "rgba", "gray16"])
def test_the_memory_bench_images_are_the_largest_accepted(kind, tmp_path):
    from benchmarks.upload_memory import largest_image

    path = largest_image(kind, tmp_path)
    width, height = Image.open(path).size
    assert uploads.MAX_IMAGE_PIXELS - width * height < width  # the limit, to within one row
    assert path.stat().st_size < 25 * 2**20  # uploadable
    image = load_image(path, max_side=1024, max_pixels=uploads.MAX_IMAGE_PIXELS)
    assert image.mode == "RGB" and max(image.size) == 1024 and image.info["source_size"] == (width, height)
    with pytest.raises(DataError, match="limit"):
        load_image(path, max_side=1024, max_pixels=width * height - 1)


# The ways around the limits, each sent as an attacker would.

def icon_files(folder: Path, side: int) -> dict[str, Path]:
    """An ICO and an ICNS file, each holding one all-zero PNG of ``side x side`` (small files, large decodes)."""
    png = crafted.zero_png_bytes(side, side)
    return {"ico": crafted.ico_holding(folder / "bomb.ico", png), "icns": crafted.icns_holding(folder / "bomb.icns", png)}


@pytest.mark.parametrize("kind", ["ico", "icns"])
def test_ico_and_icns_are_refused_before_pillow_decodes_them(kind, tmp_path, monkeypatch):
    # Pillow decodes an ICO's or ICNS's largest image inside Image.open, before any size check: 6000x6000 here
    # (144 MB decoded); a 15000x15000 one held 853 MiB in the app.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250_000_000)  # as app.py sets it
    path = icon_files(tmp_path, 6000)[kind]
    assert path.stat().st_size < 200_000
    with pytest.raises(DataError, match=r"is not a readable image \(not one of JPEG, PNG, GIF, BMP, TIFF, WEBP"):
        load_image(path, max_side=1024, max_pixels=1_000_000)
    with pytest.raises(DataError, match="not one of JPEG"):  # the app's one reader refuses it the same way
        uploads.read_image({"path": str(path), "orig_name": path.name}, (tmp_path,))


def test_a_refused_image_keeps_no_decoding_frame_alive(tmp_path):
    path = crafted.truncated_png(tmp_path / "broken.png", 3_000_000)
    with pytest.raises(DataError, match="corrupt or truncated") as refused:
        load_image(path)
    assert refused.value.__context__ is None and refused.value.__cause__ is None
    frames = [frame.f_code.co_name for frame, _ in __import__("traceback").walk_tb(refused.value.__traceback__)]
    assert "_decode" not in frames  # the frame that held the decoded pixels is gone
    with pytest.raises(DataError, match=r"'broken.png' is corrupt or truncated") as refused:
        uploads.read_image({"path": str(path), "orig_name": "broken.png"}, (tmp_path,))
    assert refused.value.__context__ is None and refused.value.__cause__ is None


def test_an_event_error_carries_no_traceback_of_the_failure(tmp_path):
    import gradio as gr

    from bavit.app.ui import user_errors

    path = crafted.truncated_png(tmp_path / "broken.png", 120_000)

    @user_errors
    def event():
        return uploads.read_image({"path": str(path)}, (tmp_path,))

    with pytest.raises(gr.Error, match="corrupt or truncated") as raised:
        event()
    assert raised.value.__context__ is None and raised.value.__cause__ is None


def test_concurrent_decodes_leave_no_warning_filter_and_the_same_answer(tmp_path, monkeypatch):
    """Two decodes interleaved as A starts, B starts, A ends, B ends leave no "error" warning filter installed
    (``warnings.catch_warnings`` is not thread-safe), so a JPEG in PIL's warning zone is still decoded after them."""
    import threading
    import warnings

    from PIL import ImageFile

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8_000_000)
    big = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (40, 90, 10)).save(big)  # 12 MP: PIL warns (1-2x its bound), decoded at 1/2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = load_image(big, max_side=1024).size
    filters = list(warnings.filters)
    real_load, first_in, second_in = ImageFile.ImageFile.load, threading.Event(), threading.Event()

    def held_load(self):  # A decodes until B is decoding too; B until A has ended
        if threading.current_thread() is threads[0]:
            first_in.set()
            assert second_in.wait(timeout=60)
        else:
            second_in.set()
            threads[0].join(timeout=60)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", held_load)
    small = tmp_path / "small.png"
    Image.new("RGB", (32, 32)).save(small)
    threads = [threading.Thread(target=load_image, args=(small,)) for _ in range(2)]
    threads[0].start()
    assert first_in.wait(timeout=60)
    threads[1].start()
    for thread in threads:
        thread.join()
    assert warnings.filters == filters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert load_image(big, max_side=1024).size == first == (1024, 768)


def test_the_size_refusal_tells_the_image_from_the_limit(tmp_path):
    from bavit.imageio import megapixels

    assert megapixels(8000 * 6251, 50_000_000) == ("50.01", "50.00")
    assert megapixels(225_000_000, 50_000_000) == ("225", "50")
    path = crafted.zero_png(tmp_path / "just-over.png", 8000, 6251)
    with pytest.raises(DataError, match=r"8000x6251 px \(50.01 MP\); the limit here is 50.00 MP decoded"):
        load_image(path, max_pixels=uploads.MAX_IMAGE_PIXELS)


def test_painted_layers_are_read_under_the_upload_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250_000_000)  # as app.py sets it
    explorer = Explorer(Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None),
                        image_roots=(tmp_path, apphelpers.EXAMPLES))
    session = explorer.open_image({"path": str(apphelpers.EXAMPLES / "chelsea.jpg")})
    controls = session_controls()
    bomb = {"path": str(crafted.zero_png(tmp_path / "layer.png", 15000, 15000))}  # 225 MP: refused from its header
    with pytest.raises(DataError, match=r"painted layer is 15000x15000 px \(225 MP\); the limit here is 50 MP"):
        explorer.paint_gt(session, {"background": None, "layers": [bomb] * 4, "composite": None}, controls)
    with pytest.raises(DataError, match="has 5 layers; at most 4 are read"):
        explorer.paint_gt(session, {"background": None, "layers": [bomb] * 5, "composite": None}, controls)
    with pytest.raises(DataError, match=REFUSED):  # a layer outside the app's folders, like any image
        explorer.paint_gt(session, {"layers": [{"path": "/etc/hostname"}]}, controls)
    width, height = session.display.size
    alpha = np.zeros((height, width, 4), np.uint8)
    alpha[: height // 2, :, 3] = 255  # the top half painted
    Image.fromarray(alpha).save(tmp_path / "painted.png")
    view = explorer.paint_gt(session, {"background": None, "layers": [{"path": str(tmp_path / "painted.png")}],
                                       "composite": None}, controls)
    assert view is not None and session.gt_source == "painted in the editor"
    assert session.gt.sum() == 12 * 24  # the top 12 rows of the 24x24 BAViT grid
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((height, width, 4), np.uint8)).save(empty)
    assert explorer.paint_gt(session, {"layers": [{"path": str(empty)}]}, controls) is None


def session_controls():
    from bavit.app.session import Controls

    return Controls(mode=MODE_THRESHOLD, threshold=0.5, target_sparsity=35, cca_steps=3, detect=False,
                    show_dense=False)


def test_the_queue_is_the_only_way_in(server):
    for name in ("analyze", "page_image", "page_slider", "page_mode", "page_paint"):
        request = urllib.request.Request(f"{server.url}gradio_api/run/{name}", method="POST",
                                         data=json.dumps({"data": [{"path": "x"}, 0.5, 3, 0, 0]}).encode(),
                                         headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 404 and b"Please join the queue" in refused.value.read(), name


def test_every_event_a_client_may_call_has_a_name_whatever_the_data(tmp_path):
    from bavit.app.ui import build_demo

    from conftest import write_tiny_coco

    def named(coco_examples):
        explorer = Explorer(Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None))
        config = build_demo(explorer, examples=[], coco_examples=coco_examples).get_config_file()
        python_events = [dep for dep in config["dependencies"] if dep["backend_fn"]]
        assert all(dep["api_name"] for dep in python_events), [dep["targets"] for dep in python_events]
        return sorted(dep["api_name"] for dep in python_events)

    root = write_tiny_coco(tmp_path, with_images=True)
    images = sorted(str(p) for p in Path(root).rglob("*.png"))
    assert named(None) == named(images)
    assert {"analyze", "page_image", "page_slider", "page_mode", "page_paint"} <= set(named(None))


def test_sweep_uploads_deletes_what_is_older_than_the_lifetime(tmp_path):
    from bavit.app.server import sweep_uploads

    now = 1_000_000.0
    old, recent, kept = tmp_path / "a" / "old.png", tmp_path / "b" / "recent.png", tmp_path / "c" / "example.jpg"
    for path, age in ((old, 3601), (recent, 3599), (kept, 10_000)):
        path.parent.mkdir()
        path.write_bytes(b"x")
        os.utime(path, (now - age, now - age))
    assert sweep_uploads(tmp_path, 3600, keep={str(kept)}, now=now) == 1
    assert not old.exists() and not old.parent.exists()  # and its folder, left empty
    assert recent.exists() and kept.exists()
    assert sweep_uploads(tmp_path / "missing", 3600, now=now) == 0


@pytest.mark.slow
def test_uploads_left_by_a_killed_server_are_deleted_at_start_up(tmp_path):
    folder = Path(uploads_folder()) / f"left-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    old, recent = folder / "old.png", folder / "recent.png"
    for path, age in ((old, 2 * uploads.CACHE_LIFETIME), (recent, 60)):
        path.write_bytes(b"x")
        stamp = __import__("time").time() - age
        os.utime(path, (stamp, stamp))
    fresh = apphelpers.AppServer()
    try:
        assert not old.exists() and recent.exists()
    finally:
        fresh.stop()
        shutil.rmtree(folder, ignore_errors=True)


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "bavit-test-boundary"
    body = b"".join((f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n" for name, data in files)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload_status(server, files: list[tuple[str, bytes]], chunked: bool = False) -> tuple[int, bytes]:
    import http.client

    body, content_type = multipart(files)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    if chunked:  # no Content-Length: the body is counted as it arrives
        connection.request("POST", "/gradio_api/upload", body=iter([body[i:i + 2**20] for i in range(0, len(body), 2**20)]),
                           headers={"content-type": content_type}, encode_chunked=True)
    else:
        connection.request("POST", "/gradio_api/upload", body=body, headers={"content-type": content_type})
    response = connection.getresponse()
    return response.status, response.read()


@pytest.mark.parametrize("chunked", [False, True])
def test_one_upload_request_carries_at_most_one_upload_of_data_and_four_files(server, chunked):
    tag = uuid.uuid4().hex
    status, body = upload_status(server, [(f"{tag}-{i}.png", bytes(20 * 2**20)) for i in range(2)], chunked)
    assert status == 413 and json.loads(body) == {"error": "a request may carry at most 26 MiB"}
    status, body = upload_status(server, [(f"{tag}-{i}.png", b"x") for i in range(5)], chunked)
    assert status == 413 and json.loads(body) == {"error": "a request may carry at most 4 files"}
    assert not list(Path(uploads_folder()).rglob(f"{tag}-*"))
    status, body = upload_status(server, [(f"{tag}-ok.png", b"x")], chunked)
    assert status == 200 and json.loads(body)[0].endswith(f"{tag}-ok.png")
    assert server.alive()


def test_broken_requests_get_one_line_and_no_traceback(server):
    status, body = upload_status(server, [("a" * 5004 + ".png", b"x")])
    assert status == 400 and json.loads(body) == {"error": "this request cannot be processed (MultipartParseError)"}
    boundary = "bavit-test-boundary"  # a part with no file name at all: a form field where Gradio wants files
    field = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"\r\n\r\nx\r\n--{boundary}--\r\n").encode()
    request = urllib.request.Request(server.url + "gradio_api/upload", data=field,
                                     headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400 and json.loads(refused.value.read()) == {
        "error": "this request cannot be processed (TypeError)"}
    for path, body in (("/gradio_api/call/no_such_event", {"data": [1]}),
                       ("/gradio_api/queue/join", {"data": [1], "fn_index": 999, "session_hash": "x1"})):
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(server, path, body)
        assert refused.value.code == 404, path
        assert json.loads(refused.value.read()) == {
            "error": "no such event: name one listed by /gradio_api/info (api_name)"}
    with pytest.raises(urllib.error.HTTPError) as refused:  # Gradio redirected to any URL (an open redirect)
        urllib.request.urlopen(f"{server.url}gradio_api/file=http://127.0.0.1:9/x", timeout=30)
    assert refused.value.code == 403
    assert server.alive()


def test_rest_errors_say_why(server):
    stream = rest_analyze(server, {"path": "/etc/hostname"})
    assert stream.startswith("event: error\ndata: " + json.dumps(REFUSED))
    event = _post(server, "/gradio_api/call/analyze", {"data": [{"path": str(apphelpers.EXAMPLES / "chelsea.jpg")},
                                                                 10 ** 400, 3, 0, 0]})["event_id"]
    with urllib.request.urlopen(f"{server.url}gradio_api/call/analyze/{event}", timeout=60) as response:
        text = response.read().decode()
    assert text.startswith('event: error\ndata: "threshold must be a finite number, got an integer of 1329 bits"')
    event = _post(server, "/gradio_api/call/analyze", {"data": ["abc", 0.5, 3, 0, 0]})["event_id"]
    with urllib.request.urlopen(f"{server.url}gradio_api/call/analyze/{event}", timeout=60) as response:
        text = response.read().decode()
    assert text.startswith("event: error\ndata: \"the request's data does not fit this endpoint's inputs")
    message = queue_call(server, dependency(server, api_name="analyze"), ["abc", 0.5, 3, 0, 0])
    assert message["success"] is False and "Input should be a valid dictionary" in message["output"]["error"]


@pytest.mark.slow
def test_the_oldest_sessions_are_dropped_beyond_the_capacity():
    from bavit.app.server import MAX_SESSIONS

    server = apphelpers.AppServer()  # its own: dropping sessions must not touch other tests' sessions
    try:
        _fill_sessions(server, MAX_SESSIONS)
    finally:
        server.stop()


def _fill_sessions(server, capacity: int) -> None:
    """``capacity`` + 1 sessions each set an image; then the newest still has it and the oldest does not."""

    image = {"path": str(apphelpers.EXAMPLES / "rocket.jpg")}
    upload, slider = dependency(server, api_name="page_image"), dependency(server, api_name="page_slider")
    sessions = [f"cap-{uuid.uuid4().hex[:8]}-{i}" for i in range(capacity + 1)]

    for session in sessions:
        assert queue_call(server, upload, [image, None, *CONTROLS], session)["success"]
    newest, oldest = (queue_call(server, slider, [None, *CONTROLS], s)["output"]["data"]
                      for s in (sessions[-1], sessions[0]))
    assert newest[0] and json.loads(newest[0])["kind"]  # the newest session still has its image
    assert all(value == {"__type__": "update"} for value in oldest)  # the oldest was dropped: nothing to update


def test_a_refused_decode_still_hands_its_memory_back(monkeypatch, tmp_path):
    trims = []
    monkeypatch.setattr(uploads, "_release_freed_memory", lambda: trims.append(1))
    path = crafted.truncated_png(tmp_path / "broken.png", 120_000)
    with pytest.raises(DataError, match="corrupt or truncated"):
        uploads.read_image({"path": str(path)}, (tmp_path,))
    assert trims == [1]  # glibc keeps freed heap pages otherwise: a refused 50 MP PNG held +300 MiB
    uploads.read_image({"path": str(apphelpers.EXAMPLES / "rocket.jpg")}, (apphelpers.EXAMPLES,))
    assert trims == [1, 1]


def test_the_page_paint_event_reads_its_layers_under_the_limits(server, tmp_path):

    session = f"paint-{uuid.uuid4().hex[:8]}"
    image = {"path": str(apphelpers.EXAMPLES / "rocket.jpg")}
    assert queue_call(server, dependency(server, api_name="page_image"), [image, None, *CONTROLS], session)["success"]
    status, body = upload_status(server, [("layer.png", crafted.zero_png_bytes(15000, 15000))])
    assert status == 200
    layer = {"path": json.loads(body)[0], "meta": {"_type": "gradio.FileData"}}
    editor = {"background": layer, "layers": [layer] * 4, "composite": layer}
    message = queue_call(server, dependency(server, api_name="page_paint"), [None, editor, *CONTROLS], session)
    assert message["success"] is False
    assert message["output"]["error"] == ("painted layer is 15000x15000 px (225 MP); the limit here is 50 MP decoded: "
                                          "downscale it first")
    assert server.alive()


@pytest.mark.slow
def test_app_exits_2_with_one_line_for_a_broken_checkpoint(tmp_path):
    import subprocess
    import sys

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    for path in (broken, tmp_path / "missing.safetensors"):
        done = subprocess.run([sys.executable, str(apphelpers.ROOT / "app.py"), "--bavit", str(path), "--detector",
                               str(apphelpers.missing_detector_dir())], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
