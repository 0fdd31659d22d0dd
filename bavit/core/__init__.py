"""The paper's core: what BAViT is and how it learns (Sah et al., BAViT, §3.1-3.4 and the appendix).

- :mod:`.labels` — patch labels from masks or boxes (§3.1, Eq. 1-2): the one home of the FG rules
  (``fg_from_fractions`` with ``FG_FRAC``, ``fg_from_box_scores``) and of ``IGNORE_INDEX``.
- :mod:`.config` — :class:`BAViTConfig`, stored in every checkpoint, and the ``small`` / ``large`` presets (§3.2).
- :mod:`.registry` — the shipped checkpoint of each preset (none for ``large``).
- :mod:`.model` — the BAViT token classifier (timm ViT, no class token, a 2-way head per token) (§3.2).
- :mod:`.lite0` — the ImageNet-pretrained EfficientNet-Lite0 token embedding (``stem="lite0"``; not in the paper).
- :mod:`.checkpoint` — its safetensors checkpoints: weights, config, training record and calibration in one file,
  read in one pass (:func:`~.checkpoint.read_checkpoint`).
- :mod:`.pretrained` — initialisation from a timm ViT or from an already loaded YOLOS (§3.3).
- :mod:`.loss` — the accumulative cross-entropy (§3.4, Eq. 3).
- :mod:`.cca` — the CCA post-process and grid resampling (appendix, Fig. 5-6).

Of the rest of the package, this folder imports only the shared utilities :mod:`bavit.errors`, :mod:`bavit.imageio`
and :mod:`bavit.files`; nothing here imports the pruning, data, engine, deploy, bench, app or CLI parts, or the
Predictor.
"""
