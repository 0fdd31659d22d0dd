/*
 * Drawing in the page: the grid overlays (bavit/app/viz.py overlay_cells: the blend lookup table, grid lines), the
 * curve's markers (bavit/app/viz.py CurvePlot.with_points) and the detection boxes (bavit/app/viz.py
 * detection_marks: boxes, colours and captions come made), on the figures' canvases. Each grid figure (#grid-raw,
 * #grid-cca) carries data-bits (row-major 0/1 of the grid), data-kept (YOLOS patches kept) and data-source ("client"
 * or "server"); each detection figure (#detections-pruned, #detections-dense) data-marks (its marks, JSON) and
 * data-source; for tests and embedding.
 */
const BG = 0, FG = 1, FLIPPED = 2;

/** numpy's rint (half to even), for the blend table. */
function pyRound(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff < 0.5) return floor;
  if (diff > 0.5) return floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

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

/** Draw `base` (a curve plot: {image, width, height, left, right}) with its markers into the #curve figure:
 * `measured` [[threshold, speed-up], ...] and the current `point` {cca, threshold, sparsity, speedup}. */
function drawCurve(figure, base, point, measured) {
  const canvas = figure.querySelector("canvas");
  canvas.width = base.width;
  canvas.height = base.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(base.image, 0, 0);
  ctx.fillStyle = "rgb(44,160,44)";
  for (const [threshold, speedup] of measured) {
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

/** The display image with detection `marks` ([{box: [x0, y0, x1, y1] display px, colour: [r, g, b], caption}]) into
 * the figure `id` (boxes 2 px wide, captions on a box of their colour); `marks` null hides the figure. */
function drawDetections(id, p, marks, source) {
  const figure = document.getElementById(id);
  if (!figure) return;
  if (!marks) {
    figure.classList.remove("bavit-loaded");
    delete figure.dataset.marks;
    delete figure.dataset.source;
    return;
  }
  const canvas = figure.querySelector("canvas");
  canvas.width = p.display.width;
  canvas.height = p.display.height;
  const ctx = canvas.getContext("2d");
  ctx.putImageData(p.display.pixels, 0, 0);
  ctx.font = "13px sans-serif";
  ctx.textBaseline = "top";
  ctx.lineWidth = 2;
  const textHeight = 13;
  for (const mark of marks) {
    const [x0, y0, x1, y1] = mark.box;
    const colour = `rgb(${mark.colour.join(",")})`;
    ctx.strokeStyle = colour;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    const width = ctx.measureText(mark.caption).width;
    const tx = Math.min(Math.max(x0, 0), Math.max(canvas.width - width - 4, 0));
    const ty = y0 - textHeight - 4 >= 0 ? y0 - textHeight - 4 : y0;
    ctx.fillStyle = colour;
    ctx.fillRect(tx, ty, width + 4, textHeight + 4);
    ctx.fillStyle = "rgb(0,0,0)";
    ctx.fillText(mark.caption, tx + 2, ty + 2);
  }
  figure.dataset.marks = JSON.stringify(marks);
  figure.dataset.source = source;
  figure.classList.add("bavit-loaded");
}
