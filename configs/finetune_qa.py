"""Finetuning for video question answering (answer classification + multiple choice), from a pretraining run.

    vlm train --config configs/finetune_qa.py:tiny --workdir runs/qa \
        --config.init_from.workdir=runs/pretrain
"""

from pathlib import Path

from vlm_jax import config as config_lib


def get_config(arg=None):
    pretrain = config_lib.load_file(Path(__file__).with_name("pretrain.py"))
    config = pretrain.finetune_config(arg, "qa", {"qa": 1.0, "choice": 0.5})
    config.optim.lr_multipliers = {"video_encoder": 0.5, "text_encoder": 0.5}
    return config
