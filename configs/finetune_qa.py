"""Finetuning for video question answering (answer classification + multiple choice), from a pretraining run.

    vlm train --config configs/finetune_qa.py:tiny --workdir runs/qa \
        --config.init_from.workdir=runs/pretrain
"""

from pathlib import Path

from vlm_jax import config as config_lib


def get_config(arg=None):
    config = config_lib.load_file(Path(__file__).with_name("pretrain.py")).get_config(arg)
    steps = config.train.num_steps // 2
    config.train.task = "qa"
    config.train.num_steps = steps
    config.train.eval_every = steps // 2
    config.losses = {"qa": 1.0, "choice": 0.5}
    config.optim.warmup_steps = max(1, steps // 20)
    config.optim.lr_multipliers = {"video_encoder": 0.5, "text_encoder": 0.5}
    config.checkpoint.every_steps = max(1, steps // 2)
    config.checkpoint.best_metric = "validation/qa/loss"
    return config
