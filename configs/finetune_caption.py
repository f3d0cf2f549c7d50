"""Finetuning for captioning (teacher-forced cross-entropy with label smoothing), from a pretraining run.

    vlm train --config configs/finetune_caption.py:tiny --workdir runs/cap \
        --config.init_from.workdir=runs/pretrain

Only the towers come from the pretraining run by default (`init_from.include`); the decoder starts fresh.
"""

from pathlib import Path

from vlm_jax import config as config_lib


def get_config(arg=None):
    config = config_lib.load_file(Path(__file__).with_name("pretrain.py")).get_config(arg)
    steps = config.train.num_steps // 2
    config.train.task = "caption"
    config.train.num_steps = steps
    config.train.eval_every = steps // 2
    config.train.caption_label_smoothing = 0.1
    config.losses = {"caption": 1.0}
    config.init_from.include = ["video_encoder", "audio_encoder"]
    config.optim.warmup_steps = max(1, steps // 20)
    config.optim.lr_multipliers = {"video_encoder": 0.5}  # pretrained tower: gentler updates than the decoder
    config.checkpoint.every_steps = max(1, steps // 2)
    config.checkpoint.best_metric = "validation/caption/loss"
    return config
