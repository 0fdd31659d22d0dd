"""Deployment (issue: deployable speed): ONNX export of BAViT and the pruned / dense YOLOS (:mod:`.export`,
``python -m bavit export``), the export-ready graphs (:mod:`.graphs`), and the two inference backends, torch and
onnxruntime, that the Predictor, the benchmark and the mAP harness share (:mod:`.runtime`)."""
