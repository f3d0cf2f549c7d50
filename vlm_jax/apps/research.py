"""The research table: what temporal modelling, audio and attention fusion are worth, measured.

For each variant (video encoder, fusion, audio on/off) it pretrains on moving_shapes, finetunes QA and
captioning from that pretraining, and tabulates text-to-video R@1, QA accuracy per question type,
CIDEr and the share of distinct captions on test and test_novel:

    vlm research --preset small --out runs/research --table docs/research_table.md

Every run is a separate `vlm train` process in `OUT/<variant>/{pretrain,qa,caption}`; a finished run
(results.json present) is skipped and an interrupted one resumes from its checkpoint, so the table can
be built over several sessions. A variant whose run fails is reported as failed, and the others go on.
Each stage's wall time (summed over its attempts, so a resumed run counts every part) goes to
`OUT/<variant>/wall_seconds.json`, and a second table lists them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from vlm_jax import config as config_lib
from vlm_jax import schema
from vlm_jax.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the checkout's files: each stage runs `vlm train` on one

# name: (model overrides for every run, extra overrides for pretraining only)
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "vivit_joint": (("model.video.name=vivit", "model.video.vivit.variant=joint"), ()),
    "vivit_factorised": (("model.video.name=vivit", "model.video.vivit.variant=factorised_encoder"), ()),
    "cnn2d": (("model.video.name=cnn2d",), ()),
    "i3d": (("model.video.name=i3d",), ()),
    "cnn_rnn": (("model.video.name=cnn_rnn",), ()),
    "single_frame": (("model.video.name=single_frame",), ()),
    # Fusion and audio variants change the preset's default model: ViViT (factorised at tiny, joint from
    # small on; cnn2d at cpu) with cross-attention fusion and audio, so that encoder's row is their
    # cross-attention / audio row.
    "fusion_dual": (("model.fusion.name=dual",), ("losses.vtm=0", "losses.mlm=0")),
    "fusion_concat": (("model.fusion.name=concat_early",), ()),
    "no_audio": (("model.audio.name=None",), ()),
    # The minimal reference VLM (linear towers, fusion by addition, linear decoder): the floor.
    "seed_baseline": (tuple(f"model.{key}={value}" for key, value in schema.SEED_BASELINE_MODEL.items()), ()),
}
STAGES = ("pretrain", "qa", "caption")
WALL_FILE = "wall_seconds.json"  # {stage or "explain": seconds of every attempt}
EXPLAIN_KEY = "test/explain/gradient_pointing_game"
# the pretrained model's explanations on test: gradient x input (every model), cross-attention (fusion models)
EXPLAIN_COLUMNS = (("pointing grad", EXPLAIN_KEY), ("random init grad", "test/explain/gradient_random_pointing_game"),
                   ("pointing attn", "test/explain/attention_pointing_game"),
                   ("random init attn", "test/explain/attention_random_pointing_game"))
QA_TYPES = ("direction", "order", "sound", "colour", "shape", "count", "yesno")
SPLITS = ("test", "test_novel")


def _train_args(stage: str, preset: str, workdir: Path, pretrain_dir: Path, overrides: Sequence[str]) -> list[str]:
    config = {"pretrain": "pretrain.py", "qa": "finetune_qa.py", "caption": "finetune_caption.py"}[stage]
    args = ["train", "--config", f"{CONFIGS / config}:{preset}", "--workdir", str(workdir)]
    if stage != "pretrain":
        args.append(f"--config.init_from.workdir={pretrain_dir}")
    return args + [f"--config.{o}" for o in overrides]


def for_chosen_encoders(preset: str, model: Sequence[str], extra: Sequence[str]) -> list[str]:
    """The extra overrides less the options of encoders the variant does not choose (`--config.model.video.
    vivit.depth=1` sizes the ViViT variants and leaves the others alone)."""
    config = config_lib.for_preset(preset, model)
    return [override for override in extra if (option := config_lib.encoder_option(override)) is None
            or option[1] == config.model[option[0]].name]


def run_variant(name: str, preset: str, out: Path, steps: int | None, extra: Sequence[str], log) -> dict[str, str]:
    """Train the variant's three stages (skipping finished ones); returns {stage: "ok" | failure reason}."""
    model, pretrain_only = VARIANTS[name]
    extra = for_chosen_encoders(preset, model, extra)
    status = {}
    for stage in STAGES:
        workdir = out / name / stage
        if (workdir / "results.json").is_file():
            status[stage] = "ok"
            continue
        if stage != "pretrain" and status.get("pretrain") != "ok":
            status[stage] = "skipped: pretraining failed"
            continue
        overrides = list(model) + list(extra)
        if stage == "pretrain":
            overrides += list(pretrain_only)
        if steps:
            overrides.append(f"train.num_steps={steps if stage == 'pretrain' else max(1, steps // 2)}")
        args = _train_args(stage, preset, workdir, out / name / "pretrain", overrides)
        workdir.mkdir(parents=True, exist_ok=True)
        status[stage] = _timed(out / name, stage, args, workdir / "train.log", log)
    # where the pretrained model looks, scored against the boxes (merged into its results.json)
    if status["pretrain"] != "ok":
        status["explain"] = "skipped: pretraining failed"
    elif EXPLAIN_KEY in _results(out, name, "pretrain"):
        status["explain"] = "ok"
    else:
        pretrain_dir = out / name / "pretrain"
        status["explain"] = _timed(out / name, "explain", ["eval", "--workdir", str(pretrain_dir), "--tasks",
                                                           "explain", "--split", "test"], pretrain_dir / "explain.log", log)
    return status


