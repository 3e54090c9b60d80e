#!/usr/bin/env bash
# Create (or reuse) .venv and install everything the project needs, torch included.
# Idempotent: a second run only checks that the pinned packages are present.
# Override the torch build with TORCH_SPEC, e.g. TORCH_SPEC="torch torchvision" for the newest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.selva-setup-stamp
want="$(cat requirements.txt requirements-dev.txt; echo "$TORCH_SPEC")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  python -m pip install -q $TORCH_SPEC
  python -m pip install -q -r requirements.txt -r requirements-dev.txt
  printf '%s' "$want" > "$stamp"
fi
