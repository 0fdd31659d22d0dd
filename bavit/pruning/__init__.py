"""Token-pruned detection: BAViT's grid decides which YOLOS patches are computed (§3.5, Table 2, Eq. 4).

- :mod:`.settings` — :class:`~.settings.PruningSettings`: the rule's settings, their defaults, ranges and one
  validation.
- :mod:`.keep_mask` — the one rule "FG probabilities -> grid (threshold or top-k) -> CCA -> YOLOS keep mask".
- :mod:`.calibration` — one threshold per target mean sparsity (Table 2), stored in the BAViT checkpoint.
- :mod:`.yolos` — ``patch_yolos``: a ToMe-style patch of transformers' ``YolosForObjectDetection``.
- :mod:`.detector` — loading YOLOS by hub id or folder, the YOLOS input constants, the YOLOS-tiny architecture.
- :mod:`.accounting` — Table 2 token counts, Eq. 4 reduction and MACs.
"""
