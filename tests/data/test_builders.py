"""Building and opening: a rebuild is a no-op, bad requests and unbuilt directories are one-line user errors."""

import pytest

from vlm_jax.data import builders, features
from vlm_jax.errors import UserError


def test_rebuild_is_a_no_op(tmp_path, small_size):
    request = features.BuildRequest("moving_shapes", str(tmp_path), size="tiny")
    path = builders.build(request)
    stamp = (path / "dataset_info.json").stat().st_mtime_ns
    assert builders.build(request) == path and (path / "dataset_info.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("change, message", [
    ({"name": "kinetics"}, "unknown data set"),
    ({"size": "huge"}, "unknown size"),
    ({"image_size": 512}, "image_size"),
    ({"num_frames": 1}, "num_frames"),
])
def test_bad_requests_name_the_problem(tmp_path, change, message):
    request = features.BuildRequest(**{"name": "moving_shapes", "data_dir": str(tmp_path), **change})
    with pytest.raises(UserError, match=message):
        builders.build(request)


def test_opening_an_unbuilt_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="vlm data build"):
        builders.open_dataset(tmp_path)
