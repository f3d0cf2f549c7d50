"""The default of every config key, in the package: what `config.validate` checks a config's keys and
types against, what an older run's config.json is completed with, and what the files in configs/ start
from (`defaults(preset)`, then their own choices).

A preset scales the defaults to a machine: tiny (tests, seconds), cpu (the research table on a 2-core
machine), small and base (accelerators).
"""

from __future__ import annotations

import ml_collections

from vlm_jax import parallel
from vlm_jax.models import vlm
from vlm_jax.train import checkpoint, optim

PRESETS = {
    # name: (data size, frames, image size, batch size, steps, learning rate, model size)
    "tiny": ("tiny", 16, 64, 16, 200, 1e-3, "tiny"),
    "cpu": ("small", 8, 32, 32, 1500, 1e-3, "tiny"),
    "small": ("small", 16, 64, 32, 3000, 5e-4, "small"),
    "base": ("default", 16, 64, 64, 20000, 3e-4, "base"),
}
# What the cpu preset changes in its tiny-sized model and data. At 32 px the shapes are drawn 1.5x larger
# (a shape's outline needs some pixels), and clips are not cropped or flipped: a crop of 80% of the side
# cuts into 40% of the objects at this size, and without augmentation cnn2d's direction accuracy was 75%
# rather than 48% after 1,000 QA steps (docs/research.md). The video encoder is cnn2d, the one that
# learns time within a CPU budget: a 4x4 grid, and a second trunk over each frame's change since the
# previous one (single-object direction after 300 QA steps from scratch: 97% with that motion stream,
# 64% with the changes as extra input channels of the one trunk); two fusion layers, one to read the
# question and one to look up the object it names. No masked video modelling: its second pass through
# the encoder is 38% of a pretraining step (1.77 vs 2.45 steps/s), the difference between a variant
# fitting the 25-minute budget and not. The i3d variant ends at Mixed_3c, a 4x4 map of a 32 px frame
# (Mixed_5c has one cell: no where, so no which-object).
CPU_CHANGES = {"data.shape_scale": 1.5, "data.augment.min_crop_scale": 1.0, "data.augment.flip": False,
               "model.video.name": "cnn2d", "model.video.cnn2d.grid": 4, "model.video.cnn2d.frame_difference": True,
               "model.video.i3d.final_endpoint": "Mixed_3c", "model.fusion.depth": 2, "losses.mvm": 0.0}


# The minimal reference VLM (`configs/seed_baseline.py`, the research table's floor): `model.KEY` choices.
SEED_BASELINE_MODEL = {"video.name": "linear", "text.name": "linear", "audio.name": None, "fusion.name": "add",
                       "caption.name": "linear"}


