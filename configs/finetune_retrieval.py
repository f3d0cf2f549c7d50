"""Finetuning for text-to-video retrieval (contrastive), from a pretraining run.

    vlm train --config configs/finetune_retrieval.py:tiny --workdir runs/ret \
        --config.init_from.workdir=runs/pretrain

Presets as `pretrain.py`. Without `init_from.workdir` the model starts from scratch.
"""

from pathlib import Path

from vlm_jax import config as config_lib


def get_config(arg=None):
    config = config_lib.load_file(Path(__file__).with_name("pretrain.py")).get_config(arg)
    steps = config.train.num_steps // 2
    config.train.task = "retrieval"
    config.train.num_steps = steps
    config.train.eval_every = steps // 2
    config.losses = {"contrastive": 1.0}
    config.optim.learning_rate /= 2
    config.optim.warmup_steps = max(1, steps // 20)
    config.checkpoint.every_steps = max(1, steps // 2)
    config.checkpoint.best_metric = "validation/retrieval/loss"
    return config
