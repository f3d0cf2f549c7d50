"""The grain pipeline: batch contents, shards, epochs, exact resume, augmentation that keeps text true."""

import dataclasses

import numpy as np
import pytest

from vlm_jax import config as config_lib
from vlm_jax.data import builders, pipeline, tokenizer
from vlm_jax.data.moving_shapes_language import ANSWERS
from vlm_jax.data.moving_shapes_tfds import SIZES
from vlm_jax.errors import UserError


@pytest.fixture
def spec(tiny_dataset):
    return pipeline.Spec(dataset_path=str(tiny_dataset), num_frames=8, image_size=48, max_text_len=40, batch_size=8,
                         seed=0, min_crop_scale=0.8, flip=True)


def test_train_batch_shapes_and_dtypes(spec):
    batch = next(iter(pipeline.train_dataset(spec)))
    expected = {
        "video": ((8, 8, 48, 48, 3), np.uint8), "audio": ((8, 32000), np.float32), "boxes": ((8, 8, 3, 4), np.float32),
        "caption": ((8, 40), np.int32), "caption_mask": ((8, 40), np.int32), "negative": ((8, 40), np.int32),
        "questions": ((8, 8, 16), np.int32), "answers": ((8, 8), np.int32), "question_types": ((8, 8), np.int32),
        "choices": ((8, 8, 4), np.int32), "choice_answers": ((8, 8), np.int32), "index": ((8,), np.int64),
    }
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert batch["caption_valid"].all()
    valid = batch["question_valid"]
    assert (valid.sum(axis=1) >= 6).all() and not valid[:, 7].any()  # every question of each clip: 6 or 7
    assert (batch["answers"][valid] >= 0).all() and (batch["choice_answers"][valid] >= 0).all()
    picked = np.take_along_axis(batch["choices"], np.maximum(batch["choice_answers"], 0)[..., None], axis=2)[..., 0]
    assert (picked[valid] == batch["answers"][valid]).all()
    # each clip's questions come in a random order, every type once
    assert len({tuple(t) for t in batch["question_types"]}) > 1
    assert all(len(set(t[v].tolist())) == v.sum() for t, v in zip(batch["question_types"], valid))


def test_questions_per_clip_draws_that_many_at_random(spec):
    batch = next(iter(pipeline.train_dataset(dataclasses.replace(spec, questions_per_clip=2))))
    assert batch["questions"].shape == (8, 2, 16) and batch["question_valid"].all()
    assert len(set(batch["question_types"].ravel().tolist())) > 2
    assert np.abs(batch["audio"]).max() <= 1.0 and batch["audio"].std() > 0


