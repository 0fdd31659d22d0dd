"""Benchmarks of the app, of the pruned detector's batch modes and of the training/serving skews: scripts that start ``python app.py`` (or build a
model), time or measure it, and print figures (never timed tests). Each runs from the repository root as
``python -m benchmarks.NAME [flags]`` (``--help`` lists them); the measured figures are in ``docs/results.md`` and
``docs/deployment.md``. They import the library (``bavit``); the library never imports them.

- :mod:`.app_bench` — ``python -m benchmarks.app_bench``: the app's slider round trip through ``gradio_client``, and
  the app's shown speed-up against ``python -m bavit bench``'s (:mod:`.app_agreement`).
- :mod:`.browser_bench` — ``python -m benchmarks.browser_bench``: the slider in a real browser (Playwright and
  Debian's chromium).
- :mod:`.upload_memory` — ``python -m benchmarks.upload_memory``: the app's memory under the largest and the crafted
  uploads (the attacks of docs/deployment.md's limits); the crafted files in :mod:`.crafted_images`, the raw
  requests (uploads, queue joins, direct POSTs) in :mod:`.app_requests`.
- :mod:`.app_process` — starting ``python app.py`` on a free port for the three above, and stopping it.
- :mod:`.batch_modes` — ``python -m benchmarks.batch_modes``: padded vs per-image pruned batches (no app).
- :mod:`.screenshot` — ``python -m benchmarks.screenshot``: README's screenshot of the settled app.
- :mod:`.cold_start` — ``python -m benchmarks.cold_start``: a fresh app as its first visitor meets it (seconds from
  the page served to the first grid and to the latency panel filled).
- :mod:`.skew` — ``python -m benchmarks.skew``: what differs between training or calibration and serving: token
  accuracy with the training preprocessing the shipped model was trained with against the served one, and
  calibrations from torch float32 against onnxruntime int8 probabilities (no app).

Calls timed in Python are timed by :mod:`bavit.bench.timing` (:func:`~bavit.bench.timing.timed_ms`,
:func:`~bavit.bench.timing.interleaved_medians`), as the library's benches are (the browser bench's times are taken in
the page). The command lines run through :func:`bavit.cli.run_command`, as ``python -m bavit``'s do: ``--threads``
set once, the ``--json`` path checked before the work, a user error in one line.
"""
