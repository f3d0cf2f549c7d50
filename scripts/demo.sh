#!/usr/bin/env bash
# The main job on the embedded default data: ./scripts/demo.sh [OUT_DIR]
# Creates .venv and installs on first use. Today: build moving_shapes, show its statistics and pictures,
# summarise the model and measure the input pipeline. Training, evaluation and the report join as they land.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
OUT="${1:-demo_out}"
DATA_DIR="${VLM_DATA_DIR:-data}"
SIZE="${VLM_DEMO_SIZE:-tiny}"

echo "== 1. build moving_shapes ($SIZE) into $DATA_DIR"
vlm data build moving_shapes --data_dir "$DATA_DIR" --size "$SIZE"

echo "== 2. statistics, samples, contact sheet and GIF into $OUT/data"
mkdir -p "$OUT/data"
vlm data show moving_shapes --data_dir "$DATA_DIR" --size "$SIZE" --out "$OUT/data" > "$OUT/data/show.log"
python - "$OUT/data" <<'PY'
import json, sys
stats = json.load(open(f"{sys.argv[1]}/stats.json"))
for split, s in stats["splits"].items():
    print(f"{split:>10}: {s['total']:>6} clips, {s['captions_per_clip']:.1f} captions/clip, "
          f"QA per type {s['questions']}")
PY
head -n 30 "$OUT/data/samples.md"

echo "== 3. the model the tiny preset builds"
vlm models summary --config configs/pretrain.py:tiny

echo "== 4. input pipeline throughput"
vlm bench --quick --data_dir "$DATA_DIR" --out "$OUT/bench"
echo "demo done: open $OUT/data/contact_sheet.png and $OUT/data/clips.gif"
