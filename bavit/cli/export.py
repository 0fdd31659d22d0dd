"""``python -m bavit export``: a Predictor built from the flags, its models written to ONNX by
:func:`bavit.deploy.export.export_all`, and what was written printed."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..deploy.export import FILES, MANIFEST, export_all
from ..pruning.detector import DEFAULT_DETECTOR

DESCRIPTION = "ONNX export of the pipeline's two models, and ``python -m bavit export``."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export BAViT and the pruned / dense YOLOS to ONNX",
                                   description=DESCRIPTION)
    parser.add_argument("--out", required=True,
                        help="output folder: new, empty, or an earlier export (replaced atomically); a folder holding "
                             "anything else is refused")
    parser.add_argument("--bavit", default=None, help="BAViT checkpoint (default: the shipped BAViT-small)")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR,
                        help="YOLOS hub id or save_pretrained directory (without weights: the YOLOS-tiny architecture "
                             "at random init, said so in export.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.registry import DEFAULT_BAVIT_CHECKPOINT
    from ..predictor import Predictor  # here: tests replace Predictor on its module

    bavit_path = args.bavit or DEFAULT_BAVIT_CHECKPOINT
    predictor = Predictor(bavit=bavit_path, detector=args.detector)
    detector = predictor.latency_model
    stats = None
    if predictor.processor is not None:
        stats = (tuple(predictor.processor.image_mean), tuple(predictor.processor.image_std))
    calibration = predictor.calibration.to_dict() if predictor.calibration is not None else None
    manifest = export_all(args.out, predictor.bavit, detector, bavit_source=str(bavit_path),
                          detector_source=str(args.detector), detector_pretrained=predictor.detector_ready,
                          calibration=calibration, processor_stats=stats)
    for name in FILES.values():
        size = (Path(args.out) / name).stat().st_size / 2**20
        print(f"wrote {Path(args.out) / name} ({size:.1f} MiB, onnx.checker OK)")
    print(f"wrote {Path(args.out) / MANIFEST}")
    if not manifest["detector"]["pretrained"]:
        print(f"warning: {manifest['detector']['note']}")
    return 0
