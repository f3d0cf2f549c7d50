"""moving_shapes as a TFDS builder: one configuration per size, frames, resolution, seed and shape options.

Clips are generated in spawned worker processes, each importing only the pure-numpy `moving_shapes`;
a clip is a function of (seed, split, index), so a build gives the same bytes whatever the worker count.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds

from vlm_jax.data import moving_shapes as ms
from vlm_jax.data.features import SAMPLE_RATE, BuildRequest, clip_features, raw_tensor
from vlm_jax.data.moving_shapes_language import ANSWERS, CAPTION_STYLES, QA_TYPES
from vlm_jax.data.moving_shapes_render import RenderSpec
from vlm_jax.data.moving_shapes_scene import MAX_OBJECTS, NOVEL_COMBOS
from vlm_jax.errors import UserError

SIZES = {
    "tiny": {"train": 320, "validation": 64, "test": 96, "test_novel": 96},
    "small": {"train": 4000, "validation": 400, "test": 1000, "test_novel": 1000},
    "default": {"train": 20000, "validation": 1000, "test": 1000, "test_novel": 1000},
}


class MovingShapesConfig(tfds.core.BuilderConfig):
    def __init__(self, *, size: str, num_frames: int, image_size: int, seed: int, fps: float = 8.0,
                 shape_scale: float = 1.0, max_objects: int = MAX_OBJECTS):
        options = (f"_shapes{shape_scale:g}x" if shape_scale != 1.0 else "") + (
            f"_max{max_objects}obj" if max_objects != MAX_OBJECTS else "")
        super().__init__(name=f"{size}_{image_size}px_{num_frames}f_seed{seed}{options}",
                         description=f"moving_shapes, {size} size, {num_frames} frames at {image_size}px, seed {seed}, "
                                     f"shapes x{shape_scale:g}, at most {max_objects} objects")
        self.size, self.seed = size, seed
        self.render = RenderSpec(num_frames=num_frames, image_size=image_size, fps=fps, sample_rate=SAMPLE_RATE,
                                 shape_scale=shape_scale, max_objects=max_objects)


class MovingShapes(tfds.core.GeneratorBasedBuilder):
    """Procedural clips with captions, hard negatives, typed QA, sound and per-frame boxes."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.2.0": "shape and colour hard negatives",
                     "1.1.0": "hard negatives in every caption style, sound negatives, no touching shapes",
                     "1.0.0": "first release"}

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.builder_config.render
        text_list = functools.partial(tfds.features.Sequence, tfds.features.Text())
        extra = {
            "boxes": raw_tensor((spec.num_frames, MAX_OBJECTS, 4), np.float32),
            "object_shapes": text_list(),
            "object_colours": text_list(),
            "object_sizes": text_list(),
            "object_motions": text_list(),
            "sequential": tfds.features.Scalar(dtype=np.bool_),
            "sound": tfds.features.Text(),
        }
        metadata = tfds.core.MetadataDict(
            answers=list(ANSWERS), question_types=list(QA_TYPES), caption_styles=list(CAPTION_STYLES),
            fps=spec.fps, sample_rate=spec.sample_rate, novel_combos=sorted(map(list, NOVEL_COMBOS)))
        return tfds.core.DatasetInfo(
            builder=self, description=ms.__doc__,
            features=clip_features(spec.num_frames, spec.image_size, spec.num_samples, extra), metadata=metadata)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in ms.SPLITS}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        count = SIZES[cfg.size][split]
        work = functools.partial(ms.make_example, cfg.seed, split, spec=cfg.render)
        workers = min(os.cpu_count() or 1, max(count // 64, 1))
        if workers == 1:
            yield from ((i, work(i)) for i in range(count))
            return
        context = multiprocessing.get_context("spawn")  # fork is unsafe once JAX threads exist
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            yield from enumerate(pool.map(work, range(count), chunksize=16))


def builder(request: BuildRequest) -> MovingShapes:
    """The builder for the request's size, seed and shape options (frames and resolution are checked by the caller)."""
    if request.size not in SIZES:
        raise UserError(f"unknown size {request.size!r}; choose one of {', '.join(SIZES)}")
    if not 0.25 <= request.shape_scale <= 2.0:
        raise UserError(f"shape_scale must be between 0.25 and 2, got {request.shape_scale}")
    if not 1 <= request.max_objects <= MAX_OBJECTS:
        raise UserError(f"max_objects must be between 1 and {MAX_OBJECTS}, got {request.max_objects}")
    config = MovingShapesConfig(size=request.size, num_frames=request.num_frames, image_size=request.image_size,
                                seed=request.seed, shape_scale=request.shape_scale, max_objects=request.max_objects)
    return MovingShapes(config=config, data_dir=request.data_dir, file_format="array_record")
