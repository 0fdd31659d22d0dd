"""Shared helpers for the app tests: tiny models in temp dirs and the app started as a real server on a free port."""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]

_TMP = Path(tempfile.mkdtemp(prefix="bavit-app-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def random_bavit_checkpoint(seed: int = 0) -> Path:
    """A random-init BAViT-small saved like a shipped checkpoint (cached per seed for the test process)."""
    path = _TMP / f"bavit-random-{seed}.safetensors"
    if not path.exists():
        import torch

        from bavit.core.config import SMALL
        from bavit.core.checkpoint import save_checkpoint
        from bavit.core.model import build_bavit

        torch.manual_seed(seed)
        save_checkpoint(build_bavit(SMALL), path)
    return path


CALIBRATION_IMAGES = sorted(EXAMPLES.glob("*.jpg"))  # the test calibrations' images (the gallery's)
CALIBRATION_LEVELS = tuple(round(0.05 * i, 2) for i in range(20))  # 0%, 5%, ..., 95% (interpolated between)
CALIBRATION_SOURCE = "assets/examples, a test calibration"


def calibrated_checkpoint(base: Path, name: str) -> Path:
    """A copy of the checkpoint ``base`` with a calibration on :data:`CALIBRATION_IMAGES` stored in it (every CCA
    setting of the app's slider, 5% levels), cached by ``name`` for the test process."""
    path = _TMP / f"{name}.safetensors"
    if not path.exists():
        from bavit.predictor import Predictor
        from bavit.core.checkpoint import read_checkpoint, save_checkpoint
        from bavit.pruning.calibration import CCA_STEPS, calibrate

        predictor = Predictor(bavit=base, detector=None)
        probs = [predictor.set_image(image).fg_prob for image in CALIBRATION_IMAGES]
        calibration = calibrate(probs, levels=CALIBRATION_LEVELS, cca_steps=CCA_STEPS, grid=predictor.yolos_grid,
                                resample=predictor.resample_mode, source=CALIBRATION_SOURCE)
        saved = read_checkpoint(base)
        save_checkpoint(saved.model, path, saved.extra, calibration.to_dict())  # atomic: a copy with a calibration
    return path


def calibrated_bavit_checkpoint(seed: int = 0) -> Path:
    """:func:`random_bavit_checkpoint` (the same weights) with a calibration (see :func:`calibrated_checkpoint`)."""
    return calibrated_checkpoint(random_bavit_checkpoint(seed), f"bavit-random-{seed}-calibrated")


def tiny_yolos_dir(seed: int = 0, confident: bool = False) -> Path:
    """A tiny random YOLOS (2 layers, width 32) saved with ``save_pretrained``: loads like a real detector dir.
    ``confident``: its class head favours "cat" (scores near 0.9), so every detection token passes the Predictor's
    score threshold and the boxes (random, but moved by the keep mask) are drawn."""
    path = _TMP / f"yolos-tiny-random-{seed}{'-confident' if confident else ''}"
    if not path.exists():
        import torch
        from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

        torch.manual_seed(seed)
        config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=[512, 512], num_detection_tokens=10, num_labels=3,
                             id2label={0: "cat", 1: "dog", 2: "cup"}, label2id={"cat": 0, "dog": 1, "cup": 2})
        model = YolosForObjectDetection(config).eval()
        if confident:
            with torch.no_grad():
                model.class_labels_classifier.layers[-1].bias[0] += 6.0
        model.save_pretrained(path)
        YolosImageProcessor().save_pretrained(path)
    return path


def missing_detector_dir() -> Path:
    return _TMP / "no-such-detector"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """``python app.py`` in a subprocess on a free port, configured through the environment like a Space."""

    def __init__(self, detector: Path | str | None = None, data: Path | str | None = None, bavit: Path | None = None,
                 timeout: float = 120.0):
        self.bavit = Path(bavit or random_bavit_checkpoint())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ)
        env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(self.port), GRADIO_ANALYTICS_ENABLED="False",
                   HF_HUB_OFFLINE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
                   BAVIT_CHECKPOINT=str(self.bavit),
                   BAVIT_DETECTOR=str(detector or missing_detector_dir()))
        env.pop("BAVIT_DATA", None)
        if data:
            env["BAVIT_DATA"] = str(data)
        self.log = _TMP / f"app-{self.port}.log"
        self._log_file = open(self.log, "w")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env,
                                        stdout=self._log_file, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"app did not start within {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log_file.close()


_SERVERS: dict[tuple, AppServer] = {}


def shared_server(**kwargs) -> AppServer:
    """One server per configuration for the whole test process (the client tests share it). By default a random
    BAViT with a calibration (:func:`calibrated_bavit_checkpoint`), so all three sparsity modes are served."""
    kwargs.setdefault("bavit", calibrated_bavit_checkpoint())
    key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
    server = _SERVERS.get(key)
    if server is None or not server.alive():
        server = _SERVERS[key] = AppServer(**kwargs)
    return server

