/*
 * BAViT Explorer in the browser: the page's state and its events. Data comes from the server (bavit/app/page.py)
 * as JSON in the hidden #page-state textbox, one message per server event: "image" (a new image: its FG
 * probabilities, display image, calibration, accounting, and the server's view of it), "view" (a server render: grid
 * bits and the curve's points), "curve" (the base plot of one CCA setting) and "clear". The server stays the source
 * of truth: every server message repaints, and the page only computes (rule.js, texts.js) while the detector is off.
 * Gradio calls window.bavitGrid.slider(...) on slider input (an event with js= and fn=None) and
 * window.bavitGrid.receive(json) when #page-state changes.
 */
const state = {
  payload: null,  // the current image's data (see receive "image"); null before an image or after clear
  bases: new Map(),  // CCA steps -> {image, width, height, left, right}
  measured: new Map(),  // CCA steps -> [[threshold, speed-up], ...] measured by the server
  requested: new Set(),  // CCA steps whose base plot was asked for
  point: null,  // the curve's current point {cca, threshold, sparsity, speedup}
  gt: false,  // the image has a GT grid: its comparison panel follows the grid, so the server answers sliders
  localChanges: 0,  // slider changes answered here (for tests and the bench)
  received: 0,  // server messages applied (for tests and the bench)
  idleMoves: 0,  // slider moves with no image: nothing computed, nothing asked (for tests)
  last: null,  // the last local result {sparsity, tokens} (markdown strings)
};

/** The curve of the current CCA setting with its markers, once its base has arrived (else it is asked for). */
function paintCurve() {
  const figure = document.getElementById("curve");
  const point = state.point;
  if (!figure || !point) return;
  const base = state.bases.get(point.cca);
  if (!base) return requestCurve(point.cca);
  drawCurve(figure, base, point, state.measured.get(point.cca) || []);
}

/** Ask the server for the base plot of one CCA setting (the hidden #curve-request button; once per setting). */
function requestCurve(steps) {
  if (state.requested.has(steps)) return;
  const button = document.getElementById("curve-request");
  if (!button) return;
  state.requested.add(steps);
  button.click();  // its event reads the CCA slider, which holds `steps` now
}

function decodeFloat32(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  return Float32Array.from({length: bytes.length / 4}, (_, i) => view.getFloat32(4 * i, true));
}

async function loadImage(url) {
  const image = new Image();
  image.src = url;
  await image.decode();
  return image;
}

async function preparePayload(message) {
  const image = await loadImage(message.image);
  const canvas = document.createElement("canvas");
  canvas.width = message.width;
  canvas.height = message.height;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.drawImage(image, 0, 0, message.width, message.height);
  const probs = decodeFloat32(message.probs);
  const palette = message.palette;
  return {
    key: message.key,
    side: message.side,
    yolosGrid: message.yolos_grid,
    resample: message.resample,
    probs,
    order: rankCells(probs),
    calibration: message.calibration,
    modes: message.modes,
    accounting: {
      bavitPatches: message.accounting.bavit_patches, bavitLayers: message.accounting.bavit_layers,
      yolosPatches: message.accounting.yolos_patches, yolosLayers: message.accounting.yolos_layers,
      denseMacs: message.accounting.dense_macs, pipelineMacs: message.accounting.pipeline_macs,
    },
    display: {width: message.width, height: message.height,
              pixels: ctx.getImageData(0, 0, message.width, message.height)},
    tables: [BG, FG, FLIPPED].map((cls) => blendTable(palette[cls][0], palette[cls][1])),
    lineTable: blendTable(message.line[0], message.line[1]),
  };
}

async function addBase(curve) {
  const image = await loadImage(curve.base);
  state.bases.set(curve.cca, {image, width: curve.width, height: curve.height, left: curve.left, right: curve.right});
}

