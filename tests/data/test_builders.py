"""The moving_shapes TFDS build: sizes, determinism, split disjointness, the novel split."""

import hashlib
import os
import types

import numpy as np
import pytest

from vlm_jax.data import builders
from vlm_jax.data import moving_shapes as ms
from vlm_jax.errors import UserError


def _records(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if ".array_record" in p.name}


def _all(path, split):
    source = builders.open_dataset(path).as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def test_tiny_build_has_every_split_at_its_size(tiny_dataset):
    info = builders.open_dataset(tiny_dataset).info
    assert {k: v.num_examples for k, v in info.splits.items()} == builders.SIZES["tiny"]
    assert info.metadata["answers"] == list(ms.ANSWERS)
    example = builders.open_dataset(tiny_dataset).as_data_source(split="train")[0]
    assert example["video"].shape == (16, 64, 64, 3) and example["video"].dtype == np.uint8
    assert example["audio"].dtype == np.int16 and example["boxes"].shape == (16, ms.MAX_OBJECTS, 4)


def test_splits_are_disjoint(tiny_dataset):
    seen: dict[str, str] = {}
    for split in builders.SPLITS:
        for example in _all(tiny_dataset, split):
            digest = hashlib.sha1(example["video"].tobytes()).hexdigest()
            assert digest not in seen, f"{split} clip {example['id']} repeats a clip of {seen.get(digest)}"
            seen[digest] = split
    assert len(seen) == sum(builders.SIZES["tiny"].values())


def test_novel_combinations_only_in_test_novel(tiny_dataset):
    def combos(example):
        motions = [m.decode() for m in example["object_motions"]]
        attributes = [a.decode() for key in ("object_colours", "object_shapes") for a in example[key]]
        pairs = {(a, m) for a, m in zip(attributes, motions * 2)}
        return pairs & ms.NOVEL_COMBOS

    for split in ("train", "validation", "test"):
        assert not any(combos(e) for e in _all(tiny_dataset, split)), split
    assert all(combos(e) for e in _all(tiny_dataset, "test_novel"))


@pytest.fixture
def small_size(monkeypatch):
    # 130 train clips are enough to run the generator in two worker processes.
    monkeypatch.setitem(builders.SIZES, "tiny", {"train": 130, "validation": 8, "test": 8, "test_novel": 8})


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path, monkeypatch, small_size):
    request = builders.BuildRequest("moving_shapes", str(tmp_path / "a"), size="tiny", seed=5)
    first = _records(builders.build(request))
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    second = _records(builders.build(builders.BuildRequest("moving_shapes", str(tmp_path / "b"), size="tiny", seed=5)))
    assert first.keys() == second.keys() and len(first) >= 4
    assert all(first[k] == second[k] for k in first)
    other = _records(builders.build(builders.BuildRequest("moving_shapes", str(tmp_path / "c"), size="tiny", seed=6)))
    assert all(first[k] != other[k] for k in first)


def test_rebuild_is_a_no_op(tmp_path, small_size):
    request = builders.BuildRequest("moving_shapes", str(tmp_path), size="tiny")
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
    request = builders.BuildRequest(**{"name": "moving_shapes", "data_dir": str(tmp_path), **change})
    with pytest.raises(UserError, match=message):
        builders.build(request)


def test_opening_an_unbuilt_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="vlm data build"):
        builders.open_dataset(tmp_path)


def test_splits_too_big_for_memory_spill_to_disk_without_tensorflow(tmp_path, monkeypatch, small_size):
    """TFDS spills splits over its memory budget through tf.io.gfile; the build must not need TensorFlow."""
    from tensorflow_datasets.core import shuffle
    in_memory = _records(builders.build(builders.BuildRequest("moving_shapes", str(tmp_path / "a"), size="tiny")))
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1 << 20)
    spilled = _records(builders.build(builders.BuildRequest("moving_shapes", str(tmp_path / "b"), size="tiny")))
    assert in_memory == spilled
    assert not isinstance(shuffle.tf, types.SimpleNamespace)  # the real lazy module is back
