"""Pretraining on moving_shapes. Presets (`vlm_jax.schema.PRESETS`): tiny (tests, seconds), cpu (the
research table on a 2-core machine), small and base (accelerators).

Use as `--config configs/pretrain.py:tiny`; override any key with `--config.KEY=VALUE`.
The finetuning configs (`finetune_*.py`) start from this one and change the task, losses and optimizer.
The defaults of every key, per preset, are `vlm_jax.schema.defaults`.
"""

from vlm_jax import schema


def get_config(arg=None):
    return schema.defaults(arg)


def finetune_config(arg, task, losses):
    """The `arg` preset set up for finetuning on `task` (`schema.finetune`)."""
    return schema.finetune(get_config(arg), task, losses)
