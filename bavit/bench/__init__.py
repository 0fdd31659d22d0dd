"""Benchmarks of the pipeline that print figures and ratios (never timed tests): what the pruning buys on this
machine (§4.3). The commands named below are in :mod:`bavit.cli`; ``static_int8`` and ``skew`` are scripts of their own. Measured
figures are in ``docs/results.md``. The app's benchmarks (slider round trips, browser, memory under uploads) and the
batch-mode script are not part of the library: they are in the repository's ``benchmarks/`` folder.

- :mod:`.latency` — ``python -m bavit bench``: dense vs BAViT + CCA + pruned YOLOS per stage, its tables, the
  speed targets' verdicts and the speed-up plot.
- :mod:`.tradeoff` — ``python -m bavit tradeoff``: object pixel recall vs end-to-end latency (BAViT included)
  per BAViT checkpoint, the detector timed at a grid of kept counts and interpolated per image; table and plot.
- :mod:`.frontier` — ``python -m bavit frontier``: BAViT designs' cost next to the detector against their quality;
  table and plot.
- :mod:`.static_int8` — ``python -m bavit.bench.static_int8``: BAViT's static int8 graphs against dynamic int8
  and float32.
- :mod:`.timing` — what the benches share: the one timing of calls (warm-up, interleaved medians), peak RSS, the
  machine and weights notes, the images and the kept-count spread.
- :mod:`.figures` — the one figure convention of the bench plots.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: app.py and assets/ are here
EXAMPLES = ROOT / "assets" / "examples"  # the example images the benches default to
