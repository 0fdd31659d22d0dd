/*
 * The sparsity text and the token table in the page: ports of bavit/app/page.py's sparsity_text and tokens_table,
 * checked against them string for string by tests/test_page_rule.py and tests/test_app_browser.py. Uses rule.js (pyFixed, pyRound, count).
 */
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
