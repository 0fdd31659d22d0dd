/*
 * BAViT Explorer in the browser: the page's state and its events. Data comes from the server (bavit/app/page.py)
 * as JSON in the hidden #page-state textbox, one message per server event: "image" (a new image: its display image
 * and the server's view of it), "view" (a server render: its grids in hex, the curve's point, detection marks, and the grid
 * ladder of its sparsity control and CCA setting when the page lacks it), "rungs" (detections the background computed
 * at more slider positions), "curve" (the base plot of one CCA setting) and "clear". The page computes nothing: a
 * slider move shows what the ladders hold for the new position (Python's grids, texts and detections) and asks the
 * server (click #server-update) for what they lack. Every server message repaints.
 * Gradio calls window.bavitGrid.slider(...) on slider input (an event with js= and fn=None) and
 * window.bavitGrid.receive(json) when #page-state changes.
 */
const state = {
  payload: null,  // the current image's data (see receive "image"); null before an image or after clear
  ladders: new Map(),  // "mode|cca" -> grid ladder {slider, values, rungs, grids, texts} (bavit/app/page.py)
  job: null,  // the detection ladder the results belong to: {id, mode, cca, detect, dense}
  results: new Map(),  // keep mask (index into its ladder's grids) -> {detections, message, latency, speedup}
  bases: new Map(),  // CCA steps -> {image, width, height, left, right}
  measured: new Map(),  // CCA steps -> [[threshold, speed-up], ...] measured by the server
  requested: new Set(),  // CCA steps whose base plot was asked for
  point: null,  // the curve's current point {cca, threshold, sparsity, speedup}
  gt: false,  // the image has a GT grid: its comparison panel follows the grid, so the server answers sliders
  localChanges: 0,  // slider moves answered here (for tests and the bench)
  localDetections: 0,  // of them, those answered with the detection ladder's detections
  serverAsks: 0,  // slider moves sent to the server
  stale: 0,  // server answers dropped: the slider had moved on
  current: null,  // the controls the page shows {mode, threshold, target, cca, detect, dense, waiting}
  received: 0,  // server messages applied (for tests and the bench)
  idleMoves: 0,  // slider moves with no image: nothing shown, nothing asked (for tests)
  last: null,  // the last local answer {sparsity, tokens} (markdown strings)
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
  const palette = message.palette;
  return {
    key: message.key,
    side: message.side,
    detector: message.detector,
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

/** hex of row-major bits (4 per digit, the first bit the highest) -> Uint8Array of `cells` 0/1 (page.grid_hex). */
function decodeGrid(hex, cells) {
  const grid = new Uint8Array(cells);
  for (let i = 0; i < cells; i++) grid[i] = (parseInt(hex[i >> 2], 16) >> (3 - (i & 3))) & 1;
  return grid;
}

function addLadder(p, ladder) {
  const cells = p.side * p.side;
  state.ladders.set(`${ladder.mode}|${ladder.cca}`, {
    slider: ladder.slider, values: ladder.values, rungs: ladder.rungs, texts: ladder.texts,
    grids: ladder.grids.map((hex) => decodeGrid(hex, cells)),
  });
}

/** The detection ladder the page's results belong to (a new one drops the old one's results). */
function setJob(job) {
  if (!job || !state.job || state.job.id !== job.id) state.results = new Map();
  state.job = job || null;
}

/** Detection-ladder rungs: keep their results, and their speed-ups as measured points of the curve. */
function addRungs(message) {
  if (!message.job) return;
  setJob(message.job);  // the session's ladder now (its view may have been the message that was lost)
  const ladder = state.ladders.get(`${message.job.mode}|${message.job.cca}`);
  for (const [mask, result] of Object.entries(message.results)) {
    if (state.results.has(Number(mask))) continue;
    state.results.set(Number(mask), result);
    if (!ladder || result.failed || result.speedup === null || result.speedup === undefined) continue;
    const points = state.measured.get(message.job.cca) || [];
    for (const rung of ladder.rungs) {
      if (rung && rung[1] === Number(mask)) points.push([rung[3], result.speedup]);
    }
    state.measured.set(message.job.cca, points);
  }
}

function sameControls(a, b) {
  return a.mode === b.mode && a.cca === b.cca && Math.abs(a.threshold - b.threshold) < 1e-9
    && Math.abs(a.target - b.target) < 1e-9;
}

function applyView(view) {
  const p = state.payload;
  if (!p || view.key !== p.key) return;
  if (view.slider && state.current && !sameControls(view.controls, state.current)) {
    state.stale += 1;  // the answer to a slider position the page has left: the page's own answer stays, and the
    return askServer();  // server is asked again, so that its last answer (texts too) is the slider's position
  }
  if (!view.slider || !state.current) state.current = {...view.controls, waiting: false};
  else if ("detections" in view) state.current.waiting = false;
  const cells = p.side * p.side;
  paintGrids(p, {raw: decodeGrid(view.raw, cells), cca: decodeGrid(view.cca, cells), kept: view.kept}, "server");
  if (view.ladder) addLadder(p, view.ladder);
  if ("job" in view) setJob(view.job);
  if ("detections" in view) drawDetections("detections-pruned", p, view.detections, "server");
  if ("dense" in view) drawDetections("detections-dense", p, view.dense, "server");
  state.gt = view.gt;
  state.measured.set(view.curve.cca, view.curve.measured);
  state.point = view.curve.point;
  paintCurve();
}

function clear() {
  state.payload = null;
  state.current = null;
  state.point = null;
  state.gt = false;
  state.job = null;
  state.ladders.clear();
  state.results.clear();
  state.bases.clear();
  state.measured.clear();
  state.requested.clear();
  for (const id of ["grid-raw", "grid-cca", "curve", "detections-pruned", "detections-dense"]) {
    const figure = document.getElementById(id);
    if (!figure) continue;
    figure.classList.remove("bavit-loaded");
    for (const key of ["bits", "kept", "source", "cca", "threshold", "marks"]) delete figure.dataset[key];
  }
}

let queue = Promise.resolve();  // messages are applied in arrival order (decoding images is asynchronous)

/** The detection ladder `job` holds answers for `controls` ({mode, cca, detect, dense}). */
function jobFor(job, controls) {
  return !!job && job.mode === controls.mode && job.cca === controls.cca && job.detect === controls.detect
    && job.dense === controls.dense;
}

/**
 * The result in a rungs message for the position the page shows, when the page waits for it (it asked the server,
 * whose answer may be lost with messages that arrive at once): its detections are drawn, its texts returned.
 */
function currentResult(message) {
  const current = state.current, p = state.payload;
  if (!current || !current.waiting || !p || message.key !== p.key || !message.job) return null;
  const job = message.job;
  if (!jobFor(job, current)) return null;
  const ladder = state.ladders.get(`${job.mode}|${job.cca}`);
  const rung = ladder ? rungAt(ladder, ladder.slider === "threshold" ? current.threshold : current.target) : null;
  const result = rung ? message.results[String(rung.mask)] : undefined;
  if (!result || result.failed) return null;
  current.waiting = false;
  drawDetections("detections-pruned", p, result.detections, "client");
  return result;
}

/**
 * A message from the server (#page-state's new value, JSON), with the text panels as they are; returns them, or
 * the texts of a slider's server answer while the slider is still at its position (the order of a slider's texts
 * and grids is the page's: an answer to a position it has left changes neither, and the server is asked again).
 */
function receive(text, ...panels) {
  const shown = panels.slice(0, 4);
  if (!text) return shown;
  const message = JSON.parse(text);
  let answer = shown;
  if (message.kind === "view" && message.slider && message.texts && state.payload && message.key === state.payload.key
      && !(state.current && !sameControls(message.controls, state.current))) {
    const texts = message.texts;
    answer = ["sparsity", "tokens", "latency", "det_message"].map((key, i) => (key in texts ? texts[key] : shown[i]));
  } else if (message.kind === "rungs") {
    const result = currentResult(message);
    if (result) answer = [shown[0], shown[1], result.latency, result.message];
  }
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
    if (message.kind === "rungs") return addRungs(message);
    if (message.kind === "curve") {
      await addBase(message);
      state.measured.set(message.cca, message.measured);
      state.requested.clear();  // a setting asked for meanwhile may still be missing: paintCurve asks again
      return paintCurve();
    }
  }).catch((error) => console.error("bavit: could not apply a server message", error))
    .finally(() => { state.received += 1; });
  return answer;
}

