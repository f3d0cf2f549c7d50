"""The grain input pipeline: per-process shards, seeded shuffling, augmentation, tokenisation, batching.

Training batches carry one sampled caption and one of its hard negatives per clip,
and `data.questions_per_clip` of its questions; evaluation batches carry every
caption, hard negative and question, padded, with validity masks, and are padded
to full batches (`valid` marks real clips).
Videos stay uint8 on the host (4x less to move than float32); audio is float32
in [-1, 1]. The iterator's state (`get_state` / `set_state`) resumes exactly.
What one clip becomes, and how bad records are skipped and counted, is `clip_transform`'s.
"""

from __future__ import annotations

import logging

import grain
import numpy as np

from vlm_jax.data import builders, clip_transform, features, registry
from vlm_jax.data.clip_transform import Spec, Transform, TolerantSource
from vlm_jax.errors import UserError


def num_answers(config) -> int:
    """Size of the configured data set's answer vocabulary (fixed for some data sets; others need a build)."""
    fixed = registry.lookup(config.data.name).num_answers
    if fixed is not None:
        return fixed
    request = features.BuildRequest.from_config(config)
    return len(clip_transform.Vocabulary.of(builders.open_dataset(builders.dataset_dir(request))).answers)


# ----------------------------------------------------------------------------- datasets


def open_split(spec: Spec, split: str):
    """(the prepared data set, a random-access source over `split`), or a one-line error naming the splits."""
    dataset = builders.open_dataset(spec.dataset_path)
    if split not in dataset.info.splits:
        raise UserError(f"split {split!r} not in the data set at {spec.dataset_path}; "
                        f"it has {', '.join(dataset.info.splits)}")
    return dataset, dataset.as_data_source(split=split)


def train_dataset(spec: Spec, split: str = "train", num_epochs: int | None = None) -> grain.IterDataset:
    """Endless (or num_epochs) shuffled, augmented batches: this process's rows of each global batch.

    Every process shuffles and augments the whole split with the same seeds (both depend only on a clip's
    position in the global stream), cuts the stream into chunks of its per-process batch size, and takes
    every `shard_count`-th chunk from `shard_index`. Global batch g is therefore the same clips, in the
    same order, with the same augmentations, whatever the process count: process i holds its rows
    i*b ... (i+1)*b - 1, which is how `parallel.to_global` assembles them. Each process reads and
    decodes only its own chunks (grain's datasets are lazy and indexable).
    """
    dataset, source = open_split(spec, split)
    if len(source) < spec.batch_size * spec.shard_count:
        raise UserError(f"the {split} split has {len(source)} clips, fewer than one global batch "
                        f"({spec.batch_size * spec.shard_count}); lower train.batch_size")
    transform = clip_transform.for_dataset(spec, dataset)
    _check_usable(source, transform, split)
    chunks = (_indexed(source)
              .shuffle(seed=spec.seed)
              .repeat(num_epochs)
              .random_map(_Train(transform), seed=spec.seed + 1)
              .batch(spec.batch_size, drop_remainder=True))
    whole_global_batches = len(chunks) - len(chunks) % spec.shard_count
    return _finish(chunks[:whole_global_batches][spec.shard_index::spec.shard_count], spec)


def eval_dataset(spec: Spec, split: str) -> grain.IterDataset:
    """One pass over the split in order, every caption and question, in whole global batches.

    Global batch g holds clips g*G ... (g+1)*G - 1 (G = batch_size * shard_count) in order, the last one
    padded with blank clips (`valid` False), and process i holds its rows i*b ... (i+1)*b - 1 of each, as
    `train_dataset` lays them out. Every evaluation therefore sees the same clips in the same rows whatever
    the process count, so what is drawn per row (MLM masks, mined negatives) and what follows the clip
    order (simulated users) give the same numbers on one host or many."""
    dataset, source = open_split(spec, split)
    transform = clip_transform.for_dataset(spec, dataset)
    _check_usable(source, transform, split)
    global_batch = spec.batch_size * spec.shard_count
    padded = -(-len(source) // global_batch) * global_batch
    chunks = (grain.MapDataset.range(padded)
              .map(_Eval(transform, TolerantSource(source)))
              .batch(spec.batch_size, drop_remainder=False))
    return _finish(chunks[spec.shard_index::spec.shard_count], spec)


def _check_usable(source, transform: Transform, split: str, probe: int = 16) -> None:
    """Fail before any compile when the split's first `probe` records are all unreadable or malformed."""
    records = TolerantSource(source)
    problems = []
    for index in range(min(probe, len(records))):
        example = records[index]
        problem = example.get(clip_transform.UNREADABLE) or transform.shape_problem(example)
        if not problem:
            return
        problems.append(problem)
    raise UserError(f"the {split} split yields nothing usable: its first {len(problems)} records are unreadable or "
                    f"malformed (the first: {problems[0]})")


def clip_attributes(spec: Spec, split: str) -> list[dict[str, list[str]]] | None:
    """Each clip's ground-truth attributes by kind ({"colour": ["red", ...], "sound": ["clicks"], ...}), in
    split order; None when the data set has none (only moving_shapes describes its scenes)."""
    dataset, source = open_split(spec, split)
    if not set(clip_transform.ATTRIBUTE_FEATURES.values()) <= set(dataset.info.features):
        return None
    return [clip_transform.attributes_of(source[index]) for index in range(len(source))]


def _indexed(source) -> grain.MapDataset:
    """(position in the split, example): batches carry `index` so results map back to clips."""
    # Indices past the end come from later epochs (grain wraps them); report the clip's own position.
    size = len(source)
    records = grain.MapDataset.source(TolerantSource(source))
    return records.map_with_index(lambda index, example: (index % size, example))


class _Train:
    def __init__(self, transform: Transform):
        self.transform = transform

    def __call__(self, item: tuple[int, dict], rng: np.random.Generator) -> dict:
        index, example = item
        return {**self.transform(example, rng), "index": np.asarray(index)}


class _Eval:
    """Position i of the split through the deterministic transform, plus `index` and `valid`; a position past
    the end is a blank clip with `valid` False (the padding of the last global batch)."""

    def __init__(self, transform: Transform, source: TolerantSource):
        self.transform, self.source = transform, source

    def __call__(self, index: int) -> dict:
        if index >= len(self.source):
            out = self.transform(self.transform.blank, None)
            return {**out, "index": np.asarray(-1), "valid": np.asarray(False)}
        out = self.transform(self.source[index], None)
        return {**out, "index": np.asarray(index), "valid": ~clip_transform.skipped(out)}


def _finish(ds: grain.MapDataset, spec: Spec) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(spec.prefetch, 1), prefetch_buffer_size=spec.prefetch))
    if spec.num_workers > 0:
        _absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=spec.num_workers))
    return it


def _absl_flags_parsed() -> None:
    """grain 0.2.18 workers read absl flags; mark them parsed (upstream bug, fixed later)."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
        logging.debug("marked absl flags as parsed for grain workers")
