"""BAViT's graph with static int8 (QDQ, calibrated ranges) against the dynamic int8 MatMuls the app runs and
float32: how many tokens each flips at 0.5 against float32, and its ms (one image per call, in turn).

    OMP_WAIT_POLICY=PASSIVE python -m bavit.bench.static_int8 --checkpoint CKPT \
        --coco-root ../shared/data/coco --folds 5 --fold 0 --calibration-images ../shared/data/ade20k/images

The tokens are those of fold ``--fold`` of train2017 (images the fold models did not train on); the static ranges
come from ``--calibration-count`` images of ``--calibration-images`` from ``--calibration-start`` on (by default
ADE20K scenes 1000-1063: the shipped recipe trains on the first 291). Static int8 quantizes what dynamic int8
leaves in float32 (the Lite0 trunk's convolutions), so it can be faster, but its ranges are fixed in advance: it is
accepted only if it changes at most 0.3 points of tokens; beyond that, quantization-aware fine-tuning is the way.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.checkpoint import read_checkpoint
from ..core.model import BAViT
from ..data.records import coco_records, coco_split
from ..data.splits import fold_split
from ..deploy.export import export_bavit, quantize_bavit, quantize_static_qdq
from ..deploy.runtime import session
from ..imageio import load_image
from ..predictor import Predictor
from .timing import interleaved_medians

VARIANTS = ("float32", "dynamic int8 MatMuls", "static int8 (all)", "static int8 (MatMuls)", "static int8 (Convs)")


def bavit_graphs(model: BAViT, calibration: Sequence[np.ndarray]) -> dict[str, bytes]:
    """Every :data:`VARIANTS` graph of ``model``; the static ones calibrated on ``calibration`` (``[1, 3, S, S]``
    pixel arrays, BAViT's preprocessing)."""
    float32 = export_bavit(model)
    feeds = [{"pixels": pixels} for pixels in calibration]
    return {"float32": float32, "dynamic int8 MatMuls": quantize_bavit(model),
            "static int8 (all)": quantize_static_qdq(float32, feeds),
            "static int8 (MatMuls)": quantize_static_qdq(float32, feeds, ["MatMul"]),
            "static int8 (Convs)": quantize_static_qdq(float32, feeds, ["Conv"])}


def compare_graphs(graphs: dict[str, bytes], pixels: Sequence[np.ndarray], repeats: int = 3) -> list[dict]:
    """Per graph: the share of tokens whose ``fg_prob >= 0.5`` differs from the float32 graph's, the largest
    probability difference, and the median ms of one image (all graphs in turn, cycling through ``pixels``)."""
    sessions = {name: session(graph) for name, graph in graphs.items()}
    outputs = {name: np.concatenate([run.run(None, {"pixels": x})[0] for x in pixels]) for name, run in sessions.items()}
    reference = outputs["float32"]
    cursor = {name: 0 for name in sessions}

    def call(name: str):
        def run():
            sessions[name].run(None, {"pixels": pixels[cursor[name] % len(pixels)]})
            cursor[name] += 1
        return run

    medians = interleaved_medians({name: call(name) for name in sessions}, repeats * len(pixels))
    return [{"graph": name, "tokens_changed": float(((out >= 0.5) != (reference >= 0.5)).mean()),
             "max_prob_difference": float(np.abs(out - reference).max()), "ms": medians[name],
             "tokens": int(out.size)} for name, out in outputs.items()]


def format_table(rows: list[dict]) -> str:
    lines = ["| BAViT graph | tokens changed at 0.5 vs float32 | max prob difference | ms |", "|---|---|---|---|"]
    lines += [f"| {row['graph']} | {row['tokens_changed']:.2%} | {row['max_prob_difference']:.3f} | {row['ms']:.1f} |"
              for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--coco-root", required=True)
    parser.add_argument("--split", default="train2017")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--calibration-images", required=True, help="a folder of images for the static ranges")
    parser.add_argument("--calibration-start", type=int, default=1000)
    parser.add_argument("--calibration-count", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = read_checkpoint(args.checkpoint).model
    predictor = Predictor(bavit=model, detector=None, backend="torch")

    def pixels(image) -> np.ndarray:
        return predictor.bavit_pixels([image]).numpy()

    files = sorted(p for p in Path(args.calibration_images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    chosen = files[args.calibration_start: args.calibration_start + args.calibration_count]
    _, held = fold_split(coco_records(*coco_split(args.coco_root, args.split)), args.folds, args.fold)
    rows = compare_graphs(bavit_graphs(model, [pixels(load_image(path)) for path in chosen]),
                          [pixels(record.load_image()) for record in held], args.repeats)
    print(f"{args.checkpoint}: {len(held)} images of {args.split} fold {args.fold} of {args.folds} "
          f"({rows[0]['tokens']} tokens); static ranges from {len(chosen)} images of {args.calibration_images}; "
          f"{args.threads} threads, batch 1, medians of {args.repeats} interleaved passes")
    print(format_table(rows))


if __name__ == "__main__":
    main()
