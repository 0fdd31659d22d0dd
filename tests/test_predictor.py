"""Predictor: a random BAViT checkpoint and a tiny YOLOS saved with save_pretrained (same loading path as real weights)."""
import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTModel, YolosConfig, YolosForObjectDetection
from transformers.image_transforms import center_to_corners_format

from bavit.core.config import SMALL
from bavit.core.checkpoint import save_checkpoint
from bavit.core.model import build_bavit
from bavit.errors import CheckpointError, ConfigError, WeightsUnavailableError
from bavit import Predictor, build_predictor
from bavit.pruning.settings import PruningSettings

LABELS = {0: "cat", 1: "dog", 2: "kite"}


@pytest.fixture(scope="module")
def bavit_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_bavit(SMALL), tmp_path_factory.mktemp("bavit") / "bavit-small-random.safetensors")


@pytest.fixture(scope="module")
def yolos_dir(tmp_path_factory):
    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=[64, 64], patch_size=16, num_detection_tokens=10, num_labels=3,
                         id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    torch.manual_seed(0)
    model = YolosForObjectDetection(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp("yolos") / "tiny-yolos"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def predictor(bavit_ckpt, yolos_dir):
    return Predictor(bavit=bavit_ckpt, detector=str(yolos_dir), score_threshold=0.0)


def photo(width=300, height=200, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_shapes_and_grids(predictor):
    result = predictor.analyze(photo(), PruningSettings(threshold=0.5))
    assert predictor.detector_ready and "tiny-yolos" in predictor.detector_status
    assert result.fg_prob.shape == (24, 24) and result.fg_prob.dtype == np.float32
    assert result.grid_raw.shape == result.grid_cca.shape == (24, 24) and result.grid_raw.dtype == np.bool_
    assert result.keep_mask.shape == (32, 32) and result.keep_mask.dtype == np.bool_
    assert np.array_equal(result.grid_raw, result.fg_prob >= 0.5)
    assert not (result.grid_raw & ~result.grid_cca).any()  # grid_raw is a subset of grid_cca
    assert result.image_size == (300, 200)
    acc = result.accounting
    assert acc.kept_patches == int(result.keep_mask.sum()) and acc.bavit_tokens == 1152
    assert acc.yolos_dense_tokens == 1024 * 2  # this tiny detector has 2 layers
    assert {"bavit_ms", "cca_ms", "pruned_ms", "total_ms"} <= set(result.timings_ms)
    assert len(result.detections) == 10  # score threshold 0: every detection token
    for det in result.detections:
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= 300 and 0 <= y0 <= y1 <= 200
        assert det["label"] in LABELS.values() and 0 <= det["score"] <= 1


def test_boxes_are_the_models_own_in_original_pixels(predictor):
    image = photo(320, 160, seed=3)
    result = predictor.analyze(image, PruningSettings(keep_ratio=1.0), dense=True)
    assert result.keep_mask.all()
    rgb = Image.fromarray(image)
    with torch.no_grad():
        out = predictor.detector(pixel_values=predictor.yolos_pixels(rgb))
    probs = out.logits.softmax(-1)[0, :, :-1]
    best = int(probs.max(-1).values.argmax())
    corners = center_to_corners_format(out.pred_boxes[0, best]) * torch.tensor([320, 160, 320, 160])
    top = result.detections[0]
    assert top["score"] == pytest.approx(float(probs[best].max()), abs=1e-5)
    assert top["label"] == LABELS[int(probs[best].argmax())]
    expected = corners.clamp(min=0).minimum(torch.tensor([320.0, 160, 320, 160]))
    assert np.allclose(top["box"], expected.tolist(), atol=1e-3)
    # nothing pruned: pruned detections equal the dense model's
    assert [d["label"] for d in result.dense_detections] == [d["label"] for d in result.detections]
    assert np.allclose([d["box"] for d in result.dense_detections], [d["box"] for d in result.detections], atol=1e-3)
    assert "dense_ms" in result.timings_ms


def test_keep_ratio_gives_the_requested_count(predictor):
    for ratio, count in [(0.25, 144), (0.5, 288), (1.0, 576), (0.001, 1)]:
        result = predictor.analyze(photo(seed=1), PruningSettings(keep_ratio=ratio, cca_steps=0), detect=False)
        assert int(result.grid_raw.sum()) == count
        assert np.array_equal(result.grid_cca, result.grid_raw)  # 0 CCA steps
    top = predictor.analyze(photo(seed=1), PruningSettings(keep_ratio=0.25), detect=False)
    assert result.fg_prob[top.grid_raw].min() >= result.fg_prob[~top.grid_raw].max()
    with pytest.raises(ConfigError, match="keep_ratio"):
        predictor.analyze(photo(), PruningSettings(keep_ratio=0.0))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_batch_steps_give_the_single_image_steps_results(bavit_ckpt, yolos_dir, backend):
    """set_images + predict_batch (what the evaluations and benchmarks call) prune and detect exactly what
    set_image + predict (what the app calls) give image by image, for every kind of setting."""
    from bavit.predictor import detection_dicts

    pred = Predictor(bavit=bavit_ckpt, detector=str(yolos_dir), backend=backend, score_threshold=0.0)
    images = [Image.fromarray(photo(300, 200, seed=3)), Image.fromarray(photo(160, 240, seed=4))]
    batch = pred.set_images(images)
    assert batch.fg_prob.shape == (2, 24, 24) and batch.pixels.shape == (2, 3, 512, 512)
    assert batch.sizes == [(200, 300), (240, 160)]
    single = [pred.set_image(image) for image in images]
    np.testing.assert_allclose(batch.fg_prob.numpy(), np.stack([p.fg_prob for p in single]), atol=1e-5)
    threshold = float(np.median(batch.fg_prob.numpy()))
    for settings in (PruningSettings(threshold=threshold), PruningSettings(keep_ratio=0.4, cca_steps=1)):
        result = pred.predict_batch(batch, settings)
        found = pred.post_process(result.outputs, batch.sizes)
        for i, prepared in enumerate(single):
            analysis = pred.predict(prepared, settings)
            assert np.array_equal(result.selection.keep_mask[i].numpy(), analysis.keep_mask)
            assert result.kept_patches[i] == analysis.accounting.kept_patches
            mine = detection_dicts(found[i], pred.yolos_config.id2label, images[i].size)
            assert len(mine) == len(analysis.detections) == 10
            for a, b in zip(sorted(mine, key=lambda d: d["box"]), sorted(analysis.detections, key=lambda d: d["box"])):
                assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
                assert a["box"] == pytest.approx(b["box"], abs=1e-2)
    dense = pred.predict_batch(batch, None)
    assert dense.selection is None and dense.kept_patches == [1024, 1024] and dense.outputs.logits.shape[0] == 2
    with pytest.raises(ConfigError, match="needs BAViT"):
        pred.predict_batch(pred.set_images(images, bavit=False), PruningSettings(threshold=0.5))


def test_set_image_once_then_cheap_predictions(bavit_ckpt, yolos_dir):
    pred = Predictor(bavit=bavit_ckpt, detector=str(yolos_dir))
    image = photo(seed=7)
    prepared = pred.set_image(image)
    assert pred.bavit_runs == 1 and prepared.bavit_ms > 0 and prepared.image.size == (300, 200)
    assert not prepared.fg_prob.flags.writeable
    for threshold in (0.2, 0.5, 0.8):  # what a slider does: no BAViT rerun
        result = pred.predict(prepared, PruningSettings(threshold=threshold), detect=False)
        assert np.array_equal(result.grid_raw, prepared.fg_prob >= threshold)
    pred.predict(prepared, PruningSettings(keep_ratio=0.3, cca_steps=1))
    assert pred.bavit_runs == 1
    again = pred.set_image(Image.fromarray(image.copy()))  # same content, new object: from the cache
    assert pred.bavit_runs == 1 and again.bavit_ms == 0.0 and again.key == prepared.key
    assert np.array_equal(again.fg_prob, prepared.fg_prob)
    one_shot = pred.analyze(image, PruningSettings(threshold=0.5), detect=False)  # analyze = predict(set_image(image))
    assert np.array_equal(one_shot.keep_mask, pred.predict(prepared, PruningSettings(threshold=0.5), detect=False).keep_mask)
    pred.set_image(photo(seed=8))
    assert pred.bavit_runs == 2
    with pytest.raises(ConfigError, match="not both"):
        pred.predict(prepared, PruningSettings(threshold=0.5, keep_ratio=0.5))


def test_cache_is_lru(bavit_ckpt):
    pred = Predictor(bavit=bavit_ckpt, detector=None, cache_size=2)
    images = [photo(64, 64, seed=s) for s in range(3)]
    for img in images:
        pred.set_image(img)
    assert pred.bavit_runs == 3 and len(pred._cache) == 2
    pred.set_image(images[2])
    assert pred.bavit_runs == 3  # still cached
    pred.set_image(images[0])
    assert pred.bavit_runs == 4  # evicted earlier


def test_run_bavit_is_set_image_without_the_cache(bavit_ckpt):
    pred = Predictor(bavit=bavit_ckpt, detector=None, backend="torch")
    image = Image.fromarray(photo(300, 200, seed=5))
    probs = pred.run_bavit(image)
    assert pred.bavit_runs == 0 and probs.dtype == np.float32 and probs.shape == (24, 24)
    assert np.array_equal(probs, pred.set_image(image).fg_prob) and pred.bavit_runs == 1


def test_set_image_without_waiting_runs_torch_until_the_backend_runner_is_built(bavit_ckpt):
    """A server's first requests do not wait for the onnxruntime export: ``wait=False`` runs the torch model while
    the runner is not built, says so, and caches nothing; once built, the backend's graph runs and is cached."""
    pred = Predictor(bavit=bavit_ckpt, detector=None, backend="onnxruntime", bavit_int8=False)
    image = photo(300, 200, seed=5)
    first = pred.set_image(image, wait=False)
    assert first.bavit_graph == "torch float32" and not pred.built("bavit") and pred.bavit_runs == 1
    again = pred.set_image(image, wait=False)  # not cached: torch ran again
    assert again.bavit_graph == "torch float32" and pred.bavit_runs == 2 and np.array_equal(again.fg_prob, first.fg_prob)
    served = pred.set_image(image)  # waits: builds the runner
    assert pred.built("bavit") and served.bavit_graph == "onnxruntime float32" and pred.bavit_runs == 3
    assert np.abs(served.fg_prob - first.fg_prob).max() <= 1e-5  # the float32 graph equals torch
    cached = pred.set_image(image, wait=False)
    assert cached.bavit_ms == 0.0 and cached.bavit_graph == "" and cached.fg_prob is served.fg_prob
    assert pred.bavit_runs == 3


def test_concurrent_predictions_equal_serial_ones(bavit_ckpt, yolos_dir):
    """Threads sharing one Predictor (as the app's workers do) get exactly what one thread gets alone."""
    pred = Predictor(bavit=bavit_ckpt, detector=str(yolos_dir), score_threshold=0.0, cache_size=2)
    images = [photo(96, 64, seed=s) for s in range(4)]
    jobs = [(i % 4, dict(threshold=0.3 + 0.1 * (i % 3)) if i % 2 else dict(keep_ratio=0.2 + 0.1 * (i % 5)))
            for i in range(24)]

    def run(job):
        index, settings = job
        result = pred.predict(pred.set_image(images[index]), PruningSettings(cca_steps=index % 3, **settings))
        return result.keep_mask, [d["box"] for d in result.detections], result.fg_prob

    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(run, jobs))
    for (mask, boxes, probs), (mask2, boxes2, probs2) in zip(serial, parallel):
        assert np.array_equal(mask, mask2) and np.array_equal(probs, probs2)
        assert np.allclose(boxes, boxes2, atol=1e-5)
    assert len(pred._cache) == 2


def test_build_predictor_by_preset_name(bavit_ckpt):
    pred = build_predictor("small", checkpoint=bavit_ckpt, detector=None)
    assert pred.bavit.config.depth == 2 and not pred.detector_requested
    with pytest.raises(CheckpointError, match="not large"):
        build_predictor("large", checkpoint=bavit_ckpt, detector=None)
    with pytest.raises(ConfigError, match="unknown BAViT preset"):
        build_predictor("medium")
    with pytest.raises(CheckpointError, match="no BAViT-large is shipped"):
        build_predictor("large", detector=None)


@pytest.mark.slow
def test_no_process_wide_side_effects(bavit_ckpt):
    """Importing the package and building a Predictor leave torch's threads, PIL's bound and matplotlib alone."""
    code = (
        "import torch, PIL.Image as I; threads, bound = torch.get_num_threads(), I.MAX_IMAGE_PIXELS\n"
        "import bavit, bavit.predictor, bavit.bench.latency, bavit.engine.coco_map, bavit.app.ui\n"
        "import matplotlib; backend = matplotlib.rcParams._get_backend_or_none()\n"
        f"bavit.predictor.Predictor({str(bavit_ckpt)!r}, detector=None)\n"
        "print(torch.get_num_threads() == threads, I.MAX_IMAGE_PIXELS == bound, backend)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "True", "None"], out.stderr


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_any_image_mode_and_size(predictor):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated = _encode(Image.fromarray(photo(120, 60)), "JPEG", exif=exif)
    cases = {
        "grayscale": (Image.fromarray(photo()[..., 0]), (300, 200)),
        "rgba": (Image.fromarray(np.dstack([photo(), np.full((200, 300), 128, np.uint8)])), (300, 200)),
        "16-bit": (Image.fromarray((np.arange(100 * 80).reshape(80, 100) * 8).astype(np.uint16)), (100, 80)),
        "exif-rotated": (rotated, (60, 120)),
        "tiny 8x8": (photo(8, 8), (8, 8)),
        "big": (np.zeros((4000, 5000), np.uint8), (2048, 1638)),
    }
    for name, (image, size) in cases.items():
        result = predictor.analyze(image)
        assert result.image_size == size, name
        assert result.keep_mask.shape == (32, 32) and len(result.detections) == 10, name
        assert all(det["box"][2] <= size[0] and det["box"][3] <= size[1] for det in result.detections), name


@pytest.mark.slow
def test_missing_detector_dir_gives_no_detections_and_times_random_init(bavit_ckpt, tmp_path):
    pred = Predictor(bavit=bavit_ckpt, detector=str(tmp_path / "no-such-yolos"), backend="torch")
    assert not pred.detector_ready and pred.detector_requested
    assert "not found" in pred.detector_status and "save_pretrained" in pred.detector_status  # how to get them
    result = pred.analyze(photo(), PruningSettings(threshold=0.5), dense=True)
    assert result.detections is None and result.dense_detections is None
    assert set(result.timings_ms) == {"bavit_ms", "cca_ms", "total_ms"}  # no detector ran
    assert result.accounting.yolos_dense_tokens == 12288
    # what the benchmarks and the app time instead: the YOLOS-tiny architecture at random init, never post-processed
    assert pred.latency_model.config.hidden_size == 192 and pred.latency_model.config.num_hidden_layers == 12
    outputs = pred.run_detector(pred.yolos_pixels(Image.fromarray(photo())), torch.from_numpy(result.keep_mask)[None])
    assert outputs.logits.shape == (1, 100, 92)
    with pytest.raises(WeightsUnavailableError, match="no detector weights"):
        pred.post_process(outputs, [(200, 300)])


def test_the_mac_count_is_computed_when_the_predictor_is_built(bavit_ckpt):
    """BAViT's MAC count builds a meta-device copy through torch code with global state: the Predictor computes it
    in the thread that builds it, so no event thread does it beside an ONNX export in another thread."""
    from bavit.pruning.accounting import _embed_macs

    _embed_macs.cache_clear()
    Predictor(bavit=bavit_ckpt, detector=None, backend="torch")
    assert _embed_macs.cache_info().currsize == 1


def test_no_detector_and_non_yolos_detector(bavit_ckpt, tmp_path):
    pred = Predictor(bavit=bavit_ckpt, detector=None)
    result = pred.analyze(photo())
    assert result.detections is None and "pruned_ms" not in result.timings_ms
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "vit")
    with pytest.raises(ConfigError, match="not YOLOS"):
        Predictor(bavit=bavit_ckpt, detector=str(tmp_path / "vit"))