/** A grid-ladder rung: the ladder's answer at one slider value, or null where the page lacks it. */
function rungAt(ladder, value) {
  const values = ladder.values;
  const v = Number(value);
  const index = Math.round((v - values[0]) / (values[1] - values[0]));
  if (!(index >= 0 && index < values.length) || Math.abs(values[index] - v) > 1e-9) return null;
  const rung = ladder.rungs[index];
  if (!rung) return null;
  const [raw, mask, kept, x, percent, sparsity, tokens] = rung;
  return {raw: ladder.grids[raw], cca: ladder.grids[mask], mask, kept, x, percent, sparsity: ladder.texts[sparsity],
          tokens: ladder.texts[tokens]};
}

/** The detection ladder's answer at keep mask `mask` for these controls, or undefined. */
function resultAt(mask, mode, ccaSteps, detect, showDense) {
  if (!jobFor(state.job, {mode, cca: Number(ccaSteps), detect: Boolean(detect), dense: Boolean(showDense)})) {
    return undefined;
  }
  const result = state.results.get(mask);
  return result && !result.failed ? result : undefined;
}

function askServer() {
  state.serverAsks += 1;
  const button = document.getElementById("server-update");
  if (button) button.click();  // its event reads the same controls
}

/**
 * A slider moved (threshold, target sparsity or CCA steps). Without an image there is nothing to show (counted in
 * state.idleMoves). With the new position in the grid ladder (and no GT to compare with), the page draws its grids
 * and the curve's point and returns its sparsity text and token table; with the detector on, the detection ladder's
 * detections, message and latency there too. Whatever the ladders lack is asked of the server, whose answer then
 * replaces the page's. Returns the event's outputs [sparsity, tokens, latency, detection message].
 */
