"""The data sets by name: the one place that says what each needs, so no other module compares names.

A new data set is a builder module and one entry in `DATASETS`: its builder, its answer vocabulary, the
config keys it requires, and the `vlm data build/show` flags of its own (each a `BuildRequest` field).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow_datasets as tfds

from vlm_jax.data import moving_shapes_tfds, video_folder
from vlm_jax.data.features import BuildRequest
from vlm_jax.data.moving_shapes_language import ANSWERS
from vlm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Flag:
    """A `vlm data build/show` flag that sets the `BuildRequest` field of the same name."""
    field: str
    help: str
    type: Callable[[str], object] = str


@dataclasses.dataclass(frozen=True)
class DataSet:
    """What the rest of vlm_jax needs to know about one data set."""
    builder: Callable[[BuildRequest], tfds.core.DatasetBuilder]  # checks the request's fields that are its own
    num_answers: int | None  # a fixed answer vocabulary's size; None: the build's metadata says
    required: dict[str, str] = dataclasses.field(default_factory=dict)  # data.<key> it needs -> what that names
    flags: tuple[Flag, ...] = ()  # the request fields only this data set reads


DATASETS = {
    "moving_shapes": DataSet(moving_shapes_tfds.builder, num_answers=len(ANSWERS), flags=(
        Flag("size", "tiny, small or default"),
        Flag("shape_scale", "draw every shape this many times larger (0.25 to 2; for low resolutions)", float),
        Flag("max_objects", "at most this many objects per clip", int))),
    "video_folder": DataSet(video_folder.builder, num_answers=None, required={"source": "a video folder"}, flags=(
        Flag("source", "the folder of video files"),
        Flag("captions", "captions file (JSON or CSV); default SOURCE/captions.*"))),
}
CHOICES = " or ".join(DATASETS)


def lookup(name: str) -> DataSet:
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choose {CHOICES}")
    return DATASETS[name]
