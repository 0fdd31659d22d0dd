"""Bad and odd inputs through the running app: unreadable files get a clear gr.Error, odd images just work, and
the server stays up throughout."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio_client")
import apphelpers  # noqa: E402
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from bavit.app.session import MODE_THRESHOLD  # noqa: E402
from bavit.app.ui import OUTPUT_KEYS  # noqa: E402

GRID_ONLY = [MODE_THRESHOLD, 0.5, 35, 3, False, False]  # detector off: keeps these tests fast


SPARSITY = 1 + OUTPUT_KEYS.index("sparsity")  # in an image event's outputs, after #page-state


def load(client, path):
    """The page's image event through the client: ``(page_state, *OUTPUT_KEYS, gt_grid, editor)``."""
    return client.predict(handle_file(str(path)), *GRID_ONLY, api_name="/page_image")


def grids(outputs) -> tuple[str, str]:
    """The grids before and after CCA (hex, ``page.grid_hex``) that an event's ``#page-state`` message gives the
    page to draw."""
    message = json.loads(outputs[0])
    view = message.get("view", message)  # an image message carries its view
    return view["raw"], view["cca"]


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("notes.jpg", lambda: b"these are not pixels\n" * 50, r"notes\.jpg.*not a readable image"),
        ("empty.png", lambda: b"", r"empty\.png.*empty \(0 bytes\)"),
        ("corrupt.jpg", lambda: jpeg_bytes(Image.new("RGB", (640, 480), (200, 30, 30)))[:400], r"corrupt\.jpg.*(corrupt|truncated|not a readable)"),
    ],
)
def test_unreadable_files_get_a_clear_error(client, server, tmp_path, name, make, message):
    path = write(tmp_path / name, make())
    with pytest.raises(AppError, match=message):
        load(client, path)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), 0.5, 3, 0, api_name="/analyze")
    assert server.alive()


def odd_images(tmp_path):
    """(file, expected analysed size) for valid images of awkward sizes and modes."""
    files = []
    huge = Image.new("RGB", (12000, 9000), (90, 120, 60))
    huge.paste((230, 200, 40), (4000, 3000, 8000, 6000))
    files.append((write(tmp_path / "huge.jpg", jpeg_bytes(huge, quality=40)), (1024, 768)))
    del huge
    files.append((write(tmp_path / "tiny.png", _png(Image.new("RGB", (8, 8), (10, 200, 10)))), (8, 8)))
    gray = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (120, 1)))
    assert gray.mode == "L"
    files.append((write(tmp_path / "gray.png", _png(gray)), (256, 120)))
    rgba = Image.new("RGBA", (100, 60), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (20, 10, 60, 50))
    files.append((write(tmp_path / "rgba.png", _png(rgba)), (100, 60)))
    deep = Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)
    assert deep.mode == "I;16"
    files.append((write(tmp_path / "deep16.png", _png(deep)), (64, 48)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    rotated = jpeg_bytes(Image.new("RGB", (60, 40), (50, 50, 200)), exif=exif.tobytes())
    files.append((write(tmp_path / "exif.jpg", rotated), (40, 60)))
    return files


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_odd_but_valid_images_work(client, server, tmp_path):
    for path, size in odd_images(tmp_path):
        outputs = load(client, path)
        assert "Sparsity:" in outputs[SPARSITY], path.name
        raw, cca = grids(outputs)  # both grids, 4 cells to a hex digit
        assert len(raw) == len(cca) > 0 and set(raw + cca) <= set("0123456789abcdef"), path.name
        result = client.predict(handle_file(str(path)), 0.5, 3, 0, api_name="/analyze")
        assert tuple(result["image_size"]) == size, path.name
        assert 0 <= result["kept_patches"] <= 1024
    assert server.alive()


def test_app_stays_up_after_errors(client, tmp_path):
    with pytest.raises(AppError):
        load(client, write(tmp_path / "bad.jpg", b"\xff\xd8\xff garbage"))
    outputs = load(client, apphelpers.EXAMPLES / "coffee.jpg")
    assert "Sparsity:" in outputs[SPARSITY]
    # and the slider still answers for this session's image
    moved = client.predict(MODE_THRESHOLD, 0.9, 35, 3, False, False, api_name="/page_slider")
    assert "threshold 0.90" in json.loads(moved[0])["texts"]["sparsity"]  # a slider's texts travel in #page-state


def test_bad_settings_get_one_clear_message_on_every_event(client, server):
    """One validation (bavit.pruning.settings) behind every event: the same value gets the same words, never
    Gradio's generic error or an "internal error" with a logged traceback."""
    tracebacks = server.log.read_text().count("Traceback")
    chelsea = handle_file(str(apphelpers.EXAMPLES / "chelsea.jpg"))
    mode, threshold, target, cca, detect, dense = GRID_ONLY
    cases = [
        ("/page_slider", (mode, "abc", target, cca, detect, dense), "threshold must be a number, got 'abc'"),
        ("/page_image", (chelsea, mode, threshold, target, -1, detect, dense), "cca_steps is a whole number in 0..5, got -1"),
        ("/page_slider", (mode, threshold, target, 2.5, detect, dense), "cca_steps is a whole number in 0..5, got 2.5"),
        ("/analyze", (chelsea, threshold, 2.5, 0, 0), "cca_steps is a whole number in 0..5, got 2.5"),
        ("/analyze", (chelsea, True, 3, 0, 0), "threshold must be a number, got True"),
    ]
    for api_name, args, message in cases:
        with pytest.raises(AppError) as error:
            client.predict(*args, api_name=api_name)
        assert str(error.value) == message, (api_name, args)
    assert server.log.read_text().count("Traceback") == tracebacks
    assert server.alive()
