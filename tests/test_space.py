"""The Hugging Face Space builds with what CI tests: README front matter against the installed versions."""
import re
import sys
from pathlib import Path

import gradio

ROOT = Path(__file__).resolve().parents[1]


def front_matter() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    assert match, "README.md must start with the Space's YAML front matter"
    return {key.strip(): value.strip().strip("\"'") for key, _, value in
            (line.partition(":") for line in match.group(1).splitlines() if ":" in line)}


def test_front_matter_pins_the_tested_gradio_and_python():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == gradio.__version__
    assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_requirements_pin_the_same_gradio():
    pins = dict(line.split("#")[0].strip().split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line.split("#")[0])
    assert pins["gradio"] == gradio.__version__
