"""Pretraining on moving_shapes. Presets (`vlm_jax.schema.PRESETS`): tiny (tests, seconds), cpu (the
research table on a 2-core machine), small and base (accelerators).

Use as `--config configs/pretrain.py:tiny`; override any key with `--config.KEY=VALUE`.
The finetuning configs (`finetune_*.py`) start from this one and change the task, losses and optimizer.
The defaults of every key are `vlm_jax.schema.defaults`; this file adds the cpu preset's model choices.
"""

from vlm_jax import schema

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


def get_config(arg=None):
    config = schema.defaults(arg)
    if config.preset == "cpu":
        for key, value in CPU_CHANGES.items():
            block, _, name = key.rpartition(".")
            config[block][name] = value  # ConfigDict resolves the dotted block path
    return config


def finetune_config(arg, task, losses):
    """The `arg` preset set up for finetuning on `task` (`schema.finetune`)."""
    return schema.finetune(get_config(arg), task, losses)
