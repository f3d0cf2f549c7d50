#!/usr/bin/env bash
# The main job on the embedded default data: ./scripts/demo.sh [OUT_DIR]
# Creates .venv and installs on first use. Builds moving_shapes, shows its statistics and pictures, summarises
# the model, measures throughput, pretrains the tiny preset, finetunes it for video QA, evaluates both and
# prints the metrics. About 10 minutes on 2 CPU cores. Re-running resumes each run from its checkpoints.
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

echo "== 4. throughput: input pipeline, tiny train step, checkpoint, per-device memory"
vlm bench --quick --data_dir "$DATA_DIR" --out "$OUT/bench"

echo "== 5. pretrain (contrastive + matching + masked language + masked video) into $OUT/pretrain"
vlm train --config configs/pretrain.py:tiny --workdir "$OUT/pretrain" --config.data.data_dir="$DATA_DIR"

echo "== 6. finetune for video QA from the pretrained towers into $OUT/finetune_qa"
vlm train --config configs/finetune_qa.py:tiny --workdir "$OUT/finetune_qa" --config.data.data_dir="$DATA_DIR" \
  --config.init_from.workdir="$OUT/pretrain"

echo "== 7. results (percent; test = seen attribute-motion pairs, test_novel = held-out pairs)"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
pretrain = json.load(open(f"{out}/pretrain/results.json"))
qa = json.load(open(f"{out}/finetune_qa/results.json"))
rows = [("text->video R@1", pretrain, "retrieval/t2v_R@1"), ("text->video R@5", pretrain, "retrieval/t2v_R@5"),
        ("text->video R@10", pretrain, "retrieval/t2v_R@10"), ("video->text R@1", pretrain, "retrieval/v2t_R@1"),
        ("video->text R@5", pretrain, "retrieval/v2t_R@5"), ("QA accuracy (open)", qa, "qa/acc"),
        ("QA multiple choice", qa, "qa/choice_acc")]
rows += [(f"QA {k.split('acc_', 1)[1]}", qa, k.split("/", 1)[1]) for k in sorted(qa)
         if k.startswith("test/qa/acc_")]
print(f"{'metric':<28}{'test':>10}{'test_novel':>12}")
for name, results, key in rows:
    cells = [results.get(f"{split}/{key}") for split in ("test", "test_novel")]
    print(f"{name:<28}" + "".join(f"{c:>{w}.1f}" if c is not None else f"{'-':>{w}}" for c, w in zip(cells, (10, 12))))
for name, results in (("pretraining", pretrain), ("QA finetuning", qa)):
    speed = results.get("train/clips_per_s")  # absent when a re-run found the run already finished
    print(f"{name}: {results['train/steps']:.0f} steps" + (f", {speed:.1f} clips/s" if speed else ""))
PY
echo "demo done: open $OUT/data/contact_sheet.png and $OUT/data/clips.gif; curves: $OUT/*/metrics.jsonl and TensorBoard files in $OUT/*/tensorboard"
