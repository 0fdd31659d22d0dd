#!/usr/bin/env bash
# README's test command. Installs what the tests need on top of README's first command (requirements-dev.txt into
# .venv, Debian's chromium for the browser test when it is missing), then runs pytest. `.ci/run` calls this too.
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements-dev.txt

# Playwright drives Debian's chromium (it cannot download its own browser here).
if ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi

exec .venv/bin/python -m pytest -q "$@"
