"""TFDS builders, written to ArrayRecord and read back without TensorFlow.

Every builder shares `clip_features`, so the grain pipeline reads any source
the same way. Builders are created per configuration (size, frames,
resolution, seed), and read back from their directory with
`tfds.builder_from_directory`, so no registry lookup is needed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import os
import resource
import types
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from vlm_jax.data import moving_shapes as ms
from vlm_jax.errors import UserError

class _HideCustomConfigNotice(logging.Filter):
    """Every builder here is configured per request, so TFDS's notice about it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Using custom data configuration")


logging.getLogger("absl").addFilter(_HideCustomConfigNotice())

SPLITS = ("train", "validation", "test", "test_novel")
SIZES = {
    "tiny": {"train": 320, "validation": 64, "test": 96, "test_novel": 96},
    "small": {"train": 4000, "validation": 400, "test": 1000, "test_novel": 1000},
    "default": {"train": 20000, "validation": 1000, "test": 1000, "test_novel": 1000},
}
SAMPLE_RATE = 16000


def raw_tensor(shape, dtype) -> tfds.features.Tensor:
    """A fixed-shape array stored as its raw bytes (the default int64 lists are 8x larger and slow)."""
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)


def clip_features(num_frames: int, image_size: int, num_samples: int, extra: dict | None = None):
    """Features every source has: pixels, sound, captions and QA (lists may be empty)."""
    text_list = functools.partial(tfds.features.Sequence, tfds.features.Text())
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "video": raw_tensor((num_frames, image_size, image_size, 3), np.uint8),
        "audio": raw_tensor((num_samples,), np.int16),
        "has_audio": tfds.features.Scalar(dtype=np.bool_),
        "captions": text_list(),
        "hard_negatives": text_list(),
        "hard_negative_kinds": text_list(),
        "hard_negative_captions": tfds.features.Sequence(tfds.features.Scalar(dtype=np.int32)),  # which caption
        "questions": text_list(),
        "answers": text_list(),
        "question_types": text_list(),
        "choices": text_list(),  # per question, the candidates joined by "|"
        **(extra or {}),
    })


class MovingShapesConfig(tfds.core.BuilderConfig):
    def __init__(self, *, size: str, num_frames: int, image_size: int, seed: int, fps: float = 8.0,
                 shape_scale: float = 1.0, max_objects: int = ms.MAX_OBJECTS):
        options = (f"_shapes{shape_scale:g}x" if shape_scale != 1.0 else "") + (
            f"_max{max_objects}obj" if max_objects != ms.MAX_OBJECTS else "")
        super().__init__(name=f"{size}_{image_size}px_{num_frames}f_seed{seed}{options}",
                         description=f"moving_shapes, {size} size, {num_frames} frames at {image_size}px, seed {seed}, "
                                     f"shapes x{shape_scale:g}, at most {max_objects} objects")
        self.size, self.seed = size, seed
        self.render = ms.RenderSpec(num_frames=num_frames, image_size=image_size, fps=fps, sample_rate=SAMPLE_RATE,
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
            "boxes": raw_tensor((spec.num_frames, ms.MAX_OBJECTS, 4), np.float32),
            "object_shapes": text_list(),
            "object_colours": text_list(),
            "object_sizes": text_list(),
            "object_motions": text_list(),
            "sequential": tfds.features.Scalar(dtype=np.bool_),
            "sound": tfds.features.Text(),
        }
        metadata = tfds.core.MetadataDict(
            answers=list(ms.ANSWERS), question_types=list(ms.QA_TYPES), caption_styles=list(ms.CAPTION_STYLES),
            fps=spec.fps, sample_rate=spec.sample_rate, novel_combos=sorted(map(list, ms.NOVEL_COMBOS)))
        return tfds.core.DatasetInfo(
            builder=self, description=ms.__doc__,
            features=clip_features(spec.num_frames, spec.image_size, spec.num_samples, extra), metadata=metadata)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SPLITS}

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


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    """What to build; `source`/`captions` are for video_folder only."""
    name: str
    data_dir: str
    size: str = "tiny"
    seed: int = 0
    num_frames: int = 16
    image_size: int = 64
    source: str | None = None
    captions: str | None = None
    shape_scale: float = 1.0  # moving_shapes only
    max_objects: int = ms.MAX_OBJECTS  # moving_shapes only


def _builder(request: BuildRequest) -> tfds.core.DatasetBuilder:
    if request.name not in ("moving_shapes", "video_folder"):
        raise UserError(f"unknown data set {request.name!r}; choose moving_shapes or video_folder")
    if not 8 <= request.image_size <= 224:
        raise UserError(f"image_size must be between 8 and 224, got {request.image_size}")
    if request.num_frames < 2:
        raise UserError(f"num_frames must be at least 2, got {request.num_frames}")
    if request.name == "video_folder":
        from vlm_jax.data import video_folder
        return video_folder.builder(request)
    if request.size not in SIZES:
        raise UserError(f"unknown size {request.size!r}; choose one of {', '.join(SIZES)}")
    if not 0.25 <= request.shape_scale <= 2.0:
        raise UserError(f"shape_scale must be between 0.25 and 2, got {request.shape_scale}")
    if not 1 <= request.max_objects <= ms.MAX_OBJECTS:
        raise UserError(f"max_objects must be between 1 and {ms.MAX_OBJECTS}, got {request.max_objects}")
    config = MovingShapesConfig(size=request.size, num_frames=request.num_frames, image_size=request.image_size,
                                seed=request.seed, shape_scale=request.shape_scale, max_objects=request.max_objects)
    return MovingShapes(config=config, data_dir=request.data_dir, file_format="array_record")


def build(request: BuildRequest) -> Path:
    """Prepare the data set (a no-op when it exists) and return its directory."""
    builder = _builder(request)
    with _local_shuffle_buckets():
        builder.download_and_prepare()
    return Path(builder.data_dir)


@contextlib.contextmanager
def _local_shuffle_buckets():
    """Let TFDS spill splits over 1 GB to local bucket files without TensorFlow.

    TFDS 4.9.10's writer shuffles in memory up to 1 GB, then spills to 1,000 bucket files opened
    through `tf.io.gfile`, which needs TensorFlow. Local files need only Python's own file calls.
    """
    from tensorflow_datasets.core import shuffle

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = shuffle.BUCKETS_NUMBER + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard),
                                                    hard))
    gfile = types.SimpleNamespace(GFile=open, exists=os.path.exists, remove=os.remove)
    original = shuffle.tf
    shuffle.tf = types.SimpleNamespace(io=types.SimpleNamespace(gfile=gfile))
    try:
        yield
    finally:
        shuffle.tf = original


def dataset_dir(request: BuildRequest) -> Path:
    return Path(_builder(request).data_dir)


def open_dataset(path: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """A read-only builder over a prepared directory (one holding dataset_info.json)."""
    path = Path(path)
    if not (path / "dataset_info.json").exists():
        raise UserError(f"no prepared data set at {path} (run `vlm data build` first)")
    return tfds.builder_from_directory(str(path))
