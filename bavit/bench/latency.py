"""CPU latency of dense YOLOS-tiny vs BAViT-small + CCA + pruned YOLOS-tiny at 512x512, measured (:func:`run_bench`);
the command line is ``python -m bavit bench`` (:mod:`bavit.cli.bench`). Its report rendered: markdown tables
(:func:`format_table`), the speed targets' verdicts (:func:`verdicts`) and the speed-up plot (:func:`plot`);
the measured figures are in ``docs/results.md``.

For each sparsity level (fraction of the YOLOS patches pruned) every image gets the BAViT keep ratio whose keep
mask -- the pipeline's own rule, :func:`bavit.pruning.keep_mask.keep_mask_from_probs`: top-k, CCA, resample to
32x32 -- keeps the number of patches closest to the level (:func:`~bavit.pruning.keep_mask.top_k_for_kept`). Each pruned iteration
runs and times every stage the pipeline runs: the square resize + BAViT, the keep-mask rule, and the pruned YOLOS
forward *on the mask that rule just produced*. The dense iteration is the dense YOLOS forward. The 512x512 YOLOS
input is prepared once and shared (both need it). Dense and pruned runs alternate after warm-up; medians are
reported. On a busy shared CPU run it with ``OMP_WAIT_POLICY=PASSIVE`` (spinning OpenMP threads otherwise dominate
small kernels). Latency does not depend on the weights, so without real weights the YOLOS-tiny architecture at
random init is timed, and the report says which weights ran.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..core.config import SMALL
from ..core.registry import DEFAULT_BAVIT_CHECKPOINT
from ..deploy.runtime import DEFAULT_BACKEND, check_backend
from ..errors import ConfigError
from ..predictor import Predictor
from ..pruning.accounting import accounting_at_sparsity, token_accounting
from ..pruning.detector import DEFAULT_DETECTOR, YOLOS_SIZE
from ..pruning.keep_mask import kept_count, top_k_for_kept
from ..pruning.settings import DEFAULT_CCA_STEPS, PruningSettings
from .figures import new_axes, save_png
from .timing import DEFAULT_IMAGES, detector_weights, find_images, machine_info, median_ms, peak_rss_mb, spread_counts

DEFAULT_SPARSITIES = (0.0, 0.29, 0.35, 0.40, 0.46)  # paper Table 2 levels
TARGET_SPEEDUP_AT_35 = 1.50  # the speed target: default backend, batch 1, 2 threads
TARGET_FRACTION_OF_FLOP_RATIO = 0.95  # ... and at every level >= 29%, this fraction of the FLOP ratio


def _bench_level(predictor: Predictor, images, yolos_pixels, probs, targets, repeats, warmup):
    """Interleaved dense / pruned runs for one level on a batch of ``len(images)`` images, on the predictor's backend.

    Args:
        targets: detector patches each image should keep (the keep ratio is chosen per image to get closest).
    """
    detector = predictor.detector_runner
    grid = predictor.yolos_grid
    settings = [PruningSettings(keep_ratio=top_k_for_kept(p, count, grid, DEFAULT_CCA_STEPS, predictor.resample_mode)
                                / p.numel()) for p, count in zip(probs, targets)]
    times = {name: [] for name in ("dense", "bavit", "cca", "pruned_yolos", "pruned_total")}
    with torch.inference_mode():
        for step in range(warmup + repeats):
            start = time.perf_counter()
            detector(yolos_pixels)
            dense = time.perf_counter() - start

            start = time.perf_counter()
            fg_prob = predictor.set_images(images, detect=False).fg_prob  # BAViT's preprocessing and forward
            t_bavit = time.perf_counter()
            keep_mask = torch.stack([predictor.select(p, setting)[0].keep_mask
                                     for p, setting in zip(fg_prob, settings)])
            t_cca = time.perf_counter()
            detector(yolos_pixels, keep_mask)
            end = time.perf_counter()
            if step >= warmup:
                times["dense"].append(dense)
                times["bavit"].append(t_bavit - start)
                times["cca"].append(t_cca - t_bavit)
                times["pruned_yolos"].append(end - t_cca)
                times["pruned_total"].append(end - start)
    counts = keep_mask.flatten(1).sum(1).tolist()
    medians = {name: median_ms(samples) for name, samples in times.items()}
    accounting = token_accounting(float(np.mean(counts)), predictor.yolos_config, predictor.bavit.config)
    return {
        "backend": predictor.backend,
        "sparsity": round(accounting.sparsity, 6),
        "kept_patches": float(np.mean(counts)),
        "kept_per_image": counts,
        "target_per_image": list(targets),
        "keep_ratio_per_image": [setting.keep_ratio for setting in settings],
        "dense_ms": medians["dense"],
        "pruned_total_ms": medians["pruned_total"],
        "bavit_ms": medians["bavit"],
        "cca_ms": medians["cca"],
        "pruned_yolos_ms": medians["pruned_yolos"],
        "speedup": medians["dense"] / medians["pruned_total"],
        "flop_ratio": accounting.flop_ratio,
        "token_reduction_pct": accounting.reduction_pct,
        "dense_img_per_s": len(images) * 1000.0 / medians["dense"],
        "pruned_img_per_s": len(images) * 1000.0 / medians["pruned_total"],
        "peak_rss_mb": peak_rss_mb(),
        "repeats": repeats,
    }


def run_bench(
    threads: int = 2,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    repeats: int = 10,
    warmup: int = 2,
    batch: int = 8,
    bavit: Optional[str] = None,
    detector: str = DEFAULT_DETECTOR,
    images: Sequence[Path] = DEFAULT_IMAGES,
    backends: Sequence[str] = (DEFAULT_BACKEND,),
    log: Callable[[str], None] = print,
) -> dict:
    """Run the benchmark and return the report (see :func:`format_table` for its columns).

    Args:
        threads: torch CPU threads (recorded; the caller sets them, as ``python -m bavit`` does; onnxruntime
            sessions take the same count).
        sparsities: fractions (0..1) of YOLOS patches pruned.
        repeats: timed dense/pruned pairs per level (after ``warmup`` untimed pairs); batch runs use half.
        batch: batch size of the second measurement (0 skips it).
        bavit: BAViT checkpoint; default the shipped BAViT-small if present, else BAViT-small at random init.
        detector: YOLOS hub id or directory; when unavailable the YOLOS-tiny architecture at random init.
        images: folders to take real images from (for BAViT's probabilities, which choose the kept patches).
        backends: inference backends to time, level by level in turn (each against its own dense run); the first
            is the report's primary (``results``, ``target``), all are under ``backends``.
    Returns:
        ``{"results": [...], "batch8": {...}, "backends": {name: {"results", "batch8"}}, "target", ...}``.
    """
    if not backends:
        raise ConfigError("give at least one backend")
    for name in backends:
        check_backend(name)
    if bavit is None and DEFAULT_BAVIT_CHECKPOINT.is_file():
        bavit = str(DEFAULT_BAVIT_CHECKPOINT)
    if bavit is None:
        from ..core.model import build_bavit

        torch.manual_seed(0)
        bavit_model, bavit_weights = build_bavit(SMALL), "BAViT-small architecture, random init"
    else:
        from ..core.checkpoint import load_checkpoint

        bavit_model, bavit_weights = load_checkpoint(bavit), str(bavit)
    predictors = {}
    for name in backends:
        predictors[name] = Predictor(bavit=bavit_model, detector=detector, backend=name)
        if name != backends[0]:  # one detector for all backends (without weights: the same random init)
            predictors[name].detector = predictors[backends[0]].detector
            predictors[name]._latency_model = predictors[backends[0]].latency_model
        predictors[name].warm_up()  # the onnxruntime export happens here, not in a timed run
    predictor = predictors[backends[0]]
    model = predictor.latency_model
    detector_note = detector_weights(predictor, detector)
    weights = f"BAViT: {bavit_weights}; detector: {detector_note}"
    log(f"weights: {weights}; backends: {', '.join(backends)}")

    pictures = find_images(max(batch, 1), images)
    cfg = predictor.bavit.config
    probs_by_backend = {name: torch.from_numpy(np.stack([predictors[name].set_image(p).fg_prob for p in pictures]))
                        for name in backends}  # each backend's own BAViT picks its keep ratios
    pixels_all = torch.cat([predictor.yolos_pixels(p) for p in pictures])
    cells = predictor.yolos_grid**2
    load_before = os.getloadavg()

    per_backend = {name: {"results": [], "batch": []} for name in backends}
    for sparsity in sparsities:
        targets = [kept_count(sparsity, predictor.yolos_grid)]
        for name in backends:
            row = _bench_level(predictors[name], pictures[:1], pixels_all[:1], probs_by_backend[name][:1], targets,
                               repeats, warmup)
            per_backend[name]["results"].append(row)
            log(f"{name}, batch 1, sparsity {row['sparsity']:.2f}: dense {row['dense_ms']:.1f} ms, "
                f"pruned {row['pruned_total_ms']:.1f} ms, speed-up {row['speedup']:.2f}x")
    if batch > 1:
        batch_repeats = max(1, repeats // 2)
        for sparsity in sparsities:
            targets = spread_counts(kept_count(sparsity, predictor.yolos_grid), batch, cells)
            for name in backends:
                row = _bench_level(predictors[name], pictures[:batch], pixels_all[:batch],
                                   probs_by_backend[name][:batch],
                                   targets, batch_repeats, 1)
                per_backend[name]["batch"].append(row)
                log(f"{name}, batch {batch}, sparsity {row['sparsity']:.2f}: dense {row['dense_ms']:.0f} ms, "
                    f"pruned {row['pruned_total_ms']:.0f} ms, speed-up {row['speedup']:.2f}x")
    backend_reports = {}
    for name in backends:
        backend_reports[name] = {"results": per_backend[name]["results"]}
        if batch > 1:
            backend_reports[name][f"batch{batch}"] = {"batch": batch, "results": per_backend[name]["batch"]}
    results = backend_reports[backends[0]]["results"]
    at35 = [row for row in results if abs(row["sparsity"] - 0.35) < 0.01]
    flop_grid = np.linspace(0.0, 0.6, 61)
    report = {
        "threads": threads,
        "weights": weights,
        "weights_detail": {"bavit": bavit_weights, "detector": detector_note,
                           "detector_pretrained": predictor.detector_ready},
        "input": f"{YOLOS_SIZE}x{YOLOS_SIZE} YOLOS, {cfg.img_size}x{cfg.img_size} BAViT",
        "backend": backends[0],
        "results": results,
        "backends": backend_reports,
        "flop_curve": [[float(s), accounting_at_sparsity(float(s), model.config, cfg).flop_ratio] for s in flop_grid],
        "target": {"sparsity": 0.35, "speedup": TARGET_SPEEDUP_AT_35, "backend": backends[0],
                   "measured": at35[0]["speedup"] if at35 else None,
                   "flop_ratio": accounting_at_sparsity(0.35, model.config, cfg).flop_ratio,
                   "min_fraction_of_flop_ratio": TARGET_FRACTION_OF_FLOP_RATIO},
        "machine": machine_info(load_before),
    }
    if batch > 1:
        report[f"batch{batch}"] = backend_reports[backends[0]][f"batch{batch}"]
    if "onnxruntime" in predictors and "onnxruntime-int8" in predictors:
        report["int8_agreement"] = int8_agreement(predictors["onnxruntime"].detector_runner,
                                                  predictors["onnxruntime-int8"].detector_runner, pixels_all)
    return report


def int8_agreement(float32, int8, pixels: torch.Tensor) -> dict:
    """How closely the int8 detector (``onnxruntime-int8``) follows the float32 one on ``pixels`` ``[B, 3, 512,
    512]``, dense: the largest logit and box differences, and the share of the detection slots whose most likely
    class (no-object included) is the same. With random weights this agreement is all that can be said."""
    exact, quantized = float32(pixels), int8(pixels)
    same_class = (exact.logits.argmax(-1) == quantized.logits.argmax(-1)).float().mean()
    return {"images": int(pixels.shape[0]),
            "max_abs_logit_diff": float((exact.logits - quantized.logits).abs().max()),
            "max_abs_box_diff": float((exact.pred_boxes - quantized.pred_boxes).abs().max()),
            "same_class_share": float(same_class)}


def format_table(report: dict) -> str:
    """Markdown tables of a :func:`~bavit.bench.latency.run_bench` report, one column block per backend (ms are
    medians; speed-up = dense / pipeline, each backend against its own dense run), and the targets' verdicts."""
    backends = list(report.get("backends") or {report.get("backend", "torch"): {"results": report["results"]}})
    lines = [f"threads: {report['threads']}; weights: {report['weights']}", ""]
    columns = ("| sparsity | backend | kept | dense ms | BAViT ms | CCA ms | pruned YOLOS ms | pipeline ms | speed-up "
               "| FLOP ratio | speed-up / FLOP ratio | dense img/s | pipeline img/s | peak RSS MiB |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def table(key: str, title: str) -> None:
        tables = [report["backends"][name].get(key) if "backends" in report else report.get(key) for name in backends]
        if key != "results":
            tables = [t["results"] if t else None for t in tables]
        if not any(tables):
            return
        lines.extend([title, "", columns])
        for level in range(len(tables[0])):
            for name, rows in zip(backends, tables):
                row = rows[level]
                lines.append(
                    f"| {row['sparsity'] * 100:.0f}% | {name} | {row['kept_patches']:.0f} | {row['dense_ms']:.1f} "
                    f"| {row['bavit_ms']:.1f} | {row['cca_ms']:.2f} | {row['pruned_yolos_ms']:.1f} "
                    f"| {row['pruned_total_ms']:.1f} | {row['speedup']:.2f}x | {row['flop_ratio']:.2f}x "
                    f"| {row['speedup'] / row['flop_ratio']:.2f} | {row['dense_img_per_s']:.2f} "
                    f"| {row['pruned_img_per_s']:.2f} | {row['peak_rss_mb']:.0f} |")
        lines.append("")

    table("results", "batch 1")
    for key, value in report.items():
        if key.startswith("batch") and isinstance(value, dict) and value.get("results"):
            table(key, f"batch {value['batch']} (kept counts spread up to +-10% of the grid around the level; "
                       "ms per batch; onnxruntime runs the pruned graph image by image)")
    lines.extend(verdicts(report))
    load = report["machine"]["load_average_before"][0], report["machine"]["load_average_after"][0]
    lines += ["", f"load average before/after: {load[0]:.1f}/{load[1]:.1f} on {report['machine']['cpu_count']} CPUs "
                  f"(a shared machine: expect noise); OMP_WAIT_POLICY {report['machine']['omp_wait_policy']}"]
    return "\n".join(lines)


def verdicts(report: dict) -> list[str]:
    """The speed targets against the primary backend's batch-1 rows: >= 1.50x at 35%, and at every level
    >= 29% at least 95% of the FLOP ratio."""
    target, name = report["target"], report.get("backend", "torch")
    lines = []
    if target["measured"] is not None:
        met = target["measured"] >= target["speedup"]
        lines.append(f"target: >= {target['speedup']:.2f}x at 35% sparsity, batch 1, {name}: measured "
                     f"{target['measured']:.2f}x ({'met' if met else 'NOT met'})")
    fraction = target.get("min_fraction_of_flop_ratio", TARGET_FRACTION_OF_FLOP_RATIO)
    for row in report["results"]:
        if row["sparsity"] >= 0.285:
            ratio = row["speedup"] / row["flop_ratio"]
            lines.append(f"target: speed-up >= {fraction:.0%} of the FLOP ratio at {row['sparsity'] * 100:.0f}%, "
                         f"{name}: {row['speedup']:.2f}x / {row['flop_ratio']:.2f}x = {ratio:.0%} "
                         f"({'met' if ratio >= fraction else 'NOT met'})")
    agreement = report.get("int8_agreement")
    if agreement:
        lines.append(f"int8 detector vs float32 (onnxruntime, dense, {agreement['images']} images): same most likely "
                     f"class in {agreement['same_class_share']:.1%} of the detection slots, max |logit diff| "
                     f"{agreement['max_abs_logit_diff']:.3f}, max |box diff| {agreement['max_abs_box_diff']:.4f}"
                     f"{'' if report['weights_detail']['detector_pretrained'] else ' (random weights: agreement is all that can be said)'}")
    return lines


def plot(report: dict, path: str | os.PathLike) -> Path:
    """Measured speed-up vs sparsity per backend beside the FLOP-ratio curve (matplotlib's Agg canvas; no global
    backend)."""
    fig, ax = new_axes((6.4, 4.2))
    flop = np.array(report["flop_curve"])
    ax.plot(flop[:, 0] * 100, flop[:, 1], color="0.4", linestyle="--", label="FLOP ratio (dense / BAViT + pruned)")
    backends = report.get("backends") or {report.get("backend", "torch"): {"results": report["results"]}}
    for (name, value), marker in zip(backends.items(), ("o", "^", "v", "D")):
        res = value["results"]
        ax.plot([r["sparsity"] * 100 for r in res], [r["speedup"] for r in res], f"{marker}-", label=f"{name}, batch 1")
        for key, sub in value.items():
            if key.startswith("batch") and sub and sub.get("results"):
                res = sub["results"]
                ax.plot([r["sparsity"] * 100 for r in res], [r["speedup"] for r in res], f"{marker}:",
                        label=f"{name}, batch {sub['batch']}")
    ax.axhline(1.0, color="0.7", linewidth=0.8)
    ax.plot([35], [TARGET_SPEEDUP_AT_35], "r*", markersize=10, label=f"target {TARGET_SPEEDUP_AT_35}x at 35%")
    ax.set_xlabel("sparsity (% of YOLOS patches pruned)")
    ax.set_ylabel("end-to-end speed-up vs dense YOLOS")
    ax.set_title(f"BAViT-small + CCA + pruned YOLOS-tiny, CPU {report['threads']} threads", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    save_png(fig, path, report["weights"])
    return Path(path)
