/*
 * The keep-mask rule in the page: ports of the Python originals, checked against them bit for bit and string for
 * string by tests/test_page_rule.py (V8, random grids) and tests/test_app_browser.py (so grid-only slider moves are answered without a server round trip):
 *   - bavit/pruning/keep_mask.py (keep_mask_from_probs: prob >= threshold, compared in float32 as torch does, or top-k
 *     with ties in row-major order; closest_index; top_k_for_kept) and bavit/core/cca.py (cca: a BG cell with
 *     >= 3 FG neighbours becomes FG, `steps` times; resample_grid "nearest": nearest-exact);
 *   - Calibration.threshold (bavit/pruning/calibration.py: numpy.interp over the calibrated levels);
 *   - selection and effective_threshold (bavit/app/session.py);
 *   - Python's round() and format() (pyRound, pyFixed).
 * Part of the page script: bavit/app/page.py (head_html) joins rule.js, texts.js, draw.js and grid.js, in that
 * order, into one function scope.
 */
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
/** The rule's selection by a threshold: prob >= threshold, the threshold cast to float32 as torch does. */
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

/** The rule's selection by a keep ratio (top_k): the top max(1, round(ratio * cells)) cells. */
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

/** top_k_for_kept (as a keep ratio): the BAViT keep ratio whose keep mask keeps the count closest to `kept`. */
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
 * session.selection + Predictor.predict's keep mask for the controls; null where Python raises (the server then
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

/** session.effective_threshold: the curve's x for this analysis. */
function effectiveThreshold(p, result) {
  const keepRatio = result.settings.keepRatio;
  if (keepRatio === undefined) return result.settings.threshold;
  const rank = Math.max(0, pyRound(keepRatio * p.probs.length) - 1);
  return p.probs[p.order[rank]];
}
