/*
 * BAViT Explorer in the browser: the patch grids, the sparsity text, the token table and the curve's markers,
 * redrawn after a slider move without a server round trip while the detector is off (grid-only).
 *
 * Ports (tests/test_app_browser.py checks them against the Python originals, bit for bit and string for string):
 *   - the keep-mask rule: bavit/pruning/keep_mask.py (select_patches: prob >= threshold, compared in float32 as
 *     torch does, or top-k with ties in row-major order; closest_index; keep_ratio_for_count), bavit/core/cca.py
 *     (cca: a BG cell with >= 3 FG neighbours becomes FG, `steps` times; resample_grid "nearest": nearest-exact);
 *   - Calibration.threshold (bavit/pruning/calibration.py: numpy.interp over the calibrated levels);
 *   - Explorer.selection / sparsity_text / tokens_table / effective_threshold (bavit/app/explorer.py);
 *   - viz.overlay_cells (bavit/app/viz.py: the blend lookup table, grid lines) and CurvePlot.with_points.
 *
 * Data comes from the server (bavit/app/client.py) as JSON in the hidden #page-state textbox, one message per
 * server event: "image" (a new image: its FG probabilities, display image, calibration, accounting, and the server's
 * view of it), "view" (a server render: grid bits and the curve's points), "curve" (the base plot of one CCA
 * setting) and "clear". The server stays the source of truth: every server message repaints, and the browser only
 * computes while the detector is off. Gradio calls window.bavitGrid.slider(...) on slider input (an event with
 * js= and fn=None) and window.bavitGrid.receive(json) when #page-state changes.
 *
 * Each grid figure (#grid-raw, #grid-cca) carries data-bits (row-major 0/1 of the 24x24 grid), data-kept (YOLOS
 * patches kept) and data-source ("client" or "server"), for tests and embedding.
 */
