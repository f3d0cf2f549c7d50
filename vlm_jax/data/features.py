"""What every data source shares: the request a build answers, the stored features and how their text reads.

Every source stores `clip_features`, so the grain pipeline, `vlm data show` and the apps read any
source the same way, and decode its text with `text`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from vlm_jax.data.moving_shapes_scene import MAX_OBJECTS

SAMPLE_RATE = 16000  # Hz, the sound track of every source


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
    max_objects: int = MAX_OBJECTS  # moving_shapes only

    @classmethod
    def from_config(cls, config) -> "BuildRequest":
        """The build a config's `data` block names (`data.build_*` are the stored sizes)."""
        data = config.data
        return cls(name=data.name, data_dir=data.data_dir, size=data.size, seed=data.build_seed,
                   num_frames=data.build_frames, image_size=data.build_image_size, source=data.source,
                   captions=data.captions_file, shape_scale=data.shape_scale, max_objects=data.max_objects)


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


def text(value) -> str:
    """A TFDS text feature (bytes) as str; bytes that are not UTF-8 become U+FFFD, so a bad record never stops
    a reader."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def texts(values) -> list[str]:
    return [text(v) for v in values]
