"""Building and opening data sets: TFDS builders, written to ArrayRecord and read back without TensorFlow.

A builder is made per request (`registry` says which for a name), and a prepared data set is read
back from its directory with `tfds.builder_from_directory`, so TFDS's own registry is never used.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_datasets as tfds

from vlm_jax.data import registry, tfds_compat
from vlm_jax.data.features import BuildRequest
from vlm_jax.errors import UserError


def _builder(request: BuildRequest) -> tfds.core.DatasetBuilder:
    data_set = registry.lookup(request.name)
    if not 8 <= request.image_size <= 224:
        raise UserError(f"image_size must be between 8 and 224, got {request.image_size}")
    if request.num_frames < 2:
        raise UserError(f"num_frames must be at least 2, got {request.num_frames}")
    with tfds_compat.quiet_custom_configs():
        return data_set.builder(request)


def build(request: BuildRequest) -> Path:
    """Prepare the data set (a no-op when it exists) and return its directory."""
    builder = _builder(request)
    with tfds_compat.spill_without_tensorflow():
        builder.download_and_prepare()
    return Path(builder.data_dir)


def dataset_dir(request: BuildRequest) -> Path:
    return Path(_builder(request).data_dir)


def open_dataset(path: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """A read-only builder over a prepared directory (one holding dataset_info.json)."""
    path = Path(path)
    if not (path / "dataset_info.json").exists():
        raise UserError(f"no prepared data set at {path} (run `vlm data build` first)")
    return tfds.builder_from_directory(str(path))
