"""Bad records in a prepared data set: skipped or repaired as pipeline.py documents, counted, never a crash.

The damage is injected into the real tiny moving_shapes split, one kind per clip position, by a source
that wraps the stored one (so every other record is read from disk as usual).
"""

import json
import re

import numpy as np
import pytest

from conftest import data_dir_of
from vlm_jax import config as config_lib
from vlm_jax.data import builders, clip_transform, pipeline, tokenizer
from vlm_jax.errors import TrainingFault, UserError
from vlm_jax.run import loop

LONG_CAPTION = " ".join(["a small red square moves left then a big blue circle bounces"] * 8).encode()


def damage(example: dict, kind: str) -> dict:
    example = dict(example)
    if kind == "unreadable":
        raise ValueError("the record's bytes do not parse")
    if kind == "missing_channel":
        example["video"] = example["video"][..., 0]
    elif kind == "float_video":
        example["video"] = example["video"].astype(np.float32)
    elif kind == "short_audio":
        example["audio"] = example["audio"][:100]
    elif kind == "empty_captions":
        example["captions"] = [b"", b"   ", *example["captions"]]
    elif kind == "only_empty_captions":
        example["captions"] = [b""]
    elif kind == "long_caption":
        example["captions"] = [LONG_CAPTION]
    elif kind == "non_utf8":
        example["captions"] = [b"a red \xff\xfe square"]
    return example


class DamagedSource:
    """The stored split with `kinds[position]` applied to those positions."""

    def __init__(self, source, kinds: dict[int, str]):
        self.source, self.kinds = source, kinds

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        example = self.source[index]
        return damage(example, self.kinds[index]) if index in self.kinds else example


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return builders.open_dataset(tiny_dataset)


def spec_for(tiny_dataset, **changes) -> pipeline.Spec:
    settings = dict(dataset_path=str(tiny_dataset), num_frames=8, image_size=32, max_text_len=40, batch_size=8,
                    seed=0)
    return pipeline.Spec(**{**settings, **changes})


def issue_counts(out: dict) -> dict[str, int]:
    return {name: int(out[f"data/{name}"]) for name in clip_transform.DATA_ISSUES if out[f"data/{name}"]}


@pytest.mark.parametrize("kind, counted", [
    ("unreadable", {"unreadable": 1}),
    ("missing_channel", {"wrong_shape": 1}),
    ("float_video", {"wrong_shape": 1}),
    ("short_audio", {"wrong_shape": 1}),
])
def test_an_unusable_record_becomes_a_blank_clip_that_no_loss_sees(tiny_dataset, dataset, kind, counted):
    spec = spec_for(tiny_dataset)
    transform = clip_transform.for_dataset(spec, dataset)
    example = clip_transform.TolerantSource(DamagedSource(dataset.as_data_source(split="train"), {0: kind}))[0]
    for rng in (np.random.default_rng(0), None):
        out = transform(example, rng)
        assert issue_counts(out) == counted and clip_transform.skipped(out)
        assert out["video"].shape == (8, 32, 32, 3) and not out["video"].any() and not out["audio"].any()
        assert not np.any(out["caption_valid"]) and not np.any(out["question_valid"])
    good = transform(dataset.as_data_source(split="train")[0], None)
    assert set(out) == set(good) and all(out[k].shape == good[k].shape for k in good)


def test_empty_long_and_non_utf8_captions_are_dropped_truncated_or_replaced_and_counted(tiny_dataset, dataset):
    spec = spec_for(tiny_dataset)
    transform = clip_transform.for_dataset(spec, dataset)
    source = dataset.as_data_source(split="train")
    original = source[0]

    out = transform(damage(original, "empty_captions"), None)
    assert issue_counts(out) == {"empty_captions": 2}
    expected = [c.decode() for c in original["captions"]][:spec.max_captions]
    np.testing.assert_array_equal(out["captions"][:len(expected)], tokenizer.encode(expected, spec.max_text_len)[0])
    assert out["caption_valid"].sum() == len(expected)

    out = transform(damage(original, "only_empty_captions"), np.random.default_rng(0))
    assert issue_counts(out) == {"empty_captions": 1} and not out["caption_valid"]
    assert out["question_valid"].any() and out["video"].any()  # the clip still trains QA

    out = transform(damage(original, "long_caption"), np.random.default_rng(0))
    assert issue_counts(out)["truncated_texts"] >= 1
    assert out["caption_mask"].all() and out["caption"][-1] == tokenizer.SEP_ID

    out = transform(damage(original, "non_utf8"), None)
    assert issue_counts(out) == {"non_utf8_texts": 1}
    ids = list(out["captions"][0][out["caption_masks"][0] > 0])
    assert tokenizer.decode(np.asarray(ids)) == "a red square"  # the bad bytes are dropped, the rest kept


