"""The app's shown speed-up against ``python -m bavit bench``'s (:mod:`.app_bench` reports both).

Once the app's background warm-up has its medians, the speed-up the app shows for the loaded image (its ``analyze``
API: the latency panel's numbers, at this image's kept count, after a few pruned runs at that count;
:func:`shown_speedup`) is put next to ``python -m bavit bench``'s speed-up at the same kept count (in-process, after
the app has stopped, same threads and backend; :func:`bench_speedup`), with their ratio and a verdict against
+-10% (:func:`compare`). The measured figures are in ``docs/results.md``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from bavit.deploy.runtime import DEFAULT_BACKEND

AGREEMENT = 0.10  # the app's shown speed-up and the bench's agree when their ratio is within 1 +- this
SHOWN_KEEP_RATIO = 0.5  # the shown speed-up is read with BAViT's top half kept (top-k, CCA 3): a mid-range count


def shown_speedup(client, image: Path, runs: int = 12, pause: float = 1.5, timeout: float = 240.0) -> dict:
    """The speed-up the app shows for ``image`` with :data:`SHOWN_KEEP_RATIO` of BAViT's tokens kept, CCA 3 (its
    ``analyze`` API returns the latency panel's numbers).

    Waits (polling every 2 s) until the app's background warm-up is done, then analyzes ``runs`` more times,
    ``pause`` seconds apart, as a user moving a control would: each times a pruned run at this image's kept count
    (so the pruned median comes from warm runs at this count, not the start-up curve), and meanwhile the app
    re-times dense and BAViT in the background. Returns the last result's ``speedup``, ``kept_patches``,
    ``sparsity`` and ``latency_ms``.
    """
    from gradio_client import handle_file

    def analyze() -> dict:
        return client.predict(handle_file(str(image)), 0.5, 3, SHOWN_KEEP_RATIO, api_name="/analyze")

    deadline = time.monotonic() + timeout
    result = analyze()
    while result["latency_ms"].get("warming_up") and time.monotonic() < deadline:
        time.sleep(2.0)  # the warm-up runs while no request is (each poll is one)
        result = analyze()
    for _ in range(runs):
        time.sleep(pause)
        result = analyze()
    return {"speedup": result["speedup"], "kept_patches": result["kept_patches"], "sparsity": result["sparsity"],
            "latency_ms": result["latency_ms"]}


def bench_speedup(image: str | os.PathLike, kept: int, threads: int, repeats: int, bavit: str | None = None,
                  detector: str | None = None, backend: str | None = None) -> dict:
    """``python -m bavit bench``'s batch-1 row at ``kept`` patches for ``image`` (in-process, same threads and
    backend as the app; ``repeats`` timed runs): :func:`bavit.bench.latency.run_bench` on a folder holding only
    that image."""
    from bavit.bench.latency import run_bench
    from bavit.pruning.detector import DEFAULT_DETECTOR

    with tempfile.TemporaryDirectory(prefix="bavit-app-bench-") as folder:
        shutil.copyfile(image, Path(folder) / Path(image).name)
        report = run_bench(threads=threads, sparsities=[1.0 - kept / 1024], repeats=repeats, warmup=2,
                           batch=0, bavit=bavit, detector=detector or DEFAULT_DETECTOR,
                           images=[Path(folder)], backends=(backend or DEFAULT_BACKEND,), log=lambda line: None)
    return report["results"][0]


def compare(shown: dict, bench: dict) -> dict:
    """The app's shown speed-up against the bench's: ratio (app / bench) and verdict (within +-:data:`AGREEMENT`)."""
    app, reference = shown["speedup"], bench["speedup"]
    ratio = None if app is None else app / reference
    agree = ratio is not None and abs(ratio - 1.0) <= AGREEMENT
    return {"app_speedup": app, "bench_speedup": reference, "ratio": ratio, "agree": agree,
            "app_kept": shown["kept_patches"], "bench_kept": bench["kept_patches"]}
