"""The moving_shapes TFDS build: sizes, determinism, split disjointness, the novel split."""

import hashlib
import os

import numpy as np

from conftest import array_records
from vlm_jax.data import builders, features
from vlm_jax.data import moving_shapes as ms
from vlm_jax.data.moving_shapes_language import ANSWERS
from vlm_jax.data.moving_shapes_scene import MAX_OBJECTS, NOVEL_COMBOS
from vlm_jax.data.moving_shapes_tfds import SIZES


def _all(path, split):
    source = builders.open_dataset(path).as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def test_tiny_build_has_every_split_at_its_size(tiny_dataset):
    info = builders.open_dataset(tiny_dataset).info
    assert {k: v.num_examples for k, v in info.splits.items()} == SIZES["tiny"]
    assert info.metadata["answers"] == list(ANSWERS)
    example = builders.open_dataset(tiny_dataset).as_data_source(split="train")[0]
    assert example["video"].shape == (16, 64, 64, 3) and example["video"].dtype == np.uint8
    assert example["audio"].dtype == np.int16 and example["boxes"].shape == (16, MAX_OBJECTS, 4)


def test_splits_are_disjoint(tiny_dataset):
    seen: dict[str, str] = {}
    for split in ms.SPLITS:
        for example in _all(tiny_dataset, split):
            digest = hashlib.sha1(example["video"].tobytes()).hexdigest()
            assert digest not in seen, f"{split} clip {example['id']} repeats a clip of {seen.get(digest)}"
            seen[digest] = split
    assert len(seen) == sum(SIZES["tiny"].values())


def test_novel_combinations_only_in_test_novel(tiny_dataset):
    def combos(example):
        motions = [m.decode() for m in example["object_motions"]]
        attributes = [a.decode() for key in ("object_colours", "object_shapes") for a in example[key]]
        pairs = {(a, m) for a, m in zip(attributes, motions * 2)}
        return pairs & NOVEL_COMBOS

    for split in ("train", "validation", "test"):
        assert not any(combos(e) for e in _all(tiny_dataset, split)), split
    assert all(combos(e) for e in _all(tiny_dataset, "test_novel"))


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path, monkeypatch, small_size):
    request = features.BuildRequest("moving_shapes", str(tmp_path / "a"), size="tiny", seed=5)
    first = array_records(builders.build(request))
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    second = array_records(builders.build(
        features.BuildRequest("moving_shapes", str(tmp_path / "b"), size="tiny", seed=5)))
    assert first.keys() == second.keys() and len(first) >= 4
    assert all(first[k] == second[k] for k in first)
    other = array_records(builders.build(
        features.BuildRequest("moving_shapes", str(tmp_path / "c"), size="tiny", seed=6)))
    assert all(first[k] != other[k] for k in first)
