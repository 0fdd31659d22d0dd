"""Benchmarks that print figures and ratios (never timed tests): what the pruning buys on this machine. The commands
named below are in :mod:`bavit.cli`; ``batch_modes`` is a script of its own. Measured figures are in
``docs/results.md``.

- :mod:`.latency` — ``python -m bavit bench``: dense vs BAViT + CCA + pruned YOLOS per stage (§4.3); its tables,
  verdicts and plot are in :mod:`.latency_report`.
- :mod:`.tradeoff` — ``python -m bavit tradeoff``: object pixel recall vs end-to-end latency (BAViT included)
  per BAViT checkpoint; the detector's timing and the per-image interpolation in :mod:`.tradeoff_latency`, the
  table and plot in :mod:`.tradeoff_report`.
- :mod:`.timing` — what the in-process benches share: interleaved medians, peak RSS, the machine and weights notes,
  the images and the kept-count spread.
- :mod:`.batch_modes` — ``python -m bavit.bench.batch_modes``: padded vs per-image pruned batches.
- :mod:`.app_bench` — ``python -m bavit app-bench``: the app's slider round trip; the app's shown speed-up against
  the bench's in :mod:`.app_agreement`; starting ``python app.py`` in :mod:`.app_process` (shared with
  :mod:`.browser_bench` and :mod:`.upload_memory`).
- :mod:`.browser_bench` — ``python -m bavit app-bench --browser``: the slider in a real browser.
- :mod:`.upload_memory` — ``python -m bavit memory-bench``: the app's memory under the largest and the crafted
  uploads (the attacks of docs/deployment.md's limits); the crafted files in :mod:`.crafted_images`, the raw
  requests (uploads, queue joins, direct POSTs) in :mod:`.app_requests`.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: app.py and assets/ are here
EXAMPLES = ROOT / "assets" / "examples"  # the example images the benches default to
