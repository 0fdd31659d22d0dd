"""The browser slider bench (benchmarks/browser_bench.py) end to end: a real app on tiny models, Debian's chromium,
three timed changes per mode, then the gradio_client line."""
from __future__ import annotations

import argparse
from pathlib import Path

import apphelpers
import pytest

from benchmarks import browser_bench

if not Path(apphelpers.CHROMIUM).exists():
    pytest.skip(f"{apphelpers.CHROMIUM} not found (install Debian's chromium: apt-get install chromium)",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    browser_bench.add_arguments(parser)  # python -m benchmarks.browser_bench's options, --chromium included
    return parser.parse_args(argv)


@pytest.mark.slow
def test_browser_bench_end_to_end(capsys):
    args = parse(["--changes", "3", "--threads", "1", "--bavit", str(apphelpers.calibrated_bavit_checkpoint()),
                  "--detector", str(apphelpers.tiny_yolos_dir())])
    assert args.chromium == apphelpers.CHROMIUM
    results = browser_bench.browser_results(args)  # browser_bench.run_browser with those options

    browser = results["browser"]
    assert browser["mode"] == "Mean sparsity (calibrated)"  # the page's default with a calibrated checkpoint
    for key in ("grid_only", "with_detector", "with_detector_topk", "during_ladder"):
        row = browser[key]
        assert row["changes"] == 3 and len(row["all_ms"]) == 3
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["max_ms"] < 60_000
        if key in results["gradio_client"]:
            assert results["gradio_client"][key]["changes"] == 3
    assert browser["grid_only_in_page"] == 3 + browser_bench.WARMUP  # every grid-only change answered in the page
    assert "YOLOS pruned" in browser["latency_panel"]  # the detector changes showed the pruned detector's latency
    assert browser["with_detector_asks"] == 0  # the ladder was done: every detector change answered in the page
    assert browser["ladder_masks"] > 1 and 0 < browser["ladder_s"] < 120
    others = browser["other_session"]
    assert others["idle"]["changes"] == 8 and others["ratio"] is None or others["ratio"] > 0
    assert results["detector_status"].startswith("Detector:")  # the tiny YOLOS loaded

    browser_bench.print_browser(results)
    out = capsys.readouterr().out
    assert "3 changes in the default mode (Mean sparsity (calibrated))" in out
    assert "target <= 50 ms" in out and "target <= 60 ms" in out and "target <= 250 ms" in out
    assert "keep masks in" in out and "while the ladder runs" in out
    assert "gradio_client round trip" in out and out.count("median") == 7  # grid, detector, top-k, ladder, another session; client x2


def test_missing_browser_is_a_clear_error(tmp_path):
    args = parse(["--changes", "3", "--chromium", str(tmp_path / "no-chromium")])
    with pytest.raises(SystemExit, match="no browser at"):
        browser_bench.browser_results(args)
    with pytest.raises(SystemExit, match="--changes must be >= 1"):
        browser_bench.browser_results(parse(["--changes", "0"]))
