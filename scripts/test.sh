#!/usr/bin/env bash
# The README's test command: set up the environment on a fresh machine, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python -m ruff check .
python -m pytest -q "$@"
