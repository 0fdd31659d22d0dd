"""BAViT Explorer: the Gradio app (a Hugging Face Space entry point). All logic lives in the ``bavit`` package.

    python app.py [--bavit CKPT] [--detector ID_OR_DIR] [--data COCO_ROOT] [--backend torch|onnxruntime|onnxruntime-int8] [--port N]

Environment: BAVIT_CHECKPOINT, BAVIT_DETECTOR, BAVIT_DATA, BAVIT_BACKEND (same as the flags), BAVIT_CONCURRENCY (queue workers,
default 2), GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (honoured by ``launch``).
"""
import argparse
import os

if __name__ == "__main__":  # only as the entry point (a Space runs `python app.py`), and before the imports below:
    # huggingface_hub reads its timeouts when it is imported
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "5")  # fail fast without network

import sys  # noqa: E402

from bavit.app import server  # noqa: E402
from bavit.app.ui import create_demo  # noqa: E402
from bavit.errors import BAViTError  # noqa: E402
from bavit.imageio import allow_large_images  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="BAViT Explorer: background-aware token pruning, live.")
    parser.add_argument("--bavit", default=os.environ.get("BAVIT_CHECKPOINT"),
                        help="BAViT checkpoint (default: checkpoints/bavit-small-coco.safetensors)")
    parser.add_argument("--detector", default=os.environ.get("BAVIT_DETECTOR"),
                        help="YOLOS hub id or local directory (default: hustvl/yolos-tiny)")
    parser.add_argument("--data", default=os.environ.get("BAVIT_DATA"),
                        help="COCO-format root for ground-truth comparison (e.g. ../shared/data/coco)")
    parser.add_argument("--backend", default=os.environ.get("BAVIT_BACKEND"),
                        help="torch, onnxruntime or onnxruntime-int8 (default: the Predictor's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--port", type=int, default=None, help="server port (default: GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--host", default=None, help="server name (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    allow_large_images()
    try:
        demo = create_demo(bavit=args.bavit, detector=args.detector, data=args.data, backend=args.backend)
    except BAViTError as exc:  # a missing or broken checkpoint or dataset: one line, no traceback, exit status 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    concurrency = int(os.environ.get("BAVIT_CONCURRENCY", "2"))
    server.launch(demo, concurrency=concurrency, host=args.host, port=args.port, data=args.data)


if __name__ == "__main__":
    main()
