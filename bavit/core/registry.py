"""The shipped BAViT checkpoints, beside the config presets (:data:`bavit.core.config.PRESETS`) they belong to.

A preset names an architecture; this registry names the file trained for it, if one ships. BAViT-large is not
shipped: trained on the same images it did not beat small on the holdout (docs/training.md, ablation: "BAViT-large does not earn its place"), so it
would only cost latency; ``build_predictor("large", checkpoint=...)`` loads one you trained.
"""
from __future__ import annotations

from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
SHIPPED = {"small": CHECKPOINTS / "bavit-small-coco.safetensors"}
NOT_SHIPPED = {"large": "no BAViT-large is shipped: on this project's training images it did not beat BAViT-small "
                        "(docs/training.md, ablation); train one (python -m bavit train --model large) and pass "
                        "checkpoint="}
DEFAULT_BAVIT_CHECKPOINT = SHIPPED["small"]

__all__ = ["CHECKPOINTS", "SHIPPED", "NOT_SHIPPED", "DEFAULT_BAVIT_CHECKPOINT"]
