"""The sanity ladder's shared parts: short QA trainings from scratch, in process, with the real steps, data
pipeline and QA evaluator, that fail when a model cannot learn what moving_shapes tests.

The rungs: every video encoder memorises one fixed batch on every question type (a model that cannot
fit 4 clips cannot learn anything; `test_ladder_overfit.py`); on single-object clips a temporal model
tells the direction of motion apart while `single_frame`, which sees one frame, cannot; the sound is
heard with the audio tower and not without it (`test_ladder_time_and_sound.py`).
"""

import itertools
from pathlib import Path

import jax
import numpy as np

from conftest import build_dataset, chosen_towers_only, data_dir_of
from vlm_jax import config as config_lib
from vlm_jax.data import pipeline
from vlm_jax.eval import evaluators
from vlm_jax.run import build

# Small enough that a rung compiles and trains in well under a minute on 2 cores; 4 frames still show motion.
LADDER = ("data.num_frames=4", "data.image_size=32", "data.max_text_len=16", "train.log_every=1",
          "train.eval_every=0", "checkpoint.every_steps=0", "optim.warmup_steps=10",
          "model.video.vivit.depth=1", "model.text.bert.depth=1", "model.audio.audio_transformer.depth=1",
          "model.fusion.depth=1")
ENCODERS = {
    "vivit_joint": ("model.video.name=vivit", "model.video.vivit.variant=joint"),
    "vivit_factorised": ("model.video.name=vivit", "model.video.vivit.variant=factorised_encoder"),
    "cnn2d": ("model.video.name=cnn2d",),
    "i3d": ("model.video.name=i3d", "model.video.i3d.bn_momentum=0.9"),  # running statistics that keep up
    "cnn_lstm": ("model.video.name=cnn_rnn", "model.video.cnn_rnn.cell=lstm"),
    "cnn_gru": ("model.video.name=cnn_rnn", "model.video.cnn_rnn.cell=gru"),
    "single_frame": ("model.video.name=single_frame",),
    "linear": ("model.video.name=linear",),
}


# moving_shapes with one object per clip, stored at the ladder's 4 frames of 32 px, shapes drawn larger
SINGLE_OBJECT = {"size": "small", "build_frames": 4, "build_image_size": 32, "shape_scale": 1.5, "max_objects": 1}


def build_single_object_dataset(data_dir: Path) -> Path:
    """Build SINGLE_OBJECT through the CLI into data_dir; returns the data set's path."""
    flags = {"size": "--size", "build_frames": "--num_frames", "build_image_size": "--image_size",
             "shape_scale": "--shape_scale", "max_objects": "--max_objects"}
    return build_dataset(data_dir, *(str(part) for key, value in SINGLE_OBJECT.items() for part in (flags[key], value)))


def run_from_scratch(dataset: Path, *overrides: str) -> build.Run:
    overrides = chosen_towers_only([*LADDER, f"data.data_dir={data_dir_of(dataset)}", *overrides])
    config = config_lib.load("configs/finetune_qa.py:tiny", overrides)
    return build.Run(config)


def train(run: build.Run, batches, only_type: str | None = None):
    """Train from scratch on `batches` (an iterable of host batches); with `only_type`, the loss sees the
    questions of that type only. Returns the final state."""
    state = run.factory.create()
    kept = run.vocabulary.question_types.index(only_type) if only_type else None
    for batch in batches:
        if kept is not None:
            batch = {**batch, "question_valid": batch["question_valid"] & (batch["question_types"] == kept)}
        with run.mesh_context():
            state, metrics = run.train_step(state, run.to_device(batch))
    assert np.isfinite(float(jax.device_get(metrics["loss"])))
    return state


def accuracy_per_type(run: build.Run, state, batch) -> dict[str, float]:
    """QA accuracy per question type on one batch (every row real)."""
    batch = {**batch, "valid": np.ones(len(batch["video"]), bool)}
    with run.mesh_context():
        out = jax.device_get(run.model.apply(state.variables(), run.to_device(batch),
                                             method=evaluators.QaEvaluator.forward))
    keep = out["question_valid"].astype(bool)
    correct = (out["answer"] == out["answers"])[keep]
    types = out["question_types"][keep]
    return {name: float(correct[types == i].mean()) for i, name in enumerate(run.vocabulary.question_types)
            if (types == i).any()}


def learnt(run: build.Run, steps: int, question_type: str) -> float:
    """Validation accuracy on `question_type` after `steps` training steps on that type alone."""
    state = train(run, itertools.islice(pipeline.train_dataset(run.spec), steps), only_type=question_type)
    return evaluators.QaEvaluator(run)(state, "validation")[f"qa/acc_{question_type}"] / 100


def single_object_run(dataset: Path, *overrides: str) -> build.Run:
    return run_from_scratch(dataset, *(f"data.{key}={value}" for key, value in SINGLE_OBJECT.items()),
                            "train.batch_size=32", "optim.learning_rate=1e-3", "eval.max_batches=0", *overrides)
