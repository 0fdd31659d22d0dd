"""Training and evaluation loops (§3.4, §4): BAViT training, token metrics, sparse fine-tuning, COCO mAP. Library
functions only: the commands named below are in :mod:`bavit.cli`.

- :mod:`.train` — ``python -m bavit train`` (accumulative CE, Adam + StepLR, DDP under torchrun).
- :mod:`.evaluate` — ``python -m bavit evaluate`` (token metrics before and after CCA, with baselines).
- :mod:`.calibrate` — ``python -m bavit calibrate`` (the checkpoint's thresholds per target mean sparsity).
- :mod:`.budget` — pruning quality at a compute budget (object pixel recall per sparsity, against baselines),
  its table and plot.
- :mod:`.metrics` — the one confusion count and the token metrics built on it.
- :mod:`.finetune` — ``python -m bavit finetune`` (YOLOS fine-tuned on FG tokens only, §4.2).
- :mod:`.coco_map` — ``python -m bavit map`` (COCOeval mAP of dense and pruned YOLOS, Table 2), with
  :mod:`.cocoeval`, the ``COCOeval`` wrapper.
- :mod:`.pruning_cost` — what pruning cost an image without ground truth: dense detections matched to pruned ones
  (kept, moved, lost, new) and the pruned detections' AP against the dense ones.
- :mod:`.dataset_costs` — ``python -m bavit costs`` (what a setting costs each image of a dataset: the object
  pixels it prunes away from the detector, per image, most costly first).
- :mod:`.state` — the one way training state (optimizer, scheduler, progress) is saved and restored.
"""
