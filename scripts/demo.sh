#!/usr/bin/env bash
# The README's demo command: set up, then train a LoRA end to end on a synthetic dataset with a
# tiny configuration of the real model classes (no downloads, a few minutes on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python train_lora.py --demo --output_dir "${1:-demo_output}"
