"""What one clip becomes: the pipeline's `Spec` (what it reads from the config), the data set's answer
vocabulary, and `Transform`, which turns one decoded record into model-ready arrays.

Bad records never stop a run. A record that cannot be read, or whose arrays do not have the stored
shape and dtype, becomes a blank clip with every caption and question invalid (so no loss, gradient or
metric sees it; in evaluation its `valid` is False); empty captions are dropped, texts longer than
`data.max_text_len` (questions: `data.max_question_len`) tokens are truncated, and bytes that are not
UTF-8 are dropped (decoded as U+FFFD, which the tokenizer's text clean-up removes). Each example carries
`data/<issue>`, its count of each of `DATA_ISSUES`, which the trainer sums into `train/data/<issue>` in
metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import numpy as np
from PIL import Image

from vlm_jax.data import builders, features, tokenizer, video_io
from vlm_jax.errors import UserError

log = logging.getLogger(__name__)

DATA_ISSUES = ("unreadable", "wrong_shape", "empty_captions", "truncated_texts", "non_utf8_texts")


def skipped(example: dict) -> np.ndarray:
    """Whether the example (or each example of a batch) was replaced by a blank clip."""
    return (np.asarray(example["data/unreadable"]) > 0) | (np.asarray(example["data/wrong_shape"]) > 0)


# Words a horizontal flip swaps, so that text stays true to the flipped pixels.
_FLIP_WORDS = {"left": "right", "right": "left", "leftward": "rightward", "rightward": "leftward"}
_FLIP_PATTERN = re.compile(r"\b(" + "|".join(_FLIP_WORDS) + r")\b")


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything the pipeline reads from the config (`Spec.from_config`)."""
    dataset_path: str
    num_frames: int
    image_size: int
    max_text_len: int
    batch_size: int  # per process
    seed: int
    min_crop_scale: float = 1.0  # 1.0 turns random cropping off
    flip: bool = False
    max_captions: int = 4
    max_negatives: int = 17  # moving_shapes: direction, order, shape and colour twins of each caption, one sound
    max_questions: int = 8
    questions_per_clip: int = 8  # training: drawn at random from each clip's questions (all of them, by default)
    num_choices: int = 4
    max_question_len: int = 16
    num_workers: int = 0
    prefetch: int = 2
    shard_index: int = 0
    shard_count: int = 1

    @classmethod
    def from_config(cls, config, shard_index: int | None = None, shard_count: int | None = None) -> "Spec":
        """The spec for this process: its shard is jax.process_index() of jax.process_count() by default."""
        if shard_index is None or shard_count is None:
            import jax
            shard_index, shard_count = jax.process_index(), jax.process_count()
        data = config.data
        if config.train.batch_size % shard_count:
            raise UserError(f"train.batch_size={config.train.batch_size} is not divisible by the "
                            f"{shard_count} processes")
        return cls(
            dataset_path=str(builders.dataset_dir(features.BuildRequest.from_config(config))),
            num_frames=data.num_frames, image_size=data.image_size, max_text_len=data.max_text_len,
            batch_size=config.train.batch_size // shard_count, seed=config.seed,
            min_crop_scale=data.augment.min_crop_scale, flip=data.augment.flip,
            questions_per_clip=data.questions_per_clip, max_question_len=data.max_question_len,
            num_workers=data.num_workers, prefetch=data.prefetch, shard_index=shard_index, shard_count=shard_count)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The answer and question-type vocabularies the data set declares, and the style of each caption slot
    where it names them (moving_shapes: the k-th caption of every clip is in style k; empty otherwise)."""
    answers: tuple[str, ...]
    question_types: tuple[str, ...]
    caption_styles: tuple[str, ...] = ()

    @classmethod
    def of(cls, dataset: Any) -> "Vocabulary":
        meta = dataset.info.metadata or {}
        return cls(tuple(meta.get("answers", ())), tuple(meta.get("question_types", ())),
                   tuple(meta.get("caption_styles", ())))


def _decode_counting(values, issues: np.ndarray) -> list[str]:
    """`features.texts(values)`, counting the values that were not valid UTF-8."""
    out = []
    for value in values:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                issues[DATA_ISSUES.index("non_utf8_texts")] += 1
        out.append(features.text(value))
    return out


def _resize(video: np.ndarray, size: int) -> np.ndarray:
    if video.shape[1] == size and video.shape[2] == size:
        return video
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in video])


def _swap_sides(text: str) -> str:
    return _FLIP_PATTERN.sub(lambda m: _FLIP_WORDS[m.group(0)], text)


class Transform:
    """Decoded example -> model-ready arrays; `rng` None means evaluation (deterministic)."""

    def __init__(self, spec: Spec, vocab: Vocabulary, blank: dict):
        self.spec, self.vocab, self.blank = spec, vocab, blank
        self.answer_ids = {a: i for i, a in enumerate(vocab.answers)}
        self.type_ids = {t: i for i, t in enumerate(vocab.question_types)}

    def __call__(self, example: dict, rng: np.random.Generator | None) -> dict:
        issues = np.zeros(len(DATA_ISSUES), np.int32)
        if UNREADABLE in example:
            log.warning("data: skipping a clip: %s", example[UNREADABLE])
            issues[DATA_ISSUES.index("unreadable")] = 1
            example = self.blank
        elif problem := self.shape_problem(example):
            log.warning("data: skipping clip %s: %s", features.text(example.get("id", "?")), problem)
            issues[DATA_ISSUES.index("wrong_shape")] = 1
            example = self.blank
        out = self._transform(example, rng, issues)
        out.update({f"data/{name}": count for name, count in zip(DATA_ISSUES, issues)})
        return out

    def shape_problem(self, example: dict) -> str | None:
        """What is wrong with the arrays (missing, or another shape or dtype than stored), or None."""
        for key, stored in self.blank.items():
            if isinstance(stored, np.ndarray) and stored.ndim:
                value = example.get(key)
                if not isinstance(value, np.ndarray):
                    return f"{key} is {'missing' if value is None else type(value).__name__}, not an array"
                if value.shape != stored.shape or value.dtype != stored.dtype:
                    return f"{key} is {value.shape} {value.dtype}, not {stored.shape} {stored.dtype}"
        return None

    def _transform(self, example: dict, rng: np.random.Generator | None, issues: np.ndarray) -> dict:
        spec = self.spec
        video = example["video"]
        mode = "uniform" if rng is None else "random_segment"
        frames = video_io.sample_frame_indices(video.shape[0], spec.num_frames, mode, rng)
        video = video[frames]
        boxes = example["boxes"][frames] if "boxes" in example else None
        strings = {k: _decode_counting(example[k], issues) for k in
                   ("captions", "hard_negatives", "hard_negative_kinds", "questions", "answers", "question_types",
                    "choices")}
        negated = _drop_empty_captions(strings, [int(c) for c in example.get("hard_negative_captions", ())], issues)
        if rng is not None and spec.min_crop_scale < 1.0:
            video, boxes = _random_crop(video, boxes, rng, spec.min_crop_scale)
        video = _resize(video, spec.image_size)
        if rng is not None and spec.flip and rng.random() < 0.5:
            video = video[:, :, ::-1]
            if boxes is not None:
                boxes = np.stack([boxes[..., 0], 1 - boxes[..., 3], boxes[..., 2], 1 - boxes[..., 1]], axis=-1)
            for key in ("captions", "hard_negatives", "questions", "answers", "choices"):
                strings[key] = [_swap_sides(t) for t in strings[key]]
        out = {
            "video": np.ascontiguousarray(video),
            "audio": example["audio"].astype(np.float32) / 32768.0,
            "has_audio": np.asarray(example["has_audio"], np.bool_),
        }
        if boxes is not None:
            out["boxes"] = boxes.astype(np.float32)
        out.update(self._captions(strings, negated, rng, issues))
        out.update(self._questions(strings, rng, issues))
        return out

    def _captions(self, text: dict, negated: list[int], rng, issues: np.ndarray) -> dict:
        """Training: one random caption and one of its own hard negatives (`negated[i]` is the caption that
        negative i negates; data sets without that pairing let any negative stand for any caption).
        Evaluation: every caption and every hard negative, padded, with the caption each one negates."""
        captions, negatives = text["captions"], text["hard_negatives"]
        if rng is None:
            spec = self.spec
            kept = captions[:spec.max_captions]
            ids, mask = _encode_padded(kept, spec.max_captions, spec.max_text_len, issues)
            pairs = [(n, c) for n, c in zip(negatives, negated) if c < len(kept)][:spec.max_negatives]
            neg_ids, neg_mask = _encode_padded([n for n, _ in pairs], spec.max_negatives, spec.max_text_len, issues)
            of_caption = np.full(spec.max_negatives, -1, np.int32)
            of_caption[:len(pairs)] = [c for _, c in pairs]
            return {"captions": ids, "caption_masks": mask,
                    "caption_valid": np.arange(spec.max_captions) < len(kept),
                    "negatives": neg_ids, "negative_masks": neg_mask, "negative_captions": of_caption,
                    "negative_valid": np.arange(spec.max_negatives) < len(pairs)}
        index = int(rng.integers(len(captions))) if captions else -1
        caption = captions[index] if captions else ""
        own = [n for n, c in zip(negatives, negated) if c in (index, -1)]
        negative = own[rng.integers(len(own))] if own else ""
        ids, mask, truncated = tokenizer.encode_counting([caption, negative], self.spec.max_text_len)
        issues[DATA_ISSUES.index("truncated_texts")] += truncated
        return {"caption": ids[0], "caption_mask": mask[0], "caption_valid": np.asarray(bool(captions)),
                "negative": ids[1], "negative_mask": mask[1], "has_negative": np.asarray(bool(own))}

    def _questions(self, text: dict, rng, issues: np.ndarray) -> dict:
        """Questions, padded, with `question_valid`: evaluation takes every one in order (up to
        `max_questions`), training `questions_per_clip` of them drawn at random."""
        spec = self.spec
        count = len(text["questions"])
        if rng is None:
            rows, width = list(range(min(count, spec.max_questions))), spec.max_questions
        else:
            rows, width = [int(r) for r in rng.permutation(count)[:spec.questions_per_clip]], spec.questions_per_clip
        ids, mask = _encode_padded([text["questions"][r] for r in rows], width, spec.max_question_len, issues)
        answers = np.full(width, -1, np.int32)
        types = np.full(width, -1, np.int32)
        choices = np.full((width, spec.num_choices), -1, np.int32)
        correct = np.full(width, -1, np.int32)
        for slot, r in enumerate(rows):
            answer = text["answers"][r]
            answers[slot] = self.answer_ids.get(answer, -1)
            types[slot] = self.type_ids.get(text["question_types"][r], -1)
            options = text["choices"][r].split("|") if r < len(text["choices"]) and text["choices"][r] else []
            for c, option in enumerate(options[:spec.num_choices]):
                choices[slot, c] = self.answer_ids.get(option, -1)
                if option == answer:
                    correct[slot] = c
        return {"questions": ids, "question_masks": mask, "answers": answers, "question_types": types,
                "choices": choices, "choice_answers": correct, "question_valid": np.arange(width) < len(rows)}


def _drop_empty_captions(strings: dict, negated: list[int], issues: np.ndarray) -> list[int]:
    """Drop empty captions and hard negatives (counted) in place; returns, per kept hard negative, the new
    index of the caption it negates (-1: unpaired, for data sets that do not pair them). A negative of a
    dropped caption is dropped with it."""
    if len(negated) != len(strings["hard_negatives"]):
        negated = [-1] * len(strings["hard_negatives"])
    new_index, captions = {-1: -1}, []
    for old, caption in enumerate(strings["captions"]):
        if caption.strip():
            new_index[old] = len(captions)
            captions.append(caption)
    pairs = [(n, new_index[c]) for n, c in zip(strings["hard_negatives"], negated) if n.strip() and c in new_index]
    empty = len(strings["captions"]) - len(captions) + sum(not n.strip() for n in strings["hard_negatives"])
    issues[DATA_ISSUES.index("empty_captions")] += empty
    strings["captions"], strings["hard_negatives"] = captions, [n for n, _ in pairs]
    return [c for _, c in pairs]


def _encode_padded(texts: list[str], rows: int, max_len: int, issues: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and masks for `texts`, padded with all-zero rows up to `rows`; truncations are counted."""
    ids = np.zeros((rows, max_len), np.int32)
    mask = np.zeros((rows, max_len), np.int32)
    if texts:
        ids[:len(texts)], mask[:len(texts)], truncated = tokenizer.encode_counting(texts, max_len)
        issues[DATA_ISSUES.index("truncated_texts")] += truncated
    return ids, mask


