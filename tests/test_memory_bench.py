"""The memory bench's pure parts (``python -m benchmarks.upload_memory``): its crafted files are what they claim, its event
lookup and its table. No server, no timing, no memory figures here (those are the bench's output)."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import IcnsImagePlugin, IcoImagePlugin, Image

from bavit.app.uploads import MAX_IMAGE_PIXELS, MAX_UPLOAD
from benchmarks import crafted_images as crafted
from benchmarks.app_requests import Refused, Server
from benchmarks.upload_memory import CASES, RUNS, Files, _children, measure, table_row


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR (read, not decoded)."""
    assert png[:8] == crafted.PNG_MAGIC and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def idat_bytes(png: bytes) -> tuple[int, bool]:
    """How many bytes the PNG's pixel stream inflates to (streamed, never held), and whether the stream ends."""
    start = png.index(b"IDAT") - 4
    length = struct.unpack(">I", png[start:start + 4])[0]
    data, inflater, total = png[start + 8:start + 8 + length], zlib.decompressobj(), 0
    assert zlib.crc32(png[start + 4:start + 8 + length]) & 0xFFFFFFFF == struct.unpack(
        ">I", png[start + 8 + length:start + 12 + length])[0]  # a valid chunk: only its content stops short
    while data:
        chunk = inflater.decompress(data, 2**24)
        assert not any(chunk[::4096])  # all zeros (sampled)
        total, data = total + len(chunk), inflater.unconsumed_tail
    return total, inflater.eof


def test_zero_png_decodes_to_zeros(tmp_path):
    path = crafted.zero_png(tmp_path / "z.png", 40, 30)
    image = Image.open(path)
    assert image.size == (40, 30) and image.mode == "RGB"
    assert not np.asarray(image).any()


@pytest.mark.slow  # builds and inflates a 225 MP PNG twice: seconds
def test_the_icons_hold_a_15000_png_and_are_under_1_mb(tmp_path):
    files = Files(tmp_path)
    for path in (files.ico, files.icns):
        assert path.stat().st_size < 1_000_000
        png = crafted.embedded_png(path)
        assert png_size(png) == (15000, 15000)
        assert idat_bytes(png) == (15000 * (1 + 3 * 15000), True)  # every row, the stream complete
    with files.ico.open("rb") as handle:  # the directory only: opening the ICO with Pillow would decode it
        entry = IcoImagePlugin.IcoFile(handle).entry[0]
    assert entry.dim == (256, 256) and files.ico.read_bytes()[entry.offset:entry.offset + 8] == crafted.PNG_MAGIC
    icns = Image.open(files.icns)  # ICNS decodes on load(), not on open
    assert icns.format == "ICNS" and icns.size == (1024, 1024)


@pytest.mark.filterwarnings("ignore:Image was not the expected size")
def test_pillow_decodes_the_png_inside_the_icons(tmp_path):
    png = crafted.zero_png_bytes(64, 48)
    ico = Image.open(crafted.ico_holding(tmp_path / "s.ico", png))
    assert ico.format == "ICO" and ico.size == (64, 48)  # decoded while opening: the header said 256x256
    with crafted.icns_holding(tmp_path / "s.icns", png).open("rb") as handle:
        assert IcnsImagePlugin.IcnsFile(handle).getimage((512, 512, 2)).size == (64, 48)


def test_the_corrupt_png_says_50_mp_and_holds_most_of_its_rows(tmp_path):
    path = crafted.truncated_png(tmp_path / "c.png", MAX_IMAGE_PIXELS)
    png = path.read_bytes()
    width, height = png_size(png)
    assert MAX_IMAGE_PIXELS - width < width * height <= MAX_IMAGE_PIXELS  # ~50 MP: accepted from its header
    inflated, ended = idat_bytes(png)
    assert not ended and inflated == int(height * 0.9) * (1 + 3 * width)  # 90% of the rows, then it stops
    assert png.endswith(b"IEND\xaeB`\x82") and len(png) < 1_000_000


def test_pillow_fails_on_the_corrupt_png_only_after_decoding(tmp_path):
    image = Image.open(crafted.truncated_png(tmp_path / "c.png", 120_000))
    with pytest.raises(OSError, match="truncated"):
        image.load()


def test_the_photo_is_a_12_mp_jpeg_under_the_upload_limit(tmp_path):
    path = Files(tmp_path).photo
    image = Image.open(path)
    assert image.format == "JPEG" and image.size == (4000, 3000)
    assert path.stat().st_size < int(MAX_UPLOAD.removesuffix("mb")) * 10**6


def test_every_case_has_its_runs_and_files_stay_in_their_folder(tmp_path):
    assert set(RUNS) == set(CASES) and all(RUNS[case] for case in CASES)
    assert [label for label, _, _ in RUNS["run-predict"]] == ["run-predict", "run-predict via queue"]
    files = Files(tmp_path)
    assert files.corrupt.parent == tmp_path and files.photo.parent == tmp_path


def test_events_are_found_by_api_name_or_by_trigger():
    config = {"components": [{"id": 1, "props": {"elem_id": "input-image"}}, {"id": 2, "props": {}},
                             {"id": 3, "props": {"elem_id": "gt-apply"}}],
              "dependencies": [{"id": 0, "api_name": None, "targets": [[2, "change"]]},
                               {"id": 4, "api_name": False, "targets": [[1, "upload"]]},
                               {"id": 5, "api_name": False, "targets": [[1, "change"]]},
                               {"id": 6, "api_name": False, "targets": [[3, "click"]]},
                               {"id": 7, "api_name": "analyze", "targets": [[9, "click"]]}]}
    server = Server("http://127.0.0.1:1/", 0, config)
    assert server.fn(api_name="analyze") == 7
    assert server.fn(elem_id="input-image") == 5
    assert server.fn(elem_id="gt-apply", trigger="click") == 6
    with pytest.raises(LookupError):
        server.fn(api_name="no_such_event")


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/clear_refs").exists(), reason="Linux /proc")
def test_measure_counts_successes_and_refusals():
    def refused():
        raise Refused("'x.png' is\n 15000x15000 px")

    row = measure(os.getpid(), [lambda: None, refused, refused], settle=0)
    assert (row["calls"], row["ok"], row["refused"]) == (3, 1, 2)
    assert row["first_refusal"] == "'x.png' is 15000x15000 px"  # one line
    assert set(row) >= {"rss_before_mib", "peak_mib", "peak_increase_mib", "held_mib", "seconds"}


def test_the_quiet_wait_sees_a_child_process_until_it_exits():
    """What the bench waits for before it measures: the app's export child has exited."""
    import subprocess
    import sys

    before = _children(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    assert set(_children(os.getpid())) == {*before, str(child.pid)}
    child.communicate(b"")
    assert set(_children(os.getpid())) == set(before)


def test_table_rows():
    row = {"case": "ico", "calls": 6, "rss_before_mib": 1400.4, "peak_mib": 6534.6, "peak_increase_mib": 5134.2,
           "held_mib": 5100.0, "seconds": 12.34, "ok": 0, "refused": 6, "load": 1.5, "first_refusal": "a | b"}
    assert table_row(row) == "| ico | 6 | 1400 | 6535 | +5134 | +5100 | 12.3 | 0 | 6 | 1.50 | a \\| b |"
    assert table_row({"case": "paint", "error": "RuntimeError: app exited"}) == \
        "| paint | bench error: RuntimeError: app exited |"
    assert table_row({**row, "first_refusal": "x" * 500}).endswith("x... |")  # cut to one short cell
