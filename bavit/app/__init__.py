"""The Gradio app: every step of the method inspectable in a browser. No model logic lives here: the events call the
shared :class:`~bavit.predictor.Predictor` and draw.

- :mod:`.ui` — the app: ``create_demo`` (``app.py`` launches it), the ``gr.Blocks`` layout, the event functions and
  the ``gradio_client`` API; :mod:`.server` — how it is served, and the limits on what a request can make it hold.
- :mod:`.explorer` — the app's logic around the Predictor, and the ``analyze`` API's answer.
- :mod:`.session` — one session: its image, its ground truth, its controls, the order its events run in.
- :mod:`.uploads` — which files a request may read, and reading them under the limits.
- :mod:`.page` — what the page shows as data: the text panels, the messages, the script (``static/``: grid-only
  slider moves answered in the browser).
- :mod:`.viz` — grid, confusion and detection overlays, and the sparsity / speed-up curve.
- :mod:`.latency` — the latency rules (medians of warm runs) and the models timed in the background.
"""
