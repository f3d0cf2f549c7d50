"""Pretraining on moving_shapes. Presets: tiny (tests, seconds), small (the research table), base.

Use as `--config configs/pretrain.py:tiny`; override any key with `--config.KEY=VALUE`.
"""

import ml_collections

from vlm_jax.models import vlm

PRESETS = {
    # name: (data size, frames, image size, batch size, steps)
    "tiny": ("tiny", 16, 64, 16, 200),
    "small": ("small", 16, 64, 32, 3000),
    "base": ("default", 16, 64, 64, 20000),
}


def get_config(arg=None):
    preset = arg or "tiny"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    size, frames, image_size, batch_size, steps = PRESETS[preset]

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
    config.data.source = ml_collections.config_dict.placeholder(str)  # video_folder: folder of videos
    config.data.captions_file = ml_collections.config_dict.placeholder(str)  # video_folder: captions file
    config.data.num_frames = frames  # frames the model sees, sampled from the stored ones
    config.data.image_size = image_size  # resolution the model sees
    config.data.max_text_len = 40
    config.data.augment = ml_collections.ConfigDict({"min_crop_scale": 0.8, "flip": True})
    config.data.num_workers = 0  # grain worker processes; 0 reads in threads
    config.data.prefetch = 2

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = batch_size  # global, across all processes
    config.train.num_steps = steps

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1, 1)
    config.mesh.axes = ("data", "fsdp", "tensor")

    # One block per family (model.video.vivit, model.video.cnn2d, ...); the names pick the parts.
    config.model = vlm.model_config(preset)

    config.losses = ml_collections.ConfigDict({"contrastive": 1.0, "vtm": 1.0, "mlm": 1.0, "mvm": 0.5})
    return config
