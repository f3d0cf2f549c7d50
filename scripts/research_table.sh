#!/usr/bin/env bash
# The research table: ./scripts/research_table.sh [PRESET] [OUT_DIR] [extra `vlm research` flags]
# Trains every video encoder, fusion and audio variant on moving_shapes (pretraining, then QA and
# captioning finetuning from it) and writes docs/research_table.md. Finished runs are skipped and
# interrupted ones resume, so it can be run in pieces. Hours per variant at the small preset on a CPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
PRESET="${1:-small}"
OUT="${2:-runs/research_$PRESET}"
shift $(( $# < 2 ? $# : 2 ))
vlm research --preset "$PRESET" --out "$OUT" --table "docs/research_table_$PRESET.md" \
  --config.data.data_dir="${VLM_DATA_DIR:-data}" "$@"