def test_eval_batches_hold_every_caption_and_question_and_pad_the_last(spec, tiny_dataset):
    spec = dataclasses.replace(spec, batch_size=10, num_frames=16, image_size=64)  # as stored: no resampling
    batches = list(pipeline.eval_dataset(spec, "test"))
    total = SIZES["tiny"]["test"]
    assert len(batches) == -(-total // 10)
    indices = np.concatenate([b["index"][b["valid"]] for b in batches])
    assert indices.tolist() == list(range(total))
    assert not batches[-1]["valid"][total % 10:].any()
    source = builders.open_dataset(tiny_dataset).as_data_source(split="test")
    first = batches[0]
    for row in range(3):
        example = source[row]
        assert first["caption_valid"][row].sum() == len(example["captions"])
        assert first["question_valid"][row].sum() == len(example["questions"])
        captions, _ = tokenizer.encode([c.decode() for c in example["captions"]], spec.max_text_len)
        assert np.array_equal(first["captions"][row, :len(captions)], captions)
        answers = [ANSWERS[a] for a in first["answers"][row, :len(example["answers"])]]
        assert answers == [a.decode() for a in example["answers"]]
        assert np.array_equal(first["video"][row], example["video"])
        assert np.array_equal(first["audio"][row], example["audio"] / np.float32(32768))


def test_eval_shards_are_disjoint_and_complete(spec):
    total = SIZES["tiny"]["train"]
    parts = []
    for index in range(3):
        shard_spec = dataclasses.replace(spec, shard_index=index, shard_count=3, batch_size=7)
        parts.append(np.concatenate([b["index"][b["valid"]] for b in pipeline.eval_dataset(shard_spec, "train")]))
    union = np.concatenate(parts)
    assert sorted(union.tolist()) == list(range(total))  # every clip once: none is dropped to even the shards


def test_global_eval_batches_do_not_depend_on_the_process_count(spec):
    """Two processes' rows, stacked, are exactly the one-process evaluation batches: the same clips in the
    same rows (what is drawn per row, such as MLM masks, then agrees too), with the padding at the end."""
    whole = list(pipeline.eval_dataset(dataclasses.replace(spec, batch_size=10), "test"))
    halves = [list(pipeline.eval_dataset(dataclasses.replace(spec, batch_size=5, shard_index=i, shard_count=2),
                                         "test")) for i in range(2)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == -(-SIZES["tiny"]["test"] // 10)
    for expected, *parts in zip(whole, *halves):
        for key, value in expected.items():
            np.testing.assert_array_equal(value, np.concatenate([p[key] for p in parts]), err_msg=key)
    assert np.concatenate([b["index"] for b in whole])[:SIZES["tiny"]["test"]].tolist() == list(
        range(SIZES["tiny"]["test"]))


def test_global_batches_do_not_depend_on_the_process_count(spec):
    """Two processes' rows, stacked, are exactly the one-process batches: same clips, order and augmentation."""
    whole = iter(pipeline.train_dataset(dataclasses.replace(spec, batch_size=8)))
    halves = [iter(pipeline.train_dataset(dataclasses.replace(spec, batch_size=4, shard_index=i, shard_count=2)))
              for i in range(2)]
    for _ in range(3):
        expected, parts = next(whole), [next(h) for h in halves]
        for key, value in expected.items():
            np.testing.assert_array_equal(value, np.concatenate([p[key] for p in parts]), err_msg=key)
    assert not set(parts[0]["index"].tolist()) & set(parts[1]["index"].tolist())


def test_epochs_cover_the_shard_and_reshuffle(spec):
    spec = dataclasses.replace(spec, batch_size=16)
    per_epoch = SIZES["tiny"]["train"] // 16
    indices = [b["index"] for b in pipeline.train_dataset(spec, num_epochs=2)]
    first, second = np.concatenate(indices[:per_epoch]), np.concatenate(indices[per_epoch:])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(SIZES["tiny"]["train"]))
    assert first.tolist() != second.tolist()


def test_same_seed_same_batches_and_exact_resume(spec):
    a = iter(pipeline.train_dataset(spec))
    for _ in range(3):
        next(a)
    state = a.get_state()
    expected = [next(a) for _ in range(2)]
    b = iter(pipeline.train_dataset(spec))
    b.set_state(state)
    for batch in expected:
        resumed = next(b)
        assert all(np.array_equal(batch[k], resumed[k]) for k in batch)
    other = next(iter(pipeline.train_dataset(dataclasses.replace(spec, seed=1))))
    assert not np.array_equal(other["index"], next(iter(pipeline.train_dataset(spec)))["index"])


def test_resume_with_worker_processes(spec):
    spec = dataclasses.replace(spec, num_workers=2, batch_size=4)
    a = iter(pipeline.train_dataset(spec))
    next(a)
    state = a.get_state()
    expected = next(a)
    b = iter(pipeline.train_dataset(spec))
    b.set_state(state)
    resumed = next(b)
    assert all(np.array_equal(expected[k], resumed[k]) for k in expected)


def test_config_builds_the_spec_and_checks_batch_divisibility(tiny_dataset):
    config = config_lib.load("configs/pretrain.py:tiny", [f"data.data_dir={tiny_dataset.parents[2]}"])
    spec = pipeline.Spec.from_config(config, shard_index=1, shard_count=2)
    assert spec.batch_size == config.train.batch_size // 2 and spec.dataset_path == str(tiny_dataset)
    with pytest.raises(UserError, match="not divisible"):
        pipeline.Spec.from_config(config, shard_index=0, shard_count=3)


def test_missing_split_is_a_user_error(spec):
    with pytest.raises(UserError, match="split 'nope'"):
        pipeline.eval_dataset(spec, "nope")
