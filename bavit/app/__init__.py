"""The Gradio app: every step of the method inspectable in a browser. No model logic lives here: handlers call the
shared :class:`~bavit.predictor.Predictor` and draw.

- :mod:`.demo` — builds the app (``app.py`` launches it); :mod:`.ui` — the ``gr.Blocks`` layout and event wiring;
  :mod:`.handlers` — the event functions; :mod:`.endpoints` — the ``gradio_client`` API (:mod:`.api`: ``analyze``).
- :mod:`.explorer` — the app's logic around the Predictor; :mod:`.session` — one session's state and controls;
  :mod:`.gate` — the order one session's events run in; :mod:`.uploads` — which files a request may read.
- :mod:`.panels` — the text panels; :mod:`.viz` — grid, confusion and detection overlays; :mod:`.curve` — the
  sparsity / speed-up curve; :mod:`.gt` — ground-truth grids from a COCO dataset or a painted mask.
- :mod:`.latency` — the latency rules (medians of warm runs); :mod:`.timing` — the models timed in the background.
- :mod:`.client` and ``static/`` — the page's own drawing: grid-only slider moves answered in the browser.
"""
