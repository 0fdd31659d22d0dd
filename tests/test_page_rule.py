"""The page's ports of the Python rule and texts (``bavit/app/static/rule.js`` and ``texts.js``) against Python,
without a browser: V8 (mini-racer) runs the two files as the page loads them, on random FG-probability grids made
here, and every mode's grids, kept count, sparsity text, token table and curve x must equal what the Predictor and
:mod:`bavit.app.page` give for the same grid (the golden values are made by Python on each run, so they follow the
Python rule)."""
from __future__ import annotations

import json

import apphelpers
import numpy as np
import pytest
from PIL import Image

from bavit.app import page
from bavit.app.session import MODE_SPARSITY, MODE_THRESHOLD, MODE_TOPK, Controls, ImageSession, effective_threshold
from bavit.predictor import Predictor, PreparedImage

py_mini_racer = pytest.importorskip("py_mini_racer")

# What grid.js's preparePayload makes of the image message (minus the display canvas), then the ports' answers.
HARNESS = """
function payloadOf(message, probs) {
  const values = Float32Array.from(probs);
  const a = message.accounting;
  return {side: message.side, yolosGrid: message.yolos_grid, resample: message.resample, probs: values,
          order: rankCells(values), calibration: message.calibration, modes: message.modes,
          accounting: {bavitPatches: a.bavit_patches, bavitLayers: a.bavit_layers, yolosPatches: a.yolos_patches,
                       yolosLayers: a.yolos_layers, denseMacs: a.dense_macs, pipelineMacs: a.pipeline_macs}};
}
function views(message, probs, settings) {
  const p = payloadOf(message, probs);
  const bits = (grid) => Array.from(grid, (v) => (v ? "1" : "0")).join("");
  return JSON.stringify(settings.map(([mode, value, ccaSteps]) => {
    const controls = {mode, threshold: value, target: value, ccaSteps};
    const r = analyze(p, controls);
    return r && {raw: bits(r.raw), cca: bits(r.cca), kept: r.kept, sparsity: sparsityText(p, r, controls),
                 tokens: tokensTable(p, r.kept), x: effectiveThreshold(p, r)};
  }));
}
"""


@pytest.fixture(scope="module")
def predictor():
    return Predictor(bavit=apphelpers.calibrated_bavit_checkpoint(), detector=None)


@pytest.fixture(scope="module")
def ports():
    context = py_mini_racer.MiniRacer()
    for name in ("rule.js", "texts.js"):
        context.eval((page.STATIC_DIR / name).read_text(encoding="utf-8"))
    context.eval(HARNESS)
    return context


def session_for(probs: np.ndarray) -> ImageSession:
    probs = probs.astype(np.float32)
    probs.setflags(write=False)
    image = Image.new("RGB", (64, 48))
    return ImageSession(name="grid", prepared=PreparedImage(image, probs, 0.0, "k"), display=image, bavit_ms=0.0)


def python_view(predictor: Predictor, session: ImageSession, mode: str, value: float, cca_steps: int) -> dict:
    controls = Controls(mode=mode, cca_steps=cca_steps, detect=False,
                        **({"threshold": value} if mode == MODE_THRESHOLD else {"target_sparsity": value}))
    analysis = predictor.predict(session.prepared, controls.settings, detect=False)
    return {"raw": page.grid_bits(analysis.grid_raw), "cca": page.grid_bits(analysis.grid_cca),
            "kept": int(analysis.keep_mask.sum()), "sparsity": page.sparsity_text(analysis, controls, predictor.calibration),
            "tokens": page.tokens_table(analysis), "x": effective_threshold(analysis)}


def random_grids(side: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    smooth = rng.random((side, side)) ** 2
    return {
        "uniform": rng.random((side, side)),
        "skewed": smooth,
        "ties": np.round(rng.random((side, side)) * 8) / 8,  # many equal values: top-k keeps them in row-major order
        "blob": np.exp(-((np.arange(side)[:, None] - side / 2) ** 2 + (np.arange(side) - side / 3) ** 2) / side),
    }


SETTINGS = (
    [(MODE_THRESHOLD, t, steps) for t in (0.0, 0.05, 0.2, 0.37, 0.5, 0.63, 0.81, 0.95, 1.0) for steps in (0, 1, 3, 5)]
    + [(MODE_SPARSITY, t, steps) for t in (0, 10, 35, 52, 77, 95) for steps in range(6)]
    + [(MODE_TOPK, t, steps) for t in (0, 20, 35, 50, 80, 95) for steps in (0, 2, 3, 5)]
)


@pytest.mark.parametrize("grid", ["uniform", "skewed", "ties", "blob"])
def test_page_rule_and_texts_equal_python_on_random_grids(predictor, ports, grid):
    side = predictor.bavit.config.grid_size
    probs = random_grids(side)[grid].astype(np.float32)
    session = session_for(probs)
    message = page.image_payload(predictor, session)
    views = json.loads(ports.call("views", message, probs.ravel().tolist(), SETTINGS))
    for (mode, value, steps), view in zip(SETTINGS, views):
        assert view == python_view(predictor, session, mode, value, steps), (grid, mode, value, steps)
    assert len({view["kept"] for view in views}) > 5  # the settings do move the grid


def test_a_threshold_equal_to_a_probability_keeps_its_cell(predictor, ports):
    """``>=`` in float32, as torch compares: a threshold a hair above a probability as a double, but equal to it in
    float32, keeps that cell too."""
    probs = random_grids(predictor.bavit.config.grid_size)["uniform"].astype(np.float32)
    middle = float(probs.ravel()[np.argmin(np.abs(probs.ravel() - 0.5))])
    settings = [(MODE_THRESHOLD, middle, 0), (MODE_THRESHOLD, middle + 1e-12, 0)]
    session = session_for(probs)
    views = json.loads(ports.call("views", page.image_payload(predictor, session), probs.ravel().tolist(), settings))
    assert [view["raw"].count("1") for view in views] == [int((probs >= middle).sum())] * 2
    for (mode, value, steps), view in zip(settings, views):
        assert view == python_view(predictor, session, mode, value, steps)


def test_page_number_formatting_is_pythons(ports):
    """Exact ties round half to even, as Python's format does (toFixed rounds them up)."""
    cases = [(6.25, 1), (0.125, 2), (2.5, 0), (3.5, 0), (0.375, 2), (35.0, 0), (100 * (1 - 960 / 1024), 1),
             (0.3599999, 2), (-6.25, 1), (100 * (1 - 1021 / 1024), 1), (12.765, 2)]
    assert [ports.call("pyFixed", x, d) for x, d in cases] == [format(x, f".{d}f") for x, d in cases]
    values = [0.5, 1.5, 2.5, 2.4999, 665.6, 7.5]
    assert [ports.call("pyRound", x) for x in values] == [round(x) for x in values]