function applyView(view) {
  const p = state.payload;
  if (!p || view.key !== p.key) return;
  const grid = (text) => Uint8Array.from(text, Number);
  paintGrids(p, {raw: grid(view.raw), cca: grid(view.cca), kept: view.kept}, "server");
  state.gt = view.gt;
  state.measured.set(view.curve.cca, view.curve.measured);
  state.point = view.curve.point;
  paintCurve();
}

function clear() {
  state.payload = null;
  state.point = null;
  state.gt = false;
  state.bases.clear();
  state.measured.clear();
  state.requested.clear();
  for (const id of ["grid-raw", "grid-cca", "curve"]) {
    const figure = document.getElementById(id);
    if (!figure) continue;
    figure.classList.remove("bavit-loaded");
    for (const key of ["bits", "kept", "source", "cca", "threshold"]) delete figure.dataset[key];
  }
}

let queue = Promise.resolve();  // messages are applied in arrival order (decoding images is asynchronous)

/** A message from the server (#page-state's new value, JSON). */
function receive(text) {
  if (!text) return [];
  const message = JSON.parse(text);
  queue = queue.then(async () => {
    if (message.kind === "clear") return clear();
    if (message.kind === "image") {
      const payload = await preparePayload(message.payload);
      clear();
      state.payload = payload;
      if (message.curve) await addBase(message.curve);
      return applyView(message.view);
    }
    if (!state.payload || message.key !== state.payload.key) return;  // for an image no longer shown
    if (message.kind === "view") return applyView(message);
    if (message.kind === "curve") {
      await addBase(message);
      state.measured.set(message.cca, message.measured);
      state.requested.clear();  // a setting asked for meanwhile may still be missing: paintCurve asks again
      return paintCurve();
    }
  }).catch((error) => console.error("bavit: could not apply a server message", error))
    .finally(() => { state.received += 1; });
  return [];
}

/**
 * A slider moved (threshold, target sparsity or CCA steps). Without an image there is nothing to compute: the
 * texts stay as they are (counted in state.idleMoves). Grid-only with an image's data here (and no GT to compare
 * with): compute and draw in the page, and return the new sparsity and token texts (the event's outputs).
 * Otherwise ask the server (click the hidden #server-update button, whose event sends the same controls) and return
 * the texts unchanged.
 */
function slider(mode, threshold, target, ccaSteps, detect, showDense, sparsityMd, tokensMd) {
  const p = state.payload;
  if (!p) {
    state.idleMoves += 1;
    return [sparsityMd, tokensMd];
  }
  const controls = {mode, threshold, target, ccaSteps};
  let result = null;
  try {
    result = !detect && !state.gt && p && p.resample === "nearest" ? analyze(p, controls) : null;
  } catch (error) {  // never leave the page without an answer: the server has the same rule
    console.error("bavit: the page could not apply the keep-mask rule; asking the server", error);
  }
  if (!result) {
    const button = document.getElementById("server-update");
    if (button) button.click();
    return [sparsityMd, tokensMd];
  }
  paintGrids(p, result, "client");
  const steps = Number(ccaSteps);
  const sparsity = 100.0 * (1.0 - result.kept / p.accounting.yolosPatches);
  state.point = {cca: steps, threshold: effectiveThreshold(p, result), sparsity, speedup: null};
  paintCurve();
  state.localChanges += 1;
  state.last = {sparsity: sparsityText(p, result, controls), tokens: tokensTable(p, result.kept)};
  return [state.last.sparsity, state.last.tokens];
}

/** A copy of a payload with other FG probabilities (a flat array of G*G float32 values), for tests. */
function withProbs(p, values) {
  const probs = Float32Array.from(values);
  return {...p, probs, order: rankCells(probs)};
}

window.bavitGrid = {
  slider, receive, state,
  // the ports, for tests: analyze(payload, controls) -> {settings, raw, cca, kept}, the texts, the formatting
  analyze, sparsityText, tokensTable, effectiveThreshold, bits, withProbs, pyFixed, pyRound, interp,
};