(() => {
  "use strict";

  // ------------------------------------------------------------------ Python-compatible numbers
  /** Python's round(): half to even. */
  function pyRound(x) {
    const floor = Math.floor(x);
    const diff = x - floor;
    if (diff < 0.5) return floor;
    if (diff > 0.5) return floor + 1;
    return floor % 2 === 0 ? floor : floor + 1;
  }

  /** Python's format(x, `.${digits}f`): like toFixed, but an exact tie rounds half to even (toFixed rounds up). */
  function pyFixed(x, digits) {
    const extra = 40;
    const long = x.toFixed(Math.min(100, digits + extra));
    if (long.slice(-extra) !== "5" + "0".repeat(extra - 1)) return x.toFixed(digits);
    let kept = long.slice(0, long.length - extra);  // the truncation: "6.2" of 6.25, "6." of 6.5
    if (kept.endsWith(".")) kept = kept.slice(0, -1);
    return Number(kept.slice(-1)) % 2 === 0 ? kept : x.toFixed(digits);  // toFixed rounds away: the even one
  }

  // ------------------------------------------------------------------ the keep-mask rule
  /** select_patches with a threshold: prob >= threshold, the threshold cast to float32 as torch does. */
  function selectThreshold(probs, threshold) {
    const t = Math.fround(threshold);
    const grid = new Uint8Array(probs.length);
    for (let i = 0; i < probs.length; i++) grid[i] = probs[i] >= t ? 1 : 0;
    return grid;
  }

  /** Cell indices by FG probability, highest first, ties in row-major order (torch.sort(-p, stable=True)). */
  function rankCells(probs) {
    const order = Array.from(probs, (_, i) => i);
    order.sort((a, b) => (probs[b] - probs[a]) || (a - b));
    return order;
  }

  /** select_patches with a keep ratio: the top max(1, round(ratio * cells)) cells. */
  function selectTopK(order, keepRatio) {
    const count = Math.max(1, pyRound(keepRatio * order.length));
    const grid = new Uint8Array(order.length);
    for (let i = 0; i < count; i++) grid[order[i]] = 1;
    return grid;
  }

  /** cca(): a BG cell with at least 3 FG cells among its 8 neighbours becomes FG; FG stays; `steps` times. */
  function cca(grid, side, steps) {
    let fg = grid;
    for (let step = 0; step < steps; step++) {
      const grown = fg.slice();
      let changed = false;
      for (let r = 0; r < side; r++) {
        for (let c = 0; c < side; c++) {
          if (fg[r * side + c]) continue;
          let count = 0;
          for (let dr = -1; dr <= 1; dr++) {
            const rr = r + dr;
            if (rr < 0 || rr >= side) continue;
            for (let dc = -1; dc <= 1; dc++) {
              const cc = c + dc;
              if ((dr || dc) && cc >= 0 && cc < side) count += fg[rr * side + cc];
            }
          }
          if (count >= 3) { grown[r * side + c] = 1; changed = true; }
        }
      }
      if (!changed) break;
      fg = grown;
    }
    return fg;
  }

  /** resample_grid(mode="nearest"): F.interpolate "nearest-exact", src = min(floor((dst + 0.5) * scale), in - 1). */
  function resampleNearest(grid, side, out) {
    const scale = Math.fround(side / out);
    const source = Array.from({length: out}, (_, i) => Math.min(Math.floor(Math.fround((i + 0.5) * scale)), side - 1));
    const mask = new Uint8Array(out * out);
    for (let r = 0; r < out; r++) {
      for (let c = 0; c < out; c++) mask[r * out + c] = grid[source[r] * side + source[c]];
    }
    return mask;
  }

  function count(grid) {
    let n = 0;
    for (let i = 0; i < grid.length; i++) n += grid[i];
    return n;
  }

  /** keep_mask_from_probs for one image: {raw, cca, kept}; `selection` is {threshold} or {keepRatio}. */
  function keepMask(p, selection, steps) {
    const raw = selection.keepRatio !== undefined ? selectTopK(p.order, selection.keepRatio)
      : selectThreshold(p.probs, selection.threshold);
    const grown = cca(raw, p.side, steps);
    return {raw, cca: grown, kept: count(resampleNearest(grown, p.side, p.yolosGrid))};
  }

  /** closest_index: the index in [low, high] whose non-decreasing value is closest to target. */
  function closestIndex(value, low, high, target, ties) {
    const start = low;
    while (low < high) {
      const middle = Math.floor((low + high) / 2);
      if (value(middle) >= target) high = middle;
      else low = middle + 1;
    }
    if (low > start) {
      const before = Math.abs(value(low - 1) - target), at = Math.abs(value(low) - target);
      if (before < at || (before === at && ties === "low")) low -= 1;
    }
    return low;
  }

  /** keep_ratio_for_count: the BAViT keep ratio whose keep mask keeps the count closest to `kept`. */
  function keepRatioForCount(p, kept, steps) {
    const cells = p.probs.length;
    const memo = new Map();
    const value = (k) => {
      if (!memo.has(k)) memo.set(k, keepMask(p, {keepRatio: k / cells}, steps).kept);
      return memo.get(k);
    };
    return closestIndex(value, 1, cells, kept, "high") / cells;
  }

  /** numpy.interp(x, xp, fp) for one x inside [xp[0], xp[-1]] (numpy's own arithmetic, so the same double). */
  function interp(x, xp, fp) {
    const last = xp.length - 1;
    if (x >= xp[last]) return fp[last];
    if (x <= xp[0]) return fp[0];
    let low = 0, high = last;  // xp[low] <= x < xp[high]
    while (high - low > 1) {
      const middle = (low + high) >> 1;
      if (xp[middle] <= x) low = middle;
      else high = middle;
    }
    if (xp[low] === x) return fp[low];
    const slope = (fp[low + 1] - fp[low]) / (xp[low + 1] - xp[low]);
    return slope * (x - xp[low]) + fp[low];
  }

  /**
   * Explorer.selection + Predictor.predict's keep mask for the controls; null where Python raises (the server then
   * answers with its error message). Returns {settings, raw, cca, kept} with settings as Analysis.settings.
   */
  function analyze(p, controls) {
    const steps = Number(controls.ccaSteps);
    if (!Number.isInteger(steps) || steps < 0) return null;
    let settings;
    if (controls.mode === p.modes.threshold) {
      const threshold = Number(controls.threshold);
      if (!(threshold >= 0 && threshold <= 1)) return null;
      settings = {threshold};
    } else {
      const target = Number(controls.target);
      if (!(target >= 0 && target <= 100)) return null;
      if (controls.mode === p.modes.sparsity) {
        const calibration = p.calibration;
        if (!calibration) return null;
        const sparsity = target / 100.0;
        const levels = calibration.levels, thresholds = calibration.thresholds[String(steps)];
        if (!thresholds || !(levels[0] <= sparsity && sparsity <= levels[levels.length - 1] + 1e-9)) return null;
        settings = {sparsity, threshold: interp(sparsity, levels, thresholds)};
        if (!(settings.threshold >= 0 && settings.threshold <= 1)) return null;
      } else if (controls.mode === p.modes.topk) {
        const kept = pyRound(p.yolosGrid * p.yolosGrid * (1.0 - target / 100.0));
        settings = {keepRatio: keepRatioForCount(p, kept, steps)};
      } else {
        return null;
      }
    }
    return {settings, ...keepMask(p, settings, steps)};
  }

  /** Explorer.effective_threshold: the curve's x for this analysis. */
  function effectiveThreshold(p, result) {
    const keepRatio = result.settings.keepRatio;
    if (keepRatio === undefined) return result.settings.threshold;
    const rank = Math.max(0, pyRound(keepRatio * p.probs.length) - 1);
    return p.probs[p.order[rank]];
  }

  // ------------------------------------------------------------------ the texts (Explorer.sparsity_text, tokens_table)
  function sparsityText(p, result, controls) {
    const acc = p.accounting;
    const kept = result.kept, pruned = acc.yolosPatches - kept;
    const own = 100.0 * (1.0 - kept / acc.yolosPatches);
    const cells = p.probs.length;
    const settings = result.settings;
    const lines = [`### Sparsity: ${pyFixed(own, 1)}%`];
    let how;
    if (settings.sparsity !== undefined) {
      const calibration = p.calibration;
      const source = calibration.source ? `: ${calibration.source}` : "";
      lines.push(`Mean sparsity ${pyFixed(100.0 * settings.sparsity, 0)}% over images (threshold ` +
        `${pyFixed(settings.threshold, 2)}, calibrated on ${calibration.images} images${source}); ` +
        `**this image: ${pyFixed(own, 1)}%**.`);
      how = `threshold ${pyFixed(settings.threshold, 2)}`;
    } else if (settings.keepRatio !== undefined) {
      const k = Math.max(1, pyRound(settings.keepRatio * cells));
      lines.push(`This image is held at the target ${pyFixed(Number(controls.target), 0)}% by top-k: its ${k} most ` +
        `probable of ${cells} BAViT tokens are kept, the count closest to the target after CCA; ` +
        `**this image: ${pyFixed(own, 1)}%**.`);
      how = `top ${k} BAViT tokens`;
    } else {
      how = `threshold ${pyFixed(settings.threshold, 2)}`;
    }
    lines.push(`${pruned} of ${acc.yolosPatches} YOLOS patches pruned, ${kept} kept (${how}, CCA ` +
      `${Number(controls.ccaSteps)} steps). BAViT FG tokens: ${count(result.raw)} of ${cells} before CCA, ` +
      `${count(result.cca)} after.`);
    return lines.join("\n\n");
  }

  function tokensTable(p, kept) {
    const acc = p.accounting;
    const bavitTokens = acc.bavitPatches * acc.bavitLayers, denseTokens = acc.yolosPatches * acc.yolosLayers;
    const prunedTokens = Math.floor(kept * acc.yolosLayers + 1e-6), total = bavitTokens + prunedTokens;
    const reduction = (denseTokens - total) / denseTokens * 100.0;
    return "| Tokens (paper Table 2) | count |\n|---|---:|\n" +
      `| BAViT (${acc.bavitPatches} × ${acc.bavitLayers} layers) | ${bavitTokens} |\n` +
      `| YOLOS dense (${acc.yolosPatches} × ${acc.yolosLayers} layers) | ${denseTokens} |\n` +
      `| YOLOS pruned (${kept} kept × ${acc.yolosLayers} layers) | ${prunedTokens} |\n` +
      `| Total (BAViT + YOLOS pruned) | ${total} |\n` +
      `| Reduction vs dense (Eq. 4) | ${pyFixed(reduction, 2)}% |\n` +
      `| GMACs: YOLOS dense → BAViT + YOLOS pruned | ${pyFixed(acc.denseMacs / 1e9, 2)} → ` +
      `${pyFixed(acc.pipelineMacs[kept] / 1e9, 2)} |`;
  }

  // ------------------------------------------------------------------ drawing (viz.overlay_cells, with_points)
  const BG = 0, FG = 1, FLIPPED = 2;

  /** lut[cls][channel][v] = rint((1 - alpha) * v + alpha * colour), numpy's rint (half to even). */
  function blendTable(colour, alpha) {
    return colour.map((c) => Uint8ClampedArray.from({length: 256}, (_, v) => pyRound((1.0 - alpha) * v + alpha * c)));
  }

  function cellIndex(length, cells) {
    return Int32Array.from({length}, (_, i) => Math.floor((i * cells) / length));
  }

  /** The display image's pixels with the cell classes blended in, as viz.overlay_cells(lines=True). */
  function overlay(p, classes) {
    const {width, height, pixels} = p.display;
    const side = p.side;
    const rows = cellIndex(height, side), cols = cellIndex(width, side);
    const out = new ImageData(width, height);
    const src = pixels.data, dst = out.data;
    for (let y = 0; y < height; y++) {
      const rowBase = rows[y] * side;
      for (let x = 0; x < width; x++) {
        const lut = p.tables[classes[rowBase + cols[x]]];
        const i = (y * width + x) * 4;
        dst[i] = lut[0][src[i]]; dst[i + 1] = lut[1][src[i + 1]]; dst[i + 2] = lut[2][src[i + 2]]; dst[i + 3] = 255;
      }
    }
    const line = p.lineTable;
    const blendLine = (i) => {
      dst[i] = line[0][dst[i]];
      dst[i + 1] = line[1][dst[i + 1]];
      dst[i + 2] = line[2][dst[i + 2]];
    };
    for (let y = 1; y < height; y++) {  // row edges first, then column edges (so crossings are blended twice)
      if (rows[y] !== rows[y - 1]) for (let x = 0; x < width; x++) blendLine((y * width + x) * 4);
    }
    for (let x = 1; x < width; x++) {
      if (cols[x] !== cols[x - 1]) for (let y = 0; y < height; y++) blendLine((y * width + x) * 4);
    }
    return out;
  }

  function bits(grid) {
    return Array.from(grid, (v) => (v ? "1" : "0")).join("");
  }

  function paintGrid(id, image, grid, kept, source) {
    const figure = document.getElementById(id);
    if (!figure) return;
    const canvas = figure.querySelector("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    canvas.getContext("2d").putImageData(image, 0, 0);
    figure.dataset.bits = bits(grid);
    figure.dataset.kept = String(kept);
    figure.dataset.source = source;
    figure.classList.add("bavit-loaded");
  }

  /** Both grid figures for one analysis ({raw, cca, kept}). */
  function paintGrids(p, result, source) {
    const before = result.raw, after = result.cca;
    const flipped = Uint8Array.from(after, (v, i) => (v && !before[i] ? FLIPPED : v ? FG : BG));
    paintGrid("grid-raw", overlay(p, before), before, result.kept, source);
    paintGrid("grid-cca", overlay(p, flipped), after, result.kept, source);
  }

  function pixel(base, matrix, x, y) {
    const px = matrix[0][0] * x + matrix[0][1] * y + matrix[0][2];
    const py = matrix[1][0] * x + matrix[1][1] * y + matrix[1][2];
    return [px, base.height - py];
  }

  function disc(ctx, x, y, fill) {
    ctx.beginPath();
    ctx.arc(x, y, 5, 0, 2 * Math.PI);
    ctx.fillStyle = fill;
    ctx.fill();
    ctx.strokeStyle = "rgb(0,0,0)";
    ctx.lineWidth = 1;
    ctx.stroke();
  }

  /** The curve of the current CCA setting with its markers (CurvePlot.with_points), once its base has arrived. */
  function paintCurve() {
    const figure = document.getElementById("curve");
    const point = state.point;
    if (!figure || !point) return;
    const base = state.bases.get(point.cca);
    if (!base) return requestCurve(point.cca);
    const canvas = figure.querySelector("canvas");
    canvas.width = base.width;
    canvas.height = base.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(base.image, 0, 0);
    ctx.fillStyle = "rgb(44,160,44)";
    for (const [threshold, speedup] of state.measured.get(point.cca) || []) {
      const [x, y] = pixel(base, base.right, threshold, speedup);
      ctx.fillRect(x - 2.5, y - 2.5, 5, 5);
    }
    const [x, y] = pixel(base, base.left, point.threshold, point.sparsity);
    ctx.strokeStyle = "rgb(150,150,150)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(x, 0);
    ctx.lineTo(x, base.height);
    ctx.stroke();
    disc(ctx, x, y, "rgb(31,119,180)");
    if (point.speedup !== null && point.speedup !== undefined) {
      const [sx, sy] = pixel(base, base.right, point.threshold, point.speedup);
      disc(ctx, sx, sy, "rgb(214,39,40)");
    }
    figure.dataset.cca = String(point.cca);
    figure.dataset.threshold = String(point.threshold);
    figure.classList.add("bavit-loaded");
  }

  /** Ask the server for the base plot of one CCA setting (the hidden #curve-request button; once per setting). */
  function requestCurve(steps) {
    if (state.requested.has(steps)) return;
    const button = document.getElementById("curve-request");
    if (!button) return;
    state.requested.add(steps);
    button.click();  // its event reads the CCA slider, which holds `steps` now
  }

  // ------------------------------------------------------------------ state and the server's messages
  const state = {
    payload: null,  // the current image's data (see receive "image"); null before an image or after clear
    bases: new Map(),  // CCA steps -> {image, width, height, left, right}
    measured: new Map(),  // CCA steps -> [[threshold, speed-up], ...] measured by the server
    requested: new Set(),  // CCA steps whose base plot was asked for
    point: null,  // the curve's current point {cca, threshold, sparsity, speedup}
    gt: false,  // the image has a GT grid: its comparison panel follows the grid, so the server answers sliders
    localChanges: 0,  // slider changes answered here (for tests and the bench)
    received: 0,  // server messages applied (for tests and the bench)
    last: null,  // the last local result {sparsity, tokens} (markdown strings)
  };

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
   * A slider moved (threshold, target sparsity or CCA steps). Grid-only with an image's data here (and no GT to
   * compare with): compute and draw in the page, and return the new sparsity and token texts (the event's outputs).
   * Otherwise ask the server (click the hidden #server-update button, whose event sends the same controls) and return
   * the texts unchanged.
   */
  function slider(mode, threshold, target, ccaSteps, detect, showDense, sparsityMd, tokensMd) {
    const p = state.payload;
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
})();