function slider(mode, threshold, target, ccaSteps, detect, showDense, sparsityMd, tokensMd, latencyMd, messageMd) {
  const unchanged = [sparsityMd, tokensMd, latencyMd, messageMd];
  const p = state.payload;
  if (!p) {
    state.idleMoves += 1;
    return unchanged;
  }
  state.current = {mode, threshold: Number(threshold), target: Number(target), cca: Number(ccaSteps),
                   detect: Boolean(detect), dense: Boolean(showDense), waiting: false};
  const ladder = state.gt ? null : state.ladders.get(`${mode}|${Number(ccaSteps)}`);
  const rung = ladder ? rungAt(ladder, ladder.slider === "threshold" ? threshold : target) : null;
  if (!rung) {
    askServer();
    return unchanged;
  }
  paintGrids(p, rung, "client");
  let latency = latencyMd, message = messageMd, speedup = null;
  if (detect && p.detector) {
    const result = resultAt(rung.mask, mode, ccaSteps, detect, showDense);
    if (result) {
      drawDetections("detections-pruned", p, result.detections, "client");
      [latency, message, speedup] = [result.latency, result.message, result.speedup];
      state.localDetections += 1;
    } else {
      state.current.waiting = true;  // for the server's answer, or the ladder's result here (currentResult)
      askServer();
    }
  }
  state.point = {cca: Number(ccaSteps), threshold: rung.x, sparsity: rung.percent, speedup};
  paintCurve();
  state.localChanges += 1;
  state.last = {sparsity: rung.sparsity, tokens: rung.tokens};
  return [rung.sparsity, rung.tokens, latency, message];
}

/**
 * The page's timer ticks: its `inputs` values (the session, the controls, the ack box last; Gradio passes one more
 * argument) with the ack put in: the detection ladder's results the page holds, so that the server sends those it
 * lacks (a #page-state message can be lost when two arrive at once).
 */
function tick(inputs, ...values) {
  const ack = {job: state.job ? state.job.id : null, masks: [...state.results.keys()]};
  return [...values.slice(0, inputs - 1), JSON.stringify(ack)];
}

window.bavitGrid = {slider, receive, tick, state, bits};
