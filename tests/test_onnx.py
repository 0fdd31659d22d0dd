"""ONNX export and the onnxruntime backend against the torch models (tiny YOLOS from a config, no download)."""
import json

import onnx
import pytest
import torch
from transformers import YolosConfig, YolosForObjectDetection

from apphelpers import EXAMPLES

from bavit.core.config import SMALL, BAViTConfig
from bavit.core.model import build_bavit
from bavit.deploy.export import (
    FILES,
    ExportProcess,
    export_bavit,
    export_dense_yolos,
    export_pruned_yolos,
    quantize_bavit,
    quantize_yolos,
)
from bavit.deploy.runtime import OrtBAViT, OrtDetector, TorchDetector
from bavit.pruning.yolos import patch_yolos

SIZE = 512  # the pipeline's YOLOS input: a 32x32 grid, so K runs from 1 to 1024
CELLS = 1024
NUM_DET = 6


def tiny_yolos(mid: bool = False, seed: int = 0):
    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=[384, 640], patch_size=16, num_detection_tokens=NUM_DET, num_labels=4,
                         use_mid_position_embeddings=mid)
    torch.manual_seed(seed)
    model = YolosForObjectDetection(config).eval()
    with torch.no_grad():  # the default init leaves CLS/det/position embeddings at zero: make them matter
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return patch_yolos(model)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "mid-pos"])
def detectors(request):
    model = tiny_yolos(mid=request.param)
    return model, OrtDetector.from_model(model, SIZE, threads=2)