def _timed(variant_dir: Path, stage: str, args: Sequence[str], log_path: Path, log) -> str:
    """Run `vlm ARGS` with its output appended to log_path, add its wall time to the variant's WALL_FILE;
    "ok" or why not."""
    label = f"{variant_dir.name}/{stage}"
    start = time.perf_counter()
    log(f"{label}: vlm {' '.join(args)}")
    with open(log_path, "a") as output:
        code = subprocess.call([sys.executable, "-m", "vlm_jax", *args], stdout=output, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    log(f"{label}: exit {code} after {seconds:.0f} s")
    walls = _walls(variant_dir)
    walls[stage] = walls.get(stage, 0.0) + seconds
    (variant_dir / WALL_FILE).write_text(json.dumps(walls, indent=2) + "\n")
    return "ok" if code == 0 else f"failed (exit {code}, see {log_path})"


def _walls(variant_dir: Path) -> dict[str, float]:
    path = variant_dir / WALL_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _results(out: Path, name: str, stage: str) -> dict[str, float]:
    path = out / name / stage / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def table(out: Path, names: Sequence[str]) -> str:
    """The markdown table of every variant's finished runs (a dash where a run is missing)."""
    header = ["variant"]
    for split in SPLITS:
        header += [f"{split} t2v R@1", f"{split} QA acc"] + [f"{split} {t}" for t in QA_TYPES]
        header += [f"{split} CIDEr", f"{split} distinct captions"]
    header += [f"test {column}" for column, _ in EXPLAIN_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        pretrain, qa, caption = (_results(out, name, stage) for stage in STAGES)
        cells = [name]
        for split in SPLITS:
            keys = [(pretrain, f"{split}/retrieval/t2v_R@1"), (qa, f"{split}/qa/acc")]
            keys += [(qa, f"{split}/qa/acc_{t}") for t in QA_TYPES]
            keys += [(caption, f"{split}/caption/CIDEr"), (caption, f"{split}/caption/distinct")]
            cells += [f"{results[key]:.1f}" if key in results else "-" for results, key in keys]
        cells += [f"{pretrain[key]:.1f}" if key in pretrain else "-" for _, key in EXPLAIN_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wall_table(out: Path, names: Sequence[str]) -> str:
    """The markdown table of each variant's wall time per stage (seconds) and in all (minutes)."""
    stages = STAGES + ("explain",)
    lines = ["| variant | " + " | ".join(f"{stage} (s)" for stage in stages) + " | total (min) |",
             "|" + "---|" * (len(stages) + 2)]
    for name in names:
        walls = _walls(out / name)
        cells = [f"{walls[stage]:.0f}" if stage in walls else "-" for stage in stages]
        total = f"{sum(walls.values()) / 60:.1f}" if all(stage in walls for stage in stages) else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total} |")
    return "\n".join(lines)


def run(preset: str, out: str | Path, variants: Sequence[str] | None = None, steps: int | None = None,
        extra: Sequence[str] = (), table_path: str | Path | None = None) -> str:
    """Train every variant (or `variants`) and return (and write to `table_path`) the markdown table."""
    names = list(variants or VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    if not CONFIGS.is_dir():
        raise UserError(f"vlm research trains the repository's config files, and {CONFIGS} is missing: run it "
                        f"from a checkout installed with `pip install -e .`")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda message: print(message, file=sys.stderr, flush=True)
    statuses = {name: run_variant(name, preset, out, steps, extra, log) for name in names}
    (out / "status.json").write_text(json.dumps(statuses, indent=2) + "\n")
    markdown = table(out, names) + "\n\n" + wall_table(out, names)
    if table_path:
        Path(table_path).parent.mkdir(parents=True, exist_ok=True)
        Path(table_path).write_text(markdown + "\n")
    failed = {f"{n}/{s}": why for n, st in statuses.items() for s, why in st.items() if why != "ok"}
    for run_name, why in failed.items():
        log(f"{run_name}: {why}")
    return markdown
