"""Deployment: ONNX export of BAViT and the pruned / dense YOLOS, with the export-ready
graphs it traces (:mod:`.export`, ``python -m bavit export``), and the two inference backends, torch and onnxruntime,
that the Predictor, the benchmark and the mAP harness share (:mod:`.runtime`)."""