def pixels(batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def keep_mask(batch: int, counts, seed: int = 3) -> torch.Tensor:
    """``batch`` masks on the 32x32 grid keeping exactly ``counts[b]`` random cells."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, CELLS, dtype=torch.bool)
    for b, count in enumerate(counts):
        mask[b, torch.randperm(CELLS, generator=generator)[:count]] = True
    return mask.reshape(batch, 32, 32)


def max_diff(a, b) -> float:
    return float((a.logits - b.logits).abs().max().item()), float((a.pred_boxes - b.pred_boxes).abs().max().item())


@pytest.mark.slow
def test_pruned_graph_with_every_patch_kept_equals_torch_dense(detectors):
    model, ort_detector = detectors
    x = pixels()
    with torch.no_grad():
        dense = model(pixel_values=x)  # transformers' own forward, unpruned
    everything = torch.ones(1, 32, 32, dtype=torch.bool)
    assert max(max_diff(ort_detector(x, everything), dense)) <= 1e-4
    assert max(max_diff(ort_detector(x), dense)) <= 1e-4  # and the dense graph


@pytest.mark.parametrize("count", [1, 2, 37, 512, 1023, 1024])
def test_pruned_graph_equals_torch_pruned_at_every_kept_count(detectors, count):
    model, ort_detector = detectors
    x, mask = pixels(seed=count), keep_mask(1, [count], seed=count)
    expected = TorchDetector(model)(x, mask)
    got = ort_detector(x, mask)
    assert got.logits.shape == (1, NUM_DET, 5) and got.pred_boxes.shape == (1, NUM_DET, 4)
    assert max(max_diff(got, expected)) <= 1e-4


def test_batch_with_different_counts_runs_per_image_and_equals_torch(detectors):
    model, ort_detector = detectors
    x, mask = pixels(batch=3, seed=5), keep_mask(3, [1024, 300, 9], seed=5)
    assert max(max_diff(ort_detector(x, mask), TorchDetector(model)(x, mask))) <= 1e-4


def test_nothing_kept_still_returns_every_detection(detectors):
    model, ort_detector = detectors
    x = pixels(seed=7)
    nothing = torch.zeros(1, 32, 32, dtype=torch.bool)
    assert max(max_diff(ort_detector(x, nothing), TorchDetector(model)(x, nothing))) <= 1e-4


def test_detector_refuses_other_input_sizes_and_bad_masks(detectors):
    _, ort_detector = detectors
    with pytest.raises(Exception, match="exported for 512x512"):
        ort_detector(torch.zeros(1, 3, 256, 256))
    with pytest.raises(ValueError, match="keep_mask must have shape"):
        ort_detector(pixels(), torch.ones(1, 24, 24, dtype=torch.bool))


@pytest.mark.parametrize("stem", ["patch", "conv", "lite0"])
@pytest.mark.slow
def test_bavit_onnxruntime_probabilities_equal_torch(stem):
    config = BAViTConfig(**{**json.loads(SMALL.to_json()), "stem": stem})
    torch.manual_seed(0)
    model = build_bavit(config).eval()
    if stem != "patch":  # give the BatchNorms statistics, so folding them matters
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 384, 384, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.fg_prob(x)
    got = OrtBAViT.from_model(model, threads=2)(x)
    assert got.shape == (3, 24, 24)
    assert float((got - expected).abs().max()) <= 1e-5


def test_exported_graphs_have_the_documented_inputs_and_pass_the_checker():
    model = tiny_yolos()
    torch.manual_seed(0)
    bavit = build_bavit(SMALL)
    graphs = {"bavit": export_bavit(bavit), "bavit_int8": quantize_bavit(bavit),
              "yolos_pruned": export_pruned_yolos(model, SIZE),
              "yolos_dense": export_dense_yolos(model, SIZE)}
    shapes = {}
    for name, blob in graphs.items():
        proto = onnx.load_from_string(blob)
        onnx.checker.check_model(proto, full_check=True)
        shapes[name] = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
                        for i in proto.graph.input}
    assert shapes["bavit"]["pixels"][1:] == [3, 384, 384] and isinstance(shapes["bavit"]["pixels"][0], str)
    assert shapes["bavit_int8"] == shapes["bavit"]
    assert shapes["yolos_pruned"]["pixel_values"] == [1, 3, SIZE, SIZE]
    assert len(shapes["yolos_pruned"]["keep_index"]) == 1 and isinstance(shapes["yolos_pruned"]["keep_index"][0], str)
    assert shapes["yolos_dense"]["pixel_values"][1:] == [3, SIZE, SIZE]
    assert set(FILES) == set(graphs)


def test_int8_bavit_stays_close_to_float_and_only_quantizes_matmuls():
    torch.manual_seed(0)
    model = build_bavit(SMALL).eval()
    x = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model.fg_prob(x)
    runner = OrtBAViT.from_model(model, threads=2, int8=True)
    got = runner(x)
    assert 0.0 < float((got - expected).abs().max()) <= 0.05  # quantized: close, not equal
    # an image's probabilities do not depend on the rest of its batch (activation scales are per call)
    assert torch.equal(runner(x[1:]), got[1:]) and torch.equal(runner(torch.cat([x[1:], x[:1]]))[0], got[1])
    ops = {node.op_type for node in onnx.load_from_string(quantize_bavit(model)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert "ConvInteger" not in ops  # the stem stays float32


@pytest.fixture(scope="module")
def int8_detectors():
    model = tiny_yolos()
    return model, OrtDetector.from_model(model, SIZE, threads=2), OrtDetector.from_model(model, SIZE, threads=2,
                                                                                          int8=True)


def test_int8_pruned_graph_with_every_patch_kept_equals_the_int8_dense_one(int8_detectors):
    _, _, int8 = int8_detectors
    x = pixels()
    dense, kept_all = int8(x), int8(x, torch.ones(1, 32, 32, dtype=torch.bool))
    # the same tokens in the same order: the same per-call activation scales, so the same numbers
    assert max_diff(dense, kept_all) <= (1e-5, 1e-5)
    assert int8.backend == "onnxruntime-int8"
    for graph in quantize_yolos(int8_detectors[0], SIZE):
        ops = {node.op_type for node in onnx.load_from_string(graph).graph.node}
        assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
        assert "ConvInteger" not in ops  # the patch embedding stays float32


def test_int8_detector_is_close_to_float32_and_each_image_is_its_own(int8_detectors):
    _, float32, int8 = int8_detectors
    x, mask = pixels(batch=2, seed=5), keep_mask(2, (700, 300))
    for keep in (None, mask):
        exact, quantized = float32(x, keep), int8(x, keep)
        logit_diff, box_diff = max_diff(exact, quantized)
        assert 0.0 < logit_diff < 0.5 and box_diff < 0.1  # quantized: close, not equal
        alone = int8(x[1:], None if keep is None else keep[1:])  # a batch runs image by image: no shared scale
        assert torch.equal(alone.logits[0], quantized.logits[1]) and torch.equal(alone.pred_boxes[0],
                                                                                 quantized.pred_boxes[1])


def test_the_int8_backend_runs_the_whole_pipeline():
    from bavit.deploy.runtime import BACKENDS, detector_runner

    assert "onnxruntime-int8" in BACKENDS
    model = tiny_yolos()
    runner = detector_runner(model, "onnxruntime-int8", SIZE, threads=1)
    assert isinstance(runner, OrtDetector) and runner.int8 and runner.backend == "onnxruntime-int8"
    assert detector_runner(model, "onnxruntime", SIZE, threads=1).backend == "onnxruntime"


def test_static_int8_graphs_hold_qdq_nodes_and_are_measured_against_float32(synthetic_coco, tmp_path, capsys):
    """bavit.bench.static_int8: the static graphs are QDQ graphs of the same model (calibrated ranges), the dynamic
    one has integer MatMuls, and float32 changes no token against itself; the command prints the table."""
    from bavit.bench.static_int8 import VARIANTS, bavit_graphs, compare_graphs, main
    from bavit.core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_bavit(BAViTConfig(img_size=64, depth=1, stem="conv")).eval()  # a 4x4 grid, convolutions and MatMuls
    generator = torch.Generator().manual_seed(1)
    pixels = [torch.randn(1, 3, 64, 64, generator=generator).numpy() for _ in range(4)]
    graphs = bavit_graphs(model, pixels)
    assert list(graphs) == list(VARIANTS)
    ops = {name: [node.op_type for node in onnx.load_from_string(graph).graph.node] for name, graph in graphs.items()}
    assert "QuantizeLinear" not in ops["float32"] and "MatMulInteger" in ops["dynamic int8 MatMuls"]
    for name in ("static int8 (all)", "static int8 (MatMuls)", "static int8 (Convs)"):
        assert ops[name].count("QuantizeLinear") > 0 and ops[name].count("DequantizeLinear") > 0, name
        assert "MatMulInteger" not in ops[name], name
    # QDQ around the convolutions only: the MatMuls' inputs stay float (none comes from a DequantizeLinear alone)
    assert ops["static int8 (all)"].count("DequantizeLinear") > ops["static int8 (Convs)"].count("DequantizeLinear")
    rows = compare_graphs(graphs, pixels, repeats=1)
    assert [row["graph"] for row in rows] == list(VARIANTS)
    assert rows[0]["tokens_changed"] == 0.0 and rows[0]["max_prob_difference"] == 0.0 and rows[0]["tokens"] == 64
    assert all(0.0 <= row["tokens_changed"] <= 1.0 and row["ms"] > 0 for row in rows)
    assert rows[1]["max_prob_difference"] < 0.05  # dynamic int8 MatMuls stay close to float32

    path = save_checkpoint(model, tmp_path / "tiny.safetensors")
    main(["--checkpoint", str(path), "--coco-root", str(synthetic_coco), "--calibration-images",
          str(EXAMPLES), "--calibration-start", "0", "--calibration-count", "2", "--repeats", "1", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "2 images of train2017 fold 0 of 5 (32 tokens); static ranges from 2 images" in printed
    assert printed.count("| static int8") == 3


def test_an_export_process_makes_the_graphs_this_process_makes_and_reports_failures():
    """A server's warm-up exports in a child process (its GIL stays free for requests): the graphs it returns run to
    exactly the outputs of the ones exported here, for BAViT (int8) and a patched YOLOS (rebuilt there from its
    config and weights); a failing call raises with the child's reason, and the child answers the next call."""
    torch.manual_seed(0)
    bavit = build_bavit(BAViTConfig(depth=1, img_size=64, patch_size=16)).eval()
    yolos = tiny_yolos(mid=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    mask = keep_mask(1, [37])
    with ExportProcess() as exporter:
        child_bavit = OrtBAViT(exporter(quantize_bavit, bavit), threads=1, per_image=True)
        with pytest.raises(RuntimeError, match="export process failed: .*"):
            exporter(export_pruned_yolos, yolos, 500)  # 500 px is off the 16 px patch grid
        child_pruned = exporter(export_pruned_yolos, yolos, SIZE)
        with pytest.raises(ValueError, match="not an export function"):
            exporter(json.dumps, bavit)
    with pytest.raises(RuntimeError, match="the export process ended"):  # closed: it says so, it does not hang
        exporter(quantize_bavit, bavit)
    assert torch.equal(child_bavit(x), OrtBAViT.from_model(bavit, threads=1, int8=True)(x))
    here = OrtDetector.from_model(yolos, SIZE, threads=1)
    there = OrtDetector(child_pruned, export_dense_yolos(yolos, SIZE), 32, threads=1)
    assert max_diff(there(pixels(), mask), here(pixels(), mask)) == (0.0, 0.0)
