"""The deployment example in docs/deployment.md: the exported pair run with onnxruntime, numpy and Pillow alone (no
torch), agreeing with the Predictor on the same image (tiny models saved like real ones; no download)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from apphelpers import EXAMPLES, calibrated_bavit_checkpoint, tiny_yolos_dir

from bavit.pruning.settings import PruningSettings
from bavit.cli import main
from bavit.deploy.export import FILES, MANIFEST

ROOT = Path(__file__).resolve().parents[1]


def docs_example() -> str:
    text = (ROOT / "docs" / "deployment.md").read_text()
    match = re.search(r"<!-- deployment-example -->\n```python\n(.*?)```", text, flags=re.S)
    assert match, "docs/deployment.md lost its deployment example"
    return match.group(1)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "bavit-onnx"
    assert main(["export", "--out", str(out), "--bavit", str(calibrated_bavit_checkpoint()),
                 "--detector", str(tiny_yolos_dir())]) == 0
    return out


@pytest.mark.slow
def test_export_writes_checked_graphs_and_a_manifest(export_dir):
    import onnx

    assert sorted(p.name for p in export_dir.iterdir()) == sorted([*FILES.values(), MANIFEST, "README.md"])
    for name in FILES.values():
        onnx.checker.check_model(str(export_dir / name), full_check=True)
    def not_json(constant):
        raise AssertionError(f"{MANIFEST} holds {constant}, which strict JSON parsers refuse")

    manifest = json.loads((export_dir / MANIFEST).read_text(), parse_constant=not_json)  # no NaN / Infinity
    assert manifest["detector"]["pretrained"] is True and manifest["detector"]["grid"] == 32
    assert manifest["detector"]["id2label"] == {"0": "cat", "1": "dog", "2": "cup"}
    assert manifest["bavit"]["calibration"]["thresholds"]["3"]  # the checkpoint's calibration travels along


@pytest.mark.slow
def test_export_without_detector_weights_says_so(tmp_path, capsys):
    out = tmp_path / "no-weights"
    assert main(["export", "--out", str(out), "--bavit", str(calibrated_bavit_checkpoint()),
                 "--detector", str(tmp_path / "missing-yolos")]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["detector"]["pretrained"] is False
    assert "RANDOM INIT" in manifest["detector"]["note"] and "RANDOM INIT" in printed
    assert "RANDOM INIT" in (out / "README.md").read_text()
    assert len(manifest["detector"]["id2label"]) == 91  # the YOLOS-tiny architecture: 91 labels


def test_docs_example_runs_without_torch_and_matches_the_predictor(export_dir, tmp_path):
    from bavit.predictor import Predictor

    image = EXAMPLES / "chelsea.jpg"
    code = docs_example().replace('"assets/examples/chelsea.jpg"', repr(str(image)))
    code = code.replace("\nmeta = ", "\nSCORE = 0.0\nmeta = ")  # print every detection, to compare them all
    assert "SCORE = 0.0" in code
    code += "\nimport sys\nassert 'torch' not in sys.modules, 'the deployment example imported torch'\n"
    (tmp_path / "bavit-onnx").symlink_to(export_dir)
    env = dict(os.environ, PYTHONPATH="")  # nothing of the repo on the path
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()

    predictor = Predictor(bavit=calibrated_bavit_checkpoint(), detector=str(tiny_yolos_dir()), score_threshold=0.0,
                          backend="torch")
    analysis = predictor.analyze(image, PruningSettings(sparsity=0.35, cca_steps=3))
    kept = int(analysis.keep_mask.sum())
    assert lines[0].startswith(f"kept {kept} of 1024 YOLOS patches (threshold {analysis.threshold:.3f})")
    printed = []
    for line in lines[1:]:
        label, score, box = re.match(r"(\S+) ([\d.]+) \[(.*)\]", line).groups()
        printed.append((label, float(score), [float(v) for v in box.split(", ")]))
    width, height = analysis.image_size
    expected = sorted(analysis.detections, key=lambda det: -det["score"])
    printed.sort(key=lambda det: -det[1])
    assert len(printed) == len(expected) == 10  # the tiny detector's 10 detection tokens
    for (label, score, box), det in zip(printed, expected):
        assert label == det["label"] and score == pytest.approx(det["score"], abs=2e-3)
        clipped = np.clip(box, 0, [width, height, width, height])  # the Predictor clips boxes to the image
        assert np.allclose(clipped, det["box"], atol=0.2)
