"""The TFDS patches: still needed without TensorFlow, and in force only around the TFDS calls that need them."""

import logging
import resource
import types

import pytest
from tensorflow_datasets.core import shuffle

from conftest import array_records
from vlm_jax.data import builders, features, moving_shapes_tfds, tfds_compat

NOTICE = "Using custom data configuration"


def _spill(directory) -> list[bytes]:
    """Three records through TFDS's shuffler, which writes them to bucket files (MAX_MEM_BUFFER_SIZE is 0)."""
    shuffler = shuffle.Shuffler(directory, hash_salt="split")
    for key in range(3):
        shuffler.add(key, f"record {key}".encode())
    return sorted(data for _, data in shuffler)


def test_tfds_still_needs_tensorflow_to_spill_to_disk(tmp_path, monkeypatch):
    """When this fails, TFDS spills without TensorFlow: delete `spill_without_tensorflow` (and this test)."""
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 0)
    with pytest.raises(ImportError, match="tensorflow"):
        _spill(tmp_path / "unpatched")
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    with tfds_compat.spill_without_tensorflow():
        assert _spill(tmp_path / "patched") == [b"record 0", b"record 1", b"record 2"]
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == limits
    assert not isinstance(shuffle.tf, types.SimpleNamespace)


def test_splits_too_big_for_memory_spill_to_disk_without_tensorflow(tmp_path, monkeypatch, small_size):
    """TFDS spills splits over its memory budget through tf.io.gfile; the build must not need TensorFlow."""
    in_memory = array_records(builders.build(features.BuildRequest("moving_shapes", str(tmp_path / "a"), size="tiny")))
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1 << 20)
    spilled = array_records(builders.build(features.BuildRequest("moving_shapes", str(tmp_path / "b"), size="tiny")))
    assert in_memory == spilled
    assert not isinstance(shuffle.tf, types.SimpleNamespace)  # the real lazy module is back


def test_custom_config_notice_is_hidden_only_while_making_a_builder(tmp_path, caplog):
    """When the first assertion fails, TFDS no longer logs the notice: delete `quiet_custom_configs`."""
    request = features.BuildRequest("moving_shapes", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        moving_shapes_tfds.builder(request)
        assert NOTICE in caplog.text
        caplog.clear()
        builders.dataset_dir(request)
        assert NOTICE not in caplog.text
    assert not [f for f in logging.getLogger("absl").filters if type(f).__module__ == tfds_compat.__name__]