def defaults(preset: str | None = None) -> ml_collections.ConfigDict:
    """The pretraining config of `preset` (default tiny); ValueError for an unknown preset."""
    preset = preset or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    size, frames, image_size, batch_size, steps, learning_rate, model_size = PRESETS[preset]

    config = ml_collections.ConfigDict()
    config.preset = preset
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "moving_shapes"
    config.data.data_dir = "data"
    config.data.size = size
    config.data.build_seed = 0
    config.data.build_frames = frames  # frames stored per clip
    config.data.build_image_size = image_size  # resolution stored
    config.data.shape_scale = 1.0  # moving_shapes: every shape drawn this many times larger (low resolutions)
    config.data.max_objects = 3  # moving_shapes: objects per clip, 1 to 3
    config.data.source = ml_collections.config_dict.placeholder(str)  # video_folder: folder of videos
    config.data.captions_file = ml_collections.config_dict.placeholder(str)  # video_folder: captions file
    config.data.num_frames = frames  # frames the model sees, sampled from the stored ones
    config.data.image_size = image_size  # resolution the model sees
    config.data.max_text_len = 40  # caption tokens (moving_shapes' longest: 36)
    config.data.max_question_len = 16  # question tokens (moving_shapes' longest: 13)
    config.data.questions_per_clip = 8  # QA training: questions per clip and step (8: all; the video is encoded once)
    config.data.augment = ml_collections.ConfigDict({"min_crop_scale": 0.8, "flip": True})
    config.data.num_workers = 0  # grain worker processes; 0 reads in threads
    config.data.prefetch = 2

    config.train = ml_collections.ConfigDict()
    config.train.task = "pretrain"  # pretrain, retrieval, caption or qa
    config.train.batch_size = batch_size  # global, across all processes
    config.train.num_steps = steps  # micro-steps (optim.grad_accum_steps of them make one update)
    config.train.log_every = 10
    config.train.eval_every = steps // 2  # validation losses (and a checkpoint ranked by them); 0: never
    config.train.mlm_ratio = 0.15
    config.train.caption_label_smoothing = 0.1
    # A step with a non-finite loss, gradient or parameter never updates anything; then "skip": count it
    # (train/nonfinite) and go on, or "stop": exit 1 before saving anything after it.
    config.train.on_nonfinite = "skip"

    config.eval = eval_defaults()  # splits, max_batches, rerank_k, caption decoding, ...

    config.optim = optim.default_optim_config()
    config.optim.learning_rate = learning_rate
    config.optim.warmup_steps = max(1, steps // 20)
    config.optim.total_steps = -1  # -1: train.num_steps // grad_accum_steps

    config.checkpoint = checkpoint.default_checkpoint_config()
    config.checkpoint.every_steps = max(1, steps // 4)
    config.checkpoint.best_metric = "validation/pretrain/loss"
    config.checkpoint.best_mode = "min"

    # Finetuning starts from another run's parameters: all of them, or the top-level modules listed.
    # text_encoder / video_encoder name a real pretrained tower to start from (vlm_jax.pretrained:
    # "all-MiniLM-L6-v2", "i3d_kinetics400"); they are applied after `workdir`, on a fresh start only.
    config.init_from = ml_collections.ConfigDict({"workdir": "", "step": -1, "include": [],
                                                  "text_encoder": "", "video_encoder": ""})

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1, 1)
    config.mesh.axes = ("data", "fsdp", "tensor")
    config.mesh.rules = parallel.DEFAULT_RULES  # logical axis -> mesh axes (MaxText-style); see vlm_jax/parallel.py

    # One block per family (model.video.vivit, model.video.cnn2d, ...); the names pick the parts.
    # model.dtype = "bfloat16" computes in bf16 with float32 parameters and optimizer state.
    # model.retrieval_audio: the retrieval embedding adds the clip's audio (None: whenever model.audio.name is set).
    config.model = vlm.model_config(model_size)

    config.losses = ml_collections.ConfigDict({"contrastive": 1.0, "vtm": 1.0, "mlm": 1.0, "mvm": 0.5})
    if preset == "cpu":
        for key, value in CPU_CHANGES.items():
            block, _, name = key.rpartition(".")
            config[block][name] = value  # ConfigDict resolves the dotted block path
    return config


def finetune(config: ml_collections.ConfigDict, task: str, losses: dict[str, float]) -> ml_collections.ConfigDict:
    """`config` set up for finetuning on `task`: half the steps, the task's loss weights, warmup,
    evaluation and checkpoints scaled to the shorter run, the best checkpoint by validation loss."""
    steps = config.train.num_steps // 2
    config.train.task = task
    config.train.num_steps = steps
    config.train.eval_every = steps // 2
    config.losses = losses
    config.optim.warmup_steps = max(1, steps // 20)
    config.checkpoint.every_steps = max(1, steps // 2)
    config.checkpoint.best_metric = f"validation/{task}/loss"
    return config


def eval_defaults() -> ml_collections.ConfigDict:
    """The `eval` block: what every evaluator reads. Runs written before a key existed get its default
    here when they are evaluated again (`run.build.load_run`)."""
    return ml_collections.ConfigDict({
        "splits": ("test", "test_novel"),  # evaluated at the end of training into results.json
        "max_batches": 0,  # per evaluation and split; 0: the whole split
        "rerank_k": 0,  # retrieval: re-rank each text's top k videos by the matching (VTM) head; 0: off
        # captioning: beam search over the KV cache (beam_size 1 is greedy), GNMT length penalty alpha, at
        # least min_len tokens (BLIP's min_length), at most max_len tokens with [CLS]
        "caption": {"beam_size": 3, "alpha": 0.6, "min_len": 4, "max_len": 32},
        "recommend_users": 200,  # simulated users for recommendation hit-rate / nDCG
        "explain_clips": 64,  # explanations scored against the ground-truth boxes (`vlm eval --tasks explain`)
    })
