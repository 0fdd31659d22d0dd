"""Datasets: images with the annotations that give patch labels and detection targets (§4.1).

- :mod:`.records` — COCO (pycocotools) and VOC records, ``load_coco``.
- :mod:`.splits` — deterministic held-out and k-fold splits of records (by image id and seed).
- :mod:`.ade20k` — ADE20K scenes as training data (object classes -> object pixels for the patch rule).
- :mod:`.augment` — training cache and augmentation that move the labels with the image.
- :mod:`.coco` — COCO detection data for YOLOS (mAP and fine-tuning): targets and label-id mapping; a dataset's
  images by file name with their ground truth (the app's).
"""
