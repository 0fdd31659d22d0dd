"""Latency bench: the count spread, the CLI report and plot, and what the pipeline time is."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import YolosConfig, YolosForObjectDetection

from bavit.pruning.settings import PruningSettings
from bavit.bench.latency import run_bench, spread_counts
from bavit.cli import main
from bavit.core.config import SMALL
from bavit.core.checkpoint import save_checkpoint
from bavit.core.model import build_bavit
from bavit.deploy.runtime import BACKENDS
from bavit.imageio import load_image
from bavit.predictor import Predictor
from bavit.pruning.keep_mask import keep_mask_from_probs, top_k_for_kept


def _kept(probs, ratio, grid=32):
    return int(keep_mask_from_probs(probs, PruningSettings(keep_ratio=ratio, cca_steps=3), grid=grid).keep_mask.sum())


def test_spread_counts():
    assert spread_counts(666, 8, 1024) == [564, 593, 622, 651, 681, 710, 739, 768]
    assert sum(spread_counts(666, 8, 1024)) == 8 * 666
    assert spread_counts(1024, 4, 1024) == [1024] * 4  # 0% sparsity: nothing to spread
    assert spread_counts(1000, 4, 1024) == [976, 992, 1008, 1024]  # narrowed so the mean stays 1000
    assert spread_counts(500, 1, 1024) == [500]
    assert spread_counts(50, 3, 100) == [40, 50, 60]


@pytest.fixture()
def bavit_ckpt(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(build_bavit(SMALL), tmp_path / "bavit.safetensors")


@pytest.mark.slow
def test_bench_cli_writes_json_and_plot_and_runs_yolos_on_the_rules_mask(bavit_ckpt, tmp_path, capsys):
    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=[64, 64], patch_size=16, num_detection_tokens=10, num_labels=3)
    YolosForObjectDetection(config).save_pretrained(tmp_path / "tiny-yolos")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(images / "noise.png")
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--threads", "1", "--repeats", "1", "--warmup", "0", "--batch", "2", "--sparsity", "0", "0.35",
                 "--bavit", str(bavit_ckpt), "--detector", str(tmp_path / "tiny-yolos"), "--images", str(images),
                 "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "tiny-yolos" in printed
    report = json.loads(out_json.read_text())
    assert report["threads"] == 1 and "tiny-yolos (pretrained)" in report["weights"]
    probs_of = {backend: torch.from_numpy(np.array(Predictor(bavit_ckpt, detector=None, backend=backend)
                                                   .set_image(images / "noise.png").fg_prob))
                for backend in BACKENDS}  # each backend's own BAViT (onnxruntime and onnxruntime-int8: int8)
    assert report["backend"] == "onnxruntime" and set(report["backends"]) == set(BACKENDS)
    assert "| 35% | torch |" in printed and "| 35% | onnxruntime |" in printed and "FLOP ratio at 35%" in printed
    assert "| 35% | onnxruntime-int8 |" in printed  # the int8 detector, against its own int8 dense run
    agreement = report["int8_agreement"]
    assert agreement["images"] == 2 and 0.0 < agreement["max_abs_logit_diff"] and 0.0 <= agreement["same_class_share"] <= 1.0
    assert "int8 detector vs float32 (onnxruntime, dense, 2 images): same most likely class in" in printed
    rows = [row for value in report["backends"].values() for row in value["results"] + value["batch2"]["results"]]
    assert len(rows) == 12 and {row["backend"] for row in rows} == set(BACKENDS)
    for row in rows:
        probs = probs_of[row["backend"]]
        assert {"sparsity", "dense_ms", "pruned_total_ms", "bavit_ms", "cca_ms", "pruned_yolos_ms", "speedup",
                "dense_img_per_s", "pruned_img_per_s", "peak_rss_mb", "flop_ratio"} <= set(row)
        # YOLOS ran on the masks the pipeline's rule (top-k, CCA, resample) produced, image by image
        for kept, ratio, target in zip(row["kept_per_image"], row["keep_ratio_per_image"], row["target_per_image"]):
            assert kept == _kept(probs, ratio)
            assert kept == _kept(probs, top_k_for_kept(probs, target, grid=32) / probs.numel())
        assert row["sparsity"] == pytest.approx(1 - np.mean(row["kept_per_image"]) / 1024, abs=1e-6)
    assert report["results"][0]["kept_per_image"] == [1024]
    assert abs(report["results"][1]["kept_per_image"][0] - 666) <= 12  # the closest count CCA allows to 35%
    assert report["batch2"]["results"][1]["target_per_image"] == [564, 768]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class FakeClock:
    """``time`` for bavit.bench.latency: only the stages below move it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1000.0


def test_pipeline_time_is_exactly_the_sum_of_its_stages(bavit_ckpt, tmp_path, monkeypatch):
    """A fake clock that only the stages move (BAViT 7 ms, the keep-mask rule 1 ms per image, the dense detector
    100 ms, the pruned one 40 ms): the bench's pipeline time is exactly their sum, so a stage left out of the timed
    region (or timed twice) would show. No wall clock involved."""
    from bavit.bench import latency

    clock = FakeClock()
    monkeypatch.setattr(latency, "time", clock)
    predictor = Predictor(bavit_ckpt, detector=str(tmp_path / "missing"), backend="torch")
    bavit, detector = predictor.bavit_runner, predictor.detector_runner
    rule = predictor.select  # the keep-mask rule, as the bench calls it

    def timed_bavit(pixels):
        clock.advance(7.0)
        return bavit(pixels)

    def timed_detector(pixels, keep_mask=None):
        clock.advance(100.0 if keep_mask is None else 40.0)
        return detector(pixels, keep_mask)

    def timed_rule(*args, **kwargs):
        clock.advance(1.0)
        return rule(*args, **kwargs)

    predictor._runners.update(bavit=timed_bavit, detector=timed_detector)  # Predictor._runner's cache
    monkeypatch.setattr(predictor, "select", timed_rule)
    images = [load_image(np.random.default_rng(seed).integers(0, 256, (300, 400, 3), dtype=np.uint8)) for seed in (1, 2)]
    probs = torch.from_numpy(np.stack([predictor.set_image(image).fg_prob for image in images]))
    pixels = torch.cat([predictor.yolos_pixels(image) for image in images])
    row = latency._bench_level(predictor, images, pixels, probs, [600, 500], repeats=3, warmup=1)
    expected = {"dense_ms": 100.0, "bavit_ms": 7.0, "cca_ms": 2.0, "pruned_yolos_ms": 40.0, "pruned_total_ms": 49.0}
    assert {key: row[key] for key in expected} == pytest.approx(expected, abs=1e-9)
    assert row["speedup"] == pytest.approx(100.0 / 49.0, rel=1e-9)
    assert len(row["kept_per_image"]) == 2 and row["target_per_image"] == [600, 500]
    assert row["dense_img_per_s"] == pytest.approx(2 * 1000.0 / 100.0) and row["repeats"] == 3


def test_without_detector_weights_the_report_says_random_init(bavit_ckpt, tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    report = run_bench(threads=1, sparsities=[0.35], repeats=1, warmup=0, batch=0, bavit=str(bavit_ckpt),
                       backends=["torch"], detector=str(tmp_path / "missing"), images=[tmp_path], log=lambda _: None)
    assert "random init" in report["weights"] and report["weights_detail"]["detector_pretrained"] is False
    assert "batch8" not in report and len(report["results"]) == 1
