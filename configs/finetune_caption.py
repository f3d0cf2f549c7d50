"""Finetuning for captioning (teacher-forced cross-entropy with label smoothing), from a pretraining run.

    vlm train --config configs/finetune_caption.py:tiny --workdir runs/cap \
        --config.init_from.workdir=runs/pretrain

Only the towers come from the pretraining run by default (`init_from.include`); the decoder starts fresh.
"""

from pathlib import Path

from vlm_jax import config as config_lib


def get_config(arg=None):
    pretrain = config_lib.load_file(Path(__file__).with_name("pretrain.py"))
    config = pretrain.finetune_config(arg, "caption", {"caption": 1.0})
    config.train.caption_label_smoothing = 0.1
    config.init_from.include = ["video_encoder", "audio_encoder"]
    config.optim.lr_multipliers = {"video_encoder": 0.5}  # pretrained tower: gentler updates than the decoder
    return config