def test_a_damaged_split_is_read_to_the_end_with_exact_counts(tiny_dataset, dataset, monkeypatch):
    kinds = {3: "unreadable", 5: "missing_channel", 9: "empty_captions", 11: "non_utf8", 40: "float_video"}
    open_split = pipeline.open_split
    monkeypatch.setattr(pipeline, "open_split", lambda spec, split: (
        lambda pair: (pair[0], DamagedSource(pair[1], kinds)))(open_split(spec, split)))
    spec = spec_for(tiny_dataset)

    batches = list(pipeline.eval_dataset(spec, "validation"))
    valid = np.concatenate([b["valid"] for b in batches]).astype(bool)
    index = np.concatenate([b["index"] for b in batches])
    issues = {name: sum(b[f"data/{name}"].sum() for b in batches) for name in clip_transform.DATA_ISSUES}
    assert (issues["unreadable"], issues["wrong_shape"], issues["empty_captions"], issues["non_utf8_texts"]) == (
        1, 2, 2, 1)
    assert valid.sum() == 64 - 3 and sorted(index[~valid]) == [3, 5, 40]  # the blank clips; no padding at 64

    epoch = list(pipeline.train_dataset(spec, num_epochs=1))
    assert len(epoch) == 320 // 8
    trained = {name: sum(b[f"data/{name}"].sum() for b in epoch) for name in clip_transform.DATA_ISSUES}
    assert (trained["unreadable"], trained["wrong_shape"], trained["non_utf8_texts"]) == (1, 2, 1)


def test_a_split_smaller_than_one_batch_fails_fast(tiny_dataset):
    with pytest.raises(UserError, match="the validation split has 64 clips, fewer than one global batch"):
        pipeline.train_dataset(spec_for(tiny_dataset, batch_size=128), "validation")


def _seed_config(tiny_dataset, *overrides):
    data_dir = data_dir_of(tiny_dataset)
    return config_lib.load("configs/seed_baseline.py:tiny", [
        f"data.data_dir={data_dir}", "data.num_frames=4", "data.image_size=32", "data.max_text_len=16",
        "train.batch_size=8", "train.num_steps=6", "train.log_every=3", "train.eval_every=0", "eval.splits=()",
        "checkpoint.every_steps=0", "optim.warmup_steps=1", *overrides])


def test_training_on_damaged_data_counts_the_damage_in_metrics_and_results(tiny_dataset, tmp_path, monkeypatch):
    kinds = {i: kind for i, kind in zip(range(0, 320, 7), ["unreadable", "missing_channel", "empty_captions",
                                                           "non_utf8", "long_caption"] * 10)}
    open_split = pipeline.open_split
    monkeypatch.setattr(pipeline, "open_split", lambda spec, split: (
        lambda pair: (pair[0], DamagedSource(pair[1], kinds)))(open_split(spec, split)))
    results = loop.train(_seed_config(tiny_dataset), tmp_path / "run")

    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in logged if "train/data/unreadable" in r and "train/steps" not in r]  # not the results
    assert [r["step"] for r in windows] == [3, 6]
    totals = {name: sum(r[f"train/data/{name}"] for r in windows) for name in clip_transform.DATA_ISSUES}
    assert totals == {name: results[f"train/data/{name}"] for name in clip_transform.DATA_ISSUES}
    assert totals["unreadable"] + totals["wrong_shape"] + totals["empty_captions"] > 0  # 48 clips drawn of 320
    assert all(np.isfinite(r["train/loss"]) for r in windows) and results["train/steps"] == 6


@pytest.mark.parametrize("kind, reason", [("unreadable", "record 0 could not be read: ValueError"),
                                          ("missing_channel", "video is (16, 64, 64) uint8, not (16, 64, 64, 3)")])
def test_a_split_that_yields_nothing_fails_before_any_compile(tiny_dataset, monkeypatch, kind, reason):
    open_split = pipeline.open_split
    monkeypatch.setattr(pipeline, "open_split", lambda spec, split: (
        lambda pair: (pair[0], DamagedSource(pair[1], dict.fromkeys(range(len(pair[1])), kind))))(
        open_split(spec, split)))
    for make in (pipeline.train_dataset, lambda spec, split: pipeline.eval_dataset(spec, split)):
        with pytest.raises(UserError, match=r"the test split yields nothing usable: its first 16 records are "
                                            r"unreadable or malformed \(the first: " + re.escape(reason)):
            make(spec_for(tiny_dataset), "test")


def test_a_training_window_without_one_usable_clip_stops_the_run():
    window = {"data/unreadable": 20.0, "data/wrong_shape": 4.0, "loss": 0.0}
    with pytest.raises(TrainingFault, match=r"every clip of steps 8-10 was unreadable or malformed \(24 skipped\)"):
        loop._check_data(window, steps=3, batch_size=8, step=10)
    loop._check_data({**window, "data/unreadable": 19.0}, steps=3, batch_size=8, step=10)  # one usable clip
