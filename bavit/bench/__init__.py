"""Benchmarks that print figures and ratios (never timed tests): what the pruning buys on this machine. The commands
named below are in :mod:`bavit.cli`; ``batch_modes`` is a script of its own.

- :mod:`.latency` — ``python -m bavit bench``: dense vs BAViT + CCA + pruned YOLOS per stage (§4.3).
- :mod:`.tradeoff` — ``python -m bavit tradeoff``: object pixel recall vs end-to-end latency (BAViT included)
  per BAViT checkpoint.
- :mod:`.batch_modes` — ``python -m bavit.bench.batch_modes``: padded vs per-image pruned batches.
- :mod:`.app_bench` — ``python -m bavit app-bench``: the app's slider round trip.
"""
