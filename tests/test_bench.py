"""Benchmark smoke test: tiny YOLOS saved with save_pretrained, random BAViT, one repeat; JSON keys and the PNG."""
import json

import pytest
import torch
from PIL import Image
from transformers import YolosConfig, YolosForObjectDetection

from bavit.bench import exact_keep_masks, spread_counts
from bavit.cli import main
from bavit.config import SMALL
from bavit.model import build_bavit, save_checkpoint


def test_exact_keep_masks_hit_the_requested_counts():
    probs = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0))
    masks = exact_keep_masks(probs, [0, 666, 1024])
    assert masks.shape == (3, 32, 32)
    assert masks.sum((1, 2)).tolist() == [0, 666, 1024]
    upsampled = torch.nn.functional.interpolate(probs[:, None], size=(32, 32), mode="nearest-exact")[:, 0]
    assert upsampled[1][masks[1]].min() >= upsampled[1][~masks[1]].max()  # the most probable patches


def test_spread_counts():
    assert spread_counts(666, 8) == [564, 593, 622, 651, 681, 710, 739, 768]
    assert sum(spread_counts(666, 8)) == 8 * 666
    assert spread_counts(1024, 4) == [1024] * 4  # 0% sparsity: nothing to spread
    assert spread_counts(1000, 4) == [976, 992, 1008, 1024]  # narrowed so the mean stays 1000
    assert spread_counts(500, 1) == [500]


def test_bench_cli_writes_json_and_plot(tmp_path, capsys):
    torch.manual_seed(0)
    bavit = save_checkpoint(build_bavit(SMALL), tmp_path / "bavit.safetensors")
    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=[64, 64], patch_size=16, num_detection_tokens=10, num_labels=3)
    YolosForObjectDetection(config).save_pretrained(tmp_path / "tiny-yolos")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(images / "red.png")
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--threads", "1", "--repeats", "1", "--warmup", "0", "--batch", "2", "--sparsity", "0", "0.35",
                 "--bavit", str(bavit), "--detector", str(tmp_path / "tiny-yolos"), "--images", str(images),
                 "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "tiny-yolos" in printed
    report = json.loads(out_json.read_text())
    assert report["threads"] == 1 and "tiny-yolos (pretrained)" in report["weights"]
    assert [row["sparsity"] for row in report["results"]] == [0.0, 0.349609]  # 666 of 1024 kept
    for row in report["results"] + report["batch2"]["results"]:
        assert {"sparsity", "dense_ms", "pruned_total_ms", "bavit_ms", "cca_ms", "pruned_yolos_ms", "speedup",
                "dense_img_per_s", "pruned_img_per_s", "peak_rss_mb", "flop_ratio"} <= set(row)
        assert row["speedup"] == row["dense_ms"] / row["pruned_total_ms"]
        # one repeat: the pipeline time is exactly the sum of its stages
        assert row["pruned_total_ms"] == pytest.approx(row["bavit_ms"] + row["cca_ms"] + row["pruned_yolos_ms"])
    assert report["batch2"]["results"][1]["kept_per_image"] == [564, 768]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_without_detector_weights_says_random_init(tmp_path):
    from bavit.bench import run_bench

    torch.manual_seed(0)
    bavit = save_checkpoint(build_bavit(SMALL), tmp_path / "bavit.safetensors")
    report = run_bench(threads=1, sparsities=[0.46], repeats=1, warmup=0, batch=0, bavit=str(bavit),
                       detector=str(tmp_path / "missing"), images=[tmp_path], log=lambda _: None)
    assert "random init" in report["weights"] and report["weights_detail"]["detector_pretrained"] is False
    assert report["results"][0]["kept_patches"] == 553 and "batch8" not in report