def _random_crop(video, boxes, rng, min_scale):
    """A random square crop covering min_scale..1 of the side; boxes follow and are clipped."""
    side = video.shape[1]
    crop = int(round(side * rng.uniform(min_scale, 1.0)))
    y0, x0 = (int(v) for v in rng.integers(0, side - crop + 1, size=2))
    video = video[:, y0:y0 + crop, x0:x0 + crop]
    if boxes is not None:
        offset = np.array([y0, x0, y0, x0], np.float32) / side
        boxes = np.clip((boxes - offset) * side / crop, 0.0, 1.0)
    return video, boxes


def for_dataset(spec: Spec, dataset) -> Transform:
    """The data set's Transform; its blank clip has the stored shapes and no text."""
    stored = dataset.info.features
    blank = {key: np.zeros(stored[key].shape, stored[key].np_dtype) for key in ("video", "audio", "boxes")
             if key in stored}
    blank.update({key: [] for key in ("captions", "hard_negatives", "hard_negative_kinds", "hard_negative_captions",
                                      "questions", "answers", "question_types", "choices")})
    blank["has_audio"] = np.asarray(False)
    return Transform(spec, Vocabulary.of(dataset), blank)


ATTRIBUTE_FEATURES = {"colour": "object_colours", "shape": "object_shapes", "motion": "object_motions",
                      "size": "object_sizes", "sound": "sound"}


def attributes_of(example: dict) -> dict[str, list[str]]:
    """A decoded example's scene attributes by kind (those its data set stores)."""
    return {kind: features.texts(np.atleast_1d(example[feature]))
            for kind, feature in ATTRIBUTE_FEATURES.items() if feature in example}


UNREADABLE = "unreadable"  # the key a record that could not be read carries, with the reason


class TolerantSource:
    """A data source whose records that fail to decode come back as {UNREADABLE: reason}."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.source[index]
        except Exception as error:  # a damaged record: any decoding error, counted and skipped
            return {UNREADABLE: f"record {index} could not be read: {type(error).__name__}: {error}"}
