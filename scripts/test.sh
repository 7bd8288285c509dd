#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs the type checker and the whole suite.
# llama-cpp-python compiles from source the first time (about 5-8 minutes; pip caches the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e ".[llama,test]"
# anvil (a real local chain for tests/anvil) and solc, pinned in tools/chain/package-lock.json
npm ci --prefix tools/chain --no-audit --no-fund --loglevel=error >/dev/null
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
if [ "$#" -eq 0 ]; then
    # the node tests once more with every node on the continuous-batching engine (issue 16)
    FABSTIR_TEST_ENGINE=llama-batch .venv/bin/python -m pytest -q tests/node
fi
