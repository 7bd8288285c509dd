#!/usr/bin/env bash
# Installs fabstir with the llama.cpp engine and the default model, then runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e ".[llama,model]"
exec .venv/bin/fabstir demo "$@"
