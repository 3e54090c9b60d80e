#!/usr/bin/env bash
# The README's demo command: set up, then teach the tiny SelVA (trained on synthetic buzzes and
# rushes, shipped in selva_core/assets) a sound it has never heard, with a LoRA, end to end (no
# downloads, a few minutes on a CPU). Listen to OUTPUT_DIR/listen/*_side_by_side.wav
# (true | base | adapted); OUTPUT_DIR/listen/demo_report.json has the distances.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
out="${1:-demo_output}"
start=$SECONDS
python train_lora.py --demo --output_dir "$out"
echo "demo finished in $((SECONDS - start)) s; listen to $out/listen/*_side_by_side.wav"
