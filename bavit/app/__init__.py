"""The Gradio app: every step of the method inspectable in a browser (no model logic lives here).

- :mod:`.explorer` — the app's logic around the shared :class:`~bavit.predictor.Predictor`.
- :mod:`.session` — one browser session's state and the gate that runs its events one at a time, last one wins.
- :mod:`.ui` — the ``gr.Blocks`` layout and event wiring (``app.py`` launches it).
- :mod:`.viz` — grid, confusion and detection overlays, the sparsity curve.
- :mod:`.gt` — ground-truth grids from a COCO dataset or a painted mask.
"""
