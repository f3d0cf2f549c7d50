"""Finetuning for text-to-video retrieval (contrastive), from a pretraining run.

    vlm train --config configs/finetune_retrieval.py:tiny --workdir runs/ret \
        --config.init_from.workdir=runs/pretrain

Presets as `pretrain.py`. Without `init_from.workdir` the model starts from scratch.
"""

from pathlib import Path

from vlm_jax import config as config_lib


def get_config(arg=None):
    pretrain = config_lib.load_file(Path(__file__).with_name("pretrain.py"))
    config = pretrain.finetune_config(arg, "retrieval", {"contrastive": 1.0})
    config.optim.learning_rate /= 2
    return config
